"""Multiresolution Textual Inversion (Daras & Dimakis, 2022): a concept learned from a few images as n
embeddings emb_0 .. emb_{n-1}, one per band of diffusion times, then used at a chosen resolution.

Training (the paper's eq. 1, textual inversion with a time-indexed pseudo-word):

    min_emb  E_{x, t, eps} || eps_hat(x_t, t, enc(template(emb_{floor(t n)}))) - eps ||^2

t = timestep / num_train_timesteps in [0, 1): row k is trained only on t in [k/n, (k+1)/n), so emb_0 (low
noise) learns details and texture, emb_{n-1} (high noise) class, layout and colour. It runs on the shared
embedding optimiser (editing.embedding.optimise_embedding); the only parameter is the (n, D) tensor of
new rows. The text encoder and tokenizer are never modified: the pseudo-word's input embedding is put in
place of a placeholder token for the duration of each encoder call (see `encode_embeds`).

Continuous t (sampling) is served by linear interpolation between rows, each row standing at the centre
of its band (`embedding_at`): the position p = clamp(t n - 1/2, 0, n - 1) and
    emb(t) = (1 - frac(p)) emb_{floor p} + frac(p) emb_{floor p + 1}.
At a band's centre this is exactly emb_{floor(t n)}, and everywhere emb_{floor(t n)} has weight >= 1/2.

The concept file is safetensors {"<name>": Tensor[n, D]} with metadata (format version, name, scales,
init word, model fingerprint). The key carries the angle brackets so n = 1 files (standard textual
inversion) load as they are with diffusers' `load_textual_inversion`, as the token "<name>" (a bare word
would clash with the CLIP vocabulary). Sampling syntax: editing/multires_prompt.py.

Examples (on the embedded default model, the toy world of coloured shapes):
  python -m editing.multires train --images examples/toy-red-circle.png --name redthing --init-word circle \\
      --scales 10 --steps 600 --out concepts/
  python -m editing.multires sample --concepts concepts/ \\
      --prompt "a <redthing(0.5)> on a blue background" --grid --out out-redthing/

train writes DIR/NAME.safetensors and DIR/NAME.json (options, loss curve, timings); sample writes
DIR/sample.png, with --grid DIR/grid.png (rows: fixed, semi, fully; columns: --grid-times), and
DIR/summary.json. Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from editing.cli import EXIT_OK, Parser, run_main
from editing.core.files import write_json
from editing.embedding import EmbeddingConfig, optimise_embedding
from editing.core.errors import UserError
from editing.core.image_io import Crop, image_grid, prepare_image, read_image, save_image
from editing.core.model import DTYPES
from editing.core.loading import load_model
from editing.multires_prompt import METHODS, NAME, Piece, PseudoWord, check_names, parse_prompt, with_method, words
from editing.core.sampling import Conditioning, sample
from editing.core.ddim import DDIMSchedule
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS

DEFAULT_SCALES = 10  # n: the paper's ten resolutions
DEFAULT_TRAIN_STEPS = 3000  # each row sees ~steps/n of them; textual inversion uses 3000-5000 for one row
DEFAULT_LR = 5e-3  # textual inversion's base learning rate (Gal et al.)
DEFAULT_BATCH = 4  # (image, t, noise) samples per step, textual inversion's batch
DEFAULT_CROPS = 4  # random re-croppings per image, as the paper
CROP_MIN_FRACTION = 0.6  # a re-cropping keeps at least this share of the short side: the subject stays in view
ENCODE_BATCH = 8  # images per VAE call while encoding the training set (bounds memory at 512 px)
LOSS_CHUNK_FRACTION = 0.1  # the summary compares the mean loss of the first and the last tenth of the steps
DEFAULT_GRID_TIMES = "0,0.25,0.5,0.75,1"  # the grid's columns (the paper's Fig. 3 sweeps t_fixed over [0, 1])
FORMAT = "multires-textual-inversion"
FORMAT_VERSION = 1
PLACEHOLDER = "*"  # the token whose slot carries the pseudo-word (textual inversion's S*); its own row is never used
SDXL_KEYS = ("clip_l", "clip_g")  # SDXL textual-inversion files: rows for text_encoder, text_encoder_2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")

# Caption templates the pseudo-word is trained in, one drawn per sample (textual inversion's idea: the row
# should mean the concept in any plain sentence, not one fixed caption). "{}" is the pseudo-word.
TEMPLATES = {
    "object": ("a photo of a {}", "a rendering of a {}", "a picture of the {}", "a close-up photo of a {}",
               "a cropped photo of the {}", "a good photo of a {}"),
    "style": ("a painting in the style of {}", "a rendering in the style of {}", "a picture in the style of {}",
              "a cropped painting in the style of {}", "a good painting in the style of {}", "art in the style of {}"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Multires textual inversion training options; saved with the concept."""

    scales: int = DEFAULT_SCALES
    steps: int = DEFAULT_TRAIN_STEPS
    lr: float = DEFAULT_LR
    batch: int = DEFAULT_BATCH
    crops: int = DEFAULT_CROPS
    kind: str = "object"  # which caption templates: "object" or "style"
    seed: int = 0

    def __post_init__(self):
        if self.scales < 1:
            raise UserError(f"--scales must be at least 1 (1 = standard textual inversion), got {self.scales}")
        if self.crops < 0:
            raise UserError(f"--crops must be 0 or more, got {self.crops}")
        if self.kind not in TEMPLATES:
            raise UserError(f"--kind must be one of {', '.join(TEMPLATES)}, got {self.kind!r}")
        self.embedding()  # steps, lr and batch are checked by the optimiser's config

    def embedding(self) -> EmbeddingConfig:
        return EmbeddingConfig(steps=self.steps, lr=self.lr, l2=0.0, batch=self.batch)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Concept:
    """A learned concept: row k was trained on t in [k/n, (k+1)/n)."""

    name: str
    rows: torch.Tensor  # (n, D) fp32
    init_word: str
    fingerprint: str  # of the model it was trained on
    source: str = ""  # the file it was read from
    encoder_dims: tuple[int, ...] = ()  # SDXL: (768, 1280), the rows' parts for its two text encoders

    @property
    def scales(self) -> int:
        return len(self.rows)

    def at(self, t: float) -> torch.Tensor:
        return embedding_at(self.rows, t)


# ---------------------------------------------------------------- prompts with pseudo-word slots


def layout(model, pieces: Sequence[str | None]) -> tuple[torch.Tensor, list[int]]:
    """Token ids (max_tokens,) of a prompt given as text pieces and None slots, and the slots' positions.

    Each text piece is tokenized on its own (CLIP splits words and punctuation before BPE, so this is the
    tokenization of the whole text); start, end and padding tokens as model.tokenize adds them.
    """
    tokenizer = model.tokenizer
    placeholder = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids[0]
    ids, slots = [tokenizer.bos_token_id], []
    for piece in pieces:
        if piece is None:
            slots.append(len(ids))
            ids.append(placeholder)
        else:
            ids += tokenizer(piece, add_special_tokens=False).input_ids
    ids.append(tokenizer.eos_token_id)
    if len(ids) > model.max_tokens:
        text = "".join(PLACEHOLDER if p is None else p for p in pieces)
        raise UserError(f"prompt has {len(ids)} tokens, the text encoder takes at most {model.max_tokens} "
                        f"(start and end tokens included); shorten it: {text[:60]!r}...")
    ids += [tokenizer.pad_token_id] * (model.max_tokens - len(ids))
    return torch.tensor(ids, device=model.device), slots


def token_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """The encoders' input embeddings (B, L, D) of token ids (B, L), before position embeddings (SDXL: both
    encoders' side by side, D = 768 + 1280)."""
    return model.input_embeddings(ids)


def encode_embeds(model, ids: torch.Tensor, embeds: torch.Tensor):
    """The conditioning (`model.encode_prompts`'s kind) of token ids (B, L) whose input embeddings are
    `embeds` (B, L, D), differentiable in `embeds` (the model's `encode_input_embeddings`: a forward hook on
    each token-embedding layer, for this call only)."""
    return model.encode_input_embeddings(ids, embeds)


def encode_with_vectors(model, pieces: Sequence[str | None], vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Encode one prompt whose slots (None pieces) take `vectors` (D,), in order: (1, L, D)."""
    ids, slots = layout(model, pieces)
    embeds = token_embeddings(model, ids[None]).clone()  # (1, L, D)
    for position, vector in zip(slots, vectors, strict=True):
        embeds[0, position] = vector.to(embeds)
    return encode_embeds(model, ids[None], embeds)


# ---------------------------------------------------------------- training


def init_row(model, init_word: str) -> torch.Tensor:
    """The input embedding (D,) of the one token of init_word: every row starts there."""
    ids = model.tokenizer(init_word, add_special_tokens=False).input_ids if init_word.strip() else []
    if len(ids) != 1:
        tokens = model.tokenizer.convert_ids_to_tokens(ids)
        raise UserError(f"--init-word {init_word!r} is {len(ids)} tokens for this tokenizer {tokens}; give one "
                        "word the tokenizer knows as a single token, close to the concept (e.g. dog, painting, circle)")
    return token_embeddings(model, torch.tensor([ids], device=model.device))[0, 0]


def image_files(paths: Sequence[str]) -> list[Path]:
    """Image files given directly or found (not recursively) in the given folders, in name order."""
    files = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--images: {path} is neither an image file nor a folder")
    return files


def random_crop(rng: np.random.Generator, height: int, width: int) -> Crop:
    """A random square window of CROP_MIN_FRACTION..1 of the short side, as offsets from each edge."""
    side = max(1, round(rng.uniform(CROP_MIN_FRACTION, 1.0) * min(height, width)))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return Crop(left=left, right=width - left - side, top=top, bottom=height - top - side)


def training_images(files: Sequence[Path], size: int, crops: int, seed: int) -> np.ndarray:
    """Each image centre-cropped, plus `crops` random re-croppings of it: uint8 (N (1 + crops), size, size, 3)."""
    rng = np.random.default_rng(seed)
    images = []
    for file in files:
        rgb = read_image(file)
        images.append(prepare_image(rgb, size))
        images += [prepare_image(rgb, size, random_crop(rng, *rgb.shape[:2])) for _ in range(crops)]
    return np.stack(images)


def encode_training_set(model, images: np.ndarray) -> torch.Tensor:
    return torch.cat([model.encode_images(images[i:i + ENCODE_BATCH]) for i in range(0, len(images), ENCODE_BATCH)])


def template_embedder(model, rows: torch.Tensor, kind: str, generator: torch.Generator):
    """embed(t) for the optimiser: per sample a random caption template, its slot holding the row of t's band.

    rows: (n, D), the parameter. t: integer timesteps (B,) -> (B, L, D).
    """
    layouts = [layout(model, [before, None, after]) for before, after in
               (template.split("{}") for template in TEMPLATES[kind])]
    ids = torch.stack([ids for ids, _ in layouts])  # (K, L)
    base = token_embeddings(model, ids)  # (K, L, D)
    slot = torch.zeros(ids.shape, dtype=torch.bool, device=model.device)  # (K, L): where the pseudo-word sits
    for k, (_, positions) in enumerate(layouts):
        slot[k, positions] = True
    n, train_steps = len(rows), model.scheduler.config.num_train_timesteps

    def embed(t: torch.Tensor) -> torch.Tensor:
        band = (t * n // train_steps).clamp(max=n - 1)  # (B,): floor(t n) with t = timestep / T
        k = torch.randint(len(layouts), (len(t),), generator=generator).to(model.device)  # (B,)
        embeds = torch.where(slot[k, :, None], rows[band][:, None, :], base[k])  # (B, L, D)
        return encode_embeds(model, ids[k], embeds)

    return embed


def train_concept(model, images: np.ndarray, name: str, init_word: str, config: TrainConfig = TrainConfig(),
                  disable: bool = False) -> tuple[Concept, list[float]]:
    """Learn a concept from preprocessed images (N, H, W, 3) uint8; returns it and the loss of every step."""
    rows = init_row(model, init_word).repeat(config.scales, 1)  # (n, D), a fresh leaf: the only parameter
    latents = encode_training_set(model, images)  # (N, C, h, w)
    seed = config.seed
    embed = template_embedder(model, rows, config.kind, torch.Generator().manual_seed(seed))
    losses = optimise_embedding(model, latents, [rows], embed, config.embedding(),
                                generator=torch.Generator(device=model.device).manual_seed(seed),
                                disable=disable, desc=f"multires textual inversion <{name}>")
    dims = model.input_embedding_dims()
    return Concept(name, rows.detach().cpu(), init_word, model.fingerprint,
                   encoder_dims=dims if len(dims) > 1 else ()), losses


# ---------------------------------------------------------------- the concept file


def save_concept(path: Path, concept: Concept, config: TrainConfig | None = None, model_name: str = "") -> None:
    """Write the concept as safetensors {"<name>": (n, D)} with its metadata, atomically (tmp + os.replace)."""
    from safetensors.torch import save_file

    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "name": concept.name,
                "scales": str(concept.scales), "init_word": concept.init_word,
                "model_fingerprint": concept.fingerprint, "model": model_name,
                "bands": "row k was trained on t = timestep / num_train_timesteps in [k/n, (k+1)/n)",
                "config": json.dumps(config.to_dict() if config else {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({k: v.float().cpu().contiguous() for k, v in concept_tensors(concept).items()}, str(temporary),
                  metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def concept_tensors(concept: Concept) -> dict[str, torch.Tensor]:
    """The file's tensors: {"<name>": (n, D)}, or for SDXL the two-key form of SDXL textual-inversion files,
    {"clip_l": (n, 768), "clip_g": (n, 1280)}, which diffusers' SDXL pipeline loads with
    `load_textual_inversion(f["clip_l"], token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)` and
    the same with f["clip_g"], text_encoder_2 and tokenizer_2."""
    if not concept.encoder_dims:
        return {f"<{concept.name}>": concept.rows}
    if len(concept.encoder_dims) != len(SDXL_KEYS):
        raise ValueError(f"a concept for {len(concept.encoder_dims)} text encoders cannot be saved")
    return dict(zip(SDXL_KEYS, torch.split(concept.rows, list(concept.encoder_dims), dim=1)))


def load_concept(path: Path) -> Concept:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = f.metadata() or {}, list(f.keys())
            tensors = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read concept file {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a concept file written by `python -m editing.multires train` "
                        "(no multires metadata in it)")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{path} has format version {metadata['format_version']}, this toolkit reads up to "
                        f"{FORMAT_VERSION}; update the toolkit")
    name, dims = metadata.get("name", ""), ()
    rows = tensors.get(f"<{name}>")
    if sorted(keys) == sorted(SDXL_KEYS) and all(tensors[k].ndim == 2 for k in keys):  # SDXL's two-key form
        dims = tuple(tensors[k].shape[1] for k in SDXL_KEYS)
        rows = torch.cat([tensors[k] for k in SDXL_KEYS], 1) if len({len(tensors[k]) for k in keys}) == 1 else None
    elif len(keys) != 1:
        rows = None
    if rows is None or rows.ndim != 2 or len(rows) != int(metadata.get("scales", -1)):
        raise UserError(f"{path} is damaged: expected one tensor '<{name}>' of shape (scales, dim), found "
                        f"{ {k: tuple(v.shape) for k, v in tensors.items()} }")
    return Concept(name, rows.float(), metadata.get("init_word", ""), metadata.get("model_fingerprint", ""),
                   str(path), dims)


def load_concepts(paths: Sequence[str]) -> dict[str, Concept]:
    """Concepts from .safetensors files and folders of them, by name (two concepts may not share one)."""
    concepts: dict[str, Concept] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise UserError(f"--concepts: no .safetensors files in {path}")
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"--concepts: {path} is neither a concept file nor a folder")
        for file in files:
            concept = load_concept(file)
            if concept.name in concepts:
                raise UserError(f"two concepts are named {concept.name!r}: {concepts[concept.name].source} and "
                                f"{file}; give only one of them to --concepts")
            concepts[concept.name] = concept
    return concepts


def check_concepts(model, concepts: dict[str, Concept], allow_other_model: bool = False) -> list[str]:
    """UserError for a concept that cannot serve this model; returns warnings for allowed mismatches."""
    dim, warnings = sum(model.input_embedding_dims()), []
    for concept in concepts.values():
        if concept.rows.shape[1] != dim:
            raise UserError(f"concept {concept.name!r} ({concept.source}) has {concept.rows.shape[1]}-dim rows, "
                            f"this model's text encoder takes {dim}: it was trained on another model")
        if concept.fingerprint != model.fingerprint:
            message = (f"concept {concept.name!r} ({concept.source}) was trained on the model with fingerprint "
                       f"{concept.fingerprint or 'unknown'}, this is {model.fingerprint} ({model.name})")
            if not allow_other_model:
                raise UserError(f"{message}; sample with the model it was trained on (--model), or pass "
                                "--allow-other-model to use it anyway")
            warnings.append(message)
    return warnings


# ---------------------------------------------------------------- the per-step conditioning schedule


def embedding_at(rows: torch.Tensor, t: float) -> torch.Tensor:
    """The concept's embedding (D,) at continuous t in [0, 1]: rows (n, D) sit at their band centres
    (k + 1/2) / n, linear in between, constant beyond the first and last centre."""
    n = len(rows)
    position = min(max(t * n - 0.5, 0.0), n - 1.0)
    k = math.floor(position)
    fraction = position - k
    if fraction == 0.0:
        return rows[k]
    return torch.lerp(rows[k], rows[k + 1], fraction)


def word_vector(word: PseudoWord, concept: Concept, t: float, semi_below: str) -> torch.Tensor | None:
    """The pseudo-word's input embedding at sampling time t, or None where it is dropped from the prompt."""
    if word.method == "fixed":
        return concept.at(word.t_fixed)
    if word.method == "fully":
        return concept.at(max(t, word.t_fixed))
    if t >= word.t_fixed:  # semi
        return concept.at(t)
    return None if semi_below == "drop" else torch.zeros_like(concept.rows[0])


@dataclass
class PromptSchedule:
    cond: list[torch.Tensor]  # one (1, L, D) per sampling step
    encoder_calls: int  # distinct conditionings along the schedule = text-encoder runs


def conditioning_schedule(model, pieces: Sequence[Piece], concepts: dict[str, Concept],
                          timesteps: Sequence[int], semi_below: str = "drop") -> PromptSchedule:
    """Per sampling step (timestep ts, sampling time t = ts / num_train_timesteps), the text-encoder output of
    the prompt with every pseudo-word's vector at t. The encoder runs once per distinct pattern of vectors
    and drops, so a fixed-resolution prompt is encoded once for the whole run."""
    train_steps = model.scheduler.config.num_train_timesteps
    cache: dict[tuple, torch.Tensor] = {}
    cond = []
    for ts in timesteps:
        t = ts / train_steps
        vectors = [word_vector(w, concepts[w.name], t, semi_below) for w in words(pieces)]
        key = tuple(None if v is None else v.cpu().numpy().tobytes() for v in vectors)
        if key not in cache:
            cache[key] = encode_prompt(model, pieces, vectors)
        cond.append(cache[key])
    return PromptSchedule(cond, len(cache))


def encode_prompt(model, pieces: Sequence[Piece], vectors: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Encode a parsed prompt, its pseudo-words taking `vectors` (D,) in order; None drops the word: (1, L, D)."""
    layout_pieces, kept, given = [], [], iter(vectors)
    for piece in pieces:
        if not isinstance(piece, PseudoWord):
            layout_pieces.append(piece)
        elif (vector := next(given)) is not None:
            layout_pieces.append(None)
            kept.append(vector)
    return encode_with_vectors(model, layout_pieces, kept)


@torch.no_grad()
def sample_prompts(model, prompts: Sequence[Sequence[Piece]], concepts: dict[str, Concept], steps: int,
                   guidance: float, generator: torch.Generator, semi_below: str = "drop",
                   disable: bool = False) -> tuple[np.ndarray, int]:
    """One image per parsed prompt, all from the same start noise; returns uint8 (B, H, W, 3) and the number
    of text-encoder runs."""
    schedule = DDIMSchedule.from_scheduler(model.scheduler, steps)
    per_prompt = [conditioning_schedule(model, p, concepts, schedule.timesteps, semi_below) for p in prompts]
    batch = len(prompts)
    cond = [torch.cat([p.cond[i] for p in per_prompt]) for i in range(steps)]  # steps x (B, L, D)
    uncond = model.encode_prompts([""]).expand(batch, -1, -1)
    latent = model.resolution // model.vae_scale_factor
    x_T = torch.randn((1, model.unet.config.in_channels, latent, latent), generator=generator,
                      device=model.device).expand(batch, -1, -1, -1)
    x0 = sample(model, x_T, Conditioning(cond=cond, uncond=uncond), schedule, guidance, disable=disable,
                desc="multires sampling")
    return model.decode_latents(x0), sum(p.encoder_calls for p in per_prompt)


# ---------------------------------------------------------------- command line


def build_parser() -> Parser:
    formatter = lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100)  # noqa: E731
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt file or cached hub id "
                        "(default: the embedded default model)")
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    common.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="UNet precision (default fp32)")
    common.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    common.add_argument("--out", default="out", help="output folder (default out/)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    p = Parser(prog="python -m editing.multires", description=__doc__, formatter_class=formatter)
    commands = p.add_subparsers(dest="command", required=True, metavar="{train,sample}")
    train = commands.add_parser("train", parents=[common], formatter_class=formatter,
                                help="learn a concept from a few images",
                                description="Learn a concept as time-indexed pseudo-word embeddings.\n\n"
                                            "Example: python -m editing.multires train --images "
                                            "examples/toy-red-circle.png --name redthing --init-word circle "
                                            "--steps 600 --out concepts/")
    train.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders of them")
    train.add_argument("--name", required=True, help="the concept's name, used as <name...> in prompts")
    train.add_argument("--init-word", required=True,
                       help="a one-token word close to the concept: every row starts at it")
    train.add_argument("--scales", type=int, default=DEFAULT_SCALES,
                       help=f"n, the number of resolutions (default {DEFAULT_SCALES}; 1 = textual inversion)")
    train.add_argument("--steps", type=int, default=DEFAULT_TRAIN_STEPS,
                       help=f"Adam steps (default {DEFAULT_TRAIN_STEPS})")
    train.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"learning rate (default {DEFAULT_LR})")
    train.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"samples per step (default {DEFAULT_BATCH})")
    train.add_argument("--crops", type=int, default=DEFAULT_CROPS,
                       help=f"random re-croppings per image (default {DEFAULT_CROPS})")
    train.add_argument("--kind", default="object", choices=list(TEMPLATES),
                       help="caption templates: 'a photo of a {}' (object, default) or 'a painting in the style of {}'")

    samp = commands.add_parser("sample", parents=[common], formatter_class=formatter,
                               help="generate with pseudo-words at chosen resolutions",
                               description="Generate an image from a prompt with pseudo-words.\n\n"
                                           "  <name|t|> fixed: emb_t at every step\n"
                                           "  <name(t)> semi: emb_s at sampling time s >= t, dropped below t\n"
                                           "  <name[t]> fully: emb_s for s >= t, emb_t below\n"
                                           "  <name>    = <name[0]>\n\n"
                                           "Example: python -m editing.multires sample --concepts concepts/ "
                                           "--prompt \"a <redthing(0.5)> on a blue background\" --grid --out out/")
    samp.add_argument("--concepts", nargs="+", required=True, metavar="PATH",
                      help="concept .safetensors files or folders of them")
    samp.add_argument("--prompt", required=True, help="text with pseudo-words, e.g. \"a photo of <jane(0.5)>\"")
    samp.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    samp.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                      help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE})")
    samp.add_argument("--grid", action="store_true",
                      help="also render grid.png: rows fixed, semi, fully; columns --grid-times")
    samp.add_argument("--grid-times", default=DEFAULT_GRID_TIMES,
                      help=f"the grid's t values, comma-separated (default {DEFAULT_GRID_TIMES})")
    samp.add_argument("--semi-below", default="drop", choices=("drop", "zero"),
                      help="a semi word below its t: dropped from the prompt (default) or a zero vector")
    samp.add_argument("--allow-other-model", action="store_true",
                      help="use concepts trained on another model (same embedding size) with a warning")
    return p


def grid_times(text: str) -> list[float]:
    try:
        times = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--grid-times takes comma-separated numbers in [0, 1], got {text!r}") from None
    if not times or any(not 0.0 <= t <= 1.0 for t in times):
        raise UserError(f"--grid-times takes comma-separated numbers in [0, 1], got {text!r}")
    return times


def main_train(args) -> int:
    start = time.perf_counter()
    config = TrainConfig(scales=args.scales, steps=args.steps, lr=args.lr, batch=args.batch, crops=args.crops,
                         kind=args.kind, seed=args.seed)
    check_name(args.name)
    files = image_files(args.images)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    images = training_images(files, model.resolution, config.crops, config.seed)
    t0 = time.perf_counter()
    concept, losses = train_concept(model, images, args.name, args.init_word, config, disable=args.quiet)
    t1 = time.perf_counter()
    out = Path(args.out)
    path = out / f"{args.name}.safetensors"
    save_concept(path, concept, config, model.name)
    chunk = max(1, round(len(losses) * LOSS_CHUNK_FRACTION))
    first, last = (float(np.mean(losses[:chunk])), float(np.mean(losses[-chunk:]))) if losses else (None, None)
    write_json(out / f"{args.name}.json", {
        "name": args.name, "concept": path.name, "init_word": args.init_word, "model": model.name,
        "model_fingerprint": model.fingerprint, "config": config.to_dict(), "images": [str(f) for f in files],
        "training_images": len(images), "loss_first_tenth": first, "loss_last_tenth": last, "losses": losses,
        "timings_s": {"preliminary_training": round(t0 - start, 3), "training": round(t1 - t0, 3),
                      "total": round(time.perf_counter() - start, 3)}})
    loss = f", loss {first:.4f} -> {last:.4f}" if losses else ""
    print(f"wrote {path} ({concept.scales} scales x {concept.rows.shape[1]}{loss})")
    return EXIT_OK


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise UserError(f"--name {name!r} may only hold letters, digits, '_' and '-' (it is written as <{name}> "
                        "in prompts)")


def main_sample(args) -> int:
    start = time.perf_counter()
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    pieces = parse_prompt(args.prompt)
    if not words(pieces):
        raise UserError("the prompt has no pseudo-word: write one as <name|t|>, <name(t)>, <name[t]> or <name>")
    times = grid_times(args.grid_times) if args.grid else []
    concepts = load_concepts(args.concepts)
    check_names(pieces, concepts)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    for warning in check_concepts(model, concepts, args.allow_other_model):
        print(f"warning: {warning}", file=sys.stderr)
    generator = torch.Generator(device=model.device)
    run = lambda prompts: sample_prompts(model, prompts, concepts, args.steps, args.guidance,  # noqa: E731
                                         generator.manual_seed(args.seed), args.semi_below, args.quiet)
    out = Path(args.out)
    images, calls = run([pieces])
    save_image(out / "sample.png", images[0])
    outputs, encoder_calls = {"sample": "sample.png"}, {"sample": calls}
    if times:
        cells, captions, grid_calls = [], [], 0
        for method in METHODS:  # one sampling batch per row, every cell from the same start noise
            row, calls = run([with_method(pieces, method, t) for t in times])
            cells += list(row)
            captions += [f"{method} t={t:g}" for t in times]
            grid_calls += calls
        save_image(out / "grid.png", image_grid(cells, captions, cols=len(times)))
        outputs["grid"], encoder_calls["grid"] = "grid.png", grid_calls
    write_json(out / "summary.json", {
        "prompt": args.prompt, "pseudo_words": [asdict(w) for w in words(pieces)],
        "concepts": {c.name: {"file": c.source, "scales": c.scales, "init_word": c.init_word}
                     for c in concepts.values()},
        "model": model.name, "model_fingerprint": model.fingerprint, "seed": args.seed, "steps": args.steps,
        "guidance": args.guidance, "semi_below": args.semi_below, "grid_times": times,
        "grid_rows": list(METHODS) if times else [], "encoder_calls": encoder_calls, "outputs": outputs,
        "timings_s": {"total": round(time.perf_counter() - start, 3)}})
    print(f"wrote {out}/ ({', '.join(outputs.values())}; text encoder ran {sum(encoder_calls.values())} times)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return main_train(args) if args.command == "train" else main_sample(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
