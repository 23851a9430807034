"""Two-phase transfer learning.

Phase 1 (`train_head`): the pretrained base is frozen, its features are cached for K augmented
views of each training image, and a new softmax head is trained on the cache.
Phase 2: the base is unfrozen from `train.fine_tune_from` up (the backbone spec's top blocks by
default, or a lower block boundary, or all of it), BatchNorm layers stay frozen in inference
mode, and those layers + head are fine-tuned with a lower learning rate. It is fed one of two
ways (`phase2_feeding`): `fine_tune` on cached activations where the trainable part begins
(cheap: the frozen layers below never run again, but only the K fixed views), or
`fine_tune_on_pixels` on images augmented live, a fresh view of every image each epoch (the
whole base runs every step).

Both phases use Adam with an exponential learning-rate decay, stop early when the dev loss (or
the dev accuracy, if configured) stops improving, keeping the best weights, and keep a backup
that a killed run resumes from.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import distribute
from pipeline.atomic import atomic_path, is_intact, seal, write_json, write_with
from pipeline.augment import (
    BatchAugmenter,
    build_eval_transform,
    build_train_transform,
    color_pca_for,
)
from pipeline.backbones import (
    BackboneSpec,
    boundary_index,
    create_backbone,
    freeze_backbone,
    get_backbone_spec,
    model_image_size,
    split_backbone,
)
from pipeline.config import AugmentConfig, ModelConfig, TrainConfig
from pipeline.data.prepare import PreparedData, load_prepared
from pipeline.features import FeatureCache, Forward, extract_features, make_forward
from pipeline.inputs import AugmentedImages, CachedViews
from pipeline.litert import available_cpus
from pipeline.model import adam_with_decay, assemble_classifier, build_head, layer_rate_scales


def train_stage(augment: AugmentConfig, model: ModelConfig, training: TrainConfig,
                run_dir: Path, *, backup_dir: Path) -> list[str]:
    """The train stage: both phases on the run's prepared data; prints where the time went.

    `backup_dir` is where a killed run resumes from; it must be named by this config's
    fingerprint: backups beside it, written by other configs, are removed with a line saying so.
    """
    stale = [path for path in backup_dir.parent.glob("*") if path != backup_dir]
    for path in sorted(stale):
        shutil.rmtree(path, ignore_errors=True)
        path.unlink(missing_ok=True)  # a stray file; rmtree only removes folders
        print(f"Removed {path}: a training backup of another config, never resumed.")
    # issue 17: only the chief writes the run's artifacts (pipeline.distribute)
    with distribute.written_by_chief(run_dir) as written:
        result = train(augment, model, training, load_prepared(run_dir / "data"), written,
                       backup_dir=backup_dir)
    timings = ", ".join(f"{key} {value:.0f}s" for key, value in result["timings"].items())
    print(f"Training done: {timings}")
    return ["model.keras", "train_history.json"]


def train(augment: AugmentConfig, model: ModelConfig, training: TrainConfig, data: PreparedData,
          run_dir: Path, *, backup_dir: Path | None = None) -> dict:
    """Runs both phases and saves `run_dir/model.keras`.

    Everything a killed run needs to resume lives in `backup_dir` (default `run_dir/backup`)
    until training ends: the cached features, phase 1's head once that phase is done, and each
    phase's last epoch (Keras' `BackupAndRestore`, with the early-stopping state and history
    beside it). Run again, training picks up there: features are not extracted twice, a
    finished phase is not trained again, and the resumed epochs draw the same batches.

    Returns:
        {"history": per-epoch metrics of both phases, "timings": seconds per step,
         "phase_boundaries": epochs at which phase 2 began, "image_size": the model's input
         side, "extraction_engine" and "extraction_precision": what ran the frozen base}
    """
    backup_dir = backup_dir or run_dir / "backup"
    if not backup_dir.exists():  # a fresh start: the logs of an earlier training would mislead
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    discard_damaged_backup(backup_dir)
    keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec = get_backbone_spec(model.backbone)
    image_size = model_image_size(model, data.image_size)
    # Where phase 2 begins and how it is fed; the activations are cached at that point only
    # when phase 2 reads them.
    fine_tune_from = resolve_fine_tune_from(training.fine_tune_from, spec, data.labels("train"))
    base, bottom, top = frozen_base(model, image_size, fine_tune_from)
    feeding = phase2_feeding(training.phase2_input, fine_tune_from)
    timings = {}

    # Cache the frozen network's outputs: K augmented views of train, the plain view of dev.
    started = time.perf_counter()
    train_cache, dev_cache, engine = _features_once(
        backup_dir / "features", lambda folder: cache_features(
            augment, model, training, data, run_dir, bottom, top,
            keep_activations=training.fine_tune_epochs > 0 and feeding == "cached",
            folder=folder))
    timings["extract_features_s"] = time.perf_counter() - started
    train_labels, dev_labels = data.labels("train"), data.labels("dev")
    if training.head_learning_rate == "auto":
        from pipeline.lr_find import resolve_head_learning_rate

        training = resolve_head_learning_rate(training, model, train_cache.pooled, train_labels,
                                              len(data.class_names))

    head = build_head(len(data.class_names), train_cache.pooled.shape[-1], model)
    started = time.perf_counter()
    history = _head_once(backup_dir / "phase1_done", head, lambda: train_head(
        head, train_cache.pooled, train_labels, dev_cache.pooled, dev_labels, training,
        backup_dir / "phase1", callbacks=[tensorboard_logs(run_dir, "phase1")]))
    timings["phase1_head_s"] = time.perf_counter() - started
    boundaries = [len(history.get("loss", []))]

    if training.fine_tune_epochs:
        freeze_backbone(base, spec, unfreeze_top=True, fine_tune_from=fine_tune_from)
        print(f"Phase 2 trains from {fine_tune_from} (layer "
              f"{base.layers[boundary_index(base, spec, fine_tune_from)].name}) up, fed from "
              f"{'cached activations' if feeding == 'cached' else 'pixels augmented live'} "
              f"(phase2_feeding: {feeding}).")
        started = time.perf_counter()
        phase2_logs = [tensorboard_logs(run_dir, "phase2")]
        if feeding == "cached":
            phase2 = cached_phase2(top, head, train_cache.activations, train_labels,
                                   dev_cache.activations, dev_labels, training,
                                   boundary_layers=tuple(spec.boundaries.values()))
        else:
            train_augmenter, eval_augmenter = augmenters(augment, training, data, image_size)
            phase2 = pixel_phase2(base, head, data.images("train"), train_labels,
                                  data.images("dev"), dev_labels, train_augmenter,
                                  eval_augmenter, training,
                                  boundary_layers=tuple(spec.boundaries.values()))
        if training.fine_tune_learning_rate == "auto":
            from pipeline.lr_find import resolve_fine_tune_learning_rate

            training = resolve_fine_tune_learning_rate(training, phase2.model,
                                                       phase2.train_data, run_dir)
        history2 = fit_phase2(phase2, train_labels, training, backup_dir / "phase2",
                              callbacks=phase2_logs)
        timings["phase2_fine_tune_s"] = time.perf_counter() - started
        for key, values in history2.items():
            history.setdefault(key, []).extend(values)

    freeze_backbone(base, spec, unfreeze_top=False)
    classifier = assemble_classifier(base, head, data.class_names)
    with atomic_path(run_dir / "model.keras") as path:
        classifier.save(path)
    result = {"history": history, "timings": timings, "phase_boundaries": boundaries,
              "head_learning_rate": training.head_learning_rate,
              "fine_tune_learning_rate": training.fine_tune_learning_rate,
              "image_size": image_size, "fine_tune_from": fine_tune_from,
              "phase2_feeding": feeding,
              "extraction_engine": engine["engine"], "extraction_precision": engine["precision"]}
    write_json(run_dir / "train_history.json", result)
    shutil.rmtree(backup_dir, ignore_errors=True)  # done: nothing left to resume
    return result


def _features_once(folder: Path, extract) -> tuple[FeatureCache, FeatureCache, dict]:
    """The train and dev feature caches, memory-mapped: read from `folder` when a killed run
    left them there, else extracted by `extract(temporary folder)`, which writes them there
    as it goes, and moved into `folder` (whole or not at all)."""
    if (folder / "engine.json").is_file():
        print(f"Reusing the features cached before an interruption ({folder}).")
        return (FeatureCache.load(folder, "train"), FeatureCache.load(folder, "dev"),
                json.loads((folder / "engine.json").read_text()))
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        _, _, forward = extract(temporary)
        engine = {"engine": forward.engine, "precision": forward.precision}
        (temporary / "engine.json").write_text(json.dumps(engine))
        seal(temporary)
    return FeatureCache.load(folder, "train"), FeatureCache.load(folder, "dev"), engine


def _head_once(folder: Path, head: keras.Model, train_phase) -> dict:
    """Phase 1's history, with `head` holding its weights: loaded from `folder` when a killed
    run finished the phase before, else trained by `train_phase()` and written there."""
    if (folder / "history.json").is_file():
        print("Phase 1 finished before the interruption: reusing its head.")
        head.load_weights(folder / "head.weights.h5")
        load_random_state(head, folder / "random_state.npz")
        return json.loads((folder / "history.json").read_text())
    history = train_phase()
    with atomic_path(folder) as temporary:
        temporary.mkdir()
        head.save_weights(temporary / "head.weights.h5")
        save_random_state(head, temporary / "random_state.npz")
        (temporary / "history.json").write_text(json.dumps(history))
        seal(temporary)
    return history


# What a killed run leaves in its backup, in the order training writes it; each part is only
# valid with every part before it.
BACKUP_PARTS = (("features",), ("phase1", "phase1_state"), ("phase1_done",),
                ("phase2", "phase2_state"))


def discard_damaged_backup(backup_dir: Path) -> None:
    """Removes the first damaged part of a backup and every part after it, with a line saying
    so: a resumed run never starts from a file changed, truncated or removed since it was
    written (the sealed folders carry their hashes; the early-stopping states must load)."""
    for index, names in enumerate(BACKUP_PARTS):
        damaged = [backup_dir / name for name in names
                   if not _backup_part_intact(backup_dir / name)]
        if damaged:
            later = [backup_dir / name for part in BACKUP_PARTS[index:] for name in part]
            for path in later:
                shutil.rmtree(path, ignore_errors=True)
            print(f"The training backup {damaged[0]} is damaged (changed, truncated or partly "
                  f"removed since it was written); discarded it and what was saved after it, so "
                  f"training redoes that part.")
            return


def _backup_part_intact(path: Path) -> bool:
    if not path.exists():
        return True  # not written yet: nothing to resume from, nothing damaged
    if path.name.endswith("_state"):
        return _states_intact(path)
    sealed = path / "checkpoint" if path.name in ("phase1", "phase2") else path
    return not sealed.exists() or is_intact(sealed)


def _states_intact(state_dir: Path) -> bool:
    """The early-stopping states (one file each, written atomically) all load, and those a
    resume from the phase's checkpoint reads are there (see `ResumableEarlyStopping`)."""
    if not all(_loads(path) for path in state_dir.iterdir()):
        return False
    metadata = state_dir.with_name(state_dir.name.removesuffix("_state")) / "checkpoint" / \
        "training_metadata.json"
    try:
        done = json.loads(metadata.read_text())["epoch"]  # epochs finished before the kill
    except (OSError, ValueError, KeyError):
        return True  # no usable checkpoint: the phase starts over and reads no state
    if done == 0:
        return True
    state = state_dir / f"epoch_{done - 1}.json"
    if not state.is_file() or not (state_dir / f"random_{done - 1}.npz").is_file():
        return False
    best = json.loads(state.read_text())["best_epoch"]
    return best is None or (state_dir / f"best_{best}.npz").is_file()


def _loads(path: Path) -> bool:
    """True when an early-stopping state file reads back whole (JSON, or an npz whose zip
    checksums hold)."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as stored:
                for name in stored.files:
                    stored[name]
        else:
            json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def save_random_state(model: keras.Model, path: Path) -> None:
    """Saves the state of the model's random-number generators (dropout's), which Keras'
    weight files leave out: a resumed run must draw the masks the killed one would have."""
    states = [np.asarray(variable.numpy()) for variable in _generator_states(model)]
    write_with(path, lambda handle: np.savez(handle, *states))


def load_random_state(model: keras.Model, path: Path) -> None:
    """Restores what `save_random_state` saved (in the model's variable order: the generators'
    names depend on how many were made before in the process)."""
    with np.load(path) as stored:
        for index, variable in enumerate(_generator_states(model)):
            variable.assign(stored[f"arr_{index}"])


def _generator_states(model: keras.Model) -> list:
    return [variable for variable in model.variables if "seed_generator_state" in variable.path]


def frozen_base(model: ModelConfig, image_size: int,
                fine_tune_from: str = "top") -> tuple[keras.Model, keras.Model, keras.Model]:
    """The config's backbone with pretrained weights, frozen, and cut where phase 2 begins
    (`fine_tune_from`: "top", a block boundary of the spec, or "all").

    Returns:
        (base, bottom, top) from `create_backbone` and `split_backbone`; they share weights.
    """
    spec = get_backbone_spec(model.backbone)
    base = create_backbone(spec.name, weights=model.weights, image_size=image_size)
    freeze_backbone(base, spec, unfreeze_top=False)
    return base, *split_backbone(base, spec, fine_tune_from)


# `train.fine_tune_from: auto`: (fewest training images per class, steps below "top") from the
# measurements in the README's "How deep to fine-tune"; the first row whose bound the data
# reaches wins. A step is one block boundary below the top blocks (Lite0: block5a, block4a),
# then "all".
AUTO_DEPTH = ((1000, 1), (0, 0))


def resolve_fine_tune_from(fine_tune_from: str, spec: BackboneSpec, labels: np.ndarray) -> str:
    """`train.fine_tune_from`, with "auto" replaced by a point chosen by the number of training
    images per class (the smallest class counts): deeper with more data, by `AUTO_DEPTH`."""
    if fine_tune_from != "auto":
        return fine_tune_from
    counts = np.bincount(labels)
    per_class = int(counts[counts > 0].min()) if len(labels) else 0
    steps = next(steps for bound, steps in AUTO_DEPTH if per_class >= bound)
    below_top = [name for name in reversed(spec.boundaries)
                 if spec.boundaries[name] != spec.unfreeze_from]
    depths = ["top", *below_top, "all"]
    chosen = depths[min(steps, len(depths) - 1)]
    print(f"train.fine_tune_from=auto: {per_class} training images in the smallest class, so "
          f"phase 2 trains from {chosen}.")
    return chosen


def phase2_feeding(phase2_input: str, fine_tune_from: str) -> str:
    """"cached" or "pixels": `train.phase2_input`, or for "auto" cached wherever phase 2 begins
    inside the base (its layers below are frozen, so their outputs can be cached like phase
    1's) and pixels from "all" (a cache at the input would hold the K augmented images
    themselves: no computation saved, and fresh views lost).

    Measured (the README's "How deep to fine-tune"): at block5a the cached path reached the same
    dev accuracy as pixels in a fifth of the time on flowers128, and on Fashion-MNIST a pixel
    epoch costs about 5x a cached one.
    """
    if phase2_input != "auto":
        return phase2_input
    return "pixels" if fine_tune_from == "all" else "cached"


def augmenters(augment: AugmentConfig, training: TrainConfig, data: PreparedData,
               image_size: int, *, run_dir: Path | None = None
               ) -> tuple[BatchAugmenter, BatchAugmenter]:
    """(train, eval) batch augmenters of the config: the chain at the model's input size (with
    the PCA colour shift fitted on train, if the chain uses it, and saved as
    `run_dir/color_pca.json` when `run_dir` is given), and the plain resize."""
    color_pca = color_pca_for(augment.chain, data.images("train"), seed=training.seed)
    if color_pca is not None and run_dir is not None:
        color_pca.save(run_dir / "color_pca.json")
    train_transform = build_train_transform(augment.chain, image_size, color_pca=color_pca)
    return (BatchAugmenter(train_transform, seed=training.seed),
            BatchAugmenter(build_eval_transform(image_size), seed=training.seed))


def cache_features(augment: AugmentConfig, model: ModelConfig, training: TrainConfig,
                   data: PreparedData, run_dir: Path, bottom, top, *,
                   keep_activations: bool,
                   folder: Path | None = None) -> tuple[FeatureCache, FeatureCache, Forward]:
    """The frozen base's outputs for K augmented views of train and the plain view of dev,
    written into `folder` as they come (`extract_features`) or, without one, kept in memory.

    Returns:
        (train cache, dev cache, the `Forward` that ran the base); the PCA colour shift fitted on
        the way, if the chain uses it, is saved as `run_dir/color_pca.json`.
    """
    image_size = model_image_size(model, data.image_size)
    train_augmenter, eval_augmenter = augmenters(augment, training, data, image_size,
                                                 run_dir=run_dir)
    engine = training.extraction_engine
    if engine == "auto":
        engine = get_backbone_spec(model.backbone).extraction_engine
    forward = make_forward(bottom, top, batch_size=training.batch_size, engine=engine,
                           precision=training.extraction_precision)
    print(f"Feature extraction runs on {forward.engine} in {forward.precision} "
          f"({available_cpus()} CPU cores).")
    # issue 17: with several workers each extracts its share, then all gather the whole
    extract = functools.partial(extract_features, forward)
    train_cache = distribute.extract_share(extract, data.images("train"), train_augmenter,
                                           views=training.cached_views,
                                           keep_activations=keep_activations,
                                           description=f"Features of {training.cached_views} "
                                                       f"augmented views (train)",
                                           folder=folder, prefix="train")
    dev_cache = distribute.extract_share(extract, data.images("dev"), eval_augmenter, views=1,
                                         keep_activations=keep_activations,
                                         description="Features (dev)", folder=folder,
                                         prefix="dev")
    return train_cache, dev_cache, forward


# A head step on cached features takes a few milliseconds, as much as Keras' own work per step
# in Python; running 32 steps per call cut 15 head epochs from 2.9 s to 2.4 s (same weights).
# Phase 2's steps take seconds, and its progress bar should move every step.
HEAD_STEPS_PER_EXECUTION = 32


def train_head(head: keras.Model, train_features: np.ndarray, train_labels: np.ndarray,
               dev_features: np.ndarray, dev_labels: np.ndarray, config: TrainConfig,
               backup_dir: Path, *,
               callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Phase 1: trains the new head on cached pooled features (K views, one drawn per epoch).

    `callbacks` run beside early stopping and the backup (e.g. to time each epoch).
    """
    train_data, dev_data = cached_datasets(train_features, train_labels, dev_features,
                                           dev_labels, config,
                                           num_classes=head.output_shape[-1])
    return _fit(head, train_data, dev_data, train_labels, config,
                learning_rate=config.head_learning_rate, epochs=config.head_epochs,
                backup_dir=backup_dir, phase="phase 1 (head on cached features)",
                steps_per_execution=HEAD_STEPS_PER_EXECUTION, callbacks=callbacks)


@dataclass
class Phase2:
    """What phase 2 fits, fed one of its two ways: the model and its train and dev batches."""

    model: keras.Model
    train_data: CachedViews | AugmentedImages
    dev_data: CachedViews | AugmentedImages
    description: str
    part: keras.Model | None = None  # the backbone's trainable part, for layer_lr_decay
    boundary_layers: tuple[str, ...] = ()  # its block groups' first layers (the spec's)


def cached_phase2(top: keras.Model, head: keras.Model, train_activations: np.ndarray,
                  train_labels: np.ndarray, dev_activations: np.ndarray, dev_labels: np.ndarray,
                  config: TrainConfig, *, boundary_layers: tuple[str, ...] = ()) -> Phase2:
    """Phase 2 on cached activations: the unfrozen part of the base (`top`, from
    `split_backbone` at the cache point) and the head, on the K cached views
    (`boundary_layers`: the backbone spec's, for `train.layer_lr_decay`)."""
    model = phase2_model(top, head, train_activations.shape[2:], name="top_blocks_and_head")
    train_data, dev_data = cached_datasets(train_activations, train_labels, dev_activations,
                                           dev_labels, config,
                                           num_classes=model.output_shape[-1])
    return Phase2(model, train_data, dev_data, "phase 2 (fine-tune on cached activations)",
                  top, tuple(boundary_layers))


def pixel_phase2(base: keras.Model, head: keras.Model, train_images: np.ndarray,
                 train_labels: np.ndarray, dev_images: np.ndarray, dev_labels: np.ndarray,
                 train_augmenter, eval_augmenter, config: TrainConfig, *,
                 boundary_layers: tuple[str, ...] = ()) -> Phase2:
    """Phase 2 on pixels: the unfrozen part of `base` (see `freeze_backbone`) and the head, on
    images augmented live, a fresh view of every image each epoch.

    Args:
        train_images, dev_images: uint8 images as the data stage stored them.
        train_augmenter: makes each epoch's views (`BatchAugmenter`); its epochs start after
            the `config.cached_views` that phase 1 trained on.
        eval_augmenter: the plain resize, for dev.
    """
    model = phase2_model(base, head, base.input_shape[1:], name="base_and_head")
    classes = model.output_shape[-1]
    train_data = AugmentedImages(train_images, train_labels, train_augmenter, config.batch_size,
                                 seed=config.seed, num_classes=classes,
                                 mixup_alpha=config.mixup_alpha, first_view=config.cached_views)
    dev_data = AugmentedImages(dev_images, dev_labels, eval_augmenter, config.batch_size * 4,
                               seed=config.seed, shuffle=False, num_classes=classes)
    return Phase2(model, train_data, dev_data, "phase 2 (fine-tune on pixels augmented live)",
                  base, tuple(boundary_layers))


def fit_phase2(phase2: Phase2, train_labels: np.ndarray, config: TrainConfig, backup_dir: Path,
               *, callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Fits phase 2 at `train.fine_tune_learning_rate` (a number: "auto" is resolved before),
    lower block groups at lower rates when `train.layer_lr_decay` < 1; `callbacks` run beside
    early stopping and the backup."""
    scales = None
    if config.layer_lr_decay < 1 and phase2.part is not None:
        scales = layer_rate_scales(phase2.part, phase2.boundary_layers, config.layer_lr_decay)
        factors = sorted(set(scales.values()), reverse=True)
        print(f"train.layer_lr_decay={config.layer_lr_decay}: the head at "
              f"{config.fine_tune_learning_rate:g}, the backbone's block groups from the top at "
              + ", ".join(f"{factor:.3g}x" for factor in factors) + " of it.")
    return _fit(phase2.model, phase2.train_data, phase2.dev_data, train_labels, config,
                learning_rate=config.fine_tune_learning_rate, epochs=config.fine_tune_epochs,
                backup_dir=backup_dir, phase=phase2.description, callbacks=callbacks,
                rate_scales=scales)


def fine_tune(top: keras.Model, head: keras.Model, train_activations: np.ndarray,
              train_labels: np.ndarray, dev_activations: np.ndarray, dev_labels: np.ndarray,
              config: TrainConfig, backup_dir: Path, *,
              callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Phase 2 on cached activations (`cached_phase2`), fitted."""
    return fit_phase2(cached_phase2(top, head, train_activations, train_labels,
                                    dev_activations, dev_labels, config),
                      train_labels, config, backup_dir, callbacks=callbacks)


def fine_tune_on_pixels(base: keras.Model, head: keras.Model, train_images: np.ndarray,
                        train_labels: np.ndarray, dev_images: np.ndarray,
                        dev_labels: np.ndarray, train_augmenter, eval_augmenter,
                        config: TrainConfig, backup_dir: Path, *,
                        callbacks: list[keras.callbacks.Callback] | None = None) -> dict:
    """Phase 2 on pixels augmented live (`pixel_phase2`), fitted."""
    return fit_phase2(pixel_phase2(base, head, train_images, train_labels, dev_images,
                                   dev_labels, train_augmenter, eval_augmenter, config),
                      train_labels, config, backup_dir, callbacks=callbacks)


def phase2_model(trainable_part: keras.Model, head: keras.Model, input_shape: tuple,
                 *, name: str) -> keras.Model:
    """`trainable_part` -> global average pooling -> `head`, the model phase 2 fits whichever
    way it is fed. The part runs with training=False, so its BatchNorm layers normalise with
    their moving statistics while the weights around them train (see the README's
    measurement)."""
    inputs = keras.Input(input_shape)
    features = trainable_part(inputs, training=False)  # BatchNorm stays in inference mode
    outputs = head(keras.layers.GlobalAveragePooling2D()(features))
    return keras.Model(inputs, outputs, name=name)


def _fit(model: keras.Model, train_data, dev_data, train_labels: np.ndarray,
         config: TrainConfig, *, learning_rate: float, epochs: int, backup_dir: Path,
         phase: str, steps_per_execution: int = 1,
         callbacks: list[keras.callbacks.Callback] | None = None,
         rate_scales: dict[str, float] | None = None) -> dict:
    """Compiles (after every change of `trainable`) and fits over `train_data` (a PyDataset
    with `set_epoch`) with early stopping, backup and the caller's `callbacks`."""
    # The early-stopping state is saved before the backup each epoch (see ResumableEarlyStopping)
    stopping = early_stopping(config, state_dir=backup_dir.with_name(backup_dir.name + "_state"))
    draw_epoch = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: train_data.set_epoch(epoch))
    callbacks = [draw_epoch, LearningRateLog(), stopping, AtomicBackupAndRestore(backup_dir),
                 *(callbacks or [])]
    print(f"Training {phase}: {model.count_params():,} parameters, "
          f"{sum(int(np.prod(w.shape)) for w in model.trainable_weights):,} trainable.")

    def compile_and_fit(model: keras.Model, fed_train, fed_dev, steps_per_execution) -> None:
        compile_model(model, learning_rate=learning_rate, steps_per_epoch=len(train_data),
                      config=config, steps_per_execution=steps_per_execution,
                      rate_scales=rate_scales)
        # The datasets shuffle the examples with their own seeded generators; Keras' own shuffle
        # of the batch order would draw from a process-wide generator a resumed run cannot replay
        model.fit(fed_train, validation_data=fed_dev, epochs=epochs, callbacks=callbacks,
                  class_weight=class_weights(train_labels, config), shuffle=False,
                  verbose=1 if sys.stdout.isatty() else 2)

    if distribute.strategy() is None:
        compile_and_fit(model, train_data, dev_data, steps_per_execution)
    else:  # issue 17: a copy built under the strategy, fed through tf.data (pipeline.distribute)
        distribute.fit_copy(model, lambda copy: compile_and_fit(
            copy, distribute.as_dataset(train_data), distribute.as_dataset(dev_data),
            distribute.STEPS_PER_EXECUTION))
    return stopping.history  # every epoch, those before an interruption included


def compile_model(model: keras.Model, *, learning_rate: float, steps_per_epoch: int,
                  config: TrainConfig, steps_per_execution: int = 1,
                  rate_scales: dict[str, float] | None = None) -> None:
    """Compiles as both phases and the search train: Adam with exponential decay from
    `learning_rate` (Adam's betas from the config; a factor per variable with `rate_scales`),
    categorical cross-entropy on one-hot labels (smoothed by `train.label_smoothing`),
    accuracy."""
    optimizer = adam_with_decay(learning_rate, steps_per_epoch, config.decay_rate, rate_scales)
    # read by Adam's update step, so setting them before the first step is enough
    optimizer.beta_1, optimizer.beta_2 = config.adam_beta_1, config.adam_beta_2
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)


def cached_datasets(train_views: np.ndarray, train_labels: np.ndarray, dev_views: np.ndarray,
                    dev_labels: np.ndarray, config: TrainConfig, *, num_classes: int
                    ) -> tuple[CachedViews, CachedViews]:
    """Train batches (shuffled, one view per example per epoch, mixup if configured) and dev
    batches (in order, never mixed), with one-hot labels."""
    train_data = CachedViews(train_views, train_labels, config.batch_size, seed=config.seed,
                             num_classes=num_classes, mixup_alpha=config.mixup_alpha)
    dev_data = CachedViews(dev_views, dev_labels, config.batch_size * 4, seed=config.seed,
                           shuffle=False, num_classes=num_classes)
    return train_data, dev_data


TENSORBOARD_DIR = "tensorboard"


def tensorboard_logs(run_dir: Path, phase: str) -> keras.callbacks.TensorBoard:
    """TensorBoard scalars (loss, accuracy, learning rate per epoch) of one phase, in
    `run_dir/tensorboard/<phase>/`: `tensorboard --logdir runs/<name>/tensorboard`. Event files
    are appended as training goes, so they are logs, not artifacts written whole."""
    return keras.callbacks.TensorBoard(str(run_dir / TENSORBOARD_DIR / phase), write_graph=False,
                                       profile_batch=0)


class LearningRateLog(keras.callbacks.Callback):
    """Adds the optimizer's learning rate at the end of each epoch to that epoch's logs, so the
    history (and the learning-curve plot) shows the decay. It must come before the callbacks
    that record the logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' `BackupAndRestore`, with each epoch's backup written whole or not at all.

    Keras writes the weights file and then `training_metadata.json` in place, so a kill during
    the write leaves an empty or torn file that makes the resumed run fail (a SIGKILL test
    caught it), or weights of one epoch beside the epoch number of another. Here both go into
    `backup_dir/checkpoint/`, a folder replaced atomically after every epoch.
    """

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir))
        self.checkpoint = Path(backup_dir) / "checkpoint"
        self._weights_path = str(self.checkpoint / "latest.weights.h5")
        self._training_metadata_path = str(self.checkpoint / "training_metadata.json")

    def _save_model(self):
        with atomic_path(self.checkpoint) as folder:
            folder.mkdir()
            self.model.save_weights(folder / "latest.weights.h5")
            (folder / "training_metadata.json").write_text(json.dumps(
                {"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            seal(folder)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping (best weights restored) whose state survives a killed run.

    Keras' `EarlyStopping` keeps the best value, its epoch and weights and the epochs waited in
    memory, so a run resumed by `BackupAndRestore` would forget a best epoch from before the
    kill. This one also keeps the history and the dropout generators' state, and after every
    epoch n saves its state to `state_dir/epoch_<n>.json` (best weights in `best_<epoch>.npz`,
    the generators in `random_<n>.npz`). It must come before
    `BackupAndRestore` in the callbacks, so that whenever the backup says "resume at epoch n",
    the state of epoch n - 1 is on disk; a resumed fit restores it at its first epoch.

    Attributes:
        history: {metric: per-epoch values} of every epoch, resumed ones included.
    """

    def __init__(self, state_dir: Path, **kwargs):
        super().__init__(**kwargs)
        self.state_dir = Path(state_dir)
        self.history: dict[str, list[float]] = {}
        self._first_epoch = True

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.history, self._first_epoch = {}, True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:
            self._first_epoch = False
            self._restore(epoch)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self._save(epoch)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _restore(self, epoch: int) -> None:
        state = self.state_dir / f"epoch_{epoch - 1}.json"
        if epoch == 0 or not state.is_file():
            return
        saved = json.loads(state.read_text())
        self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
        self.history = saved["history"]
        load_random_state(self.model, self.state_dir / f"random_{epoch - 1}.npz")
        weights = self.state_dir / f"best_{self.best_epoch}.npz"
        if self.restore_best_weights and weights.is_file():
            with np.load(weights) as stored:
                self.best_weights = [stored[f"arr_{index}"] for index in range(len(stored.files))]
        print(f"Resuming at epoch {epoch + 1}; the best epoch so far is {self.best_epoch + 1}.")

    def _save(self, epoch: int) -> None:
        best = self.state_dir / f"best_{self.best_epoch}.npz"
        if self.best_weights is not None and not best.is_file():
            write_with(best, lambda handle: np.savez(handle, *self.best_weights))
        save_random_state(self.model, self.state_dir / f"random_{epoch}.npz")
        write_json(self.state_dir / f"epoch_{epoch}.json", {
            "wait": self.wait, "best": None if self.best is None else float(self.best),
            "best_epoch": self.best_epoch, "history": self.history})
        # keep the states of this epoch and the one before (a kill may undo the last backup)
        states = [f"epoch_{number}.json" for number in (epoch, epoch - 1)]
        keep = {*states, f"random_{epoch}.npz", f"random_{epoch - 1}.npz"}
        keep |= {f"best_{json.loads((self.state_dir / name).read_text())['best_epoch']}.npz"
                 for name in states if (self.state_dir / name).is_file()}
        for path in self.state_dir.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)


def early_stopping(config: TrainConfig,
                   state_dir: Path | None = None) -> keras.callbacks.EarlyStopping:
    """Stops when the monitored dev metric stops improving and keeps the best epoch's weights;
    with a `state_dir`, a `ResumableEarlyStopping` keeping its state there."""
    # mode "auto" reads the direction off the metric: down for loss, up for accuracy
    options = {"monitor": config.early_stopping_monitor,
               "patience": config.early_stopping_patience, "restore_best_weights": True}
    if state_dir is None:
        return keras.callbacks.EarlyStopping(**options)
    return ResumableEarlyStopping(state_dir, **options)


def class_weights(labels: np.ndarray, config: TrainConfig) -> dict[int, float] | None:
    """'balanced' weights each class by N / (num_classes * count), as scikit-learn does."""
    if config.class_weight == "none":
        return None
    counts = np.bincount(labels)
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = len(labels) / (present.sum() * counts[present])
    return {index: float(weight) for index, weight in enumerate(weights)}


def load_history(run_dir: Path) -> dict:
    return json.loads((run_dir / "train_history.json").read_text())


__all__ = ["train_stage", "train", "train_head", "HEAD_STEPS_PER_EXECUTION", "fine_tune",
           "fine_tune_on_pixels", "phase2_model", "phase2_feeding", "resolve_fine_tune_from",
           "AUTO_DEPTH",
           "augmenters",
           "class_weights", "frozen_base", "cache_features",
           "cached_datasets", "compile_model", "early_stopping", "FeatureCache", "load_history"]
