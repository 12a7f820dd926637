"""Reading, preparing, saving and tiling photos. Every image here is a uint8 RGB array of shape (H, W, 3).

OpenCV decodes the pixels in IMREAD_UNCHANGED mode, which keeps alpha and 16-bit depth but ignores the
EXIF orientation (for most formats); Pillow reads just that orientation, and we apply it.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from editing.core.errors import UserError
from editing.core.files import atomic_write

PathLike = str | os.PathLike

# Named in every "cannot read" message, so the user knows what to give instead.
EXPECTED_KIND = "a photo file such as PNG, JPEG, WebP, TIFF or BMP"

# The most pixels a photo's header may claim before anything is decoded (raise it with --max-pixels): 100
# megapixels is past any camera's photo, and decodes to 300 MB of RGB (800 MB at 16-bit RGBA); a header
# claiming far more is either a mistake or a decompression bomb.
MAX_IMAGE_PIXELS = 100_000_000
# Bytes a file may hold per allowed pixel (16-bit RGBA, uncompressed) plus room for metadata: past that the
# file is refused before it is read into memory.
MAX_BYTES_PER_PIXEL = 8
METADATA_SLACK_BYTES = 64 * 2 ** 20

# EXIF tag 0x0112 says how the camera held the picture; viewers rotate by it, so we must too.
EXIF_ORIENTATION_TAG = 0x0112

# OpenCV's TIFF decoder applies the orientation tag itself, even in IMREAD_UNCHANGED mode.
FORMATS_ORIENTED_BY_OPENCV = frozenset({"TIFF"})

# How to turn a stored (H, W, C) array upright for each EXIF orientation value (1 = already upright).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transposed
    6: lambda a: np.rot90(a, k=-1),  # needs 90 degrees clockwise
    7: lambda a: np.rot90(a.swapaxes(0, 1), k=2),  # transposed across the other diagonal
    8: lambda a: np.rot90(a, k=1),  # needs 90 degrees counter-clockwise
}

# Caption band under each grid cell: a tenth of the image height, but never too thin to read.
CAPTION_BAND_FRACTION = 0.1
MIN_CAPTION_BAND_PX = 14
# Long captions shrink to at most half the size that fills the band (and never below the scale at which
# OpenCV's Hershey font stays readable); past that they are clipped with "...".
MAX_CAPTION_SHRINK = 0.5
MIN_FONT_SCALE = 0.35
CAPTION_FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_PAD_PX = 2  # keeps text off the cell's edges
ANTI_ALIAS_SPILL_PX = 1  # LINE_AA shades about a pixel beyond the box cv2.getTextSize reports


@dataclass(frozen=True)
class Crop:
    """Pixels cut from each side before the centre square crop (the Prompt-to-Prompt notebooks' load_512 offsets)."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise UserError(f"crop offset {f.name}={value!r} is invalid; give a whole number of pixels >= 0")


def read_image(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read any photo as uint8 RGB (H, W, 3).

    Only a regular file is opened (a folder, a FIFO, a device is refused by its type first), and its header's
    size is checked against max_pixels before any pixel is decoded. Grey images are repeated to three
    channels, transparency is composited on white, 16-bit and float images are scaled to 8 bits, and the EXIF
    orientation is applied so the picture comes out upright. Raises UserError, naming the path, for a
    missing, empty, unreadable, non-image, too large or corrupt file.
    """
    data = _read_bytes(path, max_pixels)
    orientation, pillow_format = _inspect_header(data, path, max_pixels)
    with _opencv_silent():  # a truncated file makes OpenCV print its own warning; ours is the one line
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        kind = f" ({pillow_format} file)" if pillow_format else ""
        raise UserError(f"cannot decode image {path}{kind}: it is not an image, or it is truncated or corrupt; "
                        f"expected {EXPECTED_KIND}")
    if orientation is None:
        # Pillow refused the file as too large to inspect, so let OpenCV apply the EXIF orientation itself
        # (that mode keeps 16-bit depth but drops transparency).
        with _opencv_silent():
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    rgb = _to_uint8_rgb(pixels, path)
    if orientation in _UPRIGHT and pillow_format not in FORMATS_ORIENTED_BY_OPENCV:
        rgb = np.ascontiguousarray(_UPRIGHT[orientation](rgb))
    return rgb


def check_max_pixels(value) -> int:
    """--max-pixels: a whole number >= 1."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--max-pixels must be a whole number of pixels, got {value!r}") from None
    if isinstance(value, bool) or number < 1:
        raise UserError(f"--max-pixels must be at least 1, got {value!r}")
    return number


@contextmanager
def _opencv_silent():
    logging = cv2.utils.logging
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


def prepare_image(rgb: np.ndarray, size: int, crop: Crop = Crop()) -> np.ndarray:
    """Apply offsets, centre-crop to a square, resize to size x size; uint8 RGB (size, size, 3). Never mutates input.

    Matches the Prompt-to-Prompt notebooks' load_512, except that offsets which would leave no pixels
    raise UserError instead of being clamped silently.
    """
    _check_rgb(rgb, "prepare_image input")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise UserError(f"image size {size!r} is invalid; give a whole number of pixels > 0, e.g. 512")
    height, width = rgb.shape[:2]
    if crop.left + crop.right >= width or crop.top + crop.bottom >= height:
        raise UserError(f"crop offsets left={crop.left} right={crop.right} top={crop.top} bottom={crop.bottom} "
                        f"leave nothing of a {width}x{height} image; make them smaller")
    image = rgb[crop.top:height - crop.bottom, crop.left:width - crop.right]
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top:top + side, left:left + side]
    if side == size:
        return square.copy()  # a C-contiguous copy, so callers never share memory with the input
    # INTER_AREA averages when shrinking (no aliasing); INTER_CUBIC is sharper when enlarging, and
    # OpenCV saturates its overshoot to 0..255 for uint8, which is the clipping we want.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(square), (int(size), int(size)), interpolation=interpolation)


def load_image(path: PathLike, size: int, crop: Crop = Crop(), max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """read_image then prepare_image: the photo as uint8 RGB (size, size, 3)."""
    return prepare_image(read_image(path, max_pixels), size, crop)


def save_image(path: PathLike, rgb: np.ndarray) -> None:
    """Write a PNG atomically (editing.core.files), so no half-written file is ever left.

    Creates the folder if needed. Raises UserError if the name does not end in .png or the file cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"cannot save {path}: images are saved as PNG, so give a file name ending in .png")
    _check_rgb(rgb, "save_image input")
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {rgb.shape} image as PNG")
    atomic_write(path, encoded.tobytes())


def image_grid(images: list[np.ndarray], captions: list[str], cols: int | None = None) -> np.ndarray:
    """Tile equal-size uint8 RGB images in a row (or rows of `cols`), each with its caption drawn in a white band beneath.

    Captions are drawn with cv2.putText, shrunk to fit the cell and, if still too wide, clipped with "...";
    characters outside printable ASCII (which the Hershey font cannot draw) become "?". Unused cells of
    the last row stay white. Used for grid.png (source | reconstruction | edits).
    """
    if not images or len(images) != len(captions):
        raise ValueError(f"image_grid needs one caption per image and at least one image, "
                         f"got {len(images)} images and {len(captions)} captions")
    for image in images:
        _check_rgb(image, "image_grid image", error=ValueError)
        if image.shape != images[0].shape:
            raise ValueError(f"image_grid images must share one size, got {images[0].shape} and {image.shape}")
    if cols is None:
        cols = len(images)
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
        raise ValueError(f"image_grid cols must be a whole number >= 1, got {cols!r}")
    cols = min(int(cols), len(images))
    rows = math.ceil(len(images) / cols)
    height, width = images[0].shape[:2]
    band = max(MIN_CAPTION_BAND_PX, round(height * CAPTION_BAND_FRACTION))
    grid = np.full((rows * (height + band), cols * width, 3), 255, np.uint8)
    for index, (image, caption) in enumerate(zip(images, captions)):
        y, x = (index // cols) * (height + band), (index % cols) * width
        grid[y:y + height, x:x + width] = image
        grid[y + height:y + height + band, x:x + width] = _caption_band(caption, width, band)
    return grid


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a pipe (FIFO)"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _read_bytes(path: PathLike, max_pixels: int) -> bytes:
    """The bytes of a regular file, or a UserError that says what is wrong with the path.

    The type is checked before the file is opened (a FIFO would block, /dev/zero never ends), and again on
    the open descriptor (O_NONBLOCK: even a FIFO swapped in meanwhile cannot block the open)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}; check the file name and folder") from None
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read image {path}: {getattr(error, 'strerror', None) or error}; "
                        "check it is a readable file") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path} is {_file_kind(info.st_mode)}, not an image file; give the path of {EXPECTED_KIND}")
    if info.st_size == 0:
        raise UserError(f"image file {path} is empty (0 bytes); expected {EXPECTED_KIND}")
    limit = max_pixels * MAX_BYTES_PER_PIXEL + METADATA_SLACK_BYTES
    if info.st_size > limit:
        raise UserError(f"image file {path} holds {info.st_size} bytes, more than any image of at most "
                        f"{max_pixels} pixels needs ({limit}); raise --max-pixels if it really is a photo")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UserError(f"{path} is not a regular file; give the path of {EXPECTED_KIND}")
            data = file.read(limit + 1)
    except OSError as error:
        raise UserError(f"cannot read image {path}: {error.strerror or error}; check it is a readable file") from None
    if not data:
        raise UserError(f"image file {path} is empty (0 bytes); expected {EXPECTED_KIND}")
    return data


def _inspect_header(data: bytes, path: PathLike, max_pixels: int) -> tuple[int | None, str | None]:
    """Check the size the header claims against max_pixels (Pillow reads only the header here), and return
    (EXIF orientation, Pillow's name for the format), best effort.

    Orientation is 1 when there is no tag or Pillow cannot parse the file or its EXIF (the pixels may still
    be fine for OpenCV), and None when Pillow refuses the image as too large to inspect (only possible when
    max_pixels is above Pillow's own limit).
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns that big photos may be "decompression bombs"; we only read their header here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                pillow_format = image.format
                if width * height > max_pixels:
                    raise UserError(f"image {path} is {width} x {height} pixels by its header, more than the "
                                    f"limit of {max_pixels} pixels; raise it with --max-pixels if the photo is "
                                    "real")
                orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Image.DecompressionBombError as error:  # past Pillow's own limit: it names the size, not the sides
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels <= pillow_limit:
            claimed = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{claimed.group(1)} pixels" if claimed else f"more than {pillow_limit} pixels"
            raise UserError(f"image {path} is {size} by its header, more than the limit of {max_pixels} pixels; "
                            "raise it with --max-pixels if the photo is real") from None
        return None, None
    except UserError:
        raise
    except Exception:  # unknown format or broken metadata: metadata is optional, the pixels decide
        return 1, None
    return (orientation if orientation in _UPRIGHT else 1), pillow_format


def _to_uint8_rgb(pixels: np.ndarray, path: PathLike) -> np.ndarray:
    """OpenCV's grey / grey+alpha / BGR / BGRA array of any supported depth as uint8 RGB, alpha composited on white."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2]
    if channels not in (1, 2, 3, 4):
        raise UserError(f"image {path} has {channels} channels; expected grey, RGB or RGBA ({EXPECTED_KIND})")
    has_alpha = channels in (2, 4)
    colour = pixels[:, :, :channels - 1] if has_alpha else pixels
    colour = colour[:, :, ::-1] if colour.shape[2] == 3 else np.repeat(colour, 3, axis=2)
    if not has_alpha and colour.dtype == np.uint8:
        return np.ascontiguousarray(colour)
    unit = _to_unit_float(colour, path)
    if has_alpha:
        alpha = _to_unit_float(pixels[:, :, -1:], path)
        unit = unit * alpha + (1.0 - alpha)  # "over" a white background
    # Scaling 0..1 to 0..255 and rounding maps uint16 v to round(v / 257), so 257 * k -> k exactly.
    return np.round(unit * 255.0).astype(np.uint8)


def _to_unit_float(values: np.ndarray, path: PathLike) -> np.ndarray:
    """Samples scaled to float64 in [0, 1]: uint8 / 255, uint16 / 65535, floats clipped (NaN -> 0)."""
    if values.dtype == np.uint8:
        return values / 255.0
    if values.dtype == np.uint16:
        return values / 65535.0
    if np.issubdtype(values.dtype, np.floating):
        return np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, 1.0)
    raise UserError(f"image {path} stores {values.dtype} samples, which are not supported; "
                    f"save it as an 8- or 16-bit PNG or JPEG")


def _check_rgb(rgb: object, what: str, error: type[Exception] = UserError) -> None:
    """Raise `error` unless rgb is a uint8 array of shape (H, W, 3) with H, W > 0."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or 0 in rgb.shape:
        described = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise error(f"{what} must be a uint8 RGB array of shape (H, W, 3), got a {described}")


def _caption_band(caption: str, width: int, height: int) -> np.ndarray:
    """A white (height, width, 3) band with the caption centred in black, shrunk to fit, clipped with '...' if still too wide."""
    band = np.full((height, width, 3), 255, np.uint8)
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(caption.split()))
    if not text:
        return band
    margin = CAPTION_PAD_PX + ANTI_ALIAS_SPILL_PX
    max_width, max_height = width - 2 * margin, height - 2 * margin
    (unit_width, unit_height), unit_baseline = cv2.getTextSize(text, CAPTION_FONT, 1.0, 1)
    fill_scale = max_height / (unit_height + unit_baseline)
    smallest = max(MIN_FONT_SCALE, fill_scale * MAX_CAPTION_SHRINK)
    scale = min(fill_scale, max(max_width / unit_width, smallest))
    shown = text
    while text and cv2.getTextSize(shown, CAPTION_FONT, scale, 1)[0][0] > max_width:
        text = text[:-1]
        shown = text.rstrip() + "..."
    (text_width, text_height), baseline = cv2.getTextSize(shown, CAPTION_FONT, scale, 1)
    x = max(margin, (width - text_width) // 2)
    y = (height + text_height - baseline) // 2  # centres the box from the cap line down to the descenders
    cv2.putText(band, shown, (x, y), CAPTION_FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band
