"""Training-time augmentation: albumentations chains, a dataset-level PCA colour shift,
a deterministic multi-threaded batch augmenter and a preview grid.

A chain is a preset name or a list of plain dicts, one per transform:

    [{"name": "RandomResizedCrop", "scale": [0.35, 1.0]}, {"name": "HorizontalFlip", "p": 0.5}]

`resolve_chain` validates it when the config loads; `build_train_transform` turns it into an
`A.Compose` whose output is always `image_size x image_size` uint8 RGB. Normalisation is not done
here: it lives inside the model, so what we augment is what a person would look at.

`BatchAugmenter` runs the common transforms (crops, resizes, flips, colour shifts) through
OpenCV kernels instead of albumentations' per-call dispatch, with the same sampled parameters
and bit-identical output; any other transform runs through albumentations.

Randomness: every image is augmented with random generators derived from
`(seed, epoch, index)` only (`seed_transform`), so an epoch is reproducible whatever the thread
scheduling or batch composition. Note that albumentations 2.0.8 `Compose(seed=s)` gives *every*
transform its own generator seeded with the same `s`, so transforms with the same `p` fire
together; we always share one generator pair across the whole chain instead.
"""

import copy
import difflib
import hashlib
import inspect
import io
import json
import os
import random
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure
from pydantic import Field

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations calls the network otherwise

import albumentations as A  # noqa: E402
from albumentations.core.transforms_interface import (  # noqa: E402
    BaseTransformInitSchema,
    BasicTransform,
)

# Presets are plain, YAML-friendly dicts. Output size parameters ("size" or "height"/"width") are
# left out: `build_train_transform` fills them with the model's image size.
PRESETS: dict[str, list[dict]] = {
    "none": [],
    "light": [
        {"name": "RandomResizedCrop", "scale": [0.7, 1.0], "ratio": [0.9, 1.1]},
        {"name": "HorizontalFlip", "p": 0.5},
    ],
    "standard": [
        {"name": "RandomResizedCrop", "scale": [0.35, 1.0], "ratio": [3 / 4, 4 / 3]},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "RGBShift", "r_shift_limit": 15, "g_shift_limit": 15, "b_shift_limit": 15,
         "p": 0.3},
        {"name": "PCAColorShift", "alpha_std": 0.1, "p": 0.5},
    ],
    "strong": [
        {"name": "RandomResizedCrop", "scale": [0.25, 1.0], "ratio": [3 / 4, 4 / 3]},
        {"name": "HorizontalFlip", "p": 0.5},
        {"name": "Affine", "rotate": [-15, 15], "shear": [-8, 8], "scale": [0.9, 1.1],
         "border_mode": cv2.BORDER_REFLECT_101, "p": 0.5},
        {"name": "RandomBrightnessContrast", "brightness_limit": 0.2, "contrast_limit": 0.2,
         "p": 0.5},
        {"name": "RGBShift", "r_shift_limit": 20, "g_shift_limit": 20, "b_shift_limit": 20,
         "p": 0.3},
        {"name": "PCAColorShift", "alpha_std": 0.2, "p": 0.5},
        {"name": "CoarseDropout", "num_holes_range": [1, 3], "hole_height_range": [0.1, 0.25],
         "hole_width_range": [0.1, 0.25], "fill": 0, "p": 0.5},
    ],
}

# Compositions that take a nested chain under "transforms".
_COMPOSITIONS = ("OneOf", "SomeOf", "Sequential", "RandomOrder")
# Base classes and transforms that make no sense in a config-driven uint8 training chain.
_REJECTED = {
    "BaseCompose": "it is an abstract base class",
    "BasicTransform": "it is an abstract base class",
    "DualTransform": "it is an abstract base class",
    "ImageOnlyTransform": "it is an abstract base class",
    "Transform3D": "it is an abstract base class",
    "Compose": "the chain itself is the Compose",
    "ReplayCompose": "the chain itself is the Compose",
    "Lambda": "it cannot be written in a config file",
    "Normalize": "normalisation lives inside the model (the chain must output uint8)",
    "ToFloat": "normalisation lives inside the model (the chain must output uint8)",
}
# Transforms that only change the size: left out of preview labels.
_SIZING = {"Resize", "LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "CenterCrop"}
_SHORT_LABELS = {
    "HorizontalFlip": "flip",
    "VerticalFlip": "vflip",
    "RGBShift": "rgb",
    "PCAColorShift": "pca",
    "RandomBrightnessContrast": "bri/con",
    "CoarseDropout": "cutout",
    "Affine": "affine",
}
# Transforms that always output the size they are given, and ones that keep the input size.
_SIZE_SETTING = (A.RandomResizedCrop, A.RandomSizedCrop, A.Resize, A.RandomCrop, A.CenterCrop)
_SIZE_PRESERVING = (A.ImageOnlyTransform, A.HorizontalFlip, A.VerticalFlip, A.CoarseDropout,
                    A.Affine)  # Affine only without fit_output
_VALIDATION_SIZE = 32  # stands in for the model size when a chain is validated without one


# ----------------------------------------------------------------------------------------------
# Dataset-level colour PCA (AlexNet "fancy PCA")


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
        return _write_atomically(Path(path), json.dumps(self.to_dict(), indent=2).encode())

    @classmethod
    def load(cls, path: str | Path) -> "ColorPCA":
        """Reads components written by `save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_color_pca(images: np.ndarray, *, max_pixels: int = 1_000_000, seed: int = 0) -> ColorPCA:
    """PCA of the RGB colours of (a random subsample of) the pixels of the training images.

    Fit it on the training split only, so nothing about validation or test colours leaks in.
    Unlike `A.FancyPCA`, which recomputes the PCA of every single image, the components here
    describe the whole dataset, as in AlexNet (Krizhevsky et al., 2012, section 4.1).

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
    _check_images(images, "fit_color_pca")
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
            raise ValueError(_missing_pca_message("PCAColorShift was called"))
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


def _missing_pca_message(where: str) -> str:
    return (
        f"{where} without a ColorPCA. Fit one on the training split, "
        "color_pca = fit_color_pca(train_images), and pass it: "
        "build_train_transform(chain, image_size, color_pca=color_pca); "
        "or remove PCAColorShift from the chain."
    )


# ----------------------------------------------------------------------------------------------
# Chains: validation and construction


def resolve_chain(chain: str | list[dict]) -> list[dict]:
    """Expands a preset name and validates every transform name and parameter.

    Output size parameters (`size` for RandomResizedCrop, `height`/`width` for Resize,
    RandomCrop, ...) may be left out: `build_train_transform` fills them with the image size.
    `OneOf`, `SomeOf`, `Sequential` and `RandomOrder` take a nested chain under "transforms".

    Args:
        chain: a key of PRESETS, or a list of dicts {"name": TransformName, **parameters}.

    Returns:
        A deep copy of the chain as a list of dicts, safe to mutate and to save as YAML.

    Raises:
        ValueError: On an unknown preset, transform or parameter (naming it and the closest
            valid names) or on a parameter value the transform's schema rejects.

    Example:
        >>> resolve_chain([{"name": "HorizontalFlp"}])
        Traceback (most recent call last):
        ValueError: Unknown transform 'HorizontalFlp' at chain[0]. Did you mean: HorizontalFlip? ...
    """
    if isinstance(chain, str):
        if chain not in PRESETS:
            raise ValueError(
                f"Unknown augmentation preset '{chain}'.{_did_you_mean(chain, PRESETS)} "
                f"Expected one of: {', '.join(PRESETS)}, or a list of transform dicts."
            )
        chain = PRESETS[chain]
    specs = _check_chain(chain, "chain")
    for i, spec in enumerate(specs):
        _instantiate(spec, _VALIDATION_SIZE, None, f"chain[{i}]")  # pydantic checks the values
    return specs


def build_train_transform(
    chain: str | list[dict],
    image_size: int,
    *,
    color_pca: ColorPCA | None = None,
    seed: int | None = None,
) -> A.Compose:
    """Builds the training Compose: the chain, then a Resize that guarantees the output size.

    The Resize is left out when the chain provably ends at `image_size` (e.g. every preset:
    RandomResizedCrop then flips, colour and dropout). Crops that need a large enough input
    (RandomCrop, CenterCrop) fail on smaller images: prefer RandomResizedCrop, which upscales.

    Args:
        chain: preset name or list of transform dicts (see `resolve_chain`).
        image_size: side of the square uint8 RGB output.
        color_pca: components for PCAColorShift; required when the chain names it.
        seed: seeds the Compose's (single, shared) random generators; BatchAugmenter reseeds
            them per image anyway.

    Returns:
        An `A.Compose` mapping uint8 (H, W, 3) to uint8 (image_size, image_size, 3).

    Raises:
        ValueError: On an invalid chain or image size, or PCAColorShift without a ColorPCA.
    """
    _check_image_size(image_size)
    specs = resolve_chain(chain)
    if color_pca is None and "PCAColorShift" in _names(specs):
        raise ValueError(_missing_pca_message("The augmentation chain names PCAColorShift but "
                                              "build_train_transform was called"))
    transforms = [
        _instantiate(spec, image_size, color_pca, f"chain[{i}]") for i, spec in enumerate(specs)
    ]
    if not _always_ends_at(transforms, image_size):
        transforms.append(_resize(image_size))
    return _compose(transforms, seed)


def build_eval_transform(image_size: int) -> A.Compose:
    """Deterministic evaluation transform: Resize to `image_size` (area filter when shrinking).

    Images arrive already square and centre-cropped, so nothing else is needed.
    """
    _check_image_size(image_size)
    return _compose([_resize(image_size)], seed=0)


def _compose(transforms: list, seed: int | None) -> A.Compose:
    compose = A.Compose(transforms, seed=seed)
    # Compose(seed=s) seeds every transform with the same s, correlating their decisions; one
    # shared generator pair gives independent draws.
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return compose


def _always_ends_at(transforms: list, image_size: int) -> bool:
    """Whether the chain provably outputs image_size x image_size, making a final Resize moot.

    Even a no-op Resize costs ~14 us of albumentations dispatch per image (~12% of the
    standard preset), so it is left out when the last size-setting transform always fires with
    the right size and only size-preserving transforms follow it.
    """
    for transform in reversed(transforms):
        if isinstance(transform, _SIZE_PRESERVING) and not getattr(transform, "fit_output", False):
            continue
        if transform.p < 1 or not isinstance(transform, _SIZE_SETTING):
            return False
        size = getattr(transform, "size", None) or (transform.height, transform.width)
        return tuple(size) == (image_size, image_size)
    return False


def _resize(image_size: int) -> A.Resize:
    return A.Resize(height=image_size, width=image_size, area_for_downscale="image")


def _check_chain(chain: Any, where: str) -> list[dict]:
    if not isinstance(chain, list | tuple):
        expected = "a preset name or a list" if where == "chain" else "a list"
        raise ValueError(
            f"{where} must be {expected} of transform dicts. "
            f"Received: {type(chain).__name__} {chain!r}."
        )
    return [_check_spec(spec, f"{where}[{i}]") for i, spec in enumerate(chain)]


def _check_spec(spec: Any, where: str) -> dict:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"{where} must be a dict with a 'name' key, e.g. {{'name': 'HorizontalFlip', "
            f"'p': 0.5}}. Received: {spec!r}."
        )
    spec = copy.deepcopy(spec)
    cls = _transform_class(spec["name"], where)
    valid = _parameter_names(cls)
    for key in spec.keys() - {"name"}:
        if key not in valid:
            raise ValueError(
                f"Unknown parameter '{key}' for {spec['name']} at {where}."
                f"{_did_you_mean(key, valid)} Valid parameters: {', '.join(sorted(valid))}. "
                f"Received: {spec!r}."
            )
    if spec["name"] in _COMPOSITIONS:
        spec["transforms"] = _check_chain(spec.get("transforms"), f"{where}.transforms")
    return spec


def _transform_class(name: str, where: str) -> type:
    classes = _transform_classes()
    if name in _REJECTED:
        raise ValueError(f"Transform '{name}' at {where} is not allowed: {_REJECTED[name]}.")
    if name not in classes:
        raise ValueError(
            f"Unknown transform '{name}' at {where}.{_did_you_mean(name, classes)} Expected an "
            "albumentations transform name (e.g. HorizontalFlip, RandomResizedCrop) or "
            "PCAColorShift."
        )
    return classes[name]


@cache
def _transform_classes() -> dict[str, type]:
    classes = {
        name: obj
        for name, obj in vars(A).items()
        if inspect.isclass(obj)
        and (issubclass(obj, BasicTransform) or name in _COMPOSITIONS)
        and name not in _REJECTED
    }
    return classes | {"PCAColorShift": PCAColorShift}


def _parameter_names(cls: type) -> set[str]:
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "strict"}
    if cls is PCAColorShift:
        names.discard("color_pca")  # injected by build_train_transform
    return names


def _did_you_mean(word: str, choices: Any) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def _names(specs: list[dict]) -> set[str]:
    """Every transform name in a (validated) chain, nested ones included."""
    names = {spec["name"] for spec in specs}
    for spec in specs:
        if spec["name"] in _COMPOSITIONS:
            names |= _names(spec["transforms"])
    return names


def _instantiate(spec: dict, image_size: int, color_pca: ColorPCA | None, where: str) -> Any:
    name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    cls = _transform_classes()[name]
    if name in _COMPOSITIONS:
        params["transforms"] = [
            _instantiate(child, image_size, color_pca, f"{where}.transforms[{i}]")
            for i, child in enumerate(params["transforms"])
        ]
        if not 0 <= params.get("p", 0.5) <= 1:  # compositions have no pydantic schema
            raise ValueError(f"p of {name} at {where} must be in [0, 1]. Received: {spec!r}.")
    else:
        params = _default_output_size(cls, params, image_size) | {"strict": True}
    if cls is PCAColorShift:
        params["color_pca"] = color_pca
    try:
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Invalid parameters for {name} at {where}: {error}\nReceived: {spec!r}."
        ) from error


def _default_output_size(cls: type, params: dict, image_size: int) -> dict:
    signature = inspect.signature(cls.__init__).parameters
    required = {name for name, p in signature.items() if p.default is inspect.Parameter.empty}
    if "size" in required and "size" not in params:
        params["size"] = (image_size, image_size)
    for side in ("height", "width"):
        if side in required and side not in params:
            params[side] = image_size
    return params


def _check_image_size(image_size: Any) -> None:
    is_int = isinstance(image_size, int | np.integer) and not isinstance(image_size, bool)
    if not is_int or image_size < 1:
        raise ValueError(
            f"image_size must be a positive int (the model's input side). "
            f"Received: image_size={image_size!r}."
        )


# ----------------------------------------------------------------------------------------------
# Kernels: the pixel work of common transforms, without albumentations' per-call dispatch
#
# A plain `compose(image=image)` call spends most of its time in Python dispatch (data checks,
# dict plumbing, albucore's per-channel lookup tables), not in pixels. `_ChainRunner` walks the
# Compose itself: every transform still decides whether it fires and samples its parameters
# with its own `should_apply`, `get_params` and `get_params_dependent_on_data`, from the same
# shared generators and in the same order as Compose, so the output is bit-identical to
# `compose(image=image)["image"]`; a kernel then does the pixel work in one OpenCV call. A
# transform without a kernel runs through albumentations itself.
#
# Per image, not per batch: on 128 px uint8 images a batch-wide masked flip or an int16
# add-and-clip costs 6-17 times what cv2.flip / cv2.add cost image by image (numpy makes several
# full passes and widens the dtype; OpenCV makes one saturating SIMD pass).


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


class _ChainRunner:
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


# ----------------------------------------------------------------------------------------------
# Deterministic batch augmentation


def seed_transform(transform: A.Compose, seed: int, epoch: int, index: int) -> None:
    """Seeds a transform for one image exactly as `BatchAugmenter` does.

    Use it to reproduce one augmented image: after `seed_transform(t, seed, epoch, index)`,
    `t(image=images[index])` equals what `BatchAugmenter(t, seed=seed)` produced for that image
    in that epoch.
    """
    _Reseeder(transform)(seed, epoch, index)


class _Reseeder:
    """Reseeds, in place and from (seed, epoch, index) only, the random state of a Compose.

    Albumentations 2.0.8 draws only from each transform's `random_generator` (numpy) and
    `py_random` (`random.Random`); it never touches the global `random` / `np.random` states, and
    its one use of OpenCV's RNG (`cv2.randn`, for gaussian AdditiveNoise) is seeded from
    `random_generator` right before. So one generator pair, installed once and shared by the
    whole chain, then reseeded per image, makes the output a function of (seed, epoch, index).
    """

    def __init__(self, transform: A.Compose):
        self._bits = np.random.PCG64()
        self._py_random = random.Random()
        transform.set_random_state(np.random.Generator(self._bits), self._py_random)

    def __call__(self, seed: int, epoch: int, index: int) -> None:
        # A cryptographic hash of the key: neighbouring indices get unrelated streams. (blake2b
        # costs a fifth of np.random.SeedSequence, which matters at ~100 us per image.)
        key = hashlib.blake2b(b"%d/%d/%d" % (seed, epoch, index), digest_size=40).digest()
        state, increment, py_seed = (
            int.from_bytes(part, "little") for part in (key[:16], key[16:32], key[32:])
        )
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": increment | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        self._py_random.seed(py_seed)


class BatchAugmenter:
    """Augments batches of images, reproducibly, in the calling thread or a small thread pool.

    Each image is augmented with generators derived from (seed, epoch, dataset index) only, so
    the same seed gives the same images whatever `num_threads`, the thread scheduling or the way
    the epoch is cut into batches, and every epoch differs. Each thread owns a deep copy of the
    Compose (albumentations transforms keep per-call state and are not thread-safe).

    Transforms with a kernel in `kernels` (crops, resizes, flips, RGB and PCA colour shifts) skip
    albumentations' per-call dispatch: they sample their parameters exactly as albumentations
    does and do the pixel work in one OpenCV call. The images are bit-identical to calling the
    Compose after `seed_transform`, only faster (about 1.4x on the standard preset at 128 px).

    Args:
        transform: e.g. from `build_train_transform`; copied, the original is not touched.
        seed: non-negative int.
        num_threads: worker threads (1 runs in the calling thread). Threads overlap only the
            OpenCV calls and every hand-over of the GIL costs time: on 2 cores with 128 px
            flowers and the standard preset, 2 threads were 10-60% slower than 1; they pay off
            from about 224 px outputs, on otherwise idle cores.
        kernels: pixel kernels by transform class; `{}` runs every transform through
            albumentations (same images, slower).

    Example:
        >>> with BatchAugmenter(build_train_transform("light", 96), seed=0) as augment:
        ...     batch = augment(images[order[:64]], order[:64], epoch=0)
    """

    def __init__(self, transform: A.Compose, *, seed: int, num_threads: int = 1,
                 kernels: dict[type, Callable] = KERNELS):
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int. Received: seed={seed!r}.")
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(
                f"num_threads must be a positive int. Received: num_threads={num_threads!r}."
            )
        self.seed = int(seed)
        self.num_threads = num_threads
        # One Compose per worker: albumentations transforms keep per-call state.
        self._workers = [_Worker(copy.deepcopy(transform), kernels) for _ in range(num_threads)]
        self._pool = ThreadPoolExecutor(num_threads, "augment") if num_threads > 1 else None

    def __call__(self, images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        """Augments `images`, whose dataset indices are `indices`, for `epoch`.

        Args:
            images: uint8 (N, H, W, 3), e.g. a np.memmap slice.
            indices: (N,) non-negative dataset indices of the images (they key the randomness).
            epoch: non-negative epoch number.

        Returns:
            uint8 (N, S, S, 3) augmented images.

        Raises:
            ValueError: On a bad shape, dtype, index or epoch.
        """
        indices = _check_batch(images, indices, epoch)
        keys = [(self.seed, epoch, int(index)) for index in indices]
        first = self._workers[0].augment(images[0], keys[0])  # its shape sizes the batch
        batch = np.empty((len(keys), *first.shape), dtype=np.uint8)
        batch[0] = first
        chunks = np.array_split(np.arange(1, len(keys)), self.num_threads)
        jobs = [(worker, chunk) for worker, chunk in zip(self._workers, chunks, strict=True)
                if len(chunk)]
        if self._pool is None:
            for worker, chunk in jobs:
                worker.augment_into(batch, images, keys, chunk)
        else:
            futures = [self._pool.submit(worker.augment_into, batch, images, keys, chunk)
                       for worker, chunk in jobs]
            for future in futures:
                future.result()  # re-raises a worker's exception here
        return batch

    def close(self) -> None:
        """Stops the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "BatchAugmenter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Worker:
    """A Compose with its own reseeder and runner; used by one thread at a time."""

    def __init__(self, transform: A.Compose, kernels: dict[type, Callable]):
        self.reseed = _Reseeder(transform)
        self.run = _ChainRunner(transform, kernels)

    def augment(self, image: np.ndarray, key: tuple[int, int, int]) -> np.ndarray:
        self.reseed(*key)
        augmented = self.run(np.ascontiguousarray(image))
        if augmented.dtype != np.uint8 or augmented.ndim != 3 or augmented.shape[-1] != 3:
            raise ValueError(
                "The augmentation chain must return uint8 (S, S, 3) images. Received: "
                f"dtype={augmented.dtype}, shape={augmented.shape} for (seed, epoch, index)={key}."
            )
        return augmented

    def augment_into(self, batch: np.ndarray, images: np.ndarray, keys: list[tuple],
                     positions: np.ndarray) -> None:
        for position in positions:
            batch[position] = self.augment(images[position], keys[position])


def _check_images(images: Any, where: str) -> None:
    if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4
            or images.shape[-1] != 3 or len(images) == 0):
        raise ValueError(
            f"{where} expects a non-empty uint8 array of RGB images (N, H, W, 3). Received: "
            f"{type(images).__name__} dtype={getattr(images, 'dtype', None)} "
            f"shape={getattr(images, 'shape', None)}. Expand grey images to 3 channels first."
        )


def _check_batch(images: np.ndarray, indices: Any, epoch: int) -> np.ndarray:
    _check_images(images, "BatchAugmenter")
    indices = np.asarray(indices)
    if indices.shape != (len(images),) or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            "indices must be integer dataset indices, one per image. Received: "
            f"indices dtype={indices.dtype} shape={indices.shape} for {len(images)} images."
        )
    if indices.min() < 0 or not isinstance(epoch, int | np.integer) or epoch < 0:
        raise ValueError(
            "indices and epoch must be non-negative. "
            f"Received: min index={indices.min()}, epoch={epoch!r}."
        )
    return indices


# ----------------------------------------------------------------------------------------------
# Preview


def applied_transforms(result: dict[str, Any]) -> list[str]:
    """Short labels of the transforms that actually fired on one image, in order.

    Sizing-only transforms (Resize, ...) are left out; a RandomResizedCrop reads "crop 62%"
    (the share of the input area it kept).

    Args:
        result: the dict returned by calling a Compose built with `save_applied_params=True`.

    Raises:
        ValueError: If the Compose did not record its applied transforms.
    """
    if "applied_transforms" not in result:
        raise ValueError(
            "The result has no 'applied_transforms'. Set `transform.save_applied_params = True` "
            f"(or build with A.Compose(..., save_applied_params=True)). Received keys: "
            f"{sorted(result)}."
        )
    return [_short_label(name, params) for name, params in result["applied_transforms"]
            if name not in _SIZING]


def _short_label(name: str, params: dict[str, Any]) -> str:
    if "crop_coords" in params and "shape" in params:
        x_min, y_min, x_max, y_max = params["crop_coords"]
        kept = (x_max - x_min) * (y_max - y_min) / (params["shape"][0] * params["shape"][1])
        return f"crop {kept:.0%}"
    return _SHORT_LABELS.get(name, name)


def write_preview(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    transform: A.Compose,
    path: Path,
    *,
    views: int = 5,
    rows: int = 6,
    seed: int = 0,
) -> Path:
    """Draws a PNG grid: per row a training image, then `views` augmentations of it.

    Each augmented view is titled with the transforms that fired. Rows cycle through the classes
    (a random image of each). The figure is `(views + 1) * 160` px wide and `rows * 190` px tall
    (fewer rows if there are fewer images); the PNG is written atomically (tmp + os.replace).

    Args:
        images: uint8 (N, H, W, 3) training images.
        labels: (N,) integer class ids.
        class_names: name of each class id.
        transform: the training Compose (copied; the original is not touched).
        path: where to write the PNG.
        views: augmented versions per image.
        rows: number of images.
        seed: picks the images and seeds the augmentations.

    Returns:
        The path written.
    """
    _check_images(images, "write_preview")
    if views < 1 or rows < 1 or len(labels) != len(images):
        raise ValueError(
            "write_preview needs views >= 1, rows >= 1 and one label per image. Received: "
            f"views={views}, rows={rows}, {len(labels)} labels for {len(images)} images."
        )
    picks = _pick_rows(np.asarray(labels), min(rows, len(images)), seed)
    recorder = copy.deepcopy(transform)
    recorder.save_applied_params = True
    reseed = _Reseeder(recorder)
    figure = Figure(figsize=((views + 1) * 1.6, len(picks) * 1.9), dpi=100)
    axes = figure.subplots(len(picks), views + 1, squeeze=False)
    for row, index in enumerate(picks):
        image = np.ascontiguousarray(images[index])
        name = class_names[int(labels[index])]
        _show(axes[row, 0], image, f"{name}\noriginal {image.shape[0]}px", bold=True)
        for view in range(views):
            reseed(seed, view, int(index))
            result = recorder(image=image)
            _show(axes[row, view + 1], result["image"], ", ".join(applied_transforms(result)))
    figure.tight_layout(pad=0.3)
    buffer = _figure_png(figure)
    return _write_atomically(Path(path), buffer)


def _pick_rows(labels: np.ndarray, rows: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    picks = []
    while len(picks) < rows:
        for members in by_class:
            if members and len(picks) < rows:
                picks.append(members.pop())
    return picks


def _show(axis: Any, image: np.ndarray, title: str, *, bold: bool = False) -> None:
    axis.imshow(image)
    # 30 characters fill a 160 px cell at 6.5 pt: at most two lines, clear of the row above.
    axis.set_title(textwrap.fill(title or "(none)", 30), fontsize=6.5,
                   fontweight="bold" if bold else "normal")
    axis.axis("off")


def _figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
