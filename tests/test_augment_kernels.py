"""Tests for pipeline.augment.kernels: the same images as albumentations, without its dispatch."""

import numpy as np
import pytest

from pipeline.augment.batch import BatchAugmenter
from pipeline.augment.chains import PRESETS, build_eval_transform, build_train_transform
from pipeline.augment.color_pca import ColorPCA, fit_color_pca
from pipeline.augment.kernels import KERNELS
from pipeline.augment.seeding import seed_transform


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


KERNEL_CHAINS = {
    **{preset: preset for preset in PRESETS},
    "saturating colour": [
        {"name": "RGBShift", "r_shift_limit": 200, "g_shift_limit": [-250, -100],
         "b_shift_limit": 0.4, "p": 1.0},
        {"name": "PCAColorShift", "alpha_std": 3.0, "p": 0.7},
    ],
    "crop area filter, flips, resize": [
        {"name": "RandomResizedCrop", "size": [20, 28], "scale": [0.05, 1.0],
         "area_for_downscale": "image", "interpolation": 2},
        {"name": "VerticalFlip", "p": 0.5},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Resize", "height": 24, "width": 24, "interpolation": 3},
    ],
    "kernels around fallbacks": [
        {"name": "RandomResizedCrop", "scale": [0.3, 1.0], "p": 0.5},
        {"name": "OneOf", "p": 0.8, "transforms": [{"name": "Blur", "blur_limit": [3, 5]},
                                                   {"name": "HorizontalFlip"}]},
        {"name": "RandomBrightnessContrast", "p": 0.5},
        {"name": "RGBShift", "p": 0.5},
    ],
}


@pytest.mark.parametrize("name", sorted(KERNEL_CHAINS))
@pytest.mark.parametrize("input_size", [16, 40])
def test_kernels_give_the_images_albumentations_gives(name, input_size, color_pca):
    images, indices = random_images(24, input_size), np.arange(100, 124)
    transform = build_train_transform(KERNEL_CHAINS[name], 24, color_pca=color_pca)
    with BatchAugmenter(transform, seed=3, num_threads=2) as fast:
        batch = fast(images, indices, epoch=1)
    with BatchAugmenter(transform, seed=3, kernels={}) as plain:
        np.testing.assert_array_equal(batch, plain(images, indices, epoch=1))
    for position in (0, 7, 23):
        seed_transform(transform, 3, 1, int(indices[position]))
        np.testing.assert_array_equal(batch[position],
                                      transform(image=images[position])["image"])


@pytest.mark.parametrize("preset", ["none", "light", "standard"])
def test_kernels_cover_the_everyday_presets(preset, color_pca):
    transform = build_train_transform(preset, 24, color_pca=color_pca)
    assert transform.transforms and all(type(step) in KERNELS for step in transform.transforms)
    assert type(build_eval_transform(24).transforms[0]) in KERNELS


def test_batch_augmenter_uses_the_kernels_it_is_given(color_pca):
    transform = build_train_transform("standard", 24, color_pca=color_pca)
    calls = []

    def counting_flip(step, image, params):
        calls.append(step)
        return KERNELS[type(step)](step, image, params)

    kernels = {**KERNELS, type(transform.transforms[1]): counting_flip}
    with BatchAugmenter(transform, seed=0, kernels=kernels) as augmenter:
        augmenter(random_images(32, 32), np.arange(32), epoch=0)
    assert 5 < len(calls) < 27  # HorizontalFlip(p=0.5) fired for about half of 32 images
