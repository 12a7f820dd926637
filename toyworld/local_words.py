"""A text encoder whose tokens keep to their own word: what Prompt-to-Prompt assumes of a text encoder.

Prompt-to-Prompt's replace edit swaps one word and holds the source's cross-attention maps, so that the new
word acts where the old one did and nowhere else. That works when the changed word's meaning travels in its
own token. The toy model's CLIPTextModel is causal and was trained jointly with the UNet from scratch, and the
UNet learnt to read the caption from the tokens that have seen all of it: measured (benchmarks/RESULTS.md,
"Where a changed word acts"), swapping only the changed token's vector makes 2 edits in 30, while the vectors
of the later tokens, end token and padding carry both the edit and the move of the layout that spoils it.

With `local_words` the encoder's self-attention is switched off: every layer's attention output projection is
zero and frozen, so a layer adds nothing through attention and each token's vector is a function of its word
and its position alone (per-token MLPs on word + position embeddings). A changed word then changes its own
token and nothing else, the padding is the same for every caption, and the UNet has to read each word where it
is: the only place the caption's meaning can be. Binding a colour to its shape still works, through the UNet's
cross-attention over positions. The architecture and the saved format are unchanged (a CLIPTextModel, loaded
as usual); the zero projections are in the weights.
"""
from __future__ import annotations

import torch


def _layers(text_encoder):
    """The encoder layers of a CLIPTextModel (transformers 5 holds them at the top, older ones in text_model)."""
    return getattr(text_encoder, "text_model", text_encoder).encoder.layers


def localise_words(text_encoder) -> None:
    """Zero and freeze every self-attention of a CLIPTextModel (in place): its outputs become per-token."""
    for layer in _layers(text_encoder):
        attention = layer.self_attn
        with torch.no_grad():
            attention.out_proj.weight.zero_()
            attention.out_proj.bias.zero_()
        attention.requires_grad_(False)  # q, k, v feed only the zero projection: nothing to learn


def words_are_local(text_encoder) -> bool:
    """True when no self-attention of the encoder can carry one token's content into another."""
    return all(not layer.self_attn.out_proj.weight.any() and not layer.self_attn.out_proj.bias.any()
               for layer in _layers(text_encoder))
