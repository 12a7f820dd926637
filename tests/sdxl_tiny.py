"""A tiny random SDXL-shaped model for the tests, built the way diffusers' own SDXL tests build theirs: a
UNet with `addition_embed_type="text_time"`, two small CLIP text encoders (the second with projection)
and a small VAE with SDXL's scaling factor. 64 px, 16 x 16 latents, attention at 8 x 8 and 4 x 4 only
(like SDXL, none at the full latent resolution)."""
from __future__ import annotations

import torch

TIME_EMBED_DIM = 8  # addition_time_embed_dim: 6 time ids x 8
TEXT_DIM = 32  # both encoders' hidden size and the second one's projection: tokens 64, pooled 32
OUTPUT_SCALE = 0.05  # as editing.core.model's tiny model: small predictions keep DDIM inversion meaningful


def tiny_sdxl_components(seed: int = 0, widths: tuple[int, int] = (TEXT_DIM, TEXT_DIM)) -> dict:
    """widths: the two encoders' hidden sizes (the second's is also its projection). A single file needs them
    different: diffusers, like the release (768 and 1280), tells the encoders apart by width."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR, ddim_scheduler
    from editing.core.sdxl import OPENCLIP_PAD_TOKEN

    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    tokenizer_2 = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token=OPENCLIP_PAD_TOKEN)

    def text_config(tok, width):
        return CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=37, num_hidden_layers=3,
                              num_attention_heads=4, projection_dim=width, hidden_act="gelu",
                              max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), norm_num_groups=8,
            cross_attention_dim=sum(widths), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM, projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + widths[1])
        with torch.no_grad():
            unet.conv_out.weight.mul_(OUTPUT_SCALE)
            unet.conv_out.bias.mul_(OUTPUT_SCALE)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16), sample_size=64, scaling_factor=0.13025, force_upcast=True)
        text_encoder = CLIPTextModel(text_config(tokenizer, widths[0]))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, widths[1]))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=ddim_scheduler())


def tiny_sdxl_model(seed: int = 0):
    from editing.core.sdxl import place_sdxl

    return place_sdxl(tiny_sdxl_components(seed), "tiny-sdxl", torch.device("cpu"), torch.float32)


def save_tiny_sdxl_folder(path, seed: int = 0, components: dict | None = None):
    """The tiny model as a diffusers StableDiffusionXLPipeline folder (what `--model FOLDER` reads)."""
    from diffusers import StableDiffusionXLPipeline

    components = tiny_sdxl_components(seed) if components is None else components
    StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True).save_pretrained(path)
    return path
