"""Loading a model for editing from what the user names: the embedded default, a random test model, a
diffusers folder, a single checkpoint file, or a hub id already in the local cache. Never downloads.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch

from editing.core.errors import UserError
from editing.core.model import (DEFAULT_MODEL_DIR, DEFAULT_NAMES, TINY_RANDOM_NAME, Model, _from_pipeline, _place,
                                build_tiny_model, pick_device, pick_dtype)
from editing.core.sd_random import ARCHITECTURES, build_sd_random
from editing.core.sdxl import load_sdxl


def _hub_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def load_model(spec: str | os.PathLike | None = None, device: str = "auto", dtype: str = "fp32") -> Model:
    """Load a model for editing.

    spec: None or "default" -> the embedded default (the trained toyworld model when present, otherwise a
    seeded tiny random model); "tiny-random"; "sd15-random" / "sd21-random" (the real SD architectures with
    random weights, for timings); a diffusers folder; a .safetensors/.ckpt file; a hub id that
    is already in the local Hugging Face cache. Never downloads.
    """
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    spec = None if spec is None else str(spec)
    if spec is None or spec in DEFAULT_NAMES:
        if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            return _load_folder(DEFAULT_MODEL_DIR, "default", dev, torch_dtype)
        return _place(build_tiny_model(), TINY_RANDOM_NAME, dev, torch_dtype)
    if spec == TINY_RANDOM_NAME:
        return _place(build_tiny_model(), TINY_RANDOM_NAME, dev, torch_dtype)
    if spec in ARCHITECTURES:
        return _place(build_sd_random(spec), spec, dev, torch_dtype)
    with _quiet_loading():  # SDXL (sdxl-random, an SDXL diffusers folder): editing/core/sdxl.py
        sdxl = load_sdxl(spec, dev, torch_dtype)
    if sdxl is not None:
        return sdxl
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is a folder but not a diffusers model (no model_index.json in it)")
        return _load_folder(path, str(path), dev, torch_dtype)
    if path.suffix in (".safetensors", ".ckpt"):
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        return _load_single_file(path, dev, torch_dtype)
    if path.exists():
        raise UserError(f"{path} is not a model: give a diffusers folder, a .safetensors or .ckpt file")
    return _load_cached_hub_id(spec, dev, torch_dtype)


@contextmanager
def _quiet_loading():
    """No loader progress bars on stderr (a command's stderr is for its one-line errors); restored after."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (diffusers_logging, transformers_logging)]
    for module, _, _ in states:
        module.disable_progress_bar()
        module.set_verbosity_error()  # e.g. transformers' torchvision notice when the pipeline is imported
    try:
        yield
    finally:
        for module, enabled, verbosity in states:
            module.set_verbosity(verbosity)
            if enabled:
                module.enable_progress_bar()


def _load_folder(path: Path, name: str, device, dtype) -> Model:
    try:
        with _quiet_loading():
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the diffusers model in {path}: {str(exc).splitlines()[0]}") from exc
    return _from_pipeline(pipe, name, device, dtype)


def _load_single_file(path: Path, device, dtype) -> Model:
    """A single SD checkpoint. diffusers reads .safetensors with safetensors and .ckpt with
    torch.load(weights_only=True), so no pickled code from the file is ever run."""
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), safety_checker=None, requires_safety_checker=False, local_files_only=True)
    except Exception as exc:  # diffusers raises many kinds here; all mean "this file is not usable"
        raise UserError(f"cannot load the checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                        " (single files need the model's configs in the local Hugging Face cache;"
                        " a diffusers folder needs nothing else)") from exc
    return _from_pipeline(pipe, str(path), device, dtype)


def _load_cached_hub_id(spec: str, device, dtype) -> Model:
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            spec, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            local_files_only=True)
    except Exception as exc:  # not in the cache, or not a valid id
        raise UserError(f"model {spec!r} not found: it is not a folder or file here, and not a hub id in the "
                        f"local cache {_hub_cache_dir()} (nothing is downloaded)") from exc
    return _from_pipeline(pipe, spec, device, dtype)
