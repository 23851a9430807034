"""Throughput of the augmentation input path versus per-image `tf.numpy_function` in tf.data.

Run from the repository root: `python -m bench.bench_augment [chain] [image_size]` (about
1000 flowers128 photos when present, synthetic images otherwise).
`make bench` calls `bench_augment_speed` directly.
"""

import copy
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls the network otherwise
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from pipeline.augment import (  # noqa: E402
    BatchAugmenter,
    build_train_transform,
    fit_color_pca,
    resolve_chain,
)

FLOWERS = Path("/work/shared/datasets/flowers128")


def bench_augment_speed(
    images: np.ndarray,
    chain: str | list[dict],
    image_size: int,
    *,
    batch_size: int = 64,
    repeats: int = 3,
    num_threads: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Measures both input paths on the same images and chain, in one run.

    (a) `BatchAugmenter` over shuffled batches, produced by a background thread (a prefetch
    queue of 2 batches) while the caller consumes them; (b) the known-slow pattern
    `from_tensor_slices(images).map(numpy_function(per-image albumentations),
    num_parallel_calls=AUTOTUNE).batch(batch_size)`. Each path runs once to warm up, then
    `repeats` times, interleaved (a, b, a, b, ...) so both see the same machine load; the best
    epoch of each counts.

    Args:
        images: uint8 (N, H, W, 3).
        chain: preset name or list of transform dicts.
        image_size: output side.
        batch_size: images per batch, both paths.
        repeats: timed epochs per path.
        num_threads: BatchAugmenter threads.
        seed: augmentation seed (and ColorPCA subsample seed, if the chain needs one).

    Returns:
        {"augment_images_per_s", "numpy_function_images_per_s",
         "augment_speedup_vs_numpy_function", ...details}.
    """
    needs_pca = any(spec["name"] == "PCAColorShift" for spec in resolve_chain(chain))
    color_pca = fit_color_pca(images, seed=seed) if needs_pca else None
    transform = build_train_transform(chain, image_size, color_pca=color_pca, seed=seed)
    augmenter = BatchAugmenter(transform, seed=seed, num_threads=num_threads)
    baseline = _numpy_function_dataset(images, copy.deepcopy(transform), batch_size)
    ours_s, baseline_s = [], []
    try:
        for epoch in range(repeats + 1):  # epoch 0 warms up
            ours_s.append(_time(_prefetched(augmenter, images, batch_size, epoch)))
            baseline_s.append(_time(iter(baseline)))
    finally:
        augmenter.close()
    ours_rate, baseline_rate = len(images) / min(ours_s[1:]), len(images) / min(baseline_s[1:])
    return {
        "augment_images_per_s": ours_rate,
        "numpy_function_images_per_s": baseline_rate,
        "augment_speedup_vs_numpy_function": ours_rate / baseline_rate,
        "images": len(images),
        "input_size": images.shape[1],
        "image_size": image_size,
        "batch_size": batch_size,
        "num_threads": num_threads,
    }


def _prefetched(augmenter: BatchAugmenter, images: np.ndarray, batch_size: int,
                epoch: int, depth: int = 2) -> Iterator[np.ndarray]:
    """Yields augmented batches of a shuffled epoch, produced `depth` batches ahead."""
    order = np.random.default_rng((augmenter.seed, epoch)).permutation(len(images))
    batches: queue.Queue = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for start in range(0, len(order), batch_size):
                indices = np.sort(order[start:start + batch_size])  # sorted: memmap locality
                batches.put(augmenter(images[indices], indices, epoch))
        except BaseException as error:  # hand it to the consumer instead of dying silently
            batches.put(error)
        batches.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (batch := batches.get()) is not None:
        if isinstance(batch, BaseException):
            raise batch
        yield batch


def _numpy_function_dataset(images: np.ndarray, transform, batch_size: int) -> tf.data.Dataset:
    def per_image_albumentations(image: np.ndarray) -> np.ndarray:
        return transform(image=image)["image"]

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .map(lambda x: tf.numpy_function(per_image_albumentations, [x], tf.uint8),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
    )


def _time(batches: Iterator) -> float:
    start = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - start


def load_flowers(limit: int = 1000, seed: int = 0) -> np.ndarray:
    """Up to `limit` random flowers128 photos as uint8 (N, 128, 128, 3)."""
    from PIL import Image

    paths = sorted(FLOWERS.glob("*/*.jpg"))
    picks = np.random.default_rng(seed).permutation(len(paths))[:limit]
    return np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in sorted(picks)])


def main(argv: list[str]) -> None:
    chain = argv[1] if len(argv) > 1 else "standard"
    image_size = int(argv[2]) if len(argv) > 2 else 160
    if FLOWERS.is_dir():
        images, source = load_flowers(), "flowers128"
    else:
        images = np.random.default_rng(0).integers(0, 256, (1000, 128, 128, 3), dtype=np.uint8)
        source = "synthetic"
    print(f"{source}: {len(images)} images {images.shape[1]}px -> {image_size}px, chain={chain!r}")
    for num_threads in (2, 1):
        result = bench_augment_speed(images, chain, image_size, num_threads=num_threads)
        print(
            f"  num_threads={num_threads}: "
            f"BatchAugmenter {result['augment_images_per_s']:.0f} images/s, "
            f"numpy_function {result['numpy_function_images_per_s']:.0f} images/s, "
            f"speedup {result['augment_speedup_vs_numpy_function']:.2f}x"
        )


if __name__ == "__main__":
    main(sys.argv)
