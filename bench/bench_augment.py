"""Input pipeline benchmarks: the same images and chain on both sides, measured in one run.

* `bench_augment_speed`: images/s of our augmentation path (`pipeline.inputs.augmented_batches`
  over a `BatchAugmenter` with OpenCV kernels) against the per-image `tf.numpy_function` +
  AUTOTUNE pattern, and against the same augmenter without kernels (every transform through
  albumentations' own dispatch, as before the kernels).
* `bench_online_training`: `model.fit` images/s fed by `pipeline.inputs.AugmentedImages`
  augmenting online, against the same PyDataset over images augmented beforehand.
* `bench_input_pipeline`: both; `make bench` merges its dict into runs/bench/results.json.

Run from the repository root: `python -m bench.bench_augment [chain] [image_size]` (1000
flowers128 photos when present, synthetic images otherwise; about a minute on 2 CPU cores).
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.datasets import FLOWERS  # noqa: E402
from pipeline.augment import BatchAugmenter, build_train_transform, color_pca_for  # noqa: E402
from pipeline.backbones import create_backbone  # noqa: E402
from pipeline.inputs import AugmentedImages, augmented_batches  # noqa: E402


def bench_input_pipeline(
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    chain: str | list[dict] = "standard",
    image_size: int = 128,
    train_models: tuple[str, ...] = ("efficientnet_lite0", "small_cnn"),
    train_images: int = 320,
    repeats: int = 2,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Both input pipeline ratios, as `make bench` reports them.

    Args:
        images: uint8 (N, H, W, 3); None loads 1000 flowers128 photos (synthetic images when
            the folder is absent).
        labels: (N,) integer labels; given exactly when `images` is.
        chain: augmentation preset or list of transform dicts.
        image_size: augmented (and model input) side.
        train_models: keys of `TRAIN_MODELS` for the training comparison. The first gives
            "online_vs_preaugmented_train_speed"; the others add their keys with their name
            as a suffix.
        train_images: how many of the images the training comparison uses.
        repeats: timed epochs per path, both comparisons.
        seed: augmentation, shuffling and weight initialisation.

    Returns:
        {"augment_speedup_vs_numpy_function", "online_vs_preaugmented_train_speed",
         ...images/s and settings of both}.

    Raises:
        ValueError: If only one of `images` and `labels` is given.
    """
    if (images is None) != (labels is None):
        raise ValueError("Pass both images and labels, or neither (to load flowers128). "
                         f"Received: images={type(images).__name__}, "
                         f"labels={type(labels).__name__}.")
    source = "given"
    if images is None:
        images, labels, source = load_bench_images()
    result = {"input_pipeline_source": source,
              **bench_augment_speed(images, chain, image_size, repeats=repeats, seed=seed)}
    for position, model in enumerate(train_models):
        training = bench_online_training(images[:train_images], labels[:train_images], chain,
                                         image_size, model=model, repeats=repeats, seed=seed)
        suffix = f"_{model}" if position else ""
        result |= {f"{key}{suffix}": value for key, value in training.items()}
    return result


# ----------------------------------------------------------------------------------------------
# (a) Augmentation throughput


def bench_augment_speed(
    images: np.ndarray,
    chain: str | list[dict],
    image_size: int,
    *,
    batch_size: int = 64,
    repeats: int = 3,
    num_threads: int = 1,
    seed: int = 0,
) -> dict[str, float | int]:
    """Measures three augmentation paths on the same images and chain, in one run.

    * ours: `augmented_batches` (a batch prepared in a background thread while the caller
      consumes the previous one) over `BatchAugmenter` with its OpenCV kernels;
    * albumentations dispatch: the same, with `kernels={}`;
    * the known-slow pattern: `from_tensor_slices(images).map(numpy_function(per-image
      albumentations), num_parallel_calls=AUTOTUNE).batch(batch_size)`.

    Each path runs once to warm up, then `repeats` times, interleaved so all see the same
    machine load; the best epoch of each counts.

    Args:
        images: uint8 (N, H, W, 3).
        chain: preset name or list of transform dicts.
        image_size: output side.
        batch_size: images per batch, all paths.
        repeats: timed epochs per path.
        num_threads: BatchAugmenter threads.
        seed: augmentation seed (and ColorPCA subsample seed, if the chain needs one).

    Returns:
        {"augment_speedup_vs_numpy_function", "augment_kernel_speedup_vs_albumentations",
         "augment_images_per_s_ours" and of the other paths, ...settings}.
    """
    transform = train_transform(images, chain, image_size, seed)
    ours = BatchAugmenter(transform, seed=seed, num_threads=num_threads)
    dispatch = BatchAugmenter(transform, seed=seed, num_threads=num_threads, kernels={})
    baseline = _numpy_function_dataset(images, copy.deepcopy(transform), batch_size)
    paths: dict[str, Callable[[int], Iterable]] = {
        "ours": lambda epoch: augmented_batches(images, ours, batch_size, epoch=epoch),
        "albumentations": lambda epoch: augmented_batches(images, dispatch, batch_size,
                                                          epoch=epoch),
        "numpy_function": lambda epoch: iter(baseline),
    }
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for epoch in range(repeats + 1):  # epoch 0 warms up
        for name, batches in paths.items():
            seconds[name].append(_time(batches(epoch)))
    ours.close()
    dispatch.close()
    rate = {name: len(images) / min(times[1:]) for name, times in seconds.items()}
    return {
        "augment_speedup_vs_numpy_function": rate["ours"] / rate["numpy_function"],
        "augment_kernel_speedup_vs_albumentations": rate["ours"] / rate["albumentations"],
        **{f"augment_images_per_s_{name}": value for name, value in rate.items()},
        "augment_images": len(images),
        "augment_input_size": images.shape[1],
        "augment_image_size": image_size,
        "augment_batch_size": batch_size,
        "augment_num_threads": num_threads,
    }


def train_transform(images: np.ndarray, chain: str | list[dict], image_size: int, seed: int):
    """The training Compose as `pipeline.train.cache_features` builds it, with the PCA colour
    shift fitted on `images` by `pipeline.augment.color_pca_for` where the chain uses it.

    The Compose is seeded too, for the per-image baseline that calls it directly; a
    `BatchAugmenter` reseeds it per image, as in the product.
    """
    color_pca = color_pca_for(chain, images, seed=seed)
    return build_train_transform(chain, image_size, color_pca=color_pca, seed=seed)


def _numpy_function_dataset(images: np.ndarray, transform, batch_size: int) -> tf.data.Dataset:
    def per_image_albumentations(image: np.ndarray) -> np.ndarray:
        return transform(image=image)["image"]

    return (
        tf.data.Dataset.from_tensor_slices(images)
        .map(lambda x: tf.numpy_function(per_image_albumentations, [x], tf.uint8),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
    )


def _time(batches: Iterable) -> float:
    start = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# (b) Training throughput, augmenting online against pre-augmented images


def _lite0(image_size: int, num_classes: int) -> keras.Model:
    base = create_backbone("efficientnet_lite0", weights=None, image_size=image_size)
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    return keras.Model(base.input, keras.layers.Dense(num_classes, "softmax")(pooled))


def _small_cnn(image_size: int, num_classes: int) -> keras.Model:
    layers = [keras.Input((image_size, image_size, 3)), keras.layers.Rescaling(1 / 255)]
    for filters in (16, 32, 64):
        layers.append(keras.layers.Conv2D(filters, 3, strides=2, activation="relu"))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(num_classes, "softmax")]
    return keras.Sequential(layers, name="small_cnn")


# The networks `bench_online_training` can train: (image_size, num_classes) -> model. Lite0 is
# the product's default backbone; the small CNN steps ~30x faster, so the input pipeline has
# far less model time to hide behind.
TRAIN_MODELS: dict[str, Callable[[int, int], keras.Model]] = {
    "efficientnet_lite0": _lite0,
    "small_cnn": _small_cnn,
}


def alternating_epoch_rates(model: keras.Model, sides: dict, images: int,
                            repeats: int) -> dict[str, float]:
    """Images/s of each side's fastest epoch, the sides' epochs alternating `repeats` times
    (side by side, so the machine's noise hits both), after one epoch of "preaugmented" that
    traces the train step."""
    model.fit(sides["preaugmented"], epochs=1, verbose=0)
    timers = {name: EpochTimer() for name in sides}
    for _ in range(repeats):
        for name, data in sides.items():
            model.fit(data, epochs=1, callbacks=[timers[name]], verbose=0)
    return {name: images / min(timer.seconds) for name, timer in timers.items()}


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._began)


def bench_online_training(
    images: np.ndarray,
    labels: np.ndarray,
    chain: str | list[dict],
    image_size: int,
    *,
    model: str = "efficientnet_lite0",
    batch_size: int = 32,
    repeats: int = 2,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Training images/s augmenting online, against the same PyDataset over augmented images.

    Both sides fit the same compiled model (from `TRAIN_MODELS`, random weights) with
    `AugmentedImages`: online over the raw images and a `BatchAugmenter`, offline over one
    augmented view of the same images made beforehand, with an augmenter that returns its
    input. So the only difference is the augmentation work. After one warm-up epoch (tracing),
    single epochs alternate, `repeats` each; the best epoch of each side counts.

    Args:
        images: uint8 (N, H, W, 3).
        labels: (N,) integer labels (any will do: only time is measured).
        chain: preset name or list of transform dicts.
        image_size: model input side.
        model: a key of `TRAIN_MODELS`.
        batch_size: images per step.
        repeats: timed epochs per side.
        seed: augmentation, shuffling and weight initialisation.

    Returns:
        {"online_vs_preaugmented_train_speed", "online_train_images_per_s",
         "preaugmented_train_images_per_s", ...settings}.

    Raises:
        ValueError: On an unknown model name.
    """
    if model not in TRAIN_MODELS:
        raise ValueError(f"Unknown model '{model}'. Expected one of: {', '.join(TRAIN_MODELS)}.")
    keras.utils.set_random_seed(seed)
    augmenter = BatchAugmenter(train_transform(images, chain, image_size, seed), seed=seed)
    augmented = np.concatenate(list(augmented_batches(images, augmenter, 256)))
    sides = {"online": AugmentedImages(images, labels, augmenter, batch_size, seed=seed),
             "preaugmented": AugmentedImages(augmented, labels, _unchanged, batch_size,
                                             seed=seed)}
    network = TRAIN_MODELS[model](image_size, int(labels.max()) + 1)
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rate = alternating_epoch_rates(network, sides, len(images), repeats)
    augmenter.close()
    return {
        "online_vs_preaugmented_train_speed": rate["online"] / rate["preaugmented"],
        "online_train_images_per_s": rate["online"],
        "preaugmented_train_images_per_s": rate["preaugmented"],
        "online_train_model": model,
        "online_train_images": len(images),
        "online_train_image_size": image_size,
        "online_train_batch_size": batch_size,
    }


def _unchanged(images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
    return images


# ----------------------------------------------------------------------------------------------


def load_bench_images(limit: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to `limit` random flowers128 photos (uint8 (N, 128, 128, 3)), their class ids and
    "flowers128"; or as many random 128 px images, random labels and "synthetic" without it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = sorted(FLOWERS.glob("*/*.jpg"))
    if not paths:
        images = rng.integers(0, 256, (limit, 128, 128, 3), dtype=np.uint8)
        return images, rng.integers(0, 5, limit), "synthetic"
    picks = sorted(rng.permutation(len(paths))[:limit])
    classes = sorted({path.parent.name for path in paths})
    images = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in picks])
    labels = np.array([classes.index(paths[i].parent.name) for i in picks])
    return images, labels, "flowers128"


def main(argv: list[str]) -> None:
    chain = argv[1] if len(argv) > 1 else "standard"
    image_size = int(argv[2]) if len(argv) > 2 else 128
    images, labels, source = load_bench_images()
    print(f"{source}: {len(images)} images {images.shape[1]}px -> {image_size}px, chain={chain!r}")
    result = bench_input_pipeline(images, labels, chain=chain, image_size=image_size)
    print(f"augmentation images/s: ours {result['augment_images_per_s_ours']:.0f}, "
          f"albumentations dispatch {result['augment_images_per_s_albumentations']:.0f}, "
          f"numpy_function {result['augment_images_per_s_numpy_function']:.0f}")
    for key in ("augment_speedup_vs_numpy_function", "augment_kernel_speedup_vs_albumentations",
                "online_vs_preaugmented_train_speed",
                "online_vs_preaugmented_train_speed_small_cnn"):
        print(f"  {key:46s} {result[key]:6.3f}")
    for suffix in ("", "_small_cnn"):
        print(f"training images/s ({result['online_train_model' + suffix]}): online "
              f"{result['online_train_images_per_s' + suffix]:.1f}, pre-augmented "
              f"{result['preaugmented_train_images_per_s' + suffix]:.1f}")


if __name__ == "__main__":
    main(sys.argv)
