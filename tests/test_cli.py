"""`python -m editing.run` end to end on a real photo (scikit-image's chelsea) with the embedded default model.

Most runs call `editing.run.main` in-process through `editing.cli.run_main` (the same wrapper the module
entry point uses), with tiny settings; one test runs the real module in a subprocess to prove the entry
point and its exit codes.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from editing import methods as edit_module, run as run_module
from editing.cli import run_main
from editing.core.image_io import load_image, read_image
from editing.core.metrics import psnr
from helpers import help_examples

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "chelsea.png"
SOURCE = "a cat sitting on a blanket"
TARGET = "a tiger sitting on a blanket"
TIGER_AND_DOG = ["a tiger sitting on a blanket", "a dog sitting on a blanket"]
TINY = ["--steps", "3", "--inner-steps", "2", "--quiet"]  # a few seconds per run on a CPU
TIMINGS = ("preliminary_training", "editing", "generation", "total")
CONTRACT_KEYS = ("method", "inversion", "model", "image", "source_prompt", "target_prompts", "seed", "steps",
                 "guidance", "timings_s", "reconstruction_psnr_db", "outputs")


def edit_argv(out, *extra, image=PHOTO, source=SOURCE, targets=(TARGET,)) -> list[str]:
    argv = ["--image", str(image), "--source-prompt", source]
    for target in targets:
        argv += ["--target-prompt", target]
    return argv + ["--out", str(out), *TINY, *map(str, extra)]


def cli(argv) -> int:
    return run_main(run_module.main, [str(a) for a in argv])


def run_ok(argv) -> Path:
    """Run the command, expect success, return the output folder."""
    assert cli(argv) == 0
    return Path(argv[argv.index("--out") + 1])


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def one_error_line(capsys) -> str:
    """stderr must be exactly one `error: ...` line, without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def check_contract(out: Path, targets: list[str], steps: int, resolution: int, inversion: str) -> dict:
    """Every file and summary key of the command-line contract, with consistent values."""
    s = summary_of(out)
    assert set(CONTRACT_KEYS) <= s.keys()
    assert s["method"] == "p2p" and s["inversion"] == inversion
    assert s["model"] == "default"  # the embedded model these tests run on
    assert s["image"] == str(PHOTO) and s["source_prompt"] == SOURCE
    assert s["target_prompts"] == targets and s["seed"] == 0
    assert s["steps"] == steps and s["guidance"] == pytest.approx(7.5)
    timings = s["timings_s"]
    assert set(TIMINGS) <= timings.keys()
    assert all(math.isfinite(timings[k]) and timings[k] >= 0 for k in TIMINGS)
    assert timings["total"] >= timings["preliminary_training"] + timings["editing"] + timings["generation"] - 0.01
    edits = ["edit.png"] if len(targets) == 1 else [f"edit-{k + 1}.png" for k in range(len(targets))]
    assert s["outputs"]["edit"] == edits
    assert s["outputs"]["reconstruction"] == "reconstruction.png" and s["outputs"]["grid"] == "grid.png"

    images = {name: read_image(out / name) for name in ["source.png", "reconstruction.png", *edits]}
    for name, image in images.items():
        assert image.shape == (resolution, resolution, 3), name
    # source.png is the preprocessed photo the model saw
    np.testing.assert_array_equal(images["source.png"], load_image(PHOTO, resolution))
    grid = read_image(out / "grid.png")
    assert grid.shape[1] == resolution * (2 + len(targets)) and grid.shape[0] > resolution  # + caption band
    np.testing.assert_array_equal(grid[:resolution, :resolution], images["source.png"])

    r = s["reconstruction_psnr_db"]
    assert isinstance(r, float) and math.isfinite(r)
    assert r == pytest.approx(psnr(images["reconstruction.png"], images["source.png"]), abs=0.01)
    return s


# ---------------------------------------------------------------- shared runs (each once per module)


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> Path:
    """One target, the default (null-text) inversion, saving the inversion record."""
    out = tmp_path_factory.mktemp("basic")
    return run_ok(edit_argv(out, "--save-inversion", out / "inversion.safetensors"))


@pytest.fixture(scope="module")
def method_run(tmp_path_factory):
    done = {}

    def get(method: str) -> Path:
        if method not in done:
            done[method] = run_ok(edit_argv(tmp_path_factory.mktemp(method), "--inversion", method))
        return done[method]

    return get


@pytest.fixture
def no_inversion(monkeypatch):
    """Bad input must be reported before the (long) inversion starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("the inversion started before the input was checked")

    monkeypatch.setattr(edit_module, "invert", refuse)


# ---------------------------------------------------------------- the contract


def test_contract_files_and_summary(basic, default_model):
    check_contract(basic, [TARGET], steps=3, resolution=default_model.resolution, inversion="null-text")
    assert default_model.resolution == 64  # the embedded tiny model; source/reconstruction/edit at 64 px
    assert (basic / "inversion.safetensors").is_file()


def test_two_targets_write_numbered_edits(tmp_path, default_model):
    out = run_ok(edit_argv(tmp_path, "--inversion", "ddim", targets=TIGER_AND_DOG))
    check_contract(out, TIGER_AND_DOG, steps=3, resolution=default_model.resolution, inversion="ddim")
    assert not (out / "edit.png").exists()
    assert not np.array_equal(read_image(out / "edit-1.png"), read_image(out / "edit-2.png"))


@pytest.mark.parametrize("method", ["null-text", "negative-prompt", "direct", "ddim"])
def test_every_inversion_method(method, method_run, basic, default_model):
    out = basic if method == "null-text" else method_run(method)
    check_contract(out, [TARGET], steps=3, resolution=default_model.resolution, inversion=method)


def test_direct_reconstruction_is_the_vae_round_trip(method_run, default_model):
    """DirectInversion pins the source branch to the inversion trajectory, so its reconstruction is the VAE
    round trip of the photo up to float error: the best PSNR any inversion can reach with this VAE. DDIM
    drifts away from it. (With the random default VAE the round trip itself is far from the photo, so the
    two PSNRs against the photo are not ordered; they are compared against the round trip here.)"""
    direct, ddim = method_run("direct"), method_run("ddim")
    source = read_image(direct / "source.png")
    round_trip = default_model.decode_latents(default_model.encode_images(source[None]))[0]
    direct_rec, ddim_rec = read_image(direct / "reconstruction.png"), read_image(ddim / "reconstruction.png")
    assert np.abs(direct_rec.astype(int) - round_trip.astype(int)).max() <= 2
    assert summary_of(direct)["reconstruction_psnr_db"] == pytest.approx(psnr(round_trip, source), abs=0.01)
    assert psnr(ddim_rec, round_trip) < psnr(direct_rec, round_trip) - 10
    assert summary_of(direct)["steps"] == summary_of(ddim)["steps"] == 3


# ---------------------------------------------------------------- inversion records


def test_inversion_file_is_reused(basic, tmp_path, monkeypatch):
    inversions = []
    invert = edit_module.invert
    monkeypatch.setattr(edit_module, "invert", lambda *a, **k: inversions.append(1) or invert(*a, **k))
    out = run_ok(edit_argv(tmp_path / "reused", "--inversion-file", basic / "inversion.safetensors"))
    assert inversions == []  # the record was read, not computed again
    first, second = summary_of(basic), summary_of(out)
    assert second["inversion"] == "null-text" and second["steps"] == first["steps"]
    for name in ("reconstruction.png", "edit.png"):
        np.testing.assert_array_equal(read_image(out / name), read_image(basic / name))
    assert second["reconstruction_psnr_db"] == first["reconstruction_psnr_db"]
    run_ok(edit_argv(tmp_path / "fresh", "--inversion", "ddim"))
    assert inversions == [1]  # the counter does see an inversion when one is computed


def test_inversion_file_for_another_prompt_is_refused(basic, tmp_path, capsys):
    argv = edit_argv(tmp_path, "--inversion-file", basic / "inversion.safetensors",
                     source="a dog sitting on a blanket", targets=["a fox sitting on a blanket"])
    assert cli(argv) == 2
    line = one_error_line(capsys)
    assert "different prompt" in line and "different image" not in line


def test_inversion_file_for_another_image_is_refused(basic, tmp_path, capsys):
    flipped = tmp_path / "flipped.png"
    cv2.imwrite(str(flipped), cv2.imread(str(PHOTO))[:, ::-1])
    argv = edit_argv(tmp_path / "out", "--inversion-file", basic / "inversion.safetensors", image=flipped)
    assert cli(argv) == 2
    line = one_error_line(capsys)
    assert "different image" in line and "different prompt" not in line


def test_missing_inversion_file(tmp_path, capsys):
    assert cli(edit_argv(tmp_path, "--inversion-file", tmp_path / "none.safetensors")) == 2
    assert "none.safetensors" in one_error_line(capsys)


# ---------------------------------------------------------------- options


def test_attention_maps(tmp_path):
    out = run_ok(edit_argv(tmp_path, "--inversion", "ddim", "--attention-maps"))
    s = summary_of(out)
    for name in ("attention.png", "self-attention.png"):
        image = read_image(out / name)
        assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
        assert name in s["outputs"].values()


def test_edit_auto_chooses_refine_for_different_word_counts(tmp_path):
    out = run_ok(edit_argv(tmp_path, "--edit", "auto", "--inversion", "ddim",
                           targets=["a big striped tiger sitting on a blanket"]))
    s = summary_of(out)
    assert s["edit"] == "refine" and "refine" in s.get("note", "")
    assert read_image(out / "edit.png").shape == read_image(out / "source.png").shape


def test_config_file_sets_options_and_flags_override(tmp_path):
    config = tmp_path / "edit.yaml"
    config.write_text(
        f"image: {PHOTO}\n"
        f"source_prompt: {SOURCE}\n"
        "target_prompt:\n  - a tiger sitting on a blanket\n  - a dog sitting on a blanket\n"
        "inversion: ddim\n"
        "steps: 2\n"
        "inner-steps: 1\n"
        "quiet: true\n")
    out = run_ok(["--config", config, "--out", tmp_path / "a", "--steps", "3"])
    s = summary_of(out)
    assert s["steps"] == 3  # the flag beats the file
    assert s["target_prompts"] == TIGER_AND_DOG and s["inversion"] == "ddim"  # from the file
    assert (out / "edit-1.png").is_file() and (out / "edit-2.png").is_file()

    out = run_ok(["--config", config, "--out", tmp_path / "b", "--target-prompt", "a fox sitting on a blanket"])
    s = summary_of(out)
    assert s["target_prompts"] == ["a fox sitting on a blanket"]  # replaces the file's list, not extends it
    assert s["steps"] == 2 and s["outputs"]["edit"] == ["edit.png"]


def test_config_file_unknown_key(tmp_path, capsys):
    config = tmp_path / "edit.yaml"
    config.write_text("steps: 2\nsteps_per_second: 9\n")
    assert cli(edit_argv(tmp_path, "--config", config)) == 2
    assert "steps_per_second" in one_error_line(capsys)


def test_config_file_is_loaded_safely(tmp_path, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'steps: !!python/object/apply:os.system ["touch {marker}"]\n'
                      'guidance: !!python/object:editing.cli.Parser {}\n')
    assert cli(edit_argv(tmp_path, "--config", config)) == 2
    assert "evil.yaml" in one_error_line(capsys)
    assert not marker.exists()


def test_missing_config_file(tmp_path, capsys):
    assert cli(edit_argv(tmp_path, "--config", tmp_path / "none.yaml")) == 2
    assert "none.yaml" in one_error_line(capsys)


# ---------------------------------------------------------------- usage errors: exit 2, one line


def _files(tmp: Path) -> dict[str, Path]:
    (tmp / "notes.txt").write_text("not a picture\n")
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "folder").mkdir(exist_ok=True)
    return {"text": tmp / "notes.txt", "empty": tmp / "empty.png", "dir": tmp / "folder",
            "missing": tmp / "missing.png"}


LONG = " ".join(["cat"] * 80)
BAD_INPUTS = {  # name: (argv builder(out, files), words the error line must contain)
    "unknown flag": (lambda o, f: edit_argv(o, "--colour", "red"), ["--colour"]),
    "missing --image": (lambda o, f: edit_argv(o)[2:], ["--image"]),
    "missing file": (lambda o, f: edit_argv(o, image=f["missing"]), ["missing.png", "not found"]),
    "text file": (lambda o, f: edit_argv(o, image=f["text"]), ["notes.txt"]),
    "empty file": (lambda o, f: edit_argv(o, image=f["empty"]), ["empty.png", "empty"]),
    "directory": (lambda o, f: edit_argv(o, image=f["dir"]), ["folder"]),
    "replace, different word counts": (
        lambda o, f: edit_argv(o, "--edit", "replace", targets=["a big tiger sitting on a blanket"]), ["refine"]),
    "reweight a word not in the target": (lambda o, f: edit_argv(o, "--reweight", "zebra=2"), ["zebra"]),
    "blend word in no prompt": (lambda o, f: edit_argv(o, "--blend-words", "zebra"), ["zebra"]),
    "source prompt over 77 tokens": (lambda o, f: edit_argv(o, source=LONG), ["77"]),
    "target prompt over 77 tokens": (lambda o, f: edit_argv(o, targets=[LONG]), ["77"]),
    "--steps 0": (lambda o, f: edit_argv(o, "--steps", "0"), ["--steps"]),
    "--steps x": (lambda o, f: edit_argv(o, "--steps", "x"), ["--steps"]),
    "fp16 on the cpu": (lambda o, f: edit_argv(o, "--dtype", "fp16", "--device", "cpu"), ["fp16"]),
    "--model nonexistent": (lambda o, f: edit_argv(o, "--model", "/nonexistent/path"), ["/nonexistent/path"]),
    "--crop 1,2": (lambda o, f: edit_argv(o, "--crop", "1,2"), ["--crop", "1,2"]),
    "--reweight without =": (lambda o, f: edit_argv(o, "--reweight", "cat"), ["--reweight", "WORD=VALUE"]),
    "--cross-replace not a number": (lambda o, f: edit_argv(o, "--cross-replace", "most"), ["--cross-replace"]),
    "save and reuse at once": (
        lambda o, f: edit_argv(o, "--save-inversion", o / "a.st", "--inversion-file", o / "b.st"),
        ["--inversion-file", "--save-inversion"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case, tmp_path, capsys, no_inversion):
    build, words = BAD_INPUTS[case]
    assert cli(build(tmp_path / "out", _files(tmp_path))) == 2
    line = one_error_line(capsys)
    for word in words:
        assert word.lower() in line.lower(), line
    assert not (tmp_path / "out").exists(), "a refused run leaves no output folder behind"


def test_a_refused_run_keeps_an_output_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "results" / "out"
    assert cli(edit_argv(out, "--model", "/nonexistent/path")) == 2  # refused after --out was prepared
    one_error_line(capsys)
    assert not (tmp_path / "results").exists(), "the folders the run made are removed again"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    assert cli(edit_argv(out, "--model", "/nonexistent/path")) == 2
    one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_failure_inside_the_run_exits_1(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the sampler fell over")

    monkeypatch.setattr(edit_module, "edit_p2p", broken)
    assert cli(edit_argv(tmp_path, "--inversion", "ddim")) == 1
    line = one_error_line(capsys)
    assert "the sampler fell over" in line and "--debug" in line

    assert cli(edit_argv(tmp_path, "--inversion", "ddim", "--debug")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: RuntimeError")


def test_help_has_a_worked_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(run_module.main, ["--help"])
    assert exit_info.value.code == 0
    examples = help_examples(capsys.readouterr().out, "python -m editing.run")
    assert len(examples) >= 2
    for argv in examples:  # each worked example is a valid request on a photo that is in the repository
        args = run_module.build_parser().parse_args(argv)
        run_module.request_from_args(args)
        assert (REPO / args.image).is_file(), args.image


# ---------------------------------------------------------------- the real entry point


@pytest.mark.slow
def test_module_entry_point_exit_codes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def module(*argv):
        return subprocess.run([sys.executable, "-m", "editing.run", *map(str, argv)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    bad = module(*edit_argv(tmp_path / "bad", image=tmp_path / "missing.png"))
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.png" in errors[0], bad.stderr
    assert bad.stderr.strip().splitlines() == errors, f"stderr has more than the error line:\n{bad.stderr}"

    good = module(*edit_argv(tmp_path / "good", "--inversion", "ddim", "--steps", "2"))
    assert good.returncode == 0, good.stderr
    assert "Traceback" not in good.stderr
    assert summary_of(tmp_path / "good")["steps"] == 2
    assert (tmp_path / "good" / "edit.png").is_file() and "wrote" in good.stdout
