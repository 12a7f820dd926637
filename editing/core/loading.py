"""Loading a model for editing from what the user names: the embedded default, a random test model, a
diffusers folder (fp16-variant-only folders too), a single checkpoint file (SD 1.x / 2.x / SDXL base in the
original layout, built with the configs shipped in editing/assets/configs/), or a hub id in the local cache.

Nothing is downloaded unless asked (`download=True`, the CLIs' `--download`): every library call here runs
with local_files_only=True inside `no_network()`, so a missing piece is reported as missing, with how to
fetch it, instead of being fetched behind the user's back. The text encoder and the VAE are always fp32.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from editing.core.checkpoints import (SDXL_BASE, Architecture, clip_tokenizer, detect,
                                      is_checkpoint_path, load_state_dict, read_shapes)
from editing.core.errors import UserError
from editing.core.model import (DEFAULT_MODEL_DIR, DEFAULT_NAMES, TINY_RANDOM_NAME, Model,
                                _from_pipeline, _place, build_tiny_model, ddim_scheduler, pick_device, pick_dtype)
from editing.core.offline import no_network, quiet_libraries
from editing.core.sd_random import ARCHITECTURES, build_sd_random
from editing.core.sdxl import load_sdxl, place_sdxl

# owner/name as the hub spells repositories (what may be downloaded; anything else is a local path)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
# The configs a single file is built from (a shipped folder, or the same files of the published repo).
CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json")
SDXL_CONFIG_FILES = ("text_encoder_2/config.json", "tokenizer_2/tokenizer_config.json")  # SDXL's second encoder
# what --download fetches for a file's configs: a few KB
CONFIG_PATTERNS = ["*.json", "tokenizer/*.txt", "tokenizer_2/*.txt"]
# Weight files of a diffusers component, plain (`model.safetensors`) or a variant (`model.fp16.safetensors`).
WEIGHT_FILE = re.compile(r"(?:diffusion_pytorch_model|model|pytorch_model)(?:-\d+-of-\d+)?"
                         r"(?:\.(?P<variant>[A-Za-z0-9_]+))?(?:-\d+-of-\d+)?\.(?:safetensors|bin)")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
PART_LABELS = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "second text encoder"}
PREFERRED_VARIANT = "fp16"  # when a folder offers several variants and no plain weights
_quiet_loading = quiet_libraries  # the name benchmarks/pie.py imports


def _hub_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def load_model(spec: str | os.PathLike | None = None, device: str = "auto", dtype: str = "fp32", *,
               prediction_type: str | None = None, download: bool = False, debug: bool = False,
               config: str | os.PathLike | None = None) -> Model:
    """Load a model for editing.

    spec: None or "default" -> the embedded default (the trained toyworld model when present, otherwise a
    seeded tiny random model); "tiny-random"; "sd15-random" / "sd21-random" (the released SD architectures
    with random weights, for timings); a diffusers folder; a .safetensors/.ckpt file (any letter case);
    a hub id in the local Hugging Face cache, or fetched into it with download=True.
    prediction_type: "epsilon" or "v_prediction" for a single file whose weights do not say (SD 2.x: the
    default is the 768-v release; epsilon selects the 512 base configs). debug: show library warnings.
    config: for a single file, the diffusers folder whose component configs describe it (default: the
    shipped configs of the release its tensor names match; give one for a file of another size).
    """
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    spec = None if spec is None else str(spec)
    path = None if spec is None else Path(spec).expanduser()
    is_file = path is not None and is_checkpoint_path(path)
    if prediction_type is not None and not is_file:
        raise UserError(f"--prediction-type {prediction_type} applies to single checkpoint files (whose weights do "
                        "not say); a diffusers folder or hub id has it in its scheduler config")
    if config is not None and not is_file:
        raise UserError("a config folder applies to single checkpoint files; a diffusers folder or hub id has its own")
    if spec is None or spec in DEFAULT_NAMES:
        if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            return _load_folder(DEFAULT_MODEL_DIR, "default", dev, torch_dtype, debug)
        return _place(build_tiny_model(), TINY_RANDOM_NAME, dev, torch_dtype)
    if spec == TINY_RANDOM_NAME:
        return _place(build_tiny_model(), TINY_RANDOM_NAME, dev, torch_dtype)
    if spec in ARCHITECTURES:
        with quiet_libraries(debug):
            return _place(build_sd_random(spec), spec, dev, torch_dtype)
    with quiet_libraries(debug):  # SDXL (sdxl-random, an SDXL diffusers folder): editing/core/sdxl.py
        sdxl = load_sdxl(spec, dev, torch_dtype)
    if sdxl is not None:
        return sdxl
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is a folder but not a diffusers model (no model_index.json in it)")
        return _load_folder(path, str(path), dev, torch_dtype, debug)
    if is_file:
        if not path.is_file():
            raise UserError(f"model file not found: {path}")
        return _load_single_file(path, dev, torch_dtype, prediction_type, download, debug,
                                 None if config is None else Path(config).expanduser())
    if path.exists():
        raise UserError(f"{path} is not a model: give a diffusers folder, a .safetensors or .ckpt file")
    return _load_hub_id(spec, dev, torch_dtype, download, debug)


@contextmanager
def _offline(what: str, debug: bool):
    """Quiet, local-only loading of `what`: a failure that came from trying the network becomes a
    UserError naming what is missing and how to fetch it."""
    with quiet_libraries(debug), no_network() as attempts:
        try:
            yield
        except UserError:
            raise
        except Exception as exc:
            if attempts.tried:
                raise UserError(f"{what} is not complete on this machine, and loading it tried the network "
                                f"({attempts.describe()}), which is off: add --download to fetch it") from exc
            raise


# ---------------------------------------------------------------- diffusers folders and hub ids


def _load_folder(path: Path, name: str, device, dtype, debug: bool) -> Model:
    variant = weights_variant(path)
    try:
        with _offline(f"the diffusers model in {path}", debug):
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline.from_pretrained(
                path, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                local_files_only=True, variant=variant, torch_dtype={"unet": dtype, "default": torch.float32})
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot load the diffusers model in {path}: {_first_line(exc)}") from exc
    model = _from_pipeline(pipe, name, device, dtype)
    if variant is not None:
        model.notes = {"weights": f"{variant} variant files (the folder has no plain weights)"}
    return model


def weights_variant(folder: Path) -> str | None:
    """None when every component has plain weight files; otherwise the variant its files have
    (`fp16` for `diffusion_pytorch_model.fp16.safetensors`)."""
    variants = set()
    for component in WEIGHT_COMPONENTS:
        sub = folder / component
        if not sub.is_dir():
            continue
        found = [m.group("variant") for f in sub.iterdir() if (m := WEIGHT_FILE.fullmatch(f.name))]
        if None not in found:
            variants.update(found)
    if not variants:
        return None
    return PREFERRED_VARIANT if PREFERRED_VARIANT in variants else sorted(variants)[0]


def _load_hub_id(spec: str, device, dtype, download: bool, debug: bool) -> Model:
    not_here = (f"model {spec!r} not found: it is not a folder or file here, and not a hub id in the local cache "
                f"{_hub_cache_dir()}")
    if not HUB_ID.fullmatch(spec):
        raise UserError(not_here + (" (a hub id is owner/name)" if download else ""))
    if download:
        folder = _download_pipeline(spec, debug)
    else:
        from huggingface_hub import snapshot_download

        try:
            with _offline(f"model {spec!r}", debug):
                folder = snapshot_download(spec, local_files_only=True)
        except UserError:
            raise
        except Exception as exc:  # LocalEntryNotFoundError and friends: not in the cache
            raise UserError(not_here + " (add --download to fetch it from the Hugging Face hub)") from exc
    if not (Path(folder) / "model_index.json").is_file():
        raise UserError(f"{spec!r} in the cache ({folder}) is not a diffusers model (no model_index.json)")
    return _load_folder(Path(folder), spec, device, dtype, debug)


def _download_pipeline(spec: str, debug: bool) -> str:
    """Fetch a hub id into the normal Hugging Face cache (with progress bars): the only network access."""
    from diffusers import DiffusionPipeline

    try:
        with quiet_libraries(debug, progress=True):
            folder = DiffusionPipeline.download(spec)
            if weights_variant(Path(folder)) is None and not _has_weights(Path(folder)):
                folder = DiffusionPipeline.download(spec, variant=PREFERRED_VARIANT)
    except Exception as exc:
        raise UserError(f"could not download {spec!r} from the Hugging Face hub: {_first_line(exc)}") from exc
    return folder


def _has_weights(folder: Path) -> bool:
    return (folder / "unet").is_dir() and any(WEIGHT_FILE.fullmatch(f.name) for f in (folder / "unet").iterdir())


# ---------------------------------------------------------------- single checkpoint files


def _load_single_file(path: Path, device, dtype, prediction_type, download: bool, debug: bool,
                      config: Path | None = None) -> Model:
    """An SD 1.x / 2.x / SDXL base checkpoint in the original layout: the architecture is read from the tensor
    names, the components built from the shipped configs (or `config`), the weights converted by diffusers."""
    detected = detect(path, read_shapes(path), prediction_type)
    sdxl = detected.architecture is SDXL_BASE
    if config is None:
        config = _config_folder(detected.architecture, download, debug)
    elif not (config / "unet" / "config.json").is_file():
        raise UserError(f"config folder {config} has no unet/config.json: give a diffusers model folder (its "
                        "weights are not needed, only the component configs)")
    label = detected.architecture.label
    try:
        with _offline(f"the {label} configs in {config}", debug):
            parts = _convert(path, config, dtype, sdxl)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"cannot load {path} as {label}: {_first_line(exc)}") from exc
    for part, module in parts.items():
        unloaded = [n for n, t in module.state_dict().items() if t.is_meta]
        if unloaded:
            raise UserError(f"{path} is incomplete: {len(unloaded)} {PART_LABELS[part]} weights of {label} are "
                            f"missing from it (e.g. {unloaded[0]!r})")
    scheduler_config = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    scheduler = ddim_scheduler(dict(scheduler_config, prediction_type=detected.prediction_type))
    tokenizer = clip_tokenizer(config / "tokenizer")
    if sdxl:
        force_zeros = json.loads((config / "model_index.json").read_text()).get("force_zeros_for_empty_prompt", True)
        model = place_sdxl(dict(parts, tokenizer=tokenizer, tokenizer_2=clip_tokenizer(config / "tokenizer_2"),
                                scheduler=scheduler), str(path), device, dtype, bool(force_zeros))
    else:
        model = _place((parts["unet"], parts["vae"], parts["text_encoder"], tokenizer, scheduler), str(path),
                       device, dtype)
    model.notes = {"checkpoint": f"{label} single file", "prediction_type": detected.note}
    return model


def _convert(path: Path, config: Path, dtype, sdxl: bool) -> dict:
    """{unet, vae, text_encoder[, text_encoder_2]} from the file's tensors; only the UNet in `dtype`.
    diffusers tells SDXL's two encoders apart by their widths (CLIP ViT-L 768, OpenCLIP bigG 1280)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    checkpoint = load_state_dict(path)
    common = dict(config=str(config), local_files_only=True)
    parts = {"unet": UNet2DConditionModel.from_single_file(checkpoint, subfolder="unet", torch_dtype=dtype, **common),
             "vae": AutoencoderKL.from_single_file(checkpoint, subfolder="vae", torch_dtype=torch.float32, **common)}
    encoders = {"text_encoder": CLIPTextModel}
    if sdxl:
        encoders["text_encoder_2"] = CLIPTextModelWithProjection
    for name, cls in encoders.items():
        parts[name] = create_diffusers_clip_model_from_ldm(cls, checkpoint, subfolder=name, torch_dtype=torch.float32,
                                                           **common)
    return parts


def _config_folder(architecture: Architecture, download: bool, debug: bool) -> Path:
    """The shipped configs of an architecture; if they are missing (a broken install), the same files of its
    published repo from the local cache, or fetched with download=True."""
    shipped = architecture.config_dir
    needed = CONFIG_FILES + (SDXL_CONFIG_FILES if architecture is SDXL_BASE else ())
    missing = [f for f in needed if not (shipped / f).is_file()]
    if not missing:
        return shipped
    from huggingface_hub import snapshot_download

    what = (f"the {architecture.label} configs (the toolkit's copy lacks {shipped / missing[0]}; "
            f"they are published in {architecture.hub_repo})")
    try:
        if download:
            with quiet_libraries(debug, progress=True):
                return Path(snapshot_download(architecture.hub_repo, allow_patterns=CONFIG_PATTERNS))
        with _offline(what, debug):
            return Path(snapshot_download(architecture.hub_repo, allow_patterns=CONFIG_PATTERNS,
                                          local_files_only=True))
    except UserError:
        raise
    except Exception as exc:
        if download:
            raise UserError(f"could not download {what}: {_first_line(exc)}") from exc
        raise UserError(f"{what} are not on this machine: reinstall the toolkit, or add --download to fetch "
                        "them into the Hugging Face cache") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
