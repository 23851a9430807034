"""Computing a frozen base's features once, for K augmented views of each image.

While the base is frozen (BatchNorm in inference mode) its output for a given input never
changes, so phase 1 can train the head on cached features instead of re-running the base every
epoch. Caching K augmented views keeps augmentation: each epoch draws one view per image.

The same pass also caches the activations where the top blocks begin (the backbone spec's
`unfreeze_from`): phase 2 fine-tunes only those blocks, and the layers below them are frozen
too, so their output can be cached just the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.inputs import augmented_batches, pad_batch


@dataclass(frozen=True)
class FeatureCache:
    """Cached outputs for K views of N images.

    Attributes:
        pooled: (K, N, D) float16 pooled features of the whole base (phase 1 input).
        activations: (K, N, H, W, C) float16 activations at the top blocks' input
            (phase 2 input), or None when phase 2 is not run.
    """

    pooled: np.ndarray
    activations: np.ndarray | None


def make_forward(bottom: keras.Model, top: keras.Model):
    """A compiled forward pass returning (top-block input activations, pooled features)."""
    pool = keras.layers.GlobalAveragePooling2D()

    @tf.function
    def forward(images):
        # uint8 batches cross into the graph (a quarter of float32's bytes) and are cast here
        activations = bottom(tf.cast(images, tf.float32), training=False)
        return activations, pool(top(activations, training=False))

    return forward


def extract_features(forward, images: np.ndarray, augmenter, *, views: int, batch_size: int,
                     keep_activations: bool, description: str) -> FeatureCache:
    """Runs the frozen base over `views` augmented passes of `images`.

    Args:
        forward: from `make_forward`.
        images: uint8 (N, H, W, 3) images (may be memory-mapped).
        augmenter: a `BatchAugmenter`; view k uses its epoch k, so views differ and repeat
            exactly with the same seed.
        views: K, the number of augmented views per image.
        batch_size: images per forward call; a short last batch is padded so the graph is
            traced once.
        keep_activations: also keep the top-block input activations (for phase 2).
        description: progress bar label.

    Returns:
        The cache, float16.
    """
    count = len(images)
    batches = math.ceil(count / batch_size)
    pooled = activations = None
    with tqdm(total=views * count, desc=description, unit="img", smoothing=0.1) as progress:
        for view in range(views):
            stream = augmented_batches(images, augmenter, batch_size, epoch=view)
            for index, batch in enumerate(stream):
                size = len(batch)
                batch_activations, batch_pooled = forward(tf.constant(pad_batch(batch, batch_size)))
                if pooled is None:
                    pooled = np.empty((views, count, batch_pooled.shape[-1]), np.float16)
                    if keep_activations:
                        activations = np.empty((views, count, *batch_activations.shape[1:]),
                                               np.float16)
                start = index * batch_size
                pooled[view, start:start + size] = batch_pooled.numpy()[:size]
                if keep_activations:
                    activations[view, start:start + size] = batch_activations.numpy()[:size]
                progress.update(size)
        if batches == 0:
            raise ValueError(f"No images to extract features from ({description}).")
    return FeatureCache(pooled, activations)
