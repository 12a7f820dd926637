"""The real Stable Diffusion 1.5 and 2.1 architectures with random weights (`--model sd15-random`,
`sd21-random`): same shapes and cost as the released checkpoints, no download. For timing the full-size
pipeline only: their pictures mean nothing.

The configs below restate the published component configs (runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-2-1): UNet2DConditionModel 860 M / 865 M parameters, the SD VAE (83 M), and
the CLIP ViT-L/14 (SD 1.5) or OpenCLIP ViT-H/14 (SD 2.1, penultimate layer = 23 layers) text encoders.
"""
from __future__ import annotations

import torch

from editing.core.model import TOKENIZER_DIR, ddim_scheduler

SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", scaling_factor=0.18215)

SD_UNET = dict(
    in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32)

ARCHITECTURES = {
    "sd15-random": dict(
        unet=dict(SD_UNET, sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        vae=dict(SD_VAE, sample_size=512),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768, hidden_act="quick_gelu"),
        prediction_type="epsilon"),
    "sd21-random": dict(
        unet=dict(SD_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                  use_linear_projection=True),
        vae=dict(SD_VAE, sample_size=768),
        text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  projection_dim=512, hidden_act="gelu"),
        prediction_type="v_prediction"),
}


def build_sd_random(name: str, seed: int = 0):
    """(unet, vae, text_encoder, tokenizer, scheduler) of an SD architecture with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = ARCHITECTURES[name]
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **spec["text"]))
    base = ddim_scheduler()
    scheduler = type(base).from_config(base.config, prediction_type=spec["prediction_type"])
    return unet, vae, text_encoder, tokenizer, scheduler
