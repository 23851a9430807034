"""Where the benchmarks' images come from: flowers128 beside the project, through the product's
data stage, and images held in memory in the shape the product's stage functions read.

flowers128 (4,317 photos of 5 flower classes, 128 px) is kept outside the repository; every
benchmark that wants real photos reads `FLOWERS` and falls back or skips when it is absent.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.prepare import PreparedData, load_prepared, prepare_data

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers128"


@dataclass(frozen=True)
class ArrayData(PreparedData):
    """Prepared data held in memory, for the product's functions that take a `PreparedData`
    (`pipeline.train.cache_features`, `pipeline.augment.color_pca_for`).

    `images(split)` and `labels(split)` return the arrays given instead of reading the data
    stage's files; `directory` only says where they came from.

    Attributes:
        splits: {"train" | "dev" | "test": (uint8 (N, S, S, 3) images, (N,) int labels)}.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def images(self, split: str) -> np.ndarray:
        return self._split(split)[0]

    def labels(self, split: str) -> np.ndarray:
        return self._split(split)[1]

    def _split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self.splits:
            raise ValueError(f"These images in memory have no {split} split. Expected one of: "
                             f"{', '.join(self.splits)}. Received: split={split!r}.")
        return self.splits[split]


def train_images(images: np.ndarray, labels: np.ndarray | None = None) -> ArrayData:
    """Images (and labels; zeros when not given) in memory as the train split of prepared data,
    with one class name per label."""
    labels = np.zeros(len(images), int) if labels is None else np.asarray(labels)
    class_names = tuple(str(label) for label in range(int(labels.max(initial=0)) + 1))
    return ArrayData(Path("<memory>"), class_names, images.shape[1],
                     {"train": (images, labels)})


def load_flowers(root: Path, image_size: int, *, max_examples: int = 0) -> ArrayData:
    """Runs the product's data stage on a class-folder dataset and loads every split into memory.

    Args:
        root: one sub-folder per class, e.g. `FLOWERS`.
        image_size: the side the data stage stores the images at.
        max_examples: keep only this many images (0: all); for quick runs.

    Raises:
        ValueError: From the data stage, e.g. when a split would be empty (too few images).
    """
    config = DataConfig(source="folder", path=str(root), image_size=image_size,
                        max_examples=max_examples)
    with tempfile.TemporaryDirectory() as folder:
        prepare_data(config, Path(folder) / "data")
        prepared = load_prepared(Path(folder) / "data")
        splits = {split: (np.array(prepared.images(split)), prepared.labels(split))
                  for split in ("train", "dev", "test")}
    return ArrayData(root, prepared.class_names, prepared.image_size, splits)
