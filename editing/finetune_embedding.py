"""Null-text fine-tuning on a learned embedding: the thesis' "future work" (its chapter 5), built from the two
methods it proposes.

1. e_opt: start at e_tgt, the target prompt's embedding, and minimise the photo's denoising loss plus
   lambda ||e_opt - e_tgt||^2 (the learned-embedding method's step 1, the shared embedding optimiser).
2. Invert the photo under e_opt (null-text inversion): the pivot x_0..x_T and nulls u_i reproduce the photo
   with e_opt as its "caption", so no source prompt is needed.
3. Fine-tune the nulls of the first K sampling steps along the same pivot with e_tgt as the conditional
   embedding, each starting from u_i (null-text fine-tuning's step 2, the shared null-text optimiser).
4. Generate from x_T under e_tgt: fine-tuned nulls for steps < K, the inversion's after.

K = 0 samples the target embedding with the photo's nulls; larger K holds the early (layout) steps of the
edit on the photo's trajectory. One fine-tuning of max(K) serves a whole K strip, as in null-finetune.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from editing.embedding import EmbeddingConfig
from editing.learned_embedding import DEFAULT_EMBEDDING, THESIS_L2, learn_embedding
from editing.null_finetune import DEFAULT_INNER_STEPS, finetune_nulls, generate, pivot
from inversion.invert import InversionConfig, invert
from inversion.null_text import NullTextConfig
from inversion.record import Inversion


FINETUNE_EMBEDDING = replace(DEFAULT_EMBEDDING, l2=THESIS_L2)  # the L2-pulled e_opt the future work names
# its own K curve (benchmarks/RESULTS.md): accuracy held up to K 20 and fell beyond (the L2-pulled e_opt leaves
# the edit little room), while the unchanged region rose with K; 20 is the largest K that kept the edits
DEFAULT_FINETUNE_K = 20


@dataclass(frozen=True)
class FinetuneEmbeddingConfig:
    # The thesis' future work: e_opt learned WITH the L2 pull (lambda 1e-3, whatever learned-embedding's own
    # default), then null-finetune's fine-tuning of the first K nulls (30 inner steps) against e_tgt.
    embedding: EmbeddingConfig = field(default_factory=lambda: FINETUNE_EMBEDDING)
    steps: int = DEFAULT_FINETUNE_K  # K: fine-tune (and use) the nulls of the first K sampling steps
    null_text: NullTextConfig = NullTextConfig(inner_steps=DEFAULT_INNER_STEPS)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneEmbeddingResult:
    reconstruction: np.ndarray  # (H, W, 3) uint8: e_opt with the inversion's nulls (what the pivot reproduces)
    edit: np.ndarray  # (H, W, 3) uint8: e_tgt with fine-tuned nulls for steps < K
    strip: list[np.ndarray]  # one image per K of the strip
    record: Inversion  # the inversion under e_opt
    e_opt: torch.Tensor  # (1, L, D)
    losses: list[float]
    timings_s: dict  # preliminary_training (embedding + inversion), editing (fine-tuning), generation


def edit_finetune_embedding(model, image: np.ndarray, target: str, config: FinetuneEmbeddingConfig,
                            inversion: InversionConfig, generator: torch.Generator | None = None,
                            strip: list[int] | None = None, disable: bool = False) -> FinetuneEmbeddingResult:
    """Edit one preprocessed photo (H, W, 3) uint8 towards the target prompt (no caption of the photo needed)."""
    strip = list(strip or [])
    t0 = time.perf_counter()
    e_tgt, e_opt, losses = learn_embedding(model, image, target, config.embedding, generator, disable)
    record = invert(model, image[None], [target], replace(inversion, keep_trajectory=True), disable=disable,
                    cond=e_opt)[0]
    t1 = time.perf_counter()
    trajectory = pivot(model, record, image, disable)
    finetuned = finetune_nulls(model, record, trajectory, e_tgt, max([config.steps, *strip]), config.null_text,
                               disable)
    t2 = time.perf_counter()
    ks = [0, config.steps, *strip]
    conds = torch.cat([e_opt, *[e_tgt] * (1 + len(strip))])  # (len(ks), L, D)
    images = generate(model, record, conds, ks, finetuned, disable)
    t3 = time.perf_counter()
    return FinetuneEmbeddingResult(
        reconstruction=images[0], edit=images[1], strip=list(images[2:]), record=record, e_opt=e_opt,
        losses=losses, timings_s={"preliminary_training": t1 - t0, "editing": t2 - t1, "generation": t3 - t2})
