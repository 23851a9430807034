"""Phase 2 fed from pixels: live augmentation against pre-augmented images, and the peak memory
of both feeding paths, at the default job's size (configs/default.yaml: Fashion-MNIST, Lite0 at
96 px, batch 128, its augmentation chain).

* `bench_live_augmentation`: training images/s of the product's pixel-fed phase 2
  (`pipeline.train.phase2_model` over the ImageNet base unfrozen from block5a, fitted over
  `pipeline.inputs.AugmentedImages` as `fine_tune_on_pixels` feeds it) augmenting live,
  against the same model and PyDataset over the same images augmented beforehand in memory.
  After a warm-up epoch, epochs alternate; the best epoch of each side counts.
* `bench_phase2_memory`: peak resident memory (RSS, sampled from /proc every 10 ms) of phase 2
  in a fresh process per feeding path, from building its inputs to the end of a few training
  steps: the cached path holds K views of the activations at its start for every training
  and dev image (float16, as `extract_features` leaves them), the pixel path the uint8 images.

Run from the repository root: `python -m bench.bench_phase2` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bench.bench_augment import alternating_epoch_rates  # noqa: E402
from bench.datasets import ArrayData  # noqa: E402
from pipeline import train  # noqa: E402
from pipeline.backbones import freeze_backbone, get_backbone_spec  # noqa: E402
from pipeline.config import ExperimentConfig, load_config  # noqa: E402
from pipeline.data.fashion_mnist import load_fashion_mnist  # noqa: E402
from pipeline.inputs import AugmentedImages, augmented_batches  # noqa: E402
from pipeline.model import build_head  # noqa: E402

DEFAULT_JOB = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
DEPTH = "block5a"  # the shallowest point below the cache point: phase 2 runs from pixels
MEMORY_STEPS = 8


def _default_job(train_images: int) -> tuple[ExperimentConfig, ArrayData]:
    """The default job's config and the first `train_images` Fashion-MNIST training images
    (the rest of the official train split, up to 6,000, as dev)."""
    config = load_config(DEFAULT_JOB)
    images, labels = load_fashion_mnist(Path(config.data.path))["train"]
    dev = slice(train_images, train_images + min(6000, len(images) - train_images))
    data = ArrayData(Path(config.data.path), tuple(map(str, range(10))), images.shape[1],
                     {"train": (images[:train_images], labels[:train_images]),
                      "dev": (images[dev], labels[dev])})
    return config, data


def _phase2_model(config: ExperimentConfig, feeding: str) -> tuple[keras.Model, keras.Model]:
    """(phase 2 model, bottom) as `train.train` builds them at `DEPTH` for `feeding`."""
    image_size = config.model.image_size
    base, bottom, top = train.frozen_base(config.model, image_size, DEPTH)
    freeze_backbone(base, get_backbone_spec(config.model.backbone), unfreeze_top=True,
                    fine_tune_from=DEPTH)
    head = build_head(10, base.output.shape[-1], config.model)
    if feeding == "pixels":
        model = train.phase2_model(base, head, base.input_shape[1:], name="base_and_head")
    else:
        model = train.phase2_model(top, head, bottom.output.shape[1:], name="top_and_head")
    train.compile_model(model, learning_rate=config.train.fine_tune_learning_rate,
                        steps_per_epoch=100, config=config.train)
    return model, bottom


def bench_live_augmentation(train_images: int = 1024, repeats: int = 2) -> dict:
    """Pixel-fed phase 2 images/s with live augmentation / on the same images pre-augmented."""
    config, data = _default_job(train_images)
    keras.utils.set_random_seed(0)
    augmenter, _ = train.augmenters(config.augment, config.train, data, config.model.image_size)
    images, labels = data.images("train"), data.labels("train")
    augmented = np.concatenate(list(augmented_batches(images, augmenter, 256)))
    batch = config.train.batch_size
    sides = {"live": AugmentedImages(images, labels, augmenter, batch, seed=0, num_classes=10),
             "preaugmented": AugmentedImages(augmented, labels, _unchanged, batch, seed=0,
                                             num_classes=10)}
    model, _ = _phase2_model(config, "pixels")
    rate = alternating_epoch_rates(model, sides, len(images), repeats)
    augmenter.close()
    return {"phase2_live_vs_preaugmented_train_speed": rate["live"] / rate["preaugmented"],
            "phase2_live_train_images_per_s": rate["live"],
            "phase2_preaugmented_train_images_per_s": rate["preaugmented"],
            "phase2_bench_train_images": len(images), "phase2_bench_depth": DEPTH,
            "phase2_bench_image_size": config.model.image_size, "phase2_bench_batch_size": batch}


def _unchanged(images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
    return images


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakRss:
    """Samples this process's RSS every 10 ms while in the `with` block; `peak` in MiB."""

    def __enter__(self):
        self.peak, self._running = _rss_mib(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def phase2_memory(feeding: str, train_images: int) -> dict:
    """Peak RSS (MiB) of phase 2 fed by `feeding` at `train_images` training images, in this
    process: before building the inputs, and the peak from there through `MEMORY_STEPS` steps."""
    config, data = _default_job(train_images)
    model, bottom = _phase2_model(config, feeding)
    labels = data.labels("train")
    before = _rss_mib()
    with _PeakRss() as peak:
        if feeding == "pixels":
            augmenter, _ = train.augmenters(config.augment, config.train, data,
                                            config.model.image_size)
            inputs = AugmentedImages(data.images("train"), labels, augmenter,
                                     config.train.batch_size, seed=0, num_classes=10)
        else:  # the caches as extraction leaves them: written through, float16
            shape = bottom.output.shape[1:]
            views = np.full((config.train.cached_views, len(labels), *shape), 0.5, np.float16)
            dev = np.full((1, len(data.labels("dev")), *shape), 0.5, np.float16)
            inputs = train.CachedViews(views, labels, config.train.batch_size, seed=0,
                                       num_classes=10)
        model.fit(inputs, epochs=1, steps_per_epoch=MEMORY_STEPS, verbose=0)
        if feeding == "cached":
            del dev  # held through the steps, as phase 2 holds the dev cache
    return {"before_mib": before, "peak_mib": peak.peak, "train_images": len(labels),
            "dev_images": len(data.labels("dev"))}


def bench_phase2_memory(train_images: int = 54000) -> dict:
    """Peak RSS of phase 2 for both feeding paths, each in a fresh process."""
    results = {}
    for feeding in ("cached", "pixels"):
        command = [sys.executable, "-m", "bench.bench_phase2", "memory", feeding,
                   str(train_images)]
        output = subprocess.run(command, capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parents[1]).stdout
        measured = json.loads(output.strip().splitlines()[-1])
        results[f"phase2_peak_rss_mib_{feeding}"] = round(measured["peak_mib"])
        results[f"phase2_rss_before_inputs_mib_{feeding}"] = round(measured["before_mib"])
    results["phase2_memory_train_images"] = train_images
    return results


def bench_phase2() -> dict:
    """Both, as `make bench` reports them."""
    return {**bench_live_augmentation(), **bench_phase2_memory()}


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "memory":
        print(json.dumps(phase2_memory(argv[2], int(argv[3]))))
        return
    for key, value in bench_phase2().items():
        print(f"{key:45s} {value}")


if __name__ == "__main__":
    main(sys.argv)
