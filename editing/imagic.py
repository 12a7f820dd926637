"""Imagic (Kawar et al., "Imagic: Text-Based Real Image Editing with Diffusion Models"), the baseline.

A. Text embedding optimisation: e_opt starts at e_tgt and minimises the denoising loss of the photo
   (eq. 1, no regulariser) — the shared embedding optimiser with l2 = 0.
B. Model fine-tuning: the UNet's weights minimise the same loss with e_opt fixed (eq. 2) — the same
   optimiser with the UNet's parameters as theta.
C. Interpolation and generation: e_new = eta e_tgt + (1 - eta) e_opt (eq. 3), sampled from fresh noise.

The fine-tuned weights live only inside `finetuned_unet`: the original weights are copied before and put
back in a `finally`, so neither a later edit nor an exception ever sees them. Defaults follow the public
implementation (diffusers' community Imagic pipeline): embedding lr 1e-3 for 500 steps, UNet lr 2e-6 for
1000 steps.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from editing.embedding import EmbeddingConfig, optimise_embedding
from editing.core.errors import UserError
from editing.learned_embedding import learn_embedding
from editing.core.sampling import Conditioning, sample
from editing.core.ddim import DDIMSchedule

DEFAULT_EMBEDDING = EmbeddingConfig(steps=500, lr=1e-3, l2=0.0)
DEFAULT_UNET = EmbeddingConfig(steps=1000, lr=2e-6, l2=0.0)
DEFAULT_ETA = 0.7  # the paper's examples mostly lie in eta 0.6-0.8 (its Fig. 6 sweeps eta)


@dataclass(frozen=True)
class ImagicConfig:
    embedding: EmbeddingConfig = field(default_factory=lambda: DEFAULT_EMBEDDING)
    unet: EmbeddingConfig = field(default_factory=lambda: DEFAULT_UNET)  # steps, lr of the fine-tuning
    eta: float = DEFAULT_ETA
    gradient_checkpointing: bool = False  # trade UNet recomputation for activation memory in stage B

    def __post_init__(self):
        if not math.isfinite(self.eta):
            raise UserError(f"imagic eta (--eta) must be a finite number, got {self.eta!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImagicResult:
    reconstruction: np.ndarray  # (H, W, 3) uint8: generation under e_opt with the fine-tuned UNet (eta = 0)
    edit: np.ndarray  # (H, W, 3) uint8
    sweep: list[np.ndarray]  # one image per eta of the sweep
    losses: dict  # "embedding" and "unet" loss curves
    timings_s: dict  # preliminary_training (A), editing (B), generation (C)


@contextmanager
def finetuned_unet(unet, gradient_checkpointing: bool = False):
    """Make the UNet's weights trainable inside the block; restore the original weights and flags after."""
    if unet.dtype != torch.float32:
        raise UserError("imagic fine-tunes the UNet, which needs --dtype fp32 (Adam updates of ~1e-6 vanish "
                        "in half precision)")
    saved = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
    try:
        unet.requires_grad_(True)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        yield [p for p in unet.parameters()]
    finally:
        unet.eval()
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        unet.requires_grad_(False)
        unet.zero_grad(set_to_none=True)  # the last step's gradients: a UNet's worth of memory, kept by a server
        unet.load_state_dict(saved)


def generate(model, e_opt: torch.Tensor, e_tgt: torch.Tensor, etas: list[float], steps: int, guidance: float,
             generator: torch.Generator | None = None, disable: bool = False) -> np.ndarray:
    """Sample one image per eta from the same fresh noise."""
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    size = model.resolution // model.vae_scale_factor
    noise = torch.randn((1, model.unet.config.in_channels, size, size), generator=generator,
                        device=model.device).expand(len(etas), -1, -1, -1)
    cond = torch.cat([eta * e_tgt + (1 - eta) * e_opt for eta in etas])  # (B, L, D)
    uncond = model.encode_prompts([""]).expand_as(cond)
    x0 = sample(model, noise, Conditioning(cond=cond, uncond=uncond), schedule, guidance, disable=disable,
                desc="generation")
    return model.decode_latents(x0)


def edit_imagic(model, image: np.ndarray, target: str, config: ImagicConfig = ImagicConfig(), *, steps: int,
                guidance: float, generator: torch.Generator | None = None, sweep: list[float] | None = None,
                disable: bool = False) -> ImagicResult:
    """Edit one preprocessed photo (H, W, 3) uint8 towards the target prompt; the model is left unchanged."""
    t0 = time.perf_counter()
    e_tgt, e_opt, embedding_losses = learn_embedding(model, image, target, config.embedding, generator, disable)
    t1 = time.perf_counter()
    latents = model.encode_images(image[None])
    with finetuned_unet(model.unet, config.gradient_checkpointing) as weights:
        unet_losses = optimise_embedding(model, latents, weights, lambda t: e_opt.expand(len(t), -1, -1),
                                         config.unet, generator=generator, disable=disable,
                                         desc="UNet fine-tuning")
        model.unet.eval()
        t2 = time.perf_counter()
        images = generate(model, e_opt, e_tgt, [0.0, config.eta, *(sweep or [])], steps, guidance, generator,
                          disable)
    t3 = time.perf_counter()
    return ImagicResult(reconstruction=images[0], edit=images[1], sweep=list(images[2:]),
                        losses={"embedding": embedding_losses, "unet": unet_losses},
                        timings_s={"preliminary_training": t1 - t0, "editing": t2 - t1, "generation": t3 - t2})
