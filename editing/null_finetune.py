"""Null-text fine-tuning with the edit prompt (the thesis' second method, 3.2).

1. Null-text inversion of the photo with the source prompt: the pivot trajectory x_0..x_T and nulls u_i.
2. Null-text optimisation again along the same pivot, now with the edit prompt as the conditional
   embedding, starting from the learned u_i, for the first K sampling steps only (30 Adam steps each by
   default: the thesis found the default 10 too few to pull the edit branch back onto the pivot).
3. Generate from x_T with the edit prompt: the fine-tuned nulls for steps < K, the original ones after.

K = 0 is the plain "change the prompt, keep the nulls" edit; K = steps would, with an exact optimiser, pin the
whole edit branch to the photo's trajectory (a reconstruction); with the default 30 Adam steps per step it
does not: on the toy world edit accuracy and the unchanged region both rose with K up to K = steps
(benchmarks/RESULTS.md, "The thesis' claims, measured"). The first K fine-tuned nulls do not depend on how
many come after them (each step only sees the steps before it), so one fine-tuning of max(K) serves a whole
K strip.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from editing.core.conditioning import is_per_step
from editing.core.errors import UserError
from editing.core.sampling import Conditioning, sample
from inversion.ddim import ddim_inversion
from inversion.null_text import NullTextConfig, optimise_nulls
from inversion.record import Inversion

# every step of a 50-step run (fewer with --steps below 50): on the toy world's K strip (benchmarks/RESULTS.md,
# "The thesis' claims, measured") K = steps kept the unchanged region best and edited at least as often as
# any smaller K on every scene; the thesis' middle of the strip, 20, costs 2.5 x less fine-tuning
DEFAULT_K = 50
DEFAULT_INNER_STEPS = 30  # the thesis: 10 inner steps do not bring the edit branch back onto the pivot
FINETUNABLE = ("null-text", "negative-prompt", "ddim")  # inversions whose branch is set by u_i alone


@dataclass(frozen=True)
class NullFinetuneConfig:
    steps: int = DEFAULT_K  # K: fine-tune (and use) the nulls of the first K sampling steps
    null_text: NullTextConfig = NullTextConfig(inner_steps=DEFAULT_INNER_STEPS)

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise UserError(f"null-finetune steps K (--finetune-steps) must be a whole number of 0 or more, "
                            f"got {self.steps!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NullFinetuneResult:
    reconstruction: np.ndarray  # (H, W, 3) uint8: the source prompt with the original nulls
    edit: np.ndarray  # (H, W, 3) uint8: the edit prompt with fine-tuned nulls for steps < K
    strip: list[np.ndarray]  # one image per K of the strip
    finetuned: list[torch.Tensor]  # max(K) x (1, L, D)
    timings_s: dict  # editing (fine-tuning), generation


def pivot(model, record: Inversion, image: np.ndarray, disable: bool = False) -> list[torch.Tensor]:
    """The record's DDIM-inversion trajectory [x_0, ..., x_T], each (1, C, h, w): stored in the record, or
    recomputed from the photo (DDIM inversion is deterministic, so it is the same pivot)."""
    if record.trajectory is not None:
        return [x[None].to(model.device) for x in record.trajectory]
    schedule = record.schedule(model.scheduler)
    return ddim_inversion(model.unet_output, model.encode_images(image[None]), record.source_embedding(model),
                          schedule, disable=disable)


def finetune_nulls(model, record: Inversion, trajectory: list[torch.Tensor], target: str | torch.Tensor, k: int,
                   config: NullTextConfig, disable: bool = False) -> list[torch.Tensor]:
    """The first k nulls re-optimised with the target (a prompt, or its (1, L, D) embedding), each starting
    from the record's u_i."""
    if record.method not in FINETUNABLE:
        raise UserError(f"null-text fine-tuning needs a {', '.join(FINETUNABLE)} inversion, not {record.method} "
                        "(its per-step offsets correct the source branch only)")
    if not 0 <= k <= record.steps:
        raise UserError(f"the fine-tuning steps K must be between 0 and {record.steps}, got {k}")
    if k == 0:
        return []
    schedule = record.schedule(model.scheduler)
    cond = model.encode_prompts([target]) if isinstance(target, str) else target
    init = original_nulls(model, record)
    return optimise_nulls(model, trajectory, cond, init, schedule, record.guidance, config, num_steps=k,
                          disable=disable, desc="null-text fine-tuning")


def original_nulls(model, record: Inversion) -> list[torch.Tensor]:
    """The record's unconditional embedding of every step, (1, L, D) each."""
    uncond = record.uncond_schedule(record.source_embedding(model), model.encode_prompts([""]))
    return list(uncond) if is_per_step(uncond) else [uncond] * record.steps


def generate(model, record: Inversion, prompts: list[str] | torch.Tensor, ks: list[int],
             finetuned: list[torch.Tensor], disable: bool = False) -> np.ndarray:
    """Sample record.x_T once per (prompt, K): fine-tuned nulls for steps < K, the record's after.
    prompts: one per K, or their embeddings (len(ks), L, D)."""
    schedule = record.schedule(model.scheduler)
    base = original_nulls(model, record)
    uncond = [torch.cat([finetuned[i] if i < k else base[i] for k in ks]) for i in range(record.steps)]
    x_T = record.x_T.to(model.device)[None].expand(len(ks), *record.x_T.shape)
    cond = model.encode_prompts(list(prompts)) if not isinstance(prompts, torch.Tensor) else prompts
    x0 = sample(model, x_T, Conditioning(cond=cond, uncond=uncond), schedule,
                record.guidance, disable=disable, desc="generation")
    return model.decode_latents(x0)


def edit_null_finetune(model, record: Inversion, image: np.ndarray, target: str,
                       config: NullFinetuneConfig = NullFinetuneConfig(), strip: list[int] | None = None,
                       disable: bool = False) -> NullFinetuneResult:
    """Edit an inverted photo towards the target prompt by fine-tuning the first K nulls."""
    strip = list(strip or [])
    t0 = time.perf_counter()
    trajectory = pivot(model, record, image, disable)
    finetuned = finetune_nulls(model, record, trajectory, target, max([config.steps, *strip]), config.null_text,
                               disable)
    t1 = time.perf_counter()
    ks = [0, config.steps, *strip]
    prompts = [record.prompt, *[target] * (1 + len(strip))]
    images = generate(model, record, prompts, ks, finetuned, disable)
    t2 = time.perf_counter()
    return NullFinetuneResult(reconstruction=images[0], edit=images[1], strip=list(images[2:]),
                              finetuned=finetuned[:config.steps], timings_s={"editing": t1 - t0,
                                                                             "generation": t2 - t1})
