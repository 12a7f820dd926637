"""The real Stable Diffusion 1.5 and 2.1 architectures with random weights (`--model sd15-random`,
`sd21-random`): same shapes and cost as the released checkpoints, no download. For timing the full-size
pipeline only: their pictures mean nothing.

They are built from the same shipped configs (editing/assets/configs/) that single checkpoint files load
with, so they are exactly what a released file becomes: SD 1.5 (UNet 860 M parameters, CLIP ViT-L/14, pad
with the end token) and SD 2.1-768 (UNet 866 M with upcast attention, the 23 layers of OpenCLIP ViT-H/14
that SD 2 uses, pad with "!", v-prediction). Both share the SD VAE (83 M).
"""
from __future__ import annotations

import json

import torch

from editing.core.checkpoints import SD1, SD2_V, clip_tokenizer
from editing.core.model import ddim_scheduler

ARCHITECTURES = {
    "sd15-random": dict(architecture=SD1, prediction_type="epsilon"),
    "sd21-random": dict(architecture=SD2_V, prediction_type="v_prediction"),
}


def build_sd_random(name: str, seed: int = 0):
    """(unet, vae, text_encoder, tokenizer, scheduler) of an SD architecture with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHITECTURES[name]
    folder = spec["architecture"].config_dir
    tokenizer = clip_tokenizer(folder / "tokenizer")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(folder / "text_encoder" / "config.json"))
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler = ddim_scheduler(dict(scheduler_config, prediction_type=spec["prediction_type"]))
    return unet, vae, text_encoder, tokenizer, scheduler
