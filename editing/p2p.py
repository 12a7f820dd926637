"""Prompt-to-Prompt editing of an inverted photo (Hertz et al.), on any of the four inversions.

One batch: row 0 is the source prompt, rows 1.. the target prompts. Every row starts from the record's
x_T and uses the record's unconditional embeddings; for a DirectInversion record the source row is held
on the inversion trajectory. The reconstruction is row 0 of this very batch, so it shares the edit's
batch layout and conditioning exactly (the reference's batch-size-dependent reconstructions, p2p issue #47, cannot
happen).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attention.controllers import P2PConfig, PromptToPrompt
from attention.guidance import LayoutGuidance
from editing.core.sampling import Conditioning, sample
from inversion.record import Inversion, source_anchors


@dataclass
class EditResult:
    reconstruction: np.ndarray  # (H, W, 3) uint8: the source row of the edit batch
    edits: list[np.ndarray]  # one (H, W, 3) uint8 per target prompt
    controller: PromptToPrompt  # holds the averaged attention maps and the resolved edit mode


def edit_conditioning(model, record: Inversion, targets: list[str]) -> Conditioning:
    """cond: the source and target embeddings (n, L, D); uncond: the record's per-step u_i on every row."""
    prompts = [record.prompt, *targets]
    cond = model.encode_prompts(prompts)  # (n, L, D)
    uncond = record.uncond_schedule(cond[:1], model.encode_prompts([""]), rows=len(prompts))
    return Conditioning(cond=cond, uncond=uncond)


def edit_p2p(model, record: Inversion, targets: list[str], config: P2PConfig = P2PConfig(),
             store_self: bool = False, disable: bool = False) -> EditResult:
    """Edit one inverted photo towards each target prompt with attention injection."""
    schedule = record.schedule(model.scheduler)
    controller = PromptToPrompt(record.prompt, targets, model.tokenizer, record.steps, config)
    controller.store_self = store_self
    n = 1 + len(targets)
    x_T = record.x_T.to(model.device)[None].expand(n, *record.x_T.shape)
    conditioning = edit_conditioning(model, record, targets)
    guidance = None
    if config.layout_guidance > 0:
        guidance = LayoutGuidance(model, controller, [record.prompt, *targets], conditioning, schedule.timesteps,
                                  config.layout_guidance, config.layout_guidance_until, config.guidance_max_tokens)
    x0 = sample(model, x_T, conditioning, schedule, record.guidance, anchors=source_anchors([record], n, model.device),
                controller=controller, callback=guidance, disable=disable, desc="editing")
    images = model.decode_latents(x0)
    return EditResult(reconstruction=images[0], edits=list(images[1:]), controller=controller)
