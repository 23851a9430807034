"""Augmentation chains: presets, validation, and the train and eval Composes built from them.

A chain is a preset name or a list of plain dicts, one per transform:

    [{"name": "RandomResizedCrop", "scale": [0.35, 1.0]}, {"name": "HorizontalFlip", "p": 0.5}]

`resolve_chain` validates it when the config loads; `build_train_transform` turns it into an
`A.Compose` whose output is always `image_size x image_size` uint8 RGB. Normalisation is not done
here: it lives inside the model, so what we augment is what a person would look at.

Note that albumentations 2.0.8 `Compose(seed=s)` gives *every* transform its own generator
seeded with the same `s`, so transforms with the same `p` fire together; our Composes share one
generator pair across the whole chain instead (see `pipeline.augment.seeding`).
"""

import copy
import difflib
import inspect
import random
from functools import cache
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BasicTransform

from pipeline.augment.color_pca import (
    ColorPCA,
    PCAColorShift,
    fit_color_pca,
    missing_pca_message,
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
# Transforms that always output the size they are given, and ones that keep the input size.
_SIZE_SETTING = (A.RandomResizedCrop, A.RandomSizedCrop, A.Resize, A.RandomCrop, A.CenterCrop)
_SIZE_PRESERVING = (A.ImageOnlyTransform, A.HorizontalFlip, A.VerticalFlip, A.CoarseDropout,
                    A.Affine)  # Affine only without fit_output
_VALIDATION_SIZE = 32  # stands in for the model size when a chain is validated without one


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
        raise ValueError(missing_pca_message("The augmentation chain names PCAColorShift but "
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


def color_pca_for(chain: str | list[dict], train_images: np.ndarray, *,
                  seed: int) -> ColorPCA | None:
    """The colour PCA `build_train_transform` needs for `chain`: fitted only if the chain uses it.

    AlexNet's PCA colour shift follows the principal components of the training pixels, so fit
    it on the training split only.

    Args:
        chain: preset name or list of transform dicts (see `resolve_chain`).
        train_images: uint8 (N, H, W, 3) training images; a np.memmap is read only where sampled.
        seed: seeds the pixel subsample (see `fit_color_pca`).

    Returns:
        The fitted ColorPCA when the chain names PCAColorShift (nested ones included), else None.

    Raises:
        ValueError: On an invalid chain, or on images that are not uint8 (N, H, W, 3).

    Example:
        >>> color_pca = color_pca_for("standard", data.images("train"), seed=0)
        >>> transform = build_train_transform("standard", 224, color_pca=color_pca)
    """
    if "PCAColorShift" not in _names(resolve_chain(chain)):
        return None
    return fit_color_pca(np.asarray(train_images), seed=seed)


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
