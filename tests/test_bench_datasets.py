"""Tests for bench.datasets: images in memory as prepared data, and that importing any benchmark
keeps albumentations offline."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import FLOWERS, train_images
from pipeline.backbones import model_image_size
from pipeline.config import ModelConfig
from tests.conftest import albumentations_flag_at_import


def test_train_images_read_like_prepared_data():
    images = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    data = train_images(images, np.array([0, 2, 1, 0, 2, 1]))

    assert data.images("train") is images and data.labels("train").tolist() == [0, 2, 1, 0, 2, 1]
    assert data.class_names == ("0", "1", "2") and data.image_size == 24
    assert model_image_size(ModelConfig(image_size="auto"), data.image_size) == 24
    with pytest.raises(ValueError, match="no dev split. Expected one of: train. Received"):
        data.images("dev")


def test_train_images_without_labels_have_one_class():
    data = train_images(np.zeros((3, 8, 8, 3), np.uint8))
    assert data.labels("train").tolist() == [0, 0, 0] and data.class_names == ("0",)


def test_flowers_lies_beside_the_project():
    assert FLOWERS.parts[-3:] == ("shared", "datasets", "flowers128")


def test_importing_the_benchmarks_keeps_albumentations_offline():
    # every benchmark imports `pipeline` (which sets the flag) before albumentations
    assert albumentations_flag_at_import("bench.bench_views", "bench.bench_features",
                                         "bench.bench_augment", "bench.__main__") == "1"

