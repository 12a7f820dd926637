"""The Imagic family: the embedding optimiser, learned-embedding NTI, null-text fine-tuning, Imagic."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from attention.controllers import BlendConfig, P2PConfig
from editing.embedding import EmbeddingConfig, noised, optimise_embedding
from editing.core.errors import UserError
from editing.imagic import ImagicConfig, finetuned_unet
from editing.learned_embedding import LearnedEmbeddingConfig, edit_learned_embedding, generate, learn_embedding
from editing.null_finetune import NullFinetuneConfig, edit_null_finetune, finetune_nulls, pivot
from editing.core.sampling import Conditioning, sample
from editing.core.ddim import DDIMSchedule
from inversion.invert import InversionConfig, invert, reconstruct
from inversion.null_text import NullTextConfig
from helpers import assert_peak_memory_is_plausible

TOY = "examples/toy-red-circle.png"
STEPS = 6  # DDIM steps: enough for a trajectory with early and late steps, fast on the tiny model
FAST_NTI = InversionConfig(method="null-text", steps=STEPS, null_text=NullTextConfig(inner_steps=3),
                           keep_trajectory=True)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_forward_process_matches_diffusers(tiny_model, tiny_v_model, prediction):
    model = tiny_model if prediction == "epsilon" else tiny_v_model
    x0, noise = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    t = torch.tensor([0, 500, 999])
    x_t, target = noised(model, x0, noise, t)
    assert torch.allclose(x_t, model.scheduler.add_noise(x0, noise, t), atol=1e-5)
    expected = noise if prediction == "epsilon" else model.scheduler.get_velocity(x0, noise, t)
    assert torch.allclose(target, expected, atol=1e-5)


def fixed_loss(model, latents, emb, samples=64):
    """The denoising loss on a fixed set of (t, noise) draws: comparable before and after optimisation."""
    g = seeded(123)
    t = torch.randint(model.scheduler.config.num_train_timesteps, (samples,), generator=g)
    noise = torch.randn((samples, *latents.shape[1:]), generator=g)
    x_t, target = noised(model, latents.expand(samples, -1, -1, -1), noise, t)
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model.unet_output(x_t, t, emb.expand(samples, -1, -1)), target).item()


@pytest.mark.slow
def test_embedding_optimisation_lowers_the_loss(default_model):
    """On the trained default model, a wrong caption's embedding learns to denoise the photo better."""
    from editing.core.image_io import load_image

    latents = default_model.encode_images(load_image(TOY, default_model.resolution)[None])
    emb = default_model.encode_prompts(["a green triangle on a white background"]).clone()
    before = fixed_loss(default_model, latents, emb)
    losses = optimise_embedding(default_model, latents, [emb], lambda t: emb.expand(len(t), -1, -1),
                                EmbeddingConfig(steps=60, lr=1e-2, l2=0.0, batch=4), generator=seeded(),
                                disable=True)
    assert len(losses) == 60 and all(np.isfinite(losses))
    assert fixed_loss(default_model, latents, emb) < 0.9 * before


def test_regulariser_keeps_the_embedding_near_the_target(tiny_model, photos):
    distances = {}
    for l2 in (0.0, 100.0):
        e_tgt, e_opt, _ = learn_embedding(tiny_model, photos[0], "a photo of a cat",
                                          EmbeddingConfig(steps=40, lr=1e-2, l2=l2), seeded(), disable=True)
        distances[l2] = (e_opt - e_tgt).norm().item()
    assert distances[0.0] > 0.5  # lambda = 0: Adam moves every entry by ~lr per step
    assert distances[100.0] < distances[0.0] / 4, distances


def test_optimiser_leaves_the_unet_frozen(tiny_model, photos):
    emb = tiny_model.encode_prompts([""]).clone()
    optimise_embedding(tiny_model, tiny_model.encode_images(photos[:1]), [emb], lambda t: emb.expand(len(t), -1, -1),
                       EmbeddingConfig(steps=2, l2=0.0), generator=seeded(), disable=True)
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())
    assert all(p.grad is None for p in tiny_model.unet.parameters())
    assert not emb.requires_grad


def test_eta_zero_reproduces_the_reconstruction_under_e_opt(tiny_model, photos):
    _, e_opt, _ = learn_embedding(tiny_model, photos[0], "a photo of a dog", EmbeddingConfig(steps=5, lr=1e-2),
                                  seeded(), disable=True)
    record = invert(tiny_model, photos[:1], ["a photo of a dog"], FAST_NTI, disable=True, cond=e_opt)[0]
    e_tgt = tiny_model.encode_prompts(["a photo of a dog"])
    # eta = 0 with N = steps: e_new = e_opt on every step, so this is the reconstruction of the record
    images = generate(tiny_model, record, e_opt, e_tgt, [(0.0, STEPS), (1.0, STEPS)], disable=True)
    expected = reconstruct(tiny_model, [record], disable=True)[0]
    assert np.abs(images[0].astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(images[1].astype(int) - expected.astype(int)).max() > 1  # eta = 1 is a different picture


def test_interpolation_switches_at_steps_minus_n(tiny_model):
    from editing.learned_embedding import interpolation_conditioning

    e_opt, e_tgt = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    cond = interpolation_conditioning(e_opt, e_tgt, [(0.5, 2), (1.0, 0)], steps=5)
    assert len(cond) == 5 and cond[0].shape == (2, 2, 3)
    assert [c[0, 0, 0].item() for c in cond] == [0, 0, 0, 0.5, 0.5]
    assert [c[1, 0, 0].item() for c in cond] == [0] * 5
    with pytest.raises(UserError, match="interpolation steps"):
        interpolation_conditioning(e_opt, e_tgt, [(0.5, 6)], steps=5)


def test_learned_embedding_edit_records_the_stages(tiny_model, photos):
    config = LearnedEmbeddingConfig(embedding=EmbeddingConfig(steps=3), eta=0.5, interp_steps=3)
    result = edit_learned_embedding(tiny_model, photos[0], "a photo of a dog", config, FAST_NTI, seeded(),
                                    sweep=[(0.0, 0), (1.0, 6)], disable=True)
    assert set(result.timings_s) == {"preliminary_training", "editing", "generation"}
    assert len(result.sweep) == 2 and result.edit.shape == photos[0].shape
    assert result.record.cond is not None and "embedding" in result.record.parts
    assert np.array_equal(result.sweep[0], result.reconstruction)  # (0, 0) is the e_opt reconstruction


@pytest.fixture(scope="module")
def source_record(tiny_model, session_photos):
    return invert(tiny_model, session_photos[:1], ["a photo of a cat"], FAST_NTI, disable=True)[0]


def test_null_finetune_k0_is_the_plain_path(tiny_model, session_photos, source_record):
    image = session_photos[0]
    same = edit_null_finetune(tiny_model, source_record, image, "a photo of a cat", NullFinetuneConfig(steps=0),
                              disable=True)
    plain = reconstruct(tiny_model, [source_record], disable=True)[0]
    assert np.abs(same.edit.astype(int) - plain.astype(int)).max() <= 1
    assert np.abs(same.reconstruction.astype(int) - plain.astype(int)).max() <= 1
    # K = 0 with another prompt: the target prompt with the record's nulls, nothing optimised
    edit = edit_null_finetune(tiny_model, source_record, image, "a photo of a dog", NullFinetuneConfig(steps=0),
                              disable=True)
    schedule = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS)
    nulls = [u[None] for u in source_record.nulls]
    x0 = sample(tiny_model, source_record.x_T[None], Conditioning(tiny_model.encode_prompts(["a photo of a dog"]),
                nulls), schedule, source_record.guidance, disable=True)
    assert np.abs(edit.edit.astype(int) - tiny_model.decode_latents(x0)[0].astype(int)).max() <= 1
    assert edit.finetuned == []


def test_null_finetune_pulls_the_edit_branch_onto_the_pivot(tiny_model, session_photos, source_record):
    trajectory = pivot(tiny_model, source_record, session_photos[0])
    schedule = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS)
    target = tiny_model.encode_prompts(["a photo of a dog"])
    config = NullTextConfig(inner_steps=10, early_stop=0.0, early_stop_growth=0.0)
    tuned = finetune_nulls(tiny_model, source_record, trajectory, "a photo of a dog", 3, config)
    nulls = [u[None] for u in source_record.nulls]

    def error_after_3(uncond):
        _, path = sample(tiny_model, source_record.x_T[None], Conditioning(target, uncond), schedule,
                         source_record.guidance, return_trajectory=True, disable=True)
        return (path[3] - trajectory[STEPS - 3]).pow(2).mean().item()

    assert error_after_3(tuned + nulls[3:]) < error_after_3(nulls)
    # the first K fine-tuned nulls do not depend on how many follow (one run serves a whole K strip)
    shorter = finetune_nulls(tiny_model, source_record, trajectory, "a photo of a dog", 2, config)
    assert all(torch.allclose(a, b) for a, b in zip(shorter, tuned[:2]))


def test_pivot_is_recomputed_when_not_stored(tiny_model, session_photos, source_record):
    from dataclasses import replace

    stored = pivot(tiny_model, source_record, session_photos[0])
    recomputed = pivot(tiny_model, replace(source_record, trajectory=None), session_photos[0])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stored, recomputed))


def test_null_finetune_refuses_direct_inversion(tiny_model, photos):
    record = invert(tiny_model, photos[:1], ["a photo"], InversionConfig(method="direct", steps=2), disable=True)[0]
    with pytest.raises(UserError, match="null-text, negative-prompt, ddim"):
        finetune_nulls(tiny_model, record, [], "a dog", 1, NullTextConfig())


def unet_state(model):
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_imagic_leaves_the_weights_unchanged(tiny_model, photos):
    before = unet_state(tiny_model)
    config = ImagicConfig(embedding=EmbeddingConfig(steps=2, lr=1e-3, l2=0.0),
                          unet=EmbeddingConfig(steps=3, lr=1e-2, l2=0.0), eta=0.5)
    seen = {}

    def spy(i):  # called inside the fine-tuning: the weights must really be moving there
        seen[i] = any(not torch.equal(v, before[k]) for k, v in tiny_model.unet.state_dict().items())

    from editing import imagic
    latents = tiny_model.encode_images(photos[:1])
    e = tiny_model.encode_prompts(["a dog"])
    with finetuned_unet(tiny_model.unet) as weights:
        optimise_embedding(tiny_model, latents, weights, lambda t: e.expand(len(t), -1, -1), config.unet,
                           generator=seeded(), after_step=spy, disable=True)
    assert seen[2]
    result = imagic.edit_imagic(tiny_model, photos[0], "a photo of a dog", config, steps=STEPS, guidance=7.5,
                                generator=seeded(), sweep=[0.0, 1.0], disable=True)
    after = unet_state(tiny_model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny_model.unet.parameters()) and not tiny_model.unet.training
    assert len(result.losses["unet"]) == 3 and len(result.sweep) == 2
    assert np.array_equal(result.sweep[0], result.reconstruction)


def test_imagic_restores_the_weights_after_an_error(tiny_model):
    before = unet_state(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with finetuned_unet(tiny_model.unet):
            with torch.no_grad():
                next(tiny_model.unet.parameters()).add_(1.0)
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.unet.state_dict().items())


def test_imagic_refuses_half_precision():
    from editing.core.model import _place, build_tiny_model

    model = _place(build_tiny_model(), "tiny-bf16", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(UserError, match="fp32"):
        with finetuned_unet(model.unet):
            pass


SOURCE, TARGET = "a red circle on a gray background", "a blue circle on a gray background"


@pytest.mark.parametrize("method,extra", [
    ("null-finetune", ["--finetune-steps", "2", "--finetune-inner", "2", "--sweep-k", "0,2,4"]),
    ("learned-embedding", ["--embed-steps", "3", "--interp-steps", "2", "--sweep-eta", "0,1",
                           "--sweep-interp", "0,4"]),
    ("imagic", ["--embed-steps", "3", "--unet-steps", "3", "--sweep-eta", "0,0.5,1"]),
])
def test_cli_methods_on_the_default_model(tmp_path, method, extra, default_model):
    from editing.run import main

    out = tmp_path / method
    args = ["--image", TOY, "--target-prompt", TARGET, "--method", method, "--steps", "4", "--inner-steps", "2",
            "--sweep", "--quiet", "--device", "cpu", "--out", str(out), *extra]
    if method == "null-finetune":
        args += ["--source-prompt", SOURCE]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("source.png", "reconstruction.png", "edit.png", "grid.png", "sweep.png"):
        assert (out / name).is_file(), name
    assert summary["method"] == method and summary["outputs"]["sweep"] == ["sweep.png"]
    assert set(summary["timings_s"]) == {"preliminary_training", "editing", "generation", "total"}
    assert_peak_memory_is_plausible(summary["peak_memory_mb"], default_model)
    import cv2

    sweep = cv2.imread(str(out / "sweep.png"))
    cells = {"null-finetune": (1, 3), "learned-embedding": (2, 2), "imagic": (1, 3)}[method]
    assert sweep.shape[1] == 64 * cells[1] and sweep.shape[0] > 64 * cells[0]


@pytest.mark.parametrize("argv,message", [
    (["--method", "p2p"], "needs --source-prompt"),
    (["--method", "null-finetune"], "needs --source-prompt"),
    (["--method", "null-finetune", "--source-prompt", SOURCE, "--inversion", "direct"], "null-finetune needs"),
    (["--method", "learned-embedding", "--interp-steps", "9"], "--interp-steps must be between"),
    (["--method", "null-finetune", "--source-prompt", SOURCE, "--finetune-steps", "-1"], "--finetune-steps"),
    (["--method", "imagic", "--sweep", "--sweep-eta", "0,x"], "comma-separated"),
    (["--method", "learned-embedding", "--save-inversion", "x.safetensors"], "learned embedding"),
    (["--method", "imagic", "--embed-lr", "0"], "learning rate"),
    (["--method", "null-finetune", "--source-prompt", SOURCE, "--finetune-inner", "0"], "--finetune-inner"),
])
def test_cli_method_errors(tmp_path, capsys, argv, message):
    from editing.cli import run_main
    from editing.run import main

    code = run_main(main, ["--image", TOY, "--target-prompt", TARGET, "--steps", "4", "--out", str(tmp_path),
                           "--quiet", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("make, names", [
    (lambda: NullTextConfig(inner_steps=0), "--finetune-inner"),  # crashed later with UnboundLocalError
    (lambda: NullTextConfig(inner_steps=2.5), "--inner-steps"),
    (lambda: NullTextConfig(lr=0.0), "learning rate"),
    (lambda: NullTextConfig(early_stop=float("nan")), "early_stop"),
    (lambda: NullFinetuneConfig(steps=-1), "--finetune-steps"),
    (lambda: LearnedEmbeddingConfig(interp_steps=-2), "--interp-steps"),
    (lambda: LearnedEmbeddingConfig(eta=float("inf")), "--eta"),
    (lambda: ImagicConfig(eta=float("nan")), "--eta"),
    (lambda: P2PConfig(edit="swap"), "unknown edit"),
    (lambda: P2PConfig(cross_replace=1.5), "--cross-replace"),
    (lambda: P2PConfig(cross_replace={"default_": 0.8, "cat": (0.6, 0.2)}), "--cross-replace-word cat"),
    (lambda: P2PConfig(self_replace="most"), "--self-replace"),
    (lambda: P2PConfig(reweight={"cat": float("nan")}), "--reweight cat"),
    (lambda: BlendConfig(words=[]), "--blend-words"),
    (lambda: BlendConfig(words=["cat"], threshold=2.0), "--blend-threshold"),
])
def test_configs_refuse_bad_values_when_made(make, names):
    with pytest.raises(UserError, match=re.escape(names)):
        make()


def test_embedding_optimiser_reports_a_nan(tiny_model, photos):
    from editing.core.errors import NonFiniteError

    emb = tiny_model.encode_prompts([""]).clone()
    with pytest.raises(NonFiniteError, match="NaN"):
        optimise_embedding(tiny_model, tiny_model.encode_images(photos[:1]), [emb],
                           lambda t: (emb * float("nan")).expand(len(t), -1, -1), EmbeddingConfig(steps=3, l2=0.0),
                           generator=seeded(), disable=True)
