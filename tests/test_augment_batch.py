"""Tests for pipeline.augment.batch and .seeding: reproducible batches whatever the threads."""

import numpy as np
import pytest

from pipeline.augment.batch import BatchAugmenter
from pipeline.augment.chains import build_eval_transform, build_train_transform
from pipeline.augment.color_pca import ColorPCA, fit_color_pca
from pipeline.augment.seeding import seed_transform


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


def augment(images, indices, *, seed=0, epoch=0, num_threads=2, chain="strong", color_pca=None):
    color_pca = color_pca or fit_color_pca(images)
    transform = build_train_transform(chain, 24, color_pca=color_pca)
    with BatchAugmenter(transform, seed=seed, num_threads=num_threads) as augmenter:
        return augmenter(images, indices, epoch)


def test_same_seed_same_images_whatever_threads_and_batches():
    images = random_images(12, 32)
    color_pca = fit_color_pca(images)
    whole = augment(images, np.arange(12), num_threads=1, color_pca=color_pca)
    split = np.concatenate([
        augment(images[:5], np.arange(5), num_threads=3, color_pca=color_pca),
        augment(images[5:], np.arange(5, 12), num_threads=2, color_pca=color_pca),
    ])
    np.testing.assert_array_equal(whole, split)


def test_different_epoch_or_seed_gives_different_images():
    images = random_images(6, 32)
    reference = augment(images, np.arange(6))
    assert not np.array_equal(reference, augment(images, np.arange(6), epoch=1))
    assert not np.array_equal(reference, augment(images, np.arange(6), seed=1))


def test_seed_transform_reproduces_one_image_of_a_batch(color_pca):
    images = random_images(4, 32)
    transform = build_train_transform("strong", 24, color_pca=color_pca)
    with BatchAugmenter(transform, seed=7, num_threads=2) as augmenter:
        batch = augmenter(images, np.array([10, 11, 12, 13]), epoch=3)
    seed_transform(transform, 7, 3, 12)
    np.testing.assert_array_equal(transform(image=images[2])["image"], batch[2])


@pytest.mark.parametrize("through_batch_augmenter", [True, False])
def test_transforms_with_equal_p_fire_independently(through_batch_augmenter):
    # albumentations 2.0.8 Compose(seed=...) seeds every transform alike: both flips would then
    # always fire together. Our chains share one generator, so all four combinations occur.
    image = random_images(1, 8)[0]
    chain = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}]
    transform = build_train_transform(chain, 8, seed=0)
    if through_batch_augmenter:
        with BatchAugmenter(transform, seed=0) as augmenter:
            batch = augmenter(np.repeat(image[None], 32, axis=0), np.arange(32), epoch=0)
    else:
        batch = [transform(image=image)["image"] for _ in range(32)]
    outcomes = {(np.array_equal(out, image[:, ::-1]), np.array_equal(out, image[::-1]),
                 np.array_equal(out, image[::-1, ::-1])) for out in batch}
    assert outcomes == {(False, False, False), (True, False, False), (False, True, False),
                        (False, False, True)}


def test_gaussian_noise_is_deterministic_across_threads():
    images = np.full((6, 16, 16, 3), 128, dtype=np.uint8)
    chain = [{"name": "AdditiveNoise", "noise_type": "gaussian", "spatial_mode": "per_pixel",
              "p": 1.0}]
    one = augment(images, np.arange(6), num_threads=1, chain=chain)
    three = augment(images, np.arange(6), num_threads=3, chain=chain)
    np.testing.assert_array_equal(one, three)
    assert one.std() > 1


def test_batch_augmenter_reads_memmap_slices(tmp_path, color_pca):
    images = random_images(6, 32)
    stored = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, images.shape)
    stored[:] = images
    stored.flush()
    from_memmap = augment(np.load(tmp_path / "x.npy", mmap_mode="r")[2:5], np.arange(2, 5),
                          color_pca=color_pca)
    np.testing.assert_array_equal(from_memmap,
                                  augment(images[2:5], np.arange(2, 5), color_pca=color_pca))


@pytest.mark.parametrize("images, indices", [
    (np.zeros((2, 8, 8, 3), np.float32), [0, 1]),
    (np.zeros((2, 8, 8), np.uint8), [0, 1]),
    (np.zeros((2, 8, 8, 3), np.uint8), [0]),
    (np.zeros((2, 8, 8, 3), np.uint8), [0, -1]),
])
def test_batch_augmenter_rejects_bad_batches(images, indices):
    with BatchAugmenter(build_eval_transform(8), seed=0, num_threads=1) as augmenter:
        with pytest.raises(ValueError, match="Received"):
            augmenter(images, np.array(indices), 0)
