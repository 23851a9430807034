"""Dataset-level colour PCA (AlexNet's "fancy PCA"): the components and the transform.

`fit_color_pca` finds the principal components of the training split's pixel colours once;
`PCAColorShift` adds a random multiple of them to every pixel of an image. Unlike
`A.FancyPCA`, which recomputes the PCA of every single image, the components describe the whole
dataset, as in AlexNet (Krizhevsky et al., 2012, section 4.1).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

from pipeline.atomic import write_json
from pipeline.augment.images import check_images


@dataclass(frozen=True, eq=False)
class ColorPCA:
    """Principal components of the training split's RGB pixel colours (pixels scaled to [0, 1]).

    Attributes:
        eigenvalues: (3,) variances along each component, in decreasing order.
        eigenvectors: (3, 3) matrix whose column `i` is the unit direction of component `i`.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    def __post_init__(self) -> None:
        eigenvalues = np.array(self.eigenvalues, dtype=np.float64)
        eigenvectors = np.array(self.eigenvectors, dtype=np.float64)
        if eigenvalues.shape != (3,) or eigenvectors.shape != (3, 3):
            raise ValueError(
                "ColorPCA expects eigenvalues of shape (3,) and eigenvectors of shape (3, 3). "
                f"Received: eigenvalues.shape={eigenvalues.shape}, "
                f"eigenvectors.shape={eigenvectors.shape}."
            )
        if not (np.all(np.isfinite(eigenvalues)) and np.all(np.isfinite(eigenvectors))):
            raise ValueError("ColorPCA values must be finite. Refit with fit_color_pca().")
        eigenvalues.flags.writeable = False
        eigenvectors.flags.writeable = False
        object.__setattr__(self, "eigenvalues", eigenvalues)
        object.__setattr__(self, "eigenvectors", eigenvectors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ColorPCA):
            return NotImplemented
        return bool(
            np.array_equal(self.eigenvalues, other.eigenvalues)
            and np.array_equal(self.eigenvectors, other.eigenvectors)
        )

    __hash__ = None  # mutable-looking arrays inside: not hashable

    def to_dict(self) -> dict[str, list]:
        """Returns a JSON-serialisable dict (float64 values survive the round trip exactly)."""
        return {
            "eigenvalues": self.eigenvalues.tolist(),
            "eigenvectors": self.eigenvectors.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ColorPCA":
        """Builds a ColorPCA from `to_dict()` output.

        Raises:
            ValueError: If a key is missing or a shape is wrong.
        """
        missing = {"eigenvalues", "eigenvectors"} - set(data)
        if missing:
            raise ValueError(
                f"ColorPCA dict is missing {sorted(missing)}. Expected keys 'eigenvalues' and "
                f"'eigenvectors'. Received keys: {sorted(data)}."
            )
        return cls(eigenvalues=data["eigenvalues"], eigenvectors=data["eigenvectors"])

    def save(self, path: str | Path) -> Path:
        """Writes the components as JSON, atomically. Returns the path."""
        return write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ColorPCA":
        """Reads components written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_color_pca(images: np.ndarray, *, max_pixels: int = 1_000_000, seed: int = 0) -> ColorPCA:
    """PCA of the RGB colours of (a random subsample of) the pixels of the training images.

    Fit it on the training split only, so nothing about validation or test colours leaks in.

    Args:
        images: uint8 array (N, H, W, 3); a np.memmap works and is read only where sampled.
        max_pixels: at most this many pixels (sampled with replacement) enter the covariance.
        seed: seeds the pixel subsample.

    Returns:
        The fitted ColorPCA, components sorted by decreasing variance, each signed so that its
        largest-magnitude entry is positive.

    Raises:
        ValueError: If images is not a non-empty uint8 (N, H, W, 3) array or max_pixels < 2.
    """
    check_images(images, "fit_color_pca")
    if max_pixels < 2:
        raise ValueError(f"max_pixels must be at least 2. Received: max_pixels={max_pixels}.")
    pixels = images.reshape(-1, 3)
    if len(pixels) > max_pixels:
        rows = np.random.default_rng(seed).integers(0, len(pixels), size=max_pixels)
        pixels = pixels[np.sort(rows)]  # sorted: sequential reads on a memmap
    covariance = np.cov(np.asarray(pixels, dtype=np.float64) / 255.0, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    largest = eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(3)]
    return ColorPCA(eigenvalues=eigenvalues, eigenvectors=eigenvectors * np.sign(largest))


class PCAColorShift(A.ImageOnlyTransform):
    """Adds a random multiple of the dataset's colour principal components to every pixel.

    The shift is `eigenvectors @ (alpha * eigenvalues)` with `alpha ~ N(0, alpha_std)` drawn once
    per image (in `get_params`), applied in 0-255 space and clipped to uint8.

    Args:
        alpha_std: standard deviation of alpha; AlexNet uses 0.1.
        color_pca: the fitted components. `build_train_transform` injects the fitted ColorPCA, so
            a config never spells it out.
        p: probability of applying the transform.

    Targets:
        image

    Image types:
        uint8
    """

    class InitSchema(BaseTransformInitSchema):
        alpha_std: float = Field(ge=0)
        color_pca: ColorPCA | None

    def __init__(self, alpha_std: float = 0.1, color_pca: ColorPCA | None = None, p: float = 0.5):
        super().__init__(p=p)
        self.alpha_std = alpha_std
        # The InitSchema's model_dump() turns the dataclass into a dict: turn it back.
        self.color_pca = ColorPCA.from_dict(color_pca) if isinstance(color_pca, dict) else color_pca

    def get_params(self) -> dict[str, Any]:
        if self.color_pca is None:
            raise ValueError(missing_pca_message("PCAColorShift was called"))
        alpha = self.random_generator.normal(0.0, self.alpha_std, size=3)
        pca = self.color_pca
        return {"rgb_shift": 255.0 * pca.eigenvectors @ (alpha * pca.eigenvalues)}

    def apply(self, img: np.ndarray, rgb_shift: np.ndarray, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(
                "PCAColorShift expects a uint8 RGB image (H, W, 3). "
                f"Received: dtype={img.dtype}, shape={img.shape}."
            )
        # Saturating add of a per-channel scalar (rounded): fast, and releases the GIL.
        return cv2.add(img, (*rgb_shift.tolist(), 0.0))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha_std", "color_pca")


def missing_pca_message(where: str) -> str:
    """The error message for a PCAColorShift that has no ColorPCA; `where` opens the sentence."""
    return (
        f"{where} without a ColorPCA. Fit one on the training split, "
        "color_pca = fit_color_pca(train_images), and pass it: "
        "build_train_transform(chain, image_size, color_pca=color_pca); "
        "or remove PCAColorShift from the chain."
    )
