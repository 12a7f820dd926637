"""Teaching the toy model where its words are: a cross-attention localisation loss for training.

Prompt-to-Prompt edits by keeping the source's cross-attention maps and swapping a word's values, so it
relies on a word attending to the thing it names. The diagnosis in benchmarks/RESULTS.md ("Why the default
model edits worse than it draws") found the toy model's colour and shape words barely localised (0.13-0.21
of their attention on the shape, against 0.11 for uniform attention): a swapped word then tints the whole
picture and the shape's extent is left to the rest of the network. The world knows where every word is, so
the trainer can say so: each colour and shape word should attend to its own shape, the background words to
the rest of the picture.

`word_regions` gives every caption token a region (a shape, the background, or none); `AttentionRecorder`
collects the cross-attention probabilities of a training forward pass through the project's attention
processors; `localisation_loss` is -log of the share of each supervised token's attention inside its region,
averaged over the tokens, layers and captions.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from attention.processors import attention_control
from toyworld.world import BACKGROUNDS, Scene, _article, shape_coverage

UNSUPERVISED = -1  # a token with no region: BOS, articles, "and", "on", EOS and padding
REGIONS_SIDE = 16  # region maps are kept at the latent size (64 px / 4); coarser layers average them
MIN_SHARE = 1e-6  # -log(share) stays finite when a map puts no mass in its region


def caption_words(scene: Scene) -> list[tuple[str, int]]:
    """The caption's words in order, each with its region: a shape's index, len(shapes) for the background,
    or UNSUPERVISED. The words are those of `toyworld.world.caption`, which this mirrors (a test checks it)."""
    words: list[tuple[str, int]] = []
    for i, shape in enumerate(scene.shapes):
        if i:
            words.append(("and", UNSUPERVISED))
        words += [(_article(shape.colour), UNSUPERVISED), (shape.colour, i), (shape.kind, i)]
    background = BACKGROUNDS[scene.background]
    background_region = len(scene.shapes)
    words += [("on", UNSUPERVISED), (_article(background), UNSUPERVISED), (background, background_region),
              ("background", background_region)]
    return words


def token_regions(scene: Scene, tokenizer) -> np.ndarray:
    """(model_max_length,) int8: each token's region (see caption_words); position 0 is BOS."""
    regions = np.full(tokenizer.model_max_length, UNSUPERVISED, np.int8)
    position = 1
    for word, region in caption_words(scene):
        n = len(tokenizer(word, add_special_tokens=False).input_ids)  # CLIP's BPE splits on words
        regions[position:position + n] = region
        position += n
    return regions


def scene_regions(scene: Scene, max_shapes: int = 2, side: int = REGIONS_SIDE) -> np.ndarray:
    """(max_shapes + 1, side, side) float16: each shape's coverage, then the background (the rest); rows of
    absent shapes are zero. The background row sits at index len(scene.shapes), so shapes and background are
    indexed as caption_words indexes them once rows are gathered per scene (see region_targets)."""
    if len(scene.shapes) > max_shapes:
        raise ValueError(f"a scene with {len(scene.shapes)} shapes; the regions hold at most {max_shapes}")
    out = np.zeros((max_shapes + 1, side, side), np.float32)
    factor = 64 // side
    for i in range(len(scene.shapes)):
        cover = shape_coverage(scene, i, 64)
        out[i] = cover.reshape(side, factor, side, factor).mean(axis=(1, 3))
    out[len(scene.shapes)] = np.clip(1.0 - out[:len(scene.shapes)].sum(0), 0.0, 1.0)
    return out.astype(np.float16)


class AttentionRecorder:
    """A controller for attention.processors: it asks for every cross-attention layer and keeps the
    probabilities, averaged over heads, with their gradients: [(B, Q, L), ...] for one forward pass."""

    def __init__(self):
        self.maps: list[torch.Tensor] = []

    def installed(self, unet):
        return attention_control(unet, self)

    def wants(self, is_cross: bool, queries: int, step: int) -> bool:
        return is_cross

    def edit(self, probs: torch.Tensor, *, is_cross: bool, place: str, step: int, heads: int) -> torch.Tensor:
        self.maps.append(probs.view(-1, heads, *probs.shape[1:]).mean(1))
        return probs


def localisation_loss(maps: list[torch.Tensor], tokens: torch.Tensor, regions: torch.Tensor,
                      keep: torch.Tensor) -> torch.Tensor:
    """Mean -log(share of a token's attention inside its region).

    maps: [(B, Q, L)] cross-attention probabilities of square layers; tokens: (B, L) long, each token's
    region index or UNSUPERVISED; regions: (B, R, side, side) region maps; keep: (B,) bool, the captions to
    supervise (False for dropped captions)."""
    supervised = (tokens >= 0) & keep[:, None]  # (B, L)
    if not supervised.any():
        return maps[0].new_zeros(())
    index = tokens.clamp_min(0)
    losses = []
    for probs in maps:
        side = int(round(probs.shape[1] ** 0.5))
        pooled = F.adaptive_avg_pool2d(regions.to(probs), side).flatten(2)  # (B, R, Q)
        target = torch.gather(pooled, 1, index[:, :, None].expand(-1, -1, pooled.shape[2]))  # (B, L, Q)
        mass = probs.transpose(1, 2)  # (B, L, Q): each token's attention over the queries
        share = (mass * target).sum(-1) / mass.sum(-1).clamp_min(MIN_SHARE)  # (B, L)
        losses.append(-share.clamp_min(MIN_SHARE).log()[supervised].mean())
    return torch.stack(losses).mean()


def recorded_forward(unet, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor):
    """The UNet's epsilon prediction and its cross-attention maps (one training forward pass)."""
    recorder = AttentionRecorder()
    with recorder.installed(unet):
        pred = unet(zt, t, encoder_hidden_states=cond, cross_attention_kwargs={"step": 0}).sample
    return pred, recorder.maps
