"""--depth: inverting a photo only part of the way (the last depth * steps DDIM steps) and editing from there."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from editing.cli import run_main
from editing.core.ddim import DDIMSchedule, run_steps
from editing.core.errors import UserError
from editing.core.image_io import load_image
from editing.core.metrics import psnr
from editing.inversion_cache import inversion_key
from editing.extent import GLOBAL_SHARE, LOCAL_DEPTH, depth_for
from editing.methods import edit, inversion_config
from editing.p2p import edit_p2p
from editing.request import AUTO_DEPTH, EditRequest
from editing import batch as batch_module, run as run_module
from inversion.invert import InversionConfig, invert, reconstruct, source_conditioning
from inversion.null_text import NullTextConfig
from inversion.record import Inversion
from toyworld.checker import read_scene

STEPS = 10
SOURCE = "a cat sitting on a mirror"
TARGET = "a dog sitting on a mirror"


@pytest.fixture
def cat(session_photos):
    return session_photos[0]  # chelsea at the tiny model's 64 px (conftest); never modified here


def test_run_steps_counts_the_steps_of_a_depth():
    assert run_steps(50, 1.0) == 50
    assert run_steps(50, 0.6) == 30
    assert run_steps(10, 0.01) == 1  # never no step at all
    for bad in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="depth"):
            run_steps(50, bad)


def test_a_partial_schedule_is_the_least_noisy_end_of_the_full_one(tiny_model):
    full = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS)
    half = DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS, 0.5)
    assert half.timesteps == full.timesteps[-5:]
    assert half.stride == full.stride  # the same steps, not a coarser schedule of 5


def test_a_partial_inversion_is_the_start_of_the_full_one(tiny_model, cat):
    def trajectory(depth):
        config = InversionConfig(method="ddim", steps=STEPS, depth=depth, keep_trajectory=True)
        return invert(tiny_model, cat[None], [SOURCE], config, disable=True)[0]

    full, half = trajectory(1.0), trajectory(0.5)
    assert (full.steps, half.steps, half.depth) == (STEPS, 5, 0.5)
    assert len(half.trajectory) == 6
    torch.testing.assert_close(half.trajectory, full.trajectory[:6])  # DDIM inversion climbs from x_0
    torch.testing.assert_close(half.x_T, full.trajectory[5])


def test_full_depth_keeps_the_fingerprints_of_earlier_records(tiny_model, cat):
    assert "depth" not in InversionConfig(method="direct").params()
    assert InversionConfig(method="direct", depth=0.6).params()["depth"] == 0.6
    keys = {inversion_key(tiny_model, cat, SOURCE, InversionConfig(method="direct", depth=d)) for d in (1.0, 0.6, 0.5)}
    assert len(keys) == 3  # a cached record of one depth is never handed out for another
    with pytest.raises(UserError, match="depth"):
        InversionConfig(depth=0.0)


def test_direct_at_partial_depth_reconstructs_the_vae_round_trip(tiny_model, cat):
    record = invert(tiny_model, cat[None], [SOURCE], InversionConfig(method="direct", steps=STEPS, depth=0.4),
                    disable=True)[0]
    assert record.steps == 4 and len(record.offsets) == 4
    vae = tiny_model.decode_latents(tiny_model.encode_images(cat[None]))[0]
    assert psnr(reconstruct(tiny_model, [record])[0], vae) > 40  # held on its own trajectory, step for step
    result = edit_p2p(tiny_model, record, [TARGET], disable=True)
    assert psnr(result.reconstruction, vae) > 40


def test_null_text_at_partial_depth_saves_and_samples_its_own_schedule(tiny_model, cat, tmp_path):
    config = InversionConfig(method="null-text", steps=STEPS, depth=0.3, null_text=NullTextConfig(inner_steps=2))
    record = invert(tiny_model, cat[None], [SOURCE], config, disable=True)[0]
    assert record.steps == 3 and len(record.nulls) == 3
    loaded = Inversion.load(record.save(tmp_path / "cat.safetensors"))
    assert (loaded.steps, loaded.depth, loaded.fingerprint) == (3, 0.3, record.fingerprint)
    conditioning, schedule = source_conditioning(tiny_model, [loaded])
    assert schedule.timesteps == DDIMSchedule.from_scheduler(tiny_model.scheduler, STEPS).timesteps[-3:]
    assert len(conditioning.uncond) == 3
    deeper = invert(tiny_model, cat[None], [SOURCE], InversionConfig(method="null-text", steps=STEPS, depth=0.5,
                                                                     null_text=NullTextConfig(inner_steps=1)),
                    disable=True)[0]
    with pytest.raises(UserError, match="depths"):
        source_conditioning(tiny_model, [loaded, deeper])


def test_a_shallower_edit_stays_nearer_the_photo(tiny_model, cat):
    def edit(depth):
        record = invert(tiny_model, cat[None], [SOURCE], InversionConfig(method="direct", steps=STEPS, depth=depth),
                        disable=True)[0]
        result = edit_p2p(tiny_model, record, [TARGET], disable=True)
        return psnr(result.edits[0], result.reconstruction)

    shallow, full = edit(0.2), edit(1.0)
    assert shallow > full + 1  # two low-noise steps change the photo less than the whole run


@pytest.mark.parametrize("changes, message", [
    ({"depth": 0}, "more than 0"),
    ({"depth": 1.5}, "between 0 and 1"),
    ({"depth": "nan"}, "finite"),
    ({"depth": 0.5, "method": "imagic"}, "applies to --method p2p"),
    ({"depth": 0.5, "inversion_file": "cat.safetensors"}, "keeps the depth"),
])
def test_bad_depths_are_refused_naming_the_option(changes, message):
    with pytest.raises(UserError, match=message):
        EditRequest(source_prompt=SOURCE, target_prompts=[TARGET], **changes)


def test_the_command_line_edits_from_part_of_the_way(tmp_path):
    photo = Path(__file__).resolve().parents[1] / "examples" / "toy-red-circle.png"
    out = tmp_path / "out"
    argv = ["--image", photo, "--source-prompt", "a red circle on a gray background", "--target-prompt",
            "a blue circle on a gray background", "--inversion", "direct", "--steps", "10", "--depth", "0.6",
            "--quiet", "--out", out]
    assert run_main(run_module.main, [str(a) for a in argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["depth"]) == (6, 0.6)
    assert summary["reconstruction_psnr_db"] > 25
    shapes = read_scene(load_image(out / "edit.png", 64))["shapes"]
    assert [(s["colour"], s["shape"]) for s in shapes] == [("blue", "circle")]


def test_auto_depth_inverts_local_edits_part_of_the_way_and_whole_picture_edits_fully():
    masks = torch.zeros(2, 8, 8)
    masks[0, :3] = 1  # 3/8 of the picture
    assert depth_for(masks[:1]) == LOCAL_DEPTH
    masks[1] = 1  # a second target that changes the whole picture: the one inversion they share goes all the way
    assert depth_for(masks) == 1.0
    assert depth_for(torch.zeros(1, 8, 8)) == LOCAL_DEPTH  # a target that changes nothing is local
    assert EditRequest(source_prompt=SOURCE, target_prompts=[TARGET], depth=" Auto").depth == AUTO_DEPTH
    with pytest.raises(ValueError, match="chosen per edit"):
        inversion_config(EditRequest(source_prompt=SOURCE, target_prompts=[TARGET], depth="auto"))


@pytest.mark.parametrize("target, depth", [("a blue circle on a gray background", LOCAL_DEPTH),
                                           ("a red circle on a checkered background", 1.0)])
def test_auto_depth_follows_the_edit_s_extent_on_the_toy_world(default_model, target, depth):
    photo = load_image(Path(__file__).resolve().parents[1] / "examples" / "toy-red-circle.png", 64)
    request = EditRequest(source_prompt="a red circle on a gray background", target_prompts=[target],
                          inversion="direct", steps=10, depth="auto", quiet=True)
    output = edit(default_model, photo, request)
    assert output.summary.get("depth", 1.0) == depth
    assert output.summary["steps"] == round(10 * depth)
    share = output.summary["auto_mask_share"][0]
    assert (share > GLOBAL_SHARE) == (depth == 1.0)
    assert not output.masks  # the mask chose the depth; it blends nothing without --mask auto


def test_a_batch_at_auto_depth_charges_the_inversion_to_its_edit(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "examples" / "toy-red-circle.png", photos / "circle.png")
    argv = ["--images", photos, "--source-prompt", "a red circle on a gray background", "--target-prompt",
            "a blue circle on a gray background", "--inversion", "direct", "--depth", "auto", "--steps", "4",
            "--quiet", "--out", out]
    assert run_main(batch_module.main, [str(a) for a in argv]) == 0
    entry, = json.loads((out / "report.json").read_text())["images"]
    assert entry["status"] == "done" and entry["inversion"] == "computed" and entry["timings_s"]["inversion"] > 0
    assert json.loads((out / "circle" / "summary.json").read_text())["depth"] == LOCAL_DEPTH
    assert len(list((out / ".cache" / "inversions").glob("*.safetensors"))) == 1
