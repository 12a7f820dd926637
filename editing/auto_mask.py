"""`--mask auto`: the region an edit may change, from the model and the two captions alone.

The mask of DiffEdit (Couairon et al., 2022): noise the photo's latent part of the way, ask the UNet for its
prediction under the source caption and under the target caption, and mark where the two differ. A changed
word pulls the predictions apart where it applies and nowhere else, so the mask follows the edit (the red
square of "a red square on gray" -> "a blue square on gray", the whole background of "... on gray" -> "... on
stripes") without the words having to be named. P2P then blends under it (the reference's local blend, from
`--blend-start` on): outside the mask every edit keeps the source latent, so an edited shape cannot grow past
the region the captions disagree on, and the rest of the photo stays the source's.

The UNet's output may be epsilon or v: for one noisy latent, v differs between two captions by the epsilon
difference times 1/sqrt(a_t), the same for every pixel, so the max-normalised mask is the same either way.

Measured on the toy world (benchmarks/RESULTS.md, "The disagreement mask in the toolkit"): against the true
changed region it covers 0.91-1.00 of it; with Direct + P2P on 100 turned scenes it keeps the layout in 66
edits instead of 59 and loses no edit.
"""
from __future__ import annotations

import numpy as np
import torch

# measured against the truth on the toy world (`benchmarks.editability --parts mask`, RESULTS):
MASK_STRENGTH = 0.3  # noise level t = 0.3 T; 0.2 and 0.4 are no better at any threshold
MASK_DRAWS = 10  # noise draws averaged (DiffEdit's n)
MASK_THRESHOLD = 0.1  # of the largest difference: the only one tried that covers > 0.9 of every kind of edit
# (DiffEdit's 0.5 covers 0.24-0.53 of it)


@torch.no_grad()
def disagreement(model, image: np.ndarray, source_prompt: str, target_prompts: list[str], seed: int = 0,
                 strength: float = MASK_STRENGTH, draws: int = MASK_DRAWS) -> torch.Tensor:
    """(n_targets, h, w) in [0, 1] at latent size: how far the UNet's prediction under each target caption is
    from the one under the source caption, on the photo's latent noised to t = strength T (mean |difference|
    over channels and draws), divided by its largest value (all 0 for a target that changes nothing).

    image: uint8 (S, S, 3) at the model's resolution. The noise comes from a CPU generator seeded with `seed`,
    so the map does not depend on the device.
    """
    latent = model.encode_images(image[None])  # (1, C, h, w)
    cond = model.encode_prompts([source_prompt, *target_prompts])
    rows = 1 + len(target_prompts)
    t = int(strength * model.scheduler.config.num_train_timesteps)
    a = float(model.scheduler.alphas_cumprod[t])
    generator = torch.Generator().manual_seed(seed)
    difference = torch.zeros(len(target_prompts), *latent.shape[2:])
    for _ in range(draws):
        noise = torch.randn(latent.shape, generator=generator).to(latent.device)
        noisy = (a ** 0.5 * latent + (1 - a) ** 0.5 * noise).expand(rows, -1, -1, -1)
        out = model.unet_output(noisy, t, cond)  # (rows, C, h, w)
        difference += (out[1:] - out[:1]).abs().mean(1).cpu()
    return difference / difference.flatten(1).amax(1).clamp_min(torch.finfo(difference.dtype).tiny)[:, None, None]


def disagreement_masks(model, image: np.ndarray, source_prompt: str, target_prompts: list[str], seed: int = 0,
                       strength: float = MASK_STRENGTH, draws: int = MASK_DRAWS,
                       threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """(n_targets, h, w) float in {0, 1} at latent size, one mask per target: 1 where `disagreement` is over
    `threshold`. A target that reads the photo as the source does (the same caption) gets an empty mask."""
    return (disagreement(model, image, source_prompt, target_prompts, seed, strength, draws) > threshold).float()


def mask_picture(mask: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A (h, w) {0, 1} mask at latent size -> uint8 (H, W, 3) for an image of `shape`, white where the edit may
    change: the picture `--mask` reads, so a user can correct it and give it back."""
    cells = mask.numpy().astype(np.uint8) * 255
    cells = np.repeat(np.repeat(cells, shape[0] // cells.shape[0], 0), shape[1] // cells.shape[1], 1)
    return np.repeat(cells[..., None], 3, -1)
