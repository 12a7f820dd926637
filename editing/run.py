"""Edit one photo with text towards one or more target prompts.

Methods (--method):
  p2p                null-text inversion (or --inversion ...) + Prompt-to-Prompt attention control
  null-finetune      null-text inversion, then the first K nulls re-optimised with the edit prompt
  learned-embedding  embedding optimisation (L2 to the target), NTI under it, interpolation over the last
                     N steps (needs only --target-prompt)
  imagic             embedding optimisation, UNet fine-tuning, interpolation from fresh noise (Kawar et al.)

Examples (run on the embedded default model):
  python -m editing.run --image examples/chelsea.png \\
      --source-prompt "a cat sitting on a blanket" --target-prompt "a tiger sitting on a blanket" --out out/
  python -m editing.run --image examples/toy-red-circle.png --method learned-embedding \\
      --target-prompt "a blue circle on a gray background" --sweep --out out-le/

Writes into --out: source.png, reconstruction.png, edit.png (edit-1.png, ... for several targets),
grid.png, summary.json; with --sweep also sweep.png (eta x N grid, K strip or eta strip); with
--attention-maps (p2p) attention.png and self-attention.png.
Stages in summary.json (the thesis' Table 4.1): p2p: inversion | - | sampling; null-finetune: inversion |
fine-tuning | sampling; learned-embedding: embedding optimisation | inversion under it | sampling;
imagic: embedding optimisation | UNet fine-tuning | sampling.
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from dataclasses import dataclass, field

import numpy as np
import torch

from attention.controllers import BlendConfig, EDIT_MODES, P2PConfig, PromptToPrompt
from editing.cli import EXIT_OK, Parser, apply_config_file, run_main, write_json
from editing.embedding import EmbeddingConfig
from editing.errors import UserError
from editing.imagic import DEFAULT_EMBEDDING as IMAGIC_EMBEDDING, DEFAULT_ETA as IMAGIC_ETA, \
    DEFAULT_UNET as IMAGIC_UNET, ImagicConfig, edit_imagic
from editing.learned_embedding import DEFAULT_EMBEDDING as LE_EMBEDDING, DEFAULT_ETA as LE_ETA, \
    DEFAULT_INTERP_STEPS as LE_INTERP_STEPS, LearnedEmbeddingConfig, edit_learned_embedding
from editing.null_finetune import DEFAULT_INNER_STEPS, DEFAULT_K, NullFinetuneConfig, edit_null_finetune
from editing.image_io import Crop, image_grid, load_image, read_image, prepare_image, save_image
from editing.model import DTYPES, load_model
from editing.p2p import edit_p2p
from editing.speed import add_speed_options, apply_speed, speed_options, speed_summary
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, InversionConfig, invert, psnr
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS, Inversion

EDIT_METHODS = ("p2p", "null-finetune", "learned-embedding", "imagic")


def build_parser() -> Parser:
    p = Parser(prog="python -m editing.run", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--image", required=True, help="the photo to edit (PNG, JPEG, WebP, TIFF, BMP)")
    p.add_argument("--source-prompt", default=None,
                   help="a caption of the photo (needed by p2p and null-finetune)")
    p.add_argument("--target-prompt", action="append", required=True,
                   help="the edited caption; repeat for several edits of the same photo")
    p.add_argument("--method", default="p2p", choices=EDIT_METHODS, help="editing method (default p2p)")
    p.add_argument("--inversion", default="null-text", choices=INVERSIONS, help="inversion (default null-text)")
    p.add_argument("--edit", default="auto", choices=EDIT_MODES,
                   help="replace (same word count), refine (any prompts) or auto (default)")
    p.add_argument("--cross-replace", default="0.8",
                   help="fraction of steps with injected cross-attention: F or START,END (default 0.8)")
    p.add_argument("--cross-replace-word", action="append", default=[], metavar="WORD=F[,END]",
                   help="a per-word cross-attention range (repeatable)")
    p.add_argument("--self-replace", default="0.4",
                   help="fraction of steps with injected self-attention: F or START,END (default 0.4)")
    p.add_argument("--reweight", action="append", default=[], metavar="WORD=VALUE",
                   help="scale a target word's attention (repeatable; negative values allowed)")
    p.add_argument("--blend-words", nargs="+", default=None, metavar="WORD",
                   help="local blend: edit only where these words attend (source and/or target words)")
    p.add_argument("--blend-subtract", nargs="+", default=[], metavar="WORD",
                   help="local blend: keep these words' region unchanged")
    p.add_argument("--blend-threshold", type=float, default=0.3, help="local blend mask threshold (0.3)")
    p.add_argument("--blend-start", type=float, default=0.2, help="fraction of steps before blending (0.2)")
    p.add_argument("--mask", default=None, help="a mask image (white = may change) instead of blend words")
    g = p.add_argument_group("null-finetune, learned-embedding and imagic")
    g.add_argument("--finetune-steps", type=int, default=None, metavar="K",
                   help=f"null-finetune: fine-tune the nulls of the first K steps (default {DEFAULT_K})")
    g.add_argument("--finetune-inner", type=int, default=DEFAULT_INNER_STEPS,
                   help=f"null-finetune: Adam steps per fine-tuned step (default {DEFAULT_INNER_STEPS})")
    g.add_argument("--eta", type=float, default=None,
                   help=f"weight of the target embedding in e_new (default {LE_ETA} learned-embedding, "
                        f"{IMAGIC_ETA} imagic)")
    g.add_argument("--interp-steps", type=int, default=None, metavar="N",
                   help=f"learned-embedding: e_new over the last N steps (default {LE_INTERP_STEPS})")
    g.add_argument("--embed-steps", type=int, default=None,
                   help=f"embedding optimisation steps (default {LE_EMBEDDING.steps} learned-embedding, "
                        f"{IMAGIC_EMBEDDING.steps} imagic)")
    g.add_argument("--embed-lr", type=float, default=None,
                   help=f"embedding learning rate (default {LE_EMBEDDING.lr:g} / {IMAGIC_EMBEDDING.lr:g})")
    g.add_argument("--embed-lambda", type=float, default=None,
                   help=f"L2 pull towards the target embedding (default {LE_EMBEDDING.l2:g} / "
                        f"{IMAGIC_EMBEDDING.l2:g})")
    g.add_argument("--unet-steps", type=int, default=None,
                   help=f"imagic: UNet fine-tuning steps (default {IMAGIC_UNET.steps})")
    g.add_argument("--unet-lr", type=float, default=None,
                   help=f"imagic: UNet learning rate (default {IMAGIC_UNET.lr:g})")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="imagic: recompute UNet activations in fine-tuning (less memory, slower)")
    g.add_argument("--sweep", action="store_true",
                   help="also write sweep.png: eta x N grid (learned-embedding), K strip (null-finetune), "
                        "eta strip (imagic)")
    g.add_argument("--sweep-eta", default="0,0.2,0.4,0.6,0.8,1", help="eta values of the sweep")
    g.add_argument("--sweep-interp", default="auto", help="N values of the sweep (auto: 0 to --steps in 6)")
    g.add_argument("--sweep-k", default="auto", help="K values of the strip (auto: 0 to --steps in 6)")
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt, cached hub id; "
                                                 "default: the embedded default model")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE})")
    p.add_argument("--inner-steps", type=int, default=NullTextConfig.inner_steps,
                   help="null-text Adam steps per timestep (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES), help="UNet precision (default fp32)")
    p.add_argument("--crop", default="0,0,0,0", metavar="L,R,T,B",
                   help="pixels cut from the left, right, top, bottom before the centre crop")
    p.add_argument("--save-inversion", default=None, metavar="PATH", help="save the inversion record here")
    p.add_argument("--inversion-file", default=None, metavar="PATH",
                   help="reuse a saved inversion (checked against the image, prompt and model)")
    p.add_argument("--attention-maps", action="store_true", help="also write attention heatmaps")
    p.add_argument("--out", default="out", help="output folder (default out/)")
    p.add_argument("--config", default=None, help="a YAML file of these options; flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_speed_options(p)
    return p


def parse_range(text, what: str):
    """'0.8' -> 0.8; '0.2,0.8' -> (0.2, 0.8)."""
    if isinstance(text, (int, float)):
        return float(text)
    if isinstance(text, (list, tuple)) and len(text) == 2:
        return tuple(float(v) for v in text)
    try:
        parts = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"{what} must be a number or START,END, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise UserError(f"{what} must be a number or START,END, got {text!r}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        word, sep, value = str(item).partition("=")
        if not sep or not word or not value:
            raise UserError(f"{what} takes WORD=VALUE, got {item!r}")
        pairs[word] = value
    return pairs


def parse_crop(text: str) -> Crop:
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--crop takes four integers L,R,T,B, got {text!r}") from None
    if len(values) != 4:
        raise UserError(f"--crop takes four integers L,R,T,B, got {text!r}")
    return Crop(*values)


def load_mask(path: str, crop: Crop, model) -> torch.Tensor:
    """A mask image -> (h, w) float in {0, 1} at latent size (white = editable)."""
    latent = model.resolution // model.vae_scale_factor
    rgb = prepare_image(read_image(path), latent, crop)
    return torch.from_numpy((rgb.mean(-1) > 127).astype("float32"))


def p2p_config(args, model, crop: Crop) -> P2PConfig:
    cross = parse_range(args.cross_replace, "--cross-replace")
    per_word = parse_pairs(args.cross_replace_word, "--cross-replace-word")
    if per_word:
        cross = {"default_": cross, **{w: parse_range(v, "--cross-replace-word") for w, v in per_word.items()}}
    reweight = {}
    for word, value in parse_pairs(args.reweight, "--reweight").items():
        try:
            reweight[word] = float(value)
        except ValueError:
            raise UserError(f"--reweight {word}= needs a number, got {value!r}") from None
    blend = None
    if args.blend_words or args.mask:
        blend = BlendConfig(words=list(args.blend_words or []), threshold=args.blend_threshold,
                            start=args.blend_start, subtract_words=list(args.blend_subtract),
                            mask=load_mask(args.mask, crop, model) if args.mask else None)
    return P2PConfig(edit=args.edit, cross_replace=cross, self_replace=parse_range(args.self_replace,
                     "--self-replace"), reweight=reweight, blend=blend)


def parse_list(text, what: str, kind=float) -> list:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [v for v in str(text).split(",") if v.strip()]
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise UserError(f"{what} takes a comma-separated list of {kind.__name__}s, got {text!r}") from None


def check_args(args) -> None:
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.inner_steps < 1:
        raise UserError(f"--inner-steps must be at least 1, got {args.inner_steps}")
    if args.inversion_file and args.save_inversion:
        raise UserError("give either --inversion-file (reuse) or --save-inversion (save), not both")
    if any(not t.strip() for t in args.target_prompt):
        raise UserError("a --target-prompt is empty")
    if args.method in SOURCE_METHODS and not (args.source_prompt or "").strip():
        raise UserError(f"--method {args.method} needs --source-prompt (a caption of the photo)")
    if args.method not in SOURCE_METHODS and (args.inversion_file or args.save_inversion):
        raise UserError(f"--method {args.method} inverts under a learned embedding made per edit: "
                        "--inversion-file/--save-inversion apply to p2p and null-finetune")
    if args.method == "null-finetune" and args.inversion == "direct":
        raise UserError("null-finetune needs --inversion null-text, negative-prompt or ddim (DirectInversion's "
                        "offsets correct the source branch only)")
    if args.finetune_steps is not None and not 0 <= args.finetune_steps <= args.steps:
        raise UserError(f"--finetune-steps must be between 0 and --steps ({args.steps}), got {args.finetune_steps}")
    if args.interp_steps is not None and not 0 <= args.interp_steps <= args.steps:
        raise UserError(f"--interp-steps must be between 0 and --steps ({args.steps}), got {args.interp_steps}")


def embedding_config(args, default: EmbeddingConfig) -> EmbeddingConfig:
    """The method's default embedding optimisation with the user's --embed-* overrides."""
    pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
    return EmbeddingConfig(steps=pick(args.embed_steps, default.steps), lr=pick(args.embed_lr, default.lr),
                           l2=pick(args.embed_lambda, default.l2))


def inversion_config(args, keep_trajectory: bool = False) -> InversionConfig:
    return InversionConfig(method=args.inversion, steps=args.steps, guidance=args.guidance,
                           null_text=NullTextConfig(inner_steps=args.inner_steps), keep_trajectory=keep_trajectory)


def default_invert(model, image, prompt: str, config: InversionConfig, disable: bool) -> Inversion:
    return invert(model, image[None], [prompt], config, disable=disable)[0]


@dataclass
class MethodOutput:
    """What a method hands back to the writer: images, the three stage timings, its own summary entries."""

    reconstruction: np.ndarray
    edits: list[np.ndarray]
    timings_s: dict
    sweeps: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (grid image, caption) per target
    summary: dict = field(default_factory=dict)
    attention: object = None  # p2p's controller, for --attention-maps


def source_record(model, image, args, invert_source, disable: bool, keep_trajectory: bool = False) -> Inversion:
    """The photo's inversion with the source prompt: from --inversion-file, the caller's cache, or computed."""
    if args.inversion_file:
        record = Inversion.load(args.inversion_file)
        record.verify(image, args.source_prompt, model.fingerprint)
        return record
    record = invert_source(model, image, args.source_prompt, inversion_config(args, keep_trajectory), disable)
    if args.save_inversion:
        record.save(args.save_inversion)
    return record


def run_p2p(model, image, args, invert_source, disable) -> MethodOutput:
    config = p2p_config(args, model, parse_crop(args.crop))
    # check the prompts and edit options (word counts, reweight/blend words, lengths) before the long inversion
    PromptToPrompt(args.source_prompt, args.target_prompt, model.tokenizer, args.steps, config)
    t0 = time.perf_counter()
    record = source_record(model, image, args, invert_source, disable)
    t1 = time.perf_counter()
    result = edit_p2p(model, record, args.target_prompt, config, store_self=args.attention_maps, disable=disable)
    t2 = time.perf_counter()
    summary = {"inversion": record.method, "steps": record.steps, "guidance": record.guidance,
               "edit": result.controller.mode}
    if result.controller.mode != config.edit:
        summary["note"] = f"--edit auto chose {result.controller.mode}"
    return MethodOutput(result.reconstruction, result.edits, stage_times(t1 - t0, 0.0, t2 - t1), summary=summary,
                        attention=result.controller)


def run_null_finetune(model, image, args, invert_source, disable) -> MethodOutput:
    k = DEFAULT_K if args.finetune_steps is None else args.finetune_steps
    k = min(k, args.steps)
    config = NullFinetuneConfig(steps=k, null_text=NullTextConfig(inner_steps=args.finetune_inner))
    strip = sweep_values(args.sweep_k, args.steps, "--sweep-k", int) if args.sweep else []
    t0 = time.perf_counter()
    record = source_record(model, image, args, invert_source, disable, keep_trajectory=True)
    preliminary = time.perf_counter() - t0
    edits, editing, generation, sweeps = [], 0.0, 0.0, []
    for target in args.target_prompt:
        result = edit_null_finetune(model, record, image, target, config, strip=strip, disable=disable)
        edits.append(result.edit)
        editing += result.timings_s["editing"]
        generation += result.timings_s["generation"]
        if strip:
            sweeps.append((image_grid(result.strip, [f"K={k}" for k in strip]), target))
    summary = {"inversion": record.method, "steps": record.steps, "guidance": record.guidance,
               "null_finetune": config.to_dict()}
    return MethodOutput(result.reconstruction, edits, stage_times(preliminary, editing, generation), sweeps,
                        summary)


def run_learned_embedding(model, image, args, invert_source, disable) -> MethodOutput:
    config = LearnedEmbeddingConfig(
        embedding=embedding_config(args, LE_EMBEDDING), eta=LE_ETA if args.eta is None else args.eta,
        interp_steps=min(LE_INTERP_STEPS, args.steps) if args.interp_steps is None else args.interp_steps)
    settings = []
    if args.sweep:
        etas = sweep_values(args.sweep_eta, 1.0, "--sweep-eta", float)
        ns = sweep_values(args.sweep_interp, args.steps, "--sweep-interp", int)
        settings = [(eta, n) for eta in etas for n in ns]
    edits, times, sweeps, reconstruction = [], stage_times(0.0, 0.0, 0.0), [], None
    for target in args.target_prompt:
        result = edit_learned_embedding(model, image, target, config, inversion_config(args),
                                        generator=generator(model, args.seed), sweep=settings, disable=disable)
        reconstruction = result.reconstruction if reconstruction is None else reconstruction
        edits.append(result.edit)
        times = {k: times[k] + result.timings_s[k] for k in times}
        if settings:
            sweeps.append((image_grid(result.sweep, [f"eta={e:g} N={n}" for e, n in settings], cols=len(ns)),
                           target))
    summary = {"inversion": args.inversion, "steps": args.steps, "guidance": args.guidance,
               "learned_embedding": config.to_dict(), "note": "reconstruction: e_opt of the first target alone"}
    return MethodOutput(reconstruction, edits, times, sweeps, summary)


def run_imagic(model, image, args, invert_source, disable) -> MethodOutput:
    config = ImagicConfig(embedding=embedding_config(args, IMAGIC_EMBEDDING),
                          unet=EmbeddingConfig(steps=IMAGIC_UNET.steps if args.unet_steps is None else args.unet_steps,
                                               lr=IMAGIC_UNET.lr if args.unet_lr is None else args.unet_lr, l2=0.0),
                          eta=IMAGIC_ETA if args.eta is None else args.eta,
                          gradient_checkpointing=args.gradient_checkpointing)
    etas = sweep_values(args.sweep_eta, 1.0, "--sweep-eta", float) if args.sweep else []
    edits, times, sweeps, reconstruction = [], stage_times(0.0, 0.0, 0.0), [], None
    for target in args.target_prompt:
        result = edit_imagic(model, image, target, config, steps=args.steps, guidance=args.guidance,
                             generator=generator(model, args.seed), sweep=etas, disable=disable)
        reconstruction = result.reconstruction if reconstruction is None else reconstruction
        edits.append(result.edit)
        times = {k: times[k] + result.timings_s[k] for k in times}
        if etas:
            sweeps.append((image_grid(result.sweep, [f"eta={e:g}" for e in etas]), target))
    summary = {"inversion": "none", "steps": args.steps, "guidance": args.guidance, "imagic": config.to_dict(),
               "note": "imagic samples from fresh noise; reconstruction: e_opt of the first target with the "
                       "fine-tuned UNet"}
    return MethodOutput(reconstruction, edits, times, sweeps, summary)


METHODS = {"p2p": run_p2p, "learned-embedding": run_learned_embedding, "null-finetune": run_null_finetune,
           "imagic": run_imagic}
SOURCE_METHODS = ("p2p", "null-finetune")  # the methods that invert the photo under its source prompt


def stage_times(preliminary: float, editing: float, generation: float) -> dict:
    """The thesis' three stages (Table 4.1)."""
    return {"preliminary_training": preliminary, "editing": editing, "generation": generation}


def sweep_values(text, top, what: str, kind) -> list:
    """A sweep list; "auto" spreads six values over [0, top]."""
    if str(text) == "auto":
        return [kind(top * k / 5) for k in range(6)] if kind is float else [round(top * k / 5) for k in range(6)]
    values = parse_list(text, what, kind)
    if not values or any(not 0 <= v <= top for v in values):
        raise UserError(f"{what} values must lie in [0, {top}], got {text!r}")
    return values


def generator(model, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch (CUDA), else the process' peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_edit(model, image: np.ndarray, args, out: Path, invert_source=default_invert) -> dict:
    """Edit one preprocessed photo with args.method, write the contract's files into out, return the summary.

    invert_source(model, image, prompt, InversionConfig, disable) -> Inversion lets a caller (the batch
    runner) supply cached inversions.
    """
    start = time.perf_counter()
    disable = args.quiet
    torch.manual_seed(args.seed)
    result = METHODS[args.method](model, image, args, invert_source, disable)
    out.mkdir(parents=True, exist_ok=True)
    n = len(result.edits)
    edit_names = ["edit.png"] if n == 1 else [f"edit-{k + 1}.png" for k in range(n)]
    save_image(out / "source.png", image)
    save_image(out / "reconstruction.png", result.reconstruction)
    for name, edit in zip(edit_names, result.edits):
        save_image(out / name, edit)
    captions = ["source", "reconstruction", *args.target_prompt]
    save_image(out / "grid.png", image_grid([image, result.reconstruction, *result.edits], captions))
    outputs = {"edit": edit_names, "reconstruction": "reconstruction.png", "grid": "grid.png",
               "source": "source.png"}
    if result.sweeps:
        names = ["sweep.png"] if len(result.sweeps) == 1 else [f"sweep-{k + 1}.png" for k in range(len(result.sweeps))]
        for name, (grid, _) in zip(names, result.sweeps):
            save_image(out / name, grid)
        outputs["sweep"] = names
    if args.attention_maps and result.attention is not None:
        outputs.update(write_attention_maps(out, result.attention, args.source_prompt, model, image))
    timings = {k: round(v, 3) for k, v in result.timings_s.items()}
    timings["total"] = round(time.perf_counter() - start, 3)
    summary = {
        "method": args.method, "model": model.name, "image": str(args.image),
        "source_prompt": args.source_prompt, "target_prompts": list(args.target_prompt), "seed": args.seed,
        **result.summary, "device": str(model.device), "dtype": args.dtype, "speed": speed_summary(model),
        "timings_s": timings,
        "peak_memory_mb": round(peak_memory_mb(model.device), 1),
        "reconstruction_psnr_db": round(psnr(result.reconstruction, image), 3), "outputs": outputs,
    }
    write_json(out / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = apply_config_file(build_parser(), argv)
    check_args(args)
    crop = parse_crop(args.crop)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    apply_speed(model, speed_options(args))
    image = load_image(args.image, model.resolution, crop)
    summary = run_edit(model, image, args, Path(args.out))
    print(f"wrote {args.out}/ (reconstruction PSNR {summary['reconstruction_psnr_db']} dB, "
          f"total {summary['timings_s']['total']} s)")
    return EXIT_OK


def write_attention_maps(out: Path, controller, prompt: str, model, image) -> dict:
    from attention.heatmaps import cross_attention_heatmaps, self_attention_components

    images, captions = cross_attention_heatmaps(controller, 0, prompt, model.tokenizer, image)
    save_image(out / "attention.png", image_grid(images, captions))
    images, captions = self_attention_components(controller, 0, image)
    save_image(out / "self-attention.png", image_grid(images, captions))
    return {"attention": "attention.png", "self_attention": "self-attention.png"}


if __name__ == "__main__":
    sys.exit(run_main(main))
