"""The augmentation preview: a PNG grid of training images and augmented views of them.

`preview_stage` is the pipeline's preview stage; `write_preview` draws the grid for any images
and Compose, and `applied_transforms` labels each view with the transforms that fired.
"""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import numpy as np
from matplotlib.figure import Figure

from pipeline.atomic import write_with
from pipeline.augment.chains import build_train_transform, color_pca_for
from pipeline.augment.images import check_images
from pipeline.augment.seeding import Reseeder

if TYPE_CHECKING:
    from pipeline.config import AugmentConfig
    from pipeline.data.prepare import PreparedData

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


def preview_stage(augment: AugmentConfig, data: PreparedData, image_size: int, *, seed: int,
                  path: Path) -> Path:
    """The preview stage: the training chain applied to a few random training images, as a PNG.

    The Compose is the one training builds (`build_train_transform`, with the colour PCA fitted
    on the training split when the chain uses it), so the grid shows what the model will see.

    Args:
        augment: the chain and how many images (`preview_images`) and views per image
            (`preview_views`) to show.
        data: the data stage's output; only its training split is read.
        image_size: the model's input side (the augmented views' size).
        seed: the training seed; it fits the colour PCA, picks the images and seeds the views.
        path: where to write the PNG.

    Returns:
        The path written.

    Raises:
        ValueError: On an invalid chain or image size, or a training split that is not uint8
            (N, H, W, 3).
    """
    images, labels = data.images("train"), data.labels("train")
    color_pca = color_pca_for(augment.chain, images, seed=seed)
    transform = build_train_transform(augment.chain, image_size, color_pca=color_pca)
    count = min(augment.preview_images, len(labels))
    chosen = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
    return write_preview(np.asarray(images[chosen]), labels[chosen], data.class_names,
                         transform, path, views=augment.preview_views, rows=count, seed=seed)


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
    (fewer rows if there are fewer images); the PNG is written atomically.

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

    Raises:
        ValueError: If images is not uint8 (N, H, W, 3), views or rows is below 1, or there is
            not one label per image.
    """
    check_images(images, "write_preview")
    if views < 1 or rows < 1 or len(labels) != len(images):
        raise ValueError(
            "write_preview needs views >= 1, rows >= 1 and one label per image. Received: "
            f"views={views}, rows={rows}, {len(labels)} labels for {len(images)} images."
        )
    picks = _pick_rows(np.asarray(labels), min(rows, len(images)), seed)
    recorder = copy.deepcopy(transform)
    recorder.save_applied_params = True
    reseed = Reseeder(recorder)
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
    return write_with(Path(path), lambda handle: figure.savefig(handle, format="png"))


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
