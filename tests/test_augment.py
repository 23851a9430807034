"""Tests for the pipeline.augment package as a whole: its public names and its imports.

Each module has its own tests: tests/test_augment_<module>.py.
"""

import sys

import pipeline.augment
from tests.conftest import albumentations_flag_at_import


def test_the_package_exports_its_public_names():
    expected = {
        "BatchAugmenter": "batch", "PRESETS": "chains", "build_eval_transform": "chains",
        "build_train_transform": "chains", "color_pca_for": "chains", "resolve_chain": "chains",
        "ColorPCA": "color_pca", "PCAColorShift": "color_pca", "fit_color_pca": "color_pca",
        "KERNELS": "kernels", "applied_transforms": "preview", "preview_stage": "preview",
        "write_preview": "preview", "seed_transform": "seeding",
    }
    assert sorted(pipeline.augment.__all__) == sorted(expected)
    for name, module in expected.items():
        assert getattr(pipeline.augment, name) is getattr(
            sys.modules[f"pipeline.augment.{module}"], name)


def test_importing_the_package_keeps_albumentations_offline():
    # `pipeline/__init__.py` sets the flag before any module of the package imports it
    assert albumentations_flag_at_import("pipeline.augment") == "1"
