"""`make data DATA=<folder>` and `make train DATA=<folder>`, typed as a user types them, on
the folder layouts people have (real photo files: flowers128's, or generated JPEGs without it).

The data stage runs for every layout in the default suite; the whole job runs for `train/` +
`val/` (the layout that used to crash in evaluate) there too, and for every layout with
`make test-slow`. Runs are kept to seconds by `TEST_ARGS`, which the Makefile appends to
the command's overrides.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_photos

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("train.head_epochs=1 train.fine_tune_epochs=1 train.cached_views=1 "
         "augment.preview_images=2 augment.preview_views=2")


def split_layout(root: Path, folders: dict[str, int]) -> list[str]:
    """`root/<folder>/<class>/` for each folder (which may be nested, e.g. `a/a`), with the
    given number of photos per class, no photo in two folders."""
    offset = 0
    for folder, per_class in folders.items():
        classes = copy_photos(root / folder, per_class, offset=offset)
        offset += per_class
    return classes


def make(target: str, data: Path, tmp_path: Path, args: str = "") -> subprocess.CompletedProcess:
    """`make <target> DATA=<data> [ARGS=...]` in the project, runs and models under tmp_path."""
    environment = {**os.environ, "TEST_ARGS": f"{QUICK} runs_dir={tmp_path / 'runs'} "
                                              f"export.models_dir={tmp_path / 'models'}"}
    environment.pop("MAKEFLAGS", None)
    command = ["make", "-s", target, f"DATA={data}"] + ([f"ARGS={args}"] if args else [])
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=900)


def dataset(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "runs" / name / "data" / "dataset.json").read_text())


LAYOUTS = {
    "train_val": {"train": 10, "val": 4},
    "training_set": {"training_set": 10, "test_set": 4},
    "intel": {"seg_train/seg_train": 10, "seg_test/seg_test": 4},
    "mixed_case": {"Train": 8, "Validation": 3, "TEST": 3},
    "kaggle_wrapper": {"archive/chest_xray/train": 8, "archive/chest_xray/val": 3,
                       "archive/chest_xray/test": 3},
}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path) -> tuple[str, Path, list[str]]:
    root = tmp_path / request.param
    classes = split_layout(root, LAYOUTS[request.param])
    if request.param == "intel":  # unlabelled images to classify, beside the splits
        copy_photos(tmp_path / "pred", 2)
        (tmp_path / "pred").rename(root / "seg_pred")
    return request.param, root, classes


def test_make_data_reads_the_classes_not_the_split_names(layout, tmp_path):
    name, root, classes = layout
    result = make("data", root, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = dataset(tmp_path, name)
    assert found["class_names"] == classes
    assert all(found["counts"][split] > 0 for split in ("train", "dev", "test")), found
    assert "Split folders found" in result.stdout


@pytest.mark.e2e
def test_make_train_on_train_and_val_folders_tests_on_a_carved_split(tmp_path):
    root = tmp_path / "photos"
    classes = split_layout(root, {"train": 10, "val": 4})
    result = make("train", root, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "No test split was given: test is carved from the given training images" in (
        result.stdout)
    metrics = json.loads((tmp_path / "runs" / "photos" / "metrics.json").read_text())
    assert metrics["class_names"] == classes and metrics["test"]["num_examples"] > 0
    assert (tmp_path / "models" / "photos" / "model.keras").is_file()


@pytest.mark.slow
def test_make_train_runs_on_every_layout(layout, tmp_path):
    name, root, classes = layout
    result = make("train", root, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
    assert metrics["class_names"] == classes


def test_unnamed_split_folders_stop_before_any_work_and_the_named_fix_works(tmp_path):
    root = tmp_path / "photos"
    split_layout(root, {"part1": 8, "part2": 4})
    result = make("data", root, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.split_folders" in result.stderr and "part1" in result.stderr
    assert not (tmp_path / "runs" / "photos" / "data").exists()
    result = make("data", root, tmp_path,
                  "data.split_folders.train=part1 data.split_folders.test=part2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = dataset(tmp_path, "photos")["counts"]
    assert counts["test"] == 4 * len(dataset(tmp_path, "photos")["class_names"])
