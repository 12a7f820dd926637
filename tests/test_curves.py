"""The trade-off curves benchmark (benchmarks.curves): every point scored, scenes resumed, plots drawn."""
from __future__ import annotations

import json

import numpy as np

from benchmarks.bar_chart import PALETTE
from benchmarks.curves import main
from benchmarks.line_chart import line_chart
from editing.cli import run_main

TINY = ["--model", "tiny-random", "--n", "2", "--steps", "3", "--inner-steps", "1", "--embed-steps", "1",
        "--ks", "0,3", "--etas", "0,1", "--interp", "3,1", "--quiet"]


def test_curves_score_every_point_and_resume_finished_scenes(tmp_path):
    assert run_main(main, [*TINY, "--curves", "null-finetune", "learned-embedding", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "curves.json").read_text())
    assert list(report["results"]["null-finetune"]["points"]) == ["K=0", "K=3"]
    points = report["results"]["learned-embedding"]["points"]
    assert sorted(points) == sorted(f"lambda={lam} N={n} eta={eta}" for lam in ("0", "0.001") for n in (3, 1)
                                    for eta in (0, 1))
    assert all(p["scenes"] == 2 for p in points.values())
    spread = report["results"]["learned-embedding"]["eta_spread"]
    assert set(spread) == {"lambda=0 N=3", "lambda=0 N=1", "lambda=0.001 N=3", "lambda=0.001 N=1"}
    saved = tmp_path / "scenes" / "null-finetune" / "000.json"
    before = saved.read_text()
    (tmp_path / "scenes" / "null-finetune" / "001.json").unlink()  # as if killed during scene 1
    assert run_main(main, [*TINY, "--curves", "null-finetune", "--out", str(tmp_path)]) == 0
    assert saved.read_text() == before  # scene 0 kept as it was, not recomputed
    assert (tmp_path / "scenes" / "null-finetune" / "001.json").is_file()
    assert (tmp_path / "null-finetune-edit_accuracy.png").is_file() and (tmp_path / "learned-embedding-eta.png").is_file()


def test_line_chart_draws_each_series_in_its_colour():
    image = line_chart([0, 1, 2], {"a": [0.0, 0.5, 1.0], "b": [1.0, None, 0.0]}, "t", "x", "y", (0.0, 1.0))
    for colour in PALETTE[:2]:
        assert (np.abs(image.astype(int) - colour).sum(-1) == 0).sum() > 50  # lines and markers of that colour
