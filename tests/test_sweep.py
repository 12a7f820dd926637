"""toyworld.sweep: the step budget and the packed model (the GPU run itself is in benchmarks/RESULTS.md)."""
import argparse
import tarfile

import pytest

from toyworld.sweep import FIXED_SECONDS, SAFETY, fitted_steps, pack, run_args, share

RATES = {"render_s": 0.001, "vae_step_s": 0.02, "unet_step_s": 0.05}


def test_steps_fit_the_budget_after_the_other_stages():
    steps = fitted_steps(500, n_train=40_000, vae_steps=1000, rates=RATES)
    left = 500 - FIXED_SECONDS - 40 - 20  # render 40 s, VAE 20 s
    assert steps == int(SAFETY * left / 0.05) // 100 * 100
    assert steps * RATES["unet_step_s"] <= left


def test_a_larger_safety_share_fits_more_steps():
    left = 500 - FIXED_SECONDS - 40 - 20
    steps = fitted_steps(500, n_train=40_000, vae_steps=1000, rates=RATES, safety=0.95)
    assert steps == int(0.95 * left / 0.05) // 100 * 100 > fitted_steps(500, 40_000, 1000, RATES)
    assert share("0.95") == 0.95
    for bad in ("0", "1.2", "-0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="share"):
            share(bad)


def test_nothing_fits_gives_zero():
    assert fitted_steps(FIXED_SECONDS, n_train=40_000, vae_steps=1000, rates=RATES) == 0


def test_run_spec_needs_a_name():
    assert run_args("a-1=--seed 5 --unet-batch 256") == ("a-1", ["--seed", "5", "--unet-batch", "256"])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME="):
        run_args("--seed 5")


def test_a_continuation_is_timed_with_its_parent_s_networks(tmp_path):
    """--init-from: the probe times the parent's architecture, not the recipe's default (16 x 16) one."""
    import json

    from transformers import CLIPTokenizer

    from editing.core.model import TOKENIZER_DIR
    from toyworld import train
    from toyworld.sweep import probe

    _, cfg = train.parse_args(["--out", str(tmp_path / "unused"), "--latent-size", "32"])
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    parent = tmp_path / "parent"
    train.save_pipeline(parent, *train.build_components(cfg, tokenizer), tokenizer)
    (parent / "training.json").write_text(json.dumps({"config": cfg.to_json()}))
    small = ["--unet-batch", "2", "--vae-batch", "2", "--device", "cpu", "--threads", "1"]
    timed = probe(["--init-from", str(parent), *small])
    assert timed["latent_size"] == 32 and timed["unet_channels"] == list(cfg.unet_channels)
    plain = probe(small)  # the recipe's own architecture
    assert plain["latent_size"] == 16 and plain["unet_channels"] == list(train.Config().unet_channels)
    assert all(timed[k] > 0 for k in ("render_s", "vae_step_s", "unet_step_s"))


def test_pack_leaves_the_tokenizer_out(tmp_path):
    model = tmp_path / "model"
    for f in ("unet/config.json", "tokenizer/vocab.json", "training.json"):
        (model / f).parent.mkdir(parents=True, exist_ok=True)
        (model / f).write_text("{}")
    pack(model, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert sorted(tar.getnames()) == ["model/training.json", "model/unet/config.json"]
    assert not (tmp_path / "a.tar.part").exists()
