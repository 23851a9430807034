import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist, read_idx

REAL_FOLDER = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_fake_fashion(folder: Path, train: int = 12, test: int = 4) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


def test_reads_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def test_truncated_and_bad_magic_are_refused(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((4, 5)))
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x01\x02" + raw[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_loads_splits_as_rgb(tmp_path):
    make_fake_fashion(tmp_path)
    splits = load_fashion_mnist(tmp_path)
    images, labels = splits["train"]
    assert images.shape == (12, 28, 28, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert splits["test"][0].shape[0] == 4 and labels.dtype == np.int32


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not REAL_FOLDER.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_files():
    splits = load_fashion_mnist(REAL_FOLDER)
    assert splits["train"][0].shape == (60000, 28, 28, 3)
    assert splits["test"][0].shape == (10000, 28, 28, 3)
    assert np.bincount(splits["test"][1]).tolist() == [1000] * len(CLASS_NAMES)
