"""Prompt-to-Prompt on a small random SD-shaped model: the controllers do exactly what the paper says."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention.controllers import AttentionStore, BlendConfig, P2PConfig, PromptToPrompt
from attention.heatmaps import cross_attention_heatmaps, self_attention_components
from attention.processors import ControlledAttnProcessor, attention_control
from editing.core.errors import UserError
from editing.core.image_io import prepare_image
from editing.core.loading import load_model
from editing.p2p import edit_conditioning, edit_p2p
from editing.core.sampling import sample
from editing.core.ddim import DDIMSchedule
from inversion.invert import InversionConfig, invert, reconstruct

from helpers import Checked

STEPS = 4  # enough steps for the schedules to switch on and off; keeps the file fast


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-random")


@pytest.fixture(scope="module")
def cat():
    from skimage import data

    return prepare_image(data.chelsea(), 64)


@pytest.fixture(scope="module")
def record(model, cat):
    return invert(model, cat[None], ["a cat sitting on a mirror"],
                  InversionConfig(method="negative-prompt", steps=STEPS), disable=True)[0]


def run_checked(model, record, targets, config):
    schedule = DDIMSchedule.from_scheduler(model.scheduler, record.steps)
    controller = Checked(record.prompt, targets, model.tokenizer, record.steps, config)
    n = 1 + len(targets)
    x_T = record.x_T[None].expand(n, *record.x_T.shape)
    x0 = sample(model, x_T, edit_conditioning(model, record, targets), schedule, record.guidance,
                controller=controller, disable=True)
    return controller, x0


def attention_layers(model):
    names = list(model.unet.attn_processors)
    return sum(n.endswith("attn2.processor") for n in names), sum(n.endswith("attn1.processor") for n in names)


def test_replace_with_identical_prompts_edit_equals_reconstruction(model, record):
    result = edit_p2p(model, record, [record.prompt], P2PConfig(edit="replace"), disable=True)
    assert np.array_equal(result.edits[0], result.reconstruction)


def test_full_injection_makes_target_maps_the_mapped_source_maps(model, record):
    target = "a tiger sitting on a mirror"
    controller, _ = run_checked(model, record, [target],
                                P2PConfig(edit="replace", cross_replace=1.0, self_replace=1.0))
    n_cross, n_self = attention_layers(model)
    # every layer is hooked at every step (all self maps of this model are <= 16x16)
    assert len(controller.calls) == STEPS * (n_cross + n_self)
    mapper = controller.mapper[0]  # (L, L)
    for call in controller.calls:
        base = call["base"]  # (heads, Q, K)
        expected = base @ mapper if call["is_cross"] else base
        torch.testing.assert_close(call["targets_out"][0], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(call["uncond_out"], call["uncond_in"])  # uncond rows untouched


def test_replace_swaps_only_the_changed_word(model, record):
    controller, _ = run_checked(model, record, ["a tiger sitting on a mirror"],
                                P2PConfig(edit="replace", cross_replace=1.0, self_replace=0.0))
    cross = [c for c in controller.calls if c["is_cross"]]
    assert cross and not [c for c in controller.calls if not c["is_cross"]]  # self layers keep fused attention
    for call in cross:
        # "a tiger sitting on a mirror": every token, the swapped one too, takes the source's column
        torch.testing.assert_close(call["targets_out"][0][..., :8], call["base"][..., :8])


def test_cross_replace_window_is_respected(model, record):
    controller, _ = run_checked(model, record, ["a tiger sitting on a mirror"],
                                P2PConfig(edit="replace", cross_replace=(0.5, 1.0), self_replace=0.0))
    for call in controller.calls:
        if call["step"] < STEPS // 2:  # outside the window the target keeps its own maps
            torch.testing.assert_close(call["targets_out"], call["targets_in"])
        else:
            torch.testing.assert_close(call["targets_out"][0], call["base"] @ controller.mapper[0],
                                       rtol=1e-5, atol=1e-6)


def test_cross_replace_max_tokens_leaves_the_larger_maps_their_own(model, record):
    """cross_replace_max_tokens: maps with more queries keep the target's own attention, the others are
    injected as before (None, the default, injects every map as the reference does)."""
    sizes = {c["base"].shape[1] for c in run_checked(model, record, ["a tiger sitting on a mirror"],
                                                      P2PConfig(edit="replace", cross_replace=1.0,
                                                                self_replace=0.0))[0].calls if c["is_cross"]}
    assert len(sizes) >= 2, sizes  # the tiny model has cross-attention at two sizes at least
    limit = min(sizes)
    controller, _ = run_checked(model, record, ["a tiger sitting on a mirror"],
                                P2PConfig(edit="replace", cross_replace=1.0, self_replace=0.0,
                                          cross_replace_max_tokens=limit))
    cross = [c for c in controller.calls if c["is_cross"]]
    assert {c["base"].shape[1] for c in cross} == sizes
    for call in cross:
        if call["base"].shape[1] > limit:
            torch.testing.assert_close(call["targets_out"], call["targets_in"])
        else:
            torch.testing.assert_close(call["targets_out"][0], call["base"] @ controller.mapper[0],
                                       rtol=1e-5, atol=1e-6)


def test_reweight_scales_exactly_the_chosen_tokens(model, record):
    prompt = record.prompt  # "a cat sitting on a mirror": cat is token 2
    controller, _ = run_checked(model, record, [prompt],
                                P2PConfig(edit="replace", cross_replace=1.0, self_replace=0.0,
                                          reweight={"cat": -2.0}))
    for call in [c for c in controller.calls if c["is_cross"]]:
        out, base = call["targets_out"][0], call["base"]
        torch.testing.assert_close(out[..., 2], -2.0 * base[..., 2])
        keep = [k for k in range(out.shape[-1]) if k != 2]
        torch.testing.assert_close(out[..., keep], base[..., keep])


def test_refine_keeps_inserted_tokens_own_attention(model, record):
    target = "a cat sitting on a golden mirror"  # "golden" is inserted at token 6
    controller, _ = run_checked(model, record, [target],
                                P2PConfig(edit="refine", cross_replace=1.0, self_replace=0.0))
    assert controller.mode == "refine"
    for call in [c for c in controller.calls if c["is_cross"]]:
        out, base, own = call["targets_out"][0], call["base"], call["targets_in"][0]
        torch.testing.assert_close(out[..., 6], own[..., 6])  # inserted: its own map
        torch.testing.assert_close(out[..., 7], base[..., 6])  # "mirror" takes the source "mirror"
        torch.testing.assert_close(out[..., :6], base[..., :6])


def test_replace_with_different_word_counts_is_a_clear_error(model, record):
    with pytest.raises(UserError, match="refine"):
        edit_p2p(model, record, ["a big cat sitting on a mirror"], P2PConfig(edit="replace"), disable=True)


def test_auto_chooses_refine_for_different_word_counts(model, record):
    result = edit_p2p(model, record, ["a big cat sitting on a mirror"], P2PConfig(edit="auto"), disable=True)
    assert result.controller.mode == "refine"


def test_unknown_words_are_named(model, record):
    with pytest.raises(UserError, match="dog"):
        PromptToPrompt(record.prompt, ["a tiger sitting on a mirror"], model.tokenizer, STEPS,
                       P2PConfig(reweight={"dog": 2.0}))
    with pytest.raises(UserError, match="dog"):
        PromptToPrompt(record.prompt, ["a tiger sitting on a mirror"], model.tokenizer, STEPS,
                       P2PConfig(blend=BlendConfig(words=["dog"])))


def test_local_blend_with_user_mask_keeps_the_source_outside(model, record):
    side = model.resolution // model.vae_scale_factor
    mask = torch.zeros(side, side)
    mask[4:12, 4:12] = 1.0
    config = P2PConfig(edit="replace", blend=BlendConfig(mask=mask, start=0.5))
    seen = []
    schedule = DDIMSchedule.from_scheduler(model.scheduler, STEPS)
    targets = ["a tiger sitting on a mirror"]
    controller = PromptToPrompt(record.prompt, targets, model.tokenizer, STEPS, config)
    x_T = record.x_T[None].expand(2, *record.x_T.shape)
    sample(model, x_T, edit_conditioning(model, record, targets), schedule, record.guidance,
           controller=controller, callback=lambda i, x: seen.append((i, x.clone())), disable=True)
    outside = mask == 0
    for i, x in seen:
        differs = (x[1] - x[0]).abs().amax(0)  # (h, w)
        if i >= STEPS // 2:
            assert torch.all(differs[outside] == 0)
            assert differs[~outside].max() > 0  # the edit happens inside
        else:
            assert differs[outside].max() > 0  # no blending before the start step


def test_local_blend_with_words_keeps_the_source_outside_its_mask(model, record):
    targets = ["a tiger sitting on a mirror"]
    config = P2PConfig(edit="replace", blend=BlendConfig(words=["cat", "tiger"], start=0.0, threshold=0.98))
    controller = PromptToPrompt(record.prompt, targets, model.tokenizer, STEPS, config)
    masks = []
    original = controller.blend_mask
    controller.blend_mask = lambda x: masks.append(original(x)) or masks[-1]
    seen = []
    schedule = DDIMSchedule.from_scheduler(model.scheduler, STEPS)
    x_T = record.x_T[None].expand(2, *record.x_T.shape)
    sample(model, x_T, edit_conditioning(model, record, targets), schedule, record.guidance,
           controller=controller, callback=lambda i, x: seen.append(x.clone()), disable=True)
    assert len(masks) == STEPS
    for mask, x in zip(masks, seen):
        inside = mask[1, 0]
        assert 0 < inside.sum() < inside.numel()  # a real region, neither empty nor everything
        assert torch.all((x[1] - x[0]).abs().amax(0)[~inside] == 0)


def test_explicit_attention_equals_fused_attention(model, record):
    """A controller that asks for every layer but changes nothing must not change the result."""
    targets = ["a tiger sitting on a mirror"]
    schedule = DDIMSchedule.from_scheduler(model.scheduler, STEPS)
    cond = edit_conditioning(model, record, targets)
    x_T = record.x_T[None].expand(2, *record.x_T.shape)
    plain = sample(model, x_T, cond, schedule, record.guidance, disable=True)
    store = AttentionStore(n_prompts=2, store_self=True)
    explicit = sample(model, x_T, cond, schedule, record.guidance, controller=store, disable=True)
    torch.testing.assert_close(explicit, plain, rtol=1e-4, atol=1e-5)
    assert store.steps_done == STEPS and store.average("cross") and store.average("self")


def test_processors_are_restored_also_on_exception(model):
    before = dict(model.unet.attn_processors)
    with attention_control(model.unet, AttentionStore(1)):
        assert all(isinstance(p, ControlledAttnProcessor) for p in model.unet.attn_processors.values())
    assert model.unet.attn_processors == before
    with pytest.raises(RuntimeError, match="boom"):
        with attention_control(model.unet, AttentionStore(1)):
            raise RuntimeError("boom")
    assert model.unet.attn_processors == before


def test_reconstruction_row_matches_a_standalone_reconstruction(model, record):
    result = edit_p2p(model, record, ["a tiger sitting on a mirror", "a cat sitting on a chair"],
                      P2PConfig(), disable=True)
    alone = reconstruct(model, [record], disable=True)[0]
    assert np.abs(result.reconstruction.astype(int) - alone.astype(int)).max() <= 1


def test_heatmaps(model, record, cat):
    result = edit_p2p(model, record, ["a tiger sitting on a mirror"], P2PConfig(), store_self=True, disable=True)
    images, captions = cross_attention_heatmaps(result.controller, 0, record.prompt, model.tokenizer, cat)
    assert captions == ["a", "cat", "sitting", "on", "a", "mirror"]
    assert all(im.shape == cat.shape and im.dtype == np.uint8 for im in images)
    images, captions = self_attention_components(result.controller, 0, cat, count=3)
    assert len(images) == 3 and images[0].shape == cat.shape


def test_self_attention_maps_average_over_the_steps_that_recorded_them(model):
    """P2P records self-attention only inside its self-replace window (4 of 10 steps here); the average must
    divide by those 4 steps, not by all 10 (it used to give 0.4 x the maps)."""
    steps, heads, side = 10, 2, 4
    controller = PromptToPrompt("a cat sitting on a mirror", ["a tiger sitting on a mirror"], model.tokenizer, steps,
                                P2PConfig(self_replace=0.4))
    controller.store_self = True
    queries = side * side
    self_probs = torch.full((2 * 2 * heads, queries, queries), 1.0 / queries)  # (B*heads, Q, Q), B = 2 x 2 prompts
    cross_probs = torch.full((2 * 2 * heads, queries, 77), 1.0 / 77)
    recorded = 0
    for step in range(steps):
        controller.edit(cross_probs, is_cross=True, place="up", step=step, heads=heads)
        if controller.wants(False, queries, step):
            controller.edit(self_probs, is_cross=False, place="up", step=step, heads=heads)
            recorded += 1
        controller.after_step(step, torch.zeros(2, 4, side, side))
    assert recorded == 4
    (self_average,), (cross_average,) = controller.average("self"), controller.average("cross")
    torch.testing.assert_close(self_average, torch.full((2, queries, queries), 1.0 / queries))
    torch.testing.assert_close(cross_average, torch.full((2, queries, 77), 1.0 / 77))
