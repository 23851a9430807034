"""The image arrays the augmentation functions take: uint8 RGB batches (N, H, W, 3)."""

from typing import Any

import numpy as np


def check_images(images: Any, where: str) -> None:
    """Raises a ValueError naming `where` unless `images` is a non-empty uint8 (N, H, W, 3) array.

    A np.memmap passes: it is an np.ndarray, and only its shape and dtype are read.
    """
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] != 3 or len(images) == 0):
        raise ValueError(
            f"{where} expects a non-empty uint8 array of RGB images (N, H, W, 3). Received: "
            f"{type(images).__name__} dtype={getattr(images, 'dtype', None)} "
            f"shape={getattr(images, 'shape', None)}. Expand grey images to 3 channels first."
        )
