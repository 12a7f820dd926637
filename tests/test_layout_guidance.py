"""Layout guidance (attention/guidance.py): cross-attention guidance on P2P's edit rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention.controllers import P2PConfig, PromptToPrompt
from attention.guidance import LayoutGuidance, cross_maps, word_weights
from editing.core.ddim import DDIMSchedule
from editing.core.errors import UserError
from editing.core.image_io import prepare_image
from editing.p2p import edit_conditioning, edit_p2p
from editing.request import EditRequest
from inversion.invert import InversionConfig, invert

STEPS = 6
SOURCE = "a cat sitting on a mirror"
TARGET = "a dog sitting on a mirror"


@pytest.fixture(scope="module")
def cat():
    from skimage import data

    return prepare_image(data.chelsea(), 64)


@pytest.fixture(scope="module")
def record(tiny_model, cat):
    return invert(tiny_model, cat[None], [SOURCE], InversionConfig(method="direct", steps=STEPS), disable=True)[0]


def guidance_for(model, record, targets, scale=1.0, until=1.0, config=P2PConfig()):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, record.steps)
    controller = PromptToPrompt(record.prompt, targets, model.tokenizer, record.steps, config)
    conditioning = edit_conditioning(model, record, targets)
    return LayoutGuidance(model, controller, [record.prompt, *targets], conditioning, schedule.timesteps, scale,
                          until, 16 * 16)


def map_loss(model, guidance, x, step):
    """The guidance's loss at the latent x entering `step`, from the maps alone."""
    t = guidance.timesteps[step]
    cond, _ = guidance.conditioning.at(step)
    with torch.no_grad():
        refs = [guidance.reference(m[0]) for m in cross_maps(model, x[:1], t, cond[:1], step, 256)]
        maps = cross_maps(model, x[1:], t, cond[1:], step, 256)
    weights = guidance.weights[:, None, :]
    return float(sum((weights * (m - r) ** 2).sum() for m, r in zip(maps, refs)))


def test_a_guided_step_brings_the_target_maps_towards_the_source(tiny_model, record):
    guidance = guidance_for(tiny_model, record, [TARGET], scale=1.0)
    x = torch.cat([record.x_T[None], record.x_T[None] + 0.5 * torch.randn_like(record.x_T)[None]])
    before = map_loss(tiny_model, guidance, x, 1)
    assert before > 0
    guided = guidance(0, x)  # the latent entering step 1
    assert torch.equal(guided[0], x[0])  # the source row is never guided
    assert not torch.equal(guided[1], x[1])
    after = map_loss(tiny_model, guidance, guided, 1)
    assert after < before


def test_only_the_words_count(tiny_model):
    targets = ["a dog sitting on a mirror", "a big cat sitting on a mirror"]
    controller = PromptToPrompt(SOURCE, targets, tiny_model.tokenizer, STEPS, P2PConfig(edit="refine"))
    weights = word_weights(controller, [SOURCE, *targets], tiny_model.tokenizer)
    n_words = len(SOURCE.split())
    assert weights[0].sum() == n_words and weights[0, 0] == 0 and weights[0, n_words + 1] == 0
    assert weights[1, 1:n_words + 2].tolist() == [1, 0, 1, 1, 1, 1, 1]  # "big" was inserted: no source map


def test_an_edit_that_changes_no_word_is_not_moved(tiny_model, cat):
    # negative-prompt inversion: the edit row is the source row, so its maps are the reference and nothing moves
    npi = invert(tiny_model, cat[None], [SOURCE], InversionConfig(method="negative-prompt", steps=STEPS),
                 disable=True)[0]
    guided = edit_p2p(tiny_model, npi, [SOURCE], P2PConfig(edit="replace", layout_guidance=50.0), disable=True)
    assert np.array_equal(guided.edits[0], guided.reconstruction)


def test_guidance_changes_the_edit_only_in_its_window(tiny_model, record):
    plain = edit_p2p(tiny_model, record, [TARGET], disable=True)
    none = edit_p2p(tiny_model, record, [TARGET], P2PConfig(layout_guidance=50.0, layout_guidance_until=0.0),
                    disable=True)
    guided = edit_p2p(tiny_model, record, [TARGET], P2PConfig(layout_guidance=50.0), disable=True)
    assert np.array_equal(none.edits[0], plain.edits[0])
    assert np.array_equal(guided.reconstruction, plain.reconstruction)  # the source row is left alone
    assert not np.array_equal(guided.edits[0], plain.edits[0])
    guidance = guidance_for(tiny_model, record, [TARGET], scale=1.0, until=0.5)
    x = record.x_T[None].expand(2, *record.x_T.shape)
    assert guidance(STEPS // 2 - 1, x) is None  # the latent entering step 3 of 6 is past the window


def test_a_model_without_small_maps_is_a_clear_error(tiny_model, record):
    with pytest.raises(UserError, match="no cross-attention maps"):
        guidance = guidance_for(tiny_model, record, [TARGET])
        guidance.max_tokens = 0
        guidance(0, record.x_T[None].expand(2, *record.x_T.shape))


@pytest.mark.parametrize("options, message", [
    ({"layout_guidance": -1}, "--layout-guidance"),
    ({"layout_guidance": float("nan")}, "--layout-guidance"),
    ({"layout_guidance_until": 1.5}, "--layout-guidance-until"),
    ({"layout_guidance": 10, "method": "imagic"}, "applies to --method p2p"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(UserError, match=message):
        EditRequest(target_prompts=(TARGET,), source_prompt=SOURCE, **options)


def test_the_command_line_reaches_the_p2p_config(tiny_model):
    from editing.methods import p2p_config
    from editing.run import build_parser, request_from_args

    args = build_parser().parse_args(["--image", "x.png", "--source-prompt", SOURCE, "--target-prompt", TARGET,
                                      "--layout-guidance", "10", "--layout-guidance-until", "0.3"])
    request = request_from_args(args)
    config = p2p_config(request, tiny_model, request.crop)
    assert (config.layout_guidance, config.layout_guidance_until) == (10.0, 0.3)
    assert P2PConfig().layout_guidance == 0  # off unless asked for


def test_guidance_follows_the_levels_coarser_than_the_finest(default_model, tiny_model):
    # the toy world's 16 x 16 latents: the 8 x 8 and 4 x 4 maps (benchmarks/RESULTS.md, "Layout guidance")
    assert default_model.attention_limits() == {"guidance_max_tokens": 8 * 8}
    side = tiny_model.resolution // tiny_model.vae_scale_factor
    limit = tiny_model.attention_limits()["guidance_max_tokens"]
    maps = cross_maps(tiny_model, torch.zeros(1, 4, side, side), 500, tiny_model.encode_prompts([SOURCE]), 0, limit)
    queries = {m.shape[1] for m in maps}
    assert queries and max(queries) < side * side
