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


def test_pack_leaves_the_tokenizer_out(tmp_path):
    model = tmp_path / "model"
    for f in ("unet/config.json", "tokenizer/vocab.json", "training.json"):
        (model / f).parent.mkdir(parents=True, exist_ok=True)
        (model / f).write_text("{}")
    pack(model, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert sorted(tar.getnames()) == ["model/training.json", "model/unet/config.json"]
    assert not (tmp_path / "a.tar.part").exists()
