"""Kernels: the pixel work of common transforms, without albumentations' per-call dispatch.

A plain `compose(image=image)` call spends most of its time in Python dispatch (data checks,
dict plumbing, albucore's per-channel lookup tables), not in pixels. `ChainRunner` walks the
Compose itself: every transform still decides whether it fires and samples its parameters
with its own `should_apply`, `get_params` and `get_params_dependent_on_data`, from the same
shared generators and in the same order as Compose, so the output is bit-identical to
`compose(image=image)["image"]`; a kernel then does the pixel work in one OpenCV call. A
transform without a kernel runs through albumentations itself.

Per image, not per batch: on 128 px uint8 images a batch-wide masked flip or an int16
add-and-clip costs 6-17 times what cv2.flip / cv2.add cost image by image (numpy makes several
full passes and widens the dtype; OpenCV makes one saturating SIMD pass).
"""

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BasicTransform

from pipeline.augment.color_pca import PCAColorShift


def _resized_crop(transform: A.RandomResizedCrop, image: np.ndarray, params: dict) -> np.ndarray:
    x_min, y_min, x_max, y_max = params["crop_coords"]
    return _resize_like(transform, image[y_min:y_max, x_min:x_max], transform.size)


def _resized(transform: A.Resize, image: np.ndarray, params: dict) -> np.ndarray:
    return _resize_like(transform, image, (transform.height, transform.width))


def _resize_like(transform: Any, image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """cv2.resize to (height, width) with the filter `transform.apply` would pick."""
    height, width = size
    downscale = height < image.shape[0] or width < image.shape[1]
    area = downscale and transform.area_for_downscale in ("image", "image_mask")
    interpolation = cv2.INTER_AREA if area else transform.interpolation
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _horizontal_flip(transform: A.HorizontalFlip, image: np.ndarray, params: dict) -> np.ndarray:
    return cv2.flip(image, 1)


def _vertical_flip(transform: A.VerticalFlip, image: np.ndarray, params: dict) -> np.ndarray:
    return cv2.flip(image, 0)


def _rgb_shift(transform: A.RGBShift, image: np.ndarray, params: dict) -> np.ndarray:
    # albucore adds the truncated shift to uint8 images (through a saturating lookup table).
    shift = np.trunc(params["noise_map"]).tolist()
    return cv2.add(image, (*shift, 0.0))


def _pca_color_shift(transform: PCAColorShift, image: np.ndarray, params: dict) -> np.ndarray:
    return transform.apply(image, **params)


# Pixel kernels by transform class (exact class: a subclass may change what `apply` does).
# A kernel maps (transform, uint8 image, sampled params) to what `transform.apply` returns.
KERNELS: dict[type, Callable[[Any, np.ndarray, dict], np.ndarray]] = {
    A.RandomResizedCrop: _resized_crop,
    A.Resize: _resized,
    A.HorizontalFlip: _horizontal_flip,
    A.VerticalFlip: _vertical_flip,
    A.RGBShift: _rgb_shift,
    PCAColorShift: _pca_color_shift,
}


class ChainRunner:
    """Runs a Compose on one image, with kernels where `kernels` has one for a transform."""

    def __init__(self, compose: A.Compose, kernels: dict[type, Callable]):
        self.compose = compose
        self.steps = [(step, kernels.get(type(step))) for step in compose.transforms]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not self.compose.py_random.random() < self.compose.p:  # Compose's own draw comes first
            return image
        for transform, kernel in self.steps:
            if kernel is None:
                image = transform(image=image)["image"]
            elif transform.should_apply():
                image = kernel(transform, image, _sample_params(transform, image))
        return image


def _sample_params(transform: BasicTransform, image: np.ndarray) -> dict[str, Any]:
    """The parameters `BasicTransform.__call__` samples, drawn in the same order."""
    data = {"image": image}
    params = transform.update_transform_params(transform.get_params(), data)
    params.update(transform.get_params_dependent_on_data(params, data))
    return params
