"""The data stage: any source -> decoded square RGB arrays split into train/dev/test.

Whatever the source (Fashion-MNIST IDX files, the user's folder, a tfds dataset), the stage
writes the same thing into `runs/<name>/data/`: `<split>_images.npy` (uint8, N x S x S x 3),
`<split>_labels.npy`, `dataset.json` (class names in training order) and the data report.
Every later stage reads only these files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import DataConfig
from pipeline.data.folder import SkippedFile, scan_image_folder
from pipeline.data.images import ImageDecodeError, load_image, resize_square
from pipeline.data.report import build_data_report, format_data_report, write_data_report
from pipeline.data.splits import assign_splits, default_split_ratios
from pipeline.stages import atomic_path

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class SourceData:
    """Everything a source yields before splitting; `given_splits` is "" where none is given."""

    class_names: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    keys: list[str]
    given_splits: list[str]
    description: str
    extras: dict


@dataclass(frozen=True)
class PreparedData:
    """The data stage's output folder, read lazily (images are memory-mapped)."""

    directory: Path
    class_names: tuple[str, ...]

    def images(self, split: str) -> np.ndarray:
        return np.load(self.directory / f"{split}_images.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.directory / f"{split}_labels.npy")


def load_prepared(directory: Path) -> PreparedData:
    """Opens a data stage output folder.

    Raises:
        FileNotFoundError: the data stage has not run for this run folder.
    """
    info = directory / "dataset.json"
    if not info.is_file():
        raise FileNotFoundError(f"No prepared data in '{directory}'. Run the data stage first: "
                                f"make data (or python -m pipeline data --config ...).")
    return PreparedData(directory, tuple(json.loads(info.read_text())["class_names"]))


def prepare_data(config: DataConfig, output_dir: Path) -> dict:
    """Reads the configured source, splits it, writes arrays and the data report.

    Args:
        config: the data section of the experiment config.
        output_dir: the folder to create (replaced atomically when everything is written).

    Returns:
        The data report as a dict.
    """
    source = read_source(config)
    if len(source.class_names) < 2:
        raise ValueError(f"Found {len(source.class_names)} class(es) in {source.description}: "
                         f"{list(source.class_names)}. A classifier needs at least two classes "
                         f"(one sub-folder per class).")
    keep = _cap_examples(source.keys, config.max_examples)
    splits = _assign(source, keep, config.split_ratios)
    labels_by_split = {}
    with atomic_path(output_dir) as folder:
        folder.mkdir()
        for split in SPLITS:
            chosen = np.flatnonzero(splits == split)
            np.save(folder / f"{split}_images.npy", source.images[chosen])
            np.save(folder / f"{split}_labels.npy", source.labels[chosen])
            labels_by_split[split] = source.labels[chosen]
        report = build_data_report(class_names=source.class_names,
                                   labels_by_split=labels_by_split,
                                   source=source.description, **source.extras)
        write_data_report(report, folder)
        (folder / "dataset.json").write_text(json.dumps({
            "class_names": list(source.class_names), "source": source.description,
            "image_size": config.image_size,
            "counts": {split: int(len(labels)) for split, labels in labels_by_split.items()},
        }, indent=2, ensure_ascii=False))
    print(format_data_report(report))
    return report


def read_source(config: DataConfig) -> SourceData:
    """Dispatches on `data.source`."""
    readers = {"fashion_mnist": _read_fashion_mnist, "folder": _read_folder, "tfds": _read_tfds}
    return readers[config.source](config)


def _read_fashion_mnist(config: DataConfig) -> SourceData:
    from pipeline.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    loaded = load_fashion_mnist(Path(config.path))
    images, labels, given = [], [], []
    for split, (split_images, split_labels) in loaded.items():
        images.append(_resize_all(split_images, config.image_size))
        labels.append(split_labels)
        given += [split] * len(split_labels)
    images = np.concatenate(images)
    return SourceData(CLASS_NAMES, images, np.concatenate(labels), _content_keys(images),
                      given, f"Fashion-MNIST ({config.path})",
                      {"image_sizes": [(28, 28)] * len(images)})


def _read_tfds(config: DataConfig) -> SourceData:
    from pipeline.data.tfds_source import SPLIT_NAMES, load_tfds

    if not config.tfds_name:
        raise ValueError("data.source is 'tfds' but data.tfds_name is empty. "
                         "Set it, e.g. data.tfds_name=tf_flowers.")
    loaded = load_tfds(config.tfds_name, Path(config.cache_dir) / "tfds", config.image_size)
    images, labels, given = [], [], []
    for split, (split_images, split_labels) in loaded["splits"].items():
        images.append(split_images)
        labels.append(split_labels)
        given += [SPLIT_NAMES.get(split, "")] * len(split_labels)
    images = np.concatenate(images)
    return SourceData(loaded["class_names"], images, np.concatenate(labels),
                      _content_keys(images), given, f"tfds:{config.tfds_name}", {})


def _read_folder(config: DataConfig) -> SourceData:
    # Decoding happens once, below; the scan checks headers, hashes and layout.
    scan = scan_image_folder(Path(config.path).expanduser(), on_bad_file=config.on_bad_file,
                             verify_decode=False, max_pixels=config.max_image_pixels)
    images = np.empty((len(scan.items), config.image_size, config.image_size, 3), np.uint8)
    usable, sizes, skipped = [], [], list(scan.skipped)
    for index, item in enumerate(tqdm(scan.items, desc="Decoding images", unit="img")):
        try:
            image = load_image(item.path, max_pixels=config.max_image_pixels)
        except ImageDecodeError as error:
            if config.on_bad_file == "error":
                raise
            skipped.append(SkippedFile(item.path, str(error)))
            continue
        sizes.append(image.shape[1::-1])
        images[index] = resize_square(image, config.image_size)
        usable.append(index)
    items = [scan.items[index] for index in usable]
    keys = [item.content_hash if config.split_by == "content" else item.relative_path
            for item in items]
    return SourceData(scan.class_names, images[usable],
                      np.array([item.label for item in items], np.int32), keys,
                      [item.given_split or "" for item in items], f"folder:{scan.root}",
                      {"skipped": skipped, "unsupported": scan.unsupported,
                       "duplicate_groups": scan.duplicate_groups,
                       "label_conflicts": scan.label_conflicts, "image_sizes": sizes,
                       "split_leaks": scan.split_leaks, "warnings": scan.warnings})


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([resize_square(image, size) for image in images])


def _content_keys(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def _cap_examples(keys: list[str], max_examples: int) -> np.ndarray:
    """Indices of the examples kept: all, or the `max_examples` with the lowest key hash."""
    if not max_examples or max_examples >= len(keys):
        return np.arange(len(keys))
    order = sorted(range(len(keys)), key=lambda i: hashlib.sha1(f"cap:{keys[i]}".encode()).digest())
    return np.sort(np.array(order[:max_examples]))


def _assign(source: SourceData, keep: np.ndarray, ratios: tuple[float, ...]) -> np.ndarray:
    """Each example's split: the given one, or a stable hash-based one.

    Examples with no given split get train/dev/test; when the source gives a test split but
    no dev split, its training examples are divided into train and dev.
    """
    given = np.array(source.given_splits, dtype=object)
    ratios = tuple(ratios) or default_split_ratios(len(keep))
    result = np.full(len(given), "", dtype=object)
    result[keep] = given[keep]
    keys, labels = np.array(source.keys, dtype=object), source.labels
    unassigned = keep[given[keep] == ""]
    if len(unassigned):
        result[unassigned] = assign_splits(list(keys[unassigned]), labels[unassigned], ratios)
    if "dev" not in set(given[keep]):
        train = keep[given[keep] == "train"]
        share = ratios[1] / (ratios[0] + ratios[1])
        result[train] = assign_splits(list(keys[train]), labels[train],
                                      (1.0 - share, share, 0.0), salt="dev")
    return result
