"""Tests for pipeline.augment.preview: the preview grid, its labels and the preview stage."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from pipeline.augment.chains import PRESETS, build_eval_transform, build_train_transform
from pipeline.augment.color_pca import ColorPCA, fit_color_pca
from pipeline.augment.preview import applied_transforms, preview_stage, write_preview
from pipeline.config import AugmentConfig
from pipeline.data.prepare import PreparedData

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers128"


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


def test_applied_transforms_needs_recorded_params():
    with pytest.raises(ValueError, match="save_applied_params"):
        applied_transforms(build_eval_transform(8)(image=random_images(1, 8)[0]))


def test_applied_transforms_labels_what_fired():
    transform = build_train_transform([{"name": "HorizontalFlip", "p": 1.0}], 8)
    transform.save_applied_params = True
    assert applied_transforms(transform(image=random_images(1, 16)[0])) == ["flip"]


def test_preview_is_a_png_of_the_documented_size(tmp_path, color_pca):
    images, labels = random_images(5, 28), np.array([0, 1, 0, 1, 1])
    transform = build_train_transform("standard", 32, color_pca=color_pca)
    path = write_preview(images, labels, ["shirt", "shoe"], transform, tmp_path / "p.png",
                         views=2, rows=3)
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (3 * 190, (2 + 1) * 160)
    assert pixels.std() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no temporary file left


@pytest.mark.skipif(not FLOWERS.is_dir(), reason="flowers128 photos not present")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preview_of_real_photos(tmp_path, preset):
    from PIL import Image

    classes = sorted(p.name for p in FLOWERS.iterdir() if p.is_dir())
    paths = [sorted((FLOWERS / name).glob("*.jpg"))[0] for name in classes]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    transform = build_train_transform(preset, 96, color_pca=fit_color_pca(images))
    path = write_preview(images, np.arange(len(classes)), classes, transform,
                         tmp_path / f"{preset}.png", views=3, rows=len(classes))
    assert mpimg.imread(path).shape[:2] == (len(classes) * 190, 4 * 160)


def test_preview_stage_draws_the_seeds_pick_of_training_images(tmp_path):
    images, labels = random_images(9, 28), np.array([0, 1, 2] * 3)
    np.save(tmp_path / "train_images.npy", images)
    np.save(tmp_path / "train_labels.npy", labels)
    data = PreparedData(tmp_path, ("a", "b", "c"), 28)
    augment = AugmentConfig(chain="standard", preview_images=4, preview_views=2)
    path = preview_stage(augment, data, 32, seed=5, path=tmp_path / "run" / "preview.png")
    assert mpimg.imread(path).shape[:2] == (4 * 190, (2 + 1) * 160)

    chosen = np.sort(np.random.default_rng(5).choice(9, 4, replace=False))
    transform = build_train_transform("standard", 32, color_pca=fit_color_pca(images, seed=5))
    by_hand = write_preview(images[chosen], labels[chosen], data.class_names, transform,
                            tmp_path / "by_hand.png", views=2, rows=4, seed=5)
    assert path.read_bytes() == by_hand.read_bytes()
