"""The published null-text inversion loop, restated as a baseline (Mokady et al., "Null-text Inversion for
Editing Real Images Using Guided Diffusion Models", 2022; the `NullInversion` class of the null_text_w_ptp
notebook in google/prompt-to-prompt).

The timing suite runs it side by side with the project's own NTI (inversion/invert.py), so the speed-up of
the project's implementation is a measured ratio, not a claim. To keep the comparison honest it is written
from the reference's algorithm, in our own words, and drives the diffusers components of a loaded model
(unet, vae, text_encoder, tokenizer, and a fresh DDIM scheduler built from the model's scheduler config)
directly: none of the project's primitives (inversion.ddim, editing.core.sampling, Model.unet_output) are used.

As the reference: fp32, eager, one image, epsilon prediction.
1. x_0 = the VAE posterior mean of the image times the latent scale (the reference's literal 0.18215 is
   the SD VAE's `scaling_factor`; it is read from the config here).
2. DDIM inversion under the source prompt, guidance 1, with the reference's `next_step`: for the
   timesteps in ascending order, eps = unet(x, t, c) evaluated at the destination level t, then
   x <- sqrt(a_t) x0_hat + sqrt(1 - a_t) eps, with x0_hat taken at the level below, t - stride (whose
   alpha is final_alpha_cumprod below zero).
3. Null-text optimisation, for sampling step i = 0 .. N-1 at timestep t_i, starting from x = x_T and
   u = the empty prompt's embedding:
   - a new Adam optimiser on u (warm-started from step i-1's result), lr = 1e-2 (1 - i / 100);
   - the conditional prediction eps_c = unet(x, t_i, c), computed once per step, without gradients;
   - at most num_inner_steps times: eps = eps_u + w (eps_c - eps_u) with eps_u = unet(x, t_i, u); the
     reference's `prev_step` of x; loss = mse(that, pivot x_{t_i - stride}); Adam step; stop once the
     loss (read before the step, with .item()) is below epsilon + i * 2e-5;
   - u_i = u; x advances one guided step with u_i, both branches in one UNet batch [u; c].
Two departures, both in the reference's favour, so the measured speed-up is conservative: the reference
also decodes the VAE round trip of x_0 for display (not part of the algorithm; the project's NTI does not
do it either), and its UNet is left trainable, so each of its backward passes also accumulates weight
gradients nobody uses; here the UNet is frozen, as the project loads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from editing.core.errors import UserError

# The reference's constants, named.
REFERENCE_STEPS = 50  # NUM_DDIM_STEPS
REFERENCE_GUIDANCE = 7.5  # GUIDANCE_SCALE
REFERENCE_INNER_STEPS = 10  # num_inner_steps
REFERENCE_EPSILON = 1e-5  # early_stop_epsilon
EPSILON_GROWTH = 2e-5  # the early-stop threshold grows by this per step: epsilon + i * 2e-5
LEARNING_RATE = 1e-2  # Adam's lr at step 0 ...
LR_DECAY_STEPS = 100.0  # ... decayed linearly: lr_i = 1e-2 * (1 - i / 100)


@dataclass
class ReferenceInversion:
    """What the reference's `invert` hands back, as tensors: x_T, the DDIM pivot and the per-step nulls."""

    x_T: torch.Tensor  # (1, C, h, w)
    trajectory: list[torch.Tensor]  # [x_0, ..., x_T], each (1, C, h, w)
    nulls: list[torch.Tensor]  # one (1, L, D) per sampling step
    inner_steps: list[int]  # Adam steps taken at each sampling step (early stop)


def check_model(model) -> None:
    """The reference runs in fp32 and predicts epsilon; anything else is not the published algorithm."""
    if next(model.unet.parameters()).dtype != torch.float32:
        raise UserError("the reference null-text inversion runs in fp32, as published; load the model with "
                        "--dtype fp32 to time it")
    if model.scheduler.config.prediction_type != "epsilon":
        raise UserError(f"the reference null-text inversion supports epsilon prediction only; this model "
                        f"predicts {model.scheduler.config.prediction_type}")


def _alphas(scheduler, t: int) -> tuple[float, float]:
    """(alpha-bar at t, alpha-bar one sampling stride below t), the latter final_alpha_cumprod below zero."""
    below = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a_below = scheduler.alphas_cumprod[below] if below >= 0 else scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[t], a_below


def _move(eps: torch.Tensor, x: torch.Tensor, a_from, a_to) -> torch.Tensor:
    """One deterministic DDIM move (Song et al., eq. 12 with eta = 0) of x from level a_from to a_to."""
    x0_hat = (x - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * x0_hat + (1 - a_to) ** 0.5 * eps


def prev_step(scheduler, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """The reference's `prev_step`: x_t -> x_{t - stride}."""
    a_t, a_below = _alphas(scheduler, t)
    return _move(eps, x, a_t, a_below)


def next_step(scheduler, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """The reference's `next_step`: x_{t - stride} -> x_t, eps evaluated at level t."""
    a_t, a_below = _alphas(scheduler, t)
    return _move(eps, x, a_below, a_t)


def _encode_text(model, prompt: str, truncation: bool) -> torch.Tensor:
    tokenizer = model.tokenizer
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=truncation,
                    return_tensors="pt").input_ids
    return model.text_encoder(ids.to(model.device))[0]  # (1, L, D)


def _noise(model, x: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
    return model.unet(x, t, encoder_hidden_states=context).sample


@torch.no_grad()
def _image_latent(model, image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).float() / 127.5 - 1  # (H, W, 3) in [-1, 1]
    x = x.permute(2, 0, 1)[None].to(model.device)  # (1, 3, H, W)
    return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor


@torch.no_grad()
def ddim_loop(model, scheduler, latent: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
    """The reference's `ddim_loop`: the guidance-1 inversion trajectory [x_0, ..., x_T]."""
    trajectory = [latent]
    x = latent.clone()
    for t in reversed(scheduler.timesteps):
        x = next_step(scheduler, _noise(model, x, t, cond), t, x)
        trajectory.append(x)
    return trajectory


def null_optimization(model, scheduler, trajectory: list[torch.Tensor], cond: torch.Tensor, uncond: torch.Tensor,
                      guidance: float, num_inner_steps: int, epsilon: float,
                      disable: bool = True) -> tuple[list[torch.Tensor], list[int]]:
    """The reference's `null_optimization`: one optimised null per sampling step, and the Adam steps taken."""
    steps = len(scheduler.timesteps)
    nulls, taken = [], []
    x = trajectory[-1]
    bar = tqdm(total=num_inner_steps * steps, desc="reference null-text optimisation", disable=disable, leave=False)
    for i, t in enumerate(scheduler.timesteps):
        uncond = uncond.clone().detach().requires_grad_(True)
        optimizer = torch.optim.Adam([uncond], lr=LEARNING_RATE * (1.0 - i / LR_DECAY_STEPS))
        pivot = trajectory[steps - i - 1]
        with torch.no_grad():
            eps_cond = _noise(model, x, t, cond)
        inner = 0
        while inner < num_inner_steps:
            eps_uncond = _noise(model, x, t, uncond)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            loss = F.mse_loss(prev_step(scheduler, eps, t, x), pivot)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            inner += 1
            bar.update()
            if loss.item() < epsilon + i * EPSILON_GROWTH:
                break
        bar.update(num_inner_steps - inner)
        taken.append(inner)
        nulls.append(uncond[:1].detach())
        with torch.no_grad():  # advance with the optimised null: [uncond; cond] in one batch, as the reference
            eps_uncond, eps_cond = _noise(model, torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
            x = prev_step(scheduler, eps_uncond + guidance * (eps_cond - eps_uncond), t, x)
    bar.close()
    return nulls, taken


def reference_null_text_inversion(model, image: np.ndarray, prompt: str, steps: int = REFERENCE_STEPS,
                                  guidance: float = REFERENCE_GUIDANCE, num_inner_steps: int = REFERENCE_INNER_STEPS,
                                  epsilon: float = REFERENCE_EPSILON, disable: bool = True) -> ReferenceInversion:
    """Invert one preprocessed photo (H, W, 3) uint8 under its source prompt, as the reference does."""
    from diffusers import DDIMScheduler

    check_model(model)
    if image.ndim != 3:
        raise UserError(f"the reference inverts one image (H, W, 3), got shape {image.shape}")
    scheduler = DDIMScheduler.from_config(model.scheduler.config)  # own copy: its timestep state is not shared
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        uncond = _encode_text(model, "", truncation=False)
        cond = _encode_text(model, prompt, truncation=True)
    trajectory = ddim_loop(model, scheduler, _image_latent(model, image), cond)
    with torch.enable_grad():
        nulls, taken = null_optimization(model, scheduler, trajectory, cond, uncond, guidance, num_inner_steps,
                                         epsilon, disable)
    return ReferenceInversion(x_T=trajectory[-1], trajectory=trajectory, nulls=nulls, inner_steps=taken)
