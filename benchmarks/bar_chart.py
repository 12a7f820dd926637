"""A horizontal stacked bar chart drawn with OpenCV (the toolkit has no plotting library): one bar per row,
split into coloured segments, with a value axis, its label, a legend and each bar's total at its end."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_SCALE = 0.5  # Hershey text ~12 px high: readable at 100 % zoom
TITLE_SCALE = 0.6
BAR_HEIGHT = 24  # px per bar ...
ROW_HEIGHT = 40  # ... and per row, so 16 px between bars
LABEL_WIDTH = 300  # px left of the axis for the row labels, at least (wider when a label needs it)
PLOT_WIDTH = 640  # px of the value axis
MARGIN = 20
TITLE_HEIGHT = 70  # title line plus the legend line under it
AXIS_HEIGHT = 60  # tick labels plus the axis label under the plot
TARGET_TICKS = 6  # about this many ticks on the value axis
# Segment colours (RGB), distinguishable in colour-blind palettes (Okabe & Ito): blue, orange, green, ...
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233))
INK, GRID, WHITE = (30, 30, 30), (225, 225, 225), (255, 255, 255)


def nice_step(top: float, ticks: int = TARGET_TICKS) -> float:
    """A tick step of 1, 2 or 5 times a power of ten that gives about `ticks` ticks up to `top`."""
    raw = max(top, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _printable(text: str) -> str:
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)  # Hershey fonts draw printable ASCII only


def _width(text: str, scale: float = TEXT_SCALE) -> int:
    """The drawn width of text in px."""
    return cv2.getTextSize(_printable(text), FONT, scale, 1)[0][0]


def _text(image: np.ndarray, text: str, x: int, y: int, scale: float = TEXT_SCALE, align: str = "left") -> None:
    width = _width(text, scale)
    x = {"left": x, "right": x - width, "centre": x - width // 2}[align]
    cv2.putText(image, _printable(text), (int(x), int(y)), FONT, scale, INK, 1, cv2.LINE_AA)


def stacked_bars(rows: Sequence[str], segments: Sequence[Sequence[float | None]], legend: Sequence[str],
                 title: str, axis_label: str, notes: Sequence[str] = ()) -> np.ndarray:
    """uint8 RGB image of one horizontal bar per row, stacked from segments[row] (None or 0: no segment).

    notes[row], if given, is written after the bar instead of its total (e.g. "not available").
    """
    if len(rows) != len(segments) or any(len(s) != len(legend) for s in segments):
        raise ValueError("stacked_bars needs one segment list per row and one legend entry per segment")
    totals = [sum(v or 0.0 for v in row) for row in segments]
    step = nice_step(max(totals, default=0.0) or 1.0)
    top = step * math.ceil((max(totals, default=0.0) or 1.0) / step)
    scale = PLOT_WIDTH / top  # px per unit
    height = TITLE_HEIGHT + ROW_HEIGHT * len(rows) + AXIS_HEIGHT + MARGIN
    label_width = max([LABEL_WIDTH, *(_width(label) + 10 for label in rows)])
    width = label_width + PLOT_WIDTH + 2 * MARGIN + 80  # room for the last bar's total
    image = np.full((height, width, 3), WHITE, np.uint8)
    x0, y0 = label_width + MARGIN, TITLE_HEIGHT  # the plot's top-left corner
    y_axis = y0 + ROW_HEIGHT * len(rows)

    _text(image, title, MARGIN, 24, TITLE_SCALE)
    x = MARGIN
    for name, colour in zip(legend, PALETTE):  # the legend: a swatch and its name per segment
        cv2.rectangle(image, (x, 38), (x + 14, 52), colour, -1)
        _text(image, name, x + 20, 50)
        x += 20 + cv2.getTextSize(name, FONT, TEXT_SCALE, 1)[0][0] + 24

    for k in range(int(round(top / step)) + 1):  # vertical grid lines and tick labels
        x = x0 + int(round(k * step * scale))
        cv2.line(image, (x, y0), (x, y_axis), GRID, 1)
        cv2.line(image, (x, y_axis), (x, y_axis + 5), INK, 1)
        _text(image, f"{k * step:g}", x, y_axis + 22, align="centre")
    cv2.line(image, (x0, y0), (x0, y_axis), INK, 1)
    cv2.line(image, (x0, y_axis), (x0 + PLOT_WIDTH, y_axis), INK, 1)
    _text(image, axis_label, x0 + PLOT_WIDTH // 2, y_axis + 48, align="centre")

    for r, (label, values) in enumerate(zip(rows, segments)):
        top_y = y0 + r * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) // 2
        _text(image, label, x0 - 10, top_y + BAR_HEIGHT // 2 + 5, align="right")
        x = float(x0)
        for value, colour in zip(values, PALETTE):
            if value:
                end = x + value * scale
                cv2.rectangle(image, (int(round(x)), top_y), (max(int(round(end)), int(round(x)) + 1),
                                                              top_y + BAR_HEIGHT), colour, -1)
                x = end
        note = notes[r] if r < len(notes) and notes[r] else f"{totals[r]:.3g}"
        _text(image, note, int(round(x)) + 6, top_y + BAR_HEIGHT // 2 + 5)
    return image
