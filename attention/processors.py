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


class ControlledAttnProcessor:
    """Self- or cross-attention of one layer, with the probabilities handed to a controller when it wants them."""

    def __init__(self, name: str, controller):
        self.name = name
        self.place = place_of(name)
        self.is_cross = name.endswith("attn2.processor")
        self.controller = controller

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
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        if step is not None and self.controller.wants(self.is_cross, queries, step):
            query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))  # (B*heads, N, d)
            probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, HW, tokens)
            probs = self.controller.edit(probs, is_cross=self.is_cross, place=self.place, step=step,
                                         heads=attn.heads)
            out = attn.batch_to_head_dim(torch.bmm(probs.to(value.dtype), value))  # (B, HW, heads*d)
        else:
            head_dim = key.shape[-1] // attn.heads
            query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                                 for x in (query, key, value))  # (B, heads, N, d)
            if attention_mask is not None:
                attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
            out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def attention_control(unet, controller):
    """Install a ControlledAttnProcessor on every attention layer of `unet`; restore the originals on exit,
    also when the block raises."""
    original = unet.attn_processors  # {name: processor}
    if not original:
        raise ValueError("this UNet has no attention layers to control")
    unet.set_attn_processor({name: ControlledAttnProcessor(name, controller) for name in original})
    try:
        yield controller
    finally:
        unet.set_attn_processor(original)
