"""The edit frontier: edit accuracy against layout kept for every setting measured on the toy world's 100 turned
scenes (committed model, nearest-twin scoring), with issue 21's target boxes.

The points are the rows of benchmarks/RESULTS.md (sessions 22-27), written down here with the section each
comes from: the runs behind most of them were made in sessions whose outputs are gone, so the figure is redrawn
from the recorded numbers, not from files. `--add LABEL=PATH` adds the point of a run of your own
(`python -m benchmarks.quality ... --out DIR` writes DIR/quality.json).

Example:
  python -m benchmarks.frontier --out benchmarks/figures/edit-frontier.png
  python -m benchmarks.frontier --add "my setting=out/q/quality.json" --out frontier.png
Exit codes: 0 done, 2 bad input or usage (one `error:` line), 1 a failure inside the run.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.bar_chart import FONT, GRID, INK, WHITE, _printable, _text
from editing.cli import EXIT_OK, Parser, run_main
from editing.core.errors import UserError
from editing.core.image_io import save_image


@dataclass(frozen=True)
class Point:
    label: str
    accuracy: float
    layout_kept: float
    inversion: str  # "direct" or "null-text"
    where: str = "right"  # the label's side: right, left, below, or "at X,Y" (axis values, with a leader line)


# (a "*" marks the exploration scripts' rows; every other point is one toolkit command)
RECORDED = (
    # "Toy-world edits" and "The disagreement mask in the toolkit" (sessions 22, 13 rescored in 22)
    Point("defaults", 0.98, 0.67, "direct"), Point("mask", 0.98, 0.73, "direct"),
    Point("defaults", 0.79, 0.64, "null-text", "below"), Point("mask", 0.76, 0.74, "null-text"),
    # "No lent GPU ..." (session 21) and "Every setting on one frontier" (session 24)
    Point("mask, self 0.8", 0.88, 0.80, "direct"), Point("mask, cfg 10", 0.99, 0.76, "direct"),
    Point("mask, cfg 12", 0.98, 0.72, "direct", "below"), Point("mask, 5 inner", 0.79, 0.66, "null-text"),
    # "Layout guidance" (session 23) and session 24
    Point("mask, lg 10", 0.92, 0.83, "direct", "left"), Point("lg 10", 0.92, 0.85, "direct"),
    Point("lg 10, cfg 10 | lg 10 on shape words*", 0.97, 0.81, "direct"),
    Point("lg 20, cfg 10", 0.95, 0.74, "direct"), Point("lg 10*", 0.94, 0.84, "direct"),
    Point("mask, lg 20*", 0.90, 0.81, "direct"), Point("lg 10", 0.79, 0.78, "null-text"),
    Point("mask, lg 10", 0.72, 0.79, "null-text"), Point("mask, lg 10 all levels", 0.77, 0.81, "null-text"),
    # "How deep to invert, and null-text inversion at low guidance" (session 25)
    Point("depth 0.6, lg 10*", 0.76, 0.83, "direct"), Point("cfg 2*", 0.81, 0.71, "null-text"),
    Point("cfg 2, lg 10*", 0.75, 0.84, "null-text"),
    Point("by extent, cross 0.4 global*", 0.93, 0.79, "null-text", "left"),
    # "Inverting part of the way, in the toolkit" (session 26)
    Point("depth auto, lg 10, cfg 10", 0.98, 0.84, "direct", "at 0.872,0.885"),
    Point("depth auto, mask, lg 10, cfg 10", 0.97, 0.85, "direct", "at 0.872,0.870"),
    Point("depth auto, lg 10", 0.83, 0.83, "null-text"),
    Point("depth auto, lg 10, cross 0.4", 0.87, 0.82, "null-text", "at 0.872,0.855"),
    # "Guidance chosen by the edit's extent, in the toolkit" (session 27)
    Point("depth, cfg, lg auto", 0.96, 0.86, "direct", "at 0.88,0.925"),
    Point("cfg, lg auto", 0.88, 0.82, "null-text", "at 0.872,0.84"),
    Point("depth, cfg, lg auto", 0.86, 0.88, "null-text", "at 0.905,0.825"),
    Point("depth, cfg, lg, cross auto", 0.91, 0.85, "null-text", "at 0.87,0.905"),
)
TARGETS = {"direct": (0.95, 0.90), "null-text": (0.90, 0.85)}  # issue 21: (accuracy, layout kept)
COLOURS = {"direct": (20, 90, 200), "null-text": (200, 30, 30)}  # RGB
LOW, HIGH = 0.60, 1.00  # both axes
SIZE, MARGIN, FOOT = 600, 70, 110  # px: the plot's side, the margin, the notes under it
LABEL_SCALE = 0.38


def frontier_figure(points: list[Point]) -> np.ndarray:
    """uint8 RGB image: each point at (layout kept, accuracy), blue Direct, red NTI, over the target boxes."""
    image = np.full((SIZE + MARGIN + FOOT, SIZE + 2 * MARGIN, 3), WHITE, np.uint8)
    px = lambda kept, acc: (int(MARGIN + (kept - LOW) / (HIGH - LOW) * SIZE),  # noqa: E731
                            int(MARGIN + (HIGH - acc) / (HIGH - LOW) * SIZE))
    for v in np.arange(LOW, HIGH + 1e-9, 0.05):  # grid and ticks
        x, y = px(v, LOW)[0], px(LOW, v)[1]
        cv2.line(image, (x, MARGIN), (x, MARGIN + SIZE), GRID, 1)
        cv2.line(image, (MARGIN, y), (MARGIN + SIZE, y), GRID, 1)
        _text(image, f"{v:.2f}", x, MARGIN + SIZE + 20, 0.45, "centre")
        _text(image, f"{v:.2f}", MARGIN - 8, y + 5, 0.45, "right")
    cv2.rectangle(image, (MARGIN, MARGIN), (MARGIN + SIZE, MARGIN + SIZE), INK, 1)
    for inversion, (accuracy, kept) in TARGETS.items():
        corner, far = px(kept, accuracy), px(HIGH, HIGH)
        tinted = image.copy()
        cv2.rectangle(tinted, corner, far, COLOURS[inversion], -1)
        image[:] = cv2.addWeighted(tinted, 0.12, image, 0.88, 0)
        cv2.rectangle(image, corner, far, COLOURS[inversion], 1)
        name = "Direct target" if inversion == "direct" else "NTI target"
        at = (corner[0] + 4, far[1] + 16)  # the box's top left corner
        cv2.putText(image, name, at, FONT, 0.45, COLOURS[inversion], 1, cv2.LINE_AA)
    for p in points:
        centre, colour = px(p.layout_kept, p.accuracy), COLOURS[p.inversion]
        cv2.circle(image, centre, 5, colour, -1, cv2.LINE_AA)
        label = _printable(p.label)
        width = cv2.getTextSize(label, FONT, LABEL_SCALE, 1)[0][0]
        if p.where.startswith("at "):  # away from a crowded point, with a leader line
            kept, accuracy = (float(v) for v in p.where[3:].split(","))
            at = px(kept, accuracy)
            cv2.line(image, centre, (at[0] - 3, at[1] - 4), colour, 1, cv2.LINE_AA)
        else:
            at = {"below": (centre[0] - width // 2, centre[1] + 17),
                  "left": (centre[0] - width - 8, centre[1] + 4)}.get(p.where, (centre[0] + 7, centre[1] + 4))
        cv2.putText(image, label, at, FONT, LABEL_SCALE, colour, 1, cv2.LINE_AA)
    _text(image, "layout kept", MARGIN + SIZE // 2, MARGIN + SIZE + 45, 0.55, "centre")
    _text(image, "edit accuracy", 8, MARGIN - 20, 0.55)
    notes = ("100 turned scenes, committed 16 x 16 model. Blue: Direct + P2P, red: NTI + P2P.",
             "lg: --layout-guidance, cfg: --guidance, mask: --mask auto, depth/cfg/lg auto: by the edit's extent",
             "*: the exploration scripts of sessions 24-25; the rest: toolkit commands")
    for j, line in enumerate(notes):
        _text(image, line, MARGIN - 40, MARGIN + SIZE + 68 + 18 * j, 0.42)
    return image


def added_point(text: str) -> Point:
    """LABEL=PATH -> the point of the first result in PATH (a benchmarks.quality quality.json)."""
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise UserError(f"--add takes LABEL=PATH (a quality.json), got {text!r}")
    try:
        result = json.loads(Path(path).read_text())["results"][0]
        inversion = "direct" if result["spec"].endswith(":direct") else "null-text"
        return Point(label, float(result["edit_accuracy"]), float(result["layout_kept"]), inversion)
    except OSError as exc:
        raise UserError(f"--add {label}: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise UserError(f"--add {label}: {path} is not a benchmarks.quality quality.json with edit results") from None


def build_parser() -> Parser:
    p = Parser(prog="python -m benchmarks.frontier", description=__doc__,
               formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, width=100))
    p.add_argument("--add", action="append", default=[], metavar="LABEL=PATH",
                   help="also plot a run of your own: its quality.json (repeatable)")
    p.add_argument("--out", default="edit-frontier.png", help="the PNG to write (default edit-frontier.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    points = [*RECORDED, *(added_point(text) for text in args.add)]
    save_image(args.out, frontier_figure(points))
    print(f"wrote {args.out} ({len(points)} points)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(main))
