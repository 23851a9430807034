"""Coarse-to-fine random search, judged on dev, resumable: the rounds and the search stage.

Random search tries more distinct values of each hyperparameter than a grid of the same size
(Bergstra & Bengio, 2012). Round 1 draws `search.trials` configs from the configured ranges;
each later round draws as many again, only around the best trials so far
(`pipeline.search.space.zoom`). keras-tuner's `RandomSearch` draws and keeps the trials, one
project per round under `runs/<name>/search/<fingerprint>/`, and each round's space is written
before it starts, so an interrupted search resumes where it stopped. The test split is never
read: trials are trained on train and scored on dev.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import keras_tuner
from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.config import ExperimentConfig
from pipeline.data.prepare import PreparedData
from pipeline.search import cluster
from pipeline.search import results as reporting
from pipeline.search import space as spaces
from pipeline.search.trial import TrialTrainer


class RoundTuner(keras_tuner.RandomSearch):
    """keras-tuner's RandomSearch over a fixed space whose trials are run by a `TrialTrainer`,
    with one progress bar over trials instead of keras-tuner's printout."""

    def __init__(self, trainer: TrialTrainer, space: list[spaces.Dimension], *,
                 progress: tqdm, **kwargs):
        super().__init__(hypermodel=None, hyperparameters=spaces.hyperparameters(space),
                         tune_new_entries=False,
                         objective=keras_tuner.Objective("val_accuracy", "max"), **kwargs)
        self.trainer, self.space, self.progress = trainer, space, progress

    def run_trial(self, trial, *args, **kwargs) -> dict:
        values = spaces.config_values(self.space, trial.hyperparameters.values)
        return {"val_accuracy": self.trainer(values)}

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.progress.update(1)
        if cluster.role() == "worker":  # issue 17: which worker ran which of the chief's trials
            self.progress.write(f"Trial {trial.trial_id} ran on this worker "
                                f"({cluster.tuner_id()}).")


def search_stage(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> dict:
    """`make search`: the coarse-to-fine search on the run's prepared data; prints the table.

    Args:
        config: the experiment (the search reads `search`, `augment`, `model` and `train`).
        run_dir: the run folder, whose data stage has run.
        fingerprint: the search's fingerprint (`pipeline.run.stage_fingerprints`).

    Returns:
        What `search` returns.
    """
    from pipeline.data.prepare import load_prepared

    result = search(config, load_prepared(run_dir / "data"), run_dir, fingerprint)
    folder = run_dir / "search"
    if cluster.role() == "worker":  # issue 17: pipeline.search.cluster
        print("This worker's trials are done; the chief keeps them and writes the results.")
        return result
    print(reporting.format_table(result))
    print(f"Trials: {folder / 'trials.txt'} (and results.json), plot: {folder / 'search.png'}\n"
          f"Train the best: make train CONFIG={folder / 'best.yaml'}")
    return result


def search(config: ExperimentConfig, data: PreparedData, run_dir: Path,
           fingerprint: str) -> dict:
    """Runs `search.rounds` rounds of `search.trials` trials and writes the results.

    Args:
        config: the experiment; `search` gives the keys, ranges, rounds and zoom.
        data: the prepared splits (train and dev are read, never test).
        run_dir: the run folder; results go to `run_dir/search/`.
        fingerprint: names the trials' folder, so another config never resumes these trials.

    Returns:
        {"kind": "head" or "both phases", "keys": {name: config key},
         "rounds": [each round's space], "trials": [{"round", "trial", "dev_accuracy",
         config key: value, ...}, best first], "best": {config key: value}}
    """
    space, rounds, trials = spaces.dimensions(config.search), [], []
    total = config.search.rounds * config.search.trials
    # issue 17: on a worker of a distributed search, a temporary folder (pipeline.search.cluster)
    with cluster.tuner_folder(run_dir / "search" / fingerprint[:16]) as folder, \
            tqdm(total=total, desc="Search (trials)", unit="trial") as bar, \
            contextlib.closing(TrialTrainer(config, data, run_dir, scratch=folder / "scratch",
                                            caches=folder / "caches")) as trainer:
        for number in range(1, config.search.rounds + 1):
            if number > 1 and trials:  # a worker never holds the trials: the chief zooms
                best = trials[:config.search.keep_best]
                space = spaces.zoom(space, best, config.search.zoom)
            space = _round_space(folder / f"round_{number}.json", space)
            rounds.append(spaces.to_json(space))
            with cluster.round_port(number):
                trials = _run_round(config, trainer, space, folder, number, bar) + trials
            trials.sort(key=lambda trial: -trial["dev_accuracy"])
    result = {"kind": "both phases" if trainer.both_phases else "head",
              "keys": {dimension.name: dimension.key for dimension in space},
              "rounds": rounds, "trials": trials,
              "best": {key: trials[0][key] for key in (d.key for d in space)} if trials else {}}
    if cluster.role() != "worker":  # the chief alone writes the results
        reporting.write_all(config, result, run_dir / "search")
    return result


def _round_space(path: Path, space: list[spaces.Dimension]) -> list[spaces.Dimension]:
    """The round's space as first written (a resumed round draws from what it drew from)."""
    if path.is_file():
        return spaces.from_json(json.loads(path.read_text()))
    write_json(path, spaces.to_json(space))
    return space


def _run_round(config: ExperimentConfig, trainer: TrialTrainer, space: list[spaces.Dimension],
               folder: Path, number: int, bar: tqdm) -> list[dict]:
    """One round's trials (those finished before an interruption are kept, not rerun)."""
    tuner = RoundTuner(trainer, space, progress=bar, max_trials=config.search.trials,
                       seed=config.train.seed + number, directory=folder,
                       project_name=f"round_{number}", overwrite=False)
    if cluster.role() == "worker":  # issue 17: runs the chief's trials; the chief keeps them
        tuner.search(verbose=0)
        return []
    finished = [trial for trial in tuner.oracle.trials.values() if trial.score is not None]
    bar.update(len(finished))  # trials finished before an interruption
    tuner.search(verbose=0)
    return [{"round": number, "trial": trial.trial_id, "dev_accuracy": float(trial.score),
             **spaces.config_values(space, trial.hyperparameters.values)}
            for trial in tuner.oracle.trials.values() if trial.score is not None]


__all__ = ["search", "search_stage", "RoundTuner"]
