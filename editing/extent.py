"""`--depth auto`, `--guidance auto`, `--layout-guidance auto`, `--cross-replace auto`: how far to invert a photo
and how to guide its edit, chosen by how much of it the edit changes.

Inverting only the last part of the DDIM schedule (SDEdit's strength, Meng et al.) leaves the coarse layout
in the partly noised latent, so a local edit (a shape's colour or kind) keeps its place better; an edit of
the whole picture (its background) needs the noisy steps, where the layout of the picture is still open.
The extent is the share of the picture `--mask auto`'s disagreement mask covers (editing/auto_mask.py).

Measured on the toy world's 100 turned scenes (benchmarks/RESULTS.md, "How deep to invert"): the mask covers
0.97-1.00 of the picture for every background edit and 0.08-0.86 for every colour and shape edit; with Direct
+ P2P and layout guidance, depth 0.6 keeps the layout of more colour and shape edits than depth 1, 0.8 or 0.4,
and loses most background edits.

Guidance by extent (the same section, "Null-text inversion at low guidance" and "Both inversions with the setting
chosen by the edit's extent"): null-text inversion at classifier-free guidance 2 keeps what a local edit should
keep (its unchanged region no longer behind Direct's) and still makes the colour and shape edits, but only about
half the background edits, which want 7.5; layout guidance 5 suits the gentler local edits and 10 the global
ones. Direct keeps the guidance it edits best with locally (7.5) and takes 10, which makes more background edits
against the layout guidance, for the whole picture. P2P's cross-attention window: null-text's background edits
are made more often with the source's maps injected over 0.4 of the steps than over P2P's 0.8 (the maps of a
textured background's words carry its texture); Direct's are made at 0.8. The other inversions were not
measured, so they have no "auto".
"""
from __future__ import annotations

import torch

from inversion.invert import FULL_DEPTH

GLOBAL_SHARE = 0.9  # a mask over this share of the picture is a whole-picture edit (the gap: 0.86 to 0.97)
LOCAL_DEPTH = 0.6  # of depths 0.4, 0.6, 0.8 and 1, the one that kept the most local edits in place
# (local edit, whole-picture edit) per inversion, each the best measured on the toy world's turned scenes
BY_EXTENT_GUIDANCE = {"null-text": (2.0, 7.5), "direct": (7.5, 10.0)}
BY_EXTENT_LAYOUT_GUIDANCE = {"null-text": (5.0, 10.0), "direct": (10.0, 10.0)}
BY_EXTENT_CROSS_REPLACE = {"null-text": (0.8, 0.4), "direct": (0.8, 0.8)}  # P2P's 0.8 but for NTI's global edits
BY_EXTENT = tuple(BY_EXTENT_GUIDANCE)  # the inversions whose guidance may be "auto"


def is_global(masks: torch.Tensor) -> bool:
    """Whether edits with these (n_targets, h, w) {0, 1} masks change the whole picture: every target shares one
    inversion (and one guided batch), so one edit of the whole picture among them makes them all global."""
    share = float(masks.flatten(1).mean(1).max()) if len(masks) else 0.0
    return share > GLOBAL_SHARE


def depth_for(masks: torch.Tensor) -> float:
    """The inversion depth for edits with these masks."""
    return FULL_DEPTH if is_global(masks) else LOCAL_DEPTH


def guidance_for(masks: torch.Tensor, inversion: str) -> float:
    """Classifier-free guidance (inversion and edit) for edits with these masks, after `inversion`."""
    return BY_EXTENT_GUIDANCE[inversion][is_global(masks)]


def layout_guidance_for(masks: torch.Tensor, inversion: str) -> float:
    """Layout guidance's step for edits with these masks, after `inversion`."""
    return BY_EXTENT_LAYOUT_GUIDANCE[inversion][is_global(masks)]


def cross_replace_for(masks: torch.Tensor, inversion: str) -> float:
    """P2P's cross-attention window (a fraction of the steps) for edits with these masks, after `inversion`."""
    return BY_EXTENT_CROSS_REPLACE[inversion][is_global(masks)]
