"""Phase 1 on cached features versus re-running the frozen backbone every epoch.

On a CPU, transfer learning as the Keras guide and TFLite Model Maker do it runs the whole
frozen base over every training image in every epoch. Our phase 1 runs it once per cached view
(`pipeline.features.extract_features`) and then trains the head on the cache
(`pipeline.inputs.CachedViews`). Two measurements, each a function returning plain numbers:

* `bench_cached_head`: throughput on the same images in one run: a frozen end-to-end epoch
  (the product's base + head, `model.fit` over `AugmentedImages`) against a cached head epoch,
  extraction against the base's bare `tf.function` forward, and the whole phase 1 (extraction
  of K views + E cached epochs) against E end-to-end epochs.
* `bench_time_to_accuracy`: wall-clock time to a common dev accuracy on flowers128 for our
  phase 1 against the Keras-guide recipe (frozen base inside the model, Keras preprocessing
  layers for augmentation, re-run every epoch), and the test accuracy difference.

Both call the product's own functions (`pipeline.train.frozen_base`, `cache_features`,
`train_head`, `compile_model`; `pipeline.predict.predict_array` for test accuracy) with
`ExperimentConfig`s that differ from the defaults only where the arguments say.

Run from the repository root: `python -m bench cached_features` (about 8 minutes on 2 CPU
cores), which merges both dicts into `runs/bench/results.json` beside the goals.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_augment import train_transform  # noqa: E402
from bench.datasets import FLOWERS, ArrayData, load_flowers, train_images  # noqa: E402
from pipeline.augment import BatchAugmenter  # noqa: E402
from pipeline.backbones import (  # noqa: E402
    create_backbone,
    get_backbone_spec,
    model_image_size,  # noqa: E402
)
from pipeline.config import ExperimentConfig, TrainConfig  # noqa: E402
from pipeline.features import extract_features, make_forward  # noqa: E402
from pipeline.inputs import (  # noqa: E402
    AugmentedImages,
    CachedViews,
    augmented_batches,
    pad_batch,
)
from pipeline.model import assemble_classifier, build_head  # noqa: E402
from pipeline.predict import predict_array  # noqa: E402
from pipeline.train import (  # noqa: E402
    HEAD_STEPS_PER_EXECUTION,
    cache_features,
    compile_model,
    frozen_base,
    train_head,
)

# The time-to-accuracy comparison gives both recipes the same kind of augmentation: a crop of
# 70-100% of the area at a random place, a horizontal flip and a +-10% contrast change.
MATCHED_CHAIN = [
    {"name": "RandomResizedCrop", "scale": [0.7, 1.0], "ratio": [0.9, 1.1]},
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "RandomBrightnessContrast", "brightness_limit": 0.0, "contrast_limit": 0.1,
     "p": 1.0},
]


def keras_guide_augmentation(seed: int) -> list[keras.layers.Layer]:
    """The Keras preprocessing layers that stand in for `MATCHED_CHAIN` in the peer recipe."""
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomZoom(height_factor=(-0.16, 0.0), seed=seed),  # 70-100% of the area
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", seed=seed),
        keras.layers.RandomContrast(0.1, seed=seed),
    ]


class EpochClock(keras.callbacks.Callback):
    """Records each epoch's duration and end, in wall-clock and in this process's CPU seconds,
    and the dev accuracy reached by then.

    Ends count from `start` (perf_counter) and `cpu_start` (process_time, all threads), taken
    when the clock is made: on a CPU shared with other jobs wall-clock time grows with their
    load, CPU time much less. `dev_accuracy` holds each epoch's `val_accuracy` (None when `fit`
    has no validation data).
    """

    def __init__(self):
        super().__init__()
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.durations: list[float] = []
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []
        self.dev_accuracy: list[float | None] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.durations.append(now - self._began)
        self.ends.append(now - self.start)
        self.cpu_ends.append(time.process_time() - self.cpu_start)
        self.dev_accuracy.append((logs or {}).get("val_accuracy"))


def _config(*, chain: str | list[dict] | None = None, backbone: str | None = None,
            weights: str | None = None, image_size: int | None = None, views: int | None = None,
            seed: int = 0) -> ExperimentConfig:
    """The product's default experiment with the benchmark's settings (None keeps a default)."""
    default = ExperimentConfig()
    model = replace(default.model, backbone=backbone or default.model.backbone,
                    weights=weights or default.model.weights,
                    image_size=image_size or default.model.image_size)
    return replace(
        default, model=model,
        augment=replace(default.augment, chain=chain or default.augment.chain),
        train=replace(default.train, cached_views=views or default.train.cached_views, seed=seed))


# ----------------------------------------------------------------------------------------------
# Throughput: end-to-end epoch, cached epoch, extraction, raw forward


def bench_cached_head(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    image_size: int | None = None,
    views: int | None = None,
    epochs_for_ratio: int = 30,
    chain: str | list[dict] | None = None,
    timed_epochs: int = 2,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Measures, on the same images in one run, what phase 1 costs cached and end to end.

    * End-to-end epoch: the product's deployable model (frozen base + head,
      `assemble_classifier`) fitted over `AugmentedImages`; one warm-up epoch (tracing), then
      the fastest of `timed_epochs`.
    * Cached head epoch: the head fitted over `CachedViews` of the extracted features, with the
      same optimizer, loss and batch size; `epochs_for_ratio` epochs, the fastest one counts.
    * Extraction: `extract_features` of `views` augmented views (`keep_activations=True`, as
      when phase 2 runs) on the engine the product picks for the backbone (the spec's
      `extraction_engine`), and on TensorFlow for comparison, against a bare `tf.function` of
      the base over the same images pre-augmented, in float32 batches of the training batch
      size (TensorFlow's fastest; LiteRT runs its own smaller batches); all are set up
      first, then run interleaved `repeats` times (the best of each counts) so they see the
      same machine load. The setup (tracing; for LiteRT also the conversion and
      its check against TensorFlow) is reported apart as `forward_setup_s`.
    * Phase 1: E end-to-end epochs (the first, which traces, as measured; the other E - 1 at
      the timed epoch's speed) against the forward pass's setup + extraction of K views +
      the whole `fit` of E cached epochs (its tracing included).

    Batch size, default views and augmentation chain are the product's defaults (`TrainConfig`,
    `AugmentConfig`). Use a multiple of the batch size as the image count: extraction pads the
    last batch, and the padding counts against it.

    Args:
        images: uint8 (N, H, W, 3) training images.
        labels: (N,) integer labels (any labels will do: only time is measured).
        backbone: registry name.
        weights: "imagenet" or "none"; speed does not depend on it.
        image_size: model input side; None takes the backbone spec's default.
        views: K, augmented views cached per image; None takes `TrainConfig.cached_views`.
        epochs_for_ratio: E in `phase1_speedup_over_epochs`.
        chain: augmentation preset or list; None takes `AugmentConfig.chain`.
        timed_epochs: end-to-end epochs timed after the warm-up epoch.
        repeats: interleaved timings of extraction and raw forward.
        seed: augmentation, shuffling and weight initialisation.

    Returns:
        {"cached_head_epoch_speedup", "phase1_speedup_over_epochs", "phase1_epochs",
         "extraction_vs_raw_forward", ...images/s and seconds of every part}.
    """
    keras.utils.set_random_seed(seed)
    data = train_images(images, labels)
    config = _config(chain=chain, backbone=backbone, weights=weights, image_size=image_size,
                     views=views, seed=seed)
    image_size, views = model_image_size(config.model, data.image_size), config.train.cached_views
    base, bottom, top = frozen_base(config.model, image_size)
    augmenter = BatchAugmenter(train_transform(images, config.augment.chain, image_size, seed),
                               seed=seed)
    engine = get_backbone_spec(config.model.backbone).extraction_engine  # what "auto" picks

    extraction = _time_extraction(base, bottom, top, images, augmenter, engine=engine,
                                  config=config.train, repeats=repeats)
    cached_clock, cached_fit_s = _fit_cached_head(extraction["pooled"], data, config,
                                                  epochs=epochs_for_ratio)
    end_to_end_clock = _fit_end_to_end(base, data, augmenter, config, epochs=1 + timed_epochs)
    augmenter.close()

    end_to_end_s, cached_s = min(end_to_end_clock.durations[1:]), min(cached_clock.durations)
    up_front_s = extraction["setup_s"] + extraction["extraction_s"]
    by_epochs = _phase1_speedup_by_epochs(end_to_end_clock, cached_clock, up_front_s,
                                          cached_fit_s, epochs_for_ratio)
    count, batch_size = len(images), config.train.batch_size
    return {
        "cached_head_epoch_speedup": end_to_end_s / cached_s,
        "phase1_speedup_over_epochs": by_epochs[str(epochs_for_ratio)],
        "phase1_epochs": epochs_for_ratio,
        "phase1_speedup_by_epochs": by_epochs,
        "phase1_end_to_end_s": end_to_end_clock.durations[0]
        + (epochs_for_ratio - 1) * end_to_end_s,
        "phase1_cached_s": up_front_s + cached_fit_s,
        "extraction_vs_raw_forward": extraction["raw_forward_s"] * views
        / extraction["extraction_s"],
        "extraction_vs_raw_forward_tensorflow_engine": extraction["raw_forward_s"] * views
        / extraction["extraction_tensorflow_s"],
        "extraction_engine": extraction["engine"],
        "extraction_precision": extraction["precision"],
        "end_to_end_epoch_images_per_s": count / end_to_end_s,
        "cached_head_epoch_images_per_s": count / cached_s,
        "extraction_images_per_s": views * count / extraction["extraction_s"],
        "raw_forward_images_per_s": count / extraction["raw_forward_s"],
        "augment_images_per_s": count / extraction["augment_s"],
        "end_to_end_epoch_s": end_to_end_s,
        "end_to_end_first_epoch_s": end_to_end_clock.durations[0],
        "cached_head_epoch_s": cached_s,
        "cached_head_fit_s": cached_fit_s,
        "extraction_s": extraction["extraction_s"],
        "extraction_tensorflow_engine_s": extraction["extraction_tensorflow_s"],
        "forward_setup_s": extraction["setup_s"],
        "views": views,
        "images": count,
        "image_size": image_size,
        "batch_size": batch_size,
    }


def _phase1_speedup_by_epochs(end_to_end: EpochClock, cached: EpochClock, up_front_s: float,
                              cached_fit_s: float, epochs_for_ratio: int) -> dict[str, float]:
    """Phase 1's speedup over E epochs for E up to `epochs_for_ratio`, keyed by str(E).

    End to end: the first epoch (it traces) as measured, the other E - 1 at the fastest timed
    epoch's speed. Cached: the up-front costs (setup, extraction) and `fit`'s own overhead
    (tracing) once, then the first E cached epochs as measured; at `epochs_for_ratio` that is
    the whole `fit`.
    """
    epoch_s = min(end_to_end.durations[1:])
    fit_overhead_s = cached_fit_s - sum(cached.durations)
    by_epochs = {}
    for epochs in sorted({1, 5, 10, 20, epochs_for_ratio}):
        if epochs <= epochs_for_ratio:
            end_to_end_s = end_to_end.durations[0] + (epochs - 1) * epoch_s
            cached_s = up_front_s + fit_overhead_s + sum(cached.durations[:epochs])
            by_epochs[str(epochs)] = end_to_end_s / cached_s
    return by_epochs


def _fit_cached_head(pooled: np.ndarray, data: ArrayData, config: ExperimentConfig, *,
                     epochs: int) -> tuple[EpochClock, float]:
    """A new head fitted on the cached features for `epochs` epochs, compiled as phase 1 compiles
    it (`compile_model`, `HEAD_STEPS_PER_EXECUTION`), without dev data or early stopping.

    Returns:
        (its epoch clock, seconds of the whole `fit`, tracing included)
    """
    num_classes = len(data.class_names)
    head = build_head(num_classes, pooled.shape[-1], config.model)
    batches = CachedViews(pooled, data.labels("train"), config.train.batch_size,
                          seed=config.train.seed, num_classes=num_classes)
    compile_model(head, learning_rate=config.train.head_learning_rate,
                  steps_per_epoch=len(batches), config=config.train,
                  steps_per_execution=HEAD_STEPS_PER_EXECUTION)
    clock = EpochClock()
    started = time.perf_counter()
    head.fit(batches, epochs=epochs, callbacks=[clock], verbose=0)
    return clock, time.perf_counter() - started


def _fit_end_to_end(base: keras.Model, data: ArrayData, augmenter: BatchAugmenter,
                    config: ExperimentConfig, *, epochs: int) -> EpochClock:
    """The deployable model (`assemble_classifier`: the frozen base + a new head) fitted over
    `AugmentedImages`, compiled as phase 1 compiles its head; returns its epoch clock."""
    num_classes = len(data.class_names)
    head = build_head(num_classes, base.output_shape[-1], config.model)
    model = assemble_classifier(base, head, data.class_names)
    one_hot = np.eye(num_classes, dtype="float32")[data.labels("train")]  # as phase 1 trains
    batches = AugmentedImages(data.images("train"), one_hot, augmenter, config.train.batch_size,
                              seed=config.train.seed)
    # One step per Keras call (not HEAD_STEPS_PER_EXECUTION): an end-to-end step takes a third
    # of a second, so Keras' own work per step is nothing to save, and in one `fit` of 3 epochs
    # 32 steps per call made the later epochs up to 1.8x slower.
    compile_model(model, learning_rate=config.train.head_learning_rate,
                  steps_per_epoch=len(batches), config=config.train)
    clock = EpochClock()
    model.fit(batches, epochs=epochs, callbacks=[clock], verbose=0)
    return clock


def _time_extraction(base: keras.Model, bottom: keras.Model, top: keras.Model,
                     images: np.ndarray, augmenter: BatchAugmenter, *, engine: str,
                     config: TrainConfig, repeats: int) -> dict:
    """Best-of-`repeats` seconds of extraction (K views) on `engine` in the configured precision
    and on TensorFlow, of the raw forward and of augmentation (1 view)."""
    batch_size = config.batch_size
    premade = [pad_batch(batch, batch_size)
               for batch in augmented_batches(images, augmenter, batch_size)]
    started = time.perf_counter()
    forward = make_forward(bottom, top, batch_size=batch_size, engine=engine,
                           precision=config.extraction_precision)
    forward(premade[0][:forward.batch_size])  # LiteRT runs smaller batches
    setup_s = time.perf_counter() - started
    forwards = {"extraction_s": forward,
                "extraction_tensorflow_s": make_forward(bottom, top, batch_size=batch_size)}
    forwards["extraction_tensorflow_s"](premade[0])
    premade = [tf.cast(batch, tf.float32) for batch in premade]
    raw_forward = tf.function(lambda batch: base(batch, training=False))
    raw_forward(premade[0])
    timings: dict[str, list[float]] = {name: [] for name in (*forwards, "raw_forward_s",
                                                             "augment_s")}
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in premade:
            raw_forward(batch)
        timings["raw_forward_s"].append(time.perf_counter() - started)
        for name, each in forwards.items():
            started = time.perf_counter()
            cache = extract_features(each, images, augmenter, views=config.cached_views,
                                     keep_activations=True,
                                     description=f"Extraction on {each.engine} (timed)")
            timings[name].append(time.perf_counter() - started)
            if each is forward:
                pooled = cache.pooled  # what phase 1 trains on
        started = time.perf_counter()
        for _ in augmented_batches(images, augmenter, batch_size):
            pass
        timings["augment_s"].append(time.perf_counter() - started)
    return {name: min(values) for name, values in timings.items()} | {
        "setup_s": setup_s, "pooled": pooled, "engine": forward.engine,
        "precision": forward.precision}


# ----------------------------------------------------------------------------------------------
# Time to accuracy on flowers128: our phase 1 against the Keras-guide recipe


def bench_time_to_accuracy(
    flowers_root: Path | None = None,
    *,
    image_size: int = 160,
    views: tuple[int, ...] | None = None,
    keras_guide_epochs: int = 10,
    margin: float = 0.01,
    weights: str = "imagenet",
    max_examples: int = 0,
    seed: int = 0,
    plot_path: Path | None = None,
) -> dict[str, float]:
    """Wall-clock time to a common dev accuracy, ours against the Keras-guide recipe.

    Both recipes use EfficientNet-Lite0 with the same ImageNet weights, the same images, splits
    (the product's data stage: content-hash 60/20/20 for 4,317 images), image size, batch size
    (`TrainConfig.batch_size`), seed and matched augmentation (`MATCHED_CHAIN` against
    `keras_guide_augmentation`):

    * ours: phase 1 as the product runs it: `cache_features` (K augmented train views and
      dev, on the engine the product picks, its setup included), then `train_head` (Adam
      with decay, early stopping on dev loss, best weights kept). Phase 2 is left out: the
      peer does not fine-tune either. Run once per K in `views`.
    * the Keras guide (keras-io `image_classification_efficientnet_fine_tuning`, top-layer
      stage): augmentation layers -> frozen base -> pooling -> BatchNorm -> Dropout(0.2) ->
      softmax, Adam(1e-2), the base re-run over every train and dev image every epoch,
      `keras_guide_epochs` epochs.

    The clocks start after the backbone is built. The target is the lower of the two best dev
    accuracies minus `margin`, so both reach it; each recipe's time is the end of the first
    epoch at or above it, in wall-clock seconds and, as a check against other jobs' load on a
    shared CPU, in this process's CPU seconds (`*_cpu`). Because both curves are flat near their
    best, the ratio depends on the margin: it is also reported for margins 0-0.03
    (`..._by_margin`, computed from the same runs). Test accuracy is each recipe's final model
    (ours: the deployable model with the restored best head, through `predict_array` as the
    evaluate stage runs it) on the test split, which neither has seen.

    Choices: 160 px (flowers128 photos are 128 px; 160 is the data stage default and costs half
    of 224 on a CPU), 10 peer epochs (20-40 s each on 2 shared cores: its dev accuracy has
    levelled off after 2-5), the product's default K=2 and 15 head epochs, and K=1 (one
    augmented view cached): about 5 minutes.

    Args:
        flowers_root: flowers128, one sub-folder per class; None takes `FLOWERS`.
        image_size: model input side, both recipes.
        views: the K values to run ours with, the headline one first; None takes
            (`TrainConfig.cached_views`, 1).
        keras_guide_epochs: epochs of the peer.
        margin: accuracy subtracted from the lower best dev accuracy to set the target.
        weights: "imagenet" (offline for Lite0) or "none" (tests).
        max_examples: use only this many images (0: all); for quick runs.
        seed: the same for both recipes.
        plot_path: where to save the dev-accuracy-over-time plot of all runs (PNG); None: none.

    Returns:
        {"time_to_accuracy_speedup_vs_keras_guide", "test_accuracy_minus_keras_guide" (accuracy
        points), the same with a "_k<K>" suffix for the other K, ...times, accuracies, epochs
        and sizes}, or {"skipped": reason} when `flowers_root` is not a folder.
    """
    flowers_root = Path(flowers_root or FLOWERS)
    if not flowers_root.is_dir():
        return {"skipped": f"no flowers128 folder at {flowers_root}"}
    views = views or tuple(dict.fromkeys((TrainConfig().cached_views, 1)))
    data = load_flowers(flowers_root, image_size, max_examples=max_examples)
    configs = [_config(chain=MATCHED_CHAIN, weights=weights, image_size=image_size, views=k,
                       seed=seed) for k in views]
    ours = [_run_ours(data, config) for config in configs]
    peer = _run_keras_guide(data, configs[0], keras_guide_epochs)
    runs = {**{f"ours, K={k}": run for k, run in zip(views, ours, strict=True)},
            "keras guide": peer}
    for name, run in runs.items():
        print(f"{name} (seconds, CPU seconds, dev accuracy): " + ", ".join(
            f"{end:.0f}/{cpu:.0f}/{accuracy:.3f}"
            for end, cpu, accuracy in zip(run["ends"], run["cpu_ends"], run["dev_accuracy"],
                                          strict=True)))
    results = _compare(ours[0], peer, margin)
    results["time_to_accuracy_speedup_vs_keras_guide_by_margin"] = {
        f"{other:.2f}": _compare(ours[0], peer, other)["time_to_accuracy_speedup_vs_keras_guide"]
        for other in (0.0, 0.01, 0.02, 0.03)}
    for k, run in zip(views[1:], ours[1:], strict=True):
        results |= {f"{key}_k{k}": value for key, value in _compare(run, peer, margin).items()}
    if plot_path is not None:
        title = f"Time to accuracy on {flowers_root.name} (Lite0, {image_size} px)"
        _plot_dev_accuracy(runs, results["target_dev_accuracy"], plot_path, title=title)
    return results | {
        "keras_guide_total_s": peer["ends"][-1],
        "keras_guide_epochs": len(peer["ends"]),
        "views": views[0],
        "image_size": image_size,
        "batch_size": configs[0].train.batch_size,
        **{f"{split}_images": len(data.labels(split)) for split in ("train", "dev", "test")},
    }


def _compare(ours: dict, peer: dict, margin: float) -> dict[str, float]:
    """Time to the common target (the lower best dev accuracy minus `margin`), both recipes."""
    target = min(max(ours["dev_accuracy"]), max(peer["dev_accuracy"])) - margin
    ours_s, peer_s = _time_to(target, ours, "ends"), _time_to(target, peer, "ends")
    ours_cpu_s, peer_cpu_s = _time_to(target, ours, "cpu_ends"), _time_to(target, peer, "cpu_ends")
    return {
        "time_to_accuracy_speedup_vs_keras_guide": peer_s / ours_s,
        "test_accuracy_minus_keras_guide": 100 * (ours["test_accuracy"] - peer["test_accuracy"]),
        "target_dev_accuracy": target,
        "time_to_accuracy_speedup_vs_keras_guide_cpu": peer_cpu_s / ours_cpu_s,
        "ours_time_to_target_s": ours_s,
        "keras_guide_time_to_target_s": peer_s,
        "ours_time_to_target_cpu_s": ours_cpu_s,
        "keras_guide_time_to_target_cpu_s": peer_cpu_s,
        "ours_best_dev_accuracy": max(ours["dev_accuracy"]),
        "keras_guide_best_dev_accuracy": max(peer["dev_accuracy"]),
        "ours_test_accuracy": ours["test_accuracy"],
        "keras_guide_test_accuracy": peer["test_accuracy"],
        "ours_extraction_s": ours["extraction_s"],
        "ours_total_s": ours["ends"][-1],
        "ours_epochs": len(ours["ends"]),
    }


def _plot_dev_accuracy(runs: dict[str, dict], target: float, path: Path, *, title: str) -> None:
    """Dev accuracy at the end of each epoch against wall-clock seconds, one line per run."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, run in runs.items():
        axes.plot(run["ends"], run["dev_accuracy"], marker="o", markersize=3, label=name)
    axes.axhline(target, color="gray", linestyle="--", linewidth=1, label="common target")
    axes.set(xlabel="seconds since the backbone was built (feature extraction included)",
             ylabel="dev accuracy", title=title)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _run_ours(data: ArrayData, config: ExperimentConfig) -> dict:
    """Phase 1 as `pipeline.train.train` runs it (`frozen_base`, `cache_features`, `train_head`),
    its clock started before extraction; tested as the evaluate stage tests (`predict_array`)."""
    keras.utils.set_random_seed(config.train.seed)
    base, bottom, top = frozen_base(config.model, model_image_size(config.model, data.image_size))
    clock = EpochClock()  # the engine's setup (LiteRT: conversion and its check) counts
    with tempfile.TemporaryDirectory() as run_dir:
        train_cache, dev_cache, _ = cache_features(config.augment, config.model, config.train,
                                                   data, Path(run_dir), bottom, top,
                                                   keep_activations=False)
        extraction_s = time.perf_counter() - clock.start
        head = build_head(len(data.class_names), train_cache.pooled.shape[-1], config.model)
        train_head(head, train_cache.pooled, data.labels("train"), dev_cache.pooled,
                   data.labels("dev"), config.train, Path(run_dir) / "backup" / "phase1",
                   callbacks=[clock])

    model = assemble_classifier(base, head, data.class_names)
    predictions = predict_array(model, data.images("test"), description="Testing").argmax(-1)
    return {"ends": clock.ends, "cpu_ends": clock.cpu_ends, "dev_accuracy": clock.dev_accuracy,
            "test_accuracy": float(np.mean(predictions == data.labels("test"))),
            "extraction_s": extraction_s}


def _run_keras_guide(data: ArrayData, config: ExperimentConfig, epochs: int) -> dict:
    """The Keras guide's top-layer training: the frozen base runs inside every step.

    It shares our backbone, weights, image size, batch size and seed (`config`), nothing else.
    """
    keras.utils.set_random_seed(config.train.seed)
    base = create_backbone(config.model.backbone, weights=config.model.weights,
                           image_size=model_image_size(config.model, data.image_size))
    base.trainable = False
    inputs = keras.Input(base.input_shape[1:])
    augmented = keras.Sequential(keras_guide_augmentation(config.train.seed),
                                 name="img_augmentation")(inputs)
    features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base(augmented))
    features = keras.layers.BatchNormalization()(features)
    features = keras.layers.Dropout(0.2, name="top_dropout")(features)
    outputs = keras.layers.Dense(len(data.class_names), activation="softmax",
                                 name="pred")(features)
    model = keras.Model(inputs, outputs, name="keras_guide")

    clock = EpochClock()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(_dataset(data, "train", config.train, shuffle=True), epochs=epochs,
              validation_data=_dataset(data, "dev", config.train), callbacks=[clock], verbose=2)
    _, test_accuracy = model.evaluate(_dataset(data, "test", config.train), verbose=0)
    return {"ends": clock.ends, "cpu_ends": clock.cpu_ends, "dev_accuracy": clock.dev_accuracy,
            "test_accuracy": float(test_accuracy)}


def _dataset(data: ArrayData, split: str, config: TrainConfig, *,
             shuffle: bool = False) -> tf.data.Dataset:
    labels = data.labels(split)
    dataset = tf.data.Dataset.from_tensor_slices((data.images(split), labels))
    if shuffle:
        dataset = dataset.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
    return (dataset.batch(config.batch_size)
            .map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def _time_to(target: float, run: dict, clock: str) -> float:
    """Seconds from the clock's start to the end of the first epoch at or above `target`."""
    for end, accuracy in zip(run[clock], run["dev_accuracy"], strict=True):
        if accuracy >= target:
            return end
    raise ValueError(f"The run never reached dev accuracy {target:.4f}. "
                     f"Received: dev accuracies {run['dev_accuracy']}.")
