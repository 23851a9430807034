"""Feeding images and cached features to Keras.

Images stay uint8 until they reach the model (normalisation lives inside the model), are
augmented a whole batch at a time by `pipeline.augment.BatchAugmenter` (thread workers, OpenCV
releases the GIL), and the next batch is prepared in a background thread while the model works
on the current one.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Iterator

import keras
import numpy as np


def prefetched(producer: Callable[[int], object], count: int, depth: int = 2) -> Iterator:
    """Yields producer(0), producer(1), ... computed `depth` steps ahead in a thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(producer, index) for index in range(min(depth, count))]
        for index in range(count):
            result = pending.pop(0).result()
            if index + depth < count:
                pending.append(pool.submit(producer, index + depth))
            yield result


def augmented_batches(images: np.ndarray, augmenter, batch_size: int, *,
                      epoch: int = 0) -> Iterator[np.ndarray]:
    """Every image once, in order, augmented by `augmenter` for `epoch`, as uint8 batches."""
    count = math.ceil(len(images) / batch_size)

    def produce(index: int) -> np.ndarray:
        indices = np.arange(index * batch_size, min((index + 1) * batch_size, len(images)))
        return augmenter(np.asarray(images[indices[0]:indices[-1] + 1]), indices, epoch)

    return prefetched(produce, count)


def pad_batch(batch: np.ndarray, batch_size: int) -> np.ndarray:
    """A short (last) batch padded with zero images to `batch_size`, so a compiled forward pass
    sees one shape and is traced once; full batches are returned as they are, uncopied."""
    if len(batch) >= batch_size:
        return batch
    padding = np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)
    return np.concatenate([batch, padding])


class AugmentedImages(keras.utils.PyDataset):
    """Shuffled, augmented (image, label) batches for end-to-end `model.fit`.

    Each epoch reshuffles and augments anew; the same seed gives the same batches.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augmenter, batch_size: int,
                 *, seed: int, shuffle: bool = True):
        super().__init__()
        self.images, self.labels, self.augmenter = images, labels, augmenter
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch = 0
        self.order = self._order()

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        indices = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        batch = self.augmenter(np.asarray(self.images[indices]), indices, self.epoch)
        return batch.astype("float32"), self.labels[indices]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))


class CachedViews(keras.utils.PyDataset):
    """Batches drawn from cached features of K augmented views per example.

    Each epoch shuffles the examples and draws one of the K views of each, so the model sees
    augmentation without re-running the frozen network.

    Args:
        views: array of shape (K, N, ...) with K cached views of N examples.
        labels: (N,) integer labels.
        batch_size: examples per batch.
        seed: shuffling and view choice; the same seed gives the same batches.
        shuffle: False yields view 0 of every example in order (for dev data).
    """

    def __init__(self, views: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int,
                 shuffle: bool = True):
        super().__init__()
        if views.shape[1] != len(labels):
            raise ValueError(f"Cached views hold {views.shape[1]} examples but {len(labels)} "
                             f"labels were given.")
        self.views, self.labels = views, labels
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.epoch = 0
        self._draw()

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        indices = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.views[self.view_of[indices], indices].astype("float32"), self.labels[indices]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._draw()

    def _draw(self) -> None:
        count = len(self.labels)
        if not self.shuffle:
            self.order, self.view_of = np.arange(count), np.zeros(count, dtype=np.int64)
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(count)
        self.view_of = rng.integers(0, self.views.shape[0], size=count)
