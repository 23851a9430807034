"""Training-time augmentation: albumentations chains, a dataset-level PCA colour shift,
a deterministic multi-threaded batch augmenter and a preview grid.

One module per concern:

- `chains`: presets, `resolve_chain`, `build_train_transform`, `build_eval_transform`, and
  `color_pca_for` (the colour PCA a chain needs).
- `color_pca`: `ColorPCA`, `fit_color_pca` and the `PCAColorShift` transform.
- `seeding`: `seed_transform`; every image's randomness comes from (seed, epoch, index) only.
- `kernels`: `KERNELS`, OpenCV pixel kernels that skip albumentations' per-call dispatch.
- `batch`: `BatchAugmenter`, reproducible batches in one thread or a small pool.
- `preview`: `preview_stage`, `write_preview` and `applied_transforms`.

    transform = build_train_transform("standard", 224, color_pca=color_pca_for(
        "standard", train_images, seed=0))
    with BatchAugmenter(transform, seed=0) as augment:
        batch = augment(train_images[:64], np.arange(64), epoch=0)

No module here sets `NO_ALBUMENTATIONS_UPDATE`: `pipeline/__init__.py`, which Python runs
before any of them, does, so albumentations never calls the network on import.
"""

from pipeline.augment.batch import BatchAugmenter
from pipeline.augment.chains import (
    PRESETS,
    build_eval_transform,
    build_train_transform,
    color_pca_for,
    resolve_chain,
)
from pipeline.augment.color_pca import ColorPCA, PCAColorShift, fit_color_pca
from pipeline.augment.kernels import KERNELS
from pipeline.augment.preview import applied_transforms, preview_stage, write_preview
from pipeline.augment.seeding import seed_transform

__all__ = [
    "KERNELS",
    "PRESETS",
    "BatchAugmenter",
    "ColorPCA",
    "PCAColorShift",
    "applied_transforms",
    "build_eval_transform",
    "build_train_transform",
    "color_pca_for",
    "fit_color_pca",
    "preview_stage",
    "resolve_chain",
    "seed_transform",
    "write_preview",
]
