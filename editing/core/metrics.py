"""Image metrics and the memory figure every summary reports.

PSNR and SSIM come from scikit-image (pinned in requirements.txt), so our figures mean what the field's do.
Images are uint8 (H, W, 3) or (H, W) arrays; nothing here modifies them.
"""
from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

# A PSNR of identical pixels is infinite, which JSON cannot hold; summaries and reports write this instead.
PSNR_CAP_DB = 100.0
# SSIM as Wang et al. 2004 define it: an 11 x 11 Gaussian window of standard deviation 1.5 and population
# covariances (what torchmetrics, PIE-Bench's metric, also computes).
SSIM_SIGMA = 1.5
# Linux: writing "5" to clear_refs resets the process' peak resident set size (VmHWM in status) to the current one.
CLEAR_REFS, STATUS = Path("/proc/self/clear_refs"), Path("/proc/self/status")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, capped at PSNR_CAP_DB for identical images."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR of images of different shapes {a.shape} and {b.shape}")
    if np.array_equal(a, b):
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, float(peak_signal_noise_ratio(a, b, data_range=data_range)))


def psnr_from_mse(mse: float, data_range: float) -> float:
    """10 log10(L^2 / MSE) in dB, for a loop that already has the mean squared error (a training batch's loss);
    capped at PSNR_CAP_DB. Images go through `psnr`."""
    return PSNR_CAP_DB if mse <= 0 else min(PSNR_CAP_DB, 10 * float(np.log10(data_range ** 2 / mse)))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004); a colour image scores the mean of its per-channel SSIMs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, channel_axis=-1 if a.ndim == 3 else None))


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak for `peak_memory_mb`: CUDA's allocator statistics, or (Linux) the process' peak resident
    set size. False where the CPU peak cannot be reset: the next figure then covers the whole process so far."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch (CUDA), else the process' peak resident set size, in MiB: since the
    last `reset_peak_memory` where that worked, else since the process started."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        found = re.search(r"VmHWM:\s+(\d+) kB", STATUS.read_text())
        if found:
            return int(found.group(1)) / 2 ** 10
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # macOS reports bytes, Linux KiB
