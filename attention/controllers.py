"""Prompt-to-Prompt controllers (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control").

A controller sees the attention probabilities of the layers it `wants`, through `edit(...)`, and the new
latent after every sampling step, through `after_step(i, x)`. The UNet batch is laid out as the sampling
loop builds it: [uncond rows; cond rows] under classifier-free guidance, and within each half row 0 is the
source prompt, rows 1.. the targets. Controllers edit the cond rows only, as the reference does.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attention import alignment
from attention.processors import attention_control
from editing.core.errors import UserError

STORE_MAX_TOKENS = 32 * 32  # maps up to 32x32 queries are averaged (the reference's memory bound)
SELF_REPLACE_MAX_TOKENS = 16 * 16  # self-attention is injected only at <= 16x16 (the reference's choice)
EDIT_MODES = ("replace", "refine", "auto")
# layout guidance (attention/guidance.py) follows the maps of at most 32x32 queries: at SD's 512 px the levels
# coarser than the finest (64 x 64); a model's attention_limits() sets it by its own latent size
GUIDANCE_MAX_TOKENS = 32 * 32
# guide the first half of the steps: on the toy world (first 30 scenes) guiding every step held the layout and
# lost the edit (made 0.73 of the time against 0.97), guiding half held it as well and kept it (0.93; RESULTS.md)
GUIDANCE_UNTIL = 0.5


def cond_rows(probs: torch.Tensor, heads: int, n_prompts: int) -> tuple[torch.Tensor, int]:
    """(B*heads, Q, K) -> a (B, heads, Q, K) view and the index of the first cond row (B is n or 2n)."""
    batch = probs.shape[0] // heads
    if batch not in (n_prompts, 2 * n_prompts):
        raise ValueError(f"attention batch {batch} does not fit {n_prompts} prompts (with or without guidance)")
    return probs.view(batch, heads, *probs.shape[1:]), batch - n_prompts


class AttentionStore:
    """Averages the cond rows' attention maps (mean over heads) on the fly, keyed by (place, 'cross'|'self').

    Only maps with at most `max_tokens` queries are kept, so memory stays bounded at any resolution.
    """

    def __init__(self, n_prompts: int, store_self: bool = False, max_tokens: int = STORE_MAX_TOKENS):
        self.n_prompts = n_prompts
        self.store_self = store_self
        self.max_tokens = max_tokens
        self.step_maps: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)  # this step's maps
        self.totals: dict[tuple[str, str], list[torch.Tensor]] = {}  # summed over finished steps
        self.counts: dict[tuple[str, str], int] = defaultdict(int)  # the steps that recorded each key
        self.steps_done = 0

    def installed(self, unet):
        """The context in which this controller's processors sit on every attention layer of `unet`
        (what the sampling loop enters)."""
        return attention_control(unet, self)

    def wants(self, is_cross: bool, queries: int, step: int) -> bool:
        return queries <= self.max_tokens and (is_cross or self.store_self)

    def record(self, probs: torch.Tensor, is_cross: bool, place: str, heads: int) -> None:
        if probs.shape[1] > self.max_tokens or not (is_cross or self.store_self):
            return
        view, first = cond_rows(probs, heads, self.n_prompts)
        self.step_maps[(place, "cross" if is_cross else "self")].append(view[first:].float().mean(1))

    def edit(self, probs: torch.Tensor, *, is_cross: bool, place: str, step: int, heads: int) -> torch.Tensor:
        self.record(probs, is_cross, place, heads)
        return probs

    def after_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Fold this step's maps into the running sums; the latent is returned unchanged."""
        for key, maps in self.step_maps.items():
            if key not in self.totals:
                self.totals[key] = [m.clone() for m in maps]
            else:
                for total, m in zip(self.totals[key], maps):
                    total += m
            self.counts[key] += 1
        self.step_maps = defaultdict(list)
        self.steps_done += 1
        return x

    def average(self, kind: str = "cross") -> list[torch.Tensor]:
        """The step-averaged maps of every stored layer of that kind, each (n_prompts, Q, K): each key's sums
        divided by the steps that recorded it (P2P records self-attention only inside its self-replace window)."""
        return [t / self.counts[key] for key, maps in sorted(self.totals.items()) if key[1] == kind for t in maps]


def step_window(value, steps: int) -> tuple[int, int]:
    """A float f -> steps [0, f*steps); a pair (a, b) -> steps [a*steps, b*steps)."""
    start, end = (0.0, float(value)) if isinstance(value, (int, float)) else map(float, value)
    if not 0.0 <= start <= end <= 1.0:
        raise UserError(f"a step range must satisfy 0 <= start <= end <= 1, got {value!r}")
    return int(start * steps), int(end * steps)


def cross_replace_alphas(source: str, targets: list[str], tokenizer, steps: int, cross_replace) -> torch.Tensor:
    """(steps, n_targets, L) weights of the injected cross-attention per step and target token.

    cross_replace: a float or (start, end) pair for every token, or a dict {"default_": range, word: range}
    with its own range for the named words (of the target prompts), as the reference's
    get_time_words_attention_alpha.
    """
    length = tokenizer.model_max_length
    per_word = dict(cross_replace) if isinstance(cross_replace, dict) else {"default_": cross_replace}
    default = per_word.pop("default_", 1.0)
    alphas = torch.zeros(steps, len(targets), length)
    start, end = step_window(default, steps)
    alphas[start:end] = 1.0
    for word, window in per_word.items():
        start, end = step_window(window, steps)
        for k, target in enumerate(targets):
            positions = alignment.word_token_indices(target, word, tokenizer)
            alphas[:, k, positions] = 0.0
            alphas[start:end, k, positions] = 1.0
    return alphas


@dataclass
class BlendConfig:
    """Local blending: keep the source latent outside the region of the given words (or of a user mask)."""

    words: list[str] = field(default_factory=list)  # each marks its tokens in every prompt that has it
    threshold: float = 0.3  # the reference's th=(.3, .3) on the max-normalised word attention
    start: float = 0.2  # no blending in the first 20 % of the steps (the reference's start_blend)
    subtract_words: list[str] = field(default_factory=list)  # their region is removed from the mask
    # a mask instead of the words, in [0, 1] at latent size: (h, w) for every target, or (n_targets, h, w)
    mask: torch.Tensor | None = None
    pool: int = 1  # max-pool radius that grows the mask a little (the reference's k = 1)

    def __post_init__(self):
        if not self.words and self.mask is None:
            raise UserError("local blend needs blend words (--blend-words) or a mask (--mask)")
        for name in ("threshold", "start"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # also refuses nan
                raise UserError(f"--blend-{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.pool < 0:
            raise UserError(f"the local blend's pool radius must be 0 or more, got {self.pool!r}")
        if self.mask is not None and self.mask.dim() not in (2, 3):
            raise ValueError(f"a blend mask is (h, w) or (n_targets, h, w), got shape {tuple(self.mask.shape)}")


@dataclass
class P2PConfig:
    edit: str = "auto"  # replace (equal word counts), refine (any prompts) or auto (replace when possible)
    cross_replace: object = 0.8  # float, (start, end) or {"default_": ..., word: ...}: the reference's 0.8
    self_replace: object = 0.4  # float or (start, end): the reference's 0.4 for word swaps
    reweight: dict[str, float] = field(default_factory=dict)  # target word -> attention scale
    blend: BlendConfig | None = None
    self_replace_max_tokens: int = SELF_REPLACE_MAX_TOKENS
    # cross-attention is injected at maps of at most this many queries (None: at every map, as the reference)
    cross_replace_max_tokens: int | None = None
    store_max_tokens: int = STORE_MAX_TOKENS  # the largest maps kept (local blend, heatmaps)
    # layout guidance (attention/guidance.py): the gradient step's size on the target latents; 0 is off
    layout_guidance: float = 0.0
    layout_guidance_until: float = GUIDANCE_UNTIL  # the fraction of the steps whose latents are guided
    guidance_max_tokens: int = GUIDANCE_MAX_TOKENS

    def __post_init__(self):
        if not (math.isfinite(float(self.layout_guidance)) and self.layout_guidance >= 0):
            raise UserError(f"--layout-guidance must be 0 (off) or a positive number, got {self.layout_guidance!r}")
        if not 0.0 <= self.layout_guidance_until <= 1.0:  # also refuses nan
            raise UserError(f"--layout-guidance-until must be between 0 and 1, got {self.layout_guidance_until!r}")
        if self.edit not in EDIT_MODES:
            raise UserError(f"unknown edit {self.edit!r}: choose replace, refine or auto (reweight is --reweight)")
        windows = self.cross_replace if isinstance(self.cross_replace, dict) else {"default_": self.cross_replace}
        for word, window in windows.items():
            where = "--cross-replace" if word == "default_" else f"--cross-replace-word {word}="
            try:
                step_window(window, 1)
            except (TypeError, ValueError):
                raise UserError(f"{where} must be a fraction or (start, end) fractions, got {window!r}") from None
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        try:
            step_window(self.self_replace, 1)
        except (TypeError, ValueError):
            raise UserError(f"--self-replace must be a fraction or (start, end) fractions, "
                            f"got {self.self_replace!r}") from None
        except UserError as exc:
            raise UserError(f"--self-replace: {exc}") from None
        for word, value in self.reweight.items():
            if not math.isfinite(float(value)):
                raise UserError(f"--reweight {word}= must be a finite number, got {value!r}")


def word_marks(prompts: list[str], words: list[str], tokenizer) -> torch.Tensor:
    """(n_prompts, L) 0/1: the tokens of each word in every prompt that contains it.

    A word found in none of the prompts is an error naming it."""
    marks = torch.zeros(len(prompts), tokenizer.model_max_length)
    for word in words:
        found = False
        for row, prompt in enumerate(prompts):
            if alignment.normalize_word(word) in map(alignment.normalize_word, alignment.words_of(prompt)):
                marks[row, alignment.word_token_indices(prompt, word, tokenizer)] = 1.0
                found = True
        if not found:
            raise UserError(f"the word {word!r} is in none of the prompts {prompts}; "
                            "blend words must appear in the source or a target prompt")
    return marks


def resolve_edit(source: str, targets: list[str], edit: str) -> str:
    if edit not in EDIT_MODES:
        raise UserError(f"unknown edit {edit!r}: choose replace, refine or auto (reweight is --reweight)")
    equal = all(len(alignment.words_of(t)) == len(alignment.words_of(source)) for t in targets)
    if edit == "auto":
        return "replace" if equal else "refine"
    return edit


class PromptToPrompt(AttentionStore):
    """Replace / Refine cross-attention injection, self-attention injection, Reweight and LocalBlend."""

    def __init__(self, source: str, targets: list[str], tokenizer, steps: int, config: P2PConfig = P2PConfig()):
        super().__init__(n_prompts=1 + len(targets), max_tokens=config.store_max_tokens)
        self.config = config
        self.mode = resolve_edit(source, targets, config.edit)
        if self.mode == "replace":
            self.mapper = alignment.replacement_mapper(source, targets, tokenizer)  # (n_t, L, L)
        else:
            self.mapper, self.refine_alphas = alignment.refinement_mapper(source, targets, tokenizer)  # (n_t, L)
        self.equalizer = None
        if config.reweight:
            self.equalizer = torch.stack([alignment.reweight_vector(t, config.reweight, tokenizer)
                                          for t in targets])  # (n_t, L)
        self.cross_alphas = cross_replace_alphas(source, targets, tokenizer, steps, config.cross_replace)
        self.self_window = step_window(config.self_replace, steps)
        self.blend_start = None
        if config.blend is not None:
            prompts = [source, *targets]
            self.blend_start = int(config.blend.start * steps)
            self.blend_tokens = word_marks(prompts, config.blend.words, tokenizer)
            self.subtract_tokens = (word_marks(prompts, config.blend.subtract_words, tokenizer)
                                    if config.blend.subtract_words else None)

    def wants(self, is_cross: bool, queries: int, step: int) -> bool:
        if is_cross:
            return True
        start, end = self.self_window
        return start <= step < end and queries <= self.config.self_replace_max_tokens

    def onto_targets(self, base: torch.Tensor) -> torch.Tensor:
        """Source maps (..., L) on each target's tokens -> (n_t, ..., L) (Refine: inserted tokens not blended)."""
        if self.mode == "replace":
            return torch.einsum("...l,nlm->n...m", base, self.mapper.to(base))
        return base[..., self.mapper.to(base.device)].movedim(-2, 0)

    def replace_cross(self, base: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Source maps (heads, Q, L) mapped onto each target's tokens -> (n_t, heads, Q, L)."""
        mapped = self.onto_targets(base)
        if self.mode == "refine":
            alphas = self.refine_alphas.to(base)[:, None, None, :]  # (n_t, 1, 1, L)
            mapped = mapped * alphas + targets * (1 - alphas)  # inserted tokens keep their own attention
        if self.equalizer is not None:
            mapped = mapped * self.equalizer.to(base)[:, None, None, :]
        return mapped

    def edit(self, probs: torch.Tensor, *, is_cross: bool, place: str, step: int, heads: int) -> torch.Tensor:
        self.record(probs, is_cross, place, heads)
        view, first = cond_rows(probs, heads, self.n_prompts)  # (B, heads, Q, K)
        base, targets = view[first], view[first + 1:]
        if is_cross:
            limit = self.config.cross_replace_max_tokens
            if limit is not None and probs.shape[1] > limit:
                return probs
            alpha = self.cross_alphas[step].to(base)[:, None, None, :]  # (n_t, 1, 1, L)
            new = self.replace_cross(base, targets) * alpha + targets * (1 - alpha)
        elif probs.shape[1] <= self.config.self_replace_max_tokens:
            new = base.expand_as(targets)
        else:
            return probs
        view = view.clone()  # never edit the tensor in place: autograd and the caller may hold it
        view[first + 1:] = new
        return view.view_as(probs)

    def blend_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(n_prompts, 1, h, w) boolean mask of the edited region from this step's cross-attention."""
        cfg = self.config.blend
        if cfg.mask is not None:
            mask = cfg.mask.to(x.device) > 0.5
            if mask.dim() == 2:
                return mask.expand(x.shape[0], 1, *x.shape[2:])
            if len(mask) != len(x) - 1:
                raise ValueError(f"{len(mask)} blend masks for {len(x) - 1} target prompts")
            return torch.cat([mask[:1], mask])[:, None]  # the source row keeps itself under any mask
        maps = [m for (place, kind), ms in self.step_maps.items() if kind == "cross" for m in ms]
        if not maps:
            raise RuntimeError("local blend found no cross-attention maps for this step")

        def region(tokens: torch.Tensor) -> torch.Tensor:
            layers = []
            for m in maps:  # (n, Q, L)
                side = int(round(m.shape[1] ** 0.5))
                word_map = (m * tokens.to(m)[:, None, :]).sum(-1).view(-1, 1, side, side)
                layers.append(F.interpolate(word_map, size=x.shape[2:], mode="bilinear", align_corners=False))
            out = torch.stack(layers).mean(0)  # (n, 1, h, w)
            k = cfg.pool
            out = F.max_pool2d(out, 2 * k + 1, stride=1, padding=k)
            return out / out.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]

        mask = region(self.blend_tokens) > cfg.threshold
        if self.subtract_tokens is not None:
            mask &= ~(region(self.subtract_tokens) > cfg.threshold)
        return mask[:1] | mask  # the union of the source's and each target's region

    def after_step(self, step: int, x: torch.Tensor) -> torch.Tensor:
        if self.blend_start is not None and step >= self.blend_start:
            mask = self.blend_mask(x).to(x.dtype)
            x = x[:1] + mask * (x - x[:1])  # outside the mask every row takes the source latent
        return super().after_step(step, x)
