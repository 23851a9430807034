"""The stages of one run, each skipped when its inputs are unchanged since it last succeeded.

    data -> preview -> train -> evaluate -> export

A stage's fingerprint is its slice of the resolved config plus the fingerprint of the stage it
reads from, so changing `train.head_epochs` reruns train, evaluate and export but not data.
`run_search` is apart from the stages: it reads the data stage and writes `search/`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from pipeline.config import ExperimentConfig, save_config, to_dict
from pipeline.stages import fingerprint, read_lock, run_stage, write_json

STAGES = ("data", "preview", "train", "evaluate", "export")


def stage_fingerprints(config: ExperimentConfig) -> dict[str, str]:
    """Each stage's fingerprint, chained through the stages it depends on."""
    sections = to_dict(config)
    data = fingerprint({"data": sections["data"], "source": source_stamp(config)})
    model_slice = {key: sections[key] for key in ("augment", "model", "train")}
    train = fingerprint({"train": model_slice, "after": data})
    evaluate = fingerprint({"evaluate": sections["evaluate"], "after": train})
    return {
        "data": data,
        "preview": fingerprint({"augment": sections["augment"], "model": sections["model"],
                                "seed": sections["train"]["seed"], "after": data}),
        "train": train,
        "evaluate": evaluate,
        "export": fingerprint({"export": sections["export"], "name": config.name,
                               "after": evaluate}),
    }


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


def run_stages(config: ExperimentConfig, stages: tuple[str, ...] = STAGES, *,
               force: bool = False) -> None:
    """Runs the given stages in order (each skipped when fresh) and prints where things are."""
    run_dir = config.run_dir
    save_config(config, run_dir / "config.yaml")
    fingerprints = stage_fingerprints(config)
    actions = {"data": _data, "preview": _preview, "train": _train, "evaluate": _evaluate,
               "export": _export}
    for stage in stages:
        print(f"\n== {stage} ==")
        _require_upstream(run_dir, stage, fingerprints)
        run_stage(run_dir, stage, fingerprints[stage], lambda s=stage: actions[s](config, run_dir),
                  force=force)
    print(f"\nRun folder: {run_dir}")
    if "export" in stages:
        print(f"Exported model: {Path(config.export.models_dir) / config.name}")


def run_search(config: ExperimentConfig) -> dict:
    """The data stage (skipped when fresh), then the random search of the head's
    hyperparameters on dev (`pipeline.search`); prints the best trials and their overrides."""
    from pipeline.data.prepare import load_prepared
    from pipeline.search import format_results, search_head

    run_stages(config, ("data",))
    print("\n== search ==")
    # what the trials depend on; not `search.trials`, so raising it resumes the same search
    sections = to_dict(config)
    ranges = {key: value for key, value in sections["search"].items() if key != "trials"}
    searched = fingerprint({key: sections[key] for key in ("augment", "model", "train")}
                           | {"ranges": ranges, "after": stage_fingerprints(config)["data"]})
    result = search_head(config, load_prepared(config.run_dir / "data"), config.run_dir,
                         searched)
    print(format_results(result))
    print(f"All trials: {config.run_dir / 'search' / 'results.json'}, plot: "
          f"{config.run_dir / 'search' / 'search.png'}")
    return result


def _require_upstream(run_dir: Path, stage: str, fingerprints: dict[str, str]) -> None:
    """A stage reads what the one before it wrote; refuse stale or missing inputs."""
    upstream = {"preview": "data", "train": "data", "evaluate": "train", "export": "evaluate"}
    needed = upstream.get(stage)
    if needed and read_lock(run_dir).get(needed, {}).get("fingerprint") != fingerprints[needed]:
        raise StageOrderError(f"Stage '{stage}' needs the '{needed}' stage of this config to run "
                              f"first (its output in {run_dir} is missing or from another "
                              f"config). Run: make train, or python -m pipeline {needed} ...")


class StageOrderError(RuntimeError):
    """A stage was asked to run before the stage whose output it reads."""


def _data(config: ExperimentConfig, run_dir: Path) -> list[str]:
    from pipeline.backbones import get_backbone_spec
    from pipeline.data.prepare import prepare_data

    spec = get_backbone_spec(config.model.backbone)
    prepare_data(config.data, run_dir / "data",
                 auto_size_range=(spec.min_image_size, spec.default_image_size))
    return ["data/dataset.json"]


def _preview(config: ExperimentConfig, run_dir: Path) -> list[str]:
    from pipeline.augment import build_train_transform, write_preview
    from pipeline.data.prepare import load_prepared
    from pipeline.train import color_pca_for, model_image_size

    data = load_prepared(run_dir / "data")
    images, labels = data.images("train"), data.labels("train")
    transform = build_train_transform(config.augment.chain, model_image_size(config.model, data),
                                      color_pca=color_pca_for(config, data))
    count = min(config.augment.preview_images, len(labels))
    chosen = np.random.default_rng(config.train.seed).choice(len(labels), count, replace=False)
    path = write_preview(np.asarray(images[np.sort(chosen)]), labels[np.sort(chosen)],
                         data.class_names, transform, run_dir / "augment_preview.png",
                         views=config.augment.preview_views, rows=count, seed=config.train.seed)
    print(f"Augmentation preview: {path}")
    return ["augment_preview.png"]


def _train(config: ExperimentConfig, run_dir: Path) -> list[str]:
    from pipeline.data.prepare import load_prepared
    from pipeline.train import train

    result = train(config, load_prepared(run_dir / "data"), run_dir)
    timings = ", ".join(f"{key} {value:.0f}s" for key, value in result["timings"].items())
    print(f"Training done: {timings}")
    return ["model.keras", "train_history.json"]


def _evaluate(config: ExperimentConfig, run_dir: Path) -> list[str]:
    import keras

    from pipeline.data.prepare import load_prepared
    from pipeline.evaluate import (
        classification_metrics,
        diagnose_bias_variance,
        format_metrics_table,
        format_per_class_table,
        train_error_sample,
    )
    from pipeline.predict import predict_array
    from pipeline.train import load_history

    data = load_prepared(run_dir / "data")
    model = keras.models.load_model(run_dir / "model.keras")
    metrics = {}
    for split in ("train", "dev", "test"):
        images, labels = data.images(split), data.labels(split)
        if split == "train":
            # Train error on a stable stratified sample: enough for a bias/variance diagnosis.
            keep = train_error_sample(labels, config.evaluate.train_error_examples)
            images, labels = images[keep], labels[keep]
        started = time.perf_counter()
        probabilities = predict_array(model, images, description=f"Evaluating ({split})")
        metrics[split] = classification_metrics(labels, probabilities, data.class_names)
        metrics[split]["seconds"] = time.perf_counter() - started
        if split == "test":
            np.save(run_dir / "test_probabilities.npy", probabilities)
    diagnosis = diagnose_bias_variance(train_error=metrics["train"]["error"],
                                       dev_error=metrics["dev"]["error"],
                                       test_error=metrics["test"]["error"],
                                       baseline_error=config.evaluate.baseline_error)
    history = load_history(run_dir)
    result = {**metrics, "diagnosis": diagnosis, "class_names": list(data.class_names),
              "timings": history["timings"], "image_size": history["image_size"]}
    write_json(run_dir / "metrics.json", result)
    print(format_per_class_table(metrics["test"]))
    print(format_metrics_table({split: metrics[split] for split in ("train", "dev", "test")},
                               diagnosis=diagnosis))
    _write_report(config, run_dir, result, history)
    return ["metrics.json", "report.md"]


def _write_report(config, run_dir: Path, metrics: dict, history: dict) -> None:
    from pipeline.report import (
        plot_confusion_matrix,
        plot_error_bars,
        plot_history,
        write_run_report,
    )

    plots = {
        "training curves": plot_history(history["history"], run_dir / "training_curves.png",
                                        phase_boundaries=history["phase_boundaries"]),
        "confusion matrix (test)": plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], metrics["class_names"],
            run_dir / "confusion_matrix.png"),
        "bias / variance": plot_error_bars(
            {split: metrics[split]["error"] for split in ("train", "dev", "test")},
            run_dir / "errors.png", baseline_error=config.evaluate.baseline_error),
    }
    if (run_dir / "augment_preview.png").exists():
        plots["augmentation preview"] = run_dir / "augment_preview.png"
    path = write_run_report(run_dir, metrics=metrics, diagnosis=metrics["diagnosis"],
                            timings=history["timings"], plots=plots,
                            config_summary=to_dict(config))
    print(f"Report: {path}")


def _export(config: ExperimentConfig, run_dir: Path) -> list[str]:
    from pipeline.data.prepare import load_prepared
    from pipeline.export import EXPORTED_FILES, PARITY_IMAGES, export_model

    data = load_prepared(run_dir / "data")
    test_images = np.asarray(data.images("test")[:PARITY_IMAGES])
    stored_size = json.loads((run_dir / "data" / "dataset.json").read_text())["image_size"]
    export_dir = Path(config.export.models_dir) / config.name
    export_model(run_dir, export_dir, check_images=test_images, stored_size=stored_size,
                 formats=config.export.formats)
    written = [EXPORTED_FILES[name] for name in config.export.formats]
    print(f"Exported to {export_dir} ({', '.join(written)}, labels.txt, preprocessing.json, "
          f"metrics.json), each model checked against the trained one")
    return [str((export_dir / "model.keras").resolve())]
