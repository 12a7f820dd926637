"""`--depth auto`: how far to invert a photo, chosen by how much of it the edit changes.

Inverting only the last part of the DDIM schedule (SDEdit's strength, Meng et al.) leaves the coarse layout
in the partly noised latent, so a local edit (a shape's colour or kind) keeps its place better; an edit of
the whole picture (its background) needs the noisy steps, where the layout of the picture is still open.
The extent is the share of the picture `--mask auto`'s disagreement mask covers (editing/auto_mask.py).

Measured on the toy world's 100 turned scenes (benchmarks/RESULTS.md, "How deep to invert"): the mask covers
0.97-1.00 of the picture for every background edit and 0.08-0.86 for every colour and shape edit; with Direct
+ P2P and layout guidance, depth 0.6 keeps the layout of more colour and shape edits than depth 1, 0.8 or 0.4,
and loses most background edits.
"""
from __future__ import annotations

import torch

from inversion.invert import FULL_DEPTH

GLOBAL_SHARE = 0.9  # a mask over this share of the picture is a whole-picture edit (the gap: 0.86 to 0.97)
LOCAL_DEPTH = 0.6  # of depths 0.4, 0.6, 0.8 and 1, the one that kept the most local edits in place


def depth_for(masks: torch.Tensor) -> float:
    """The inversion depth for edits with these (n_targets, h, w) {0, 1} masks: every target shares one
    inversion, so one edit of the whole picture among them needs the full depth."""
    share = float(masks.flatten(1).mean(1).max()) if len(masks) else 0.0
    return FULL_DEPTH if share > GLOBAL_SHARE else LOCAL_DEPTH
