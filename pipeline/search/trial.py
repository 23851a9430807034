"""One trial of the search: a config trained on cached features or activations, scored on dev.

Features are extracted once per augmentation chain (once in all unless `chain` is searched)
into files on disk and read back memory-mapped, as training reads its own (issue 17: a large
folder's caches need not fit in memory), so a head-only trial costs seconds. A full-recipe
trial also runs phase 2 on the activations cached where it starts (`train.fine_tune_from`,
searchable: once per depth), starting every trial from the same pretrained weights. Both phases are
`pipeline.train`'s own (`train_head`, `cached_phase2`, `fit_phase2`); a trial's score is the
dev accuracy of the weights training keeps (the best epoch by `train.early_stopping_monitor`).
The test split is never read.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.backbones import freeze_backbone, get_backbone_spec, model_image_size
from pipeline.config import PHASE_2_KEYS, ExperimentConfig
from pipeline.data.prepare import PreparedData
from pipeline.features import FeatureCache
from pipeline.lr_find import resolve_fine_tune_learning_rate, resolve_head_learning_rate
from pipeline.model import build_head
from pipeline.search.space import with_values
from pipeline.train import (
    cache_features,
    cached_phase2,
    fit_phase2,
    frozen_base,
    resolve_fine_tune_from,
    train_head,
)


def trains_both_phases(config: ExperimentConfig) -> bool:
    """Whether trials run phase 2 too: `search.phases`, or "auto" when a key that only phase 2
    reads is searched (and the config fine-tunes at all)."""
    if config.search.phases != "auto":
        return config.search.phases == "both"
    searched = set(config.search.keys) & set(PHASE_2_KEYS)
    return bool(searched) and config.train.fine_tune_epochs > 0


class TrialTrainer:
    """Trains one trial's config (the base config with the drawn values set) on cached inputs.

    Args:
        config: the base experiment.
        data: the prepared splits; train and dev are read.
        run_dir: the run folder (the colour PCA file of a chain goes there, as in `train`).
        scratch: a folder for each trial's training backup, removed after the trial.
        caches: a folder for the feature caches, one sub-folder per (chain, depth); whatever
            it holds is removed first (another search's caches), and `close()` removes it.
    """

    def __init__(self, config: ExperimentConfig, data: PreparedData, run_dir: Path,
                 scratch: Path, caches: Path):
        self.config, self.data, self.run_dir, self.scratch = config, data, run_dir, scratch
        self.caches_dir = caches
        shutil.rmtree(caches, ignore_errors=True)
        self.both_phases = trains_both_phases(config)
        self.image_size = model_image_size(config.model, data.image_size)
        self.spec = get_backbone_spec(config.model.backbone)
        self.labels = {split: data.labels(split) for split in ("train", "dev")}
        # per depth where phase 2 starts: (base, bottom, top, top's pretrained weights)
        self.bases: dict[str, tuple] = {}
        self.caches: dict[tuple[str, str], tuple[FeatureCache, FeatureCache]] = {}

    def depth(self, fine_tune_from: str) -> str:
        """A config's phase 2 start as a point of the backbone ("auto" resolved by the data)."""
        return resolve_fine_tune_from(fine_tune_from, self.spec, self.labels["train"])

    def split(self, depth: str) -> tuple:
        """The pretrained base cut at `depth`: (base, bottom, top, top's pretrained weights),
        built on first use."""
        if depth not in self.bases:
            base, bottom, top = frozen_base(self.config.model, self.image_size, depth)
            self.bases[depth] = (base, bottom, top, top.get_weights())
        return self.bases[depth]

    def features(self, chain: Any, depth: str) -> tuple[FeatureCache, FeatureCache]:
        """Train and dev caches for an augmentation chain, with the activations where phase 2
        starts (`depth`), extracted on first use."""
        name = (repr(chain), depth if self.both_phases else "")
        if name not in self.caches:
            augment = with_values(self.config, {"augment.chain": chain}).augment
            _, bottom, top, _ = self.split(depth)
            folder = self.caches_dir / str(len(self.caches))
            folder.mkdir(parents=True)
            train_cache, dev_cache, _ = cache_features(
                augment, self.config.model, self.config.train, self.data, self.run_dir,
                bottom, top, keep_activations=self.both_phases, folder=folder)
            self.caches[name] = (train_cache, dev_cache)
        return self.caches[name]

    def __call__(self, values: dict[str, Any]) -> float:
        """Trains the config with {config key: value} set; returns its dev accuracy."""
        config = with_values(self.config, values)
        depth = self.depth(config.train.fine_tune_from)
        train_cache, dev_cache = self.features(config.augment.chain, depth)
        num_classes = len(self.data.class_names)
        shutil.rmtree(self.scratch, ignore_errors=True)
        # train's own phases, their per-epoch printout kept out of the search's progress bar
        with contextlib.redirect_stdout(io.StringIO()):
            training = config.train
            if training.head_learning_rate == "auto":
                training = resolve_head_learning_rate(training, config.model, train_cache.pooled,
                                                      self.labels["train"], num_classes)
            keras.utils.set_random_seed(training.seed)  # trials differ only by their values
            head = build_head(num_classes, train_cache.pooled.shape[-1], config.model)
            history = train_head(head, train_cache.pooled, self.labels["train"],
                                 dev_cache.pooled, self.labels["dev"], training,
                                 self.scratch / "phase1")
            if self.both_phases:
                base, _, top, pretrained = self.split(depth)
                top.set_weights(pretrained)
                freeze_backbone(base, self.spec, unfreeze_top=True, fine_tune_from=depth)
                phase2 = cached_phase2(top, head, train_cache.activations,
                                       self.labels["train"], dev_cache.activations,
                                       self.labels["dev"], training,
                                       boundary_layers=tuple(self.spec.boundaries.values()))
                if training.fine_tune_learning_rate == "auto":
                    training = resolve_fine_tune_learning_rate(training, phase2.model,
                                                               phase2.train_data)
                history = fit_phase2(phase2, self.labels["train"], training,
                                     self.scratch / "phase2")
        shutil.rmtree(self.scratch, ignore_errors=True)
        return kept_accuracy(history, training.early_stopping_monitor)

    def close(self) -> None:
        """Drops the caches and removes their files."""
        self.caches.clear()
        shutil.rmtree(self.caches_dir, ignore_errors=True)


def kept_accuracy(history: dict[str, list[float]], monitor: str) -> float:
    """Dev accuracy of the epoch early stopping keeps: the first best of the monitored metric."""
    scores = np.array(history[monitor])
    best = int(np.argmin(scores) if monitor == "val_loss" else np.argmax(scores))
    return float(history["val_accuracy"][best])


__all__ = ["TrialTrainer", "trains_both_phases", "kept_accuracy"]
