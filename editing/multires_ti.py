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

The command line around it (train a concept from image files, sample with pseudo-words, the grid):
editing/multires.py, `python -m editing.multires train|sample`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from editing.core.ddim import DDIMSchedule
from editing.core.errors import UserError
from editing.core.files import atomic_path
from editing.core.image_io import Crop, prepare_image, read_image
from editing.core.prompts import check_prompt_length
from editing.core.sampling import Conditioning, sample
from editing.embedding import EmbeddingConfig, optimise_embedding
from editing.multires_prompt import NAME, Piece, PseudoWord, words

DEFAULT_SCALES = 10  # n: the paper's ten resolutions
DEFAULT_TRAIN_STEPS = 3000  # each row sees ~steps/n of them; textual inversion uses 3000-5000 for one row
DEFAULT_LR = 5e-3  # textual inversion's base learning rate (Gal et al.)
DEFAULT_BATCH = 4  # (image, t, noise) samples per step, textual inversion's batch
DEFAULT_CROPS = 4  # random re-croppings per image, as the paper
CROP_MIN_FRACTION = 0.6  # a re-cropping keeps at least this share of the short side: the subject stays in view
ENCODE_BATCH = 8  # images per VAE call while encoding the training set (bounds memory at 512 px)
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
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1 (0 would save the untrained init word as the concept), "
                            f"got {self.steps}")
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
    text = "".join(PLACEHOLDER if p is None else p for p in pieces)
    check_prompt_length(text, tokenizer, model.max_tokens, count=len(ids))
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
    """Write the concept as safetensors {"<name>": (n, D)} with its metadata, atomically."""
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "name": concept.name,
                "scales": str(concept.scales), "init_word": concept.init_word,
                "model_fingerprint": concept.fingerprint, "model": model_name,
                "bands": "row k was trained on t = timestep / num_train_timesteps in [k/n, (k+1)/n)",
                "config": json.dumps(config.to_dict() if config else {})}
    with atomic_path(path) as temporary:
        save_file({k: v.float().cpu().contiguous() for k, v in concept_tensors(concept).items()}, str(temporary),
                  metadata=metadata)


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
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = f.metadata() or {}, list(f.keys())
            tensors = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"cannot read concept file {path}: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not a concept file written by `python -m editing.multires train` "
                        "(no multires metadata in it)")
    try:
        version, scales = int(metadata.get("format_version", 0)), int(metadata.get("scales", -1))
    except ValueError:
        raise UserError(f"{path} is damaged: its format_version {metadata.get('format_version')!r} or scales "
                        f"{metadata.get('scales')!r} is not a whole number; train the concept again") from None
    if version > FORMAT_VERSION:
        raise UserError(f"{path} has format version {metadata['format_version']}, this toolkit reads up to "
                        f"{FORMAT_VERSION}; update the toolkit")
    name = metadata.get("name", "")
    if not NAME.fullmatch(name):
        raise UserError(f"{path} is damaged: its concept name {name!r} is not a valid name; train it again")
    rows, dims = tensors.get(f"<{name}>"), ()
    if sorted(keys) == sorted(SDXL_KEYS) and all(tensors[k].ndim == 2 for k in keys):  # SDXL's two-key form
        dims = tuple(tensors[k].shape[1] for k in SDXL_KEYS)
        rows = torch.cat([tensors[k] for k in SDXL_KEYS], 1) if len({len(tensors[k]) for k in keys}) == 1 else None
    elif len(keys) != 1:
        rows = None
    if rows is None or rows.ndim != 2 or len(rows) != scales:
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
