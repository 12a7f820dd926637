"""The quality suite's masked metrics (PSNR over a region, PIE-Bench's masked products) and PIE-Bench's masks.

PSNR and SSIM themselves are editing.core.metrics' (scikit-image). Every function takes uint8 or float arrays
of shape (H, W, 3) or (H, W) and never modifies them.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import mean_squared_error

from editing.core.metrics import psnr, ssim

# PIE-Bench (Ju et al. 2023, "Direct Inversion") stores each edit mask as run-length pairs over the
# row-major flattened 512 x 512 mask: [start, length, start, length, ...], starts counted from 0.
PIE_MASK_SIZE = 512


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (8-bit range) over the pixels where mask (H, W) is true (capped as editing.core.metrics.psnr); nan
    for none."""
    a, b = _pair(a, b)
    if not mask.any():
        return float("nan")
    return psnr(a[mask], b[mask])


def region_metrics(source: np.ndarray, edit: np.ndarray, region: np.ndarray) -> dict:
    """PIE-Bench's masked metrics: both uint8 images scaled to [0, 1] and multiplied by region (H, W)
    in {0, 1}, then PSNR, MSE and SSIM of the whole products (pixels outside the region count as equal
    zeros, as in PIE-Bench). None for every metric when the region is empty."""
    if not region.any():
        return {"psnr_db": None, "mse": None, "ssim": None}
    keep = region.astype(np.float64)[..., None]
    a, b = _pair(source / 255.0 * keep, edit / 255.0 * keep)
    return {"psnr_db": psnr(a, b, data_range=1.0), "mse": float(mean_squared_error(a, b)),
            "ssim": ssim(a, b, data_range=1.0)}


def decode_pie_mask(rle: list, size: int = PIE_MASK_SIZE) -> np.ndarray:
    """PIE-Bench's run-length mask -> (size, size) bool, True where the edit may change the picture.

    Pairs are [start, length] over the row-major flattened mask, starts from 0; a run that passes the
    end is cut there. As PIE-Bench's own decoder does, the one-pixel border of the image is marked as
    edited too (its comment: to avoid annotation errors at the boundary), so the border never counts as
    background.
    """
    if len(rle) % 2:
        raise ValueError(f"a PIE-Bench mask is [start, length] pairs, got an odd number of values ({len(rle)})")
    flat = np.zeros(size * size, bool)
    for start, length in zip(rle[::2], rle[1::2]):
        start, length = int(start), int(length)
        if start < 0 or length < 0:
            raise ValueError(f"a PIE-Bench mask run needs start, length >= 0, got [{start}, {length}]")
        flat[start:start + length] = True
    mask = flat.reshape(size, size)
    mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def encode_pie_mask(mask: np.ndarray) -> list[int]:
    """(size, size) bool -> PIE-Bench's [start, length, ...] runs of True pixels (row-major, from 0)."""
    flat = np.concatenate([[False], np.asarray(mask, bool).ravel(), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and ends, alternating
    starts, ends = edges[::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images of different shapes {a.shape} and {b.shape} cannot be compared")
    return a, b
