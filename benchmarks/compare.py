"""Quality-suite runs side by side: the same edit benchmark on an old and a new model, or on two scene sets.

Each RUN is a quality.json written by `python -m benchmarks.quality` (or the folder holding it), as
LABEL=PATH or PATH (then labelled by its model's fingerprint). For every method of the runs (matched by its
spec, e.g. p2p:direct), one row per run that has it: the model's text-to-image accuracy and VAE PSNR (from
its training record), the scenes, edit accuracy, right with the layout kept, layout kept, the unchanged
region's PSNR, the edit's PSNR against the ground truth, and the reconstruction's PSNR.

Example (the committed model against a candidate, on the same turned scenes):
  python -m benchmarks.quality --parts edits --n 100 --turned-prob 0.5 --methods p2p:direct p2p --out out/q-old
  python -m benchmarks.quality --model CANDIDATE --parts edits --n 100 --turned-prob 0.5 \\
      --methods p2p:direct p2p --out out/q-new
  python -m benchmarks.compare old=out/q-old new=out/q-new --out out/compare
Writes compare.md (also printed) and compare.png: per row, the edits right with the layout kept, then the
ones right with the layout moved (the bar's end is the edit accuracy). Exit codes: 0 done, 2 bad input or
usage (one `error:` line), 1 a failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.bar_chart import stacked_bars
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.files import atomic_write
from editing.core.image_io import save_image

COLUMNS = ("method", "model", "text-to-image accuracy", "VAE PSNR (dB)", "scenes", "edit accuracy",
           "right, layout kept", "layout kept", "unchanged region PSNR (dB)", "edit PSNR vs truth (dB)",
           "reconstruction PSNR (dB)")


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.compare", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("runs", nargs="+", metavar="RUN", help="[LABEL=]quality.json or the folder holding it")
    p.add_argument("--out", default="out/compare", help="folder for compare.md and compare.png")
    return p


def load_run(spec: str) -> tuple[str, dict]:
    """(label, report) of one RUN argument."""
    label, _, path = spec.rpartition("=")
    path = Path(path)
    if path.is_dir():
        path = path / "quality.json"
    if not path.is_file():
        raise UserError(f"{path} is not a quality.json: run `python -m benchmarks.quality ... --out DIR` first")
    try:
        report = json.loads(path.read_text())
        report["results"]  # noqa: B018 - the one key every row needs
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a quality suite report ({exc})") from exc
    return label or report.get("fingerprint", path.parent.name), report


def rows(runs: list[tuple[str, dict]]) -> list[dict]:
    """One row per (method, run), methods in the order they first appear, runs in the order given."""
    specs = list(dict.fromkeys(r["spec"] for _, report in runs for r in report["results"] if "per_scene" in r))
    table = []
    for spec in specs:
        for label, report in runs:
            result = next((r for r in report["results"] if r.get("spec") == spec and "per_scene" in r), None)
            if result is None:
                continue
            training = report.get("training") or {}
            table.append({"method": result["method"], "label": label, "fingerprint": report.get("fingerprint"),
                          "scene_set": report.get("scene_set"), "scenes": result["scenes"],
                          "t2i": (training.get("attribute_accuracy") or {}).get("all"),
                          "vae_db": training.get("vae_psnr_db_heldout"),
                          "accuracy": result["edit_accuracy"], "right_kept": result["right_with_layout_kept"],
                          "layout_kept": result["layout_kept"], "unchanged_db": result["unchanged_psnr_db"],
                          "edit_db": result["edit_psnr_db"], "reconstruction_db": result["reconstruction_psnr_db"]})
    return table


def _figure(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(table: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in table:
        lines.append(f"| {r['method']} | {r['label']} ({r['fingerprint']}) | {_figure(r['t2i'])} | "
                     f"{_figure(r['vae_db'])} | {r['scenes']} ({r['scene_set']}) | {r['accuracy']:.2f} | "
                     f"{r['right_kept']:.2f} | {r['layout_kept']:.2f} | {_figure(r['unchanged_db'])} | "
                     f"{_figure(r['edit_db'])} | {_figure(r['reconstruction_db'])} |")
    return "\n".join(lines) + "\n"


def chart(table: list[dict]):
    segments = [[r["right_kept"], max(r["accuracy"] - r["right_kept"], 0.0)] for r in table]
    return stacked_bars([f"{r['method']}, {r['label']}" for r in table], segments,
                        ["right, layout kept", "right, layout moved"], "Edits right, per run",
                        "share of the benchmark's edits")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    table = rows([load_run(spec) for spec in args.runs])
    if not table:
        raise UserError("the runs hold no scored edits: give quality.json files of `--parts edits` runs")
    out = Path(args.out)
    text = markdown(table)
    atomic_write(out / "compare.md", text)
    save_image(out / "compare.png", chart(table))
    print(text, end="")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
