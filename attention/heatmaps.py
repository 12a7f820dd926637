"""Pictures of attention: per-token cross-attention heatmaps over the image, and the top components of
self-attention (an SVD of the averaged self-attention matrix), as in the Prompt-to-Prompt notebooks."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import torch

from attention.controllers import AttentionStore


def _maps_at(store: AttentionStore, kind: str, row: int, side: int | None) -> tuple[torch.Tensor, int]:
    """Average of the stored layers at one resolution for one prompt row -> ((Q, K), side)."""
    maps = [m[row] for m in store.average(kind)]  # each (Q, K)
    if not maps:
        raise ValueError(f"no {kind}-attention maps were stored")
    sides = Counter(int(round(m.shape[0] ** 0.5)) for m in maps)
    side = side or max(sides, key=lambda s: (sides[s], s))  # the most common resolution, larger on ties
    chosen = [m for m in maps if m.shape[0] == side * side]
    return torch.stack(chosen).mean(0), side


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    heat = (255 * (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)).astype(np.uint8)
    heat = cv2.resize(heat, image.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    colour = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (0.5 * image + 0.5 * colour).astype(np.uint8)


def cross_attention_heatmaps(store: AttentionStore, row: int, prompt: str, tokenizer, image: np.ndarray,
                             side: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """One overlay per token of the prompt (start and end tokens left out), with the token texts."""
    maps, side = _maps_at(store, "cross", row, side)
    ids = tokenizer(prompt).input_ids[1:-1]
    images, captions = [], []
    for position, token_id in enumerate(ids, start=1):
        heat = maps[:, position].reshape(side, side).cpu().numpy()
        images.append(overlay(image, heat))
        captions.append(tokenizer.decode([token_id]).strip())
    return images, captions


def self_attention_components(store: AttentionStore, row: int, image: np.ndarray, count: int = 6,
                              side: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The top `count` right-singular vectors of the centred self-attention matrix, as overlays."""
    maps, side = _maps_at(store, "self", row, side)  # (Q, Q)
    maps = maps.double().cpu()
    _, _, vh = torch.linalg.svd(maps - maps.mean(0, keepdim=True), full_matrices=False)
    count = min(count, vh.shape[0])
    images = [overlay(image, vh[i].reshape(side, side).numpy()) for i in range(count)]
    return images, [f"component {i + 1}" for i in range(count)]
