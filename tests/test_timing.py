"""The stage-timing suite (benchmarks/timing.py) and its reference null-text inversion baseline
(benchmarks/reference_nti.py), on the seeded tiny model with tiny settings."""
from __future__ import annotations

import copy
import dataclasses
import json
import mmap
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from benchmarks import bar_chart, timing
from benchmarks.bar_chart import nice_step, stacked_bars
from benchmarks.reference_nti import check_model, reference_null_text_inversion
from editing.cli import run_main
from editing.core.errors import UserError
from inversion.invert import InversionConfig, invert
from inversion.null_text import NullTextConfig
from helpers import assert_peak_memory_is_plausible, help_examples

# A few seconds per method on one CPU core: every code path, no meaningful figures.
TINY = ["--model", "tiny-random", "--device", "cpu", "--steps", "2", "--repeats", "1", "--inner-steps", "2",
        "--finetune-inner", "2", "--embed-steps", "2", "--unet-steps", "2", "--multires-train-steps", "2", "--batch-images", "2",
        "--quiet"]
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """One run of the whole suite, every method: (exit code, output folder)."""
    out = tmp_path_factory.mktemp("timing")
    code = run_main(timing.main, [*TINY, "--out", str(out)])
    return code, out


@pytest.mark.slow
def test_writes_every_method_with_three_stages_and_memory(suite, tiny_model):
    tiny = tiny_model  # the suite's --model tiny-random: its weights are a floor of every run's peak memory
    code, out = suite
    assert code == 0
    report = json.loads((out / "timing.json").read_text())
    assert list(report["methods"]) == list(timing.ALL_METHODS)
    for name, entry in report["methods"].items():
        assert entry["available"], f"{name}: {entry.get('note')}"
        assert set(entry["stages_s"]) == set(timing.STAGES)
        assert entry["stages_s"]["preliminary_training"] > 0
        assert entry["total_s"] >= entry["stages_s"]["preliminary_training"]
        assert_peak_memory_is_plausible(entry["peak_memory_mb"], tiny)
        assert len(entry["runs"]) == 1  # one repeat of one image; the warm-up is not among them
    for name in timing.EDIT_METHODS:  # every editing method samples; the optimising ones have an editing stage
        assert report["methods"][name]["stages_s"]["generation"] > 0
    for name in ("learned-embedding", "null-finetune", "imagic"):
        assert report["methods"][name]["stages_s"]["editing"] > 0
    env = report["environment"]
    assert env["device"] == "cpu" and env["dtype"] == "fp32" and env["torch"] and env["diffusers"]
    assert report["model"]["random_weights"] and "meaningless" in report["quality_note"]


@pytest.mark.slow
def test_markdown_table_and_reference_ratio_line(suite):
    _, out = suite
    text = (out / "timing.md").read_text()
    assert "| method | preliminary training (s) | editing (s) | generation (s) | total (s) | peak memory (MiB) |" in text
    for label in timing.LABELS.values():
        assert f"| {label} |" in text
    report = json.loads((out / "timing.json").read_text())
    line = report["reference"]["line"]
    assert line.startswith("project NTI vs reference NTI: ") and "x (median of 1 paired runs" in line
    assert line in text
    reference = report["reference"]
    assert reference["ratio"] == pytest.approx(reference["reference_nti_s"] / reference["project_nti_s"])
    assert f"{reference['ratio']:.2f}x" in line
    assert "random weights" in text and "meaningless" in text


@pytest.mark.slow
def test_chart_is_an_image_with_a_bar_per_method(suite):
    _, out = suite
    image = cv2.imread(str(out / "timing.png"))
    assert image is not None and image.shape[0] > 40 * len(timing.ALL_METHODS)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 3  # bars in colour, not a blank canvas


def test_reference_nti_agrees_with_the_project_nti(tiny_model, photos):
    """Same algorithm, same model: the reference's nulls match ours up to float rounding."""
    image, steps, inner = photos[0], 4, 3
    ours = invert(tiny_model, image[None], [PROMPT],
                  InversionConfig(steps=steps, null_text=NullTextConfig(inner_steps=inner)), disable=True)[0]
    ref = reference_null_text_inversion(tiny_model, image, PROMPT, steps=steps, num_inner_steps=inner)
    assert torch.allclose(ours.x_T, ref.x_T[0], atol=1e-4)
    empty = tiny_model.encode_prompts([""])[0]
    assert len(ref.nulls) == steps
    for i, (mine, theirs) in enumerate(zip(ours.nulls, ref.nulls)):
        moved = (mine - empty).norm()  # how far the optimisation took the null
        assert moved > 0.1, "the nulls must have been optimised for the comparison to mean anything"
        assert (mine - theirs[0]).norm() < 1e-3 * moved, f"step {i}"


def test_reference_early_stop_matches_the_project(tiny_model, photos):
    """A generous threshold stops both after the first Adam step of every timestep."""
    image, steps = photos[1], 3
    config = NullTextConfig(inner_steps=5, early_stop=10.0)
    ours = invert(tiny_model, image[None], [PROMPT], InversionConfig(steps=steps, null_text=config), disable=True)[0]
    ref = reference_null_text_inversion(tiny_model, image, PROMPT, steps=steps, num_inner_steps=5, epsilon=10.0)
    assert ref.inner_steps == [1] * steps
    empty = tiny_model.encode_prompts([""])[0]
    for mine, theirs in zip(ours.nulls, ref.nulls):  # had ours taken more Adam steps, it would have moved further
        assert (mine - theirs[0]).norm() < 1e-3 * (mine - empty).norm()


def test_reference_refuses_what_the_published_loop_does_not_do(tiny_v_model, tmp_path):
    with pytest.raises(UserError, match="epsilon"):
        check_model(tiny_v_model)
    options = timing.build_parser().parse_args([*TINY, "--out", str(tmp_path)])
    image = np.zeros((tiny_v_model.resolution,) * 2 + (3,), np.uint8)
    runner, why = timing.make_runner(timing.REFERENCE, tiny_v_model, [image], options, tmp_path)
    assert runner is None and why.startswith("not available") and "epsilon" in why


@pytest.mark.parametrize("argv, words", [
    (["--repeats", "0"], "--repeats"),
    (["--methods", "p2p"], "invalid choice"),
    (["--images", "no-such.png"], "no-such.png"),
    (["--finetune-steps", "9", "--steps", "2"], "--finetune-steps"),  # checked by editing.run's check_args
])
def test_bad_usage_is_one_error_line_and_exit_2(argv, words, tmp_path, capsys):
    assert run_main(timing.main, [*TINY, *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert not (tmp_path / "timing.json").exists()


def test_help_has_a_worked_example():
    examples = help_examples(timing.build_parser().format_help(), "python -m benchmarks.timing")
    assert len(examples) >= 2
    for argv in examples:  # every worked example is a valid command line
        options = timing.build_parser().parse_args(argv)
        assert options.out


def test_sd_random_architectures_are_labelled_random():
    for name in ("sd15-random", "sd21-random", "tiny-random"):
        assert timing.random_weights(SimpleNamespace(name=name))
    assert not timing.random_weights(SimpleNamespace(name="default"))


BLOCK_MIB = 300


def test_peak_memory_is_reset_per_run():
    from editing.core.metrics import peak_memory_mb, reset_peak_memory

    device = torch.device("cpu")
    if not reset_peak_memory(device):
        pytest.skip("this system cannot reset the peak resident set size")
    assert "reset per run" in timing.memory_kind(device)
    # Fresh anonymous pages (an mmap of its own, every page written): a plain allocation in a long test
    # process may reuse heap pages that are already resident (freed, not returned), which add nothing.
    low = peak_memory_mb(device)
    block = mmap.mmap(-1, BLOCK_MIB * 2 ** 20)
    np.frombuffer(block, np.uint8)[:] = 1
    high = peak_memory_mb(device)
    block.close()
    assert high > low + BLOCK_MIB * 2 / 3  # the peak saw the block
    reset_peak_memory(device)
    assert peak_memory_mb(device) < high - BLOCK_MIB * 2 / 3


def test_bar_chart_axis_steps_and_shape():
    assert nice_step(10) == 2 and nice_step(0.9) == 0.2 and nice_step(430) == 100
    image = stacked_bars(["a", "b"], [[1.0, None, 2.0], [0.5, 0.5, 0.5]], ["x", "y", "z"], "title", "seconds")
    assert image.dtype == np.uint8 and image.ndim == 3
    with pytest.raises(ValueError):
        stacked_bars(["a"], [[1.0]], ["x", "y"], "title", "seconds")
    long = "null-text + P2P replace, --mask auto, on a model with a long name"  # wider than the default room
    wide = stacked_bars([long], [[1.0]], ["x"], "t", "seconds")
    assert wide.shape[1] > image.shape[1]
    row = wide[bar_chart.TITLE_HEIGHT:bar_chart.TITLE_HEIGHT + bar_chart.ROW_HEIGHT]  # the label's row
    assert np.all(row[:, :bar_chart.MARGIN] == 255)  # the label starts inside the margin: none of it is cut off
    assert np.any(row[:, bar_chart.MARGIN:bar_chart.MARGIN + 20] < 255)  # and it is drawn right there


def test_batched_nti_and_embedding_rows_report_their_own_figures(suite):
    _, out = suite
    report = json.loads((out / "timing.json").read_text())
    [run] = report["methods"]["nti-batch"]["runs"]
    assert run["extra"]["batch_images"] == 2
    assert run["extra"]["batch_s"] == pytest.approx(2 * run["total_s"])  # the row's figures are per image
    [run] = report["methods"]["embedding"]["runs"]
    assert run["extra"]["embed_steps"] == 2 and run["stages_s"]["editing"] is None


def test_reference_row_runs_fp32_when_the_project_runs_half(tiny_model, tmp_path):
    half = dataclasses.replace(tiny_model, unet=copy.deepcopy(tiny_model.unet).to(torch.bfloat16),
                               dtype=torch.bfloat16)
    reference = timing.fp32_copy(half)
    assert reference.dtype == torch.float32 and next(reference.unet.parameters()).dtype == torch.float32
    assert next(half.unet.parameters()).dtype == torch.bfloat16  # the project's model is left as it was
    assert timing.fp32_copy(tiny_model) is tiny_model
    options = timing.build_parser().parse_args([*TINY, "--out", str(tmp_path)])
    image = np.zeros((half.resolution,) * 2 + (3,), np.uint8)
    runner, why = timing.make_runner(timing.REFERENCE, half, [image], options, tmp_path)
    assert runner is not None, why
