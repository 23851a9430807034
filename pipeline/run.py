"""The stages of one run, each skipped when its inputs are unchanged since it last succeeded.

    data -> preview -> train -> evaluate -> export        (and search, beside them)

`STAGES` is the one map of what each stage runs, which slice of the resolved config it reads
and which stage's output it reads (`after`). From it alone come each stage's fingerprint (its
slice plus the fingerprint of the stage it reads, so changing `train.head_epochs` reruns train,
evaluate and export but not data), the check that a stage's input is there and current, and
the fingerprint of the search. Each stage's body lives in the module named after it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import remove_partial_writes
from pipeline.config import ExperimentConfig, save_config, to_dict
from pipeline.errors import StageOrderError
from pipeline.stages import (
    code_digest,
    file_digest,
    fingerprint,
    run_folder_lock,
    run_stage,
    stale_reason,
)


@dataclass(frozen=True)
class Stage:
    """One stage of a run.

    Attributes:
        run: runs the stage for a config in a run folder, given the stage's fingerprint;
            returns its outputs (paths relative to the run folder, or absolute).
        reads: the slice of the config the stage depends on (plain, JSON-ready data).
        after: the stage whose output it reads, or None.
    """

    run: Callable[[ExperimentConfig, Path, str], list[str]] | None
    reads: Callable[[ExperimentConfig], dict]
    after: str | None


def _data(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> list[str]:
    from pipeline.backbones import auto_size_range
    from pipeline.data.prepare import prepare_data

    prepare_data(config.data, run_dir / "data", auto_size_range=auto_size_range(
        config.model.backbone))
    return ["data"]


def _preview(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> list[str]:
    from pipeline.augment import preview_stage
    from pipeline.backbones import model_image_size
    from pipeline.data.prepare import load_prepared

    data = load_prepared(run_dir / "data")
    path = preview_stage(config.augment, data, model_image_size(config.model, data.image_size),
                         seed=config.train.seed, path=run_dir / "augment_preview.png")
    print(f"Augmentation preview: {path}")
    return ["augment_preview.png"]


def _train(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> list[str]:
    from pipeline.train import train_stage

    # A backup resumes only the config that wrote it: its folder is named by the fingerprint.
    backup = run_dir / "backup" / fingerprint
    return train_stage(config.augment, config.model, config.train, run_dir, backup_dir=backup)


def _evaluate(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> list[str]:
    from pipeline.evaluate import evaluate_stage

    return evaluate_stage(config.evaluate, run_dir, config_summary=to_dict(config))


def _export(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> list[str]:
    from pipeline.export import export_stage

    return export_stage(config.export, config.name, run_dir)


def _data_reads(config: ExperimentConfig) -> dict:
    # The code, once here, reaches every stage through the chain of fingerprints.
    reads = {"data": to_dict(config.data), "source": source_stamp(config), "code": code_digest()}
    if config.data.image_size == "auto":  # the backbone bounds the size the stage picks
        from pipeline.backbones import auto_size_range

        reads["auto_size_range"] = auto_size_range(config.model.backbone)
    return reads


def _sections(*names: str) -> Callable[[ExperimentConfig], dict]:
    return lambda config: {name: to_dict(getattr(config, name)) for name in names}


def _training_reads(config: ExperimentConfig) -> dict:
    """Training's sections, and the content of a local weights file or exported model that
    training starts from: a file replaced under the same path must retrain."""
    from pipeline.backbones import weights_file

    reads = _sections("augment", "model", "train")(config)
    weights = weights_file(config.model.weights)
    if weights is not None:
        reads["weights_file"] = file_digest(weights)
    return reads


STAGES: dict[str, Stage] = {
    "data": Stage(_data, _data_reads, after=None),
    "preview": Stage(_preview, lambda config: {**_sections("augment", "model")(config),
                                               "seed": config.train.seed}, after="data"),
    "train": Stage(_train, _training_reads, after="data"),
    "evaluate": Stage(_evaluate, _sections("evaluate"), after="train"),
    "export": Stage(_export, lambda config: {**_sections("export")(config),
                                             "name": config.name}, after="evaluate"),
}
# Not `search.trials` or `search.rounds`: raising them resumes the same search.
SEARCH = Stage(None, lambda config: {**_training_reads(config),
                                     "ranges": {key: value for key, value in
                                                to_dict(config.search).items()
                                                if key not in ("trials", "rounds")}}, after="data")


def stage_fingerprints(config: ExperimentConfig) -> dict[str, str]:
    """Each stage's fingerprint (and the search's), chained through the stages it reads."""
    fingerprints: dict[str, str] = {}
    for name, stage in [*STAGES.items(), ("search", SEARCH)]:
        after = {"after": fingerprints[stage.after]} if stage.after else {}
        fingerprints[name] = fingerprint({**stage.reads(config), **after})
    return fingerprints


def source_stamp(config: ExperimentConfig) -> list:
    """Names, sizes and modification times of the source files: cheap change detection."""
    if config.data.source == "tfds":
        return [config.data.tfds_name]
    root = Path(config.data.path).expanduser()
    if not root.exists():
        return [str(root)]
    stamp = []
    for folder, _, files in os.walk(root, followlinks=False):
        for name in sorted(files):
            path = Path(folder) / name
            stat = path.lstat()
            stamp.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return sorted(stamp)


def run_stages(config: ExperimentConfig, stages: tuple[str, ...] = tuple(STAGES), *,
               force: bool = False) -> None:
    """Runs the given stages in order (each skipped when fresh) and prints where things are."""
    run_dir = config.run_dir
    if "train" in stages:  # issue 17: a strategy must exist before any other TensorFlow work
        from pipeline import distribute

        distribute.start(config.train.distribute)
    with run_folder_lock(run_dir):
        _remove_partial_writes(config)
        save_config(config, run_dir / "config.yaml")
        fingerprints = stage_fingerprints(config)
        if force and "train" in stages and (run_dir / "backup").exists():
            shutil.rmtree(run_dir / "backup")  # --force trains from scratch, never resumes
            print("--force: removed the training backup, so training starts from scratch.")
        for name in stages:
            print(f"\n== {name} ==")
            _require_upstream(run_dir, name, STAGES[name].after, fingerprints)
            if name == "train" and not _is_chief():  # issue 17: see _train_as_worker
                _train_as_worker(config, run_dir, fingerprints[name])
                return
            run_stage(run_dir, name, fingerprints[name],
                      lambda name=name: STAGES[name].run(config, run_dir, fingerprints[name]),
                      force=force)
    print(f"\nRun folder: {run_dir}")
    if "export" in stages:
        print(f"Exported model: {Path(config.export.models_dir) / config.name}")


def _is_chief() -> bool:
    from pipeline import distribute

    return distribute.is_chief()


def _train_as_worker(config: ExperimentConfig, run_dir: Path, fingerprint: str) -> None:
    """A multi-worker job's worker other than the chief (issue 17, `pipeline.distribute`):
    trains in step with the others every time it is run (never skipped as fresh: the chief
    waits for it), writes no artifact, and leaves evaluation and export to the chief."""
    STAGES["train"].run(config, run_dir, fingerprint)
    print("This worker's share of training is done; the chief (worker 0) writes the model, "
          "evaluates and exports it.")


def _remove_partial_writes(config: ExperimentConfig) -> None:
    """Clears what a killed run of this folder left half-written (never used, hidden)."""
    removed = remove_partial_writes(config.run_dir)
    removed += remove_partial_writes(Path(config.export.models_dir), name=config.name)
    if removed:
        print(f"Removed {len(removed)} half-written file(s) left by an interrupted run "
              f"(e.g. {removed[0]}).")


def run_search(config: ExperimentConfig) -> dict:
    """The data stage (skipped when fresh), then the random search of the head's
    hyperparameters on dev (`pipeline.search`); prints the best trials and their overrides."""
    from pipeline.search import search_stage

    with run_folder_lock(config.run_dir):
        run_stages(config, ("data",))
        print("\n== search ==")
        fingerprints = stage_fingerprints(config)
        _require_upstream(config.run_dir, "search", SEARCH.after, fingerprints)
        return search_stage(config, config.run_dir, fingerprints["search"])


def run_lr_find(config: ExperimentConfig) -> dict:
    """The data stage (skipped when fresh), then the learning-rate finder (`pipeline.lr_find`)."""
    from pipeline.lr_find import lr_find_stage

    with run_folder_lock(config.run_dir):
        run_stages(config, ("data",))
        print("\n== lr-find ==")
        _require_upstream(config.run_dir, "lr-find", "data", stage_fingerprints(config))
        return lr_find_stage(config, config.run_dir)


def _require_upstream(run_dir: Path, stage: str, needed: str | None,
                      fingerprints: dict[str, str]) -> None:
    """A stage reads what the one before it wrote; refuse stale, missing or damaged inputs."""
    reason = needed and stale_reason(run_dir, needed, fingerprints[needed])
    if reason:
        raise StageOrderError(f"Stage '{stage}' needs the '{needed}' stage of this config to run "
                              f"first ({reason}; run folder {run_dir}). Run: make train, or "
                              f"python -m pipeline {needed} ...")
