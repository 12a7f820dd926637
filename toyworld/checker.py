"""Attribute checker: read background, shape colour and shape kind from pixels.

:func:`read_scene` sees only the image (never the Scene), so it can score
images produced by a model.  Pipeline:

1. Light Gaussian smoothing (denoises model outputs).
2. Background: every background of the palette is a *model* -- a point (plain
   colour) or the RGB segment between a texture's two tones (antialiasing and
   blur only ever mix the two tones).  The border ring's pixels are scored
   against each model (median distance, plus a penalty for a texture whose two
   tones are not both present); the best model wins.
3. Foreground: pixels whose distance to the background model exceeds an
   adaptive threshold; connected components (``cv2.connectedComponentsWithStats``)
   between a minimum and a maximum area (half the image) are the shapes,
   largest first.
4. Colour: nearest palette colour to the median of the component's eroded
   interior in the *unsmoothed* image.
5. Kind: the component is re-thresholded at half its contrast (an unbiased,
   sub-pixel-consistent outline) and described by two rotation-invariant fill
   ratios -- area over minimum-area-rectangle area (square 1.0, circle 0.785,
   triangle 0.5) and area over minimum-enclosing-circle area (circle 1.0,
   square 0.64, triangle 0.41) -- and by the polygon vertex count from
   ``cv2.approxPolyDP``; the nearest prototype wins.

Fields that cannot be read are ``None`` (e.g. no foreground blob -> colour and
shape are ``None``).

``python -m toyworld.checker --n 1000`` prints per-attribute accuracy on clean
and on degraded (blur + Gaussian noise) renders.
"""

from __future__ import annotations

import argparse
from typing import Iterable

import cv2
import numpy as np

from toyworld.world import (
    COLOURS,
    PLAIN_BACKGROUNDS,
    REFERENCE_SIZE,
    TEXTURES,
    Scene,
    dataset,
)

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], np.float32)

# (name, tone a, tone b); a plain colour is a degenerate segment a == b.
_BG_MODELS = tuple(
    [(n, np.array(c, np.float32), np.array(c, np.float32)) for n, c in PLAIN_BACKGROUNDS.items()]
    + [(n, np.array(a, np.float32), np.array(b, np.float32)) for n, (a, b) in TEXTURES.items()]
)

FG_THRESHOLD_RANGE = (30.0, 50.0)  # RGB distance to the background model
MIN_AREA_FRACTION = 0.004  # smallest blob counted as a shape (fraction of image)
MAX_AREA_FRACTION = 0.5  # larger blobs are a misread background, not a shape
TEXTURE_TONE_MIN = 0.1  # each texture tone must cover >= 10 % of the border
TEXTURE_PENALTY = 40.0

# Kind prototypes: (min-area-rect fill, enclosing-circle fill, vertices / 10).
_KIND_PROTOTYPES = {
    "circle": np.array([np.pi / 4, 1.0, 0.8]),
    "square": np.array([1.0, 2 / np.pi, 0.4]),
    "triangle": np.array([0.5, 3 * np.sqrt(3) / (4 * np.pi), 0.3]),
}


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        if f.size and f.max() <= 1.0 + 1e-6:
            f = f * 255.0
        img = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _segment_distance(px: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of RGB pixels ``px`` (..., 3) to segment a-b and the projection
    parameter t in [0, 1]."""
    d = b - a
    dd = float(d @ d)
    if dd == 0.0:
        t = np.zeros(px.shape[:-1], np.float32)
    else:
        t = np.clip(((px - a) @ d) / dd, 0.0, 1.0)
    nearest = a + t[..., None] * d
    return np.linalg.norm(px - nearest, axis=-1), t


def _border(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[:width], mask[-width:], mask[:, :width], mask[:, -width:] = True, True, True, True
    return img[mask]


def _read_background(smooth: np.ndarray
                     ) -> tuple[str, float, tuple[np.ndarray, np.ndarray], np.ndarray]:
    width = max(2, int(round(min(smooth.shape[:2]) / 32)))
    px = _border(smooth, width)
    best = None
    for name, a, b in _BG_MODELS:
        dist, t = _segment_distance(px, a, b)
        score = float(np.median(dist))
        if name in TEXTURES:
            frac_a = float(np.mean(t < 0.5))
            if min(frac_a, 1.0 - frac_a) < TEXTURE_TONE_MIN:
                score += TEXTURE_PENALTY
        if best is None or score < best[0]:
            best = (score, name, (a, b), dist)
    score, name, model, dist = best
    return name, score, model, dist


def _nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - rgb, axis=1)))]


def _kind(mask: np.ndarray) -> tuple[str | None, dict]:
    m = mask.astype(np.uint8)
    area = float(m.sum())
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours or area < 4:
        return None, {}
    cnt = max(contours, key=cv2.contourArea)
    # Minimum-area (rotated) rectangle of the pixel centres, grown by one pixel
    # to cover the pixels themselves; rotation invariant, unlike the bbox.
    (_, _), (w, h), _ = cv2.minAreaRect(cnt)
    _, r = cv2.minEnclosingCircle(cnt)
    rect_fill = area / float((w + 1.0) * (h + 1.0))
    circle_fill = area / float(np.pi * (r + 0.5) ** 2)
    peri = cv2.arcLength(cnt, True)
    approx = cv2.approxPolyDP(cnt, 0.04 * peri, True)
    verts = min(len(approx), 8)
    feats = np.array([rect_fill, circle_fill, verts / 10.0])
    weights = np.array([1.0, 1.0, 0.5])
    dists = {k: float(np.sum(weights * (feats - p) ** 2)) for k, p in _KIND_PROTOTYPES.items()}
    kind = min(dists, key=dists.get)
    return kind, {"rect_fill": rect_fill, "circle_fill": circle_fill, "vertices": int(len(approx))}


def read_scene(image: np.ndarray, max_shapes: int = 2) -> dict:
    """Read a toy-world image from its pixels.

    Returns ``{'background', 'colour', 'shape', 'shapes', 'background_distance'}``:
    background name (always the nearest guess; ``background_distance`` is the
    border's score against it: median RGB distance, ~0-10 for a clean render),
    the main (largest) shape's colour and kind, and ``shapes`` -- up to
    ``max_shapes`` blobs sorted by area (largest first), each a dict with
    colour, shape, area (fraction of the image), x, y (centre in reference
    64-px units) and the kind features.  Unreadable fields are ``None``.
    """
    img = _as_rgb_uint8(image)
    h, w = img.shape[:2]
    smooth = cv2.GaussianBlur(img, (3, 3), 0.8).astype(np.float32)
    background, bg_score, (a, b), border_dist = _read_background(smooth)
    dist, _ = _segment_distance(smooth, a, b)
    lo, hi = FG_THRESHOLD_RANGE
    thr = float(np.clip(2.5 * np.percentile(border_dist, 90), lo, hi))
    fg = (dist > thr).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    min_area = max(4.0, MIN_AREA_FRACTION * h * w)
    max_area = MAX_AREA_FRACTION * h * w
    comps = [i for i in range(1, n) if min_area <= stats[i, cv2.CC_STAT_AREA] <= max_area]
    comps.sort(key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    raw = img.astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    shapes = []
    for i in comps[:max_shapes]:
        comp = (labels == i).astype(np.uint8)
        interior = cv2.erode(comp, kernel)
        if interior.sum() < 5:
            interior = comp
        colour_rgb = np.median(raw[interior.astype(bool)], axis=0)
        # Outline at half contrast: unbiased w.r.t. antialiasing and blur.
        contrast = float(np.median(dist[interior.astype(bool)]))
        region = cv2.dilate(comp, kernel, iterations=2).astype(bool)
        half = region & (dist >= 0.5 * contrast)
        kind, feats = _kind(half)
        # Soft (coverage-weighted) area: robust to antialiasing and blur.
        soft_area = float(np.clip(dist[region] / max(contrast, 1e-6), 0.0, 1.0).sum())
        ys, xs = np.nonzero(half if half.any() else comp)
        scale = REFERENCE_SIZE / float(w)
        shapes.append({
            "colour": _nearest_colour(colour_rgb),
            "shape": kind,
            "area": soft_area / float(h * w),
            "x": float((xs.min() + xs.max() + 1) / 2 * scale),
            "y": float((ys.min() + ys.max() + 1) / 2 * REFERENCE_SIZE / float(h)),
            "rgb": tuple(float(v) for v in colour_rgb),
            **feats,
        })
    shapes.sort(key=lambda s: -s["area"])
    main = shapes[0] if shapes else {}
    return {
        "background": background,
        "colour": main.get("colour"),
        "shape": main.get("shape"),
        "shapes": shapes,
        "background_distance": bg_score,
    }


def expected_attributes(scene_or_expected: Scene | dict) -> dict:
    """``{'background', 'colour', 'shape'}`` of a Scene's main (largest) shape,
    or the given dict's attribute keys."""
    if isinstance(scene_or_expected, Scene):
        sc = scene_or_expected
        out = {"background": sc.background}
        if sc.shapes:
            out["colour"] = sc.main.colour
            out["shape"] = sc.main.kind
        else:
            out["colour"] = None
            out["shape"] = None
        return out
    return {k: v for k, v in scene_or_expected.items() if k in ("background", "colour", "shape")}


def check(image: np.ndarray | dict, scene_or_expected: Scene | dict,
          index: int | None = None) -> dict[str, bool]:
    """Per-attribute match of an image (or a :func:`read_scene` result) against a
    Scene or a dict like ``{'colour': 'red', 'shape': 'circle'}``.

    A dict is compared with the largest blob.  For a Scene the target shape is
    ``scene.shapes[index]`` (default: the main, largest one); in a one-shape
    scene it is compared with the largest blob, in a multi-shape scene with
    the blob whose centre is nearest the target's centre (so an edit that
    changes which shape is largest is still scored on the right shape).
    """
    reading = image if isinstance(image, dict) else read_scene(image)
    if isinstance(scene_or_expected, Scene) and scene_or_expected.shapes:
        sc = scene_or_expected
        target = sc.shapes[sc.main_index if index is None else index]
        expected = {"background": sc.background, "colour": target.colour, "shape": target.kind}
        blob = reading["shapes"][0] if reading["shapes"] else {}
        if len(sc.shapes) > 1 and reading["shapes"]:
            blob = min(reading["shapes"],
                       key=lambda b: (b["x"] - target.x) ** 2 + (b["y"] - target.y) ** 2)
        got = {"background": reading["background"], "colour": blob.get("colour"),
               "shape": blob.get("shape")}
        return {k: got[k] == v for k, v in expected.items()}
    expected = expected_attributes(scene_or_expected)
    return {k: reading.get(k) == v for k, v in expected.items()}


def accuracy(images: Iterable[np.ndarray], expected: Iterable[Scene | dict]) -> dict[str, float]:
    """Fraction of matches per attribute, plus 'all' (every attribute right)
    and 'n'."""
    hits: dict[str, int] = {}
    n_all = 0
    n = 0
    for img, exp in zip(images, expected):
        res = check(img, exp)
        for k, v in res.items():
            hits[k] = hits.get(k, 0) + int(v)
        n_all += int(all(res.values()))
        n += 1
    if n == 0:
        raise ValueError("accuracy() needs at least one image")
    out = {k: v / n for k, v in hits.items()}
    out["all"] = n_all / n
    out["n"] = n
    return out


def degrade(image: np.ndarray, rng: np.random.Generator, noise: float = 8.0,
            blur: float = 0.7) -> np.ndarray:
    """Imitate a model output: Gaussian blur (sigma ``blur`` px) then additive
    Gaussian noise (sigma ``noise`` intensity levels), clipped to uint8."""
    img = image.astype(np.float32)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Measure the toy-world checker's accuracy.")
    p.add_argument("--n", type=int, default=1000, help="number of random scenes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="render size in px")
    p.add_argument("--noise", type=float, default=8.0, help="noise sigma (intensity levels)")
    p.add_argument("--blur", type=float, default=0.7, help="blur sigma (px)")
    p.add_argument("--two-shapes-prob", type=float, default=0.0)
    args = p.parse_args(argv)

    data = dataset(args.seed, args.n, size=args.size, two_shapes_prob=args.two_shapes_prob)
    scenes = [sc for sc, _, _ in data]
    rng = np.random.default_rng(args.seed + 1)
    runs = {
        "clean": [img for _, img, _ in data],
        f"noisy (blur {args.blur}, noise {args.noise})":
            [degrade(img, rng, args.noise, args.blur) for _, img, _ in data],
    }
    print(f"toyworld checker: n={args.n} seed={args.seed} size={args.size} "
          f"two_shapes_prob={args.two_shapes_prob}")
    for name, imgs in runs.items():
        acc = accuracy(imgs, scenes)
        fields = "  ".join(f"{k}={acc[k]:.4f}" for k in ("background", "colour", "shape", "all"))
        print(f"{name:32s} {fields}")


if __name__ == "__main__":
    main()
