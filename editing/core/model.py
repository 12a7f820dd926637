"""Loading a Stable-Diffusion-shaped model: a diffusers folder, a single checkpoint file, a hub id already
in the local cache, or the embedded default. Nothing is downloaded.

`Model` bundles the components with the few operations every method needs (text and image encoding, one
UNet call). Model constants are read from the component configs, never hard-coded.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from editing.core.errors import UserError
from editing.core.prompts import check_prompt_length

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"
# The trained default model lives here once the toyworld trainer has written it.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "toyworld" / "model"
DEFAULT_NAMES = ("default", "toyworld")
TINY_RANDOM_NAME = "tiny-random"
# Output-layer scale of the seeded random model: small noise predictions keep DDIM inversion meaningful
# (a random UNet's raw predictions are O(1) and would throw the latents far off the data manifold).
TINY_RANDOM_OUTPUT_SCALE = 0.05
# Values per tensor that enter the model fingerprint besides its shape and sum (hashing gigabytes of
# weights on every run would cost seconds; these catch any real difference between checkpoints).
FINGERPRINT_SAMPLE = 256


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {device!r} asked for but this machine has {torch.cuda.device_count()} CUDA "
                        "device(s); use cuda:0 or --device auto")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise UserError(f"device {device!r} asked for but Apple's MPS is not available here; use --device auto or cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        raise UserError("fp16 is not supported on the CPU; use --dtype bf16 or fp32")
    return DTYPES[dtype]


@dataclass
class Model:
    """The components of a Stable Diffusion model, placed on one device.

    The UNet runs in `dtype`; the VAE and the text encoder stay in fp32 (precision-sensitive, cheap).
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object  # a DDIMScheduler: only its alphas and timesteps are used
    name: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    _fingerprint: str | None = field(default=None, repr=False)
    fast_unet: Callable | None = field(default=None, repr=False)  # a compiled UNet (editing.core.speed), or None
    notes: dict = field(default_factory=dict)  # how it was loaded, for summary.json (e.g. the prediction type's source)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return int(size) * self.vae_scale_factor

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def fingerprint(self) -> str:
        """A short hash of the configs and weights: tells two checkpoints apart, independent of the path."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for module in self.fingerprint_modules():
                config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
                h.update(json.dumps(_model_keys(config), sort_keys=True, default=str).encode())
                for name, tensor in module.state_dict().items():
                    flat = tensor.detach().reshape(-1)
                    h.update(name.encode() + str(tuple(tensor.shape)).encode())
                    h.update(flat[:FINGERPRINT_SAMPLE].float().cpu().numpy().tobytes())
                    h.update(np.float64(flat.double().sum().item()).tobytes())
            h.update(json.dumps(_model_keys(dict(self.scheduler.config)), sort_keys=True, default=str).encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def for_photo(self, photo_shape: tuple[int, ...], crop) -> "Model":
        """The model to edit a photo of this shape (H, W, ...) prepared with this crop: SD ignores both;
        SDXL conditions on them (editing.core.sdxl)."""
        return self

    def conditioning_key(self) -> str:
        """What the prompts' conditioning depends on besides the weights ("" for SD; SDXL: the photo's time
        ids)."""
        return ""

    @property
    def inversion_fingerprint(self) -> str:
        """The model part of an inversion's identity: the weights' fingerprint and, where the conditioning
        depends on the photo (SDXL's time ids), that too, so an inversion made for another photo size is never
        reused. SD models: the fingerprint itself."""
        key = self.conditioning_key()
        return f"{self.fingerprint}:{key}" if key else self.fingerprint

    def attention_limits(self) -> dict:
        """Prompt-to-Prompt's map-size limits for this model (P2PConfig fields; the others keep the reference's).

        Layout guidance follows the attention levels coarser than the finest (maps of at most half the latent
        side): on the toy world's 16 x 16 latents the 8 x 8 and 4 x 4 maps held the layout as well as every
        level did and lost fewer edits (benchmarks/RESULTS.md, "Layout guidance")."""
        side = self.resolution // self.vae_scale_factor
        return {"guidance_max_tokens": (side // 2) ** 2}

    def fingerprint_modules(self) -> tuple:
        """The components whose configs and weights enter the fingerprint."""
        return self.unet, self.vae, self.text_encoder

    def tokenize(self, prompts: list[str], tokenizer=None) -> torch.Tensor:
        """Token ids (B, max_tokens) by `tokenizer` (default: the model's). A prompt longer than the encoder
        takes is an error, never truncated."""
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        for prompt in prompts:
            check_prompt_length(prompt, tokenizer, self.max_tokens)
        ids = tokenizer(prompts, padding="max_length", max_length=self.max_tokens,
                             truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder output (B, max_tokens, dim), fp32."""
        return self.text_encoder(self.tokenize(prompts))[0].float()

    def input_embedding_dims(self) -> tuple[int, ...]:
        """The width of each text encoder's token-embedding table (textual inversion's rows are their concatenation)."""
        return (self.text_encoder.get_input_embeddings().embedding_dim,)

    def input_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The encoder's input embeddings (B, L, D) of token ids (B, L), before position embeddings, fp32."""
        with torch.no_grad():
            return self.text_encoder.get_input_embeddings()(ids).float()

    def encode_input_embeddings(self, ids: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """`encode_prompts` of token ids (B, L) whose input embeddings are `embeds` (B, L, D); differentiable
        in `embeds` (textual inversion)."""
        with input_embeddings_replaced(self.text_encoder, embeds):
            return self.text_encoder(ids)[0].float()

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB (B, H, W, 3) -> scaled latents (B, C, H/f, W/f), fp32 (the posterior mean, as NTI does)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        # contiguous: the VAE may hand back channels-last latents, and the memory layout changes the
        # convolutions' float rounding (a record saved and loaded again must edit identically)
        return (self.vae.encode(x).latent_dist.mean * self.latent_scale).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (B, C, h, w) -> uint8 RGB (B, H, W, 3)."""
        x = self.vae.decode(latents.float() / self.latent_scale).sample
        x = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def unet_output(self, x: torch.Tensor, t: int, cond: torch.Tensor,
                    attention_kwargs: dict | None = None) -> torch.Tensor:
        """One UNet call in the model's dtype; the output (epsilon or v) comes back in fp32.

        Calls an attention controller watches (attention_kwargs given) always run the eager UNet."""
        unet = self.unet if self.fast_unet is None or attention_kwargs is not None else self.fast_unet
        if not torch.is_tensor(t):  # a device tensor (a fill, no host copy): one compiled graph serves every t
            t = torch.full((), t, dtype=torch.int64, device=x.device)
        out = unet(x.to(self.dtype), t, **self.unet_conditioning(cond), cross_attention_kwargs=attention_kwargs).sample
        return out.float()

    def unet_conditioning(self, cond: torch.Tensor) -> dict:
        """The UNet's keyword arguments for a conditioning (B, L, D), in the UNet's dtype."""
        return {"encoder_hidden_states": cond.to(self.dtype)}


@contextmanager
def input_embeddings_replaced(text_encoder, embeds: torch.Tensor):
    """Inside the block, the encoder's token-embedding layer returns `embeds` instead of its table lookup.

    A forward hook, removed in `finally`: the table and the tokenizer stay as they are, and gradients reach
    `embeds`. Works for any text encoder with get_input_embeddings() (transformers' CLIPTextModel takes no
    inputs_embeds argument).
    """
    def replace(module, args, output):
        if output.shape != embeds.shape:
            raise ValueError(f"input embeddings {tuple(embeds.shape)} do not match the ids {tuple(output.shape)}")
        return embeds.to(output.dtype)

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


# Config entries that describe how a copy was written, not the model: transformers' save_pretrained sets
# architectures and dtype on the in-memory config, and the library versions change with an upgrade.
CONFIG_BOOKKEEPING = frozenset({"architectures", "dtype", "torch_dtype", "transformers_version"})


def _model_keys(config: dict) -> dict:
    """A config without its loader bookkeeping (CONFIG_BOOKKEEPING, and keys with a leading underscore:
    _name_or_path is the path, _use_default_values is listed in a hash-seed-dependent order,
    _diffusers_version and _class_name name the writer), so the fingerprint is the same in every process and
    for every copy of the checkpoint."""
    return {k: v for k, v in config.items() if not str(k).startswith("_") and k not in CONFIG_BOOKKEEPING}


def ddim_scheduler(config: dict | None = None):
    """A DDIM scheduler with the model's noise schedule, as the null-text inversion reference sets it up:
    no sample clipping, and alpha_0 = alphas_cumprod[0] (set_alpha_to_one=False)."""
    from diffusers import DDIMScheduler

    if config is None:  # Stable Diffusion's schedule
        config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, steps_offset=1)
    return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)


def build_tiny_model(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 16,
                     output_scale: float = TINY_RANDOM_OUTPUT_SCALE):
    """A seeded, randomly initialised, SD-shaped model small enough for a CPU test (64 px, 16x16 latents).

    Returns (unet, vae, text_encoder, tokenizer, scheduler). Its pictures mean nothing; it exercises the code.
    """
    with torch.random.fork_rng():  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        return _tiny_components(prediction_type, sample_size, output_scale)


def _tiny_components(prediction_type, sample_size, output_scale):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), sample_size=sample_size * 4)
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    with torch.no_grad():
        unet.conv_out.weight.mul_(output_scale)
        unet.conv_out.bias.mul_(output_scale)
    # Given to the constructor, not set with register_to_config afterwards: that would leave prediction_type
    # listed in the config's _use_default_values, and from_config (how _from_pipeline and diffusers rebuild a
    # scheduler) would then silently reset it to epsilon.
    base = ddim_scheduler()
    scheduler = type(base).from_config(base.config, prediction_type=prediction_type)
    return unet, vae, text_encoder, tokenizer, scheduler


def _place(components, name, device, dtype) -> Model:
    unet, vae, text_encoder, tokenizer, scheduler = components
    unet = unet.to(device).eval().requires_grad_(False)
    if unet.dtype != dtype:
        unet = unet.to(dtype)
    vae = vae.to(device).float().eval().requires_grad_(False)
    text_encoder = text_encoder.to(device).float().eval().requires_grad_(False)
    return Model(unet, vae, text_encoder, tokenizer, scheduler, name, device, dtype)


def _from_pipeline(pipe, name, device, dtype) -> Model:
    scheduler = ddim_scheduler(dict(pipe.scheduler.config))
    return _place((pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler), name, device, dtype)
