"""Multiresolution textual inversion: the prompt syntax and its errors, the choice of embedding along
sampling (band centres, interpolation, semi drops, fully clamps), the text encoder run only when the
conditioning changes, training that moves only the new rows and lowers the loss, concept files (and
diffusers' loader for n = 1), and the two commands end to end on the default model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from editing import multires, multires_ti
from editing.cli import run_main
from editing.core.errors import UserError
from editing.core.image_io import save_image
from editing.core.model import build_tiny_model
from editing.core.loading import load_model
from editing.multires_ti import Concept, TrainConfig, conditioning_schedule, embedding_at, encode_prompt, \
    load_concept, load_concepts, save_concept, train_concept, word_vector
from editing.multires_prompt import PseudoWord, check_names, parse_prompt, render, with_method, words
from editing.core.ddim import DDIMSchedule
from toyworld.world import Scene, Shape, render as render_scene

REPO = Path(__file__).resolve().parents[1]
STEPS = 10  # DDIM steps of the schedule tests: timesteps 901, 801, ..., 1, so t = 0.901, 0.801, ..., 0.001


# ---------------------------------------------------------------- the prompt syntax


@pytest.mark.parametrize("token, method, t", [("<jane|0.3|>", "fixed", 0.3), ("<jane(0.5)>", "semi", 0.5),
                                              ("<jane[1]>", "fully", 1.0), ("<jane>", "fully", 0.0),
                                              ("<jane(0)>", "semi", 0.0), ("<jane|.25|>", "fixed", 0.25)])
def test_every_syntax(token, method, t):
    prompt = f"a painting in the style of {token}."
    pieces = parse_prompt(prompt)
    assert pieces == ["a painting in the style of ", PseudoWord("jane", method, t, token, 27), "."]
    assert render(pieces) == prompt


def test_mixed_prompt_keeps_every_word_and_position():
    prompt = "<tom|0|> and <jane(0.5)>, with <jane[0.2]> in <bob_2-x>"
    pieces = parse_prompt(prompt)
    assert [(w.name, w.method, w.t_fixed, w.position) for w in words(pieces)] == [
        ("tom", "fixed", 0.0, 0), ("jane", "semi", 0.5, 13), ("jane", "fully", 0.2, 31), ("bob_2-x", "fully", 0.0, 46)]
    assert all(prompt[w.position:].startswith(w.text) for w in words(pieces))
    assert render(pieces) == prompt
    assert parse_prompt("a plain prompt") == ["a plain prompt"]
    assert render(with_method(pieces, "semi", 0.7)) == "<tom(0.7)> and <jane(0.7)>, with <jane(0.7)> in <bob_2-x(0.7)>"


@pytest.mark.parametrize("prompt, token, position, why", [
    ("a dog in the style of <jane(1.7)>", "<jane(1.7)>", 22, "outside [0, 1]"),
    ("<jane(-0.1)>", "<jane(-0.1)>", 0, "outside [0, 1]"),
    ("x <jane(nan)>", "<jane(nan)>", 2, "outside [0, 1]"),
    ("a <jane(abc)>", "<jane(abc)>", 2, "is not a number"),
    ("a <jane(0.5)", "<jane(0.5)", 2, "never closed"),
    ("a <jane(0.5) and <tom>", "<jane(0.5) and ", 2, "never closed"),
    ("a jane(0.5)> dog", "a jane(0.5)>", 11, "closes no"),  # (for a stray '>': the text up to it)
    ("a <jane(0.5)>> dog", ">", 13, "closes no"),
    ("a <jane(0.5]>", "<jane(0.5]>", 2, "brackets"),
    ("a <jane|0.5>", "<jane|0.5>", 2, "brackets"),
    ("a <jane(0.5)(0.2)>", "<jane(0.5)(0.2)>", 2, "brackets"),
    ("a <(0.5)> b", "<(0.5)>", 2, "no concept name"),
    ("a <> b", "<>", 2, "no concept name"),
    ("a <ja ne(0.5)>", "<ja ne(0.5)>", 2, "may only hold"),
])
def test_bad_syntax_points_at_the_token(prompt, token, position, why):
    with pytest.raises(UserError) as excinfo:
        parse_prompt(prompt)
    message = str(excinfo.value)
    assert "\n" not in message and why in message
    assert repr(token) in message and f"character {position} of the prompt" in message


def test_unknown_concept_names_token_position_and_the_loaded_ones():
    pieces = parse_prompt("a <jane(0.5)> and <bob|0|>")
    check_names(pieces, ["jane", "bob"])
    expected = r"unknown concept 'bob' in '<bob\|0\|>' at character 18 .*loaded concepts: jane"
    with pytest.raises(UserError, match=expected):
        check_names(pieces, ["jane"])


# ---------------------------------------------------------------- the embedding along sampling


def concept(rows, name="jane", fingerprint="") -> Concept:
    return Concept(name, torch.as_tensor(rows, dtype=torch.float32), "dog", fingerprint)


def test_embedding_at_band_centres_neighbours_and_ends():
    n = 4
    rows = torch.eye(n)  # emb(t) then reads as the weight of each row
    for k in range(n):
        assert torch.equal(embedding_at(rows, (k + 0.5) / n), rows[k])  # a band's centre: emb_{floor(t n)} itself
    for k in range(1, n):
        assert torch.allclose(embedding_at(rows, k / n), (rows[k - 1] + rows[k]) / 2)  # a band edge: the mean
    assert torch.equal(embedding_at(rows, 0.0), rows[0]) and torch.equal(embedding_at(rows, 0.1), rows[0])
    assert torch.equal(embedding_at(rows, 1.0), rows[3]) and torch.equal(embedding_at(rows, 0.9), rows[3])
    assert torch.allclose(embedding_at(rows, 0.3), torch.tensor([0.3, 0.7, 0.0, 0.0]))  # p = 0.3 * 4 - 0.5 = 0.7
    for t in np.linspace(0, 1, 101):
        weights = embedding_at(rows, float(t))
        own = min(int(t * n), n - 1)  # floor(t n): the band t falls in
        assert weights[own] >= 0.5 - 1e-6 and weights.sum() == pytest.approx(1.0)
        assert (weights > 0).sum() <= 2 and torch.all(weights[[k for k in range(n) if abs(k - own) > 1]] == 0)
    assert torch.equal(embedding_at(torch.ones(1, 3), 0.7), torch.ones(3))  # n = 1: one row for every t


def test_each_method_picks_its_vector_along_sampling(tiny_model):
    c = concept(torch.randn(10, 8, generator=torch.Generator().manual_seed(0)))
    fixed, semi, fully = (w for w in words(parse_prompt("<jane|0.35|> <jane(0.5)> <jane[0.5]>")))
    timesteps = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS).timesteps
    for ts in timesteps:
        t = ts / 1000
        assert torch.equal(word_vector(fixed, c, t, "drop"), c.rows[3])  # t_fixed 0.35 is band 3's centre
        if t >= 0.5:
            assert torch.equal(word_vector(semi, c, t, "drop"), embedding_at(c.rows, t))
            assert torch.equal(word_vector(fully, c, t, "drop"), embedding_at(c.rows, t))
        else:
            assert word_vector(semi, c, t, "drop") is None  # dropped from the prompt
            assert torch.equal(word_vector(semi, c, t, "zero"), torch.zeros(8))
            assert torch.equal(word_vector(fully, c, t, "drop"), embedding_at(c.rows, 0.5))  # clamped at t_fixed
    # t = 0.901, n = 10: position 9.01 - 0.5 = 8.51, between rows 8 and 9 (row 9 = emb_{floor(t n)} weighs more)
    assert torch.allclose(word_vector(fully, c, 0.901, "drop"), 0.49 * c.rows[8] + 0.51 * c.rows[9])


class EncoderCalls:
    """Counts text-encoder forward calls with a forward hook (removed on exit)."""

    def __init__(self, model):
        self.encoder, self.calls = model.text_encoder, 0

    def __enter__(self):
        self.handle = self.encoder.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_plain_text_encodes_as_the_model_does(tiny_model):
    for prompt in ("a photo of a cat, sitting.", "", "<|startoftext|>"):
        assert torch.equal(multires_ti.layout(tiny_model, [prompt])[0], tiny_model.tokenize([prompt])[0])
    prompt = "a photo of a cat, sitting on the mat"
    assert torch.allclose(encode_prompt(tiny_model, [prompt], []), tiny_model.encode_prompts([prompt]), atol=1e-6)
    dog = multires_ti.init_row(tiny_model, "dog")
    pieces = parse_prompt("a photo of a <jane|0|> on the mat")  # the vector of "dog" in the slot reads as "dog"
    assert torch.allclose(encode_prompt(tiny_model, pieces, [dog]),
                          tiny_model.encode_prompts(["a photo of a dog on the mat"]), atol=1e-6)
    assert torch.allclose(encode_prompt(tiny_model, pieces, [None]),  # a dropped word is left out of the text
                          tiny_model.encode_prompts(["a photo of a on the mat"]), atol=1e-6)


def test_semi_drops_below_t_fixed_and_the_encoder_runs_only_on_changes(tiny_model):
    dim = tiny_model.text_encoder.get_input_embeddings().embedding_dim
    c = {"jane": concept(torch.randn(4, dim, generator=torch.Generator().manual_seed(1)))}
    timesteps = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS).timesteps
    semi = parse_prompt("a photo of <jane(0.5)>")
    schedule = conditioning_schedule(tiny_model, semi, c, timesteps)
    dropped = tiny_model.encode_prompts(["a photo of"])
    for ts, cond in zip(timesteps, schedule.cond):
        if ts / 1000 < 0.5:
            assert torch.allclose(cond, dropped, atol=1e-6)
        else:
            assert torch.allclose(cond, encode_prompt(tiny_model, semi, [embedding_at(c["jane"].rows, ts / 1000)]))
    # n = 4: band centres 0.125, 0.375, 0.625, 0.875. semi(0.5): t = 0.901 (past the last centre: row 3),
    # 0.801, 0.701, 0.601, 0.501 (four interpolations) and the dropped prompt below 0.5 = 6 runs; fully[0]:
    # row 3, seven interpolations (0.801 .. 0.201), and row 0 for 0.101 and 0.001 (before the first centre) = 9
    expected = {"a photo of <jane|0.3|>": 1, "a photo of <jane(0.5)>": 6, "a photo of <jane[0.5]>": 6,
                "a photo of <jane(1)>": 1, "a photo of <jane[0]>": 9,
                "<jane|0.3|> and <jane|0.9|>": 1, "<jane|0.3|> and <jane[0.5]>": 6}
    for prompt, runs in expected.items():
        with EncoderCalls(tiny_model) as counter:
            schedule = conditioning_schedule(tiny_model, parse_prompt(prompt), c, timesteps)
        assert schedule.encoder_calls == counter.calls == runs, prompt
        assert len(schedule.cond) == STEPS and all(e.shape == (1, 77, dim) for e in schedule.cond)
    one = {"jane": concept(torch.randn(1, dim))}  # n = 1: every method is one vector (semi: the word or nothing)
    for prompt, runs in {"<jane|0.3|>": 1, "<jane[0.5]>": 1, "<jane(0.5)>": 2, "<jane>": 1}.items():
        assert conditioning_schedule(tiny_model, parse_prompt(prompt), one, timesteps).encoder_calls == runs


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def toy_images() -> np.ndarray:
    """Two toy-world renders of a red circle on gray, (2, 64, 64, 3) uint8."""
    scenes = [Scene((Shape("circle", "red", 14.0, 32.0, 32.0),), "gray"),
              Scene((Shape("circle", "red", 11.0, 24.0, 38.0),), "gray")]
    return np.stack([render_scene(s) for s in scenes])


TRAIN = dict(scales=2, steps=30, batch=2, crops=0, seed=0)
FROZEN_LR = 1e-12  # Adam moves a row by about lr per step: far below fp32 resolution, so the rows stay put


@pytest.fixture(scope="module")
def trained(tiny_model, toy_images):
    """(the model state before, the concept, its losses, the losses with frozen rows on the same draws)."""
    before = {k: v.clone() for k, v in tiny_model.text_encoder.state_dict().items()}
    vocab = len(tiny_model.tokenizer)
    result, losses = train_concept(tiny_model, toy_images, "jane", "dog", TrainConfig(lr=0.05, **TRAIN), disable=True)
    _, frozen = train_concept(tiny_model, toy_images, "jane", "dog", TrainConfig(lr=FROZEN_LR, **TRAIN), disable=True)
    return before, vocab, result, losses, frozen


def test_training_changes_only_the_new_rows(tiny_model, trained):
    before, vocab, result, losses, _ = trained
    after = tiny_model.text_encoder.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert len(tiny_model.tokenizer) == vocab
    assert not tiny_model.text_encoder.get_input_embeddings()._forward_hooks  # the slot hook is gone
    assert not any(p.requires_grad for p in tiny_model.text_encoder.parameters())
    init = multires_ti.init_row(tiny_model, "dog")
    assert result.rows.shape == (2, 32) and not result.rows.requires_grad
    assert all(not torch.allclose(row, init) for row in result.rows)  # both bands moved from the init word
    assert result.fingerprint == tiny_model.fingerprint and len(losses) == TRAIN["steps"]


def test_the_loss_falls(trained):
    """The raw loss of single (t, noise) draws is mostly draw-to-draw noise (its first and last chunks differ as
    much with frozen rows), so the rows' effect is measured on the same draws: training minus frozen rows."""
    *_, losses, frozen = trained
    gain = np.array(losses) - np.array(frozen)  # < 0 where the trained rows denoise better than the init word
    chunk = len(gain) // 3
    assert gain[:chunk].mean() > gain[-chunk:].mean()
    assert gain[-chunk:].mean() < 0 and (gain[-chunk:] < 0).all()


# ---------------------------------------------------------------- concept files


def test_concept_file_round_trip_and_metadata(tmp_path, trained):
    result = trained[2]
    path = tmp_path / "concepts" / "jane.safetensors"
    save_concept(path, result, TrainConfig(**TRAIN), "tiny-random")
    assert [p.name for p in path.parent.iterdir()] == ["jane.safetensors"]  # no temporary file left
    loaded = load_concept(path)
    assert torch.equal(loaded.rows, result.rows) and loaded.name == "jane" and loaded.init_word == "dog"
    assert loaded.fingerprint == result.fingerprint
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["<jane>"]
    assert meta["scales"] == "2" and meta["format_version"] == "1" and json.loads(meta["config"])["steps"] == 30
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, never a pickle
    assert set(load_concepts([str(path.parent)])) == {"jane"}


def test_concept_errors(tmp_path, tiny_model):
    dim = 32
    save_concept(tmp_path / "a" / "jane.safetensors", concept(torch.zeros(3, dim), fingerprint=tiny_model.fingerprint))
    save_concept(tmp_path / "b" / "jane.safetensors", concept(torch.zeros(2, dim)))
    with pytest.raises(UserError, match="two concepts are named 'jane'"):
        load_concepts([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(UserError, match="no .safetensors"):
        load_concepts([str(tmp_path)])
    with pytest.raises(UserError, match="neither"):
        load_concepts([str(tmp_path / "missing.safetensors")])
    from safetensors.torch import save_file

    save_file({"<x>": torch.zeros(1, dim)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="not a concept file"):
        load_concept(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="cannot read"):
        load_concept(tmp_path / "junk.safetensors")
    other = load_concepts([str(tmp_path / "b")])
    with pytest.raises(UserError, match="--allow-other-model"):
        multires_ti.check_concepts(tiny_model, other)
    assert "fingerprint" in multires_ti.check_concepts(tiny_model, other, allow_other_model=True)[0]
    wide = {"w": concept(torch.zeros(1, 64), "w", tiny_model.fingerprint)}
    with pytest.raises(UserError, match="64-dim rows"):
        multires_ti.check_concepts(tiny_model, wide, allow_other_model=True)


def test_single_scale_file_loads_in_diffusers(tmp_path, tiny_model, toy_images):
    """n = 1 is standard textual inversion: diffusers' loader takes the file as it is, and its prompt encoding
    equals ours."""
    from diffusers import StableDiffusionPipeline

    result, _ = train_concept(tiny_model, toy_images, "jane", "dog", TrainConfig(scales=1, steps=3, lr=0.05, batch=1,
                                                                                 crops=0), disable=True)
    path = tmp_path / "jane.safetensors"
    save_concept(path, result)
    unet, vae, text_encoder, tokenizer, scheduler = build_tiny_model()  # fresh components: the loader edits them
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_textual_inversion(str(path))
    assert "<jane>" in pipe.tokenizer.get_vocab()
    theirs, _ = pipe.encode_prompt("a photo of <jane> on the mat", "cpu", 1, False)
    ours = encode_prompt(tiny_model, parse_prompt("a photo of <jane> on the mat"), [result.rows[0]])
    assert torch.allclose(theirs, ours, atol=1e-5)


# ---------------------------------------------------------------- the commands, on the default model


def cli(argv) -> int:
    return run_main(multires.main, [str(a) for a in argv])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def default_concept(tmp_path_factory, toy_images):
    """A 4-scale concept trained for 30 steps on the default model by the train command: (folder, its json)."""
    folder = tmp_path_factory.mktemp("multires")
    for k, image in enumerate(toy_images):
        save_image(folder / "images" / f"red-{k}.png", image)
    out = folder / "concepts"
    assert cli(["train", "--images", folder / "images", "--name", "redthing", "--init-word", "circle", "--scales", 4,
                "--steps", 30, "--batch", 1, "--crops", 1, "--lr", 0.02, "--out", out, "--quiet"]) == 0
    return out, json.loads((out / "redthing.json").read_text())


def test_train_command_writes_the_concept(default_concept):
    out, summary = default_concept
    assert sorted(p.name for p in out.iterdir()) == ["redthing.json", "redthing.safetensors"]
    concept_ = load_concept(out / "redthing.safetensors")
    default = load_model(None, device="cpu")
    assert concept_.scales == 4 and concept_.rows.shape[1] == default.text_encoder.config.hidden_size
    assert concept_.fingerprint == default.fingerprint == summary["model_fingerprint"]
    assert summary["training_images"] == 4 and len(summary["losses"]) == 30  # 2 images + 1 re-cropping each
    assert summary["config"]["scales"] == 4 and set(summary["timings_s"]) == {"preliminary_training", "training",
                                                                              "total"}


@pytest.mark.parametrize("prompt, runs", [("a <redthing|0.5|> on a gray background", 1),
                                          ("a <redthing(0.5)> on a gray background", 6),
                                          ("a <redthing[0.5]> on a gray background", 6),
                                          ("a <redthing> and <redthing|1|> on a <redthing(0.2)> background", 9)])
def test_sample_each_method_end_to_end(tmp_path, default_concept, prompt, runs):
    concepts, _ = default_concept
    out = tmp_path / "out"
    assert cli(["sample", "--concepts", concepts, "--prompt", prompt, "--steps", STEPS, "--out", out, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sample.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["encoder_calls"] == {"sample": runs} and summary["prompt"] == prompt
    assert [w["text"] for w in summary["pseudo_words"]] == [w.text for w in words(parse_prompt(prompt))]


def test_sample_grid(tmp_path, default_concept):
    concepts, _ = default_concept
    out = tmp_path / "grid"
    assert cli(["sample", "--concepts", concepts / "redthing.safetensors", "--prompt", "a <redthing(0.5)>",
                "--grid", "--grid-times", "0,1", "--steps", 4, "--out", out, "--quiet"]) == 0
    from editing.core.image_io import read_image

    grid = read_image(out / "grid.png")
    assert grid.shape[1] == 2 * 64 and grid.shape[0] > 3 * 64  # 3 method rows x 2 times, caption bands below
    summary = json.loads((out / "summary.json").read_text())
    assert summary["grid_rows"] == ["fixed", "semi", "fully"] and summary["grid_times"] == [0.0, 1.0]


@pytest.mark.parametrize("prompt, expected", [
    ("a <redthing(1.7)> dog", "'<redthing(1.7)>' at character 2"),
    ("a <jane(0.5)> dog", "unknown concept 'jane' in '<jane(0.5)>' at character 2"),
    ("a <redthing(0.5) dog", "never closed"),
    ("a <(0.5)> dog", "no concept name"),
    ("a plain dog", "no pseudo-word"),
])
def test_sample_errors_are_one_line(tmp_path, default_concept, capsys, prompt, expected):
    concepts, _ = default_concept
    assert cli(["sample", "--concepts", concepts, "--prompt", prompt, "--out", tmp_path]) == 2
    assert expected in error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_concept_of_another_model_is_refused_unless_allowed(tmp_path, default_concept, capsys):
    concepts, _ = default_concept
    other = tmp_path / "other.safetensors"
    save_concept(other, concept(load_concept(concepts / "redthing.safetensors").rows, "other", "0123456789abcdef"))
    argv = ["sample", "--concepts", other, "--prompt", "<other|0|>", "--steps", 2, "--out", tmp_path / "o", "--quiet"]
    assert cli(argv) == 2
    assert "--allow-other-model" in error_line(capsys)
    assert cli(argv + ["--allow-other-model"]) == 0
    assert "warning: concept 'other'" in capsys.readouterr().err


def test_train_errors(tmp_path, capsys, toy_images):
    save_image(tmp_path / "img.png", toy_images[0])
    base = ["train", "--images", tmp_path / "img.png", "--out", tmp_path / "o", "--steps", 1]
    assert cli(base + ["--name", "jane", "--init-word", "notaword-xyz"]) == 2
    assert "--init-word 'notaword-xyz' is" in error_line(capsys)
    assert cli(base + ["--name", "ja ne", "--init-word", "dog"]) == 2
    assert "--name 'ja ne'" in error_line(capsys)
    assert cli(["train", "--images", tmp_path / "none", "--name", "j", "--init-word", "dog"]) == 2
    assert "neither" in error_line(capsys)
    assert cli(base + ["--name", "jane", "--init-word", "dog", "--scales", 0]) == 2
    assert "--scales" in error_line(capsys)


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "editing.multires", "sample", "--concepts", "nowhere",
                           "--prompt", "<jane(2)>"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "'<jane(2)>' at character 0" in done.stderr
