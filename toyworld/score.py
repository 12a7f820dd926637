"""Score toy-world model folders on the same held-out sets, as toyworld.train scores the model it saves.

For each MODEL (a folder toyworld.train wrote; default: the embedded model): the VAE round trip's PSNR on
--n-vae held-out renders (seed + 10000, drawn with --two-shapes-prob and --turned-prob), and text-to-image
attribute accuracy (toyworld.checker) of --n images made from held-out captions (seed + 20000, one shape)
by StableDiffusionPipeline.from_pretrained with DDIM 50 steps, guidance 7.5. Two models given the same
--seed are scored on the same scenes, so their figures compare (training scores with the run's own seed).

Example (the committed model against a candidate):
  python -m toyworld.score toyworld/model out/tw-candidate --turned-prob 0.5 --out out/score
Writes score.json and score.md (also printed). Exit codes: 0 done, 2 bad input or usage (one `error:` line).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from editing.core.files import atomic_write, write_json
from editing.core.model import DEFAULT_MODEL_DIR
from editing.core.offline import quiet_libraries
from toyworld.train import Config, evaluate, render_set
from toyworld.world import random_scene

HELD_OUT_VAE, HELD_OUT_CAPTIONS = 10_000, 20_000  # seed offsets of toyworld.train's held-out sets


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m toyworld.score", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("models", nargs="*", metavar="MODEL", default=[str(DEFAULT_MODEL_DIR)],
                   help="toyworld.train output folders (default: the embedded model)")
    p.add_argument("--seed", type=int, default=d.seed, help="held-out sets' seed (default %(default)s)")
    p.add_argument("--n", type=int, default=d.n_eval, help="text-to-image captions (default %(default)s)")
    p.add_argument("--n-vae", type=int, default=d.n_eval_vae, help="VAE round trips (default %(default)s)")
    p.add_argument("--two-shapes-prob", type=float, default=d.two_shapes_prob)
    p.add_argument("--turned-prob", type=float, default=d.turned_prob)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="out/score")
    p.add_argument("--quiet", action="store_true")
    return p


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, before any work."""
    if args.n < 1 or args.n_vae < 1:
        return "--n and --n-vae must be at least 1"
    for probability in (args.two_shapes_prob, args.turned_prob):
        if not 0.0 <= probability <= 1.0:
            return f"--two-shapes-prob and --turned-prob must be in [0, 1], got {probability:g}"
    for model in args.models:
        if not (Path(model) / "model_index.json").is_file():
            return f"{model} is not a model folder (no model_index.json): give toyworld.train's --out"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    problem = usage_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = Config(seed=args.seed, device=args.device)
    renders = render_set(args.seed + HELD_OUT_VAE, args.n_vae, args.two_shapes_prob, "render", True,
                         args.turned_prob).images
    rng = np.random.default_rng(args.seed + HELD_OUT_CAPTIONS)
    captions = [random_scene(rng) for _ in range(args.n)]
    rows = []
    for model in args.models:
        with quiet_libraries(progress=not args.quiet):  # no library warnings on stderr, our bars only
            found = evaluate(Path(model), cfg, renders, captions, args.quiet)
        rows.append({"model": model, "vae_psnr_db": found["vae_psnr_db"], "vae_n": found["vae_n"],
                     "attribute_accuracy": found["attribute_accuracy"], "sampler": found["eval_sampler"]})
    lines = [f"Held-out sets of seed {args.seed}: {args.n_vae} VAE renders (two shapes {args.two_shapes_prob:g}, "
             f"turned {args.turned_prob:g}), {args.n} captions ({rows[0]['sampler']}).", "",
             "| model | VAE PSNR (dB) | background | colour | shape | all three |", "|---|---|---|---|---|---|"]
    for r in rows:
        a = r["attribute_accuracy"]
        lines.append(f"| {r['model']} | {r['vae_psnr_db']:.2f} | {a['background']:.2f} | {a['colour']:.2f} | "
                     f"{a['shape']:.2f} | {a['all']:.2f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    write_json(out / "score.json", {"command": "python -m toyworld.score " + " ".join(argv),
                                    "seed": args.seed, "two_shapes_prob": args.two_shapes_prob,
                                    "turned_prob": args.turned_prob, "models": rows})
    atomic_write(out / "score.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
