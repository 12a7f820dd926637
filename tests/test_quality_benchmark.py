"""The toy-world edit benchmark runs end to end and its metrics mean what they say."""
import json

import numpy as np

from benchmarks.quality import main, masked_psnr, unchanged_region
from editing.cli import run_main
from toyworld.world import edit_pairs


def test_unchanged_region_excludes_exactly_the_edited_pixels():
    pair = next(p for p in edit_pairs(7, 20) if p["attribute"] == "colour")
    keep = unchanged_region(pair["image"], pair["edited_image"])
    changed = (pair["image"] != pair["edited_image"]).any(-1)
    assert changed.any() and not (keep & changed).any()
    assert keep.mean() > 0.5  # a colour edit leaves most of the picture alone
    assert masked_psnr(pair["image"], pair["edited_image"], keep) == float("inf")


def test_masked_psnr_counts_only_the_mask():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    mask = np.ones((4, 4), bool)
    mask[0, 0] = False
    assert masked_psnr(a, b, mask) == float("inf")
    assert np.isclose(masked_psnr(a, b, ~mask), 0.0)


def test_benchmark_writes_its_files(tmp_path):
    code = run_main(main, ["--model", "tiny-random", "--n", "2", "--steps", "2", "--inner-steps", "1",
                           "--batch-size", "2", "--inversion", "direct", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "quality.json").read_text())
    result = report["results"][0]
    assert report["scenes"] == 2 and result["scenes"] == 2
    assert 0.0 <= result["edit_accuracy"] <= 1.0
    assert np.isfinite(result["edit_psnr_db"]) and np.isfinite(result["reconstruction_psnr_db"])
    assert "direct + P2P replace" in (tmp_path / "quality.md").read_text()
    assert (tmp_path / "examples.png").stat().st_size > 0
