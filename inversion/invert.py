"""Invert photos with one of four methods and reconstruct them, all through the shared primitives.

- ddim: plain DDIM inversion; reconstruction with guidance drifts (the baseline).
- null-text: DDIM inversion as the pivot, then per-step null embeddings (Mokady et al.).
- negative-prompt: u_i = the source prompt's embedding, no optimisation (Miyake et al., "Negative-prompt
  Inversion"): guidance then cancels for the source branch, which follows the inversion closely.
- direct: the source branch held on the inversion trajectory (Ju et al.); the per-step offsets that do the
  same by addition are recorded too (learned-embedding generation uses them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from editing.core.conditioning import is_per_step
from editing.core.errors import UserError
from editing.core.sampling import Conditioning, check_finite, sample
from editing.core.ddim import FULL_DEPTH, DDIMSchedule, run_steps
from inversion.ddim import ddim_inversion
from inversion.direct import direct_offsets
from inversion.null_text import NullTextConfig, optimise_nulls
from inversion.record import METHODS, Inversion, embedding_digest, fingerprint_parts, source_anchors

DEFAULT_STEPS = 50  # the reference's NUM_DDIM_STEPS
DEFAULT_GUIDANCE = 7.5  # the reference's GUIDANCE_SCALE


@dataclass(frozen=True)
class InversionConfig:
    method: str = "null-text"
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    null_text: NullTextConfig = field(default_factory=NullTextConfig)
    keep_trajectory: bool = False  # store x_0..x_T in the record (null-text fine-tuning; direct always does)
    depth: float = FULL_DEPTH  # invert through the last depth * steps steps only (editing/core/ddim.py run_steps)

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown inversion method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.steps < 1:
            raise UserError(f"steps must be at least 1, got {self.steps}")
        try:
            run_steps(self.steps, self.depth)  # the one check of a depth
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def params(self) -> dict:
        params = {"steps": self.steps, "guidance": self.guidance}
        if self.depth != FULL_DEPTH:  # absent at full depth: the records (and caches) of earlier versions still match
            params["depth"] = self.depth
        if self.method == "null-text":
            params["null_text"] = self.null_text.to_dict()
        return params


def invert(model, images: np.ndarray, prompts: list[str], config: InversionConfig = InversionConfig(),
           disable: bool = False, cond: torch.Tensor | None = None) -> list[Inversion]:
    """Invert a batch of preprocessed photos (B, H, W, 3) uint8, each with its own source prompt.

    cond: (B, L, D) conditional embeddings to invert under instead of the prompts' (a learned embedding);
    the records then carry them, and their fingerprints include them.
    """
    if len(images) != len(prompts):
        raise UserError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
    start = time.perf_counter()
    schedule = DDIMSchedule.from_scheduler(model.scheduler, config.steps, config.depth)
    learned = cond is not None
    cond = model.encode_prompts(prompts) if cond is None else cond.detach().float().to(model.device)  # (B, L, D)
    empty = model.encode_prompts([""]).expand_as(cond)  # (B, L, D)
    x0 = model.encode_images(images)  # (B, C, h, w)
    trajectory = ddim_inversion(model.unet_output, x0, cond, schedule, disable=disable)
    for k, x in enumerate(trajectory):  # a NaN or inf latent would otherwise be saved as a valid record
        check_finite(x, f"the DDIM-inversion latent after {k} steps")
    nulls = offsets = None
    if config.method == "null-text":
        nulls = torch.stack(optimise_nulls(model, trajectory, cond, empty, schedule, config.guidance,
                                           config.null_text, disable=disable), 1)  # (B, steps, L, D)
    elif config.method == "direct":
        offsets = torch.stack(direct_offsets(model, trajectory, cond, empty, schedule, config.guidance), 1)
        check_finite(offsets, "the DirectInversion offsets")
    elapsed = time.perf_counter() - start
    stacked = torch.stack(trajectory, 1)  # (B, steps + 1, C, h, w)
    keep = config.keep_trajectory or config.method == "direct"  # DirectInversion anchors the source on it
    def parts(b):
        found = fingerprint_parts(images[b], prompts[b], model.inversion_fingerprint, config.method, config.params())
        return {**found, "embedding": embedding_digest(cond[b])} if learned else found

    return [
        Inversion(method=config.method, prompt=prompts[b], x_T=trajectory[-1][b].contiguous(),
                  params=config.params(), parts=parts(b), cond=cond[b].contiguous() if learned else None,
                  nulls=None if nulls is None else nulls[b].contiguous(),
                  offsets=None if offsets is None else offsets[b].contiguous(),
                  trajectory=stacked[b].contiguous() if keep else None,
                  timings_s={"inversion": elapsed / len(images)})
        for b in range(len(images))
    ]


def source_conditioning(model, records: list[Inversion]) -> tuple[Conditioning, DDIMSchedule]:
    """The conditioning that reproduces each record's photo, one row per record."""
    runs = {(r.params["steps"], r.depth) for r in records}
    if len(runs) != 1:
        raise UserError(f"records with different step counts or depths {sorted(runs)} cannot be sampled together")
    schedule = records[0].schedule(model.scheduler)
    sources = torch.cat([r.source_embedding(model) for r in records])  # (B, L, D)
    empty = model.encode_prompts([""])
    per_row = [r.uncond_schedule(sources[b:b + 1], empty) for b, r in enumerate(records)]
    uncond = [torch.cat([u[i] if is_per_step(u) else u for u in per_row])
              for i in range(len(schedule.timesteps))]
    return Conditioning(cond=sources, uncond=uncond), schedule


def reconstruct(model, records: list[Inversion], disable: bool = False) -> np.ndarray:
    """Sample each record back to an image (B, H, W, 3) uint8."""
    conditioning, schedule = source_conditioning(model, records)
    x_T = torch.stack([r.x_T for r in records]).to(model.device)
    guidance = {r.guidance for r in records}
    if len(guidance) != 1:
        raise UserError("records with different guidance scales cannot be reconstructed together")
    x0 = sample(model, x_T, conditioning, schedule, guidance.pop(),
                anchors=source_anchors(records, len(records), model.device), disable=disable,
                desc="reconstruction")
    return model.decode_latents(x0)

