"""Image-quality metrics of the quality suite: PSNR and MSE (whole or masked), SSIM, and PIE-Bench's masks.

Every function takes uint8 or float arrays of shape (H, W, 3) or (H, W) and never modifies them.
"""
from __future__ import annotations

import cv2
import numpy as np

# SSIM as Wang et al. 2004 ("Image quality assessment: from error visibility to structural similarity"),
# section III-C: an 11 x 11 circular-symmetric Gaussian window of standard deviation 1.5 (eq. 14-16), and
# the constants C1 = (K1 L)^2, C2 = (K2 L)^2 of eq. 7 and 9 with K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# A PSNR of identical pixels is infinite, which JSON cannot hold; reports write this instead.
PSNR_CAP_DB = 100.0

# PIE-Bench (Ju et al. 2023, "Direct Inversion") stores each edit mask as run-length pairs over the
# row-major flattened 512 x 512 mask: [start, length, start, length, ...], starts counted from 0.
PIE_MASK_SIZE = 512


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over every pixel and channel, in the arrays' own units."""
    a, b = _pair(a, b)
    return float(np.mean((a - b) ** 2))


def psnr_from_mse(error: float, data_range: float) -> float:
    """10 log10(L^2 / MSE), capped at PSNR_CAP_DB for identical images."""
    return PSNR_CAP_DB if error == 0 else min(PSNR_CAP_DB, float(10 * np.log10(data_range ** 2 / error)))


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (8-bit range) over the pixels where mask (H, W) is true; inf for identical pixels, nan for none."""
    if not mask.any():
        return float("nan")
    a, b = _pair(a, b)
    error = np.mean((a[mask] - b[mask]) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0 ** 2 / error))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The separable 1-D factor (size,) of Wang et al.'s Gaussian window, normalised to sum 1."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two images (Wang et al. 2004, eq. 13, averaged as their MSSIM, eq. 17).

    Local statistics come from the Gaussian window; the mean runs over the positions where the whole
    window lies inside the image (no padding). A colour image scores the mean of its per-channel SSIMs
    (not the SSIM of a grey conversion). This is what skimage.metrics.structural_similarity computes with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, and what
    torchmetrics' StructuralSimilarityIndexMeasure (PIE-Bench's) computes with its defaults.
    data_range: L of eq. 7, 255 for uint8 pixels, 1 for pixels scaled to [0, 1].
    """
    a, b = _pair(a, b)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px, got {a.shape[:2]}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    w = gaussian_window()
    r = SSIM_WINDOW // 2

    def local_mean(x: np.ndarray) -> np.ndarray:  # (H, W) -> (H - 2r, W - 2r): windows wholly inside
        return cv2.sepFilter2D(x, cv2.CV_64F, w, w, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    scores = []
    for k in range(a.shape[-1]):
        x, y = np.ascontiguousarray(a[..., k]), np.ascontiguousarray(b[..., k])
        mu_x, mu_y = local_mean(x), local_mean(y)
        var_x = local_mean(x * x) - mu_x ** 2  # sigma_x^2 of eq. 15
        var_y = local_mean(y * y) - mu_y ** 2
        cov = local_mean(x * y) - mu_x * mu_y  # sigma_xy of eq. 16
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        scores.append(ssim_map.mean())
    return float(np.mean(scores))


def region_metrics(source: np.ndarray, edit: np.ndarray, region: np.ndarray) -> dict:
    """PIE-Bench's masked metrics: both uint8 images scaled to [0, 1] and multiplied by region (H, W)
    in {0, 1}, then PSNR, MSE and SSIM of the whole products (pixels outside the region count as equal
    zeros, as in PIE-Bench). None for every metric when the region is empty."""
    if not region.any():
        return {"psnr_db": None, "mse": None, "ssim": None}
    keep = region.astype(np.float64)[..., None]
    a, b = source / 255.0 * keep, edit / 255.0 * keep
    error = mse(a, b)
    return {"psnr_db": psnr_from_mse(error, 1.0), "mse": error, "ssim": ssim(a, b, data_range=1.0)}


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
