"""`--mask auto`: the disagreement mask follows the edit on the toy world, and P2P blends under it per target."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention.controllers import BlendConfig, P2PConfig, PromptToPrompt
from benchmarks.editability import changed_cells
from editing.auto_mask import disagreement_masks, mask_picture
from editing.core.ddim import DDIMSchedule
from editing.core.errors import UserError
from editing.core.image_io import read_image
from editing.core.sampling import sample
from editing.methods import load_mask, request_inputs, run_edit
from editing.p2p import edit_conditioning
from editing.request import EditRequest
from inversion.invert import InversionConfig, invert
from toyworld.world import edit_pairs

SCENES = 12  # the quality suite's first turned scenes: 4 background, 5 colour, 3 shape edits


def test_the_mask_covers_what_the_edit_changes_and_little_else(default_model):
    side = default_model.resolution // default_model.vae_scale_factor
    coverage, shares = [], {"background": [], "colour": [], "shape": []}
    for pair in edit_pairs(1234, SCENES, size=64, turned_prob=0.5):
        masks = disagreement_masks(default_model, pair["image"], pair["caption"],
                                   [pair["edited_caption"], pair["caption"]])
        assert masks.shape == (2, side, side)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert masks[1].sum() == 0  # the source caption again: nothing may change
        truth = changed_cells(pair, side)
        coverage.append(float((masks[0].bool() & truth).sum() / truth.sum()))
        shares[pair["attribute"]].append(float(masks[0].mean()))
    assert np.mean(coverage) >= 0.9  # measured 0.97 (the first 30 scenes: 0.67-1.00 each, mean 0.95)
    assert min(shares["background"]) >= 0.9  # a new background is the whole background
    for kind in ("colour", "shape"):  # a shape's colour or outline: a small part of the image
        assert np.mean(shares[kind]) < 0.35, (kind, shares[kind])


def test_the_mask_is_seeded_and_the_picture_reads_back(default_model):
    pair = edit_pairs(1234, 3, size=64, turned_prob=0.5)[2]  # a colour edit
    first = disagreement_masks(default_model, pair["image"], pair["caption"], [pair["edited_caption"]], seed=3)
    again = disagreement_masks(default_model, pair["image"], pair["caption"], [pair["edited_caption"]], seed=3)
    assert torch.equal(first, again)
    picture = mask_picture(first[0], pair["image"].shape)
    assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8


@pytest.fixture(scope="module")
def cat_record(tiny_model, session_photos):
    return invert(tiny_model, session_photos[:1], ["a cat sitting on a mirror"],
                  InversionConfig(method="negative-prompt", steps=4), disable=True)[0]


def test_one_mask_per_target_keeps_each_row_outside_its_own(tiny_model, cat_record):
    side = tiny_model.resolution // tiny_model.vae_scale_factor
    masks = torch.zeros(2, side, side)
    masks[0, :, : side // 2] = 1.0  # the first target may change the left half, the second the top half
    masks[1, : side // 2] = 1.0
    targets = ["a tiger sitting on a mirror", "a dog sitting on a mirror"]
    config = P2PConfig(edit="replace", blend=BlendConfig(mask=masks, start=0.0))
    controller = PromptToPrompt(cat_record.prompt, targets, tiny_model.tokenizer, 4, config)
    seen = []
    x_T = cat_record.x_T[None].expand(3, *cat_record.x_T.shape)
    sample(tiny_model, x_T, edit_conditioning(tiny_model, cat_record, targets),
           DDIMSchedule.from_scheduler(tiny_model.scheduler, 4), cat_record.guidance, controller=controller,
           callback=lambda i, x: seen.append(x.clone()), disable=True)
    for x in seen:
        for row, mask in ((1, masks[0]), (2, masks[1])):
            differs = (x[row] - x[0]).abs().amax(0)
            assert torch.all(differs[mask == 0] == 0)
            assert differs[mask == 1].max() > 0


def test_a_mask_per_target_must_match_the_targets(tiny_model, cat_record):
    side = tiny_model.resolution // tiny_model.vae_scale_factor
    config = P2PConfig(edit="replace", blend=BlendConfig(mask=torch.ones(3, side, side)))
    controller = PromptToPrompt(cat_record.prompt, ["a tiger sitting on a mirror"], tiny_model.tokenizer, 4, config)
    with pytest.raises(ValueError, match="3 blend masks for 1 target"):
        controller.blend_mask(torch.zeros(2, 4, side, side))
    with pytest.raises(ValueError, match="shape"):
        BlendConfig(mask=torch.ones(side))


def test_run_edit_writes_the_mask_and_the_mask_file_gives_the_same_edit(default_model, tmp_path):
    pair = edit_pairs(1234, 3, size=64, turned_prob=0.5)[2]
    options = dict(source_prompt=pair["caption"], target_prompts=(pair["edited_caption"],), inversion="direct",
                   steps=10, quiet=True)
    auto = run_edit(default_model, pair["image"], EditRequest(**options, mask="auto"), tmp_path / "auto")
    assert auto["outputs"]["mask"] == ["mask.png"]
    share = auto["auto_mask_share"][0]
    assert 0 < share < 0.5
    written = tmp_path / "auto" / "mask.png"
    side = default_model.resolution // default_model.vae_scale_factor
    read_back = load_mask(str(written), EditRequest(**options).crop, default_model)
    assert read_back.shape == (side, side) and float(read_back.mean()) == pytest.approx(share, abs=1e-4)
    # the plain path: the written picture given back as a mask file edits the same pixels
    given = run_edit(default_model, pair["image"], EditRequest(**options, mask=str(written)), tmp_path / "file")
    assert "mask" not in given["outputs"]
    assert np.array_equal(read_image(tmp_path / "auto" / "edit.png"), read_image(tmp_path / "file" / "edit.png"))
    # and the mask changed the edit: without it the shape's surroundings move too
    plain = run_edit(default_model, pair["image"], EditRequest(**options), tmp_path / "plain")
    assert not np.array_equal(read_image(tmp_path / "plain" / "edit.png"), read_image(tmp_path / "auto" / "edit.png"))


def test_auto_is_not_a_file_and_applies_to_p2p_only():
    request = EditRequest(source_prompt="a red square on gray", target_prompts=("a blue square on gray",),
                          mask="auto")
    assert request.mask_file is None and "auto" not in request_inputs(request)
    assert EditRequest(source_prompt="a", target_prompts=("b",), mask="m.png").mask_file == "m.png"
    with pytest.raises(UserError, match="--method p2p"):
        EditRequest(source_prompt="a red square on gray", target_prompts=("a blue square on gray",),
                    method="null-finetune", mask="auto")
