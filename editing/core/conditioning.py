"""Text conditioning: one type with two implementations.

SD 1.x/2.x condition the UNet on one tensor, the text encoder's output (B, L, D). SDXL conditions it on
three: the token embeddings (B, 77, 2048), a pooled text embedding (B, 1280) and the micro-conditioning
`time_ids` (B, 6): original size, crop top-left, target size. Every method of the toolkit handles the
conditioning with a handful of tensor operations only (concatenate or stack rows, pick rows, expand a row
to a batch, move, detach, interpolate e_new = eta e_tgt + (1 - eta) e_opt, optimise with Adam).

The choice: SD keeps the plain tensor (its paths, and the tests that pin their numbers, are unchanged), and
SDXL's `TextEmbeds` behaves like a tensor for exactly those operations: indexing and `expand` act on the
leading (batch or step) dimensions of all three parts, arithmetic on the embeddings (the time ids describe
the image and are carried along), and `torch.cat` / `torch.stack` dispatch to it through
`__torch_function__`. So the sampling loop, the inversion, the null-text and embedding optimisers take
either without a single `if sdxl:`. What a tensor cannot express is named here once: `trainable` (the
leaves an optimiser updates), `is_per_step` (a per-step list versus one conditioning for every step) and
`named_tensors` / `from_named` (how a record stores it). A full wrapper type for SD as well was rejected:
it would touch every SD path for no behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # eq=False: == of tensors has no single truth value
class TextEmbeds:
    """SDXL's conditioning: tokens (*lead, L, D), pooled (*lead, P), time_ids (*lead, 6).

    `*lead` is the batch (B,), or (steps,) / (B, steps) for per-step nulls. `shape` is the tokens' shape,
    so code written for a (B, L, D) tensor reads the batch size from it."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor

    def __post_init__(self):
        lead = self.tokens.shape[:-2]
        if self.pooled.shape[:-1] != lead or self.time_ids.shape[:-1] != lead:
            raise ValueError(f"conditioning parts disagree on their leading dimensions: tokens "
                             f"{tuple(self.tokens.shape)}, pooled {tuple(self.pooled.shape)}, "
                             f"time_ids {tuple(self.time_ids.shape)}")

    def map(self, fn) -> "TextEmbeds":
        return TextEmbeds(fn(self.tokens), fn(self.pooled), fn(self.time_ids))

    # --- what code written for a tensor reads
    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.dtype

    def dim(self) -> int:
        return self.tokens.dim()

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # --- rows: indices act on the leading dimensions of every part
    def __getitem__(self, index) -> "TextEmbeds":
        return self.map(lambda t: t[index])

    def __setitem__(self, index, value: "TextEmbeds") -> None:
        with torch.no_grad():
            for part, new in zip(self.parts(), value.parts()):
                part[index] = new

    def expand(self, *sizes) -> "TextEmbeds":
        """Only the batch may grow (`expand(rows, -1, -1)` or `expand(rows, L, D)` as for a (1, L, D) tensor)."""
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)) else sizes
        batch = sizes[0]
        return self.map(lambda t: t.expand(batch, *t.shape[1:]))

    def expand_as(self, other) -> "TextEmbeds":
        return self.expand(other.shape[0])

    # --- copies and moves
    def to(self, *args, **kwargs) -> "TextEmbeds":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "TextEmbeds":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "TextEmbeds":
        return self.map(torch.Tensor.clone)

    def float(self) -> "TextEmbeds":
        return self.map(torch.Tensor.float)

    def cpu(self) -> "TextEmbeds":
        return self.map(torch.Tensor.cpu)

    def contiguous(self) -> "TextEmbeds":
        return self.map(torch.Tensor.contiguous)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tokens, self.pooled, self.time_ids

    # --- interpolation: the embeddings mix, the time ids (a property of the image) are carried along
    def __mul__(self, scalar) -> "TextEmbeds":
        return TextEmbeds(self.tokens * scalar, self.pooled * scalar, self.time_ids)

    __rmul__ = __mul__

    def __add__(self, other: "TextEmbeds") -> "TextEmbeds":
        return TextEmbeds(self.tokens + other.tokens, self.pooled + other.pooled, self.time_ids)

    def __sub__(self, other: "TextEmbeds") -> "TextEmbeds":
        return TextEmbeds(self.tokens - other.tokens, self.pooled - other.pooled, self.time_ids)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """torch.cat / torch.stack of TextEmbeds: part by part, along the same dimension."""
        kwargs = kwargs or {}
        if func not in (torch.cat, torch.stack, torch.concat):
            raise TypeError(f"{func.__name__} is not defined for SDXL conditioning (TextEmbeds)")
        items, rest = args[0], args[1:]
        if not all(isinstance(e, TextEmbeds) for e in items):
            raise TypeError("cannot join SDXL conditioning (TextEmbeds) with plain tensors")
        dim = rest[0] if rest else kwargs.get("dim", 0)
        if dim < 0:
            raise ValueError("join TextEmbeds along a leading dimension counted from the front")
        return TextEmbeds(*(func([e.parts()[k] for e in items], dim) for k in range(3)))


Embedding = torch.Tensor | TextEmbeds


def is_per_step(e) -> bool:
    """A per-step sequence of conditionings, as opposed to one conditioning for every step."""
    return not isinstance(e, (torch.Tensor, TextEmbeds))


def trainable(e: Embedding, pooled: bool = False) -> list[torch.Tensor]:
    """The leaf tensors an optimiser updates: the tensor itself, or SDXL's tokens (and the pooled embedding
    when asked). The time ids are never trained: they state the image's size and crop."""
    if isinstance(e, TextEmbeds):
        return [e.tokens, e.pooled] if pooled else [e.tokens]
    return [e]


def named_tensors(name: str, e: Embedding) -> dict[str, torch.Tensor]:
    """How a record stores a conditioning: `name` for the tensor or the tokens, plus `name_pooled` and
    `name_time_ids` for SDXL."""
    if isinstance(e, TextEmbeds):
        return {name: e.tokens, f"{name}_pooled": e.pooled, f"{name}_time_ids": e.time_ids}
    return {name: e}


def from_named(tensors: dict[str, torch.Tensor], name: str) -> Embedding | None:
    """The inverse of `named_tensors` (None when the record has no `name`)."""
    if name not in tensors:
        return None
    if f"{name}_pooled" in tensors:
        return TextEmbeds(tensors[name], tensors[f"{name}_pooled"], tensors[f"{name}_time_ids"])
    return tensors[name]

