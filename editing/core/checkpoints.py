"""Single checkpoint files as users download them (`v1-5-pruned-emaonly.safetensors`,
`v2-1_768-ema-pruned.ckpt`, `sd_xl_base_1.0.safetensors`): read their tensor names and shapes without
loading the weights, refuse what is broken or not a whole model, and say which released architecture the
file is, so the loader can build it from the configs shipped in editing/assets/configs/.

Nothing here runs code from a file: .safetensors headers are JSON read and checked here before any library
sees the file; .ckpt files are read by torch.load(weights_only=True), which refuses any pickled object
that is not a tensor or a plain container.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from editing.core.errors import UserError
from editing.core.model import TOKENIZER_DIR

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "assets" / "configs"
SAFETENSORS_SUFFIX, CKPT_SUFFIX = ".safetensors", ".ckpt"
SUFFIXES = (SAFETENSORS_SUFFIX, CKPT_SUFFIX)  # compared lower-cased: MODEL.SAFETENSORS is a checkpoint too
# A safetensors header lists names, dtypes, shapes and offsets: a few hundred KB for an SD checkpoint. A
# length beyond this is corruption, and reading it would cost the memory the header claims.
MAX_HEADER_BYTES = 100 * 2 ** 20
SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                        "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
PREDICTION_TYPES = ("epsilon", "v_prediction")

# Tensor names of the original (CompVis / Stability "LDM") checkpoint layout.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_CLIP = "cond_stage_model.transformer.text_model."  # SD 1.x: OpenAI CLIP ViT-L/14
LDM_OPENCLIP = "cond_stage_model.model."  # SD 2.x: OpenCLIP ViT-H/14
SDXL_CLIP, SDXL_OPENCLIP = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
SDXL_REFINER_OPENCLIP = "conditioner.embedders.0.model."  # the refiner has only the OpenCLIP bigG encoder
UNET_CONV_IN = LDM_UNET + "input_blocks.0.0.weight"  # (320, in_channels, 3, 3)
UNET_CROSS_ATTENTION_K = LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # (320, context dim)
SDXL_CROSS_ATTENTION_K = LDM_UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # (640, 2048)
LATENT_CHANNELS = 4  # a text-to-image UNet takes the 4 latent channels; 9 = inpainting, 8 = instruct-pix2pix
LORA_MARKS = ("lora_down", "lora_up", "lora_A", "lora_B", ".lora.", "lora_unet_", "lora_te")


@dataclass(frozen=True)
class Architecture:
    """A released architecture: how it is named to the user and where its shipped diffusers configs are."""

    key: str  # a folder of CONFIG_ROOT
    label: str
    hub_repo: str  # where the same configs are published (used only if the shipped ones are missing)

    @property
    def config_dir(self) -> Path:
        return CONFIG_ROOT / self.key


SD1 = Architecture("sd1", "SD 1.x", "stable-diffusion-v1-5/stable-diffusion-v1-5")
SD2_V = Architecture("sd2-v", "SD 2.x 768-v", "stabilityai/stable-diffusion-2-1")
SD2_BASE = Architecture("sd2-base", "SD 2.x base (512, epsilon)", "stabilityai/stable-diffusion-2-1-base")
SDXL_BASE = Architecture("sdxl-base", "SDXL base", "stabilityai/stable-diffusion-xl-base-1.0")
# SD 2.x weights do not tell 768-v from 512-epsilon; the 768-v file is the one most downloaded (as diffusers).
SD2_DEFAULT_PREDICTION = "v_prediction"


@dataclass(frozen=True)
class Detected:
    """What a checkpoint file is: its architecture, the prediction type to run it with, and why."""

    architecture: Architecture
    prediction_type: str
    note: str  # for summary.json: which prediction type was used and where it came from


def is_checkpoint_path(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


# ---------------------------------------------------------------- reading names and shapes only


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of a checkpoint, without reading its weights into memory."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return {k: tuple(v["shape"]) for k, v in safetensors_header(path).items()}
    return {k: tuple(v.shape) for k, v in load_ckpt(path).items()}


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor entries of a .safetensors header, checked against the file's real size: a truncated or
    corrupt file is refused here, having read at most the header."""
    size = path.stat().st_size
    if size < 8:
        raise UserError(f"{path} is not a safetensors file: {size} bytes, too short for even the header length")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise UserError(f"{path} is corrupt or truncated: its header claims {n:,} bytes but the file has "
                            f"{size:,} bytes in all (download it again)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is corrupt: its safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is corrupt: its safetensors header is not a table of tensors")
    data_bytes = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        _check_entry(path, name, entry, data_bytes)
    return tensors


def _check_entry(path: Path, name: str, entry, data_bytes: int) -> None:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        itemsize = SAFETENSORS_ITEMSIZE[dtype]
        expected = math.prod(int(d) for d in shape) * itemsize
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} is corrupt: the header entry of {name!r} is malformed ({entry!r:.120})") from None
    if end > data_bytes:
        raise UserError(f"{path} is truncated: tensor {name!r} ends at byte {end:,} of the data but the file holds "
                        f"only {data_bytes:,} bytes of data (download it again)")
    if not 0 <= begin <= end or end - begin != expected:
        raise UserError(f"{path} is corrupt: tensor {name!r} ({dtype}, shape {shape}) should take {expected:,} "
                        f"bytes, its header gives {end - begin:,}")


def load_ckpt(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .ckpt, memory-mapped (no copy), unpickled with weights_only=True: a pickle that
    asks for anything but tensors and plain containers is refused, and its code never runs."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a PyTorch checkpoint (not a zip archive): corrupt, truncated, or another "
                        "format; a .safetensors file of the same model is the safer download")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle.UnpicklingError for a refused global, RuntimeError for a broken archive
        reason = str(exc).strip().splitlines()
        wanted = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), None)
        if wanted:
            raise UserError(f"refused {path}: its pickle asks for more than tensors ({wanted}); nothing from it was "
                            "run. Use the .safetensors release of the model") from None
        raise UserError(f"{path} is corrupt or truncated: {reason[0] if reason else type(exc).__name__}") from None
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # Lightning checkpoints keep the weights under "state_dict"
    if not isinstance(loaded, dict):
        raise UserError(f"{path} does not hold a table of tensors (it holds a {type(loaded).__name__})")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint whose header read_shapes has already checked."""
    if path.suffix.lower() == CKPT_SUFFIX:
        return load_ckpt(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError: what the header check cannot see
        raise UserError(f"{path} is corrupt: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def clip_tokenizer(folder: Path):
    """The CLIP tokenizer from the shipped vocabulary, with the special tokens of `folder`'s
    tokenizer_config.json (SD 2.x pads with "!", SD 1.x with the end token)."""
    from transformers import CLIPTokenizer

    config = json.loads((folder / "tokenizer_config.json").read_text())
    special = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if value is not None:  # the published configs may write a token as {"content": "!", ...}
            special[key] = value["content"] if isinstance(value, dict) else value
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=int(config.get("model_max_length", 77)),
                                         **special)


# ---------------------------------------------------------------- what the file is


def detect(path: Path, shapes: dict[str, tuple[int, ...]], prediction_type: str | None) -> Detected:
    """The architecture of a checkpoint from its tensor names and shapes; anything that is not a whole
    SD 1.x / 2.x / SDXL base model is refused with what it looks like."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UserError(f"unknown prediction type {prediction_type!r}: choose {' or '.join(PREDICTION_TYPES)}")
    _refuse_parts(path, shapes)
    if any(k.startswith(SDXL_OPENCLIP) for k in shapes):
        return _chosen(SDXL_BASE, prediction_type, "epsilon", "SDXL base is trained for epsilon")
    conv_in = shapes.get(UNET_CONV_IN)
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != LATENT_CHANNELS:
        raise UserError(f"{path} is a UNet with {conv_in[1]} input channels (an inpainting or instruct-pix2pix "
                        f"model); only text-to-image models ({LATENT_CHANNELS} latent channels) can edit photos")
    missing = [what for what, prefix in (("the UNet", LDM_UNET), ("the VAE", LDM_VAE)) if not _has(shapes, prefix)]
    if missing:
        raise UserError(f"{path} lacks {' and '.join(missing)} ({_first_keys(shapes)}): it is not a whole Stable "
                        "Diffusion checkpoint")
    context = shapes.get(UNET_CROSS_ATTENTION_K, (None,))[-1]
    if context == 768 and _has(shapes, LDM_CLIP):
        return _chosen(SD1, prediction_type, "epsilon", "SD 1.x is trained for epsilon")
    if context == 1024 and _has(shapes, LDM_OPENCLIP):
        chosen = prediction_type or SD2_DEFAULT_PREDICTION
        architecture = SD2_V if chosen == "v_prediction" else SD2_BASE
        if prediction_type is None:
            note = ("v_prediction: SD 2.x weights do not say, so the 768-v release is assumed; give "
                    "--prediction-type epsilon for a 2.x base (512 px) model")
        else:
            note = f"{chosen}: from --prediction-type ({architecture.label})"
        return Detected(architecture, chosen, note)
    raise UserError(f"{path} has a UNet with cross-attention width {context} and no matching text encoder: not an "
                    "SD 1.x (768, CLIP ViT-L) or SD 2.x (1024, OpenCLIP ViT-H) checkpoint")


def _chosen(architecture: Architecture, given: str | None, trained: str, reason: str) -> Detected:
    if given is None:
        return Detected(architecture, trained, f"{trained}: {reason}")
    return Detected(architecture, given, f"{given}: from --prediction-type ({reason})")


def _refuse_parts(path: Path, shapes: dict) -> None:
    """Files users mistake for a model: a LoRA, a VAE alone, an SDXL refiner, an embedding."""
    keys = list(shapes)
    if not keys:
        raise UserError(f"{path} holds no tensors")
    if any(mark in k for k in keys for mark in LORA_MARKS):
        raise UserError(f"{path} is a LoRA (low-rank weight deltas, e.g. {next(k for k in keys if 'lora' in k)!r}), "
                        "not a model: give the base model it was trained on as --model")
    if any(k.startswith(SDXL_REFINER_OPENCLIP) for k in keys) and not any(k.startswith(SDXL_OPENCLIP) for k in keys):
        raise UserError(f"{path} is an SDXL refiner: it only polishes SDXL base outputs and cannot edit on its own; "
                        "give the SDXL base checkpoint")
    vae_only = all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", LDM_VAE)) for k in keys)
    if vae_only:
        raise UserError(f"{path} is a VAE alone (an autoencoder's weights, no UNet or text encoder): give the whole "
                        "model's checkpoint as --model")
    if any(k in ("emb_params", "string_to_param", "string_to_token", "clip_l", "clip_g") for k in keys):
        raise UserError(f"{path} is a textual-inversion embedding, not a model: give the model it was trained on")


def _has(shapes: dict, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _first_keys(shapes: dict, n: int = 3) -> str:
    return "its tensors start " + ", ".join(repr(k) for k in list(shapes)[:n])
