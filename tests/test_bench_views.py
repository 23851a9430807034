"""Tests for bench.bench_views: a smoke run on a tiny class folder, and the plot."""

import numpy as np
import pytest

from bench.bench_views import compare_views, plot_views

TINY = ["model.weights=none", "model.image_size=32", "data.image_size=32", "train.batch_size=8",
        "train.head_epochs=2", "train.fine_tune_epochs=1", "train.early_stopping_patience=1"]


def test_compare_views_skips_without_the_folder(tmp_path):
    assert "skipped" in compare_views(tmp_path / "absent")


@pytest.mark.e2e
def test_compare_views_runs_every_k_and_seed_on_the_same_splits(image_file_factory, tmp_path):
    for label in ("cats", "dogs"):
        for index in range(12):
            image_file_factory.jpeg(f"{label}/{index}.jpg", size=(40, 40),
                                    seed=index + 100 * (label == "dogs"))
    result = compare_views(image_file_factory.root, views=(1, 2), seeds=(0, 1), overrides=TINY)
    assert [(run["views"], run["seed"]) for run in result["runs"]] == [(1, 0), (1, 1), (2, 0),
                                                                       (2, 1)]
    for run in result["runs"]:
        for key in ("phase1_best_dev_accuracy", "best_dev_accuracy", "test_accuracy"):
            assert 0.0 <= run[key] <= 1.0, (key, run)
        assert run["best_dev_accuracy"] >= run["phase1_best_dev_accuracy"]
        assert run["extract_features_s"] > 0 and run["phase2_fine_tune_s"] > 0
    for k in (1, 2):
        runs = [run["test_accuracy"] for run in result["runs"] if run["views"] == k]
        assert np.isclose(result["by_views"][str(k)]["test_accuracy"], np.mean(runs))
    plot_views(result, tmp_path / "views.png")
    assert (tmp_path / "views.png").read_bytes()[:4] == b"\x89PNG"
