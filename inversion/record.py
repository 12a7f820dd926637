"""The Inversion record: what inverting one photo produced, saved as one safetensors file (no pickle).

A record is tied to the exact image pixels, prompt, model, method and parameters by a fingerprint, so a
stale cache can never be reused by accident: loading it for anything else is an error naming what differs.
The file also verifies itself: a SHA-256 digest over every tensor's bytes and every metadata entry is written
at save and checked at load, so a file changed after it was saved (an edited prompt, method or parameter, a
swapped tensor) is refused, not used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from editing.core.conditioning import from_named, named_tensors
from editing.core.ddim import FULL_DEPTH, DDIMSchedule, run_steps
from editing.core.errors import UserError
from editing.core.files import atomic_path
from editing.core.sampling import Anchors

METHODS = ("null-text", "negative-prompt", "direct", "ddim")
# 2: DirectInversion records always carry their trajectory (the anchors); 3: a digest of the whole content
FORMAT_VERSION = 3
DIGEST_KEY = "digest"  # the metadata entry holding content_digest()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def image_digest(image: np.ndarray) -> str:
    """Hash of the preprocessed pixels (uint8 H, W, 3) with their shape."""
    return _digest(str(image.shape).encode() + np.ascontiguousarray(image).tobytes())


def fingerprint_parts(image: np.ndarray, prompt: str, model_fingerprint: str, method: str,
                      params: dict) -> dict[str, str]:
    return {
        "image": image_digest(image),
        "prompt": _digest(prompt.encode()),
        "model": model_fingerprint,
        "method": method,
        "params": _digest(json.dumps(params, sort_keys=True).encode()),
    }


def embedding_digest(embedding) -> str:
    """Hash of a conditional embedding's fp32 values (every part of SDXL's), for records inverted under a
    learned embedding."""
    parts = named_tensors("embedding", embedding).values()
    return _digest(b"".join(p.detach().float().cpu().contiguous().numpy().tobytes() for p in parts))


def combine(parts: dict[str, str]) -> str:
    return _digest(json.dumps(parts, sort_keys=True).encode())


def content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and every metadata entry but the digest itself."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        h.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    h.update(json.dumps({k: v for k, v in meta.items() if k != DIGEST_KEY}, sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class Inversion:
    """One inverted image. Tensors are per image (no batch dimension), on the CPU or the model's device."""

    method: str
    prompt: str
    x_T: torch.Tensor  # (C, h, w) the start latent of sampling
    params: dict  # steps, guidance and the method's own settings
    parts: dict[str, str]  # fingerprint components: image, prompt, model, method, params
    nulls: torch.Tensor | None = None  # (steps, L, D) null-text inversion's u_i
    offsets: torch.Tensor | None = None  # (steps, C, h, w) DirectInversion's per-step corrections
    trajectory: torch.Tensor | None = None  # (steps + 1, C, h, w) x_0 .. x_T: always for direct, else on request
    cond: torch.Tensor | None = None  # (L, D) a learned conditional embedding used instead of the prompt's
    timings_s: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return combine(self.parts)

    @property
    def steps(self) -> int:
        """The DDIM steps run (one null, offset or trajectory step each): all of params' steps at full depth."""
        return run_steps(int(self.params["steps"]), self.depth)

    @property
    def depth(self) -> float:
        return float(self.params.get("depth", FULL_DEPTH))

    def schedule(self, scheduler) -> DDIMSchedule:
        """The DDIM schedule the photo was inverted on, and that sampling it must follow."""
        return DDIMSchedule.from_scheduler(scheduler, int(self.params["steps"]), self.depth)

    @property
    def guidance(self) -> float:
        return float(self.params["guidance"])

    def source_embedding(self, model) -> torch.Tensor:
        """The conditional embedding (1, L, D) the photo was inverted under: the learned one, else the prompt's."""
        if self.cond is not None:
            return self.cond[None].to(model.device)
        return model.encode_prompts([self.prompt])

    def uncond_schedule(self, source_embedding: torch.Tensor, empty_embedding: torch.Tensor, rows: int = 1):
        """The unconditional embedding per sampling step that reproduces the image, (rows, L, D): one tensor
        for every step, or a list with one per step; the same on each of `rows` rows sampling this record.

        null-text: the learned u_i; negative-prompt: the source prompt's embedding (Miyake et al.);
        direct and ddim: the empty prompt's embedding.
        """
        expand = lambda u: u.expand(rows, *u.shape[1:])  # noqa: E731  (1, L, D) -> (rows, L, D)
        if self.method == "null-text":
            return [expand(u[None].to(source_embedding.device)) for u in self.nulls]
        return expand(source_embedding if self.method == "negative-prompt" else empty_embedding)

    def anchor_latents(self) -> list[torch.Tensor]:
        """DirectInversion: the inverted latent after each sampling step, x_{t-1}^inv, one (C, h, w) per step."""
        if self.method != "direct":
            raise ValueError(f"only DirectInversion records anchor the source branch, not {self.method}")
        if self.trajectory is None:
            raise UserError("this DirectInversion record lacks its trajectory (the anchors): invert the photo again")
        return [self.trajectory[self.steps - i - 1] for i in range(self.steps)]

    def verify(self, image: np.ndarray, prompt: str, model_fingerprint: str) -> None:
        """Refuse a record made for another image, prompt or model (a clear error naming what differs)."""
        expected = {"image": image_digest(image), "prompt": _digest(prompt.encode()), "model": model_fingerprint}
        wrong = [k for k, v in expected.items() if self.parts.get(k) != v]
        if wrong:
            raise UserError(f"the inversion file was made for a different {' and '.join(wrong)} "
                            f"(method {self.method}, prompt {self.prompt!r}); invert again or pass the "
                            f"matching {'/'.join(wrong)}")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (editing.core.files: a temporary name in the same folder, then a rename)."""
        path = Path(path)
        tensors = {"x_T": self.x_T}
        for name in ("nulls", "offsets", "trajectory", "cond"):
            if getattr(self, name) is not None:  # SDXL's nulls and cond: + name_pooled, name_time_ids
                tensors.update(named_tensors(name, getattr(self, name)))
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {"format": str(FORMAT_VERSION), "method": self.method, "prompt": self.prompt,
                "params": json.dumps(self.params), "parts": json.dumps(self.parts),
                "timings_s": json.dumps(self.timings_s), "fingerprint": self.fingerprint}
        meta[DIGEST_KEY] = content_digest(tensors, meta)
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Inversion":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"inversion file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise UserError(f"{path} is not a readable inversion file (safetensors): {exc}") from exc
        if meta.get("format") != str(FORMAT_VERSION) or "x_T" not in tensors:
            found = meta.get("format")
            raise UserError(f"{path} is not an inversion file of this version of the toolkit (format {found}, "
                            f"this version reads {FORMAT_VERSION}): invert the photo again")
        if meta.get(DIGEST_KEY) != content_digest(tensors, meta):
            raise UserError(f"the inversion file was changed after it was saved (its digest does not match its "
                            f"contents): {path}; invert the photo again")
        try:
            record = cls(method=meta["method"], prompt=meta["prompt"], x_T=tensors["x_T"],
                         params=json.loads(meta["params"]), parts=json.loads(meta["parts"]),
                         nulls=from_named(tensors, "nulls"), offsets=tensors.get("offsets"),
                         trajectory=tensors.get("trajectory"), cond=from_named(tensors, "cond"),
                         timings_s=json.loads(meta.get("timings_s", "{}")))
            record._check()
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path} is damaged: {exc}; invert the photo again") from None
        if record.fingerprint != meta.get("fingerprint"):
            raise UserError(f"{path} is damaged: its fingerprint does not match its contents")
        return record

    def _check(self) -> None:
        """ValueError unless the fields hold what this toolkit writes (a foreign writer may get them wrong)."""
        if self.method not in METHODS:
            raise ValueError(f"unknown inversion method {self.method!r}")
        if not isinstance(self.params, dict) or not isinstance(self.parts, dict) or not isinstance(self.prompt, str):
            raise ValueError("params and parts must be mappings, prompt a string")
        steps = self.steps
        if steps < 1 or self.x_T.ndim != 3:
            raise ValueError(f"steps {steps} or x_T of shape {tuple(self.x_T.shape)} is impossible")
        if self.method == "null-text" and (self.nulls is None or len(self.nulls) != steps):
            raise ValueError("a null-text record needs one null embedding per step")
        if self.trajectory is not None and len(self.trajectory) != steps + 1:
            raise ValueError("the trajectory must hold steps + 1 latents")


def source_anchors(records: list[Inversion], batch: int, device) -> Anchors | None:
    """Anchors for a batch whose first len(records) rows are the records' source branches: the rows of
    DirectInversion records are held on their inversion trajectories; every other row runs free."""
    direct = [r.method == "direct" for r in records]
    if not any(direct):
        return None
    per_record = [r.anchor_latents() if d else None for r, d in zip(records, direct)]
    steps = records[direct.index(True)].steps
    template = records[direct.index(True)].trajectory[0]
    latents = []
    for i in range(steps):
        rows = [p[i] if p is not None else torch.zeros_like(template) for p in per_record]
        rows += [torch.zeros_like(template)] * (batch - len(records))
        latents.append(torch.stack(rows).to(device))
    rows = torch.tensor(direct + [False] * (batch - len(records)), device=device)
    return Anchors(rows=rows, latents=latents)
