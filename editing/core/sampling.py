"""The sampling loop: the one function every generation, reconstruction and edit goes through.

Per step i it takes a conditional embedding c_i and an unconditional embedding u_i for every batch row
(null-text inversion gives u_i per step, interpolation methods give c_i per step), combines them by
classifier-free guidance, moves the latent one DDIM step, adds an optional per-step latent offset, holds
anchored rows on known latents (DirectInversion's source branch), and lets an optional attention
controller (Prompt-to-Prompt) act inside the UNet and on the new latent (local blend).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol, Sequence

import torch
from editing.core.progress import tqdm  # tqdm.auto.tqdm that a caller can follow (the web page)

from editing.core.conditioning import Embedding, is_per_step
from editing.core.ddim import DDIMSchedule, sampling_step
from editing.core.errors import NonFiniteError

# (B, L, D) for every step, or one (B, L, D) per step; SD's tensor or SDXL's TextEmbeds (editing.core.conditioning)
Embeddings = Embedding | Sequence[Embedding]


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning of a batch along the trajectory: cond and uncond, each constant or per step."""

    cond: Embeddings
    uncond: Embeddings

    def at(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = lambda e: e[i] if is_per_step(e) else e  # noqa: E731
        return pick(self.cond), pick(self.uncond)


@dataclass(frozen=True)
class Anchors:
    """Rows of the batch held on known latents after every step.

    DirectInversion (Ju et al., eq. 6) sets the source branch to the inverted latent at each step. Adding the
    recorded offsets instead is the same in exact arithmetic, but guidance makes the sampler expansive:
    float error of one step grows through the next ones (measured on the default model with the astronaut
    photo and its caption: the source branch left the trajectory and reconstructed 2 dB below the VAE round
    trip). Holding the rows on the trajectory is exact by construction.
    """

    rows: torch.Tensor  # (B,) bool: the anchored rows
    latents: Sequence[torch.Tensor]  # per step, (B, C, h, w): where anchored rows are after that step

    def apply(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.rows.view(-1, 1, 1, 1).to(x.device), self.latents[i].to(x), x)


class Controller(Protocol):
    """What the sampling loop needs of an attention controller (Prompt-to-Prompt's, in attention/)."""

    def installed(self, unet) -> ContextManager: ...  # the processors act inside this block, restored after

    def after_step(self, step: int, x: torch.Tensor) -> torch.Tensor: ...  # e.g. local blend


def guided_output(model, x: torch.Tensor, t: int, cond: Embedding, uncond: Embedding,
                  guidance: float, attention_kwargs: dict | None = None) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): out_u + w (out_c - out_u), both halves in one UNet call.

    The UNet batch is [uncond rows; cond rows]: attention controllers rely on that layout.
    """
    out = model.unet_output(torch.cat([x, x]), t, torch.cat([uncond, cond]), attention_kwargs)
    out_u, out_c = out.chunk(2)
    return out_u + guidance * (out_c - out_u)


def non_finite(what: str) -> NonFiniteError:
    return NonFiniteError(f"{what} became NaN or infinite (in fp16 this is usually an overflow: "
                          f"try --dtype bf16 or fp32)")


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise non_finite(what)


@torch.no_grad()
def sample(model, x_T: torch.Tensor, conditioning: Conditioning, schedule: DDIMSchedule,
           guidance: float, *, offsets: Sequence[torch.Tensor] | None = None, anchors: Anchors | None = None,
           controller: Controller | None = None, callback: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
           return_trajectory: bool = False, disable: bool = False, desc: str = "sampling"):
    """Run DDIM sampling from x_T (B, C, h, w) and return x_0 (and the trajectory [x_T, ..., x_0]).

    offsets[i] (broadcastable to x) is added after step i; then anchored rows are set to their latents
    (`Anchors`). controller: a Prompt-to-Prompt controller whose attention processors are installed for
    the duration of the loop; it receives the step index explicitly and may replace the latent after each
    step (local blend). callback(i, x) may return a replacement latent.
    """
    x = x_T
    trajectory = [x] if return_trajectory else None
    first_bad = torch.full((), -1, dtype=torch.long, device=x.device)  # the first step with a NaN/inf latent
    scope = controller.installed(model.unet) if controller is not None else nullcontext()
    with scope:
        for i, t in enumerate(tqdm(schedule.timesteps, desc=desc, disable=disable, leave=False)):
            cond, uncond = conditioning.at(i)
            kwargs = {"step": i} if controller is not None else None
            out = guided_output(model, x, t, cond, uncond, guidance, kwargs)
            x = sampling_step(schedule, out, t, x)
            if offsets is not None:
                x = x + offsets[i]
            if anchors is not None:
                x = anchors.apply(i, x)
            if controller is not None:
                x = controller.after_step(i, x)
            if callback is not None:
                replaced = callback(i, x)
                x = x if replaced is None else replaced
            # kept on the device: a host check here would stall the GPU queue at every step
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(x).all(), i, first_bad)
            if return_trajectory:
                trajectory.append(x)
    bad = int(first_bad)  # the loop's one host sync
    if bad >= 0:
        raise non_finite(f"the latent at sampling step {bad}")
    return (x, trajectory) if return_trajectory else x
