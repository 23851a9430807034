"""Reproducible randomness: every image's augmentation is a function of (seed, epoch, index).

An image is augmented with random generators derived from `(seed, epoch, index)` only, so an
epoch is reproducible whatever the thread scheduling or batch composition, and every epoch
differs. `BatchAugmenter` and `write_preview` reseed their Compose this way before each image;
`seed_transform` does the same for one image, to reproduce it.
"""

import hashlib
import random

import albumentations as A
import numpy as np


def seed_transform(transform: A.Compose, seed: int, epoch: int, index: int) -> None:
    """Seeds a transform for one image exactly as `BatchAugmenter` does.

    Use it to reproduce one augmented image: after `seed_transform(t, seed, epoch, index)`,
    `t(image=images[index])` equals what `BatchAugmenter(t, seed=seed)` produced for that image
    in that epoch.
    """
    Reseeder(transform)(seed, epoch, index)


class Reseeder:
    """Reseeds, in place and from (seed, epoch, index) only, the random state of a Compose.

    Albumentations 2.0.8 draws only from each transform's `random_generator` (numpy) and
    `py_random` (`random.Random`); it never touches the global `random` / `np.random` states, and
    its one use of OpenCV's RNG (`cv2.randn`, for gaussian AdditiveNoise) is seeded from
    `random_generator` right before. So one generator pair, installed once and shared by the
    whole chain, then reseeded per image, makes the output a function of (seed, epoch, index).
    """

    def __init__(self, transform: A.Compose):
        self._bits = np.random.PCG64()
        self._py_random = random.Random()
        transform.set_random_state(np.random.Generator(self._bits), self._py_random)

    def __call__(self, seed: int, epoch: int, index: int) -> None:
        # A cryptographic hash of the key: neighbouring indices get unrelated streams. (blake2b
        # costs a fifth of np.random.SeedSequence, which matters at ~100 us per image.)
        key = hashlib.blake2b(b"%d/%d/%d" % (seed, epoch, index), digest_size=40).digest()
        state, increment, py_seed = (
            int.from_bytes(part, "little") for part in (key[:16], key[16:32], key[32:])
        )
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": increment | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        self._py_random.seed(py_seed)
