"""Edit one photo with text: invert it, then edit it towards one or more target prompts.

Example (runs on the embedded default model):
  python -m editing.run --image examples/chelsea.png \\
      --source-prompt "a cat sitting on a blanket" --target-prompt "a tiger sitting on a blanket" --out out/

Writes into --out: source.png, reconstruction.png, edit.png (edit-1.png, ... for several targets),
grid.png, summary.json (and attention.png, self-attention.png with --attention-maps).
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from attention.controllers import BlendConfig, EDIT_MODES, P2PConfig, PromptToPrompt
from editing.cli import EXIT_OK, Parser, apply_config_file, run_main, write_json
from editing.errors import UserError
from editing.image_io import Crop, image_grid, load_image, read_image, prepare_image, save_image
from editing.model import DTYPES, load_model
from editing.p2p import edit_p2p
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, InversionConfig, invert, psnr
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS, Inversion

EDIT_METHODS = ("p2p",)  # learned-embedding, null-finetune and imagic arrive with the Imagic-family issue


def build_parser() -> Parser:
    p = Parser(prog="python -m editing.run", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--image", required=True, help="the photo to edit (PNG, JPEG, WebP, TIFF, BMP)")
    p.add_argument("--source-prompt", required=True, help="a caption of the photo")
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


def check_args(args) -> None:
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.inner_steps < 1:
        raise UserError(f"--inner-steps must be at least 1, got {args.inner_steps}")
    if args.inversion_file and args.save_inversion:
        raise UserError("give either --inversion-file (reuse) or --save-inversion (save), not both")
    if any(not t.strip() for t in args.target_prompt):
        raise UserError("a --target-prompt is empty")


def main(argv: list[str] | None = None) -> int:
    args = apply_config_file(build_parser(), argv)
    check_args(args)
    start = time.perf_counter()
    crop = parse_crop(args.crop)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    torch.manual_seed(args.seed)
    image = load_image(args.image, model.resolution, crop)
    config = p2p_config(args, model, crop)
    # check the prompts and edit options (word counts, reweight/blend words, lengths) before the long inversion
    PromptToPrompt(args.source_prompt, args.target_prompt, model.tokenizer, args.steps, config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    disable = args.quiet

    t0 = time.perf_counter()
    if args.inversion_file:
        record = Inversion.load(args.inversion_file)
        record.verify(image, args.source_prompt, model.fingerprint)
    else:
        inversion = InversionConfig(method=args.inversion, steps=args.steps, guidance=args.guidance,
                                    null_text=NullTextConfig(inner_steps=args.inner_steps))
        record = invert(model, image[None], [args.source_prompt], inversion, disable=disable)[0]
        if args.save_inversion:
            record.save(args.save_inversion)
    preliminary = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = edit_p2p(model, record, args.target_prompt, config, store_self=args.attention_maps,
                      disable=disable)
    generation = time.perf_counter() - t0

    edit_names = ["edit.png"] if len(result.edits) == 1 else [f"edit-{k + 1}.png" for k in range(len(result.edits))]
    save_image(out / "source.png", image)
    save_image(out / "reconstruction.png", result.reconstruction)
    for name, edit in zip(edit_names, result.edits):
        save_image(out / name, edit)
    captions = ["source", "reconstruction", *args.target_prompt]
    save_image(out / "grid.png", image_grid([image, result.reconstruction, *result.edits], captions))
    outputs = {"edit": edit_names, "reconstruction": "reconstruction.png", "grid": "grid.png",
               "source": "source.png"}
    if args.attention_maps:
        outputs.update(write_attention_maps(out, result, record.prompt, model, image))
    summary = {
        "method": args.method, "inversion": record.method, "model": model.name, "image": str(args.image),
        "source_prompt": args.source_prompt, "target_prompts": list(args.target_prompt), "seed": args.seed,
        "steps": record.steps, "guidance": record.guidance, "edit": result.controller.mode,
        "device": str(model.device), "dtype": args.dtype,
        "timings_s": {"preliminary_training": round(preliminary, 3), "editing": 0.0,
                      "generation": round(generation, 3), "total": round(time.perf_counter() - start, 3)},
        "reconstruction_psnr_db": round(psnr(result.reconstruction, image), 3),
        "outputs": outputs,
    }
    if result.controller.mode != config.edit:
        summary["note"] = f"--edit auto chose {result.controller.mode}"
    write_json(out / "summary.json", summary)
    print(f"wrote {out}/ (reconstruction PSNR {summary['reconstruction_psnr_db']} dB, "
          f"total {summary['timings_s']['total']} s)")
    return EXIT_OK


def write_attention_maps(out: Path, result, prompt: str, model, image) -> dict:
    from attention.heatmaps import cross_attention_heatmaps, self_attention_components

    images, captions = cross_attention_heatmaps(result.controller, 0, prompt, model.tokenizer, image)
    save_image(out / "attention.png", image_grid(images, captions))
    images, captions = self_attention_components(result.controller, 0, image)
    save_image(out / "self-attention.png", image_grid(images, captions))
    return {"attention": "attention.png", "self_attention": "self-attention.png"}


if __name__ == "__main__":
    sys.exit(run_main(main))
