"""Shared pytest fixtures.

`image_file_factory` writes real image files, good and bad, under `tmp_path / "images"`
(generated with Pillow and numpy, never checked-in binaries). `copy_photos` fills class
folders with real flowers128 photos, or generated JPEGs where flowers128 is absent.
"""

from __future__ import annotations

import ast
import io
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets import FLOWERS

_EXIF_ORIENTATION_TAG = 0x0112


def albumentations_flag_at_import(*modules: str) -> str | None:
    """The value of NO_ALBUMENTATIONS_UPDATE (unset at the start) when importing `modules` in a
    fresh Python first imports albumentations, which checks for updates over the network on
    import unless it is set."""
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, os, sys
        os.environ.pop("NO_ALBUMENTATIONS_UPDATE", None)
        seen = []

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "albumentations" and not seen:
                    seen.append(os.environ.get("NO_ALBUMENTATIONS_UPDATE"))

        sys.meta_path.insert(0, Watch())
        for module in {list(modules)!r}:
            importlib.import_module(module)
        print(seen)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True, cwd=Path(__file__).resolve().parents[1])
    seen = ast.literal_eval(completed.stdout.strip().splitlines()[-1])
    return seen[0] if seen else None


def copy_photos(folder: Path, per_class: int, *, offset: int = 0) -> list[str]:
    """Writes `folder/<class>/*.jpg`: `per_class` real flowers128 photos of each class (the
    `offset`-th onwards, in name order), or generated JPEGs of three colour classes when
    flowers128 is absent. Returns the class names."""
    if FLOWERS.is_dir():
        classes = sorted(path.name for path in FLOWERS.iterdir() if path.is_dir())
        for name in classes:
            (folder / name).mkdir(parents=True)
            for path in sorted((FLOWERS / name).glob("*.jpg"))[offset:offset + per_class]:
                shutil.copy(path, folder / name / path.name)
        return classes
    classes = ["blue", "green", "red"]
    for channel, name in zip((2, 1, 0), classes, strict=True):
        (folder / name).mkdir(parents=True)
        for index in range(offset, offset + per_class):
            pixels = np.random.default_rng(index).integers(0, 96, (96, 128, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(folder / name / f"{index}.jpg", quality=90)
    return classes


def encode_png(samples: np.ndarray, bit_depth: int, color_type: int) -> bytes:
    """Encodes a PNG by hand, for bit depths and headers Pillow will not write.

    Args:
        samples: (height, width, channels) or (height, width) array of unsigned samples.
        bit_depth: 8 or 16.
        color_type: 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA.

    Returns:
        The bytes of a valid PNG file.
    """
    height, width = samples.shape[:2]
    sample_type = ">u2" if bit_depth == 16 else "u1"
    rows = [b"\x00" + samples[row].astype(sample_type).tobytes() for row in range(height)]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"".join(rows))),
            _png_chunk(b"IEND", b""),
        ]
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes.

    Decoding it fails, so an error that names the pixel limit proves the limit was checked
    on the header, before decoding.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    crc = zlib.crc32(chunk_type + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def noise_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random uint8 RGB image (different seeds give different file contents)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class ImageFileFactory:
    """Writes real image files, good and bad, below a root folder.

    Every method takes a path relative to `root` (parents are created) and returns the
    absolute path of the file written.
    """

    def __init__(self, root: Path):
        self.root = root

    def _target(self, relative_path: str) -> Path:
        path = self.root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_bytes(self, relative_path: str, data: bytes) -> Path:
        """Writes raw bytes."""
        path = self._target(relative_path)
        path.write_bytes(data)
        return path

    def save(self, relative_path: str, image: Image.Image, image_format: str, **options) -> Path:
        """Saves a Pillow image in a given format, whatever the file name says."""
        buffer = io.BytesIO()
        image.save(buffer, image_format, **options)
        return self.write_bytes(relative_path, buffer.getvalue())

    def jpeg(self, relative_path: str, size: tuple[int, int] = (24, 16), seed: int = 0) -> Path:
        """A valid RGB JPEG of (width, height) noise."""
        pixels = noise_rgb(size[1], size[0], seed)
        return self.save(relative_path, Image.fromarray(pixels), "JPEG", quality=90)

    def png(self, relative_path: str, pixels: np.ndarray) -> Path:
        """A valid PNG of the given uint8 pixels (any Pillow-compatible shape)."""
        return self.save(relative_path, Image.fromarray(pixels), "PNG")

    def png16(self, relative_path: str, samples: np.ndarray, color_type: int) -> Path:
        """A 16-bit PNG (color_type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA)."""
        return self.write_bytes(relative_path, encode_png(samples, 16, color_type))

    def png_header_only(self, relative_path: str, width: int, height: int) -> Path:
        """A PNG claiming width x height with almost no pixel data (see `png_header_only`)."""
        return self.write_bytes(relative_path, png_header_only(width, height))

    def truncated_jpeg(self, relative_path: str) -> Path:
        """A JPEG cut in half: the header is fine, the pixel data ends early."""
        buffer = io.BytesIO()
        Image.fromarray(noise_rgb(64, 64, seed=7)).save(buffer, "JPEG", quality=95)
        data = buffer.getvalue()
        return self.write_bytes(relative_path, data[: len(data) // 2])

    def text(self, relative_path: str) -> Path:
        """A text file, whatever its extension."""
        return self.write_bytes(relative_path, b"This is not an image.\nJust some notes.\n")

    def gif(self, relative_path: str, colors: tuple[tuple[int, int, int], ...]) -> Path:
        """A GIF with one 8x8 frame per colour (animated when there are several)."""
        frames = [Image.new("RGB", (8, 8), color) for color in colors]
        return self.save(
            relative_path,
            frames[0],
            "GIF",
            save_all=True,
            append_images=frames[1:],
            duration=100,
            loop=0,
        )

    def cmyk_jpeg(self, relative_path: str, cmyk: tuple[int, int, int, int]) -> Path:
        """A CMYK JPEG of a single colour."""
        return self.save(relative_path, Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95)

    def exif_rotated_jpeg(self, relative_path: str, pixels: np.ndarray, orientation: int) -> Path:
        """A JPEG of `pixels` as stored, with an EXIF orientation tag."""
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION_TAG] = orientation
        return self.save(
            relative_path, Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes()
        )

    def webp(self, relative_path: str) -> Path:
        """A real WebP image."""
        return self.save(relative_path, Image.new("RGB", (8, 8), (0, 128, 255)), "WEBP")

    def tiff(self, relative_path: str) -> Path:
        """A real TIFF image."""
        return self.save(relative_path, Image.new("RGB", (8, 8), (0, 128, 255)), "TIFF")

    def heic(self, relative_path: str) -> Path:
        """The start of a HEIC file (an ISO `ftyp` box with the heic brand)."""
        ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
        return self.write_bytes(relative_path, ftyp + b"\x00" * 64)

    def ds_store(self, relative_path: str = ".DS_Store") -> Path:
        """A macOS folder metadata file."""
        return self.write_bytes(relative_path, b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)

    def apple_double(self, relative_path: str) -> Path:
        """A macOS AppleDouble `._name` resource-fork file."""
        return self.write_bytes(relative_path, b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"\x00" * 64)


@pytest.fixture
def image_file_factory(tmp_path: Path) -> ImageFileFactory:
    """Writes real good and bad image files under `tmp_path / "images"`."""
    root = tmp_path / "images"
    root.mkdir()
    return ImageFileFactory(root)


@pytest.fixture(scope="module")
def tiny_fashion_mnist(tmp_path_factory) -> Path:
    """A learnable fake Fashion-MNIST (a bright band whose row says the class), so that every
    epoch improves the dev loss and the final weights depend on the epochs after a kill (the
    resume and fault-injection tests)."""
    from tests.test_fashion_mnist import write_idx

    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 400), ("t10k", 40)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 120, (count, 28, 28))
        for index, label in enumerate(labels):
            images[index, 2 + 2 * label:5 + 2 * label] += 130
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def pytest_terminal_summary(terminalreporter) -> None:
    """Prints the fault-injection scoreboard when the fault suite ran (`make test-faults`)."""
    from tests.scoreboard import SCOREBOARD, format_scoreboard

    if SCOREBOARD:
        terminalreporter.write_line("")
        for line in format_scoreboard():
            terminalreporter.write_line(line)
