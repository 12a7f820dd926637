"""The SD-architecture random models have exactly the released checkpoints' shapes (built on the meta
device: no memory, no time)."""
import pytest
import torch

from editing.core.sd_random import ARCHITECTURES, build_sd_random

# parameter counts of the released checkpoints' components (UNet, VAE, text encoder)
RELEASED = {"sd15-random": (859_520_964, 83_653_863, 123_060_480),
            "sd21-random": (865_910_724, 83_653_863, 340_387_840)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_parameter_counts_match_the_released_models(name):
    with torch.device("meta"):
        unet, vae, text_encoder, tokenizer, scheduler = build_sd_random(name)
    counts = tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, text_encoder))
    assert counts == RELEASED[name]
    assert scheduler.config.prediction_type == ARCHITECTURES[name]["prediction_type"]
    assert unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1) == (
        512 if name == "sd15-random" else 768)
    assert vae.config.scaling_factor == 0.18215
