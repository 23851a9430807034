"""Smoke tests of the cached-features benchmark: tiny images, random weights, few epochs.

They check that each function runs the real pipeline end to end and returns the documented
numbers; speed itself is measured by `make bench`, never asserted here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from bench.bench_features import bench_cached_head, bench_time_to_accuracy
from bench.goals import check_goals

RATIOS = ("cached_head_epoch_speedup", "phase1_speedup_over_epochs",
          "extraction_vs_raw_forward", "extraction_vs_raw_forward_tensorflow_engine")


def _is_positive_number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_bench_cached_head_returns_positive_ratios_and_rates():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)
    labels = np.arange(10) % 2

    result = bench_cached_head(images, labels, weights="none", image_size=32, views=2,
                               epochs_for_ratio=3, timed_epochs=1, repeats=1, chain="light")

    for key in (*RATIOS, "end_to_end_epoch_images_per_s", "cached_head_epoch_images_per_s",
                "extraction_images_per_s", "raw_forward_images_per_s", "extraction_s"):
        assert _is_positive_number(result[key]), (key, result[key])
    assert (result["phase1_epochs"], result["views"], result["images"]) == (3, 2, 10)
    assert result["image_size"] == 32 and result["extraction_engine"] == "litert"
    by_epochs = result["phase1_speedup_by_epochs"]
    assert list(by_epochs) == ["1", "3"] and all(map(_is_positive_number, by_epochs.values()))
    assert by_epochs["3"] == result["phase1_speedup_over_epochs"]
    goals = check_goals(result)  # the keys the goals table names are the ones measured here
    for key in ("cached_head_epoch_speedup", "extraction_vs_raw_forward",
                "phase1_speedup_over_epochs"):
        assert goals[key]["measured"] == result[key], key
    assert goals["phase1_speedup_over_epochs"]["goal"] == pytest.approx(0.8 * 3)


@pytest.mark.e2e
def test_bench_time_to_accuracy_on_a_tiny_folder(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(30):
        folder = tmp_path / ("daisy", "rose")[index % 2]
        folder.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)

    plot = tmp_path / "bench" / "time_to_accuracy.png"
    result = bench_time_to_accuracy(tmp_path, image_size=32, weights="none",
                                    keras_guide_epochs=2, plot_path=plot)

    for key in ("time_to_accuracy_speedup_vs_keras_guide", "ours_time_to_target_s",
                "keras_guide_time_to_target_s", "ours_total_s", "keras_guide_total_s",
                "time_to_accuracy_speedup_vs_keras_guide_k1", "ours_time_to_target_s_k1"):
        assert _is_positive_number(result[key]), (key, result[key])
    by_margin = result["time_to_accuracy_speedup_vs_keras_guide_by_margin"]
    assert list(by_margin) == ["0.00", "0.01", "0.02", "0.03"]
    assert by_margin["0.01"] == result["time_to_accuracy_speedup_vs_keras_guide"]
    assert result["views"] == 2 and result["ours_epochs_k1"] >= 1
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert result["keras_guide_epochs"] == 2
    assert result["train_images"] + result["dev_images"] + result["test_images"] == 30
    goals = check_goals(result)
    assert all(goals[key]["measured"] == result[key] for key in goals if "keras_guide" in key)
    # Each K's comparison: test accuracies are shares of the same test images, the goal's
    # number is their difference in points, and both recipes reach the common target.
    for run in (result, _numbers_of_k(result, "_k1")):
        for name in ("ours_test_accuracy", "keras_guide_test_accuracy"):
            correct = run[name] * result["test_images"]
            assert correct == pytest.approx(round(correct)), (name, run[name])
        assert run["test_accuracy_minus_keras_guide"] == pytest.approx(
            100 * (run["ours_test_accuracy"] - run["keras_guide_test_accuracy"]))
        assert run["target_dev_accuracy"] == pytest.approx(
            min(run["ours_best_dev_accuracy"], run["keras_guide_best_dev_accuracy"]) - 0.01)
        assert run["ours_time_to_target_s"] <= run["ours_total_s"]
        assert run["keras_guide_time_to_target_s"] <= result["keras_guide_total_s"]
        assert run["time_to_accuracy_speedup_vs_keras_guide"] == pytest.approx(
            run["keras_guide_time_to_target_s"] / run["ours_time_to_target_s"])


def _numbers_of_k(result: dict, suffix: str) -> dict:
    """The numbers of the comparison for another K, without their "_k<K>" suffix."""
    return {key.removesuffix(suffix): value for key, value in result.items()
            if key.endswith(suffix)}


def test_bench_time_to_accuracy_skips_without_the_dataset(tmp_path, monkeypatch):
    missing = tmp_path / "flowers128"
    monkeypatch.setattr("bench.bench_features.FLOWERS", missing)

    assert bench_time_to_accuracy() == {"skipped": f"no flowers128 folder at {missing}"}


def test_bench_time_to_accuracy_rejects_an_empty_split(tmp_path):
    for index, name in enumerate(("daisy", "rose")):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((8, 8, 3), index * 99, np.uint8)).save(tmp_path / name / "a.jpg")

    with pytest.raises(ValueError, match="split of .* empty"):
        bench_time_to_accuracy(tmp_path, image_size=32, weights="none")
