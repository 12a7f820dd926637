"""Edit one photo with text towards one or more target prompts.

Methods (--method):
  p2p                null-text inversion (or --inversion ...) + Prompt-to-Prompt attention control
  null-finetune      null-text inversion, then the first K nulls re-optimised with the edit prompt
  learned-embedding  embedding optimisation (L2 to the target), NTI under it, interpolation over the last
                     N steps (needs only --target-prompt)
  imagic             embedding optimisation, UNet fine-tuning, interpolation from fresh noise (Kawar et al.)
  finetune-embedding embedding optimisation (L2 to the target), NTI under it, then the first K nulls
                     fine-tuned with the target embedding (the thesis' future work; needs only --target-prompt)

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

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from editing.cli import EXIT_OK, Parser, apply_config_file, number_or_auto, run_main
from editing.core.checkpoints import PREDICTION_TYPES
from editing.core.errors import UserError
from editing.core.loading import load_model
from editing.core.image_io import MAX_IMAGE_PIXELS, load_image, prepare_image, read_image
from editing.core.model import DTYPES
from editing.core.outputs import OutputFolder
from editing.core.speed import add_speed_options, apply_speed, speed_options
from editing.methods import run_edit
from editing.imagic import DEFAULT_EMBEDDING as IMAGIC_EMBEDDING, DEFAULT_ETA as IMAGIC_ETA, \
    DEFAULT_UNET as IMAGIC_UNET
from editing.learned_embedding import DEFAULT_EMBEDDING as LE_EMBEDDING, DEFAULT_ETA as LE_ETA, \
    DEFAULT_INTERP_STEPS as LE_INTERP_STEPS
from editing.finetune_embedding import DEFAULT_FINETUNE_K
from editing.null_finetune import DEFAULT_INNER_STEPS, DEFAULT_K
from editing.request import EDIT_METHODS, EditRequest
from attention.controllers import EDIT_MODES, GUIDANCE_UNTIL
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS, FULL_DEPTH
from inversion.null_text import NullTextConfig
from inversion.record import METHODS as INVERSIONS


def build_parser() -> Parser:
    p = Parser(prog="python -m editing.run", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
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
                   help="fraction of steps with injected cross-attention: F or START,END (default 0.8); auto "
                        "(null-text and direct inversion): by the edit's extent, as --depth auto (null-text: 0.4 for "
                        "an edit of the whole picture)")
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
    p.add_argument("--mask", default=None,
                   help="a mask image (white = may change) instead of blend words, or 'auto': where the source and "
                        "target captions' noise predictions disagree (DiffEdit's mask; written as mask.png)")
    p.add_argument("--layout-guidance", type=number_or_auto, default=0.0, metavar="SCALE|auto",
                   help="hold the layout: after each step the edit latents take a gradient step of this size towards "
                        "the source's cross-attention maps (pix2pix-zero's guidance; 0 = off, the default; 10 on the "
                        "toy world). auto (null-text and direct inversion): chosen by the edit's extent, as "
                        "--depth auto (editing/extent.py)")
    p.add_argument("--layout-guidance-until", type=float, default=GUIDANCE_UNTIL, metavar="F",
                   help=f"fraction of the steps layout guidance acts on (default {GUIDANCE_UNTIL})")
    g = p.add_argument_group("null-finetune, learned-embedding, imagic and finetune-embedding")
    g.add_argument("--finetune-steps", type=int, default=None, metavar="K",
                   help=f"null-finetune, finetune-embedding: fine-tune the nulls of the first K steps (default "
                        f"{DEFAULT_K} null-finetune, i.e. every step of the default 50; {DEFAULT_FINETUNE_K} "
                        "finetune-embedding)")
    g.add_argument("--finetune-inner", type=int, default=DEFAULT_INNER_STEPS,
                   help=f"null-finetune, finetune-embedding: Adam steps per fine-tuned step (default {DEFAULT_INNER_STEPS})")
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
                   help="recompute UNet activations in every backward pass: null-text inversion, embedding "
                        "optimisation, imagic's fine-tuning (less memory, slower, same results)")
    g.add_argument("--sweep", action="store_true",
                   help="also write sweep.png: eta x N grid (learned-embedding), K strip (null-finetune), "
                        "eta strip (imagic)")
    g.add_argument("--sweep-eta", default="0,0.2,0.4,0.6,0.8,1", help="eta values of the sweep")
    g.add_argument("--sweep-interp", default="auto", help="N values of the sweep (auto: 0 to --steps in 6)")
    g.add_argument("--sweep-k", default="auto", help="K values of the strip (auto: 0 to --steps in 6)")
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt, cached hub id; "
                                                 "default: the embedded default model")
    p.add_argument("--prediction-type", default=None, choices=PREDICTION_TYPES,
                   help="for a single SD 2.x file, whose weights do not say (default v_prediction, the 768-v "
                        "release; epsilon for a 2.x base 512 model)")
    p.add_argument("--download", action="store_true",
                   help="fetch a hub id (or a missing config) into the Hugging Face cache; nothing is downloaded "
                        "without it")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--guidance", type=number_or_auto, default=DEFAULT_GUIDANCE, metavar="G|auto",
                   help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}). auto (p2p after null-text or "
                        "direct inversion): chosen by the edit's extent, as --depth auto: null-text inverts and edits "
                        "a local edit at 2, one of the whole picture at 7.5 (editing/extent.py)")
    p.add_argument("--depth", default=FULL_DEPTH, metavar="F|auto",
                   help="p2p: invert the photo only through the last F of the steps and edit from there (SDEdit's "
                        "strength): less noise keeps the layout, but edits of the whole picture (a background) need "
                        "the noisy steps. auto: 0.6 where the captions disagree on under 0.9 of the picture, else 1 "
                        "(editing/extent.py). Default 1 (all the way)")
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
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS, metavar="N",
                   help=f"refuse a photo or mask whose header claims more pixels (default {MAX_IMAGE_PIXELS})")
    p.add_argument("--out", default="out", help="output folder (default out/)")
    p.add_argument("--config", default=None, help="a YAML file of these options; flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    add_speed_options(p)
    return p


def options_to_args(options: Mapping[str, Any], base: argparse.Namespace | None = None, flags: Sequence[str] = (),
                    where: str = "") -> argparse.Namespace:
    """editing.run's parsed options from options by long name (a manifest entry, a benchmark's edit) on top of
    `base` (default: the parser's defaults), then command-line `flags`, all read by editing.run's own parser.

    A list replaces a repeatable option's list (target_prompt), None restores the default, a switch takes true
    or false. `where` prefixes the errors (e.g. the manifest entry)."""
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    defaults, argv = (dict(vars(base)) if base is not None else {}), []
    prefix = f"{where}: " if where else ""
    for key, value in options.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            raise UserError(f"{prefix}unknown option {key!r}; give python -m editing.run's options by their long "
                            "names, e.g. source_prompt, target_prompt, method")
        action, flag = actions[dest], max(actions[dest].option_strings, key=len)
        if value is None or action.nargs == 0:  # null restores the method's default; a switch is true or false
            if action.nargs == 0 and not isinstance(value, bool):
                raise UserError(f"{prefix}{key} is a switch: give true or false, got {value!r}")
            defaults[dest] = value
        elif isinstance(action, argparse._AppendAction):  # e.g. target_prompt: the given list replaces
            defaults[dest] = None
            argv += [f"{flag}={v}" for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif action.nargs in ("+", "*"):
            argv += [flag, *map(str, value if isinstance(value, (list, tuple)) else str(value).split())]
        else:
            argv.append(f"{flag}={value}")
    for action in parser._actions:
        action.required = False
    parser.set_defaults(**defaults)
    try:
        return parser.parse_args([*argv, *flags])
    except UserError as exc:
        raise UserError(f"{prefix}{exc}") from None


def request_from_args(args) -> EditRequest:
    """The typed request of parsed editing.run options (checked as it is made)."""
    return EditRequest.from_options(vars(args))


def main(argv: list[str] | None = None) -> int:
    args = apply_config_file(build_parser(), argv)
    request = request_from_args(args)
    photo = read_image(args.image, request.max_pixels)  # a missing or broken photo is refused before any work
    out = OutputFolder.prepare(args.out, [args.image, request.mask_file, args.inversion_file, args.config])
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype, prediction_type=args.prediction_type,
                           download=args.download, debug=args.debug)
        apply_speed(model, speed_options(args))
        image = prepare_image(photo, model.resolution, request.crop)
        summary = run_edit(model.for_photo(photo.shape, request.crop), image, request, out)
    except BaseException:
        out.remove_if_unused()
        raise
    print(f"wrote {args.out}/ (reconstruction PSNR {summary['reconstruction_psnr_db']} dB, "
          f"total {summary['timings_s']['total']} s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
