"""Does augmentation help when data is scarce? Test accuracy with and without it.

Both runs go through the product: the data stage on a class-folder dataset (the same splits for
both), then `pipeline.train.train` (phase 1 head on cached features of K views, phase 2
fine-tuning of the top blocks) on a stratified `fraction` of the train split, dev and test
unchanged; then the saved model on the test split. They differ only in the augmentation chain
and the number of cached views: preset `none` with K=1 (more views of an unaugmented image are
the same view), preset `standard` with K=`views` (that is how augmentation reaches the cached
head). Same config, seed and epochs otherwise.

Run from the repository root: `python -m bench.bench_augment_effect [fraction]`: the product's
own settings, then `SMALL_DATA_SCHEDULE` (about 3 minutes on 2 CPU cores with flowers128).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bench.datasets import FLOWERS  # noqa: E402
from pipeline.config import ExperimentConfig, load_config  # noqa: E402
from pipeline.data.prepare import PreparedData, load_prepared, prepare_data  # noqa: E402
from pipeline.data.splits import stratified_sample  # noqa: E402
from pipeline.predict import predict_array  # noqa: E402
from pipeline.train import train  # noqa: E402

# The folder job's settings (configs/folder.yaml, whose `auto` picks 160 px for flowers128),
# stored at the photos' own 128 px.
SETTINGS = ("data.source=folder", "data.image_size=128", "model.image_size=160")
# With a tenth of the data an epoch is a tenth as many steps, and the head's learning rate still
# decays by 0.8 per epoch: at the default 1e-3 the head underfits (phase 1 train accuracy ~0.7
# on flowers128), which measures the schedule rather than the augmentation. A tenfold rate
# gives back the steps' worth of learning. Pass it as `overrides` for a small-data comparison.
SMALL_DATA_SCHEDULE = ("train.head_learning_rate=0.01",)


def compare_augmentation(
    flowers_root: str | Path | None = None,
    fraction: float = 0.1,
    *,
    views: int = 4,
    config_path: str | Path = "configs/folder.yaml",
    overrides: Sequence[str] = (),
) -> dict[str, float | int | str]:
    """Test accuracy of the product trained on `fraction` of the train split, without and with
    augmentation.

    Args:
        flowers_root: a class-folder dataset; None takes flowers128 in the shared datasets.
        fraction: share of every class of the train split that is trained on.
        views: K, cached augmented views of each training image in the augmented run.
        config_path: the experiment config both runs start from.
        overrides: more `section.key=value` overrides for both runs (e.g. "train.seed=1").

    Returns:
        {"augmentation_effect_points" (standard minus none test accuracy, in points),
         "test_accuracy_none", "test_accuracy_standard", ...settings, sizes and seconds}, or
        {"skipped": reason} when `flowers_root` is not a folder.

    Raises:
        ValueError: If `fraction` is not in (0, 1] or `views` < 2.
    """
    root = Path(flowers_root or FLOWERS)
    if not root.is_dir():
        return {"skipped": f"no dataset folder at {root}"}
    if not 0 < fraction <= 1 or views < 2:
        raise ValueError("compare_augmentation needs 0 < fraction <= 1 and views >= 2 (the "
                         f"augmented run's cached views). Received: fraction={fraction}, "
                         f"views={views}.")
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: load_config(config_path, [
            *SETTINGS, f"data.path={root}", f"runs_dir={folder}", f"name={name}",
            f"augment.chain={name}", f"train.cached_views={k}", *overrides])
            for name, k in (("none", 1), ("standard", views))}
        prepare_data(runs["none"].data, Path(folder) / "data")
        data = subsample_train(load_prepared(Path(folder) / "data"), fraction,
                               Path(folder) / "subset", seed=runs["none"].train.seed)
        sizes = {f"augmentation_effect_{split}_images": len(data.labels(split))
                 for split in ("train", "dev", "test")}
        result = {name: _train_and_test(config, data) for name, config in runs.items()}
    config = runs["standard"]
    return {
        "augmentation_effect_points": 100 * (result["standard"]["test_accuracy"]
                                             - result["none"]["test_accuracy"]),
        **{f"{key}_{name}": value for name, values in result.items()
           for key, value in values.items()},
        "augmentation_effect_fraction": fraction,
        "augmentation_effect_views": views,
        "augmentation_effect_backbone": config.model.backbone,
        "augmentation_effect_image_size": config.model.image_size,
        "augmentation_effect_seed": config.train.seed,
        **sizes,
    }


def subsample_train(data: PreparedData, fraction: float, directory: Path, *,
                    seed: int) -> PreparedData:
    """A copy of prepared data whose train split keeps `fraction` of every class (at least one
    image each, chosen at random with `seed`); dev and test are links to the originals."""
    labels = data.labels("train")
    keep = stratified_sample(labels, fraction, seed=seed)
    directory.mkdir(parents=True)
    np.save(directory / "train_images.npy", np.asarray(data.images("train")[keep]))
    np.save(directory / "train_labels.npy", labels[keep])
    for split in ("dev", "test"):
        for kind in ("images", "labels"):
            (directory / f"{split}_{kind}.npy").symlink_to(data.directory / f"{split}_{kind}.npy")
    return PreparedData(directory, data.class_names, data.image_size)


def train_and_test(config: ExperimentConfig, data: PreparedData) -> tuple[dict, float]:
    """Trains with `pipeline.train.train` and tests the saved model, as the evaluate stage does.

    Returns:
        (what `train` returned, test accuracy)
    """
    result = train(config.augment, config.model, config.train, data, config.run_dir)
    model = keras.models.load_model(config.run_dir / "model.keras")
    predictions = predict_array(model, data.images("test")).argmax(-1)
    return result, float(np.mean(predictions == data.labels("test")))


def _train_and_test(config: ExperimentConfig, data: PreparedData) -> dict[str, float]:
    started = time.perf_counter()
    result, test_accuracy = train_and_test(config, data)
    return {"test_accuracy": test_accuracy,
            "best_dev_accuracy": max(result["history"]["val_accuracy"]),
            "seconds": time.perf_counter() - started}


def main(argv: list[str]) -> None:
    fraction = float(argv[1]) if len(argv) > 1 else 0.1
    for overrides in ((), SMALL_DATA_SCHEDULE):
        result = compare_augmentation(FLOWERS, fraction, overrides=overrides)
        print(f"overrides={list(overrides)}:", {
            key: round(value, 4) if isinstance(value, float) else value
            for key, value in result.items()})


if __name__ == "__main__":
    main(sys.argv)
