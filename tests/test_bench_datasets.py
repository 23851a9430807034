"""Tests for bench.datasets: images in memory as prepared data, and that importing any benchmark
keeps albumentations offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bench.datasets import FLOWERS, train_images
from pipeline.config import ExperimentConfig, ModelConfig
from pipeline.train import color_pca_for, model_image_size


def test_train_images_read_like_prepared_data():
    images = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    data = train_images(images, np.array([0, 2, 1, 0, 2, 1]))

    assert data.images("train") is images and data.labels("train").tolist() == [0, 2, 1, 0, 2, 1]
    assert data.class_names == ("0", "1", "2") and data.image_size == 24
    assert model_image_size(ModelConfig(image_size="auto"), data) == 24
    assert color_pca_for(ExperimentConfig(), data) is not None  # the standard chain uses it
    with pytest.raises(ValueError, match="no dev split. Expected one of: train. Received"):
        data.images("dev")


def test_train_images_without_labels_have_one_class():
    data = train_images(np.zeros((3, 8, 8, 3), np.uint8))
    assert data.labels("train").tolist() == [0, 0, 0] and data.class_names == ("0",)


def test_flowers_lies_beside_the_project():
    assert FLOWERS.parts[-3:] == ("shared", "datasets", "flowers128")


def test_importing_the_benchmarks_keeps_albumentations_offline():
    # albumentations checks for updates over the network on import unless the variable is set
    # (by `pipeline/__init__.py`): every benchmark must import `pipeline` before it.
    script = textwrap.dedent("""
        import importlib.abc, os, sys
        os.environ.pop("NO_ALBUMENTATIONS_UPDATE", None)
        seen = []

        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "albumentations" and not seen:
                    seen.append(os.environ.get("NO_ALBUMENTATIONS_UPDATE"))

        sys.meta_path.insert(0, Watch())
        import bench.bench_views, bench.bench_features, bench.bench_augment, bench.__main__
        print(seen)
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True)
    assert completed.stdout.strip().splitlines()[-1] == "['1']"
