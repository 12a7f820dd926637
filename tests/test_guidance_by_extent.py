"""--guidance auto, --layout-guidance auto and --cross-replace auto: P2P's guidance and cross-attention window
chosen by how much of the picture the edit changes (editing/extent.py), per inversion, as --depth auto chooses
the depth."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from editing import batch as batch_module
from editing.cli import run_main
from editing.core.errors import UserError
from editing.core.image_io import load_image
from editing.extent import BY_EXTENT_CROSS_REPLACE, BY_EXTENT_GUIDANCE, BY_EXTENT_LAYOUT_GUIDANCE, \
    cross_replace_for, guidance_for, layout_guidance_for
from editing.methods import edit, inversion_config
from editing.request import AUTO_GUIDANCE, EditRequest

SOURCE = "a red circle on a gray background"
COLOUR = "a blue circle on a gray background"  # a local edit: the mask covers the circle
BACKGROUND = "a red circle on a checkered background"  # a whole-picture edit
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "toy-red-circle.png"


def local_and_global_masks() -> tuple[torch.Tensor, torch.Tensor]:
    local = torch.zeros(1, 8, 8)
    local[0, :3] = 1  # 3/8 of the picture
    return local, torch.ones(1, 8, 8)


def test_each_inversion_guides_local_edits_gently_and_whole_picture_edits_harder():
    local, whole = local_and_global_masks()
    assert guidance_for(local, "null-text") == 2.0 and guidance_for(whole, "null-text") == 7.5
    assert layout_guidance_for(local, "null-text") == 5.0 and layout_guidance_for(whole, "null-text") == 10.0
    assert guidance_for(local, "direct") == 7.5 and guidance_for(whole, "direct") == 10.0
    assert cross_replace_for(local, "null-text") == 0.8 and cross_replace_for(whole, "null-text") == 0.4
    assert cross_replace_for(whole, "direct") == 0.8
    for inversion in BY_EXTENT_GUIDANCE:  # one whole-picture target among several makes the batch global
        both = torch.cat([local, whole])
        assert guidance_for(both, inversion) == BY_EXTENT_GUIDANCE[inversion][1]
        assert layout_guidance_for(both, inversion) == BY_EXTENT_LAYOUT_GUIDANCE[inversion][1]
        assert cross_replace_for(both, inversion) == BY_EXTENT_CROSS_REPLACE[inversion][1]


def test_auto_is_read_in_any_case_and_is_not_an_inversion_setting():
    request = EditRequest(source_prompt=SOURCE, target_prompts=[COLOUR], guidance=" Auto", layout_guidance="AUTO")
    assert (request.guidance, request.layout_guidance) == (AUTO_GUIDANCE, AUTO_GUIDANCE)
    assert request.inverts_by_extent
    for name in ("layout_guidance", "cross_replace"):  # settings of the edit, not of the inversion
        only = EditRequest(source_prompt=SOURCE, target_prompts=[COLOUR], **{name: "Auto"})
        assert getattr(only, name) == AUTO_GUIDANCE and only.edits_by_extent and not only.inverts_by_extent
    with pytest.raises(ValueError, match="chosen per edit"):
        inversion_config(request)


@pytest.mark.parametrize("changes, message", [
    ({"guidance": "auto", "method": "null-finetune"}, "applies to --method p2p"),
    ({"guidance": "auto", "inversion": "ddim"}, "measured for --inversion null-text and direct only"),
    ({"layout_guidance": "auto", "inversion": "negative-prompt"}, "measured for --inversion null-text and direct"),
    ({"layout_guidance": "auto", "method": "imagic"}, "applies to --method p2p"),
    ({"guidance": "auto", "inversion_file": "cat.safetensors"}, "keeps the guidance it was made with"),
    ({"cross_replace": "auto", "inversion": "ddim"}, "--cross-replace auto is measured"),
    ({"cross_replace": "auto", "method": "null-finetune"}, "applies to --method p2p"),
    ({"guidance": "strong"}, r"--guidance \(a number, or auto\)"),
    ({"layout_guidance": -1}, "--layout-guidance"),
])
def test_auto_guidance_is_refused_where_it_was_not_measured(changes, message):
    with pytest.raises(UserError, match=message):
        EditRequest(source_prompt=SOURCE, target_prompts=[COLOUR], **changes)


@pytest.mark.parametrize("target, local", [(COLOUR, True), (BACKGROUND, False)])
def test_auto_guidance_is_the_chosen_numbers_given_by_hand(default_model, target, local):
    """On the toy world: a colour edit is local, a background edit global; the edit at auto is, pixel for pixel,
    the edit at the numbers it chose (auto chooses, and does nothing else)."""
    photo = load_image(PHOTO, 64)
    base = dict(source_prompt=SOURCE, target_prompts=[target], inversion="null-text", steps=6, inner_steps=2,
                quiet=True)
    auto = edit(default_model, photo, EditRequest(**base, guidance="auto", layout_guidance="auto",
                                                  cross_replace="auto"))
    guidance, layout, cross = (2.0, 5.0, 0.8) if local else (7.5, 10.0, 0.4)
    assert (auto.summary["guidance"], auto.summary["layout_guidance"], auto.summary["cross_replace"]) == \
        (guidance, layout, cross)
    assert "depth" not in auto.summary  # the depth stays the request's (full)
    by_hand = edit(default_model, photo, EditRequest(**base, guidance=guidance, layout_guidance=layout,
                                                     cross_replace=cross))
    assert np.array_equal(auto.edits[0], by_hand.edits[0])
    assert np.array_equal(auto.reconstruction, by_hand.reconstruction)


def test_a_batch_at_auto_guidance_caches_the_inversion_at_the_chosen_guidance(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "circle.png")
    common = ["--images", photos, "--source-prompt", SOURCE, "--target-prompt", COLOUR, "--steps", "4",
              "--inner-steps", "2", "--quiet", "--out", out]

    def batch(*flags) -> dict:
        assert run_main(batch_module.main, [str(a) for a in [*common, *flags]]) == 0
        entry, = json.loads((out / "report.json").read_text())["images"]
        return entry

    first = batch("--guidance", "auto", "--layout-guidance", "auto")
    assert first["status"] == "done" and first["inversion"] == "computed" and first["timings_s"]["inversion"] > 0
    assert json.loads((out / "circle" / "summary.json").read_text())["guidance"] == 2.0
    assert len(list((out / ".cache" / "inversions").glob("*.safetensors"))) == 1
    # the inversion it made is the one a request for guidance 2 by hand finds
    again = batch("--guidance", "2", "--layout-guidance", "5", "--overwrite")
    assert again["status"] == "done" and again["inversion"] == "reused"


def test_a_reused_inversion_chooses_by_its_own_method(default_model, tmp_path):
    """--inversion-file: the record's method, not --inversion, picks the row of the table (and is refused where
    the table has none)."""
    photo = load_image(PHOTO, 64)
    base = dict(source_prompt=SOURCE, target_prompts=[COLOUR], steps=4, quiet=True)
    for inversion in ("direct", "ddim"):
        edit(default_model, photo, EditRequest(**base, inversion=inversion,
                                               save_inversion=str(tmp_path / f"{inversion}.safetensors")))
    reused = edit(default_model, photo, EditRequest(**base, inversion_file=str(tmp_path / "direct.safetensors"),
                                                    layout_guidance="auto", cross_replace="auto"))
    assert reused.summary["inversion"] == "direct"
    assert (reused.summary["layout_guidance"], reused.summary["cross_replace"]) == (10.0, 0.8)  # direct, local
    with pytest.raises(UserError, match="measured for --inversion null-text and direct only"):
        edit(default_model, photo, EditRequest(**base, inversion_file=str(tmp_path / "ddim.safetensors"),
                                               layout_guidance="auto"))
