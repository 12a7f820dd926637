"""Image metrics and the memory figure every summary reports.

PSNR and SSIM come from scikit-image (pinned in requirements.txt), so our figures mean what the field's do.
Images are uint8 (H, W, 3) or (H, W) arrays; nothing here modifies them.
"""
from __future__ import annotations

import resource
import sys

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# A PSNR of identical pixels is infinite, which JSON cannot hold; summaries and reports write this instead.
PSNR_CAP_DB = 100.0
# SSIM as Wang et al. 2004 define it: an 11 x 11 Gaussian window of standard deviation 1.5 and population
# covariances (what torchmetrics, PIE-Bench's metric, also computes).
SSIM_SIGMA = 1.5


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, capped at PSNR_CAP_DB for identical images."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of different shapes {a.shape} and {b.shape}")
    if np.array_equal(a, b):
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, float(peak_signal_noise_ratio(a, b, data_range=data_range)))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004); a colour image scores the mean of its per-channel SSIMs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, channel_axis=-1 if a.ndim == 3 else None))


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch (CUDA), else the process' peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # macOS reports bytes, Linux KiB
