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

    Each epoch reshuffles and augments anew (a fresh view of every image, seeded per
    (seed, epoch, index) by the `BatchAugmenter`); the same seed gives the same batches. Keras
    runs `__getitem__` ahead of the step in tf.data's prefetch thread, and the augmenter's own
    threads share each batch, so the next batch is made while the model works on this one.

    Args:
        images: uint8 (N, H, W, 3) images (may be memory-mapped).
        labels: (N,) integer labels.
        augmenter: called as `augmenter(batch, indices, epoch)`, e.g. a `BatchAugmenter`.
        batch_size: examples per batch.
        seed: shuffling and mixing.
        shuffle: False yields the images in order, never mixed (for dev data).
        num_classes: when given, labels come one-hot (float32), as categorical cross-entropy
            and mixup need; otherwise as the integers given.
        mixup_alpha: as in `CachedViews`.
        first_view: the augmenter's epoch for this dataset's epoch 0; phase 2 starts after the
            K views phase 1 cached, so that every epoch it trains on is a view never seen.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augmenter, batch_size: int,
                 *, seed: int, shuffle: bool = True, num_classes: int | None = None,
                 mixup_alpha: float = 0.0, first_view: int = 0):
        super().__init__()
        if mixup_alpha and num_classes is None:
            raise ValueError("mixup blends labels, so it needs one-hot labels: pass num_classes.")
        self.images, self.labels, self.augmenter = images, labels, augmenter
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_classes, self.mixup_alpha, self.first_view = num_classes, mixup_alpha, first_view
        self.epoch = 0
        self.order = self._order()

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        indices = np.sort(self.order[index * self.batch_size:(index + 1) * self.batch_size])
        batch = self.augmenter(np.asarray(self.images[indices]), indices,
                               self.first_view + self.epoch).astype("float32")
        if self.num_classes is None:
            return batch, self.labels[indices]
        targets = np.eye(self.num_classes, dtype="float32")[self.labels[indices]]
        if self.mixup_alpha and self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            batch, targets = mixup(batch, targets, self.mixup_alpha, rng)
        return batch, targets

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Draws epoch `epoch`'s order and views: a resumed run continues where the killed one
        stopped."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))


def mixup(inputs: np.ndarray, targets: np.ndarray, alpha: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blends each example of a batch with another one of it, inputs and one-hot targets alike
    (Zhang et al. 2018); the weight from Beta(alpha, alpha), folded to at least 0.5 so every
    example stays the larger part of its own blend."""
    weight = rng.beta(alpha, alpha, len(inputs)).astype("float32")
    weight = np.maximum(weight, 1 - weight)
    partner = rng.permutation(len(inputs))
    blend = weight.reshape((-1,) + (1,) * (inputs.ndim - 1))
    return (blend * inputs + (1 - blend) * inputs[partner],
            weight[:, None] * targets + (1 - weight[:, None]) * targets[partner])


class CachedViews(keras.utils.PyDataset):
    """Batches drawn from cached features of K augmented views per example.

    Each epoch shuffles the examples and draws one of the K views of each, so the model sees
    augmentation without re-running the frozen network. With `mixup_alpha` each example is
    blended with another one of its batch, inputs and one-hot labels alike (mixup, Zhang et al.
    2018), which works on cached features as well as on pixels.

    Args:
        views: array of shape (K, N, ...) with K cached views of N examples.
        labels: (N,) integer labels.
        batch_size: examples per batch.
        seed: shuffling, view choice and mixing; the same seed gives the same batches.
        shuffle: False yields view 0 of every example in order (for dev data), never mixed.
        num_classes: when given, labels come one-hot (float32), as categorical cross-entropy
            and mixup need; otherwise as the integers given.
        mixup_alpha: 0 for none; else the blend weight is drawn from Beta(alpha, alpha) and
            folded to at least 0.5, so every example stays the larger part of its own blend.
    """

    def __init__(self, views: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int,
                 shuffle: bool = True, num_classes: int | None = None, mixup_alpha: float = 0.0):
        super().__init__()
        if views.shape[1] != len(labels):
            raise ValueError(f"Cached views hold {views.shape[1]} examples but {len(labels)} "
                             f"labels were given.")
        if mixup_alpha and num_classes is None:
            raise ValueError("mixup blends labels, so it needs one-hot labels: pass num_classes.")
        self.views, self.labels = views, labels
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_classes, self.mixup_alpha = num_classes, mixup_alpha
        self.epoch = 0
        self._draw()

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        indices = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        inputs = self.views[self.view_of[indices], indices].astype("float32")
        if self.num_classes is None:
            return inputs, self.labels[indices]
        targets = np.eye(self.num_classes, dtype="float32")[self.labels[indices]]
        if self.mixup_alpha and self.shuffle:
            inputs, targets = self._mix(inputs, targets, index)
        return inputs, targets

    def _mix(self, inputs: np.ndarray, targets: np.ndarray, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        return mixup(inputs, targets, self.mixup_alpha, rng)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._draw()

    def set_epoch(self, epoch: int) -> None:
        """Draws epoch `epoch`'s order, views and mixing: a resumed run continues the stream
        where the killed one stopped instead of replaying epoch 0."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._draw()

    def _draw(self) -> None:
        count = len(self.labels)
        if not self.shuffle:
            self.order, self.view_of = np.arange(count), np.zeros(count, dtype=np.int64)
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(count)
        self.view_of = rng.integers(0, self.views.shape[0], size=count)
