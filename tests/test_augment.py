"""Tests for pipeline.augment: chains, presets, colour PCA, batch augmenter, preview."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from matplotlib import image as mpimg  # noqa: E402

from pipeline.augment import (  # noqa: E402
    KERNELS,
    PRESETS,
    BatchAugmenter,
    ColorPCA,
    PCAColorShift,
    applied_transforms,
    build_eval_transform,
    build_train_transform,
    fit_color_pca,
    resolve_chain,
    seed_transform,
    write_preview,
)

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers128"


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


# ---------------------------------------------------------------------------------------------
# Presets and chain validation


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("input_size", [28, 128])
@pytest.mark.parametrize("image_size", [24, 96])
def test_every_preset_outputs_square_uint8(preset, input_size, image_size, color_pca):
    transform = build_train_transform(preset, image_size, color_pca=color_pca, seed=0)
    images = random_images(4, input_size)
    with BatchAugmenter(transform, seed=0, num_threads=1) as augment:
        batch = augment(images, np.arange(4), epoch=0)
    assert batch.shape == (4, image_size, image_size, 3)
    assert batch.dtype == np.uint8


@pytest.mark.parametrize("chain", [
    [{"name": "RandomResizedCrop", "p": 0.5}],
    [{"name": "RandomResizedCrop", "size": [30, 30]}],
    [{"name": "RandomResizedCrop"}, {"name": "Rotate", "crop_border": True}],
    [{"name": "RandomResizedCrop"}, {"name": "Affine", "fit_output": True, "rotate": 30}],
    [{"name": "OneOf", "p": 1.0, "transforms": [{"name": "RandomResizedCrop"},
                                                {"name": "RandomScale", "p": 1.0}]}],
    [{"name": "Resize", "height": 24, "width": 20}],
    [{"name": "RandomScale", "p": 1.0}],
])
def test_output_size_is_guaranteed_whatever_the_chain(chain):
    transform = build_train_transform(chain, 24)
    for seed in range(4):
        seed_transform(transform, 0, 0, seed)
        assert transform(image=random_images(1, 40)[0])["image"].shape == (24, 24, 3)


def test_unknown_transform_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"'HorizontalFlp'.*Did you mean: HorizontalFlip"):
        resolve_chain([{"name": "HorizontalFlp", "p": 0.5}])


def test_unknown_parameter_suggests_close_match():
    with pytest.raises(ValueError, match=r"'scal' for RandomResizedCrop.*Did you mean: scale"):
        resolve_chain([{"name": "RandomResizedCrop", "scal": [0.5, 1.0]}])


def test_unknown_nested_transform_names_its_position():
    chain = [{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "GaussBlur"}]}]
    with pytest.raises(ValueError, match=r"chain\[0\]\.transforms\[1\].*GaussianBlur"):
        resolve_chain(chain)


def test_nested_composition_builds(color_pca):
    chain = [{"name": "OneOf", "p": 1.0, "transforms": [
        {"name": "Blur", "blur_limit": [3, 5]}, {"name": "PCAColorShift", "p": 1.0}]}]
    transform = build_train_transform(chain, 24, color_pca=color_pca)
    assert transform(image=random_images(1, 40)[0])["image"].shape == (24, 24, 3)
    with pytest.raises(ValueError, match="fit_color_pca"):
        build_train_transform(chain, 24)
    with pytest.raises(ValueError, match=r"p of OneOf"):
        resolve_chain([{**chain[0], "p": 3}])


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="standard"):
        resolve_chain("standrd")


def test_invalid_parameter_value_is_value_error():
    with pytest.raises(ValueError, match="RGBShift at chain\\[0\\]"):
        resolve_chain([{"name": "RGBShift", "p": 2.0}])


def test_normalisation_in_chain_is_rejected():
    with pytest.raises(ValueError, match="inside the model"):
        resolve_chain([{"name": "Normalize"}])


def test_resolve_chain_returns_a_copy():
    chain = resolve_chain("standard")
    chain[0]["scale"] = [0.01, 0.02]
    assert PRESETS["standard"][0]["scale"] != [0.01, 0.02]


def test_pca_color_shift_without_color_pca_is_a_clear_error():
    with pytest.raises(ValueError, match="fit_color_pca"):
        build_train_transform("standard", 32)


def test_build_injects_the_color_pca(color_pca):
    transform = build_train_transform("standard", 32, color_pca=color_pca)
    shifts = [t for t in transform.transforms if isinstance(t, PCAColorShift)]
    assert len(shifts) == 1 and shifts[0].color_pca == color_pca


def test_invalid_image_size_is_value_error():
    with pytest.raises(ValueError, match="image_size"):
        build_train_transform("none", 0)


def test_eval_transform_is_deterministic_resize():
    transform = build_eval_transform(24)
    image = random_images(1, 40)[0]
    first, second = transform(image=image)["image"], transform(image=image)["image"]
    assert first.shape == (24, 24, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)


# ---------------------------------------------------------------------------------------------
# BatchAugmenter determinism


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


# ---------------------------------------------------------------------------------------------
# Kernels: the same images as albumentations, without its dispatch

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


# ---------------------------------------------------------------------------------------------
# Colour PCA


def test_fit_color_pca_recovers_the_principal_direction():
    direction = np.array([0.8, 0.6, 0.0])
    rng = np.random.default_rng(0)
    pixels = (128 + rng.normal(0, 40, (64 * 64, 1)) * direction
              + rng.normal(0, 4, (64 * 64, 3)))
    images = np.clip(pixels, 0, 255).astype(np.uint8).reshape(1, 64, 64, 3)
    pca = fit_color_pca(images, max_pixels=2000)
    np.testing.assert_allclose(pca.eigenvectors[:, 0], direction, atol=0.02)
    assert pca.eigenvalues[0] == pytest.approx((40 / 255) ** 2, rel=0.15)
    assert pca.eigenvalues[0] > 20 * pca.eigenvalues[1] >= 0
    np.testing.assert_allclose(pca.eigenvectors.T @ pca.eigenvectors, np.eye(3), atol=1e-9)


def test_pca_color_shift_moves_colour_along_the_principal_component():
    direction = np.array([0.8, 0.6, 0.0])
    eigenvectors = np.stack([direction, [-0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], axis=1)
    pca = ColorPCA(eigenvalues=[0.05, 0.0, 0.0], eigenvectors=eigenvectors)
    shift = PCAColorShift(alpha_std=1.0, color_pca=pca, p=1.0)
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    deltas = []
    for seed in range(5):
        shift.set_random_seed(seed)
        out = shift(image=image)["image"]
        assert out.shape == image.shape and out.dtype == np.uint8
        deltas.append(out[0, 0].astype(float) - 128)
    deltas = np.array(deltas)
    assert np.all(deltas[:, 2] == 0)
    assert np.abs(deltas[:, 0]).max() > 5
    np.testing.assert_allclose(deltas[:, 1], deltas[:, 0] * 0.75, atol=1.0)


def test_pca_color_shift_saturates_instead_of_wrapping():
    pca = ColorPCA(eigenvalues=[1.0, 0.0, 0.0], eigenvectors=np.eye(3))
    shift = PCAColorShift(alpha_std=1.0, color_pca=pca, p=1.0)
    image = np.full((4, 4, 3), 250, dtype=np.uint8)
    reds = []
    for seed in range(8):
        shift.set_random_seed(seed)
        params = shift.get_params()
        reds.append(shift.apply(image, **params)[0, 0, 0])
        assert reds[-1] == np.clip(np.rint(250 + params["rgb_shift"][0]), 0, 255)
    assert 255 in reds and min(reds) < 250  # both directions exercised


def test_color_pca_json_round_trip(tmp_path, color_pca):
    path = color_pca.save(tmp_path / "color_pca.json")
    assert ColorPCA.load(path) == color_pca
    assert ColorPCA.from_dict(color_pca.to_dict()) == color_pca


@pytest.mark.parametrize("data", [
    {"eigenvalues": [1.0, 2.0]},
    {"eigenvalues": [1.0, 2.0], "eigenvectors": np.eye(3).tolist()},
])
def test_color_pca_rejects_bad_dicts(data):
    with pytest.raises(ValueError, match="Received"):
        ColorPCA.from_dict(data)


# ---------------------------------------------------------------------------------------------
# Preview


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
