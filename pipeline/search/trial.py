"""One trial of the search: a config trained on cached features or activations, scored on dev.

Features are extracted once per augmentation chain (once in all unless `chain` is searched)
and kept in memory, so a head-only trial costs seconds. A full-recipe trial also runs phase 2
on the cached activations of the top blocks' input, starting every trial from the same
pretrained top blocks. Both phases are `pipeline.train`'s own `train_head` and `fine_tune`;
a trial's score is the dev accuracy of the weights training keeps (the best epoch by
`train.early_stopping_monitor`). The test split is never read.
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
from pipeline.train import cache_features, cached_phase2, fit_phase2, frozen_base, train_head


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
    """

    def __init__(self, config: ExperimentConfig, data: PreparedData, run_dir: Path,
                 scratch: Path):
        self.config, self.data, self.run_dir, self.scratch = config, data, run_dir, scratch
        self.both_phases = trains_both_phases(config)
        image_size = model_image_size(config.model, data.image_size)
        self.base, self.bottom, self.top = frozen_base(config.model, image_size)
        self.pretrained_top = self.top.get_weights()
        self.caches: dict[str, tuple[FeatureCache, FeatureCache]] = {}
        self.labels = {split: data.labels(split) for split in ("train", "dev")}

    def features(self, chain: Any) -> tuple[FeatureCache, FeatureCache]:
        """Train and dev caches for an augmentation chain, extracted on first use."""
        name = repr(chain)
        if name not in self.caches:
            augment = with_values(self.config, {"augment.chain": chain}).augment
            train_cache, dev_cache, _ = cache_features(
                augment, self.config.model, self.config.train, self.data, self.run_dir,
                self.bottom, self.top, keep_activations=self.both_phases)
            self.caches[name] = (train_cache, dev_cache)
        return self.caches[name]

    def __call__(self, values: dict[str, Any]) -> float:
        """Trains the config with {config key: value} set; returns its dev accuracy."""
        config = with_values(self.config, values)
        train_cache, dev_cache = self.features(config.augment.chain)
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
                self.top.set_weights(self.pretrained_top)
                freeze_backbone(self.base, get_backbone_spec(config.model.backbone),
                                unfreeze_top=True)
                phase2 = cached_phase2(self.top, head, train_cache.activations,
                                       self.labels["train"], dev_cache.activations,
                                       self.labels["dev"], training)
                if training.fine_tune_learning_rate == "auto":
                    training = resolve_fine_tune_learning_rate(training, phase2.model,
                                                               phase2.train_data)
                history = fit_phase2(phase2, self.labels["train"], training,
                                     self.scratch / "phase2")
        shutil.rmtree(self.scratch, ignore_errors=True)
        return kept_accuracy(history, training.early_stopping_monitor)


def kept_accuracy(history: dict[str, list[float]], monitor: str) -> float:
    """Dev accuracy of the epoch early stopping keeps: the first best of the monitored metric."""
    scores = np.array(history[monitor])
    best = int(np.argmin(scores) if monitor == "val_loss" else np.argmax(scores))
    return float(history["val_accuracy"][best])


__all__ = ["TrialTrainer", "trains_both_phases", "kept_accuracy"]
