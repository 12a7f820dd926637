"""SDXL on a tiny random SDXL-shaped model (tests/sdxl_tiny.py): the conditioning matches diffusers' SDXL
pipeline, DDIM inversion matches diffusers' inverse scheduler, null-text, Direct and negative-prompt inversion
reconstruct as on SD, Prompt-to-Prompt controls every SDXL attention layer, and the loader and the CLI take an
SDXL folder. Latent errors are the measure where pictures of a random decoder cannot tell methods apart
(see tests/test_inversion.py)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from attention.controllers import AttentionStore, BlendConfig, P2PConfig, PromptToPrompt
from attention.processors import ControlledAttnProcessor
from editing.core.conditioning import TextEmbeds
from editing.core.ddim import DDIMSchedule
from editing.core.sampling import sample
from editing.core.sdxl import (SDXL_RANDOM_NAME, SDXLModel, add_time_ids, build_sdxl_random, time_ids_of_photo)
from editing.p2p import edit_conditioning, edit_p2p
from inversion.ddim import ddim_inversion
from inversion.invert import InversionConfig, invert, reconstruct, source_conditioning
from inversion.null_text import NullTextConfig
from inversion.record import Inversion, source_anchors
from helpers import Checked
from sdxl_tiny import TEXT_DIM, save_tiny_sdxl_folder, tiny_sdxl_components, tiny_sdxl_model

STEPS = 10
P2P_STEPS = 4
GUIDANCE = 7.5
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def model() -> SDXLModel:
    return tiny_sdxl_model()


@pytest.fixture(scope="module")
def records(model, session_photos):
    """chelsea inverted by every method (10 steps, guidance 7.5, trajectories kept)."""
    return {m: invert(model, session_photos[:1], [PROMPT],
                      InversionConfig(method=m, steps=STEPS, guidance=GUIDANCE, keep_trajectory=True),
                      disable=True)[0] for m in ("ddim", "null-text", "direct", "negative-prompt")}


def latent_mse(model, record) -> float:
    conditioning, schedule = source_conditioning(model, [record])
    x0 = sample(model, record.x_T[None], conditioning, schedule, record.guidance,
                anchors=source_anchors([record], 1, model.device), disable=True)[0]
    return float((x0 - record.trajectory[0]).pow(2).mean())


# ---------------------------------------------------------------- conditioning


def test_conditioning_equals_diffusers_sdxl_pipeline(model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(), force_zeros_for_empty_prompt=True)
    tokens, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPT, device="cpu",
                                                                   do_classifier_free_guidance=True)
    ours = model.encode_prompts([PROMPT, ""])
    assert ours.tokens.shape == (2, 77, 2 * TEXT_DIM) and ours.pooled.shape == (2, TEXT_DIM)
    # 1e-6: we encode two prompts in one batch, the pipeline one (matmul rounding; entries are O(1))
    torch.testing.assert_close(ours.tokens[:1], tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.pooled[:1], pooled, rtol=0, atol=1e-6)
    # force_zeros_for_empty_prompt: the null is zeros, tokens and pooled, as the pipeline's negative side
    assert torch.equal(ours.tokens[1:], negative) and torch.equal(ours.pooled[1:], negative_pooled)
    assert not negative.any()
    expected_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, TEXT_DIM)
    assert torch.equal(ours.time_ids, expected_ids.expand(2, 6))


def test_empty_prompt_is_encoded_when_the_pipeline_does_not_force_zeros(model):
    from dataclasses import replace

    encoded = replace(model, force_zeros_for_empty_prompt=False).encode_prompts([""])
    assert encoded.tokens.abs().amax() > 0.1 and encoded.pooled.abs().amax() > 0.1


def test_conditioning_behaves_like_a_batch_tensor(model):
    e = model.encode_prompts(["a cat", "a dog", ""])
    both = torch.cat([e[:1], e[2:]])
    assert both.shape == (2, 77, 2 * TEXT_DIM)
    assert torch.equal(both.pooled[1], e.pooled[2]) and torch.equal(both.time_ids, e.time_ids[:2])
    mixed = 0.25 * e[:1] + (1 - 0.25) * e[1:2]
    torch.testing.assert_close(mixed.tokens, 0.25 * e.tokens[:1] + 0.75 * e.tokens[1:2])
    torch.testing.assert_close(mixed.pooled, 0.25 * e.pooled[:1] + 0.75 * e.pooled[1:2])
    assert torch.equal(mixed.time_ids, e.time_ids[:1])  # the image's size and crop are not interpolated
    stacked = torch.stack([e, e], 1)  # per-step nulls: (B, steps, ...)
    assert stacked.tokens.shape == (3, 2, 77, 2 * TEXT_DIM) and stacked.pooled.shape == (3, 2, TEXT_DIM)
    assert e[:1].expand(4, -1, -1).pooled.shape == (4, TEXT_DIM)
    with pytest.raises(TypeError, match="plain tensors"):
        torch.cat([e, e.tokens])
    with pytest.raises(TypeError, match="SDXL conditioning"):
        model.unet_output(torch.zeros(1, 4, 16, 16), 1, e.tokens[:1])


def test_time_ids_state_the_photo_and_its_crop():
    from editing.core.image_io import Crop

    assert add_time_ids((768, 1024), (0, 128), (1024, 1024)).tolist() == [768, 1024, 0, 128, 1024, 1024]
    # a 480 x 640 photo: the centre 480 x 480 square is kept, 80 px from the left; resized x 1024/480
    ids = time_ids_of_photo((480, 640, 3), Crop(), 1024)
    assert ids.tolist() == [480, 640, 0, round(80 * 1024 / 480), 1024, 1024]
    ids = time_ids_of_photo((480, 640, 3), Crop(top=40, bottom=40), 1024)  # 400 high: square side 400
    assert ids.tolist() == [480, 640, round(40 * 1024 / 400), round(120 * 1024 / 400), 1024, 1024]


# ---------------------------------------------------------------- inversion


def test_ddim_inversion_equals_diffusers_inverse_scheduler_with_sdxl_conditioning(model, session_photos):
    from diffusers import DDIMInverseScheduler

    schedule = DDIMSchedule.from_scheduler(model.scheduler, STEPS)
    x0 = model.encode_images(session_photos[:1])
    cond = model.encode_prompts([PROMPT])
    ours = ddim_inversion(model.unet_output, x0, cond, schedule)
    inverse = DDIMInverseScheduler.from_config(model.scheduler.config)
    inverse.set_timesteps(STEPS)
    x = x0
    added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    with torch.no_grad():
        for k, t in enumerate(inverse.timesteps):
            out = model.unet(x, t, encoder_hidden_states=cond.tokens, added_cond_kwargs=added).sample
            x = inverse.step(out, t, x).prev_sample
            torch.testing.assert_close(ours[k + 1], x, rtol=1e-5, atol=1e-5, msg=f"step {k}")


def test_null_text_reconstructs_better_than_ddim(model, records):
    ddim, nti = latent_mse(model, records["ddim"]), latent_mse(model, records["null-text"])
    assert nti < 0.5 * ddim, (nti, ddim)  # measured 2.4e-2 (NTI) vs 5.7e-2 (DDIM)
    nulls = records["null-text"].nulls
    assert isinstance(nulls, TextEmbeds) and nulls.tokens.shape == (STEPS, 77, 2 * TEXT_DIM)
    assert nulls.tokens.abs().amax() > 5e-3  # the null tokens moved away from the zero null
    assert not nulls.pooled.any()  # the pooled null is not optimised by default


def test_direct_and_negative_prompt_reconstruct(model, records, session_photos):
    assert latent_mse(model, records["negative-prompt"]) < 0.5 * latent_mse(model, records["ddim"])
    vae_round_trip = model.decode_latents(records["direct"].trajectory[:1])
    np.testing.assert_array_equal(reconstruct(model, [records["direct"]], disable=True), vae_round_trip)


def test_optimising_the_pooled_null_is_an_option(model, session_photos, records):
    config = InversionConfig(method="null-text", steps=STEPS, guidance=GUIDANCE, keep_trajectory=True,
                             null_text=NullTextConfig(optimise_pooled=True))
    record = invert(model, session_photos[:1], [PROMPT], config, disable=True)[0]
    assert record.nulls.pooled.abs().amax() > 0.1  # the pooled null moved
    assert record.params["null_text"]["optimise_pooled"] is True
    assert record.fingerprint != records["null-text"].fingerprint
    # it changes the reconstruction (measured: latent error 2.4e-2 -> 1.9e-2 on this model and photo)
    assert latent_mse(model, record) != latent_mse(model, records["null-text"])


def test_batched_null_text_equals_single_runs(model, session_photos, photo_prompts):
    config = InversionConfig(method="null-text", steps=3, guidance=GUIDANCE,
                             null_text=NullTextConfig(inner_steps=4))
    batched = invert(model, session_photos[:2], photo_prompts[:2], config, disable=True)
    for b in range(2):
        single = invert(model, session_photos[b:b + 1], photo_prompts[b:b + 1], config, disable=True)[0]
        torch.testing.assert_close(batched[b].x_T, single.x_T, rtol=0, atol=1e-5)
        # the tolerance of tests/test_inversion.py's batched test (Adam's per-entry rounding noise)
        torch.testing.assert_close(batched[b].nulls.tokens, single.nulls.tokens, rtol=0, atol=5e-4)
        assert batched[b].fingerprint == single.fingerprint


def test_sdxl_record_round_trips_through_a_file(model, records, tmp_path):
    record = records["null-text"]
    loaded = Inversion.load(record.save(tmp_path / "r.safetensors"))
    for a, b in zip(loaded.nulls.parts(), record.nulls.parts()):
        assert torch.equal(a, b)
    assert np.array_equal(reconstruct(model, [loaded], disable=True), reconstruct(model, [record], disable=True))


# ---------------------------------------------------------------- Prompt-to-Prompt


@pytest.fixture(scope="module")
def p2p_record(model, session_photos):
    return invert(model, session_photos[:1], ["a cat sitting on a mirror"],
                  InversionConfig(method="negative-prompt", steps=P2P_STEPS), disable=True)[0]


def test_identical_prompts_edit_equals_reconstruction(model, p2p_record):
    result = edit_p2p(model, p2p_record, [p2p_record.prompt], P2PConfig(edit="replace"), disable=True)
    assert np.array_equal(result.edits[0], result.reconstruction)


def test_full_injection_makes_target_maps_the_mapped_source_maps_at_every_layer(model, p2p_record):
    targets = ["a tiger sitting on a mirror"]
    controller = Checked(p2p_record.prompt, targets, model.tokenizer, P2P_STEPS,
                         P2PConfig(edit="replace", cross_replace=1.0, self_replace=1.0))
    schedule = DDIMSchedule.from_scheduler(model.scheduler, P2P_STEPS)
    sample(model, p2p_record.x_T[None].expand(2, -1, -1, -1), edit_conditioning(model, p2p_record, targets),
           schedule, p2p_record.guidance, controller=controller, disable=True)
    names = list(model.unet.attn_processors)
    # attn1 + attn2 of 11 transformer blocks: down 1 + 2, mid 2, up 2 x 2 + 2 x 1
    assert len(names) == 2 * (1 + 2 + 2 + 2 * 2 + 2 * 1)
    assert len(controller.calls) == P2P_STEPS * len(names)  # every layer at every step
    mapper = controller.mapper[0]
    for call in controller.calls:
        expected = call["base"] @ mapper if call["is_cross"] else call["base"]
        torch.testing.assert_close(call["targets_out"][0], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(call["uncond_out"], call["uncond_in"])
    assert {c["base"].shape[1] for c in controller.calls} == {8 * 8, 4 * 4}  # both attention resolutions


def test_local_blend_leaves_the_source_outside_the_mask(model, p2p_record):
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1.0
    targets = ["a tiger sitting on a mirror"]
    controller = PromptToPrompt(p2p_record.prompt, targets, model.tokenizer, P2P_STEPS,
                                P2PConfig(edit="replace", blend=BlendConfig(mask=mask, start=0.0)))
    seen = []
    schedule = DDIMSchedule.from_scheduler(model.scheduler, P2P_STEPS)
    sample(model, p2p_record.x_T[None].expand(2, -1, -1, -1), edit_conditioning(model, p2p_record, targets),
           schedule, p2p_record.guidance, controller=controller, callback=lambda i, x: seen.append(x.clone()),
           disable=True)
    for x in seen:
        differs = (x[1] - x[0]).abs().amax(0)
        assert torch.all(differs[mask == 0] == 0) and differs[mask == 1].max() > 0


def test_the_auto_mask_reads_sdxl_conditioning(model, session_photos):
    from editing.auto_mask import disagreement_masks
    from editing.core.image_io import prepare_image

    photo = prepare_image(session_photos[0], model.resolution)
    masks = disagreement_masks(model, photo, "a cat sitting on a mirror",
                               ["a tiger sitting on a mirror", "a cat sitting on a mirror"], draws=2)
    side = model.resolution // model.vae_scale_factor
    assert masks.shape == (2, side, side)
    assert 0 < masks[0].sum() < side * side and masks[1].sum() == 0  # a changed word marks part; none marks nothing


def test_processors_are_restored_after_an_exception(model):
    before = dict(model.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionStore(1).installed(model.unet):
            assert all(isinstance(p, ControlledAttnProcessor) for p in model.unet.attn_processors.values())
            raise RuntimeError("boom")
    assert model.unet.attn_processors == before


# ---------------------------------------------------------------- loading, the CLI, sdxl-random


def test_sdxl_random_has_the_released_parameter_counts():
    with torch.device("meta"):
        parts = build_sdxl_random()
    counts = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder",
                                                                        "text_encoder_2")}
    # stabilityai/stable-diffusion-xl-base-1.0's components
    assert counts == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                      "text_encoder_2": 694_659_840}
    assert parts["vae"].config.scaling_factor == 0.13025 and parts["vae"].config.force_upcast
    assert parts["unet"].config.sample_size * 8 == 1024
    assert parts["tokenizer_2"].pad_token == "!"


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return save_tiny_sdxl_folder(tmp_path_factory.mktemp("tiny-sdxl"))


def test_load_model_detects_an_sdxl_folder(sdxl_folder, model):
    from editing.core.loading import load_model

    loaded = load_model(sdxl_folder, device="cpu")
    assert isinstance(loaded, SDXLModel) and loaded.force_zeros_for_empty_prompt
    assert loaded.latent_scale == 0.13025 and loaded.vae.dtype == torch.float32
    assert loaded.fingerprint == model.fingerprint  # the same weights, read back from the folder
    assert SDXL_RANDOM_NAME == "sdxl-random"


def test_cli_on_an_sdxl_folder_writes_the_full_contract(sdxl_folder, tmp_path):
    import skimage.data

    from editing.core.image_io import save_image

    save_image(tmp_path / "cat.png", skimage.data.chelsea()[:200, :300])  # 200 x 300: the centre square cut
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "editing.run", "--model", str(sdxl_folder), "--image",
                          str(tmp_path / "cat.png"), "--source-prompt", "a cat sitting on a mirror",
                          "--target-prompt", "a tiger sitting on a mirror", "--steps", "3", "--inner-steps", "2",
                          "--device", "cpu", "--save-inversion", str(tmp_path / "inv.safetensors"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("source.png", "reconstruction.png", "edit.png", "grid.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(sdxl_folder) and summary["reconstruction_psnr_db"] > 0
    # the photo's size and crop reached the conditioning: 200 x 300, the square 50 px from the left, at 64 px
    nulls = Inversion.load(tmp_path / "inv.safetensors").nulls
    assert nulls.time_ids.tolist() == [[200, 300, 0, 16, 64, 64]] * 3


def test_batch_conditions_each_photo_on_its_own_size(sdxl_folder, tmp_path):
    """editing.batch gives SDXL each photo's size and crop, as editing.run does: two photos of different
    sizes, two inversions in the cache, each with its photo's time ids."""
    import skimage.data

    from editing import batch as batch_module
    from editing.cli import run_main
    from editing.core.image_io import Crop, save_image

    photos = tmp_path / "photos"
    save_image(photos / "wide.png", skimage.data.chelsea()[:200, :300])
    save_image(photos / "tall.png", skimage.data.chelsea()[:300, :120])
    argv = ["--model", sdxl_folder, "--images", photos, "--source-prompt", "a cat sitting on a mirror",
            "--target-prompt", "a tiger sitting on a mirror", "--steps", "3", "--inner-steps", "2", "--device", "cpu",
            "--cache", tmp_path / "cache", "--out", tmp_path / "out", "--quiet"]
    assert run_main(batch_module.main, [str(a) for a in argv]) == 0
    found = sorted(Inversion.load(f).nulls.time_ids[0].tolist() for f in (tmp_path / "cache").glob("*.safetensors"))
    expected = sorted(time_ids_of_photo(shape, Crop(), 64).tolist() for shape in ((200, 300, 3), (300, 120, 3)))
    assert found == expected


# ---------------------------------------------------------------- the Imagic family


FAST_NTI = InversionConfig(method="null-text", steps=4, null_text=NullTextConfig(inner_steps=2), keep_trajectory=True)


def test_learned_embedding_on_sdxl(model, session_photos, tmp_path):
    from editing.embedding import EmbeddingConfig
    from editing.learned_embedding import LearnedEmbeddingConfig, edit_learned_embedding

    config = LearnedEmbeddingConfig(embedding=EmbeddingConfig(steps=3, lr=1e-2), eta=0.5, interp_steps=2)
    result = edit_learned_embedding(model, session_photos[0], "a photo of a dog", config, FAST_NTI,
                                    torch.Generator().manual_seed(0), sweep=[(0.0, 0)], disable=True)
    e_tgt = model.encode_prompts(["a photo of a dog"])
    # theta = tokens and pooled; the time ids stay the image's
    assert (result.e_opt.tokens - e_tgt.tokens).abs().amax() > 1e-3
    assert (result.e_opt.pooled - e_tgt.pooled).abs().amax() > 1e-3
    assert torch.equal(result.e_opt.time_ids, e_tgt.time_ids)
    assert np.array_equal(result.sweep[0], result.reconstruction)  # (0, 0) is the e_opt reconstruction
    # the record carries the learned conditioning, all three parts, through a file
    loaded = Inversion.load(result.record.save(tmp_path / "le.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.cond.parts(), result.record.cond.parts()))
    assert "embedding" in loaded.parts


def test_null_finetune_k0_on_sdxl_is_the_plain_path(model, session_photos):
    from editing.null_finetune import NullFinetuneConfig, edit_null_finetune

    record = invert(model, session_photos[:1], [PROMPT], FAST_NTI, disable=True)[0]
    same = edit_null_finetune(model, record, session_photos[0], PROMPT, NullFinetuneConfig(steps=0), disable=True)
    plain = reconstruct(model, [record], disable=True)[0]
    assert np.abs(same.edit.astype(int) - plain.astype(int)).max() <= 1
    tuned = edit_null_finetune(model, record, session_photos[0], "a photo of a dog",
                               NullFinetuneConfig(steps=2, null_text=NullTextConfig(inner_steps=2)), disable=True)
    assert len(tuned.finetuned) == 2 and isinstance(tuned.finetuned[0], TextEmbeds)


def test_imagic_on_sdxl_leaves_the_weights_unchanged(model, session_photos):
    from editing.embedding import EmbeddingConfig
    from editing.imagic import ImagicConfig, edit_imagic

    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    config = ImagicConfig(embedding=EmbeddingConfig(steps=2, lr=1e-3, l2=0.0),
                          unet=EmbeddingConfig(steps=2, lr=1e-2, l2=0.0), eta=0.5)
    result = edit_imagic(model, session_photos[0], "a photo of a dog", config, steps=3, guidance=GUIDANCE,
                         generator=torch.Generator().manual_seed(0), sweep=[0.0], disable=True)
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert len(result.losses["unet"]) == 2 and np.array_equal(result.sweep[0], result.reconstruction)


def test_the_photo_s_size_and_crop_reach_every_prompt(model):
    from editing.core.image_io import Crop

    photo_model = model.for_photo((480, 640, 3), Crop())
    expected = time_ids_of_photo((480, 640, 3), Crop(), model.resolution)
    source, null = photo_model.encode_prompts([PROMPT]), photo_model.encode_prompts([""])
    assert torch.equal(source.time_ids[0], expected) and torch.equal(null.time_ids[0], expected)
    assert photo_model.unet is model.unet and model.photo_time_ids is None  # shared, the original untouched
    x = torch.zeros(1, 4, 16, 16)
    plain = model.unet_output(x, 500, model.encode_prompts([PROMPT]))
    assert not torch.equal(photo_model.unet_output(x, 500, source), plain)  # the time ids reach the UNet


def test_sdxl_attention_limits_keep_both_resolutions_and_heatmaps_work(model, p2p_record, session_photos):
    from attention.heatmaps import cross_attention_heatmaps

    # the 16 x 16 latents: maps up to 8 x 8, self-attention injected at 4 x 4, layout guidance by the 4 x 4 maps
    limits = model.attention_limits()
    assert limits == {"store_max_tokens": 8 * 8, "self_replace_max_tokens": 4 * 4, "guidance_max_tokens": 4 * 4}
    targets = ["a tiger sitting on a mirror"]
    controller = Checked(p2p_record.prompt, targets, model.tokenizer, P2P_STEPS,
                         P2PConfig(edit="replace", cross_replace=1.0, self_replace=1.0, **limits))
    schedule = DDIMSchedule.from_scheduler(model.scheduler, P2P_STEPS)
    sample(model, p2p_record.x_T[None].expand(2, -1, -1, -1), edit_conditioning(model, p2p_record, targets),
           schedule, p2p_record.guidance, controller=controller, disable=True)
    assert {c["base"].shape[1] for c in controller.calls if not c["is_cross"]} == {4 * 4}
    assert {m.shape[1] for m in controller.average("cross")} == {8 * 8, 4 * 4}
    images, captions = cross_attention_heatmaps(controller, 0, p2p_record.prompt, model.tokenizer, session_photos[0])
    assert captions == ["a", "cat", "sitting", "on", "a", "mirror"] and images[0].shape == session_photos[0].shape


# ---------------------------------------------------------------- multiresolution textual inversion


def test_multires_on_sdxl_trains_rows_for_both_encoders_and_loads_in_diffusers(model, session_photos, tmp_path):
    """n = 1 is standard textual inversion: the file has SDXL's two-key form, diffusers' SDXL pipeline loads
    it with load_textual_inversion (once per encoder), and its prompt encoding equals ours."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from editing.multires_ti import TrainConfig, encode_prompt, load_concept, save_concept, train_concept
    from editing.multires_prompt import parse_prompt

    before = {k: v.clone() for k, v in model.text_encoder_2.state_dict().items()}
    concept, losses = train_concept(model, session_photos[:1], "jane", "dog",
                                    TrainConfig(scales=1, steps=3, lr=0.05, batch=1, crops=0), disable=True)
    assert concept.rows.shape == (1, 2 * TEXT_DIM) and concept.encoder_dims == (TEXT_DIM, TEXT_DIM)
    init = model.input_embeddings(torch.tensor([[model.tokenizer("dog", add_special_tokens=False).input_ids[0]]]))
    assert (concept.rows[0, :TEXT_DIM] - init[0, 0, :TEXT_DIM]).abs().amax() > 1e-3  # both halves learned
    assert (concept.rows[0, TEXT_DIM:] - init[0, 0, TEXT_DIM:]).abs().amax() > 1e-3
    assert all(torch.equal(v, before[k]) for k, v in model.text_encoder_2.state_dict().items())
    path = tmp_path / "jane.safetensors"
    save_concept(path, concept)
    tensors = load_file(str(path))
    assert sorted(tensors) == ["clip_g", "clip_l"] and tensors["clip_l"].shape == (1, TEXT_DIM)
    loaded = load_concept(path)
    assert torch.equal(loaded.rows, concept.rows) and loaded.encoder_dims == concept.encoder_dims

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(), force_zeros_for_empty_prompt=True)  # fresh parts
    pipe.load_textual_inversion(tensors["clip_l"], token="<jane>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tensors["clip_g"], token="<jane>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    prompt = "a photo of <jane> on the mat"
    tokens, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    ours = encode_prompt(model, parse_prompt(prompt), [concept.rows[0]])
    torch.testing.assert_close(ours.tokens, tokens, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- memory


def saved_bytes(model, cond) -> int:
    """Bytes one UNet call keeps for its backward pass, gradients flowing to the null tokens (an NTI step)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    tokens = cond.tokens.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.unet_output(torch.zeros(1, 4, 16, 16), 500, TextEmbeds(tokens, cond.pooled, cond.time_ids))
    return total[0]


def test_gradient_checkpointing_keeps_less_for_backward_and_changes_nothing(model, session_photos):
    from editing.core.speed import unet_checkpointing

    null = model.encode_prompts([""])
    plain = saved_bytes(model, null)
    config = InversionConfig(method="null-text", steps=2, guidance=GUIDANCE, null_text=NullTextConfig(inner_steps=2))
    reference = invert(model, session_photos[:1], [PROMPT], config, disable=True)[0]
    with unet_checkpointing(model.unet):
        assert saved_bytes(model, null) < plain / 4
        record = invert(model, session_photos[:1], [PROMPT], config, disable=True)[0]
    assert not model.unet.is_gradient_checkpointing  # restored
    torch.testing.assert_close(record.nulls.tokens, reference.nulls.tokens, rtol=0, atol=1e-6)
