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


def test_sd21_random_is_the_released_sd21_768():
    """What diffusers builds from stabilityai/stable-diffusion-2-1: pad with "!", upcast attention, the 23
    OpenCLIP layers SD 2 uses (GELU, projection 512), v-prediction at 768 px."""
    with torch.device("meta"):
        unet, vae, text_encoder, tokenizer, scheduler = build_sd_random("sd21-random")
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.model_max_length) == ("!", 0, 77)
    assert unet.config.upcast_attention is True and unet.config.use_linear_projection is True
    text = text_encoder.config
    assert (text.hidden_act, text.hidden_size, text.num_hidden_layers, text.projection_dim) == ("gelu", 1024, 23, 512)
    assert scheduler.config.prediction_type == "v_prediction"


def test_sd15_random_pads_with_the_end_token():
    with torch.device("meta"):
        unet, _, text_encoder, tokenizer, _ = build_sd_random("sd15-random")
    assert tokenizer.pad_token == "<|endoftext|>" and text_encoder.config.hidden_act == "quick_gelu"
    assert not unet.config.upcast_attention
