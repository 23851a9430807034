"""The benchmark suites `make bench` runs, in order; each returns a dict of numbers."""

from __future__ import annotations


def _input_pipeline() -> dict:
    from bench.bench_augment import bench_input_pipeline

    return bench_input_pipeline()


def _cached_features() -> dict:
    from bench.bench_features import FLOWERS, bench_cached_head, bench_time_to_accuracy

    images, labels = _throughput_images()
    results = bench_cached_head(images, labels)
    # Phase 1 with K augmented views costs K forward passes up front, so its speedup over E
    # epochs is at most about E / K; plain caching (K=1, no augmentation on either side) is the
    # case the "0.8 x E" goal can be met in.
    plain = bench_cached_head(images, labels, views=1, chain="none", repeats=1)
    results["phase1_speedup_over_epochs_plain_cache"] = plain["phase1_speedup_over_epochs"]
    return {**results, **bench_time_to_accuracy(FLOWERS)}


def _throughput_images():
    import numpy as np

    from bench.bench_features import FLOWERS, load_flowers

    if FLOWERS.is_dir():
        images, labels = load_flowers(FLOWERS, 160)["train"]
        return images[:1280], labels[:1280]
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (640, 160, 160, 3), dtype=np.uint8), rng.integers(0, 5, 640))


SUITES = {"input_pipeline": _input_pipeline, "cached_features": _cached_features}
