"""Fashion-MNIST read from local IDX files (Debian's `dataset-fashion-mnist` package).

The IDX format (Yann LeCun's MNIST format) is a big-endian header (magic number whose last byte
is the number of dimensions, then one uint32 per dimension) followed by raw uint8 data.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, MissingInputError

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = ("Install the real files with `sudo apt-get install dataset-fashion-mnist` "
                "(they go to /usr/share/datasets/fashion-mnist), or set data.path to a folder "
                "holding the four *-ubyte.gz files.")


def read_idx(path: Path) -> np.ndarray:
    """Reads one (optionally gzipped) IDX file into a uint8 array.

    Raises:
        DataError: the file is not an unsigned-byte IDX file or is truncated.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"Cannot read IDX file '{path}': {error}. {INSTALL_HINT}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not an unsigned-byte IDX file (bad magic number).")
    num_dims = raw[3]
    shape = struct.unpack(f">{num_dims}I", raw[4:4 + 4 * num_dims])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * num_dims)
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX file '{path}' is truncated: header says {shape}, "
                         f"found {data.size} values.")
    return data.reshape(shape)


def load_fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads both official splits as RGB uint8 images (grayscale repeated) and labels.

    Returns:
        {"train": (images (60000, 28, 28, 3), labels), "test": (images (10000, ...), labels)}

    Raises:
        MissingInputError: a file is missing, with the command that installs it.
    """
    splits = {}
    for split, (images_name, labels_name) in FILES.items():
        for name in (images_name, labels_name):
            if not (folder / name).is_file():
                raise MissingInputError(f"Fashion-MNIST file '{folder / name}' not found. "
                                        f"{INSTALL_HINT}")
        images = read_idx(folder / images_name)
        labels = read_idx(folder / labels_name).astype(np.int32)
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split}: {len(images)} images but "
                             f"{len(labels)} labels in '{folder}'.")
        splits[split] = (np.repeat(images[..., None], 3, axis=-1), labels)
    return splits
