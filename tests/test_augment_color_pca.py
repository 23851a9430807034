"""Tests for pipeline.augment.color_pca: fitting, the PCAColorShift transform, saving."""

import numpy as np
import pytest

from pipeline.augment.color_pca import ColorPCA, PCAColorShift, fit_color_pca


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def color_pca() -> ColorPCA:
    return fit_color_pca(random_images(4, 32))


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
