"""Stable Diffusion XL (Podell et al., "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis") as a `Model`: every method of the toolkit runs on it unchanged.

What differs from SD 1.x/2.x, all of it inside this file:
- two text encoders: CLIP ViT-L and OpenCLIP ViT-bigG (with projection). The token embeddings are both
  penultimate hidden states side by side (77 x 768 + 77 x 1280 = 77 x 2048); the pooled embedding (1280)
  is text_encoder_2's projected end-of-text output;
- micro-conditioning (the paper's 2.2): `time_ids` = original size, crop top-left, target size, each
  (height, width), enter the UNet's time embedding together with the pooled embedding;
- `encode_prompts` therefore returns a `TextEmbeds` (editing.core.conditioning), and the UNet is called
  with `added_cond_kwargs={"text_embeds", "time_ids"}`;
- the empty prompt: with the pipeline's `force_zeros_for_empty_prompt` (true for the SDXL base release) the
  unconditional side is all zeros, tokens and pooled (diffusers' null when no negative prompt is given).
  The toolkit encodes "" only for the unconditional side, so `encode_prompts` zeroes every "" row;
- the VAE (scaling factor 0.13025 from its config) overflows in fp16 (`force_upcast`): it stays in fp32
  whatever the UNet's dtype, as every model's VAE does here.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from editing.core.conditioning import TextEmbeds
from editing.core.errors import UserError
from editing.core.model import TOKENIZER_DIR, Model, ddim_scheduler, input_embeddings_replaced

SDXL_PIPELINES = ("StableDiffusionXLPipeline",)  # model_index.json `_class_name` of an SDXL base folder
SDXL_RANDOM_NAME = "sdxl-random"
# OpenCLIP's tokenizer (tokenizer_2 of the release) pads with "!" where CLIP's pads with its end token.
OPENCLIP_PAD_TOKEN = "!"

# The published component configs of stabilityai/stable-diffusion-xl-base-1.0, restated (no download):
# UNet 2,567,463,684 parameters, VAE 83,653,863, text encoders 123,060,480 and 694,659,840.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", sample_size=1024, scaling_factor=0.13025,
    force_upcast=True)
SDXL_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu")
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   projection_dim=1280, hidden_act="gelu")


def add_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int],
                 target_size: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning (6,): (height, width) of the photo before resizing, the top-left corner of
    the crop in the resized photo, (height, width) of the result."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)


def time_ids_of_photo(photo_shape: tuple[int, ...], crop, size: int) -> torch.Tensor:
    """The truthful time ids of a photo prepared by `image_io.prepare_image(photo, size, crop)`: the offsets
    are cut, the centre square of side s is kept and resized to size, so, as in SDXL's training (resize
    the short side to the target, then crop), the crop's corner is given in the resized photo's pixels."""
    height, width = photo_shape[:2]
    inner_h, inner_w = height - crop.top - crop.bottom, width - crop.left - crop.right
    side = min(inner_h, inner_w)
    top, left = crop.top + (inner_h - side) // 2, crop.left + (inner_w - side) // 2
    scale = size / side
    return add_time_ids((height, width), (round(top * scale), round(left * scale)), (size, size))


@dataclass
class SDXLModel(Model):
    """An SDXL base model: the `Model` operations with SDXL's conditioning (see the module docstring)."""

    text_encoder_2: torch.nn.Module | None = None  # CLIPTextModelWithProjection (OpenCLIP ViT-bigG)
    tokenizer_2: object = None
    force_zeros_for_empty_prompt: bool = True  # the release's pipeline setting
    photo_time_ids: torch.Tensor | None = None  # (6,) of the photo being edited (`for_photo`); None: default

    def __post_init__(self):
        if self.text_encoder_2 is None or self.tokenizer_2 is None:
            raise ValueError("an SDXL model needs text_encoder_2 and tokenizer_2")
        time_dim = self.unet.config.addition_time_embed_dim * 6
        pooled_dim = self.text_encoder_2.config.projection_dim
        expected = self.unet.config.projection_class_embeddings_input_dim
        if time_dim + pooled_dim != expected:
            raise UserError(f"this SDXL UNet takes an added embedding of {expected}, but its time ids and the "
                            f"second text encoder's projection give {time_dim} + {pooled_dim}: the components "
                            "do not belong together")

    def attention_limits(self) -> dict:
        """The reference's rule at SD's 512 px (maps kept up to half the latent side, 32 x 32; self-attention
        injected up to a quarter, 16 x 16), applied to SDXL's latents: at 1024 px the maps of both attention
        resolutions that exist, 64 x 64 and 32 x 32, are kept, and self-attention is injected at 32 x 32
        (SDXL has no 16 x 16 attention, so the SD limits would inject none). Layout guidance follows the levels
        coarser than the finest, as on SD: at 1024 px the 32 x 32 maps."""
        side = self.resolution // self.vae_scale_factor
        return {"store_max_tokens": (side // 2) ** 2, "self_replace_max_tokens": (side // 4) ** 2,
                "guidance_max_tokens": (side // 4) ** 2}

    def fingerprint_modules(self) -> tuple:
        return self.unet, self.vae, self.text_encoder, self.text_encoder_2

    def for_photo(self, photo_shape: tuple[int, ...], crop) -> "SDXLModel":
        """The same model (components shared, nothing copied) whose prompts carry the photo's true size
        and crop as time ids, for the source and the edits alike."""
        return replace(self, photo_time_ids=time_ids_of_photo(photo_shape, crop, self.resolution))

    def conditioning_key(self) -> str:
        return "time_ids=" + ",".join(str(int(v)) for v in self.default_time_ids().tolist())

    def default_time_ids(self) -> torch.Tensor:
        """(6,): the photo's (`for_photo`); else a picture at the model's resolution, uncropped (what
        diffusers uses for generation)."""
        if self.photo_time_ids is not None:
            return self.photo_time_ids
        size = (self.resolution, self.resolution)
        return add_time_ids(size, (0, 0), size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], time_ids: torch.Tensor | None = None) -> TextEmbeds:
        """tokens (B, 77, 2048), pooled (B, 1280), time_ids (B, 6) (default: `default_time_ids`), fp32."""
        e = self._encode(self.tokenize(prompts), self.tokenize(prompts, self.tokenizer_2), None, time_ids)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=self.device)
            e = TextEmbeds(torch.where(empty[:, None, None], 0.0, e.tokens),
                           torch.where(empty[:, None], 0.0, e.pooled), e.time_ids)
        return e

    def _encode(self, ids: torch.Tensor, ids_2: torch.Tensor, embeds: torch.Tensor | None,
                time_ids: torch.Tensor | None) -> TextEmbeds:
        """Both encoders on their token ids (B, 77), optionally with input embeddings (B, 77, 768 + 1280)."""
        tokens, split = [], (0, *self.input_embedding_dims())
        for k, (encoder, encoder_ids) in enumerate(((self.text_encoder, ids), (self.text_encoder_2, ids_2))):
            replaced = nullcontext() if embeds is None else input_embeddings_replaced(
                encoder, embeds[..., split[k]:split[k] + split[k + 1]])
            with replaced:
                out = encoder(encoder_ids, output_hidden_states=True)
            tokens.append(out.hidden_states[-2].float())  # the penultimate layer, as SDXL was trained
        tokens, pooled = torch.cat(tokens, -1), out.text_embeds.float()  # pooled: text_encoder_2's projection
        time_ids = self.default_time_ids() if time_ids is None else time_ids
        time_ids = time_ids.float().to(self.device).reshape(-1, 6).expand(len(ids), 6)
        return TextEmbeds(tokens, pooled, time_ids)

    def input_embedding_dims(self) -> tuple[int, ...]:
        return tuple(e.get_input_embeddings().embedding_dim for e in (self.text_encoder, self.text_encoder_2))

    def ids_for_tokenizer_2(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids of the first tokenizer (B, L) as the second writes them: one vocabulary, but OpenCLIP
        pads after the end token with its own pad token, where CLIP repeats the end token."""
        after_end = (ids == self.tokenizer.eos_token_id).cumsum(-1) > 1
        return torch.where(after_end, self.tokenizer_2.pad_token_id, ids)

    def input_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self.text_encoder.get_input_embeddings()(ids),
                              self.text_encoder_2.get_input_embeddings()(self.ids_for_tokenizer_2(ids))], -1).float()

    def encode_input_embeddings(self, ids: torch.Tensor, embeds: torch.Tensor) -> TextEmbeds:
        return self._encode(ids, self.ids_for_tokenizer_2(ids), embeds, None)

    def unet_conditioning(self, cond: TextEmbeds) -> dict:
        if not isinstance(cond, TextEmbeds):
            raise TypeError("an SDXL UNet needs SDXL conditioning (tokens, pooled, time ids): got a plain tensor")
        return {"encoder_hidden_states": cond.tokens.to(self.dtype),
                "added_cond_kwargs": {"text_embeds": cond.pooled.to(self.dtype),
                                      "time_ids": cond.time_ids.to(self.dtype)}}


def place_sdxl(components: dict, name: str, device, dtype, force_zeros: bool = True) -> SDXLModel:
    """Put SDXL components (unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler) on
    the device: the UNet in `dtype`, the VAE and both text encoders in fp32."""
    unet = components["unet"].to(device).eval().requires_grad_(False)
    if unet.dtype != dtype:
        unet = unet.to(dtype)
    fp32 = lambda m: m.to(device).float().eval().requires_grad_(False)  # noqa: E731
    return SDXLModel(unet, fp32(components["vae"]), fp32(components["text_encoder"]), components["tokenizer"],
                     ddim_scheduler(dict(components["scheduler"].config)), name, device, dtype,
                     text_encoder_2=fp32(components["text_encoder_2"]), tokenizer_2=components["tokenizer_2"],
                     force_zeros_for_empty_prompt=force_zeros)


def is_sdxl_folder(path: Path) -> bool:
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") in SDXL_PIPELINES
    except (OSError, ValueError):
        return False


def load_sdxl(spec: str | None, device, dtype) -> SDXLModel | None:
    """The loader's SDXL hook: `sdxl-random`, or a diffusers SDXL folder; None for anything else."""
    if spec == SDXL_RANDOM_NAME:
        return place_sdxl(build_sdxl_random(), SDXL_RANDOM_NAME, device, dtype)
    if spec is None or not is_sdxl_folder(Path(spec).expanduser()):
        return None
    from diffusers import StableDiffusionXLPipeline

    path = Path(spec).expanduser()
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the SDXL model in {path}: {str(exc).splitlines()[0]}") from exc
    components = dict(pipe.components)
    return place_sdxl(components, str(path), device, dtype, bool(pipe.config.force_zeros_for_empty_prompt))


def build_sdxl_random(seed: int = 0) -> dict:
    """The SDXL base architecture with seeded random weights (for timings: its pictures mean nothing).
    Build it under `with torch.device("meta"):` to count parameters without memory."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    tokenizer_2 = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token=OPENCLIP_PAD_TOKEN)

    def text_config(spec, tok):
        return CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=tok.model_max_length,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id, **spec)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(text_config(SDXL_TEXT, tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(SDXL_TEXT_2, tokenizer_2))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=ddim_scheduler())
