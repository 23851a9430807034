"""Tests for pipeline.data.report: counts, warnings, files on disk, screen summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.folder import SkippedFile, scan_image_folder
from pipeline.data.report import (
    CLASS_WEIGHT_CONFIG,
    build_data_report,
    format_data_report,
    write_data_report,
)


def _labels(*counts: int) -> np.ndarray:
    """Labels with `counts[i]` examples of class i."""
    return np.repeat(np.arange(len(counts)), counts)


def _report(**overrides) -> dict:
    arguments = {
        "class_names": ["cat", "dog"],
        "labels_by_split": {"train": _labels(6, 4), "dev": _labels(2, 2), "test": _labels(2, 1)},
        "source": "/data/pets",
    }
    return build_data_report(**{**arguments, **overrides})


def test_counts_per_class_and_split():
    report = _report()
    assert report["num_images"] == 17
    assert report["images_per_split"] == {"train": 10, "dev": 4, "test": 3}
    assert report["images_per_class"] == {"cat": 10, "dog": 7}
    assert report["images_per_class_and_split"]["dog"] == {"train": 4, "dev": 2, "test": 1}
    assert report["class_imbalance"]["ratio"] == pytest.approx(10 / 7, abs=1e-3)
    assert report["warnings"] == []


def test_splits_are_listed_in_train_dev_test_order():
    report = _report(
        labels_by_split={"test": _labels(1, 1), "train": _labels(3, 3), "dev": _labels(1, 1)}
    )
    assert list(report["images_per_split"]) == ["train", "dev", "test"]


def test_imbalance_above_three_suggests_balanced_class_weights():
    report = _report(
        labels_by_split={"train": _labels(40, 10), "dev": _labels(5, 2), "test": _labels(5, 2)}
    )
    assert report["class_imbalance"]["ratio"] == pytest.approx(50 / 14, abs=1e-3)
    assert report["class_imbalance"]["largest"] == "cat"
    assert report["class_imbalance"]["smallest"] == "dog"
    [warning] = report["warnings"]
    assert "imbalanced" in warning and CLASS_WEIGHT_CONFIG in warning


def test_a_single_image_class_and_a_class_missing_from_a_split_are_warned_about():
    report = build_data_report(
        class_names=["cat", "dog", "owl"],
        labels_by_split={
            "train": _labels(5, 3, 1),
            "dev": _labels(2, 0, 0),
            "test": _labels(2, 2, 0),
        },
        source="pets",
    )
    warnings = "\n".join(report["warnings"])
    assert "'owl' has only 1 image" in warnings
    assert "'dog' has no images in the dev split" in warnings
    assert "'owl' has no images in" not in warnings


def test_warnings_from_the_scan_come_first_without_repeats():
    scan_warning = "Class folder 'empty' has no usable images; it was left out."
    single = (
        "Class 'dog' has only 1 image, so it cannot appear in train, dev and test; "
        "add more images of it."
    )
    report = _report(labels_by_split={"train": _labels(3, 1)}, warnings=[scan_warning, single])
    assert report["warnings"] == [scan_warning, single]


def test_findings_of_the_scan_are_included():
    report = _report(
        skipped=[SkippedFile(Path("/data/pets/.DS_Store"), "macOS folder metadata", "hidden")],
        unsupported={"webp": 2},
        duplicate_groups=[("cat/a.jpg", "dog/a.jpg")],
        label_conflicts=[("cat/a.jpg", "dog/a.jpg")],
        image_sizes=[(640, 480), (800, 600), (100, 50), (1024, 768)],
    )
    assert report["skipped"] == [
        {"path": "/data/pets/.DS_Store", "reason": "macOS folder metadata", "kind": "hidden"}
    ]
    assert report["unsupported"] == {"webp": 2}
    assert report["label_conflicts"] == [["cat/a.jpg", "dog/a.jpg"]]
    assert report["image_sizes"] == {
        "count": 4,
        "width": {"min": 100, "median": 720, "max": 1024},
        "height": {"min": 50, "median": 540, "max": 768},
    }


def test_labels_outside_the_class_list_are_refused():
    with pytest.raises(ValueError, match=r"split 'train'.*from 0 to 1.*values 0 to 2"):
        _report(labels_by_split={"train": np.array([0, 1, 2])})


def test_write_data_report_writes_json_and_markdown(tmp_path):
    report = _report(image_sizes=[(32, 32)], unsupported={"heic": 1})
    json_path, markdown_path = write_data_report(report, tmp_path / "run" / "data")
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    markdown = markdown_path.read_text(encoding="utf-8")
    assert "| Class | train | dev | test | Total |" in markdown
    assert "| cat | 6 | 2 | 2 | 10 |" in markdown
    assert "| **Total** | 10 | 4 | 3 | 17 |" in markdown
    assert "| heic | 1 |" in markdown
    assert sorted(path.name for path in json_path.parent.iterdir()) == [
        "data_report.json",
        "data_report.md",
    ]


def test_write_data_report_replaces_atomically_and_cleans_up_on_failure(tmp_path, monkeypatch):
    json_path, _ = write_data_report(_report(), tmp_path)
    before = json_path.read_text(encoding="utf-8")

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_data_report(_report(source="other"), tmp_path)
    assert json_path.read_text(encoding="utf-8") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "data_report.json",
        "data_report.md",
    ]


def test_non_ascii_class_names_and_numpy_values_are_written(tmp_path):
    report = _report(class_names=["café", "日本"])
    report["extra"] = np.int64(3)
    json_path, markdown_path = write_data_report(report, tmp_path)
    assert "café" in json_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8"))["extra"] == 3
    assert "| 日本 |" in markdown_path.read_text(encoding="utf-8")


def test_screen_summary_is_short_and_says_what_matters():
    report = _report(
        skipped=[SkippedFile(Path("x/.DS_Store"), "macOS metadata", "hidden")],
        image_sizes=[(128, 96), (64, 48)],
    )
    text = format_data_report(report)
    assert len(text.splitlines()) <= 8
    assert "17 images, 2 classes; train 10 | dev 4 | test 3" in text
    assert "cat 10, dog 7" in text
    assert "skipped: 1 (hidden 1)" in text
    assert "min 64x48, median 96x72, max 128x96" in text


def test_screen_summary_of_many_classes_names_only_the_extremes():
    report = build_data_report(
        class_names=[f"class{index}" for index in range(20)],
        labels_by_split={"train": _labels(*range(5, 25))},
        source="big",
    )
    line = [line for line in format_data_report(report).splitlines() if "per class" in line][0]
    assert "smallest class0 5" in line and "largest class19 24" in line


def test_report_from_a_real_folder_scan(image_file_factory, tmp_path):
    factory = image_file_factory
    for index in range(4):
        factory.jpeg(f"cat/c{index}.jpg", seed=index)
    factory.jpeg("dog/d0.jpg", seed=10)
    factory.ds_store()
    scan = scan_image_folder(factory.root, show_progress=False)
    labels = np.array([item.label for item in scan.items])
    report = build_data_report(
        class_names=scan.class_names,
        labels_by_split={"train": labels},
        skipped=scan.skipped,
        unsupported=scan.unsupported,
        duplicate_groups=scan.duplicate_groups,
        label_conflicts=scan.label_conflicts,
        image_sizes=scan.image_sizes,
        source=str(scan.root),
        warnings=scan.warnings,
    )
    assert report["images_per_class"] == {"cat": 4, "dog": 1}
    assert sum("'dog' has only 1 image" in warning for warning in report["warnings"]) == 1
    assert "imbalanced" in " ".join(report["warnings"])
    _, markdown_path = write_data_report(report, tmp_path / "report")
    assert ".DS_Store" in markdown_path.read_text(encoding="utf-8")
