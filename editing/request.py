"""The typed way into every editing method: one `EditRequest` that the CLI, the batch runner, the benchmarks,
the web page and a notebook all build, checked once, here, when it is made.

Field names are editing.run's long option names (`--cross-replace` -> `cross_replace`), so a YAML config,
a batch manifest entry and a notebook call say the same thing. Values are typed; the command-line spellings
("0.2,0.8", "WORD=2", "L,R,T,B") are accepted too and parsed here, so there is one parser for all of them.
A request says what to do, not how fast: speed switches live on the model (`editing.core.speed`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from attention.controllers import EDIT_MODES, GUIDANCE_UNTIL
from editing.core.errors import UserError
from editing.core.image_io import MAX_IMAGE_PIXELS, Crop
from editing.extent import BY_EXTENT
from editing.null_finetune import DEFAULT_INNER_STEPS
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, FULL_DEPTH
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS

EDIT_METHODS = ("p2p", "null-finetune", "learned-embedding", "imagic", "finetune-embedding")
SOURCE_METHODS = ("p2p", "null-finetune")  # the methods that invert the photo under its source prompt
AUTO_DEPTH = "auto"  # --depth auto: chosen per edit by its extent (editing/extent.py), not a number
AUTO_GUIDANCE = "auto"  # --guidance, --layout-guidance, --cross-replace auto: chosen per edit by its extent
AUTO_MASK = "auto"  # --mask auto: the region where the captions disagree (editing/auto_mask.py), not a file
MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer

Range = float | tuple[float, float]  # a fraction of the steps, or (start, end) fractions


def parse_range(text, what: str) -> Range:
    """0.8 or '0.8' -> 0.8; (0.2, 0.8) or '0.2,0.8' -> (0.2, 0.8); each in [0, 1]."""
    if isinstance(text, bool):
        raise UserError(f"{what} must be a number or START,END, got {text!r}")
    if isinstance(text, (int, float)):
        parts = [float(text)]
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = str(text).split(",")
    try:
        parts = [float(v) for v in parts]
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number or START,END, got {text!r}") from None
    if len(parts) not in (1, 2) or not all(0.0 <= v <= 1.0 for v in parts):  # also refuses nan
        raise UserError(f"{what} must be a fraction in [0, 1] or START,END fractions, got {text!r}")
    if len(parts) == 2 and parts[0] > parts[1]:
        raise UserError(f"{what}: START must not exceed END, got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def parse_pairs(items, what: str) -> dict[str, str]:
    """['cat=2', 'tiger=0.5'] (or a mapping) -> {'cat': '2', 'tiger': '0.5'}."""
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    pairs = {}
    for item in [items] if isinstance(items, str) else items:
        word, sep, value = str(item).partition("=")
        if not sep or not word or not value:
            raise UserError(f"{what} takes WORD=VALUE, got {item!r}")
        pairs[word] = value
    return pairs


def parse_crop(text) -> Crop:
    """'L,R,T,B' (or a Crop, or four integers) -> Crop."""
    if isinstance(text, Crop):
        return text
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        values = [int(v) for v in items]
    except (TypeError, ValueError):
        raise UserError(f"--crop takes four integers L,R,T,B, got {text!r}") from None
    if len(values) != 4:
        raise UserError(f"--crop takes four integers L,R,T,B, got {text!r}")
    return Crop(*values)


def parse_list(text, what: str, kind=float) -> list:
    """'0,0.5,1' (or a list) -> [0.0, 0.5, 1.0]."""
    items = list(text) if isinstance(text, (list, tuple)) else [v for v in str(text).split(",") if v.strip()]
    try:
        return [kind(v) for v in items]
    except (TypeError, ValueError):
        raise UserError(f"{what} takes a comma-separated list of {kind.__name__}s, got {text!r}") from None


def _finite(value, what: str, low: float | None = None, high: float | None = None, kind=float):
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be {'a whole number' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise UserError(f"{what} must be a whole number, got {value!r}")
    if not math.isfinite(number):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
        raise UserError(f"{what} must be {bounds}, got {value!r}")
    return number


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"  # any case, as typed


def _auto_or_finite(value, what: str, low: float | None, high: float | None) -> float | str:
    """"auto" or a finite number within the bounds."""
    return "auto" if _is_auto(value) else _finite(value, what, low, high)


@dataclass(frozen=True)
class EditRequest:
    """One edit of one photo: the prompts, the method and every option that changes its pixels.

    Build it in Python (`EditRequest(source_prompt=..., target_prompts=[...], method="p2p")`) or from the
    command line (`EditRequest.from_options(vars(args))`); it is checked when made, and a bad value raises a
    UserError that names the option.
    """

    target_prompts: tuple[str, ...]
    source_prompt: str | None = None  # a caption of the photo (p2p, null-finetune)
    method: str = "p2p"
    inversion: str = "null-text"
    steps: int = DEFAULT_STEPS
    guidance: float | str = DEFAULT_GUIDANCE  # or "auto" (p2p: by the edit's extent, editing/extent.py)
    depth: float | str = FULL_DEPTH  # p2p: invert (and edit) through the last depth * steps steps only; or "auto"
    inner_steps: int = NullTextConfig.inner_steps  # null-text Adam steps per timestep
    seed: int = 0
    # Prompt-to-Prompt
    edit: str = "auto"  # replace (same word count), refine or auto
    cross_replace: Range | str = 0.8  # fraction of steps with injected cross-attention; or "auto"
    cross_replace_word: Mapping[str, Range] = field(default_factory=dict)  # per-word ranges
    self_replace: Range = 0.4  # fraction of steps with injected self-attention
    reweight: Mapping[str, float] = field(default_factory=dict)
    blend_words: tuple[str, ...] | None = None  # local blend words
    blend_subtract: tuple[str, ...] = ()
    blend_threshold: float = 0.3  # the reference's local blend threshold
    blend_start: float = 0.2  # fraction of steps before blending starts
    mask: str | None = None  # a mask image (white = may change) instead of blend words, or "auto"
    # cross-attention guidance's step on the edit latents (attention/guidance.py); 0: off; or "auto"
    layout_guidance: float | str = 0.0
    layout_guidance_until: float = GUIDANCE_UNTIL  # the fraction of the steps it guides
    # null-finetune, learned-embedding, imagic (None: the method's own default)
    finetune_steps: int | None = None
    finetune_inner: int = DEFAULT_INNER_STEPS
    eta: float | None = None
    interp_steps: int | None = None
    embed_steps: int | None = None
    embed_lr: float | None = None
    embed_lambda: float | None = None
    unet_steps: int | None = None
    unet_lr: float | None = None
    gradient_checkpointing: bool = False
    sweep: bool = False
    sweep_eta: Any = "0,0.2,0.4,0.6,0.8,1"
    sweep_interp: Any = "auto"
    sweep_k: Any = "auto"
    # the photo and its records
    image: str = ""  # names the photo in summary.json only
    crop: Crop = Crop()
    save_inversion: str | None = None
    inversion_file: str | None = None
    attention_maps: bool = False
    quiet: bool = False  # no progress bars
    max_pixels: int = MAX_IMAGE_PIXELS  # the most pixels a photo or mask header may claim (reading, not pixels)

    def __post_init__(self) -> None:
        put = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen: normalise once)
        targets = (self.target_prompts,) if isinstance(self.target_prompts, str) else tuple(self.target_prompts or ())
        put("target_prompts", tuple(str(t) for t in targets))
        put("cross_replace", AUTO_GUIDANCE if _is_auto(self.cross_replace) else
            parse_range(self.cross_replace, "--cross-replace"))
        put("cross_replace_word", {w: parse_range(v, f"--cross-replace-word {w}=")
                                   for w, v in parse_pairs(self.cross_replace_word, "--cross-replace-word").items()})
        put("self_replace", parse_range(self.self_replace, "--self-replace"))
        put("reweight", {w: _finite(v, f"--reweight {w}=") for w, v in parse_pairs(self.reweight, "--reweight").items()})
        for name in ("blend_words", "blend_subtract"):
            value = getattr(self, name)
            if value is not None:
                put(name, (value,) if isinstance(value, str) else tuple(str(v) for v in value))
        put("crop", parse_crop(self.crop))
        for name, low, high in (("steps", 1, None), ("inner_steps", 1, None), ("finetune_inner", 1, None),
                                ("seed", 0, MAX_SEED), ("finetune_steps", 0, None), ("interp_steps", 0, None),
                                ("embed_steps", 1, None), ("unet_steps", 0, None), ("max_pixels", 1, None)):
            put(name, _finite(getattr(self, name), f"--{name.replace('_', '-')}", low, high, int))
        for name, low, high in (("blend_threshold", 0, 1), ("blend_start", 0, 1), ("layout_guidance_until", 0, 1),
                                ("eta", None, None), ("embed_lr", 0, None), ("embed_lambda", 0, None),
                                ("unet_lr", 0, None)):
            put(name, _finite(getattr(self, name), f"--{name.replace('_', '-')}", low, high))
        put("guidance", _auto_or_finite(self.guidance, "--guidance (a number, or auto)", 0, None))
        put("layout_guidance", _auto_or_finite(self.layout_guidance, "--layout-guidance (a number, or auto)", 0, None))
        put("depth", _auto_or_finite(self.depth, "--depth (a fraction of the steps, or auto)", 0, 1))
        self._check()

    def _check(self) -> None:
        if self.method not in EDIT_METHODS:
            raise UserError(f"unknown method {self.method!r}: choose one of {', '.join(EDIT_METHODS)}")
        if self.inversion not in INVERSIONS:
            raise UserError(f"unknown inversion {self.inversion!r}: choose one of {', '.join(INVERSIONS)}")
        if self.edit not in EDIT_MODES:
            raise UserError(f"unknown edit {self.edit!r}: choose one of {', '.join(EDIT_MODES)}")
        if not self.target_prompts:
            raise UserError("give at least one target prompt (--target-prompt)")
        if any(not t.strip() for t in self.target_prompts):
            raise UserError("a --target-prompt is empty")
        if self.inversion_file and self.save_inversion:
            raise UserError("give either --inversion-file (reuse) or --save-inversion (save), not both")
        if self.method in SOURCE_METHODS and not (self.source_prompt or "").strip():
            raise UserError(f"--method {self.method} needs --source-prompt (a caption of the photo)")
        if self.method not in SOURCE_METHODS and (self.inversion_file or self.save_inversion):
            raise UserError(f"--method {self.method} inverts under a learned embedding made per edit: "
                            "--inversion-file/--save-inversion apply to p2p and null-finetune")
        if self.method in ("null-finetune", "finetune-embedding") and self.inversion == "direct":
            raise UserError(f"{self.method} needs --inversion null-text, negative-prompt or ddim (DirectInversion's "
                            "offsets correct the source branch only)")
        for name in ("finetune_steps", "interp_steps"):
            value = getattr(self, name)
            if value is not None and value > self.steps:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and --steps ({self.steps}), got {value}")
        if self.mask and self.method != "p2p":
            raise UserError(f"--mask is P2P's local blend: it applies to --method p2p, not {self.method}")
        if self.layout_guidance and self.method != "p2p":
            raise UserError(f"--layout-guidance guides P2P's edit rows: it applies to --method p2p, not {self.method}")
        if self.depth == 0:
            raise UserError("--depth must be more than 0 (a fraction of the steps, up to 1), got 0")
        if self.depth != FULL_DEPTH and self.method != "p2p":
            raise UserError(f"--depth inverts part of the way for P2P: it applies to --method p2p, not {self.method}")
        if self.depth != FULL_DEPTH and self.inversion_file:
            raise UserError("--depth is the inversion's: a reused --inversion-file keeps the depth it was made with")
        if self.guidance == AUTO_GUIDANCE:
            self._check_by_extent("--guidance auto")
            if self.inversion_file:
                raise UserError("--guidance auto is chosen before the photo is inverted; a reused --inversion-file "
                                "keeps the guidance it was made with: give a number")
        if self.layout_guidance == AUTO_GUIDANCE:
            self._check_by_extent("--layout-guidance auto")
        if self.cross_replace == AUTO_GUIDANCE:
            self._check_by_extent("--cross-replace auto")
        if self.blend_words is not None and not self.blend_words:
            raise UserError("--blend-words needs at least one word")

    def _check_by_extent(self, option: str) -> None:
        if self.method != "p2p":
            raise UserError(f"{option} is chosen by the extent of a P2P edit: it applies to --method p2p, not "
                            f"{self.method}")
        if self.inversion not in BY_EXTENT:
            raise UserError(f"{option} is measured for --inversion {' and '.join(BY_EXTENT)} only; give a number "
                            f"with --inversion {self.inversion}")

    @property
    def edits_by_extent(self) -> bool:
        """Whether any setting is chosen when the edit runs, by its mask (editing/extent.py)."""
        return self.inverts_by_extent or AUTO_GUIDANCE in (self.layout_guidance, self.cross_replace)

    @property
    def inverts_by_extent(self) -> bool:
        """Whether the source inversion's settings (depth, guidance) are chosen when the edit runs, by its mask."""
        return self.depth == AUTO_DEPTH or self.guidance == AUTO_GUIDANCE

    @property
    def mask_file(self) -> str | None:
        """The mask image the request reads (None for no mask and for --mask auto)."""
        return None if self.mask == AUTO_MASK else self.mask

    @property
    def uses_source(self) -> bool:
        """Whether the method inverts the photo under its source prompt (and can reuse a saved inversion)."""
        return self.method in SOURCE_METHODS

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "EditRequest":
        """A request from editing.run's options by long name (argparse's `vars(args)`, a config file, a
        manifest entry); options that are not the request's (--out, --model, --device, ...) are ignored.
        editing.run's `--target-prompt` (repeatable) may be given as `target_prompt`."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in options.items() if k in names and v is not None}
        if "target_prompts" not in values and options.get("target_prompt") is not None:
            values["target_prompts"] = options["target_prompt"]
        values.setdefault("target_prompts", ())
        return cls(**values)

    def replace(self, **changes) -> "EditRequest":
        """A copy with some options changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every option as JSON-ready values (what identifies the edit's pixels, plus the bookkeeping)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Crop):
                value = list(dataclasses.astuple(value))
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            out[f.name] = value
        return out
