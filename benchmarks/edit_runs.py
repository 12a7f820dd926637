"""Running editing.run's methods over many photos for the quality benchmarks: method specs, the
per-edit request, and batched inversions shared by the edits of a run.

A method spec is METHOD[:INVERSION]: METHOD one of editing.run's p2p, null-finetune, learned-embedding,
imagic; INVERSION one of null-text, negative-prompt, direct, ddim (default null-text, editing.run's
default). Imagic samples from fresh noise and takes no inversion.
"""
from __future__ import annotations

import argparse
import hashlib
import shlex

import numpy as np

from editing.core.errors import UserError
from editing.request import EDIT_METHODS, EditRequest
from editing.run import build_parser, request_from_args
from editing.core.speed import add_speed_options
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, invert
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS

DEFAULT_INVERSION = "null-text"  # editing.run's --inversion default
NO_INVERSION = ("imagic",)  # methods that never invert the photo


def add_run_options(p: argparse.ArgumentParser, batch_size: int, out: str) -> None:
    """The sampling, device and output options every quality command shares."""
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help=f"guidance scale (default {DEFAULT_GUIDANCE})")
    p.add_argument("--inner-steps", type=int, default=NullTextConfig.inner_steps, help="NTI inner steps (10)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"photos inverted together (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="editing.run's --seed (default 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", default=out, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_speed_options(p)


def parse_method(spec: str) -> tuple[str, str | None]:
    """'p2p:direct' -> ('p2p', 'direct'); 'p2p' -> ('p2p', 'null-text'); 'imagic' -> ('imagic', None)."""
    method, _, inversion = str(spec).partition(":")
    if method not in EDIT_METHODS:
        raise UserError(f"unknown method {spec!r}: give METHOD[:INVERSION] with METHOD one of "
                        f"{', '.join(EDIT_METHODS)}, e.g. p2p:direct")
    if method in NO_INVERSION:
        if inversion:
            raise UserError(f"{method} samples from fresh noise and takes no inversion: give {method!r}, not {spec!r}")
        return method, None
    inversion = inversion or DEFAULT_INVERSION
    if inversion not in INVERSIONS:
        raise UserError(f"unknown inversion {inversion!r} in {spec!r}: choose one of {', '.join(INVERSIONS)}")
    return method, inversion


def method_name(method: str, inversion: str | None) -> str:
    """The canonical spec, also the folder name of the method's edits: 'p2p:direct', 'imagic'."""
    return method if inversion is None else f"{method}:{inversion}"


def method_label(method: str, inversion: str | None, p2p_edit: str | None = None) -> str:
    """A reader's name: 'null-text + P2P replace', 'null-text + null-text fine-tuning', 'imagic'."""
    if method == "p2p":
        return f"{inversion} + P2P" + (f" {p2p_edit}" if p2p_edit else "")
    if method == "null-finetune":
        return f"{inversion} + null-text fine-tuning"
    if method == "learned-embedding":
        return f"learned embedding ({inversion})"
    return method


def split_run_args(text: str | None) -> list[str]:
    """--run-args "--embed-steps 100 --unet-steps 100" -> a list of editing.run flags."""
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise UserError(f"--run-args {text!r} cannot be split into options: {exc}") from None


def edit_args(method: str, inversion: str | None, image: str, source: str, target: str,
              options: list[str]) -> EditRequest:
    """The EditRequest of one edit: the method spec, the prompts, and editing.run flags (--steps, --run-args ...)
    read by editing.run's own parser. image only names the photo in summary.json."""
    argv = ["--image", image, "--source-prompt", source, "--target-prompt", target, "--method", method,
            "--quiet", *options]
    if inversion is not None:
        argv += ["--inversion", inversion]
    try:
        return request_from_args(build_parser().parse_args(argv))
    except UserError as exc:
        raise UserError(f"method {method_name(method, inversion)}: {exc} (options passed to editing.run: "
                        f"{shlex.join(options)})") from None


def image_key(image: np.ndarray, prompt: str) -> tuple[str, str]:
    return prompt, hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class BatchedInversions:
    """An invert_source for editing.dispatch.run_edit that inverts photos batch_size at a time.

    The first request for one of the photos inverts its whole batch with that request's settings; the
    other photos of the batch are then served from the cache (each record handed out once). A photo
    that is not in the list is inverted alone.
    """

    def __init__(self, images: list[np.ndarray], prompts: list[str], batch_size: int):
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        self.images, self.prompts, self.batch_size = images, prompts, batch_size
        self.keys = [image_key(i, p) for i, p in zip(images, prompts)]
        self.cache = {}

    def __call__(self, model, image: np.ndarray, prompt: str, config, disable: bool):
        key = (image_key(image, prompt), repr(config))
        if key not in self.cache:
            if key[0] not in self.keys:
                return invert(model, image[None], [prompt], config, disable=disable)[0]
            index = self.keys.index(key[0])
            first = index - index % self.batch_size
            batch = range(first, min(first + self.batch_size, len(self.images)))
            records = invert(model, np.stack([self.images[i] for i in batch]), [self.prompts[i] for i in batch],
                             config, disable=disable)
            for i, record in zip(batch, records):
                self.cache[(self.keys[i], repr(config))] = record
        return self.cache.pop(key)
