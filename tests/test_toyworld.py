"""Tests for the toy world (renderer, captions, edited twins) and its checker."""

import json

import numpy as np
import pytest

from toyworld import checker, world
from toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    Shape,
    caption,
    centroid,
    dataset,
    edit_scene,
    edited_twins,
    lookalikes,
    parse_caption,
    random_edit,
    random_scene,
    render,
    shape_coverage,
)


def _scenes(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **kw) for _ in range(n)]


# ---------------------------------------------------------------- world ---

def test_palette_is_well_separated():
    cols = np.array(list(COLOURS.values()), float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert len(COLOURS) >= 6
    assert d[~np.eye(len(cols), dtype=bool)].min() > 75
    assert set(SHAPES) == {"circle", "square", "triangle"}
    assert set(world.TEXTURES) <= set(BACKGROUNDS)
    assert set(world.PLAIN_BACKGROUNDS) <= set(BACKGROUNDS)
    assert world.TEXTURES
    # Every shape colour is far from every background model it may sit on.
    for bg, phrase in BACKGROUNDS.items():
        assert phrase
        a, b = world.TEXTURES.get(bg, (world.PLAIN_BACKGROUNDS.get(bg),) * 2)
        for name, c in COLOURS.items():
            if name == bg:
                continue
            dist, _ = checker._segment_distance(np.array(c, np.float32),
                                                np.array(a, np.float32), np.array(b, np.float32))
            assert float(dist) > 75, (name, bg)


def test_dataset_is_deterministic():
    a = dataset(7, 12, two_shapes_prob=0.5)
    b = dataset(7, 12, two_shapes_prob=0.5)
    c = dataset(8, 12, two_shapes_prob=0.5)
    for (sa, ia, ca), (sb, ib, cb) in zip(a, b):
        assert sa == sb and ca == cb
        assert ia.tobytes() == ib.tobytes()
    assert any(ia.tobytes() != ic.tobytes() for (_, ia, _), (_, ic, _) in zip(a, c))
    assert [s for s, _, _ in a] != [s for s, _, _ in c]


@pytest.mark.parametrize("size", [64, 128, 256])
def test_render_sizes_and_antialiasing(size):
    sc = Scene((Shape("circle", "red", 14.0, 30.3, 33.7),), "gray")
    img = render(sc, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert render(sc, size).tobytes() == img.tobytes()
    values = {tuple(p) for p in img.reshape(-1, 3)}
    assert (128, 128, 128) in values and COLOURS["red"] in values
    assert len(values) > 2  # antialiased edge pixels
    cov = shape_coverage(sc, 0, size)
    assert abs(cov.sum() / size**2 * 64**2 - sc.shapes[0].area) < 0.01 * sc.shapes[0].area


def test_windowed_render_matches_full_grid_reference():
    for size in (64, 128):
        for sc in _scenes(12, 20, two_shapes_prob=0.5):
            X, Y = world._grid(size)
            ref = world._background_ss(sc.background, X, Y)
            for sh in sc.shapes:
                ref[world._shape_mask_ss(sh, X, Y)] = COLOURS[sh.colour]
            assert np.array_equal(render(sc, size), world._downsample(ref))


def test_render_resolution_consistent():
    import cv2

    for sc in _scenes(3, 6, two_shapes_prob=0.5):
        small = render(sc, 64).astype(int)
        big = cv2.resize(render(sc, 256), (64, 64), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(small - big).mean() < 1.0


def test_scene_geometry_and_validation():
    for sc in _scenes(11, 300, two_shapes_prob=0.5):
        assert sc.background in BACKGROUNDS
        for i, sh in enumerate(sc.shapes):
            assert sh.colour != sc.background
            cov = shape_coverage(sc, i, 64)
            assert cov.sum() > 50
            # Inside the image, with a clear border ring.
            assert cov[:2].max() == 0 and cov[-2:].max() == 0
            assert cov[:, :2].max() == 0 and cov[:, -2:].max() == 0
            # Any kind at this size/position fits too (kind edits stay inside).
            assert world.MARGIN <= sh.x - sh.extent and sh.x + sh.extent <= 64 - world.MARGIN
            assert world.MARGIN <= sh.y - sh.extent and sh.y + sh.extent <= 64 - world.MARGIN
        if len(sc.shapes) == 2:
            a, b = (shape_coverage(sc, i, 64) for i in (0, 1))
            assert (a * b).max() == 0  # no overlap
            assert sc.shapes[0].colour != sc.shapes[1].colour
            areas = sorted(s.area for s in sc.shapes)
            assert areas[1] >= world.MAIN_AREA_RATIO * areas[0]
    with pytest.raises(ValueError):
        Scene((Shape("circle", "white", 10, 32, 32),), "white")
    with pytest.raises(ValueError):
        Shape("hexagon", "red", 10, 32, 32)
    with pytest.raises(ValueError):
        Scene((), "plaid")


def test_serialisation_roundtrip():
    for sc in _scenes(5, 20, two_shapes_prob=0.5):
        d = json.loads(json.dumps(sc.to_dict()))
        assert Scene.from_dict(d) == sc
        assert Shape.from_dict(sc.shapes[0].to_dict()) == sc.shapes[0]


def test_captions():
    sc = Scene((Shape("circle", "red", 12, 32, 32),), "blue" if "blue" in BACKGROUNDS else "gray")
    assert caption(sc) == f"a red circle on a {BACKGROUNDS[sc.background]} background"
    assert caption(Scene((Shape("triangle", "green", 12, 32, 32),), "stripes")) == \
        "a green triangle on a striped background"
    two = Scene((Shape("circle", "orange", 9, 16, 16), Shape("square", "blue", 8, 48, 48)),
                "checkerboard")
    assert caption(two) == "an orange circle and a blue square on a checkered background"
    for sc in _scenes(9, 200, two_shapes_prob=0.5):
        parsed = parse_caption(caption(sc))
        assert parsed["background"] == sc.background
        assert parsed["shapes"] == [(s.colour, s.kind) for s in sc.shapes]


# ------------------------------------------------------------- twins ---

def test_edited_twins_change_only_the_edited_attribute():
    rng = np.random.default_rng(21)
    seen = set()
    for sc in _scenes(13, 150, two_shapes_prob=0.3):
        idx = sc.main_index
        attr, value = random_edit(rng, sc, index=idx)
        seen.add(attr)
        ed = edit_scene(sc, attr, value, index=idx)
        # Same layout.
        assert [(s.x, s.y, s.size) for s in ed.shapes] == [(s.x, s.y, s.size) for s in sc.shapes]
        a, b = render(sc), render(ed)
        cov = shape_coverage(sc, idx)
        if attr == "colour":
            assert value != sc.shapes[idx].colour and value != sc.background
            assert ed.shapes[idx].colour == value and ed.shapes[idx].kind == sc.shapes[idx].kind
            assert ed.background == sc.background
            assert np.array_equal(a[cov == 0], b[cov == 0])
            assert not np.array_equal(a[cov == 1], b[cov == 1])
        elif attr == "background":
            assert value != sc.background and value not in {s.colour for s in sc.shapes}
            assert ed.shapes == sc.shapes
            covs = sum(shape_coverage(sc, i) for i in range(len(sc.shapes)))
            assert np.array_equal(a[covs == 1], b[covs == 1])
            assert not np.array_equal(a[covs == 0], b[covs == 0])
        else:
            assert value != sc.shapes[idx].kind and value in SHAPES
            assert ed.shapes[idx].colour == sc.shapes[idx].colour
            union = np.maximum(cov, shape_coverage(ed, idx))
            assert np.array_equal(a[union == 0], b[union == 0])
            assert not np.array_equal(a, b)
        for i, s in enumerate(sc.shapes):  # untouched shapes stay identical
            if i != idx:
                assert ed.shapes[i] == s
    assert seen == {"colour", "shape", "background"}
    with pytest.raises(ValueError):
        edit_scene(Scene((Shape("circle", "white", 10, 32, 32),), "gray"), "background", "white")
    with pytest.raises(ValueError):
        edit_scene(Scene((Shape("circle", "red", 10, 32, 32),), "white"), "colour", "white")
    with pytest.raises(ValueError):
        edit_scene(Scene((Shape("circle", "red", 10, 32, 32),), "gray"), "size", "big")


def test_edit_pairs_deterministic():
    a = world.edit_pairs(4, 5)
    b = world.edit_pairs(4, 5)
    for x, y in zip(a, b):
        assert x["edited_scene"] == y["edited_scene"]
        assert x["edited_image"].tobytes() == y["edited_image"].tobytes()
        assert x["edited_caption"] == caption(x["edited_scene"])


# ----------------------------------------------------------- checker ---

ATTRS = ("background", "colour", "shape")


def _accuracy_figures(n=500, seed=2024):
    data = dataset(seed, n)
    scenes = [sc for sc, _, _ in data]
    rng = np.random.default_rng(seed + 1)
    clean = checker.accuracy([img for _, img, _ in data], scenes)
    noisy = checker.accuracy([checker.degrade(img, rng, noise=8.0, blur=0.7)
                              for _, img, _ in data], scenes)
    return clean, noisy


def test_checker_accuracy_clean_and_noisy():
    clean, noisy = _accuracy_figures()
    print("\nchecker accuracy, 500 single-shape 64 px scenes")
    print("  clean:             " + "  ".join(f"{k}={clean[k]:.3f}" for k in ATTRS))
    print("  blur 0.7 + noise 8: " + "  ".join(f"{k}={noisy[k]:.3f}" for k in ATTRS))
    for k in ATTRS:
        assert clean[k] >= 0.98, (k, clean)
        assert noisy[k] >= 0.95, (k, noisy)


def test_checker_two_shapes_and_other_sizes():
    data = dataset(31, 60, two_shapes_prob=1.0)
    hits = 0
    for sc, img, _ in data:
        r = checker.read_scene(img)
        hits += sorted((s["colour"], s["shape"]) for s in r["shapes"]) == \
            sorted((s.colour, s.kind) for s in sc.shapes)
        assert all(checker.check(r, sc).values())
    assert hits >= 57
    for size in (128, 256):
        for sc, img, _ in dataset(32, 8, size=size):
            assert all(checker.check(img, sc).values())


def test_checker_unreadable_and_inputs():
    blank = np.full((64, 64, 3), 128, np.uint8)
    r = checker.read_scene(blank)
    assert r["background"] == "gray" and r["colour"] is None and r["shape"] is None
    assert r["shapes"] == []
    sc = Scene((Shape("square", "yellow", 13, 30, 34),), "checkerboard")
    img = render(sc)
    assert checker.check(img.astype(np.float32) / 255.0, sc) == \
        {"background": True, "colour": True, "shape": True}
    assert checker.check(img, {"colour": "red"}) == {"colour": False}
    acc = checker.accuracy([img, blank], [sc, sc])
    assert acc["background"] == 0.5 and acc["shape"] == 0.5 and acc["n"] == 2
    with pytest.raises(ValueError):
        checker.read_scene(np.zeros((64, 64), np.uint8))


def test_checker_sees_edits():
    rng = np.random.default_rng(3)
    for sc in _scenes(17, 40):
        attr, value = random_edit(rng, sc)
        ed = edit_scene(sc, attr, value)
        res_src = checker.check(render(ed), sc)
        res_ed = checker.check(render(ed), ed)
        assert all(res_ed.values())
        assert res_src[{"colour": "colour", "shape": "shape", "background": "background"}[attr]] \
            is False


# ------------------------------------------------------ trainer options ---

def test_train_init_from_arguments(tmp_path):
    """--init-from: continuation settings (the training itself is checked by the smoke run in TRAINING.md)."""
    import torch

    from toyworld import train

    _, cfg = train.parse_args(["--out", str(tmp_path / "o")])
    assert cfg.init_from is None and cfg.vae_steps == train.Config().vae_steps
    _, cfg = train.parse_args(["--out", str(tmp_path / "o"), "--init-from", "toyworld/model", "--unet-steps", "5"])
    assert cfg.init_from.endswith("toyworld/model") and cfg.vae_steps == 0 and cfg.unet_steps == 5
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tmp_path / "o"), "--init-from", str(tmp_path)])  # no unet/


def test_latent_size_32_builds_a_factor_2_vae_and_a_unet_with_attention_at_32x32(tmp_path, capsys):
    import torch
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR
    from toyworld import train

    out = ["--out", str(tmp_path / "o")]
    _, cfg = train.parse_args(out + ["--latent-size", "32"])
    assert train.vae_factor(cfg) == 2 and cfg.to_json()["unet_attention"] == [True, True, True, False]
    vae, _, unet = train.build_components(cfg, CLIPTokenizer.from_pretrained(TOKENIZER_DIR))
    with torch.no_grad():
        latent = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert latent.shape == (1, 4, 32, 32)
        assert unet(latent, 10, encoder_hidden_states=torch.zeros(1, 77, cfg.text_hidden)).sample.shape == latent.shape
    assert [type(b).__name__ for b in unet.down_blocks][:3] == ["CrossAttnDownBlock2D"] * 3
    _, default = train.parse_args(out)
    assert train.vae_factor(default) == 4 and default.unet_attention == (True, True, False)
    for bad, said in ((["--latent-size", "32", "--init-from", "toyworld/model"], "parent's architecture"),
                      (["--latent-size", "32", "--attention-loss", "1"], "16x16 region maps"),
                      (["--latent-size", "24"], "invalid choice")):
        with pytest.raises(SystemExit):
            train.parse_args(out + bad)
        assert said in capsys.readouterr().err


def test_train_recipe_options_reach_the_config_and_the_training_set(tmp_path, capsys):
    from toyworld import train

    out = ["--out", str(tmp_path / "o")]
    _, cfg = train.parse_args(out)
    assert (cfg.two_shapes_prob, cfg.turned_prob, cfg.caption_dropout, cfg.device) == (0.1, 0.0, 0.1, "cpu")
    _, cfg = train.parse_args(out + ["--two-shapes-prob", "0.5", "--turned-prob", "0.4", "--caption-dropout", "0.2"])
    assert (cfg.two_shapes_prob, cfg.turned_prob, cfg.caption_dropout) == (0.5, 0.4, 0.2)
    assert cfg.to_json()["turned_prob"] == 0.4  # what training.json records
    data = train.render_set(0, 200, cfg.two_shapes_prob, "render", True, cfg.turned_prob)
    turned = [s.angle != 0 for sc in data.scenes for s in sc.shapes]
    two = [len(sc.shapes) == 2 for sc in data.scenes]
    assert 0.3 < np.mean(turned) < 0.5 and 0.4 < np.mean(two) < 0.6
    assert data.images.shape == (200, 64, 64, 3) and data.captions[0] == caption(data.scenes[0])
    for bad in (["--turned-prob", "1.5"], ["--caption-dropout", "-0.1"], ["--two-shapes-prob", "2"],
                ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            train.parse_args(out + bad)
        assert bad[0] in capsys.readouterr().err


def test_timestep_shift_moves_each_draw_to_a_quarter_of_its_snr_and_one_keeps_it():
    import torch

    from editing.core.model import ddim_scheduler
    from toyworld import train

    ab = ddim_scheduler().alphas_cumprod.float()
    snr = ab / (1 - ab)
    T = len(ab)
    every = torch.arange(T)
    assert torch.equal(train.timestep_table(ab, 1.0), every)  # no shift: every t is itself
    table = train.timestep_table(ab, 4.0)
    assert (table >= every).all() and (table[1:] >= table[:-1]).all()  # more noise, order kept
    inside = table < T - 1  # where the schedule reaches SNR / 4: the first t at or below it, not one step later
    assert inside[: T // 2].all() and not inside[-1]
    ratio = snr[table[inside]] / snr[inside]
    assert (ratio <= 0.25 + 1e-6).all() and (snr[table[inside] - 1] / snr[inside] > 0.25).all()
    assert table[0] > 0 and table.float().mean() > 1.3 * every.float().mean()


def test_text_encoder_from_starts_a_new_run_with_a_saved_model_s_text_encoder(tmp_path, capsys):
    import torch
    from transformers import CLIPTokenizer

    from editing.core.loading import load_model
    from editing.core.model import TOKENIZER_DIR
    from toyworld import train

    out = ["--out", str(tmp_path / "o")]
    _, cfg = train.parse_args(out + ["--latent-size", "32", "--text-encoder-from", "toyworld/model",
                                     "--timestep-shift", "4"])
    assert cfg.text_encoder_from.endswith("toyworld/model") and cfg.timestep_shift == 4.0
    assert cfg.unet_lr == train.Config().unet_lr  # the default, and the option sets it
    assert train.parse_args(out + ["--unet-lr", "2e-3"])[1].unet_lr == 2e-3
    assert cfg.to_json()["text_encoder_from"] == cfg.text_encoder_from  # what training.json records
    _, text_encoder, _ = train.build_components(cfg, CLIPTokenizer.from_pretrained(TOKENIZER_DIR))
    ids = train.tokenize(CLIPTokenizer.from_pretrained(TOKENIZER_DIR), ["a red circle on a gray background"])
    random_out = text_encoder(ids)[0].detach()
    train.load_text_encoder(text_encoder, cfg.text_encoder_from)
    donor = load_model("toyworld/model", device="cpu", dtype="fp32").text_encoder
    with torch.no_grad():
        assert torch.allclose(text_encoder(ids)[0], donor(ids)[0], atol=1e-5)
        assert not torch.allclose(text_encoder(ids)[0], random_out, atol=1e-3)
    narrow = train.Config(text_hidden=32, text_heads=2)
    _, narrow_encoder, _ = train.build_components(narrow, CLIPTokenizer.from_pretrained(TOKENIZER_DIR))
    with pytest.raises(ValueError, match="does not fit"):
        train.load_text_encoder(narrow_encoder, cfg.text_encoder_from)
    for bad, said in ((["--text-encoder-from", str(tmp_path)], "no text_encoder/"),
                      (["--text-encoder-from", "toyworld/model", "--init-from", "toyworld/model"], "from scratch"),
                      (["--timestep-shift", "0.5"], ">= 1"), (["--timestep-shift", "nan"], ">= 1"),
                      (["--unet-lr", "0"], "between 0 and 1"), (["--unet-lr", "nan"], "between 0 and 1")):
        with pytest.raises(SystemExit):
            train.parse_args(out + bad)
        assert said in capsys.readouterr().err


def test_trainer_decays_only_matrices_and_uses_diffusers_schedule_and_ema():
    import torch

    from toyworld import train

    m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))
    groups = train.decay_groups(list(m.parameters()), 0.01)
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(3, 2)] and groups[0]["weight_decay"] == 0.01
    assert sorted(p.ndim for p in groups[1]["params"]) == [1, 1, 1] and groups[1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups, lr=1.0)
    sched = train.warmup_cosine(opt, total=100, warmup_frac=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[5] < lrs[10] == pytest.approx(1.0)  # linear warm-up to the peak at step 10
    assert lrs[55] == pytest.approx(0.5, abs=1e-6) and lrs[-1] < 1e-3  # cosine: half-way, then towards 0
    # from scratch the decay warms up; a continuation's EMA runs at full decay from its loaded weights
    params = list(m.parameters())
    assert train.make_ema(params, 0.999).get_decay(3) == pytest.approx(3 / 12)
    continued = train.make_ema(params, 0.999, warmup=False)
    assert continued.get_decay(3) == continued.get_decay(10_000) == 0.999
    start = m[0].weight.detach().clone()
    continued.step(params)  # the first step copies
    with torch.no_grad():
        m[0].weight.add_(1.0)
    continued.step(params)
    assert torch.allclose(continued.shadow_params[0], start + 0.001, atol=1e-6)


def test_trainer_runs_two_unet_steps_with_min_snr_weights():
    import torch
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR, ddim_scheduler
    from toyworld import train

    torch.manual_seed(0)
    cfg = train.Config(unet_steps=2, unet_batch=2)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    _, text_encoder, unet = train.build_components(cfg, tokenizer)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    latents = torch.randn(4, 4, 16, 16)
    ids = train.tokenize(tokenizer, ["a red circle on a gray background"] * 4)
    stats = train.train_unet(unet, text_encoder, latents, ids, train.tokenize(tokenizer, [""])[0], ddim_scheduler(),
                             cfg, torch.Generator().manual_seed(0), disable=True)
    assert np.isfinite(stats["eps_mse"])
    changed = [n for n, p in unet.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(torch.isfinite(p).all() for p in unet.parameters())


def test_bf16_autocast_trains_the_same_steps_in_fp32_weights_rounded_differently():
    """--mixed-precision bf16 changes only the forward passes' precision: the weights, the optimiser and the
    loss stay fp32, the same samples are drawn, and the trained weights land near the fp32 run's."""
    import dataclasses

    import torch

    from editing.core.model import ddim_scheduler
    from toyworld import train

    cfg, _, text_encoder, unet, data = _tiny_unet_stage(0)
    start = _weights(unet, text_encoder)
    plain = train.train_unet(unet, text_encoder, *data, ddim_scheduler(), cfg, torch.Generator().manual_seed(0), True)
    fp32 = _weights(unet, text_encoder)
    cfg, _, text_encoder, unet, data = _tiny_unet_stage(0)
    assert _weights(unet, text_encoder).keys() == start.keys()
    bf16_cfg = dataclasses.replace(cfg, mixed_precision="bf16")
    mixed = train.train_unet(unet, text_encoder, *data, ddim_scheduler(), bf16_cfg, torch.Generator().manual_seed(0),
                             True)
    bf16 = _weights(unet, text_encoder)
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert np.isfinite(mixed["eps_mse"]) and abs(mixed["eps_mse"] - plain["eps_mse"]) < 0.05 * plain["eps_mse"]
    moved = sum(float((fp32[k] - start[k]).abs().sum()) for k in fp32)
    apart = sum(float((bf16[k] - fp32[k]).abs().sum()) for k in fp32)
    assert 0 < apart < 0.2 * moved  # rounded differently, but the same descent
    assert train.parse_args(["--out", "x", "--mixed-precision", "bf16"])[1].mixed_precision == "bf16"
    assert train.parse_args(["--out", "x"])[1].mixed_precision == "no"


# ------------------------------------------------------- turned shapes ---

def _digest(pairs_or_data) -> str:
    import hashlib

    h = hashlib.sha256()
    for item in pairs_or_data:
        if isinstance(item, dict):
            h.update(item["image"].tobytes() + item["edited_image"].tobytes() + item["edited_caption"].encode())
        else:
            h.update(item[1].tobytes() + item[2].encode())
    return h.hexdigest()[:16]


def test_scenes_without_turns_are_the_seeded_sequences_from_before_angles():
    # digests written by the world before shapes could turn (commit 7ccf70d): the benchmarks' seeded scenes
    # (quality suite seed 1234) and the training sets must not move when the angle option is off
    assert _digest(dataset(7, 60, two_shapes_prob=0.5)) == "bc420512407a85d5"
    assert _digest(world.edit_pairs(1234, 40)) == "f7fd3bad41798a80"
    assert _digest(world.edit_pairs(1234, 40, turned_prob=0.0)) == "f7fd3bad41798a80"
    assert all(s.angle == 0.0 for sc, _, _ in dataset(7, 60, two_shapes_prob=0.5) for s in sc.shapes)


def test_a_turned_shape_is_the_upright_one_rotated_about_its_centre():
    upright = Scene((Shape("square", "red", 12, 32, 32),), "gray")
    quarter = Scene((Shape("square", "red", 12, 32, 32, angle=90.0),), "gray")
    assert np.array_equal(render(upright), render(quarter))  # a square's quarter turn about a pixel corner
    for kind in ("square", "triangle"):
        area = Shape(kind, "red", 12, 32, 32).area
        for angle in (17.0, 45.0, 100.0, 250.0):
            cov = shape_coverage(Scene((Shape(kind, "red", 12, 32, 32, angle),), "gray"))
            assert abs(cov.sum() - area) < 0.015 * area, (kind, angle, cov.sum(), area)
    # 45 degrees puts the square's corner on the axis: it reaches 0.9 * sqrt(2) * 12 = 15.3 px to the right
    turned = shape_coverage(Scene((Shape("square", "red", 12, 32, 32, 45.0),), "gray"))
    assert turned[32, 32 + 14] > 0.5 and turned[32, 32 + 16] == 0 and turned[32 - 12, 32 + 12] == 0
    # clockwise on screen (y down): a triangle's apex, above the centre upright, is to the right at 90 degrees
    tri = shape_coverage(Scene((Shape("triangle", "red", 12, 32, 32, 90.0),), "gray"))
    cols = np.nonzero(tri.sum(axis=0))[0]
    apex_side = tri[:, cols.max()].sum() < tri[:, cols.min()].sum()  # the apex column is thin, the base full
    assert apex_side


def test_lookalikes_render_the_same_picture_and_their_twins_differ():
    """A square turned by 10 degrees is the picture of one turned by 100; a triangle turned about its bounding
    box's centre is the picture of one turned a third more about another point; a circle has every angle.
    The pictures agree to the byte, the twins of an edit of kind do not."""
    rng = np.random.default_rng(5)
    for sc in _scenes(5, 60, two_shapes_prob=0.3, turned_prob=0.5):
        i = sc.main_index
        looks = lookalikes(sc.shapes[i])
        assert looks[0] == sc.shapes[i]
        assert len(looks) == {"circle": 360, "square": 4, "triangle": 3}[sc.shapes[i].kind]
        assert {tuple(np.round(centroid(s), 9)) for s in looks} == {tuple(np.round(centroid(sc.shapes[i]), 9))}
        for look in looks[:: max(1, len(looks) // 12)]:
            other = Scene(tuple(look if j == i else s for j, s in enumerate(sc.shapes)), sc.background)
            for size in (64, 128):
                assert render(other, size).tobytes() == render(sc, size).tobytes()
        kind = rng.choice([k for k in SHAPES if k != sc.shapes[i].kind])
        twins = edited_twins(sc, "shape", kind, index=i)
        upright = sc.shapes[i].kind != "circle" and sc.shapes[i].angle == 0  # drawn upright: one twin
        assert twins[0] == edit_scene(sc, "shape", kind, index=i) and len(twins) == (1 if upright else len(looks))
        assert all(t.shapes[i].kind == kind and t.background == sc.background for t in twins)
        assert edited_twins(sc, "background", world.valid_edit_values(sc, "background")[0], i) == \
            [edit_scene(sc, "background", world.valid_edit_values(sc, "background")[0], i)]
    # a turned square made a triangle: its four twins point four ways; their read centres lie 15 px apart
    sq = Scene((Shape("square", "red", 14, 32, 32, angle=30.0),), "gray")
    centres = [checker.read_scene(render(t))["shapes"][0] for t in edited_twins(sq, "shape", "triangle")]
    spread = max(np.hypot(a["x"] - b["x"], a["y"] - b["y"]) for a in centres for b in centres)
    assert spread > 5 * 3.0  # five times the quality suite's layout tolerance
    # the triangle's centroid is a sixth of its height below its upright bounding box's centre
    tri = Shape("triangle", "red", 12, 32, 32)
    assert centroid(tri) == pytest.approx((32.0, 32.0 + 2.16 * 12 * np.sqrt(3) / 12))
    cov = shape_coverage(Scene((Shape("triangle", "red", 12, 30, 33, angle=77.0),), "gray"), size=256)
    ys, xs = np.mgrid[0:256, 0:256]
    got = ((xs + 0.5) * cov).sum() / cov.sum() / 4, ((ys + 0.5) * cov).sum() / cov.sum() / 4
    assert got == pytest.approx(centroid(Shape("triangle", "red", 12, 30, 33, angle=77.0)), abs=0.05)


def test_turned_scenes_stay_inside_the_image_and_apart_and_edits_keep_the_angle():
    rng = np.random.default_rng(11)
    for _ in range(200):
        sc = random_scene(rng, two_shapes_prob=0.5, turned_prob=1.0)
        covs = [shape_coverage(sc, i) for i in range(len(sc.shapes))]
        for s, cov in zip(sc.shapes, covs):
            assert s.angle != 0.0 and 0.0 <= s.angle < 360.0
            assert cov[0].sum() == cov[-1].sum() == cov[:, 0].sum() == cov[:, -1].sum() == 0
        if len(covs) == 2:
            assert (covs[0] * covs[1]).sum() == 0
        for kind in SHAPES:  # a kind edit keeps the angle, so its shape also stays inside
            i = sc.main_index
            ed = edit_scene(sc, "shape", kind, index=i) if kind != sc.main.kind else sc
            assert ed.shapes[i].angle == sc.shapes[i].angle and ed.shapes[i].kind == kind
            cov = shape_coverage(ed, i)
            assert cov[0].sum() == cov[-1].sum() == cov[:, 0].sum() == cov[:, -1].sum() == 0
    assert Scene.from_dict(json.loads(json.dumps(sc.to_dict()))) == sc
    old = {"background": "gray", "shapes": [{"kind": "square", "colour": "red", "size": 9, "x": 20, "y": 20}]}
    assert Scene.from_dict(old).shapes[0].angle == 0.0  # a scene saved before angles loads upright
    with pytest.raises(ValueError):
        random_scene(rng, turned_prob=1.5)


def test_turned_share_and_the_checker_reads_turned_shapes():
    data = dataset(5, 300, turned_prob=0.5)
    share = np.mean([sc.shapes[0].angle != 0.0 for sc, _, _ in data])
    assert 0.4 < share < 0.6
    turned = dataset(6, 300, turned_prob=1.0)
    rng = np.random.default_rng(0)
    clean = checker.accuracy([img for _, img, _ in turned], [sc for sc, _, _ in turned])
    noisy = checker.accuracy([checker.degrade(img, rng, noise=8.0, blur=0.7) for _, img, _ in turned],
                             [sc for sc, _, _ in turned])
    for k in ATTRS:
        assert clean[k] >= 0.98 and noisy[k] >= 0.95, (k, clean, noisy)


# --------------------------------------------------- training checkpoints ---

def _tiny_unet_stage(seed: int):
    import torch
    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR
    from toyworld import train

    torch.manual_seed(seed)
    cfg = train.Config(unet_steps=4, unet_batch=2)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    vae, text_encoder, unet = train.build_components(cfg, tokenizer)
    data = (torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(1)),
            train.tokenize(tokenizer, ["a red circle on a gray background", "a blue square on a white background"] * 2),
            train.tokenize(tokenizer, [""])[0])
    return cfg, vae, text_encoder, unet, data


def _weights(*modules) -> dict:
    return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def test_a_killed_unet_stage_goes_on_from_its_checkpoint_bit_for_bit(tmp_path):
    import torch

    from editing.core.model import ddim_scheduler
    from toyworld import train
    from toyworld.checkpoint import UNetCheckpoint

    cfg, vae, text_encoder, unet, data = _tiny_unet_stage(0)
    train.train_unet(unet, text_encoder, *data, ddim_scheduler(), cfg, torch.Generator().manual_seed(0), True)
    straight = _weights(unet, text_encoder)

    class Killed(Exception):
        pass

    class KilledAfterSaving(UNetCheckpoint):  # the process dies right after its first checkpoint
        def save(self, *args, **kwargs):
            super().save(*args, **kwargs)
            raise Killed

    folder = tmp_path / "model.checkpoint"
    cfg, vae, text_encoder, unet, data = _tiny_unet_stage(0)
    with pytest.raises(Killed):
        train.train_unet(unet, text_encoder, *data, ddim_scheduler(), cfg, torch.Generator().manual_seed(0), True,
                         KilledAfterSaving(folder, cfg.to_json(), every=2), vae)
    checkpoint = UNetCheckpoint(folder, cfg.to_json(), every=2)
    assert checkpoint.exists() and checkpoint.state()["step"] == 2
    assert sorted(f.name for f in folder.iterdir()) == ["state.json", "step-000002"]
    assert sorted(f.name for f in (folder / "step-000002").iterdir()) == [
        "ema.safetensors", "generator.safetensors", "optimiser.safetensors", "text_encoder.safetensors",
        "unet.safetensors", "vae.safetensors"]
    # a new process: other initial weights and a fresh generator, all replaced by the checkpoint
    cfg, vae, text_encoder, unet, data = _tiny_unet_stage(99)
    assert any(not torch.equal(v, straight[k]) for k, v in _weights(unet, text_encoder).items())
    stats = train.train_unet(unet, text_encoder, *data, ddim_scheduler(), cfg, torch.Generator().manual_seed(5),
                             True, checkpoint, vae)
    assert stats["resumed_at_step"] == 2
    resumed = _weights(unet, text_encoder)
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    with pytest.raises(ValueError, match=rf"another training recipe \(unet_lr {cfg.unet_lr} there, 0.5 here\)"):
        UNetCheckpoint(folder, {**cfg.to_json(), "unet_lr": 0.5}).state()
    # how the steps are computed may change (more threads, a GPU); the checkpoint is taken and the change named
    faster = UNetCheckpoint(folder, {**cfg.to_json(), "threads": cfg.threads + 1, "device": "cuda"})
    assert faster.state()["step"] == 2 and checkpoint.changed_settings() == {}
    assert faster.changed_settings() == {"threads": (cfg.threads, cfg.threads + 1), "device": (cfg.device, "cuda")}
    assert not checkpoint.due(4, 4) and checkpoint.due(2, 4) and not checkpoint.due(3, 4)
    assert sorted(f.name for f in folder.iterdir()) == ["state.json", "step-000002"]  # a later save replaces it


def test_export_writes_a_checkpoint_s_ema_weights_as_a_model_folder(tmp_path, capsys):
    import copy

    import torch
    from safetensors.torch import load_file

    from editing.core.model import ddim_scheduler
    from toyworld import export, train
    from toyworld.checkpoint import UNetCheckpoint

    seen = {}

    class Watched(UNetCheckpoint):  # keeps the networks with the EMA's weights at the step it saves
        def save(self, step, vae, networks, optimiser, schedule, ema, generator, extra):
            super().save(step, vae, networks, optimiser, schedule, ema, generator, extra)
            copies = {name: copy.deepcopy(module) for name, module in networks.items()}
            ema.copy_to(train.trained_parameters(copies["unet"], copies["text_encoder"]))
            seen.update({name: module.state_dict() for name, module in copies.items()}, step=step)

    cfg, vae, text_encoder, unet, data = _tiny_unet_stage(0)
    folder = tmp_path / "run.checkpoint"
    train.train_unet(unet, text_encoder, *data, ddim_scheduler(), cfg, torch.Generator().manual_seed(0), True,
                     Watched(folder, cfg.to_json(), every=2, command="python -m toyworld.train --out run"), vae)
    assert seen["step"] == 2
    assert export.main([str(folder), str(tmp_path / "model")]) == 0
    assert "exported step 2" in capsys.readouterr().out
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["checkpoint_step"] == 2 and record["config"] == cfg.to_json()
    # the model names the command of the run it was taken from, and where that run was stopped
    assert record["command"] == "python -m toyworld.train --out run"
    assert record["recipe"] == [f"python -m toyworld.train --out run  # stopped at UNet step 2 of {cfg.unet_steps}, "
                                "exported"]
    assert record["total_steps"] == {"vae": cfg.vae_steps, "unet": 2} and record["lineage"] is None
    for name in ("unet", "text_encoder"):
        written = load_file(str(next((tmp_path / "model" / name).glob("*.safetensors"))))
        expected = seen[name]
        assert written.keys() == expected.keys()
        assert all(torch.equal(written[k], expected[k].half()) for k in expected), name  # fp16 on disk
        raw = load_file(str(folder / "step-000002" / f"{name}.safetensors"))  # the step's own weights
        assert any(not torch.equal(written[k], raw[k].half()) for k in expected)  # the EMA was written, not them
    from editing.core.loading import load_model

    model = load_model(str(tmp_path / "model"), device="cpu")
    assert model.latent_scale == pytest.approx(vae.config.scaling_factor)
    assert export.main([str(tmp_path), str(tmp_path / "other")]) == 2  # not a checkpoint
    assert "no state.json" in capsys.readouterr().err


@pytest.mark.slow
def test_the_training_command_killed_and_run_again_saves_the_uninterrupted_model(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    from toyworld import train

    args = ["--n-train", "40", "--vae-steps", "2", "--vae-batch", "2", "--unet-steps", "60", "--unet-batch", "2",
            "--n-eval", "2", "--n-eval-vae", "2", "--threads", "1", "--checkpoint-every", "2", "--quiet"]
    assert train.main(["--out", str(tmp_path / "straight"), *args]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "toyworld.train", "--out", str(out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    state = tmp_path / "killed.checkpoint" / "state.json"
    deadline = time.monotonic() + 300
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not out.exists(), "the run should have died mid-way, after a checkpoint"
    other = [a if a != "60" else "80" for a in args]  # another recipe (more steps: another schedule)
    assert train.main(["--out", str(out), *other]) == 2 and state.is_file()  # refused, the checkpoint kept
    assert "another training recipe (unet_steps 60 there, 80 here)" in capsys.readouterr().err
    assert train.main(["--out", str(out), *args]) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["final_losses"]["unet"]["resumed_at_step"] >= 2
    assert not (tmp_path / "killed.checkpoint").exists()
    for part in ("unet", "text_encoder", "vae"):
        a = next((tmp_path / "straight" / part).glob("*.safetensors")).read_bytes()
        b = next((out / part).glob("*.safetensors")).read_bytes()
        assert a == b, part


def test_score_puts_two_models_on_the_same_held_out_scenes(tmp_path, capsys):
    """toyworld.score: the same folder twice reads the same figures (same scenes, same seeded sampler), in
    train's format; a folder that is not a model is one error line."""
    from editing.core.model import DEFAULT_MODEL_DIR
    from toyworld import score

    argv = [str(DEFAULT_MODEL_DIR), str(DEFAULT_MODEL_DIR), "--n", "2", "--n-vae", "3", "--turned-prob", "1",
            "--out", str(tmp_path), "--quiet"]
    assert score.main(argv) == 0
    report = json.loads((tmp_path / "score.json").read_text())
    first, second = report["models"]
    assert first == second and first["vae_n"] == 3 and first["attribute_accuracy"]["n"] == 2
    assert 20 < first["vae_psnr_db"] < 60 and 0.0 <= first["attribute_accuracy"]["all"] <= 1.0
    printed = capsys.readouterr()
    assert printed.out == (tmp_path / "score.md").read_text() and printed.err == ""  # no library noise
    assert score.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a model folder" in err and len(err.splitlines()) == 1


def test_score_help_has_a_worked_example(capsys):
    from helpers import help_examples
    from toyworld import score

    with pytest.raises(SystemExit):
        score.main(["--help"])
    examples = help_examples(capsys.readouterr().out, "python -m toyworld.score")
    assert examples and all(len(score.build_parser().parse_args(e).models) == 2 for e in examples)
