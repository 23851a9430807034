"""Tests for pipeline.report: plots are valid PNGs, the report links them, writes are atomic."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluate import classification_metrics, diagnose_bias_variance
from pipeline.report import (
    plot_confusion_matrix,
    plot_error_bars,
    plot_history,
    write_run_report,
)

HISTORY = {
    "loss": [2.0, 1.5, 1.2, 0.9, 0.7, 0.6],
    "val_loss": [2.1, 1.7, 1.5, 1.2, 1.1, 1.15],
    "accuracy": [0.3, 0.5, 0.6, 0.7, 0.8, 0.85],
    "val_accuracy": [0.25, 0.45, 0.5, 0.6, 0.65, 0.64],
    "learning_rate": [1e-3, 1e-3, 1e-3, 1e-5, 1e-5, 1e-5],
}


def assert_valid_png(path: Path) -> tuple[int, int]:
    """Opens the file as an image; returns its size."""
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 0 and height > 0
    return width, height


def assert_no_temporary_files(folder: Path) -> None:
    assert [path.name for path in folder.rglob("*.tmp")] == []


def random_metrics(num_classes: int, num_examples: int, seed: int = 0) -> dict:
    """Metrics of a noisy classifier that is right about half the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_examples)
    scores = rng.normal(size=(num_examples, num_classes))
    scores[np.arange(num_examples), labels] += 2.0
    names = [f"class_{index}" for index in range(num_classes)]
    return classification_metrics(labels, scores, names)


# --------------------------------------------------------------------------- plots


def test_plot_history_writes_a_png(tmp_path):
    path = plot_history(HISTORY, tmp_path / "plots" / "history.png", phase_boundaries=[3])
    assert path == tmp_path / "plots" / "history.png"
    assert_valid_png(path)
    assert_no_temporary_files(tmp_path)


def test_plot_history_accepts_a_dev_only_metric(tmp_path):
    assert_valid_png(plot_history({"val_loss": [1.0, 0.5]}, tmp_path / "history.png"))


def test_plot_history_accepts_a_phase_without_epochs(tmp_path):
    # train.fine_tune_epochs=0: phase 2 starts after the last epoch.
    path = plot_history(HISTORY, tmp_path / "history.png", phase_boundaries=[6])
    assert_valid_png(path)


@pytest.mark.parametrize("boundaries", [[-1], [7], [2, 9]])
def test_plot_history_rejects_boundaries_outside_the_epochs(tmp_path, boundaries):
    with pytest.raises(ValueError, match="between 0 and 6"):
        plot_history(HISTORY, tmp_path / "history.png", phase_boundaries=boundaries)


def test_plot_history_rejects_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="model.fit"):
        plot_history({"loss": [], "learning_rate": [0.1]}, tmp_path / "history.png")


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_plot_confusion_matrix_writes_a_bounded_png(tmp_path, num_classes):
    metrics = random_metrics(num_classes, num_examples=5 * num_classes)
    names = list(metrics["per_class"])
    path = plot_confusion_matrix(metrics["confusion_matrix"], names, tmp_path / "confusion.png")
    width, height = assert_valid_png(path)
    assert max(width, height) <= 2500  # grows with the classes, but stays viewable


def test_plot_confusion_matrix_counts_mode_and_empty_rows(tmp_path):
    confusion = [[3, 1, 0], [0, 0, 0], [1, 0, 4]]  # class "b" absent from the labels
    path = plot_confusion_matrix(confusion, ["a", "b", "c"], tmp_path / "counts.png",
                                 normalize=False)
    assert_valid_png(path)
    assert_valid_png(plot_confusion_matrix(confusion, ["a", "b", "c"], tmp_path / "norm.png"))


@pytest.mark.parametrize(
    "confusion", [[[1, 2], [3, 4]], [[1, 2, 3], [4, 5, 6]]], ids=["too-few-rows", "not-square"]
)
def test_plot_confusion_matrix_rejects_a_mismatched_matrix(tmp_path, confusion):
    with pytest.raises(ValueError, match="square confusion matrix of shape \\(3, 3\\)"):
        plot_confusion_matrix(confusion, ["a", "b", "c"], tmp_path / "confusion.png")


def test_plot_confusion_matrix_rejects_negative_counts(tmp_path):
    with pytest.raises(ValueError, match="non-negative"):
        plot_confusion_matrix([[1, -1], [0, 2]], ["a", "b"], tmp_path / "confusion.png")


def test_plot_error_bars_writes_a_png(tmp_path):
    path = plot_error_bars({"train": 0.05, "dev": 0.12, "test": 0.2}, tmp_path / "errors.png",
                           baseline_error=0.03)
    assert_valid_png(path)


def test_plot_error_bars_accepts_metrics_dicts_and_missing_train(tmp_path):
    errors = {"dev": {"error": 0.1}, "test": {"accuracy": 0.85}}
    assert_valid_png(plot_error_bars(errors, tmp_path / "errors.png"))


def test_plot_error_bars_rejects_unknown_splits(tmp_path):
    with pytest.raises(ValueError, match="Rename 'val'"):
        plot_error_bars({"train": 0.1, "val": 0.2}, tmp_path / "errors.png")


# --------------------------------------------------------------------------- run report


@pytest.fixture(scope="module")
def rendered_plots(tmp_path_factory) -> dict[str, Path]:
    """Drawn once per module; each test copies them into its own run folder."""
    folder = tmp_path_factory.mktemp("plots")
    return {
        "history.png": plot_history(HISTORY, folder / "history.png", phase_boundaries=[3]),
        "errors.png": plot_error_bars({"train": 0.1, "dev": 0.2}, folder / "errors.png"),
    }


@pytest.fixture
def run_inputs(tmp_path, rendered_plots) -> dict:
    run_dir = tmp_path / "runs" / "run-001"
    (run_dir / "plots").mkdir(parents=True)
    metrics = {
        "train": random_metrics(7, 70, seed=1),
        "dev": random_metrics(7, 35, seed=2),
        "test": random_metrics(7, 35, seed=3),
    }
    diagnosis = diagnose_bias_variance(
        train_error=metrics["train"]["error"], dev_error=metrics["dev"]["error"],
        test_error=metrics["test"]["error"],
    )
    plots = {
        "training curves": Path(shutil.copy(rendered_plots["history.png"], run_dir / "plots")),
        "bias/variance": Path(shutil.copy(rendered_plots["errors.png"], run_dir / "plots")),
    }
    return {
        "run_dir": run_dir, "metrics": metrics, "diagnosis": diagnosis, "plots": plots,
        "timings": {"train_head": 61.0, "fine_tune": 3725.0},
    }


def test_report_has_headline_numbers_verdict_and_timings(run_inputs):
    text = write_run_report(**run_inputs).read_text()
    for split, split_metrics in run_inputs["metrics"].items():
        row = f"| {split} | {split_metrics['accuracy']:.2%} | {split_metrics['error']:.2%} |"
        assert row in text
    assert run_inputs["diagnosis"]["summary"] in text
    for step in run_inputs["diagnosis"]["advice"]:
        assert f"- {step}" in text
    assert "| train_head | 1 min 01 s | 2% |" in text
    assert "| fine_tune | 1 h 02 min | 98% |" in text


def test_report_has_a_per_class_table_for_the_test_split(run_inputs):
    text = write_run_report(**run_inputs).read_text()
    assert "## Per-class metrics (test)" in text
    cat = run_inputs["metrics"]["test"]["per_class"]["class_0"]
    assert f"| class_0 | {cat['precision']:.3f} | {cat['recall']:.3f} |" in text


def test_report_links_every_plot_relative_to_the_run(run_inputs):
    report = write_run_report(**run_inputs)
    assert report == run_inputs["run_dir"] / "report.md"
    text = report.read_text()
    assert "![training curves](plots/history.png)" in text
    assert "![bias/variance](plots/errors.png)" in text
    for link in ["plots/history.png", "plots/errors.png"]:
        assert_valid_png(report.parent / link)


def test_report_lists_the_config_with_dotted_keys(run_inputs):
    config = {"model": {"backbone": "efficientnetb0", "dropout": 0.2}, "seed": 7}
    text = write_run_report(**run_inputs, config_summary=config).read_text()
    assert "| `model.backbone` | `efficientnetb0` |" in text
    assert "| `seed` | `7` |" in text


def test_report_rejects_a_missing_plot(run_inputs, tmp_path):
    run_inputs["plots"]["confusion"] = tmp_path / "nowhere.png"
    with pytest.raises(FileNotFoundError, match="confusion"):
        write_run_report(**run_inputs)
    assert not (run_inputs["run_dir"] / "report.md").exists()


def test_report_ignores_keys_beside_the_splits(run_inputs):
    # run.py passes metrics.json as is: the splits plus the diagnosis, class names, timings.
    run_inputs["metrics"].update(diagnosis=run_inputs["diagnosis"], class_names=["a"])
    text = write_run_report(**run_inputs).read_text()
    assert "| diagnosis |" not in text and "| test |" in text


def test_report_rejects_metrics_not_keyed_by_split(run_inputs):
    run_inputs["metrics"] = run_inputs["metrics"]["test"]
    with pytest.raises(ValueError, match="Wrap a single result"):
        write_run_report(**run_inputs)


def test_report_rejects_negative_timings(run_inputs):
    run_inputs["timings"]["fine_tune"] = -1.0
    with pytest.raises(ValueError, match="fine_tune"):
        write_run_report(**run_inputs)


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_no_temporary_file(run_inputs):
    write_run_report(**run_inputs)
    assert_no_temporary_files(run_inputs["run_dir"])
    assert sorted(path.name for path in run_inputs["run_dir"].iterdir()) == ["plots", "report.md"]


def test_importing_does_not_load_pyplot_or_tensorflow():
    code = (
        "import sys, pipeline.evaluate, pipeline.report; "
        "print(sorted({'matplotlib.pyplot', 'tensorflow'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
