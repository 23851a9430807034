"""The benchmark suites `make bench` runs, in order; each returns a dict of numbers."""

from __future__ import annotations

from pathlib import Path

OUTPUT_DIR = Path("runs/bench")  # results.json and plots
IMAGE_SIZE = 160  # model input of the cached-features suite (flowers128 is stored at 160 px)


def _input_pipeline() -> dict:
    from bench.bench_augment import bench_input_pipeline

    return bench_input_pipeline()


def _cached_features() -> dict:
    from bench.bench_features import bench_cached_head, bench_time_to_accuracy
    from bench.datasets import FLOWERS

    images, labels = _throughput_images()
    results = bench_cached_head(images, labels, image_size=IMAGE_SIZE)
    # Phase 1 with K augmented views costs K forward passes up front, so its speedup over E
    # epochs is at most about E x (extraction speed / end-to-end epoch speed) / K; plain
    # caching (K=1, no augmentation on either side) is measured too.
    plain = bench_cached_head(images, labels, image_size=IMAGE_SIZE, views=1, chain="none",
                              repeats=1)
    results["phase1_speedup_over_epochs_plain_cache"] = plain["phase1_speedup_over_epochs"]
    results["phase1_epochs_plain_cache"] = plain["phase1_epochs"]
    results["phase1_speedup_by_epochs_plain_cache"] = plain["phase1_speedup_by_epochs"]
    plot = OUTPUT_DIR / "time_to_accuracy.png"
    return {**results, **bench_time_to_accuracy(FLOWERS, image_size=IMAGE_SIZE, plot_path=plot)}


def _throughput_images():
    """1,280 flowers128 training photos through the data stage, or 640 random images."""
    import numpy as np

    from bench.datasets import FLOWERS, load_flowers

    if FLOWERS.is_dir():
        data = load_flowers(FLOWERS, IMAGE_SIZE)
        return data.images("train")[:1280], data.labels("train")[:1280]
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (640, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            rng.integers(0, 5, 640))


def _export() -> dict:
    from bench.bench_export import bench_export

    return bench_export()


def _phase2() -> dict:
    from bench.bench_phase2 import bench_phase2

    return bench_phase2()


def _determinism() -> dict:
    from bench.bench_determinism import bench_determinism

    return bench_determinism()


def _distributed() -> dict:
    from bench.bench_distributed import bench_distributed

    return bench_distributed()


def _scale() -> dict:
    from bench.bench_scale import bench_scale

    return bench_scale()


SUITES = {"input_pipeline": _input_pipeline, "cached_features": _cached_features,
          "export": _export, "determinism": _determinism, "phase2": _phase2,
          "distributed": _distributed, "scale": _scale}
