"""Tests for pipeline.data.images: real files of every awkward kind, written in tmp_path."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import (
    MAX_PIXELS_CONFIG_KEY,
    SUPPORTED_FORMATS,
    ImageDecodeError,
    UnsupportedFormatError,
    check_image_bytes,
    decode_image_bytes,
    load_image,
    resize_square,
    sniff_format,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _solid(height: int, width: int, color: tuple[int, int, int]) -> np.ndarray:
    return np.full((height, width, 3), color, dtype=np.uint8)


def _assert_one_line_reason(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


# sniff_format: content decides


def test_sniff_format_names_every_known_format_by_content(image_file_factory):
    files = {
        "jpeg": image_file_factory.jpeg("a.png"),
        "png": image_file_factory.png("b.jpg", _solid(4, 4, RED)),
        "gif": image_file_factory.gif("c.jpg", (RED,)),
        "bmp": image_file_factory.save("d.jpg", Image.new("RGB", (4, 4)), "BMP"),
        "webp": image_file_factory.webp("e.jpg"),
        "tiff": image_file_factory.tiff("f.jpg"),
        "heic": image_file_factory.heic("g.jpg"),
    }
    for expected, path in files.items():
        assert sniff_format(path) == expected


def test_sniff_format_returns_none_for_text_and_empty_files(image_file_factory):
    assert sniff_format(image_file_factory.text("notes.jpg")) is None
    assert sniff_format(image_file_factory.write_bytes("empty.jpg", b"")) is None
    assert sniff_format(image_file_factory.write_bytes("bm.bmp", b"BM is not a bitmap")) is None


# load_image: what is decoded and how


def test_load_image_returns_uint8_rgb(image_file_factory):
    image = load_image(image_file_factory.jpeg("cat.jpg", size=(24, 16)))
    assert image.shape == (16, 24, 3)
    assert image.dtype == np.uint8
    assert image.flags.writeable


def test_upper_case_extension_is_read(image_file_factory):
    assert load_image(image_file_factory.jpeg("CAT.JPG")).shape == (16, 24, 3)


def test_png_named_jpg_is_decoded_as_png(image_file_factory):
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = load_image(image_file_factory.png("really_a_png.jpg", pixels))
    np.testing.assert_array_equal(image, pixels)


def test_gif_named_jpg_is_decoded_as_gif(image_file_factory):
    image = load_image(image_file_factory.gif("really_a_gif.jpg", (GREEN,)))
    np.testing.assert_array_equal(image, _solid(8, 8, GREEN))


def test_animated_gif_gives_first_frame(image_file_factory):
    image = load_image(image_file_factory.gif("animated.gif", (RED, BLUE, GREEN)))
    np.testing.assert_array_equal(image, _solid(8, 8, RED))


def test_rgba_png_is_composited_on_white(image_file_factory):
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 255, 0)  # fully transparent blue
    pixels[1, 0] = (0, 0, 0, 128)  # half-transparent black
    image = load_image(image_file_factory.png("rgba.png", pixels))
    assert image.shape == (2, 2, 3)
    assert tuple(image[0, 0]) == RED
    assert tuple(image[0, 1]) == WHITE
    assert all(abs(int(value) - 127) <= 1 for value in image[1, 0])


def test_grayscale_becomes_three_equal_channels(image_file_factory):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = load_image(image_file_factory.png("gray.png", gray))
    assert image.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_cmyk_jpeg_becomes_rgb(image_file_factory):
    image = load_image(image_file_factory.cmyk_jpeg("cmyk.jpg", (0, 255, 255, 0)))
    assert image.shape == (16, 16, 3)
    red, green, blue = image.reshape(-1, 3).mean(axis=0)
    assert red > 230 and green < 25 and blue < 25


def test_16_bit_grayscale_png_is_scaled_not_clipped(image_file_factory):
    samples = np.array([[0, 255, 256, 32768, 65280, 65535]], dtype=np.uint16)
    image = load_image(image_file_factory.png16("deep.png", samples, color_type=0))
    np.testing.assert_array_equal(image[0, :, 0], [0, 0, 1, 128, 255, 255])
    np.testing.assert_array_equal(image[:, :, 0], image[:, :, 2])


def test_16_bit_rgb_png_is_scaled_not_clipped(image_file_factory):
    samples = np.zeros((1, 2, 3), dtype=np.uint16)
    samples[0, 0] = (65535, 32768, 1000)
    image = load_image(image_file_factory.png16("deep_rgb.png", samples, color_type=2))
    assert tuple(image[0, 0]) == (255, 128, 3)
    assert tuple(image[0, 1]) == (0, 0, 0)


def test_exif_orientation_6_is_decoded_upright(image_file_factory):
    # Stored 40 wide x 20 high: red left quarter, blue elsewhere. Orientation 6 means
    # "rotate 90 degrees clockwise to display", which moves the left edge to the top.
    stored = _solid(20, 40, BLUE)
    stored[:, :10] = RED
    image = load_image(image_file_factory.exif_rotated_jpeg("rotated.jpg", stored, 6))
    assert image.shape == (40, 20, 3)
    expected = np.rot90(stored, k=-1)
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 8
    assert image[:10, :, 0].mean() > 200 and image[:10, :, 2].mean() < 60  # red on top


def test_check_image_bytes_reports_the_upright_size(image_file_factory):
    path = image_file_factory.exif_rotated_jpeg("rotated.jpg", _solid(20, 40, RED), 6)
    info = check_image_bytes(path.read_bytes())
    assert (info.image_format, info.width, info.height) == ("jpeg", 20, 40)


@pytest.mark.parametrize("name", ["my photo.jpg", "été à Zürich.jpg", "日本語.jpg"])
@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_file_names_with_spaces_and_non_ascii_characters(image_file_factory, name, form):
    path = image_file_factory.jpeg(unicodedata.normalize(form, name))
    assert load_image(path).shape == (16, 24, 3)


# load_image: what is refused, with a one-line reason


def test_truncated_jpeg_is_refused_not_half_decoded(image_file_factory):
    with pytest.raises(ImageDecodeError) as error:
        load_image(image_file_factory.truncated_jpeg("cut.jpg"))
    _assert_one_line_reason(error, "truncated")


def test_zero_byte_file_is_refused(image_file_factory):
    with pytest.raises(ImageDecodeError) as error:
        load_image(image_file_factory.write_bytes("empty.jpg", b""))
    _assert_one_line_reason(error, "empty file (0 bytes)")


def test_text_file_named_jpg_is_refused(image_file_factory):
    with pytest.raises(ImageDecodeError) as error:
        load_image(image_file_factory.text("notes.jpg"))
    _assert_one_line_reason(error, "not an image", "text")


def test_binary_junk_is_refused_with_its_first_bytes(image_file_factory):
    with pytest.raises(ImageDecodeError) as error:
        load_image(image_file_factory.write_bytes("junk.jpg", bytes(range(256)) * 4))
    _assert_one_line_reason(error, "not an image", "00 01 02")


def test_corrupt_header_is_refused(image_file_factory):
    data = image_file_factory.jpeg("ok.jpg").read_bytes()
    path = image_file_factory.write_bytes("broken.jpg", data[:4] + b"\x00" * 40)
    with pytest.raises(ImageDecodeError) as error:
        load_image(path)
    _assert_one_line_reason(error, "JPEG")


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError) as error:
        load_image(tmp_path / "nowhere.jpg")
    _assert_one_line_reason(error, "cannot read file")


@pytest.mark.parametrize(
    ("writer", "image_format"), [("tiff", "tiff"), ("heic", "heic")]
)
def test_unsupported_formats_are_refused_and_named(image_file_factory, writer, image_format):
    path = getattr(image_file_factory, writer)(f"photo.{image_format}")
    with pytest.raises(UnsupportedFormatError) as error:
        load_image(path)
    assert error.value.image_format == image_format
    assert isinstance(error.value, ImageDecodeError)
    _assert_one_line_reason(error, f"unsupported image format '{image_format}'")


def test_supported_formats_are_the_ones_tensorflow_decodes_too():
    assert SUPPORTED_FORMATS == {"jpeg", "png", "gif", "bmp", "webp"}


# Decompression-bomb guard


def test_pixel_limit_is_checked_on_the_header_before_decoding(image_file_factory):
    # 8000 x 6000 = 48 MP claimed, almost no pixel data: a decode would fail differently.
    path = image_file_factory.png_header_only("huge.png", 8000, 6000)
    with pytest.raises(ImageDecodeError) as error:
        load_image(path)
    _assert_one_line_reason(error, "8000x6000", "40.0 megapixels", MAX_PIXELS_CONFIG_KEY)


def test_pixel_limit_is_configurable(image_file_factory):
    path = image_file_factory.jpeg("small.jpg", size=(24, 16))
    with pytest.raises(ImageDecodeError) as error:
        load_image(path, max_pixels=100)
    _assert_one_line_reason(error, "24x16", MAX_PIXELS_CONFIG_KEY)
    assert load_image(path, max_pixels=24 * 16).shape == (16, 24, 3)


def test_pillow_hard_limit_gives_a_clear_reason(image_file_factory):
    path = image_file_factory.png_header_only("enormous.png", 20000, 20000)
    with pytest.raises(ImageDecodeError) as error:
        load_image(path, max_pixels=10**9)
    _assert_one_line_reason(error, "PIL.Image.MAX_IMAGE_PIXELS", MAX_PIXELS_CONFIG_KEY)


def test_invalid_max_pixels_is_rejected(image_file_factory):
    with pytest.raises(ValueError, match="Received: max_pixels=0"):
        load_image(image_file_factory.jpeg("a.jpg"), max_pixels=0)


def test_draft_decoding_keeps_at_least_the_requested_size(image_file_factory):
    data = image_file_factory.jpeg("big.jpg", size=(400, 320)).read_bytes()
    image = decode_image_bytes(data, draft_size=64)
    assert image.shape == (80, 100, 3)  # 1/4 scale, both sides still >= 64


# resize_square


def test_resize_square_shape_and_dtype():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    resized = resize_square(image, 16)
    assert resized.shape == (16, 16, 3)
    assert resized.dtype == np.uint8
    assert resized.flags.writeable  # augmentations may work in place


@pytest.mark.parametrize("landscape", [True, False])
def test_resize_square_crops_the_centre(landscape):
    # A 20 x 60 strip: red outer thirds, green middle third. The crop is the green third;
    # only its outermost pixels may blend with red (the antialiasing filter's support).
    image = _solid(20, 60, RED)
    image[:, 20:40] = GREEN
    if not landscape:
        image = np.ascontiguousarray(np.transpose(image, (1, 0, 2)))
    resized = resize_square(image, 10)
    inner = resized[1:-1, 1:-1]
    np.testing.assert_array_equal(inner, _solid(8, 8, GREEN))
    assert resized[:, :, 1].min() > 200  # every pixel mostly green


def test_resize_square_matches_resize_then_crop():
    image = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    scaled = np.asarray(Image.fromarray(image).resize((40, 24), Image.Resampling.BILINEAR))
    reference = scaled[:, 8:32]
    difference = np.abs(resize_square(image, 24).astype(int) - reference.astype(int))
    assert difference.mean() < 2


def test_resize_square_keeps_a_square_image_of_the_right_size():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_square(image, 12), image)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_resize_square_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="Received: size="):
        resize_square(np.zeros((4, 4, 3), dtype=np.uint8), size)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4), dtype=np.uint8),
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4, 3), dtype=np.float32),
        np.zeros((0, 4, 3), dtype=np.uint8),
    ],
)
def test_resize_square_rejects_images_that_are_not_rgb_uint8(image):
    with pytest.raises(ValueError, match="Received: shape="):
        resize_square(image, 4)
