"""DDIM inversion (Song et al., eq. 12 with eta = 0, run from x_0 towards x_T): the trajectory every inversion
method starts from. The step math lives in `editing.core.ddim`; see its notes for the notation.
"""
from __future__ import annotations

import torch
from editing.core.progress import tqdm  # tqdm.auto.tqdm that a caller can follow (the web page)

from editing.core.ddim import DDIMSchedule, inversion_step


@torch.no_grad()
def ddim_inversion(denoise, x0: torch.Tensor, cond: torch.Tensor, schedule: DDIMSchedule,
                   disable: bool = True) -> list[torch.Tensor]:
    """The guidance-1 DDIM inversion trajectory [x_0, x_1, ..., x_T] of latents x0 (B, C, h, w).

    denoise(x, t, cond) -> network output (epsilon or v). Entry k is the latent after k inversion steps,
    so trajectory[-1] is x_T and trajectory[len - 1 - i] is the latent sampling step i starts from.
    """
    trajectory = [x0]
    x = x0
    for t in tqdm(schedule.timesteps[::-1], desc="DDIM inversion", disable=disable, leave=False):
        x = inversion_step(schedule, denoise(x, t, cond), t, x)
        trajectory.append(x)
    return trajectory
