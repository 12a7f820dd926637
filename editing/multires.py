"""`python -m editing.multires`: Multiresolution Textual Inversion from the command line (the method itself:
editing/multires_ti.py). `train` learns a concept from a few images as n time-indexed pseudo-word embeddings;
`sample` generates with pseudo-words at chosen resolutions (prompt syntax: editing/multires_prompt.py).

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
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.files import write_json
from editing.core.image_io import image_grid, save_image
from editing.core.outputs import OutputFolder
from editing.core.loading import load_model
from editing.core.model import DTYPES
from editing.multires_prompt import METHODS, NAME, check_names, parse_prompt, with_method, words
from editing.multires_ti import DEFAULT_BATCH, DEFAULT_CROPS, DEFAULT_LR, DEFAULT_SCALES, DEFAULT_TRAIN_STEPS, \
    TEMPLATES, TrainConfig, check_concepts, image_files, load_concepts, sample_prompts, save_concept, train_concept, \
    training_images
from inversion.invert import DEFAULT_GUIDANCE, DEFAULT_STEPS

LOSS_CHUNK_FRACTION = 0.1  # the summary compares the mean loss of the first and the last tenth of the steps
DEFAULT_GRID_TIMES = "0,0.25,0.5,0.75,1"  # the grid's columns (the paper's Fig. 3 sweeps t_fixed over [0, 1])


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
    out = OutputFolder.prepare(args.out, files)
    path = out.path(f"{args.name}.safetensors")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    images = training_images(files, model.resolution, config.crops, config.seed)
    t0 = time.perf_counter()
    concept, losses = train_concept(model, images, args.name, args.init_word, config, disable=args.quiet)
    t1 = time.perf_counter()
    save_concept(path, concept, config, model.name)
    chunk = max(1, round(len(losses) * LOSS_CHUNK_FRACTION))
    first, last = (float(np.mean(losses[:chunk])), float(np.mean(losses[-chunk:]))) if losses else (None, None)
    write_json(out.path(f"{args.name}.json"), {
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
    out = OutputFolder.prepare(args.out, [c.source for c in concepts.values()])
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    for warning in check_concepts(model, concepts, args.allow_other_model):
        print(f"warning: {warning}", file=sys.stderr)
    generator = torch.Generator(device=model.device)
    run = lambda prompts: sample_prompts(model, prompts, concepts, args.steps, args.guidance,  # noqa: E731
                                         generator.manual_seed(args.seed), args.semi_below, args.quiet)
    images, calls = run([pieces])
    save_image(out.path("sample.png"), images[0])
    outputs, encoder_calls = {"sample": "sample.png"}, {"sample": calls}
    if times:
        cells, captions, grid_calls = [], [], 0
        for method in METHODS:  # one sampling batch per row, every cell from the same start noise
            row, calls = run([with_method(pieces, method, t) for t in times])
            cells += list(row)
            captions += [f"{method} t={t:g}" for t in times]
            grid_calls += calls
        save_image(out.path("grid.png"), image_grid(cells, captions, cols=len(times)))
        outputs["grid"], encoder_calls["grid"] = "grid.png", grid_calls
    write_json(out.path("summary.json"), {
        "prompt": args.prompt, "pseudo_words": [asdict(w) for w in words(pieces)],
        "concepts": {c.name: {"file": c.source, "scales": c.scales, "init_word": c.init_word}
                     for c in concepts.values()},
        "model": model.name, "model_fingerprint": model.fingerprint, "seed": args.seed, "steps": args.steps,
        "guidance": args.guidance, "semi_below": args.semi_below, "grid_times": times,
        "grid_rows": list(METHODS) if times else [], "encoder_calls": encoder_calls, "outputs": outputs,
        "timings_s": {"total": round(time.perf_counter() - start, 3)}})
    print(f"wrote {out.folder}/ ({', '.join(outputs.values())}; text encoder ran {sum(encoder_calls.values())} times)")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return main_train(args) if args.command == "train" else main_sample(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
