"""Teaching the toy model that a changed word changes only what it names: an edit-pair loss for training.

The diagnosis in benchmarks/RESULTS.md found the layout of an edit moving because the edit branch redraws
the shape once its conditioning changes, even with the cross-attention maps held (a localisation loss that
made the maps five times sharper did not hold the layout). Nothing in plain training asks for more: the
model only ever denoises an image under its own caption, so what it does to a noisy "red square" under
"a blue square" is free. The world can say what it should do, since it renders the edited twin of every
training scene (same shapes, sizes, places and angles; one attribute changed).

An edit-pair row noises a training latent z0 as usual, z_t = sqrt(a) z0 + sqrt(1 - a) eps, but conditions on
the twin's caption and asks for the twin: the epsilon target is the one whose implied x0 is the twin's latent,
eps' = (z_t - sqrt(a) z0_twin) / sqrt(1 - a) = eps + sqrt(a / (1 - a)) (z0 - z0_twin). Under min-SNR weights
this is min(snr, gamma) * |x0_pred - z0_twin|^2, bounded at low noise. The rows are never caption-dropped
(the empty prompt names no edit).
"""
from __future__ import annotations

import numpy as np
import torch

from toyworld.world import Scene, edit_scene, random_edit

TWIN_SEED_OFFSET = 30_000  # the twins' edits draw from seed + this, apart from the scenes' own streams


def twin_scenes(scenes: list[Scene], seed: int) -> list[Scene]:
    """One edited twin per scene: a random valid edit of its main shape (colour, shape or background), the
    layout kept. A scene with no valid edit is its own twin (an identity pair: plain training)."""
    rng = np.random.default_rng(seed + TWIN_SEED_OFFSET)
    out = []
    for scene in scenes:
        try:
            attribute, value = random_edit(rng, scene, index=scene.main_index)
        except ValueError:
            out.append(scene)
            continue
        out.append(edit_scene(scene, attribute, value, index=scene.main_index))
    return out


def pair_target(eps: torch.Tensor, z0: torch.Tensor, z0_twin: torch.Tensor,
                alpha_bar: torch.Tensor) -> torch.Tensor:
    """The epsilon target of an edit-pair row: z_t came from z0 with noise eps; its implied x0 is z0_twin.
    alpha_bar broadcasts against the latents, e.g. (B, 1, 1, 1)."""
    return eps + (alpha_bar / (1 - alpha_bar)).sqrt() * (z0 - z0_twin)


def pair_rows(batch: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """(batch,) bool: the rows of a step that are edit pairs, each with probability fraction."""
    return torch.rand(batch, generator=gen) < fraction
