"""The toy world: scene description, renderer, captions and edited twins.

A scene is one or two flat-coloured shapes (circle, square, equilateral
triangle, upright or turned by ``angle`` degrees) on a background that is
either a plain colour or a two-tone texture.  Geometry is stored in the units of a
``REFERENCE_SIZE`` x ``REFERENCE_SIZE`` (64 px) canvas; :func:`render` scales
it to any output size, so the same scene renders consistently at 64, 128 or
256 px.

Geometry of a shape with ``size = s`` centred at ``(x, y)`` (reference px):

* circle   -- radius ``s``;
* square   -- axis aligned, half side ``SQUARE_HALF * s`` (0.9 s);
* triangle -- upright equilateral, side ``TRIANGLE_SIDE * s`` (2.16 s), its
  bounding box centred on ``(x, y)``.

A shape turned by ``angle`` degrees (clockwise on screen) is the upright one
rotated about ``(x, y)``.  Every kind fits in the square of half side
``HALF_EXTENT * s`` (1.1 s) around the centre, and turned, in the one of half
side ``TURNED_EXTENT * s`` (1.43 s: a triangle's base corners), so changing a
shape's kind never moves it out of the image or into another shape.  Scenes are
upright unless ``random_scene`` is given a ``turned_prob``; an upright draw
consumes the random stream exactly as before angles existed, so seeded scene
sequences are unchanged.  Sizes are drawn from ``SIZE_RANGE`` (9..17 px radius at 64 px)
for single-shape scenes and ``TWO_SHAPE_SIZE_RANGE`` (7..12 px) for two-shape
scenes; shapes stay ``MARGIN`` (2 px) clear of the image border and, in two-shape
scenes, their bounding squares are at least ``GAP`` (2 px) apart and the
larger shape has at least ``MAIN_AREA_RATIO`` (1.25) times the area of the
other, so the "main" (largest) shape is unambiguous.

Rendering is deterministic: the scene is rasterised at ``SUPERSAMPLE`` (4x)
resolution with exact point-in-shape tests and box-averaged down with integer
arithmetic, which gives antialiased edges while pixels entirely outside
(inside) a shape keep exactly the background (shape) value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

import numpy as np

REFERENCE_SIZE = 64
SUPERSAMPLE = 4

# Shape colours.  Chosen to be >= ~80 RGB units apart from each other and from
# every background model (plain colour or texture tone segment).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (250, 130, 20),
    "yellow": (245, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (150, 50, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Plain backgrounds: name -> RGB.  'white' and 'black' are also shape colours
# (a shape is never drawn in its background's colour); 'gray' is not.
PLAIN_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": COLOURS["white"],
    "black": COLOURS["black"],
}

# Textures: name -> (tone A, tone B).
TEXTURES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "stripes": ((70, 140, 150), (40, 95, 105)),  # diagonal teal stripes
    "checkerboard": ((205, 180, 140), (150, 115, 80)),  # tan / brown squares
}
STRIPE_PERIOD = 12.0  # reference px, measured along x + y
CHECKER_CELL = 8.0  # reference px

# Background name -> caption phrase ("... on a {phrase} background").
BACKGROUNDS: dict[str, str] = {
    "gray": "gray",
    "white": "white",
    "black": "black",
    "stripes": "striped",
    "checkerboard": "checkered",
}

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "background")

SQUARE_HALF = 0.9
TRIANGLE_SIDE = 2.16
HALF_EXTENT = 1.1
# a turned shape's reach from (x, y): the square's corner 0.9 * sqrt(2) = 1.27 s, the triangle's base
# corners (rotated about its bounding box's centre) sqrt(1.08^2 + 0.935^2) = 1.43 s
TURNED_EXTENT = 1.43
SIZE_RANGE = (9.0, 17.0)
TWO_SHAPE_SIZE_RANGE = (7.0, 12.0)
MARGIN = 2.0
GAP = 2.0
MAIN_AREA_RATIO = 1.25  # two-shape scenes: largest area >= 1.25 x the other


@dataclass(frozen=True)
class Shape:
    """One shape.  ``size``, ``x``, ``y`` are in reference (64 px canvas) pixels; ``angle`` in degrees,
    clockwise on screen (a circle ignores it; an edit of kind keeps it)."""

    kind: str
    colour: str
    size: float
    x: float
    y: float
    angle: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"unknown shape kind {self.kind!r}; expected one of {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {tuple(COLOURS)}")
        if not self.size > 0:
            raise ValueError(f"shape size must be positive, got {self.size!r}")

    @property
    def area(self) -> float:
        """Area in reference px^2."""
        s = self.size
        if self.kind == "circle":
            return float(np.pi * s * s)
        if self.kind == "square":
            return float((2 * SQUARE_HALF * s) ** 2)
        side = TRIANGLE_SIDE * s
        return float(np.sqrt(3) / 4 * side * side)

    @property
    def extent(self) -> float:
        """Half side of the kind-independent bounding square (reference px)."""
        return (TURNED_EXTENT if self.angle % 360 else HALF_EXTENT) * self.size

    def to_dict(self) -> dict:
        return {"kind": self.kind, "colour": self.colour, "size": float(self.size),
                "x": float(self.x), "y": float(self.y), "angle": float(self.angle)}

    @classmethod
    def from_dict(cls, d: dict) -> "Shape":
        return cls(kind=str(d["kind"]), colour=str(d["colour"]), size=float(d["size"]),
                   x=float(d["x"]), y=float(d["y"]), angle=float(d.get("angle", 0.0)))


@dataclass(frozen=True)
class Scene:
    """Shapes (drawn in order) on a background (plain colour or texture name)."""

    shapes: tuple[Shape, ...]
    background: str

    def __post_init__(self) -> None:
        if not isinstance(self.shapes, tuple):
            object.__setattr__(self, "shapes", tuple(self.shapes))
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; "
                             f"expected one of {tuple(BACKGROUNDS)}")
        for s in self.shapes:
            if not isinstance(s, Shape):
                raise TypeError(f"Scene.shapes must hold Shape objects, got {type(s).__name__}")
            if s.colour == self.background:
                raise ValueError(f"a {s.colour} shape cannot sit on a {self.background} background")

    @property
    def main_index(self) -> int:
        """Index of the largest shape (the one the checker reports as 'main')."""
        if not self.shapes:
            raise ValueError("scene has no shapes")
        return int(np.argmax([s.area for s in self.shapes]))

    @property
    def main(self) -> Shape:
        return self.shapes[self.main_index]

    def to_dict(self) -> dict:
        return {"background": self.background, "shapes": [s.to_dict() for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(shapes=tuple(Shape.from_dict(s) for s in d["shapes"]),
                   background=str(d["background"]))


# --------------------------------------------------------------------------
# Random scenes and edits
# --------------------------------------------------------------------------

def _boxes_apart(a: Shape, b: Shape, gap: float = GAP) -> bool:
    need = a.extent + b.extent + gap
    return abs(a.x - b.x) >= need or abs(a.y - b.y) >= need


def _place(rng: np.random.Generator, extent: float) -> tuple[float, float]:
    lo = extent + MARGIN
    hi = REFERENCE_SIZE - lo
    x, y = rng.uniform(lo, hi, size=2)
    return float(x), float(y)


def random_scene(rng: np.random.Generator, two_shapes_prob: float = 0.0,
                 size_range: tuple[float, float] | None = None,
                 backgrounds: tuple[str, ...] | None = None,
                 colours: tuple[str, ...] | None = None,
                 shapes: tuple[str, ...] | None = None, turned_prob: float = 0.0) -> Scene:
    """Draw a random scene.

    ``size_range`` (reference px, shape ``size``) defaults to ``SIZE_RANGE``
    for one shape and ``TWO_SHAPE_SIZE_RANGE`` for two.  ``backgrounds``,
    ``colours`` and ``shapes`` restrict the vocabulary.  Two shapes always get
    different colours, neither equal to the background.  Each shape is turned
    by a uniform angle in [0, 360) with probability ``turned_prob`` (0: the
    random stream is drawn from exactly as in scenes without angles).
    """
    backgrounds = tuple(backgrounds or BACKGROUNDS)
    colours = tuple(colours or COLOURS)
    kinds = tuple(shapes or SHAPES)
    n_shapes = 2 if rng.random() < two_shapes_prob else 1
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    allowed = [c for c in colours if c != background]
    if len(allowed) < n_shapes:
        raise ValueError("not enough colours distinct from the background")
    picked = rng.choice(len(allowed), size=n_shapes, replace=False)
    cols = [allowed[int(i)] for i in picked]
    ks = [kinds[int(rng.integers(len(kinds)))] for _ in range(n_shapes)]
    angles = [_angle(rng, turned_prob) for _ in range(n_shapes)]
    lo, hi = size_range or (SIZE_RANGE if n_shapes == 1 else TWO_SHAPE_SIZE_RANGE)
    if n_shapes == 1:
        size = float(rng.uniform(lo, hi))
        x, y = _place(rng, Shape(ks[0], cols[0], size, 0.0, 0.0, angles[0]).extent)
        return Scene((Shape(ks[0], cols[0], size, x, y, angles[0]),), background)
    while True:  # rejection sampling; shrink sizes if placement keeps failing
        sizes = [float(v) for v in rng.uniform(lo, hi, size=2)]
        areas = [Shape(k, c, s, 0.0, 0.0).area for k, c, s in zip(ks, cols, sizes)]
        if max(areas) < MAIN_AREA_RATIO * min(areas):
            continue  # keep the main (largest) shape unambiguous
        for _ in range(100):
            placed = []
            for k, c, s, a in zip(ks, cols, sizes, angles):
                x, y = _place(rng, Shape(k, c, s, 0.0, 0.0, a).extent)
                placed.append(Shape(k, c, s, x, y, a))
            if _boxes_apart(placed[0], placed[1]):
                return Scene(tuple(placed), background)
        lo, hi = lo * 0.9, hi * 0.9


def _angle(rng: np.random.Generator, turned_prob: float) -> float:
    """0 (upright) or a uniform angle in [0, 360) with probability turned_prob; draws nothing when it is 0."""
    if not 0.0 <= turned_prob <= 1.0:
        raise ValueError(f"turned_prob must be in [0, 1], got {turned_prob!r}")
    if turned_prob == 0.0 or rng.random() >= turned_prob:
        return 0.0
    return float(rng.uniform(0.0, 360.0))


def edit_scene(scene: Scene, attribute: str, new_value: str, index: int = 0) -> Scene:
    """The edited twin: same layout, one attribute changed.

    ``attribute`` is 'colour' or 'shape' (of ``scene.shapes[index]``) or
    'background'.  Raises ValueError for unknown values or when the result
    would put a shape on a background of its own colour.
    """
    if attribute == "background":
        if new_value not in BACKGROUNDS:
            raise ValueError(f"unknown background {new_value!r}")
        return Scene(scene.shapes, new_value)  # validation rejects colour clashes
    if attribute not in ("colour", "shape"):
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")
    if not -len(scene.shapes) <= index < len(scene.shapes):
        raise IndexError(f"shape index {index} out of range for {len(scene.shapes)} shapes")
    old = scene.shapes[index]
    if attribute == "colour":
        new = Shape(old.kind, new_value, old.size, old.x, old.y, old.angle)
    else:
        new = Shape(new_value, old.colour, old.size, old.x, old.y, old.angle)
    shapes = list(scene.shapes)
    shapes[index] = new
    return Scene(tuple(shapes), scene.background)


# the turns that map a shape onto itself: a square's quarter turns, a triangle's thirds (a circle's: every
# angle, sampled every LOOKALIKE_STEP_DEG: a twin triangle's read centre moves under 0.1 px a degree)
SYMMETRY_TURNS = {"square": 4, "triangle": 3}
LOOKALIKE_STEP_DEG = 1.0


def centroid(shape: Shape) -> tuple[float, float]:
    """The shape's centre of area (reference px): (x, y), except for a triangle, whose upright bounding box is
    centred on (x, y): its centroid lies a sixth of its height below that, turned with it."""
    if shape.kind != "triangle":
        return shape.x, shape.y
    d = TRIANGLE_SIDE * shape.size * np.sqrt(3) / 12
    a = np.deg2rad(shape.angle)
    return shape.x - d * np.sin(a), shape.y + d * np.cos(a)


def lookalikes(shape: Shape) -> list[Shape]:
    """The shapes that render the same picture as ``shape``, itself first: ``shape`` turned about its centroid
    by each turn that maps it onto itself.  A picture cannot tell them apart, but they are different (x, y,
    angle), which an edit of kind keeps: a turned square made a triangle may point four ways, and a triangle
    made a circle may be centred on three points."""
    if shape.kind == "circle":
        turns = np.arange(0.0, 360.0, LOOKALIKE_STEP_DEG)
    else:
        turns = 360.0 / SYMMETRY_TURNS[shape.kind] * np.arange(SYMMETRY_TURNS[shape.kind])
    cx, cy = centroid(shape)
    dx, dy = shape.x - cx, shape.y - cy
    out = [shape]  # itself, exactly (turning by 0 about the centroid could round its (x, y))
    for turn in turns[1:]:
        c, s = np.cos(np.deg2rad(turn)), np.sin(np.deg2rad(turn))
        out.append(Shape(shape.kind, shape.colour, shape.size, float(cx + c * dx - s * dy),
                         float(cy + s * dx + c * dy), float((shape.angle + turn) % 360)))
    return out


def edited_twins(scene: Scene, attribute: str, new_value: str, index: int = 0) -> list[Scene]:
    """Every twin the world could have meant by the picture of ``scene``, :func:`edit_scene`'s first: one for a
    colour or background edit; for an edit of kind, one per lookalike of the edited shape (they differ: see
    :func:`lookalikes`) that the world draws.  It draws a shape upright (angle 0) or at a uniform angle, so an
    upright square or triangle was drawn upright (a turned one lands on a quarter or third turn with chance
    zero) and has one twin; a turned one may be any of its lookalikes, equally likely, and a circle any angle."""
    if attribute != "shape" or (scene.shapes[index].kind != "circle" and scene.shapes[index].angle % 360 == 0):
        return [edit_scene(scene, attribute, new_value, index)]
    twins = []
    for look in lookalikes(scene.shapes[index]):
        shapes = list(scene.shapes)
        shapes[index] = look
        twins.append(edit_scene(Scene(tuple(shapes), scene.background), attribute, new_value, index))
    return twins


def valid_edit_values(scene: Scene, attribute: str, index: int = 0) -> list[str]:
    """All values different from the current one that give a valid scene.

    For colour edits the new colour also differs from the other shapes'
    colours, so the shapes stay distinguishable.
    """
    if attribute == "background":
        used = {s.colour for s in scene.shapes}
        return [b for b in BACKGROUNDS if b != scene.background and b not in used]
    shape = scene.shapes[index]
    if attribute == "shape":
        return [k for k in SHAPES if k != shape.kind]
    if attribute == "colour":
        others = {s.colour for i, s in enumerate(scene.shapes) if i != index % len(scene.shapes)}
        return [c for c in COLOURS
                if c != shape.colour and c != scene.background and c not in others]
    raise ValueError(f"unknown attribute {attribute!r}; expected one of {ATTRIBUTES}")


def random_edit(rng: np.random.Generator, scene: Scene, index: int = 0,
                attributes: tuple[str, ...] = ATTRIBUTES) -> tuple[str, str]:
    """A random valid edit ``(attribute, new_value)`` with a value different from
    the current one (colour never the background's, background never a shape's
    colour)."""
    attrs = [a for a in attributes if valid_edit_values(scene, a, index)]
    if not attrs:
        raise ValueError("no valid edit for this scene")
    attribute = attrs[int(rng.integers(len(attrs)))]
    values = valid_edit_values(scene, attribute, index)
    return attribute, values[int(rng.integers(len(values)))]


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersample-pixel centres in reference units, shapes (1, N) and (N, 1)."""
    n = size * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float64) + 0.5) * (REFERENCE_SIZE / n)
    return c[None, :], c[:, None]


def _shape_mask_ss(shape: Shape, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    dx, dy = X - shape.x, Y - shape.y
    if shape.angle % 360 and shape.kind != "circle":  # into the upright shape's frame: rotate back by angle
        a = np.deg2rad(shape.angle)
        dx, dy = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    s = shape.size
    if shape.kind == "circle":
        return dx * dx + dy * dy <= s * s
    if shape.kind == "square":
        h = SQUARE_HALF * s
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    side = TRIANGLE_SIDE * s
    hw, hh = side / 2, side * np.sqrt(3) / 4  # half width, half height
    return (dy <= hh) & (np.abs(dx) <= hw * (dy + hh) / (2 * hh))


def _background_ss(name: str, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    shape = (Y.shape[0], X.shape[1], 3)
    if name in PLAIN_BACKGROUNDS:
        return np.broadcast_to(np.array(PLAIN_BACKGROUNDS[name], np.uint8), shape).copy()
    a, b = (np.array(t, np.uint8) for t in TEXTURES[name])
    if name == "stripes":
        sel = np.floor((X + Y) / (STRIPE_PERIOD / 2)).astype(np.int64) % 2 == 0
    elif name == "checkerboard":
        sel = (np.floor(X / CHECKER_CELL) + np.floor(Y / CHECKER_CELL)).astype(np.int64) % 2 == 0
    else:  # pragma: no cover - guarded by Scene validation
        raise ValueError(name)
    return np.where(sel[..., None], a, b)


def _downsample(img_ss: np.ndarray) -> np.ndarray:
    f = SUPERSAMPLE
    h, w = img_ss.shape[0] // f, img_ss.shape[1] // f
    acc = img_ss.reshape(h, f, w, f, -1).astype(np.int32).sum(axis=(1, 3))
    return ((acc + (f * f) // 2) // (f * f)).astype(np.uint8)


def _check_size(size: int) -> int:
    if int(size) != size or size < 8:
        raise ValueError(f"render size must be an integer >= 8, got {size!r}")
    return int(size)


@lru_cache(maxsize=32)
def _background_cached(name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(supersampled, downsampled) background; read-only, callers copy."""
    X, Y = _grid(size)
    ss = _background_ss(name, X, Y)
    low = _downsample(ss)
    ss.setflags(write=False)
    low.setflags(write=False)
    return ss, low


def _window(shape: Shape, size: int) -> tuple[slice, slice]:
    """Output-pixel window (rows, cols) that contains ``shape`` whatever its kind."""
    scale = size / REFERENCE_SIZE
    e = shape.extent

    def rng(c: float) -> slice:
        lo = max(0, int(np.floor((c - e) * scale)) - 1)
        hi = min(size, int(np.ceil((c + e) * scale)) + 1)
        return slice(lo, max(lo, hi))

    return rng(shape.y), rng(shape.x)


def _ss(sl: slice) -> slice:
    return slice(sl.start * SUPERSAMPLE, sl.stop * SUPERSAMPLE)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """Render ``scene`` to a ``(size, size, 3)`` uint8 RGB image (deterministic,
    antialiased)."""
    size = _check_size(size)
    bg_ss, bg_low = _background_cached(scene.background, size)
    if not scene.shapes:
        return bg_low.copy()
    canvas = bg_ss.copy()
    out = bg_low.copy()
    X, Y = _grid(size)
    windows = []
    for shape in scene.shapes:
        rows, cols = _window(shape, size)
        rs, cs = _ss(rows), _ss(cols)
        m = _shape_mask_ss(shape, X[:, cs], Y[rs, :])
        canvas[rs, cs][m] = COLOURS[shape.colour]
        windows.append((rows, cols))
    for rows, cols in windows:  # after all shapes: windows may overlap
        out[rows, cols] = _downsample(canvas[_ss(rows), _ss(cols)])
    return out


def shape_coverage(scene: Scene, index: int = 0, size: int = 64) -> np.ndarray:
    """Fraction (0..1, float32, ``(size, size)``) of each pixel covered by
    ``scene.shapes[index]`` (ignoring occlusion; shapes never overlap)."""
    size = _check_size(size)
    shape = scene.shapes[index]
    X, Y = _grid(size)
    rows, cols = _window(shape, size)
    m = _shape_mask_ss(shape, X[:, _ss(cols)], Y[_ss(rows), :]).astype(np.int32)
    f = SUPERSAMPLE
    counts = m.reshape(m.shape[0] // f, f, m.shape[1] // f, f).sum(axis=(1, 3))
    cov = np.zeros((size, size), np.float32)
    cov[rows, cols] = counts / np.float32(f * f)
    return cov


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(shape: Shape) -> str:
    return f"{_article(shape.colour)} {shape.colour} {shape.kind}"


def caption(scene: Scene) -> str:
    """'a red circle on a gray background', 'an orange square and a blue
    triangle on a striped background'."""
    bg = BACKGROUNDS[scene.background]
    things = " and ".join(_phrase(s) for s in scene.shapes) or "nothing"
    return f"{things} on {_article(bg)} {bg} background"


def parse_caption(text: str) -> dict:
    """Inverse of :func:`caption` (layout aside):
    ``{'background': name, 'shapes': [(colour, kind), ...]}``."""
    words = text.strip().lower().rstrip(".").split()
    if len(words) < 4 or words[-1] != "background" or words[-4] != "on":
        raise ValueError(f"not a toy-world caption: {text!r}")
    phrase = words[-2]
    bgs = [b for b, p in BACKGROUNDS.items() if p == phrase]
    if not bgs:
        raise ValueError(f"unknown background phrase {phrase!r}")
    shapes = []
    for part in " ".join(words[:-4]).split(" and "):
        toks = part.split()
        if len(toks) != 3 or toks[0] not in ("a", "an") or toks[1] not in COLOURS \
                or toks[2] not in SHAPES:
            raise ValueError(f"cannot parse shape phrase {part!r}")
        shapes.append((toks[1], toks[2]))
    return {"background": bgs[0], "shapes": shapes}


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------

def iter_dataset(seed: int, n: int, size: int = 64, two_shapes_prob: float = 0.0,
                 **scene_kwargs) -> Iterator[tuple[Scene, np.ndarray, str]]:
    """Yield ``n`` ``(scene, image, caption)`` triples; same seed -> same output."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        sc = random_scene(rng, two_shapes_prob=two_shapes_prob, **scene_kwargs)
        yield sc, render(sc, size), caption(sc)


def dataset(seed: int, n: int, size: int = 64, two_shapes_prob: float = 0.0,
            **scene_kwargs) -> list[tuple[Scene, np.ndarray, str]]:
    """List of ``n`` ``(scene, image, caption)`` triples; same seed -> identical output."""
    return list(iter_dataset(seed, n, size, two_shapes_prob, **scene_kwargs))


def edit_pairs(seed: int, n: int, size: int = 64, two_shapes_prob: float = 0.0,
               attributes: tuple[str, ...] = ATTRIBUTES, **scene_kwargs) -> list[dict]:
    """``n`` (source, edited twin) pairs for evaluating edits.  Each item has keys
    scene, image, caption, attribute, value, index, edited_scene,
    edited_image, edited_caption.  The edit targets the main (largest) shape."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sc = random_scene(rng, two_shapes_prob=two_shapes_prob, **scene_kwargs)
        idx = sc.main_index
        attr, value = random_edit(rng, sc, index=idx, attributes=attributes)
        ed = edit_scene(sc, attr, value, index=idx)
        out.append({"scene": sc, "image": render(sc, size), "caption": caption(sc),
                    "attribute": attr, "value": value, "index": idx,
                    "edited_scene": ed, "edited_image": render(ed, size),
                    "edited_caption": caption(ed)})
    return out
