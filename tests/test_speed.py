"""The fast path's switches (editing/speed.py) against the plain path on the tiny model.

Compilation is checked with torch's "aot_eager" backend: it captures the same graphs (forward and backward,
through dynamo and AOT autograd) as the default backend but runs them with eager kernels, so the results
must match the plain path bit for bit and no C++ build (minutes on the 2-core CPU) is needed. The inductor
and CUDA-graph figures belong to the GPU timing suite (benchmarks/timing.py --compile).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from editing.core.errors import UserError
from editing.core.model import Model
from editing.p2p import edit_p2p
from editing.run import build_parser
from editing.core.speed import CompiledUNet, SpeedOptions, apply_speed, speed_options, speed_summary
from inversion.invert import InversionConfig, invert, reconstruct
from inversion.null_text import NullTextConfig

CONFIG = InversionConfig(method="null-text", steps=4, null_text=NullTextConfig(inner_steps=3))


def copy_of(model: Model) -> Model:
    """The same modules in a new Model (so switching the fast path on leaves the session fixture alone)."""
    return dataclasses.replace(model, fast_unet=None)


@pytest.fixture(scope="module")
def plain(tiny_model, session_photos, photo_prompts):
    record = invert(tiny_model, session_photos[:1], photo_prompts[:1], CONFIG, disable=True)[0]
    return record, reconstruct(tiny_model, [record], disable=True)


@pytest.mark.slow
def test_compiled_unet_gives_the_plain_results(tiny_model, session_photos, photo_prompts, plain):
    model = copy_of(tiny_model)
    apply_speed(model, SpeedOptions(compile="default", backend="aot_eager"))
    calls = []
    compiled = model.fast_unet.compiled
    model.fast_unet.compiled = lambda *a, **k: calls.append(1) or compiled(*a, **k)  # count the compiled calls
    record = invert(model, session_photos[:1], photo_prompts[:1], CONFIG, disable=True)[0]
    assert model.fast_unet.failed is None and len(calls) > 4 * 3  # inversion and the optimiser went through it
    assert torch.equal(record.nulls, plain[0].nulls) and torch.equal(record.x_T, plain[0].x_T)
    np.testing.assert_array_equal(reconstruct(model, [record], disable=True), plain[1])
    # Prompt-to-Prompt's controlled calls run the eager UNet: the edit is the plain one, and no call of the
    # editing loop reached the compiled graph
    before = len(calls)
    fast = edit_p2p(model, record, ["a photo of a dog"], disable=True)
    assert len(calls) == before
    slow = edit_p2p(tiny_model, plain[0], ["a photo of a dog"], disable=True)
    np.testing.assert_array_equal(fast.edits[0], slow.edits[0])


def test_graphs_mode_copies_each_output(tiny_model, session_photos, photo_prompts, plain):
    """'graphs' marks a step and copies the output at each call (CUDA graphs reuse their buffers); on a CPU the
    graphs themselves do not exist, but the copying path must give the plain results."""
    model = copy_of(tiny_model)
    model.fast_unet = CompiledUNet(model.unet, "reduce-overhead", backend="aot_eager")
    record = invert(model, session_photos[:1], photo_prompts[:1], CONFIG, disable=True)[0]
    assert model.fast_unet.failed is None
    assert torch.equal(record.nulls, plain[0].nulls)


def test_a_failed_compilation_falls_back_to_eager_once(tiny_model, session_photos, photo_prompts, plain, capsys):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    model = copy_of(tiny_model)
    model.fast_unet = CompiledUNet(model.unet, "default", backend=broken_backend)
    record = invert(model, session_photos[:1], photo_prompts[:1], CONFIG, disable=True)[0]
    assert "no C++ compiler here" in model.fast_unet.failed
    assert capsys.readouterr().err.count("running it eager") == 1
    assert torch.equal(record.nulls, plain[0].nulls)
    assert speed_summary(model)["compile_failed"] == model.fast_unet.failed


def test_memory_switches_keep_the_results(tiny_model, plain):
    model = copy_of(tiny_model)
    processors = model.unet.attn_processors
    try:
        apply_speed(model, SpeedOptions(attention_slicing=True, vae_tiling=True))
        assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
        assert model.vae.use_tiling and model.vae.use_slicing
        sliced = reconstruct(model, [plain[0]], disable=True)
    finally:  # the session's tiny model is shared: put it back as it was
        model.unet.set_attn_processor(processors)
        model.vae.disable_tiling()
        model.vae.disable_slicing()
    assert np.abs(sliced.astype(int) - plain[1].astype(int)).max() <= 1


def test_cli_flags_and_summary(tiny_model):
    args = build_parser().parse_args(["--image", "x.png", "--target-prompt", "t", "--compile", "graphs",
                                      "--attention-slicing"])
    assert speed_options(args) == SpeedOptions(compile="graphs", attention_slicing=True, vae_tiling=False)
    assert speed_options(build_parser().parse_args(["--image", "x.png", "--target-prompt", "t"])) == SpeedOptions()
    assert speed_summary(copy_of(tiny_model)) == {"compile": "off", "compile_failed": None}
    with pytest.raises(UserError, match="unknown --compile"):
        SpeedOptions(compile="fast")


@pytest.mark.slow
def test_compiled_null_text_keeps_per_row_early_stop(tiny_model, session_photos, photo_prompts):
    """With a compiled UNet the inner loop runs every row (one shape); rows that stopped must still keep their
    embedding, so the batch gives what the plain path (active rows only) gives, up to the float noise of a
    different batch size (see test_batched_null_text_equals_single_runs for the 5e-4 tolerance)."""
    config = InversionConfig(method="null-text", steps=5, null_text=NullTextConfig(
        inner_steps=5, early_stop=5.5e-4, early_stop_growth=0.0))  # splits the batch: row 0 stops first
    plain = invert(tiny_model, session_photos, photo_prompts, config, disable=True)
    model = copy_of(tiny_model)
    apply_speed(model, SpeedOptions(compile="default", backend="aot_eager"))
    shapes = []
    compiled = model.fast_unet.compiled
    model.fast_unet.compiled = lambda x, *a, **k: shapes.append(x.shape[0]) or compiled(x, *a, **k)
    fast = invert(model, session_photos, photo_prompts, config, disable=True)
    assert set(shapes) == {3, 6}  # the whole batch, or both guidance halves of it: never a subset
    for got, want in zip(fast, plain):
        torch.testing.assert_close(got.nulls, want.nulls, rtol=0, atol=5e-4)
        torch.testing.assert_close(got.x_T, want.x_T, rtol=0, atol=1e-5)


class _Counting:
    """Wraps torch's attention kernels (SDPA and diffusers' explicit scores) and records how many
    (batch x heads) rows each call computed at once."""

    def __init__(self, monkeypatch):
        from diffusers.models.attention_processor import Attention

        self.rows = []
        sdpa, scores = torch.nn.functional.scaled_dot_product_attention, Attention.get_attention_scores

        def counted_sdpa(query, *args, **kwargs):
            self.rows.append(query.shape[:-2].numel())
            return sdpa(query, *args, **kwargs)

        def counted_scores(attn, query, *args, **kwargs):
            self.rows.append(query.shape[0])
            return scores(attn, query, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)
        monkeypatch.setattr(Attention, "get_attention_scores", counted_scores)

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows


def test_attention_slicing_holds_during_prompt_to_prompt(tiny_model, plain, monkeypatch):
    """--attention-slicing used to be dropped for the whole P2P edit (the controlled processors replaced the
    sliced ones): the controlled layers must slice too, and give the unsliced edit."""
    record, targets = plain[0], ["a photo of a dog"]
    counting = _Counting(monkeypatch)
    unsliced = edit_p2p(tiny_model, record, targets, disable=True)
    unsliced_rows = counting.take()
    model = copy_of(tiny_model)
    processors = model.unet.attn_processors
    try:
        apply_speed(model, SpeedOptions(attention_slicing=True))
        slice_sizes = {p.slice_size for p in model.unet.attn_processors.values()}
        counting.take()
        sliced = edit_p2p(model, record, targets, disable=True)
        sliced_rows = counting.take()
        # the edit put the sliced processors back
        assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    finally:
        model.unet.set_attn_processor(processors)
    assert max(unsliced_rows) > max(slice_sizes)  # without slicing a call takes every (batch x heads) row
    assert len(sliced_rows) > len(unsliced_rows) and max(sliced_rows) <= max(slice_sizes)
    assert np.abs(sliced.edits[0].astype(int) - unsliced.edits[0].astype(int)).max() <= 1
    assert np.abs(sliced.reconstruction.astype(int) - unsliced.reconstruction.astype(int)).max() <= 1


class _Wants:
    """A controller that asks for every layer (or none) and changes nothing."""

    def __init__(self, wants: bool):
        self.answer = wants

    def wants(self, is_cross, queries, step):
        return self.answer

    def edit(self, probs, **kwargs):
        return probs


@pytest.mark.parametrize("slice_size", [None, 1])
@pytest.mark.parametrize("wants", [False, True])
def test_controlled_processor_equals_diffusers_with_query_key_norms(wants, slice_size):
    """With norm_q / norm_k (qk_norm), the controlled processor computes what AttnProcessor2_0 computes, on the
    fused and the explicit path, sliced or not."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from attention.processors import ControlledAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, qk_norm="layer_norm", cross_attention_dim=24).eval()
    with torch.no_grad():  # LayerNorm starts as the identity: make the norms matter
        for norm in (attn.norm_q, attn.norm_k):
            norm.weight.normal_()
            norm.bias.normal_()
    hidden, context = torch.randn(3, 10, 32), torch.randn(3, 7, 24)
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        want = attn(hidden, encoder_hidden_states=context)
        attn.set_processor(ControlledAttnProcessor("up_blocks.0.attn2.processor", _Wants(wants), slice_size))
        got = attn(hidden, encoder_hidden_states=context, step=0)
        attn.norm_q = attn.norm_k = None
        plain = attn(hidden, encoder_hidden_states=context, step=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, want, atol=1e-3)  # the norms change the result: the test can see them
