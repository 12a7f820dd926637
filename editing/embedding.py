"""The embedding optimiser: minimise the denoising loss of a few images with respect to some parameters.

    min_theta  E_{x, t, eps} || f(x_t, t, embed_theta(t)) - target(x, eps, t) ||^2  +  l2 * sum ||theta - anchor||^2

x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps is the forward process, target is eps (epsilon models) or
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x (v-prediction models), t is drawn uniformly from the training
timesteps. Three parametrisations of embed_theta make three methods:

- Imagic's e_opt (Kawar et al., eq. 1) and the thesis' regularised variant (eq. 3.1): theta is the whole
  text-encoder output (1, L, D), embed(t) = theta, anchor = e_tgt;
- textual inversion: theta are the new token rows, embed(t) runs the text encoder with them in place;
- multiresolution textual inversion: embed(t) picks the row of the noise band t falls in.

Imagic's UNet fine-tuning is the same loss with theta = the UNet weights and embed(t) = e_opt, so it runs
through this function as well. Parameters and the loss stay in fp32 whatever the UNet dtype.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from editing.core.progress import tqdm  # tqdm.auto.tqdm that a caller can follow (the web page)

from editing.core.errors import NonFiniteError, UserError

# Steps between reads of the loss on the host: each read waits for the GPU, so reading every step would
# serialise the loop; a NaN is still caught within this many steps (and at the end).
SYNC_EVERY = 25


@dataclass(frozen=True)
class EmbeddingConfig:
    """Defaults of the thesis' regularised embedding optimisation (its public implementation)."""

    steps: int = 1000  # Adam steps
    lr: float = 5e-3  # Adam learning rate (constant)
    l2: float = 1e-3  # lambda of the pull towards the anchor, eq. 3.1 (0 = Imagic's unregularised e_opt)
    batch: int = 1  # (image, t, noise) samples per step

    def __post_init__(self):
        if self.steps < 0:
            raise UserError(f"embedding optimisation steps must be 0 or more, got {self.steps}")
        if self.lr <= 0:
            raise UserError(f"the embedding learning rate must be positive, got {self.lr}")
        if self.l2 < 0:
            raise UserError(f"the L2 weight lambda must be 0 or more, got {self.l2}")
        if self.batch < 1:
            raise UserError(f"the batch must be at least 1, got {self.batch}")

    def to_dict(self) -> dict:
        return asdict(self)


def noised(model, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process at integer timesteps t (B,): returns (x_t, the model's training target)."""
    abar = model.scheduler.alphas_cumprod.to(x0.device)[t].float().view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    if model.prediction_type == "epsilon":
        return x_t, noise
    if model.prediction_type == "v_prediction":
        return x_t, abar.sqrt() * noise - (1 - abar).sqrt() * x0
    raise UserError(f"prediction type {model.prediction_type!r} is not supported (epsilon or v_prediction)")


def optimise_embedding(model, latents: torch.Tensor, params: Sequence[torch.Tensor],
                       embed: Callable[[torch.Tensor], torch.Tensor], config: EmbeddingConfig = EmbeddingConfig(),
                       *, anchors: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None,
                       after_step: Callable[[int], None] | None = None, disable: bool = False,
                       desc: str = "embedding optimisation") -> list[float]:
    """Optimise params (leaf tensors, updated in place) with Adam; return the loss of every step.

    latents: (N, C, h, w) scaled image latents. embed(t) -> (B, L, D) conditioning for timesteps t (B,).
    anchors: one tensor per param for the L2 pull (needed when config.l2 > 0). generator: draws the images,
    timesteps and noise (on the latents' device). after_step(i) runs after each Adam step (e.g. to restore
    rows that must not move).
    """
    params = list(params)
    if config.l2 > 0 and (anchors is None or len(anchors) != len(params)):
        raise ValueError("an L2 weight needs one anchor per parameter")
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=config.lr)
    device = latents.device
    train_steps = model.scheduler.config.num_train_timesteps
    losses = []
    bar = tqdm(range(config.steps), desc=desc, disable=disable, leave=False)
    for i in bar:
        rows = torch.randint(len(latents), (config.batch,), generator=generator, device=device)
        t = torch.randint(train_steps, (config.batch,), generator=generator, device=device)
        noise = torch.randn(latents[rows].shape, generator=generator, device=device, dtype=torch.float32)
        x_t, target = noised(model, latents[rows].float(), noise, t)
        loss = F.mse_loss(model.unet_output(x_t, t, embed(t)), target)
        if config.l2 > 0:
            loss = loss + config.l2 * sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if after_step is not None:
            after_step(i)
        losses.append(loss.detach())
        if (i + 1) % SYNC_EVERY == 0 or i + 1 == config.steps:
            recent = torch.stack(losses[-SYNC_EVERY:]).cpu()
            if not torch.isfinite(recent).all():
                raise NonFiniteError(f"{desc}: the loss became NaN or infinite by step {i} (lower the learning "
                                     "rate; in fp16 try --dtype bf16 or fp32)")
            bar.set_postfix(loss=f"{recent.mean().item():.4f}")
    for p in params:
        p.requires_grad_(False)
    return torch.stack(losses).tolist() if losses else []
