"""Decode one image file into an upright 8-bit RGB array, and the one square resize.

Every stage that reads pixels (the folder scan, training input, export parity checks and
`predict`) goes through `load_image` / `decode_image_bytes` and `resize_square`, so a photo
looks the same to the model wherever it is read.

Format policy:
    The format is decided by the file's *content* (its magic bytes), never by its extension:
    a PNG or GIF saved with a `.jpg` name is decoded as what it really is. The supported
    formats are JPEG, PNG, GIF, BMP and WebP, the ones TensorFlow's decoders also read, so an
    image accepted here can be decoded by an exported model's serving function as well (an
    animated WebP gives its first frame here; the serving function refuses it, since
    TensorFlow 2.21's decoder corrupts memory on one). TIFF, HEIC and AVIF are recognised but
    unsupported: they raise `UnsupportedFormatError` (a subclass of `ImageDecodeError`) so
    callers can count them.

Decoding policy (Pillow does the decoding):
    * Truncated or corrupt files raise; `ImageFile.LOAD_TRUNCATED_IMAGES` is never set.
    * The header's width x height is checked against `max_pixels` *before* any pixel is
      decoded (decompression-bomb guard). Pillow's own hard limit
      (2 x `PIL.Image.MAX_IMAGE_PIXELS`, about 179 megapixels) still applies above that.
    * EXIF orientation is applied (`ImageOps.exif_transpose`), so the array is upright.
    * Transparency is composited on white; grayscale, palette and CMYK become RGB;
      16-bit samples are scaled to 8 bits by keeping the high byte (as Pillow does for
      16-bit RGB PNGs), never clipped. Animated GIFs give their first frame.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import DataError

SUPPORTED_FORMATS: frozenset[str] = frozenset({"jpeg", "png", "gif", "bmp", "webp"})
"""Formats `load_image` decodes, named as `sniff_format` names them."""
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp"}
)
"""File extensions of the supported formats: what a folder scan and `predict` look for."""

KNOWN_UNSUPPORTED_FORMATS: frozenset[str] = frozenset({"tiff", "heic", "avif"})
"""Formats `sniff_format` recognises but `load_image` refuses."""

MAX_PIXELS_CONFIG_KEY = "data.max_image_pixels"
"""The config key users raise when a genuine image trips the decompression-bomb guard."""

DEFAULT_MAX_PIXELS = 40_000_000

_PILLOW_FORMAT_NAMES = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
# Pillow opens JPEGs that carry several pictures (some cameras write them) as "MPO".
_PILLOW_JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_VERIFY_DRAFT_SIZE = 64
_SNIFF_LENGTH = 32
_TEXT_SAMPLE_LENGTH = 512
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_SWAPPED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112
# What Pillow raises on malformed data besides OSError: header parsers use SyntaxError and
# struct.error, some plugins ValueError or EOFError.
_PILLOW_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageDecodeError(DataError):
    """An image file cannot be used; `str(error)` is a one-line reason without the path."""

    def __init__(self, reason: str):
        super().__init__(" ".join(reason.split()))


class UnsupportedFormatError(ImageDecodeError):
    """The content is a recognised image format that this pipeline does not decode.

    Attributes:
        image_format: The sniffed format name, e.g. "tiff".
    """

    def __init__(self, image_format: str):
        self.image_format = image_format
        supported = ", ".join(sorted(SUPPORTED_FORMATS))
        super().__init__(
            f"unsupported image format '{image_format}'; expected one of: {supported}. "
            "Convert the file (e.g. to PNG or JPEG) to use it."
        )


@dataclass(frozen=True)
class ImageInfo:
    """What a check of one image found.

    Attributes:
        image_format: The format decided by content, one of `SUPPORTED_FORMATS`.
        width: Upright width in pixels (after EXIF orientation).
        height: Upright height in pixels (after EXIF orientation).
    """

    image_format: str
    width: int
    height: int


def sniff_format_bytes(header: bytes) -> str | None:
    """Names the image format of some leading bytes by their magic numbers.

    Args:
        header: The first bytes of a file (32 are enough).

    Returns:
        "jpeg", "png", "gif", "bmp", "webp", "tiff", "heic" or "avif"; None if unknown.
    """
    if header.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if header[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if header[4:8] == b"ftyp":
        return _sniff_iso_brand(header)
    if header[:2] == b"BM" and len(header) >= 18:
        # "BM" alone is too weak (text can start with it): also check the DIB header size.
        (dib_header_size,) = struct.unpack("<I", header[14:18])
        return "bmp" if dib_header_size in _BMP_HEADER_SIZES else None
    return None


def _sniff_iso_brand(header: bytes) -> str | None:
    """Tells HEIC from AVIF by the brands of an ISO base media `ftyp` box."""
    brands = {header[index : index + 4] for index in range(8, min(len(header), 32), 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    return None


def sniff_format(path: Path) -> str | None:
    """Names the image format of a file by its content (magic bytes), not its extension.

    Args:
        path: The file to look at.

    Returns:
        "jpeg", "png", "gif", "bmp", "webp", "tiff", "heic" or "avif"; None if unknown.

    Raises:
        OSError: If the file cannot be read.
    """
    with open(path, "rb") as file:
        return sniff_format_bytes(file.read(_SNIFF_LENGTH))


def load_image(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> np.ndarray:
    """Reads one image file as an upright uint8 RGB array.

    Args:
        path: The image file. Its format is decided by content, not extension.
        max_pixels: Largest width x height accepted, checked on the header before decoding
            (config key `data.max_image_pixels`).
        draft_size: If set, JPEGs are decoded at the smallest power-of-two reduction whose
            sides stay at least this long (fast on big photos). Pass the same value (or None)
            in training, export and predict so that all three see the same pixels.

    Returns:
        An array of shape (height, width, 3) and dtype uint8.

    Raises:
        ImageDecodeError: With a one-line reason if the file cannot be read or decoded,
            or `UnsupportedFormatError` for a recognised but unsupported format.

    Example:
        >>> image = load_image(Path("photos/cat/1.jpg"))
        >>> image.shape, image.dtype
        ((480, 640, 3), dtype('uint8'))
    """
    return decode_image_bytes(_read_file(path), max_pixels=max_pixels, draft_size=draft_size)


def decode_image_bytes(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> np.ndarray:
    """Decodes the bytes of one image file; see `load_image` for the arguments and policy.

    Returns:
        An array of shape (height, width, 3) and dtype uint8.

    Raises:
        ImageDecodeError: With a one-line reason if the bytes are not a usable image.
    """
    image = open_image_bytes(data, max_pixels=max_pixels)
    if draft_size is not None and image.format in _PILLOW_JPEG_FORMATS:
        image.draft("RGB", (draft_size, draft_size))
    return _to_upright_rgb(image)


def load_square(
    path: Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True
) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as the data stage stores it: upright RGB, `resize_square`d to `size`.

    With `draft`, a JPEG at least twice `size` on both sides is decoded at the largest
    power-of-two reduction that keeps both sides at least `size` (Pillow's draft mode), then
    resized as usual: a 1024x768 photo at 160 px decodes 6x faster, and its stored pixels
    differ from a full decode's by 0.35 of 255 on average, 3 at most (40 flowers128 photos
    scaled to 1024x768) -- less than JPEG's own noise.

    Args:
        path: the file (format by content, as `load_image`).
        size: the side of the stored square.
        max_pixels: as `load_image`.
        draft: allow the reduced JPEG decode.

    Returns:
        (the (size, size, 3) uint8 square, the upright (width, height) of the full image).

    Raises:
        ImageDecodeError: as `load_image`.
    """
    image = open_image_bytes(_read_file(path), max_pixels=max_pixels)
    width, height = image.size
    orientation = _exif_orientation(image)
    if orientation in _SWAPPED_ORIENTATIONS:
        width, height = height, width
    if draft and image.format in _PILLOW_JPEG_FORMATS:
        image.draft("RGB", (size, size))
    if orientation == 1 and image.mode == "RGB" and "transparency" not in image.info:
        # The usual photo: resized straight from the decoded image, the same pixels as the
        # general path below without its two copies and array round trip (40% of the time).
        _load_pixels(image)
        return _resize_image(image, size), (width, height)
    return resize_square(_to_upright_rgb(image), size), (width, height)


def check_image_bytes(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True
) -> ImageInfo:
    """Checks that bytes are a usable image without keeping the pixels.

    Args:
        data: The bytes of one image file.
        max_pixels: Largest width x height accepted (see `load_image`).
        decode: If True, decode every pixel, which is the only way to catch truncated or
            corrupt data. If False, read the header only.

    Returns:
        The format and the upright size.

    Raises:
        ImageDecodeError: With a one-line reason if the bytes are not a usable image.
    """
    image = open_image_bytes(data, max_pixels=max_pixels)
    image_format = _format_from_pillow(image.format)
    width, height = image.size
    if _exif_orientation(image) in _SWAPPED_ORIENTATIONS:
        width, height = height, width
    if decode:
        # A reduced JPEG decode still reads all the compressed data, so it catches
        # truncation at a fraction of the cost on big photos.
        if image.format in _PILLOW_JPEG_FORMATS:
            image.draft("RGB", (_VERIFY_DRAFT_SIZE, _VERIFY_DRAFT_SIZE))
        _to_upright_rgb(image)
    return ImageInfo(image_format=image_format, width=width, height=height)


def open_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Opens image bytes lazily with Pillow after the format and size checks.

    Only the header is read: the format must be supported by content and the header's
    width x height must not exceed `max_pixels`.

    Returns:
        A lazily loaded Pillow image (no pixels decoded yet).

    Raises:
        ImageDecodeError: With a one-line reason if the checks fail.
    """
    if max_pixels <= 0:
        raise ValueError(
            f"max_pixels must be a positive number of pixels. Received: max_pixels={max_pixels}."
        )
    image_format = _supported_format_or_raise(data)
    pillow_format = _PILLOW_FORMAT_NAMES[image_format]
    try:
        image = Image.open(io.BytesIO(data), formats=[pillow_format])
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(_pillow_bomb_reason(error)) from error
    except _PILLOW_DECODE_ERRORS as error:
        raise ImageDecodeError(
            f"corrupt {pillow_format} header: {_pillow_reason(error)}"
        ) from error
    _check_pixel_count(image.size, max_pixels)
    return image


def _read_file(path: Path) -> bytes:
    """Reads a whole file, turning OS errors into a one-line decode error."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"cannot read file: {error.strerror or error}") from error


def _supported_format_or_raise(data: bytes) -> str:
    """Returns the sniffed format of `data`, raising if it is empty, unknown or unsupported."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    image_format = sniff_format_bytes(data[:_SNIFF_LENGTH])
    if image_format is None:
        raise ImageDecodeError(_unknown_content_reason(data))
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(image_format)
    return image_format


def _unknown_content_reason(data: bytes) -> str:
    """Says what unrecognised content looks like: text, or unknown binary."""
    supported = ", ".join(sorted(SUPPORTED_FORMATS))
    if _looks_like_text(data[:_TEXT_SAMPLE_LENGTH]):
        return f"not an image: the file holds text, not {supported} data"
    return f"not an image: content is not {supported} (first bytes {data[:8].hex(' ')})"


def _looks_like_text(sample: bytes) -> bool:
    """True if a sample decodes as UTF-8 made of printable characters and whitespace."""
    text = sample.decode("utf-8", errors="replace")
    if len(sample) == _TEXT_SAMPLE_LENGTH:
        text = text[:-1]  # the cut may have split a multi-byte character
    return all(
        character != "\ufffd" and (character.isprintable() or character in "\r\n\t")
        for character in text
    )


def _check_pixel_count(size: tuple[int, int], max_pixels: int) -> None:
    """Raises if the header's width x height is above the configured limit."""
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, above the "
            f"limit of {max_pixels / 1e6:.1f} megapixels (decompression-bomb guard); "
            f"raise {MAX_PIXELS_CONFIG_KEY} if the image is genuine, or downscale it"
        )


def _pillow_bomb_reason(error: Image.DecompressionBombError) -> str:
    """Explains Pillow's own hard decompression-bomb limit, which config cannot raise."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"image is above Pillow's hard limit of {limit / 1e6:.1f} megapixels "
        f"(2 x PIL.Image.MAX_IMAGE_PIXELS; {MAX_PIXELS_CONFIG_KEY} cannot go higher): "
        f"{_pillow_reason(error)} Downscale the image to use it."
    )


def _pillow_reason(error: BaseException) -> str:
    """Pillow's message, without the in-memory file repr it sometimes includes."""
    message = str(error) or type(error).__name__
    if "<_io.BytesIO" in message:
        return "Pillow cannot identify the image data"
    return message


def _format_from_pillow(pillow_format: str | None) -> str:
    """Maps Pillow's format name back to ours."""
    if pillow_format in _PILLOW_JPEG_FORMATS:
        return "jpeg"
    for name, pillow_name in _PILLOW_FORMAT_NAMES.items():
        if pillow_name == pillow_format:
            return name
    return (pillow_format or "unknown").lower()


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except _PILLOW_DECODE_ERRORS:
        return 1


def _to_upright_rgb(image: Image.Image) -> np.ndarray:
    """Decodes all pixels of an opened image, applies EXIF orientation, returns uint8 RGB."""
    _load_pixels(image)
    try:
        upright = ImageOps.exif_transpose(image)
    except _PILLOW_DECODE_ERRORS as error:
        raise ImageDecodeError(
            f"truncated or corrupt {image.format} data: {_pillow_reason(error)}"
        ) from error
    return _to_rgb_array(upright)


def _load_pixels(image: Image.Image) -> None:
    """Decodes all pixels of an opened image (the first frame of an animation), turning
    Pillow's errors into one-line decode errors."""
    try:
        image.seek(0)  # the first frame of an animated GIF
        image.load()
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(_pillow_bomb_reason(error)) from error
    except _PILLOW_DECODE_ERRORS as error:
        raise ImageDecodeError(
            f"truncated or corrupt {image.format} data: {_pillow_reason(error)}"
        ) from error


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Converts any Pillow mode to an HxWx3 uint8 RGB array (see the module policy)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        high_bytes = np.asarray(image).astype(np.uint32) >> 8
        gray = np.clip(high_bytes, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Scales the shorter side to `size`, then crops the centre to `size` x `size`.

    This is the one resize used by training, export and predict alike. The centre crop is
    taken in continuous coordinates before resampling (Pillow bilinear with antialiasing),
    so odd differences between width and height cause no half-pixel shift.

    Args:
        image: An array of shape (height, width, 3) and dtype uint8.
        size: The side of the square output, in pixels.

    Returns:
        An array of shape (size, size, 3) and dtype uint8.

    Raises:
        ValueError: If `image` is not HxWx3 uint8 or `size` is not a positive integer.
    """
    _check_resize_arguments(image, size)
    return _resize_image(Image.fromarray(image), size)


def _resize_image(image: Image.Image, size: int) -> np.ndarray:
    """`resize_square` of an RGB Pillow image."""
    width, height = image.size
    side = min(height, width)
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    return np.array(resized, dtype=np.uint8)  # a writable copy, like load_image returns


def _check_resize_arguments(image: np.ndarray, size: int) -> None:
    """Raises a ValueError naming what `resize_square` received if it cannot work on it."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive integer. Received: size={size!r}.")
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or dtype != np.uint8:
        raise ValueError(
            "image must be a uint8 array of shape (height, width, 3), as load_image returns. "
            f"Received: shape={shape}, dtype={dtype}."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"image must have at least one pixel. Received: shape={shape}.")
