"""Attention processors that let a controller see and edit attention probabilities, installed on the UNet's
attention layers with diffusers' `set_attn_processor` for the length of a `with` block and restored after.

A controlled layer computes the probabilities explicitly only when its controller asks for that layer at
that step (`controller.wants(...)`); otherwise it keeps fused scaled-dot-product attention. The sampling
step index reaches the processors explicitly, through the UNet's `cross_attention_kwargs={"step": i}`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def place_of(name: str) -> str:
    """'down', 'mid' or 'up' from a processor name like 'down_blocks.0.attentions.1....attn2.processor'."""
    for place in ("down", "mid", "up"):
        if name.startswith(place):
            return place
    raise ValueError(f"cannot tell the UNet place of attention layer {name!r}")


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The slices' results as one tensor along the (batch x heads) rows (no copy for a single slice)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class ControlledAttnProcessor:
    """Self- or cross-attention of one layer, with the probabilities handed to a controller when it wants them.

    slice_size: compute attention `slice_size` rows of (batch x heads) at a time, as diffusers'
    SlicedAttnProcessor does (what `--attention-slicing` installed on the layer before); None: all at once.
    """

    def __init__(self, name: str, controller, slice_size: int | None = None):
        self.name = name
        self.place = place_of(name)
        self.is_cross = name.endswith("attn2.processor")
        self.controller = controller
        self.slice_size = slice_size

    def _slices(self, rows: int) -> list[slice]:
        size = self.slice_size or rows
        return [slice(start, start + size) for start in range(0, rows, size)]

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 step: int | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, queries, _ = hidden_states.shape  # (B, HW, C)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)  # (B*heads, 1|Q, K)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))  # (B*heads, N, d)
        if attn.norm_q is not None:  # per-head normalisation of queries and keys, as AttnProcessor2_0 applies it
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        rows = self._slices(query.shape[0])
        mask = (lambda part: None) if attention_mask is None else (lambda part: attention_mask[part])  # noqa: E731
        if step is not None and self.controller.wants(self.is_cross, queries, step):
            # the controller edits the whole (B*heads, Q, K) at once (it mixes batch rows); slices bound the
            # temporaries of the scores and of the product
            probs = _joined([attn.get_attention_scores(query[r], key[r], mask(r)) for r in rows])
            probs = self.controller.edit(probs, is_cross=self.is_cross, place=self.place, step=step,
                                         heads=attn.heads)  # (B*heads, Q, K)
            out = _joined([torch.bmm(probs[r].to(value.dtype), value[r]) for r in rows])
        else:
            out = _joined([F.scaled_dot_product_attention(query[r], key[r], value[r], attn_mask=mask(r))
                           for r in rows])
        out = attn.batch_to_head_dim(out.to(query.dtype))  # (B, HW, heads*d)

        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def attention_control(unet, controller):
    """Install a ControlledAttnProcessor on every attention layer of `unet` (sliced where the layer's own
    processor slices); restore the originals on exit, also when the block raises."""
    original = unet.attn_processors  # {name: processor}
    if not original:
        raise ValueError("this UNet has no attention layers to control")
    # a layer that --attention-slicing sliced (diffusers' SlicedAttnProcessor) stays sliced under control
    unet.set_attn_processor({name: ControlledAttnProcessor(name, controller, getattr(processor, "slice_size", None))
                             for name, processor in original.items()})
    try:
        yield controller
    finally:
        unet.set_attn_processor(original)
