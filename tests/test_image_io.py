"""Tests for editing.core.image_io: reading any photo as upright uint8 RGB, cropping, atomic saving, grids."""

import os

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from editing.core import image_io
from editing.core.errors import UserError
from editing.core.image_io import Crop, image_grid, load_image, prepare_image, read_image, save_image


def asymmetric_rgb(height: int = 40, width: int = 64) -> np.ndarray:
    """Smooth colour ramps (JPEG keeps them well) whose every rotation and mirror image differs."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 255 // (width - 1), rows * 255 // (height - 1), np.full_like(rows, 60)],
                    axis=2).astype(np.uint8)


def with_exif_orientation(path, rgb: np.ndarray, orientation: int, **save_options) -> None:
    exif = Image.Exif()
    exif[image_io.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(rgb).save(path, exif=exif, **save_options)


# ---------------------------------------------------------------- read_image: pixel formats


def test_grayscale_png_becomes_rgb(tmp_path):
    grey = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    rgb = read_image(tmp_path / "grey.png")
    assert rgb.shape == (12, 20, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], grey)


def test_bgr_png_comes_back_as_rgb(tmp_path):
    rgb = asymmetric_rgb()
    cv2.imwrite(str(tmp_path / "colour.png"), rgb[:, :, ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "colour.png"), rgb)


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red
    rgba[0, 2] = (0, 0, 255, 128)  # half-transparent blue
    rgba[1] = (10, 20, 30, 255)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[:, :, [2, 1, 0, 3]])  # OpenCV writes BGRA
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (255, 0, 0)
    assert tuple(rgb[0, 2]) == (127, 127, 255)  # 255 * (1 - 128/255) = 127 of white shows through
    assert tuple(rgb[1, 0]) == (10, 20, 30)


def test_grey_with_alpha_png_is_composited_on_white(tmp_path):
    Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), [[[255, 255, 255], [0, 0, 0]]])


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    k = np.arange(256, dtype=np.uint16)
    bgr16 = np.stack([k * 257, k * 257, k * 257], axis=1)[None]  # 1 x 256 x 3, 257 * k everywhere
    bgr16[0, 0] = (65535, 128, 257 * 200 + 129)  # 128 / 257 rounds to 0, 51529 / 257 = 200.502 to 201
    cv2.imwrite(str(tmp_path / "deep.png"), bgr16)
    rgb = read_image(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 256, 3)
    np.testing.assert_array_equal(rgb[0, 1:], np.stack([k[1:]] * 3, axis=1))
    assert tuple(rgb[0, 0]) == (201, 0, 255)  # BGR read as RGB


def test_16_bit_grey_png(tmp_path):
    cv2.imwrite(str(tmp_path / "grey16.png"), np.array([[0, 257 * 100, 65535]], np.uint16))
    np.testing.assert_array_equal(read_image(tmp_path / "grey16.png")[0], [[0] * 3, [100] * 3, [255] * 3])


def test_float_tiff_is_clipped_to_0_1(tmp_path):
    grey = np.array([[-0.5, 0.25, 1.0, 2.0, np.nan]], np.float32)
    assert cv2.imwrite(str(tmp_path / "float.tiff"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "float.tiff")[0, :, 0], [0, 64, 255, 255, 0])


def test_non_ascii_path(tmp_path):
    rgb = asymmetric_rgb()
    path = tmp_path / "café_猫" / "фото.png"
    path.parent.mkdir()
    save_image(path, rgb)
    np.testing.assert_array_equal(read_image(str(path)), rgb)


# ---------------------------------------------------------------- read_image: EXIF orientation


def test_exif_orientation_6_jpeg_comes_out_upright(tmp_path):
    stored = asymmetric_rgb(40, 64)
    with_exif_orientation(tmp_path / "phone.jpg", stored, 6, quality=95)
    rgb = read_image(tmp_path / "phone.jpg")
    upright = np.rot90(stored, k=-1)  # orientation 6: the viewer turns the picture 90 degrees clockwise
    assert rgb.shape == upright.shape == (64, 40, 3)
    error = np.abs(rgb.astype(int) - upright).mean()
    assert error < 3, error
    assert np.abs(rgb.astype(int) - np.rot90(stored, k=1)).mean() > 30  # not turned the wrong way


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, orientation):
    stored = asymmetric_rgb(6, 10)
    with_exif_orientation(tmp_path / "o.png", stored, orientation)  # PNG: lossless, so exact
    with Image.open(tmp_path / "o.png") as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "o.png"), expected)


def test_tiff_orientation_is_applied_once(tmp_path):
    stored = asymmetric_rgb(6, 10)
    with_exif_orientation(tmp_path / "o.tiff", stored, 6)  # OpenCV's TIFF decoder turns it itself
    np.testing.assert_array_equal(read_image(tmp_path / "o.tiff"), np.rot90(stored, k=-1))


def test_orientation_still_applied_when_pillow_refuses_a_huge_image(tmp_path, monkeypatch):
    stored = asymmetric_rgb(40, 64)
    with_exif_orientation(tmp_path / "huge.jpg", stored, 8, quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # makes this small picture "too large" for Pillow
    rgb = read_image(tmp_path / "huge.jpg")
    assert rgb.shape == (64, 40, 3)
    assert np.abs(rgb.astype(int) - np.rot90(stored, k=1)).mean() < 3


# ---------------------------------------------------------------- read_image: bad input


def _jpeg_bytes() -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return encoded.tobytes()


def _png_bytes() -> bytes:
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return encoded.tobytes()


@pytest.mark.parametrize("kind, make, words", [
    ("missing", lambda p: None, "not found"),
    ("directory", lambda p: p.mkdir(), "folder"),
    ("empty", lambda p: p.write_bytes(b""), "empty"),
    ("text", lambda p: p.write_text("this is not a picture\n"), "not an image"),
    ("truncated jpeg", lambda p: p.write_bytes(_jpeg_bytes()[:-200]), "truncated"),
    ("truncated png", lambda p: p.write_bytes(_png_bytes()[: len(_png_bytes()) // 2]), "truncated"),
    ("corrupt header", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100), "corrupt"),
])
def test_bad_files_raise_user_error_naming_the_path(tmp_path, kind, make, words):
    path = tmp_path / "photo.png"
    make(path)
    with pytest.raises(UserError) as caught:
        read_image(path)
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message
    if kind != "missing":
        assert "PNG, JPEG" in message  # says what kind of file is expected


# ---------------------------------------------------------------- prepare_image


def index_image(height: int, width: int) -> np.ndarray:
    """Red = column index, green = row index, so the surviving pixels can be identified."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols, rows, np.zeros_like(rows)], axis=2).astype(np.uint8)


def test_left_offset_then_centre_square():
    image = index_image(100, 200)
    out = prepare_image(image, 100, Crop(left=50))  # 100 x 150 left, centre square starts at column 50 + 25
    np.testing.assert_array_equal(out[0, :, 0], np.arange(75, 175))
    np.testing.assert_array_equal(out[:, 0, 1], np.arange(100))


def test_top_and_bottom_offsets_then_centre_square():
    image = index_image(100, 200)
    out = prepare_image(image, 70, Crop(top=10, bottom=20))  # 70 x 200 left, square at column (200 - 70) // 2
    np.testing.assert_array_equal(out[0, :, 0], np.arange(65, 135))
    np.testing.assert_array_equal(out[:, 0, 1], np.arange(10, 80))


def test_tall_image_keeps_its_middle_rows():
    out = prepare_image(index_image(120, 50), 50, Crop(right=0))
    np.testing.assert_array_equal(out[:, 0, 1], np.arange(35, 85))


@pytest.mark.parametrize("size", [16, 64, 300])  # shrink, enlarge, enlarge a lot
def test_output_shape_and_dtype(size):
    out = prepare_image(asymmetric_rgb(40, 64), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_shrinking_averages_blocks():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = prepare_image(noise, 16)  # INTER_AREA at an integer factor is the mean of each 4 x 4 block
    block_means = noise.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    assert np.abs(out - block_means).max() <= 1


def test_enlarging_does_not_wrap_around():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255  # a hard edge makes cubic interpolation overshoot
    out = prepare_image(image, 64)
    assert out[:, :20].max() <= 10 and out[:, 44:].min() >= 245  # clipped, not wrapped to 250 or 5


def test_input_is_not_mutated_and_not_shared():
    image = index_image(100, 200)
    before = image.copy()
    for size in (100, 50, 150):
        out = prepare_image(image, size, Crop(left=50))
        out[:] = 0
        np.testing.assert_array_equal(image, before)
        assert not np.shares_memory(out, image)


@pytest.mark.parametrize("crop", [Crop(left=150, right=50), Crop(top=100), Crop(top=60, bottom=40)])
def test_offsets_that_leave_nothing_raise(crop):
    with pytest.raises(UserError, match="leave nothing"):
        prepare_image(index_image(100, 200), 64, crop)


@pytest.mark.parametrize("offsets", [{"left": -1}, {"top": 2.5}, {"bottom": "3"}, {"right": True}])
def test_bad_crop_offsets_raise(offsets):
    with pytest.raises(UserError, match="crop offset"):
        Crop(**offsets)


@pytest.mark.parametrize("size", [0, -5, 2.5, True, "512"])
def test_bad_size_raises(size):
    with pytest.raises(UserError, match="size"):
        prepare_image(index_image(10, 10), size)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8),
                                 np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8), [[0]]])
def test_bad_arrays_raise(bad):
    with pytest.raises(UserError, match="uint8 RGB"):
        prepare_image(bad, 8)


def test_real_photo_chelsea(tmp_path):
    cat = skimage.data.chelsea()  # 300 x 451 RGB
    save_image(tmp_path / "chelsea.png", cat)
    out = load_image(tmp_path / "chelsea.png", 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    square = cat[:, 75:375]  # the centre 300 x 300
    np.testing.assert_allclose(out.mean(axis=(0, 1)), square.mean(axis=(0, 1)), atol=1.0)


# ---------------------------------------------------------------- save_image


def test_save_writes_a_readable_png_and_no_temp_file(tmp_path):
    rgb = asymmetric_rgb()
    save_image(tmp_path / "out" / "edit.png", rgb)  # creates the folder
    assert os.listdir(tmp_path / "out") == ["edit.png"]
    assert (tmp_path / "out" / "edit.png").read_bytes().startswith(b"\x89PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "edit.png"), rgb)
    save_image(tmp_path / "out" / "edit.png", rgb[::-1])  # overwrites
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "edit.png"), rgb[::-1])
    assert os.listdir(tmp_path / "out") == ["edit.png"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    rgb = asymmetric_rgb()
    save_image(tmp_path / "edit.png", rgb)

    def failing_replace(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(UserError, match="cannot write .*No space left"):
        save_image(tmp_path / "edit.png", np.zeros_like(rgb))
    assert os.listdir(tmp_path) == ["edit.png"]
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(tmp_path / "edit.png"), rgb)


def test_save_rejects_other_extensions_and_bad_arrays(tmp_path):
    with pytest.raises(UserError, match=r"\.png"):
        save_image(tmp_path / "edit.jpg", asymmetric_rgb())
    with pytest.raises(UserError, match="uint8 RGB"):
        save_image(tmp_path / "edit.png", np.zeros((4, 4), np.float32))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- image_grid


def test_grid_in_one_row():
    images = [np.full((32, 48, 3), value, np.uint8) for value in (0, 100, 200)]
    grid = image_grid(images, ["source", "reconstruction", "a cat wearing a hat"])
    band = grid.shape[0] - 32
    assert grid.dtype == np.uint8 and grid.shape[1:] == (144, 3) and band >= image_io.MIN_CAPTION_BAND_PX
    for i, image in enumerate(images):
        np.testing.assert_array_equal(grid[:32, 48 * i:48 * (i + 1)], image)
        caption = grid[32:, 48 * i:48 * (i + 1)]
        assert caption.max() == 255 and caption.min() < 128  # white band with dark text


def test_grid_wraps_into_rows_and_leaves_unused_cells_white():
    images = [np.zeros((20, 30, 3), np.uint8)] * 3
    grid = image_grid(images, ["a", "b", "c"], cols=2)
    cell_height = grid.shape[0] // 2
    assert grid.shape == (2 * cell_height, 60, 3) and cell_height > 20
    np.testing.assert_array_equal(grid[cell_height:cell_height + 20, :30], 0)
    assert (grid[cell_height:, 30:] == 255).all()


def test_grid_long_or_odd_captions_fit_their_cell():
    images = [np.zeros((64, 64, 3), np.uint8)] * 3
    grid = image_grid(images, ["W" * 200, "a very long prompt " * 20, "caf\u00e9 \u732b\nsecond line"])
    pad = image_io.CAPTION_PAD_PX
    for i in range(3):
        band = grid[64:, 64 * i:64 * (i + 1)]
        assert band.min() < 128  # something was drawn
        inside = band[pad:-pad, pad:-pad]
        assert (band == 255).sum() == band.size - (inside != 255).sum()  # nothing drawn in the padding


def test_grid_rejects_mismatched_input():
    small, large = np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="one caption per image"):
        image_grid([small, small], ["only one"])
    with pytest.raises(ValueError, match="one size"):
        image_grid([small, large], ["a", "b"])
    with pytest.raises(ValueError, match="cols"):
        image_grid([small], ["a"], cols=0)
