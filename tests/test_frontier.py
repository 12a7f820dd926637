"""benchmarks.frontier: the edit-frontier figure, redrawn from the recorded rows and from runs of one's own."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.frontier import COLOURS, RECORDED, added_point, frontier_figure, main
from editing.cli import run_main
from editing.core.errors import UserError
from editing.core.image_io import load_image


def test_every_recorded_point_is_drawn_in_its_inversion_s_colour(tmp_path):
    assert {p.inversion for p in RECORDED} == set(COLOURS)
    assert all(0.6 <= p.accuracy <= 1 and 0.6 <= p.layout_kept <= 1 for p in RECORDED)  # inside the axes
    figure = frontier_figure(list(RECORDED))
    for colour in COLOURS.values():
        assert (figure == np.array(colour, np.uint8)).all(-1).sum() > 100  # dots and labels in that colour
    assert run_main(main, ["--out", str(tmp_path / "f.png")]) == 0
    assert load_image(tmp_path / "f.png", 64).shape == (64, 64, 3)


def test_a_run_of_one_s_own_is_read_from_its_quality_json(tmp_path):
    path = tmp_path / "quality.json"
    path.write_text(json.dumps({"results": [{"spec": "p2p:direct", "edit_accuracy": 0.9, "layout_kept": 0.7}]}))
    point = added_point(f"mine={path}")
    assert (point.label, point.accuracy, point.layout_kept, point.inversion) == ("mine", 0.9, 0.7, "direct")
    alone = frontier_figure([])
    assert not np.array_equal(frontier_figure([point]), alone)


@pytest.mark.parametrize("text, message", [("mine", "LABEL=PATH"), ("mine=missing.json", "cannot read"),
                                           ("mine={bad}", "is not a benchmarks.quality quality.json")])
def test_a_bad_added_run_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "bad.json").write_text('{"results": []}')
    with pytest.raises(UserError, match=message):
        added_point(text.replace("{bad}", str(tmp_path / "bad.json")).replace("missing.json",
                                                                              str(tmp_path / "missing.json")))
