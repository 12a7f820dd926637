"""DDIM step math (Song et al., "Denoising Diffusion Implicit Models", eq. 12 with eta = 0).

Notation: a_t = alphas_cumprod[t] (alpha-bar in DDPM). A sample at level t is x_t = sqrt(a_t) x_0 + sqrt(1-a_t) eps.
One deterministic DDIM move from level s to level r, given the network output at x_s:
    x0_hat = (x_s - sqrt(1 - a_s) eps_hat) / sqrt(a_s)          (the "predicted x_0")
    x_r    = sqrt(a_r) x0_hat + sqrt(1 - a_r) eps_hat                (eq. 12, eta = 0)
Sampling moves from t to t - stride; inversion moves from t - stride to t, with the network evaluated at
the *destination* level t (the approximation of the null-text inversion reference's `next_step`, which
diffusers' DDIMInverseScheduler also makes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FULL_DEPTH = 1.0  # invert all the way to x_T, as every paper in the family does


@dataclass(frozen=True)
class DDIMSchedule:
    """The discrete schedule of one DDIM run: timesteps in sampling order (descending) and the alphas."""

    timesteps: tuple[int, ...]
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), fp64 on the CPU
    final_alpha_cumprod: float  # a_t for t < 0 (the level below the first training step)
    prediction_type: str  # "epsilon" or "v_prediction"
    stride: int

    @classmethod
    def from_scheduler(cls, scheduler, steps: int, depth: float = FULL_DEPTH) -> "DDIMSchedule":
        """The schedule of `steps` DDIM steps; with depth < 1 only its last `run_steps(steps, depth)` steps,
        the least noisy ones (SDEdit's partial noising, Meng et al.): a run from x_0 that far and back."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        scheduler.set_timesteps(steps)
        num_train = scheduler.config.num_train_timesteps
        run = run_steps(steps, depth)
        return cls(
            timesteps=tuple(int(t) for t in scheduler.timesteps)[-run:],
            alphas_cumprod=scheduler.alphas_cumprod.detach().double().cpu(),
            final_alpha_cumprod=float(scheduler.final_alpha_cumprod),
            prediction_type=scheduler.config.prediction_type,
            stride=num_train // steps,
        )

    def alpha(self, t: int) -> float:
        return float(self.alphas_cumprod[t]) if t >= 0 else self.final_alpha_cumprod

    def prev(self, t: int) -> int:
        """The level one sampling step below t (may be negative: then a = final_alpha_cumprod)."""
        return t - self.stride


def run_steps(steps: int, depth: float) -> int:
    """How many of `steps` DDIM steps a run of this depth (a fraction in (0, 1]) takes: at least one."""
    if not 0.0 < depth <= 1.0:  # also refuses nan
        raise ValueError(f"depth must be a fraction in (0, 1], got {depth}")
    return max(1, round(steps * depth))


def split_output(output: torch.Tensor, x: torch.Tensor, a: float, prediction_type: str):
    """Network output at a sample x of level a -> (x0_hat, eps_hat)."""
    if prediction_type == "epsilon":
        eps = output
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
    elif prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0  (Salimans & Ho, 2022)
        x0 = a ** 0.5 * x - (1 - a) ** 0.5 * output
        eps = a ** 0.5 * output + (1 - a) ** 0.5 * x
    else:
        raise ValueError(f"prediction type {prediction_type!r} is not supported (epsilon, v_prediction)")
    return x0, eps


def ddim_move(output: torch.Tensor, x: torch.Tensor, a_from: float, a_to: float,
              prediction_type: str) -> torch.Tensor:
    """Deterministic DDIM move of x from level a_from to level a_to (eq. 12, eta = 0)."""
    x0, eps = split_output(output, x, a_from, prediction_type)
    return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps


def sampling_step(schedule: DDIMSchedule, output: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """x_t -> x_{t - stride} (the reference's `prev_step`)."""
    return ddim_move(output, x, schedule.alpha(t), schedule.alpha(schedule.prev(t)), schedule.prediction_type)


def inversion_step(schedule: DDIMSchedule, output: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """x_{t - stride} -> x_t, with `output` evaluated at level t (the reference's `next_step`)."""
    return ddim_move(output, x, schedule.alpha(schedule.prev(t)), schedule.alpha(t), schedule.prediction_type)
