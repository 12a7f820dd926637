"""A line chart drawn with OpenCV (the toolkit has no plotting library): one or more series over a shared x axis,
with axes, ticks, a legend and a title. Shares bar_chart's fonts, palette and tick rule."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from benchmarks.bar_chart import GRID, INK, PALETTE, TITLE_SCALE, WHITE, _text, nice_step

WIDTH, HEIGHT = 520, 300  # px of the plot area
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 64, 56  # margins: tick labels left, title and legend on top, axis label below
MARKER = 4  # px radius of a data point


def line_chart(x: Sequence[float], series: dict[str, Sequence[float | None]], title: str, x_label: str,
               y_label: str, y_range: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 RGB image: each series a polyline with markers over x (None values are skipped)."""
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    low, high = y_range or (min(values, default=0.0), max(values, default=1.0))
    if high <= low:
        high = low + 1.0
    step = nice_step(high - low)
    low, high = step * math.floor(low / step), step * math.ceil(high / step)
    image = np.full((TOP + HEIGHT + BOTTOM, LEFT + WIDTH + RIGHT, 3), WHITE, np.uint8)
    x_min, x_max = min(x), max(x) if max(x) > min(x) else min(x) + 1
    px = lambda v: int(round(LEFT + (v - x_min) / (x_max - x_min) * WIDTH))  # noqa: E731
    py = lambda v: int(round(TOP + HEIGHT - (v - low) / (high - low) * HEIGHT))  # noqa: E731
    for k in range(int(round((high - low) / step)) + 1):  # horizontal grid and y ticks
        y = py(low + k * step)
        cv2.line(image, (LEFT, y), (LEFT + WIDTH, y), GRID, 1)
        _text(image, f"{low + k * step:g}", LEFT - 8, y + 5, align="right")
    for v in x:  # x ticks at the data's x values
        cv2.line(image, (px(v), TOP + HEIGHT), (px(v), TOP + HEIGHT + 5), INK, 1)
        _text(image, f"{v:g}", px(v), TOP + HEIGHT + 22, align="centre")
    cv2.rectangle(image, (LEFT, TOP), (LEFT + WIDTH, TOP + HEIGHT), INK, 1)
    _text(image, x_label, LEFT + WIDTH // 2, TOP + HEIGHT + 46, align="centre")
    _text(image, title, 10, 22, TITLE_SCALE)
    _text(image, y_label, 10, 44)
    legend_x = LEFT + WIDTH
    for (name, ys), colour in zip(reversed(list(series.items())), reversed(PALETTE[:len(series)])):
        width = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0]
        legend_x -= width + 34
        cv2.rectangle(image, (legend_x, 34), (legend_x + 14, 48), colour, -1)
        _text(image, name, legend_x + 20, 46)
    for (name, ys), colour in zip(series.items(), PALETTE):
        points = [(px(a), py(b)) for a, b in zip(x, ys) if b is not None and math.isfinite(b)]
        for p, q in zip(points, points[1:]):
            cv2.line(image, p, q, colour, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(image, p, MARKER, colour, -1, cv2.LINE_AA)
    return image
