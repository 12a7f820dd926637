"""DirectInversion (Ju et al., "PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code").

Instead of optimising anything, record at every sampling step the gap between the DDIM-inversion
trajectory and where one guided step from it lands; adding that gap back to the source branch while
editing keeps the source branch exactly on the inversion trajectory (eq. 6 of the paper: the source
latent is set to the inverted one), so the reconstruction is exact up to float error while the target
branches are untouched.
"""
from __future__ import annotations

from typing import Sequence

import torch

from editing.core.conditioning import Embedding
from editing.core.sampling import guided_output
from editing.core.ddim import DDIMSchedule, sampling_step


@torch.no_grad()
def direct_offsets(model, trajectory: Sequence[torch.Tensor], cond: Embedding, uncond: Embedding,
                   schedule: DDIMSchedule, guidance: float) -> list[torch.Tensor]:
    """offset_i = x_{t-1}^inv - step(x_t^inv, t, u, c), one (B, C, h, w) per sampling step."""
    steps = len(schedule.timesteps)
    offsets = []
    for i, t in enumerate(schedule.timesteps):
        x = trajectory[steps - i]
        landed = sampling_step(schedule, guided_output(model, x, t, cond, uncond, guidance), t, x)
        offsets.append(trajectory[steps - i - 1] - landed)
    return offsets
