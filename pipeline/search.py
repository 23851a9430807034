"""Random search of the head's hyperparameters, on log scales, on cached features.

Which learning rate, L2 penalty and dropout suit a dataset is found by trying, and random
search tries more distinct values of each than a grid of the same size (Bergstra & Bengio,
2012). Learning rate and L2 act multiplicatively, so they are drawn uniformly on a log scale.
Phase 1 trains only the head on cached features, so a trial costs seconds: the features are
extracted once, as `train` does, and keras-tuner's `RandomSearch` trains one head per draw and
compares them on dev accuracy. The test split is never read. Trials are kept in
`runs/<name>/search/<fingerprint>/`, so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import keras_tuner
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.backbones import model_image_size
from pipeline.config import ExperimentConfig
from pipeline.data.prepare import PreparedData
from pipeline.model import build_head
from pipeline.train import (
    HEAD_STEPS_PER_EXECUTION,
    cache_features,
    cached_datasets,
    class_weights,
    compile_model,
    early_stopping,
    frozen_base,
)

# hyperparameter -> the config key it sets
CONFIG_KEYS = {"head_learning_rate": "train.head_learning_rate", "l2": "model.l2",
               "dropout": "model.dropout"}


class HeadHyperModel(keras_tuner.HyperModel):
    """Builds phase 1's head for one draw of learning rate, L2 and dropout."""

    def __init__(self, config: ExperimentConfig, num_classes: int, feature_dim: int,
                 steps_per_epoch: int):
        super().__init__(name="head")
        self.config, self.num_classes = config, num_classes
        self.feature_dim, self.steps_per_epoch = feature_dim, steps_per_epoch

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        search = self.config.search
        learning_rate = hp.Float("head_learning_rate", *search.head_learning_rate,
                                 sampling="log")
        model_config = dataclasses.replace(
            self.config.model, l2=hp.Float("l2", *search.l2, sampling="log"),
            dropout=hp.Float("dropout", *search.dropout))
        head = build_head(self.num_classes, self.feature_dim, model_config)
        compile_model(head, learning_rate=learning_rate, steps_per_epoch=self.steps_per_epoch,
                      config=self.config.train, steps_per_execution=HEAD_STEPS_PER_EXECUTION)
        return head


class _ProgressRandomSearch(keras_tuner.RandomSearch):
    """keras-tuner's RandomSearch with one progress bar over trials instead of its printout."""

    def __init__(self, *args, progress: tqdm, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.progress.update(1)


def search_stage(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> dict:
    """`make search`: the random search on the run's prepared data, its best trials printed.

    Args:
        config: the experiment (the search reads `search`, `augment`, `model` and `train`).
        run_dir: the run folder, whose data stage has run.
        fingerprint: the search's fingerprint (`pipeline.run.stage_fingerprints`).

    Returns:
        What `search_head` returns.
    """
    from pipeline.data.prepare import load_prepared

    result = search_head(config, load_prepared(run_dir / "data"), run_dir, fingerprint)
    print(format_results(result))
    print(f"All trials: {run_dir / 'search' / 'results.json'}, plot: "
          f"{run_dir / 'search' / 'search.png'}")
    return result


def search_head(config: ExperimentConfig, data: PreparedData, run_dir: Path,
                fingerprint: str) -> dict:
    """Runs `config.search.trials` random draws and writes the ranked trials and a plot.

    Args:
        config: the experiment; `search` gives the ranges, `train` the epochs and batch size.
        data: the prepared splits (train and dev are used).
        run_dir: the run folder; results go to `run_dir/search/`.
        fingerprint: names the trial folder, so another config never resumes these trials.

    Returns:
        {"trials": [{"dev_accuracy", "head_learning_rate", "l2", "dropout"}, best first],
         "best_overrides": ["train.head_learning_rate=...", ...]}
    """
    keras.utils.set_random_seed(config.train.seed)
    _, bottom, top = frozen_base(config.model, model_image_size(config.model, data.image_size))
    train_cache, dev_cache, _ = cache_features(config.augment, config.model, config.train,
                                               data, run_dir, bottom, top,
                                               keep_activations=False)
    num_classes = len(data.class_names)
    train_data, dev_data = cached_datasets(train_cache.pooled, data.labels("train"),
                                           dev_cache.pooled, data.labels("dev"), config.train,
                                           num_classes=num_classes)

    hypermodel = HeadHyperModel(config, num_classes, train_cache.pooled.shape[-1],
                                len(train_data))
    with tqdm(total=config.search.trials, desc="Random search (trials)", unit="trial") as bar:
        tuner = _ProgressRandomSearch(
            hypermodel, objective="val_accuracy", max_trials=config.search.trials,
            seed=config.train.seed, directory=run_dir / "search", project_name=fingerprint[:16],
            overwrite=False, progress=bar)
        bar.update(len(tuner.oracle.trials) - bar.n)  # trials finished before an interruption
        tuner.search(train_data, validation_data=dev_data, epochs=config.train.head_epochs,
                     callbacks=[early_stopping(config.train)], verbose=0,
                     class_weight=class_weights(data.labels("train"), config.train))
    return _write_results(tuner, run_dir / "search")


def _write_results(tuner: keras_tuner.Tuner, folder: Path) -> dict:
    """Ranks the finished trials by dev accuracy, writes results.json and search.png."""
    trials = [{"dev_accuracy": float(trial.score), **trial.hyperparameters.values}
              for trial in tuner.oracle.get_best_trials(num_trials=len(tuner.oracle.trials))
              if trial.score is not None]
    best = trials[0]
    result = {"trials": trials,
              "best_overrides": [f"{key}={best[name]:.3g}" for name, key in CONFIG_KEYS.items()]}
    write_json(folder / "results.json", result)
    _plot(trials, folder / "search.png")
    return result


def _plot(trials: list[dict], path: Path) -> None:
    """Dev accuracy against each hyperparameter, log axes where the draws were on log scales."""
    figure = Figure(figsize=(11, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    accuracy = np.array([trial["dev_accuracy"] for trial in trials])
    for index, name in enumerate(CONFIG_KEYS):
        axes = figure.add_subplot(1, len(CONFIG_KEYS), index + 1)
        values = [trial[name] for trial in trials]
        axes.scatter(values, accuracy, s=18, color="tab:blue")
        axes.scatter(values[:1], accuracy[:1], s=60, color="tab:red", label="best")
        axes.set(xlabel=CONFIG_KEYS[name], xscale="linear" if name == "dropout" else "log",
                 ylabel="dev accuracy" if index == 0 else None)
    figure.suptitle(f"Random search: {len(trials)} trials, best in red")
    figure.savefig(path, dpi=110)


def format_results(result: dict, top: int = 5) -> str:
    """The best trials as a small table, and the overrides that reproduce the best one."""
    lines = [f"{'dev accuracy':>12s}  {'learning rate':>13s}  {'l2':>9s}  {'dropout':>7s}"]
    for trial in result["trials"][:top]:
        lines.append(f"{trial['dev_accuracy']:12.4f}  {trial['head_learning_rate']:13.3g}  "
                     f"{trial['l2']:9.3g}  {trial['dropout']:7.3f}")
    lines.append("best: " + " ".join(result["best_overrides"]))
    return "\n".join(lines)


__all__ = ["search_head", "format_results", "HeadHyperModel", "CONFIG_KEYS"]
