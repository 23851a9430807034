"""Tests for pipeline.augment.chains: presets, chain validation and the Composes built."""

import numpy as np
import pytest

from pipeline.augment.batch import BatchAugmenter
from pipeline.augment.chains import (
    PRESETS,
    build_eval_transform,
    build_train_transform,
    color_pca_for,
    resolve_chain,
)
from pipeline.augment.color_pca import ColorPCA, PCAColorShift, fit_color_pca
from pipeline.augment.seeding import seed_transform


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


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


def test_color_pca_for_fits_only_when_the_chain_uses_pca_shift():
    images = random_images(4, 32)
    assert color_pca_for("light", images, seed=0) is None
    assert color_pca_for("standard", images, seed=3) == fit_color_pca(images, seed=3)
    nested = [{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "PCAColorShift"}]}]
    assert color_pca_for(nested, images, seed=0) == fit_color_pca(images)
    with pytest.raises(ValueError, match="standrd"):
        color_pca_for("standrd", images, seed=0)
