"""The fast path's switches on a loaded model: a compiled UNet (optionally with CUDA graphs), attention
slicing and VAE tiling/slicing.

Each switch changes how the numbers are computed, never which numbers: tests run every one against the
plain path on the same inputs. Half precision is the other half of the fast path and is chosen when the
model is loaded (`--dtype fp16/bf16`: the UNet in half precision; embeddings, optimiser state and losses
stay fp32).

Compilation (`--compile`): `torch.compile` of the UNet, used for every call that no attention controller
watches (DDIM inversion, the null-text and embedding optimisers, reconstruction, plain generation).
Prompt-to-Prompt's controlled calls stay eager: the controller's Python state changes at every step, which
a captured graph cannot follow. Shapes are static (`dynamic=False`); each new batch shape compiles once and
stays in torch's cache for the life of the process, so the first call of a shape is slow and the rest fast.
`graphs` adds CUDA graphs (`mode="reduce-overhead"`), which is where a batch-1 UNet stops being bound by
kernel launches; on a CPU it is plain compilation. If compilation fails (no C++ compiler for the CPU
backend, an unsupported operator), the model says why once and runs eager from then on.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from editing.core.errors import UserError

COMPILE_MODES = {"off": None, "default": "default", "graphs": "reduce-overhead"}


@dataclass(frozen=True)
class SpeedOptions:
    compile: str = "off"  # off | default | graphs
    attention_slicing: bool = False  # attention in slices of heads: less peak memory, a little slower
    vae_tiling: bool = False  # VAE in overlapping tiles and one image at a time: large images on small cards
    backend: str = "inductor"  # torch.compile's backend; tests use "aot_eager" (no C++ build)

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise UserError(f"unknown --compile {self.compile!r}: choose one of {', '.join(COMPILE_MODES)}")


class CompiledUNet:
    """`torch.compile(unet)` that falls back to the eager UNet, once and for good, if compilation fails."""

    def __init__(self, unet: torch.nn.Module, mode: str, backend: str = "inductor"):
        self.eager = unet
        self.mode = mode
        options = {"mode": mode} if backend == "inductor" else {}
        self.compiled = torch.compile(unet, backend=backend, dynamic=False, **options)
        self.failed: str | None = None

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                if self.mode != "reduce-overhead":
                    return self.compiled(*args, **kwargs)
                # CUDA graphs replay into the same output buffers: every call starts a new step, and its
                # result is copied out before a later replay could overwrite it (out_cond of null-text
                # inversion lives across a whole timestep's inner steps)
                torch.compiler.cudagraph_mark_step_begin()
                result = self.compiled(*args, **kwargs)
                return type(result)(sample=result.sample.clone())
            except (torch.cuda.OutOfMemoryError, KeyboardInterrupt):
                raise
            except Exception as exc:  # the backends raise many types (C++ build, lowering, graph capture)
                root = exc
                while getattr(root, "inner_exception", None) or root.__cause__:  # dynamo wraps the real error
                    root = getattr(root, "inner_exception", None) or root.__cause__
                lines = [line for line in str(root).splitlines() if line.strip()]
                self.failed = f"{type(root).__name__}: {lines[0] if lines else ''}"
                print(f"warning: the compiled UNet failed to build ({self.failed[:200]}); running it eager",
                      file=sys.stderr)
        return self.eager(*args, **kwargs)


def apply_speed(model, options: SpeedOptions) -> None:
    """Switch the fast path on for `model` (in place)."""
    mode = COMPILE_MODES[options.compile]
    model.fast_unet = None if mode is None else CompiledUNet(model.unet, mode, options.backend)
    if options.attention_slicing:
        model.unet.set_attention_slice("auto")
    if options.vae_tiling:
        model.vae.enable_tiling()
        model.vae.enable_slicing()


@contextmanager
def unet_checkpointing(unet, on: bool = True):
    """Inside the block the UNet recomputes its activations in the backward pass instead of keeping them
    (diffusers' gradient checkpointing): less memory wherever gradients flow through the UNet (null-text
    inversion, the embedding optimiser, Imagic's fine-tuning), one more forward per backward, the same
    numbers. Measured on the meta device for SDXL at 1024 px: a null-text step keeps 0.6 GiB instead of
    10.9 (benchmarks/sdxl_memory.py). Restored on exit."""
    if not on or unet.is_gradient_checkpointing:
        yield
        return
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


def speed_summary(model) -> dict:
    """What a run's summary.json records of the fast path."""
    compiled = model.fast_unet
    return {"compile": "off" if compiled is None else compiled.mode,
            "compile_failed": None if compiled is None else compiled.failed}


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speed and memory (results unchanged)")
    g.add_argument("--compile", default="off", choices=tuple(COMPILE_MODES),
                   help="torch.compile the UNet for the calls no attention controller watches; graphs: with "
                        "CUDA graphs (GPU). The first call of each shape compiles (default off)")
    g.add_argument("--attention-slicing", action="store_true", help="attention in slices: less GPU memory")
    g.add_argument("--vae-tiling", action="store_true", help="VAE in tiles, one image at a time: less memory")


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    """The switches of a parser that took `add_speed_options`."""
    return SpeedOptions(compile=args.compile, attention_slicing=args.attention_slicing, vae_tiling=args.vae_tiling)
