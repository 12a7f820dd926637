"""benchmarks.editability: the diagnosis of the default model's editability runs end to end, and its
attention share is the share of a word's attention mass on the shape's pixels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.editability import caption_use, coverage, main, other_captions, training_recipe, word_position
from editing.cli import run_main
from editing.core.errors import UserError
from editing.core.loading import load_model
from editing.core.model import build_tiny_model


def test_runs_on_a_tiny_model_and_writes_its_files(tmp_path):
    code = run_main(main, ["--model", "tiny-random", "--n", "2", "--steps", "2", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "editability.json").read_text())
    attention = report["attention"]
    for row in attention["per_scene"]:
        for role in ("colour", "shape", "background"):
            assert 0.0 <= row[role] <= 1.0
        assert 0.0 < row["shape_area"] < 1.0
    assert len(report["vae"]["per_scene"]) == 2 and (tmp_path / "attention.png").stat().st_size > 0
    by_attribute = report["vae"]["read_right_by_attribute"]
    assert set(by_attribute) == {"background", "colour", "shape"}
    assert min(by_attribute.values()) >= report["vae"]["read_right"]  # each attribute at least as often as all three
    assert "Where the words attend" in (tmp_path / "editability.md").read_text()
    assert len(report["identity"]["per_scene"]) == 2  # every part by default
    assert "coverage" not in report  # no training record: never the default model's
    assert run_main(main, ["--model", "tiny-random", "--parts", "coverage", "--out", str(tmp_path)]) == 2


def test_the_mask_part_grows_with_a_lower_threshold_and_marks_the_defaults(tmp_path):
    code = run_main(main, ["--model", "tiny-random", "--parts", "mask", "--n", "4", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "editability.json").read_text())["mask"]
    by_level: dict = {}
    for row in report["grid"]:
        by_level.setdefault(row["strength"], []).append(row)
    for rows in by_level.values():  # thresholds ascending: each mask holds the next one
        for lower, higher in zip(rows, rows[1:]):
            assert lower["threshold"] < higher["threshold"]
            for kind, a in lower["by_kind"].items():
                b = higher["by_kind"][kind]
                assert a["covered"] >= b["covered"] and a["share"] >= b["share"]
                assert 0.0 <= a["iou"] <= 1.0 and a["scenes"] == b["scenes"] >= 1
    assert sum(k["scenes"] for k in report["grid"][0]["by_kind"].values()) == 4
    assert "(default)" in (tmp_path / "editability.md").read_text()


def test_coverage_redraws_the_recipe_s_scenes():
    small = {"config": {"seed": 0, "n_train": 500, "two_shapes_prob": 0.1}}  # a recipe from before angles
    found = coverage(small)
    assert found["scenes"] == 500 and found["combinations_seen"] <= found["combinations_possible"] == 114
    assert 0 < found["two_shape_scenes"] < 150  # the recipe's 10 % two-shape scenes
    assert found["rotated_shapes"] == 0 and "upright only" in found["note"]
    turned = coverage({**small, "config": {**small["config"], "turned_prob": 0.5}})
    assert 100 < turned["rotated_shapes"] < 400 and "turned with probability 0.5" in turned["note"]


def test_the_recipe_is_the_model_folder_s_or_the_default_s(tmp_path):
    assert "config" in training_recipe(None) and training_recipe("default") == training_recipe(None)
    (tmp_path / "training.json").write_text(json.dumps({"config": {"seed": 5}}))
    assert training_recipe(str(tmp_path)) == {"config": {"seed": 5}}
    with pytest.raises(UserError, match="none for 'sd15-random'"):
        training_recipe("sd15-random")  # another model: never the default's record
    with pytest.raises(UserError, match="training record"):
        training_recipe(str(tmp_path.parent))  # a folder without a record


def test_word_position_finds_the_word_after_the_start_token():
    tokenizer = build_tiny_model()[3]
    prompt = "a red circle on a gray background"
    assert [word_position(tokenizer, prompt, w) for w in ("red", "circle", "gray")] == [2, 3, 6]
    with pytest.raises(ValueError):
        word_position(tokenizer, prompt, "blue")


def test_an_edit_to_its_own_caption_is_the_reconstruction_under_null_text_and_drifts_under_direct(tmp_path):
    """The identity part: with null-text inversion the edit branch of a no-word-changed edit is the source
    branch, exactly; with DirectInversion only the source branch is held, so the edit branch differs."""
    common = ["--parts", "identity", "--n", "3", "--steps", "10", "--quiet"]
    assert run_main(main, common + ["--identity-inversion", "null-text", "--out", str(tmp_path / "nti")]) == 0
    nti = json.loads((tmp_path / "nti" / "editability.json").read_text())["identity"]
    assert nti["inversion"] == "null-text" and len(nti["per_scene"]) == 3
    assert all(r["edit_psnr_vs_reconstruction_db"] >= 99 for r in nti["per_scene"])  # the same image
    assert all(r["edit_shift_px"] == r["reconstruction_shift_px"] for r in nti["per_scene"])
    assert run_main(main, common + ["--out", str(tmp_path / "direct")]) == 0
    direct = json.loads((tmp_path / "direct" / "editability.json").read_text())["identity"]
    assert direct["inversion"] == "direct" and direct["reconstruction_layout_kept"] == 1.0  # held on the trajectory
    assert all(r["edit_psnr_vs_reconstruction_db"] < 60 for r in direct["per_scene"])  # the edit branch runs free
    assert 0.0 <= direct["edit_layout_kept"] <= 1.0 and direct["edit_shift_px_max"] >= direct["edit_shift_px_median"]
    assert "An edit that changes no word (direct" in (tmp_path / "direct" / "editability.md").read_text()


def test_the_caption_part_finds_the_default_model_reading_its_captions_and_a_blind_one_not(tmp_path):
    """The default model draws its captions: a wrong one costs it several times the error at every noise level.
    A model whose UNet never looks at the caption (its cross-attention output zeroed) pays nothing."""
    code = run_main(main, ["--parts", "caption", "--n", "8", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "editability.json").read_text())["caption"]
    assert [r["t"] for r in report["rows"]] == [200, 500, 800]
    for row in report["rows"]:
        assert row["other_cost"] > 1.0 and row["empty_cost"] > 0.1
        assert row["own_mse"] < row["empty_mse"] < row["other_mse"]
    assert "another's costs" in (tmp_path / "editability.md").read_text()

    model = load_model("tiny-random", device="cpu")
    for block in model.unet.modules():
        if type(block).__name__ == "Attention" and block.is_cross_attention:
            torch.nn.init.zeros_(block.to_out[0].weight)
            torch.nn.init.zeros_(block.to_out[0].bias)
    pairs = [{"image": np.full((model.resolution,) * 2 + (3,), 40 * i, np.uint8), "caption": c}
             for i, c in enumerate(["a red circle on a gray background", "a blue square on a striped background"])]
    blind = caption_use(model, pairs)
    for row in blind["rows"]:
        assert abs(row["other_cost"]) < 1e-5 and abs(row["empty_cost"]) < 1e-5


def test_another_scene_s_caption_is_the_next_one_that_differs():
    assert other_captions(["a", "a", "b", "c"]) == ["b", "b", "c", "a"]
    with pytest.raises(UserError, match="raise --n"):
        other_captions(["a", "a"])
