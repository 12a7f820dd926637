"""Null-text fine-tuning on a learned embedding (the thesis' future-work method, --method finetune-embedding)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from editing.core.image_io import load_image
from editing.embedding import EmbeddingConfig
from editing.finetune_embedding import FinetuneEmbeddingConfig, edit_finetune_embedding
from editing.learned_embedding import learn_embedding
from editing.null_finetune import generate
from inversion.invert import InversionConfig, invert
from inversion.null_text import NullTextConfig

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "examples" / "toy-red-circle.png"
TARGET = "a blue circle on a gray background"
STEPS = 6
NTI = InversionConfig(method="null-text", steps=STEPS, null_text=NullTextConfig(inner_steps=3))
EMBED = EmbeddingConfig(steps=8, lr=5e-3, l2=1e-3, batch=2)


def run(model, k: int, strip=()):
    import torch

    image = load_image(TOY, model.resolution)
    config = FinetuneEmbeddingConfig(embedding=EMBED, steps=k, null_text=NullTextConfig(inner_steps=5))
    return image, edit_finetune_embedding(model, image, TARGET, config, NTI, generator=torch.Generator().manual_seed(0),
                                          strip=list(strip), disable=True)


def test_it_composes_the_learned_embedding_the_inversion_under_it_and_the_null_fine_tuning(tiny_model):
    """Each stage is the shared primitive's own result: e_opt equals learn_embedding's, the record equals an
    inversion under that e_opt, and K = 0 equals sampling e_tgt with the record's nulls."""
    import torch

    image, result = run(tiny_model, 0)
    e_tgt, e_opt, _ = learn_embedding(tiny_model, image, TARGET, EMBED, torch.Generator().manual_seed(0), True)
    assert torch.equal(result.e_opt, e_opt)
    record = invert(tiny_model, image[None], [TARGET], NTI, disable=True, cond=e_opt)[0]
    assert torch.allclose(result.record.nulls, record.nulls) and torch.equal(result.record.x_T, record.x_T)
    plain = generate(tiny_model, record, e_tgt, [0], [], disable=True)[0]  # a batch of 1, the method's of 2
    assert np.abs(result.edit.astype(int) - plain).max() <= 1  # batch size changes float rounding only


def test_fine_tuning_every_step_pulls_the_target_branch_onto_the_pivot(default_model):
    """K = steps: with the fine-tuned nulls, the target branch sampled from x_T ends closer to the pivot (the
    inversion's trajectory under e_opt) than with the inversion's nulls. Measured on the latents: at this
    tiny budget the final images do not show it (on the committed model the K = 0 edit is already within
    41 dB of the reconstruction, and Adam's first steps move the nulls by about the learning rate)."""
    import torch

    from editing.core.ddim import DDIMSchedule
    from editing.core.sampling import Conditioning, sample
    from editing.null_finetune import finetune_nulls, original_nulls, pivot

    image, result = run(default_model, 0)
    trajectory = pivot(default_model, result.record, image)
    e_tgt = default_model.encode_prompts([TARGET])
    config = NullTextConfig(inner_steps=5, early_stop=0.0, early_stop_growth=0.0)
    tuned = finetune_nulls(default_model, result.record, trajectory, e_tgt, STEPS, config)
    schedule = DDIMSchedule.from_scheduler(default_model.scheduler, STEPS)

    def error(nulls):
        _, path = sample(default_model, result.record.x_T[None], Conditioning(e_tgt, nulls), schedule,
                         result.record.guidance, return_trajectory=True, disable=True)
        return (path[STEPS] - trajectory[0]).pow(2).mean().item()

    assert error(tuned) < error(original_nulls(default_model, result.record))
    assert not torch.equal(result.e_opt, e_tgt)  # the pivot is e_opt's, not the target's


def test_cli_writes_the_contract_with_the_method(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "editing.run", "--image", str(TOY), "--method", "finetune-embedding",
         "--target-prompt", TARGET, "--steps", "4", "--inner-steps", "2", "--embed-steps", "4",
         "--finetune-steps", "2", "--finetune-inner", "2", "--quiet", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "finetune-embedding"
    assert summary["finetune_embedding"]["steps"] == 2 and summary["finetune_embedding"]["embedding"]["steps"] == 4
    for name in ("source.png", "reconstruction.png", "edit.png", "grid.png"):
        assert (out / name).is_file()


@pytest.mark.parametrize("argv, message", [
    (["--inversion", "direct"], "finetune-embedding needs --inversion null-text"),
    (["--finetune-steps", "9", "--steps", "4"], "--finetune-steps must be between 0 and --steps"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, argv, message):
    done = subprocess.run(
        [sys.executable, "-m", "editing.run", "--image", str(TOY), "--method", "finetune-embedding",
         "--target-prompt", TARGET, *argv, "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
