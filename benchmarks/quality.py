"""Edit quality on the toy world, where every edit has a ground truth, and reconstruction quality.

For N seeded toy-world scenes, each with a ground-truth edited twin (one attribute changed: colour, shape
or background), invert the source render with its caption, edit it with Prompt-to-Prompt towards the
edited caption, and measure:
- edit accuracy: the share of edits the attribute checker reads as the target scene (all three
  attributes right), and per attribute;
- PSNR of the edit against the ground-truth edited image;
- PSNR of the unchanged region (pixels the ground-truth edit leaves alone) against the source;
- reconstruction PSNR of the source branch against the source.

Example (the embedded default model, 100 scenes, NTI + P2P Replace):
  python -m benchmarks.quality --n 100 --out out/quality

Writes quality.json, quality.md and examples.png (source | ground truth | reconstruction | edit).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from attention.controllers import P2PConfig
from editing.cli import EXIT_OK, Parser, run_main, write_json
from editing.errors import UserError
from editing.image_io import image_grid, save_image
from editing.model import load_model
from editing.p2p import edit_p2p
from inversion.invert import InversionConfig, invert, psnr
from inversion.null_text import NullTextConfig
from inversion.record import METHODS

SEED = 1234  # the scenes of the benchmark: fixed, so figures from different runs compare
CHANGED_DILATION = 1  # pixels around the ground-truth change that count as changed (antialiased edges)
EXAMPLES = 8  # rows in examples.png


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels where mask (H, W) is true."""
    if not mask.any():
        return float("nan")
    diff = a.astype(np.float64)[mask] - b.astype(np.float64)[mask]
    mse = np.mean(diff ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def unchanged_region(source: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """(H, W) True where the ground-truth edit leaves the pixels alone (with a margin)."""
    import cv2

    changed = (source != edited).any(-1).astype(np.uint8)
    kernel = np.ones((2 * CHANGED_DILATION + 1,) * 2, np.uint8)
    return cv2.dilate(changed, kernel) == 0


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.quality", description=__doc__,
               formatter_class=lambda prog: __import__("argparse").RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--model", default=None, help="model spec (default: the embedded default model)")
    p.add_argument("--n", type=int, default=100, help="number of scenes (default 100)")
    p.add_argument("--inversion", nargs="+", default=["null-text"], choices=METHODS,
                   help="inversion methods to compare (default null-text)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5)")
    p.add_argument("--inner-steps", type=int, default=NullTextConfig.inner_steps, help="NTI inner steps (10)")
    p.add_argument("--cross-replace", type=float, default=0.8, help="P2P cross-attention steps (0.8)")
    p.add_argument("--self-replace", type=float, default=0.4, help="P2P self-attention steps (0.4)")
    p.add_argument("--batch-size", type=int, default=25, help="images inverted together (default 25)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", default="out/quality", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def evaluate(model, pairs: list[dict], method: str, args) -> tuple[dict, list]:
    from tqdm.auto import tqdm

    from toyworld.checker import check

    config = InversionConfig(method=method, steps=args.steps, guidance=args.guidance,
                             null_text=NullTextConfig(inner_steps=args.inner_steps))
    p2p = P2PConfig(edit="replace", cross_replace=args.cross_replace, self_replace=args.self_replace)
    rows, examples = [], []
    start = time.perf_counter()
    for first in tqdm(range(0, len(pairs), args.batch_size), desc=f"{method}: invert + edit",
                      disable=args.quiet):
        batch = pairs[first:first + args.batch_size]
        records = invert(model, np.stack([p["image"] for p in batch]), [p["caption"] for p in batch], config,
                         disable=True)
        for pair, record in zip(batch, records):
            result = edit_p2p(model, record, [pair["edited_caption"]], p2p, disable=True)
            edit = result.edits[0]
            hits = check(edit, pair["edited_scene"])
            keep = unchanged_region(pair["image"], pair["edited_image"])
            rows.append({"attribute": pair["attribute"], "all": all(hits.values()), **hits,
                         "edit_psnr": psnr(edit, pair["edited_image"]),
                         "unchanged_psnr": masked_psnr(edit, pair["image"], keep),
                         "reconstruction_psnr": psnr(result.reconstruction, pair["image"])})
            if len(examples) < EXAMPLES:
                examples.append((pair, result))
    elapsed = time.perf_counter() - start
    summary = {"method": f"{method} + P2P replace", "scenes": len(rows), "seconds": round(elapsed, 1),
               "edit_accuracy": float(np.mean([r["all"] for r in rows])),
               "per_attribute_read": {k: float(np.mean([r[k] for r in rows])) for k in ("background", "colour", "shape")},
               "accuracy_by_edit": {a: float(np.mean([r["all"] for r in rows if r["attribute"] == a]))
                                    for a in sorted({r["attribute"] for r in rows})},
               "edit_psnr_db": float(np.mean([r["edit_psnr"] for r in rows])),
               "unchanged_psnr_db": float(np.nanmean([min(r["unchanged_psnr"], 100.0) for r in rows])),
               "reconstruction_psnr_db": float(np.mean([min(r["reconstruction_psnr"], 100.0) for r in rows]))}
    return summary, examples


def markdown(results: list[dict], header: dict) -> str:
    lines = [f"# Toy-world edit benchmark", "",
             f"model `{header['model']}` ({header['fingerprint']}), {header['scenes']} scenes (seed {SEED}), "
             f"{header['steps']} steps, guidance {header['guidance']}, device {header['device']}", "",
             "| method | edit accuracy | colour / shape / background edits | edit PSNR vs truth (dB) "
             "| unchanged region PSNR (dB) | reconstruction PSNR (dB) | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        by_edit = " / ".join(f"{r['accuracy_by_edit'].get(a, float('nan')):.2f}"
                             for a in ("colour", "shape", "background"))
        lines.append(f"| {r['method']} | {r['edit_accuracy']:.3f} | {by_edit} | {r['edit_psnr_db']:.2f} "
                     f"| {r['unchanged_psnr_db']:.2f} | {r['reconstruction_psnr_db']:.2f} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from toyworld.world import edit_pairs

    args = build_parser().parse_args(argv)
    if args.n < 1 or args.steps < 1 or args.batch_size < 1:
        raise UserError("--n, --steps and --batch-size must be at least 1")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    pairs = edit_pairs(SEED, args.n, size=model.resolution)
    out = Path(args.out)
    header = {"model": model.name, "fingerprint": model.fingerprint, "scenes": args.n, "steps": args.steps,
              "guidance": args.guidance, "device": str(model.device), "dtype": args.dtype,
              "date": time.strftime("%Y-%m-%d")}
    results, grid_rows = [], []
    for method in args.inversion:
        summary, examples = evaluate(model, pairs, method, args)
        results.append(summary)
        for pair, result in examples:
            grid_rows += [pair["image"], pair["edited_image"], result.reconstruction, result.edits[0]]
    write_json(out / "quality.json", {**header, "results": results})
    (out / "quality.md").write_text(markdown(results, header))
    captions = ["source", "truth", "reconstruction", "edit"] * (len(grid_rows) // 4)
    save_image(out / "examples.png", image_grid(grid_rows, captions, cols=4))
    print(markdown(results, header))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
