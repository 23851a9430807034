"""The data stage: any source -> decoded square RGB arrays split into train/dev/test.

Whatever the source (Fashion-MNIST IDX files, the user's folder, a tfds dataset), the stage
writes the same thing into `runs/<name>/data/`: `<split>_images.npy` (uint8, N x S x S x 3),
`<split>_labels.npy`, `dataset.json` (class names in training order) and the data report.
Every later stage reads only these files, through memory maps.

A folder is decoded in a stream (`pipeline.data.stream`): a pool of threads decodes the photos
into fixed-size staging shards inside the output's temporary folder, and the split files are
then written shard by shard, so the stage's memory does not grow with the folder's size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.config import DataConfig
from pipeline.data.folder import SkippedFile, scan_image_folder
from pipeline.data.images import ImageDecodeError, load_square, resize_square
from pipeline.data.report import build_data_report, format_data_report, write_data_report
from pipeline.data.splits import SPLIT_NAMES, assign_splits, default_split_ratios
from pipeline.data.stream import (
    StagedImages,
    decode_in_stream,
    default_decode_threads,
    write_split_images,
)
from pipeline.errors import DataError, MissingInputError


@dataclass(frozen=True)
class SourceData:
    """Everything a source yields before splitting; `given_splits` is "" where none is given."""

    class_names: tuple[str, ...]
    images: np.ndarray | StagedImages
    labels: np.ndarray
    keys: list[str]
    given_splits: list[str]
    description: str
    extras: dict
    image_size: int
    notes: list[str]
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreparedData:
    """The data stage's output folder, read lazily.

    `images(split)` is a read-only memory map of `<split>_images.npy`: slicing or indexing it
    reads only the rows asked for, so no stage needs the split in memory. A stage that walks a
    whole split in batches and should not keep the pages it read (feature extraction) wraps it
    in `pipeline.data.stream.unmapped`, which reads row ranges with plain file reads.

    Attributes:
        directory: the folder.
        class_names: label i names `class_names[i]`.
        image_size: the side of the stored square images.
    """

    directory: Path
    class_names: tuple[str, ...]
    image_size: int

    def images(self, split: str) -> np.ndarray:
        return np.load(self.directory / f"{split}_images.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        return np.load(self.directory / f"{split}_labels.npy")

    def files(self, split: str) -> list[str] | None:
        """The image files of a split, in the order of its arrays; None for sources that are
        not files (Fashion-MNIST, tfds) or data prepared before files were recorded."""
        path = self.directory / "files.json"
        return json.loads(path.read_text(encoding="utf-8"))[split] if path.is_file() else None


def load_prepared(directory: Path) -> PreparedData:
    """Opens a data stage output folder.

    Raises:
        MissingInputError: the data stage has not run for this run folder.
    """
    info = directory / "dataset.json"
    if not info.is_file():
        raise MissingInputError(f"No prepared data in '{directory}'. Run the data stage first: "
                                f"make data (or python -m pipeline data --config ...).")
    dataset = json.loads(info.read_text())
    return PreparedData(directory, tuple(dataset["class_names"]), dataset["image_size"])


def prepare_data(config: DataConfig, output_dir: Path, *,
                 auto_size_range: tuple[int, int] = (32, 224)) -> dict:
    """Reads the configured source, splits it, writes arrays and the data report.

    Args:
        config: the data section of the experiment config.
        output_dir: the folder to create (replaced atomically when everything is written).
        auto_size_range: the backbone's (smallest, native) input size, which bounds
            `data.image_size: auto`.

    Returns:
        The data report as a dict.

    Raises:
        DataError: fewer than two classes, or a split that would be empty; the message says
            what to add.
    """
    with atomic_path(output_dir) as folder:
        folder.mkdir()
        source = read_source(config, auto_size_range, staging=folder / "staging")
        if len(source.class_names) < 2:
            raise DataError(f"Found {len(source.class_names)} class(es) in "
                            f"{source.description}: {list(source.class_names)}. A classifier "
                            f"needs at least two classes (one sub-folder per class).")
        keep = _cap_examples(source.keys, config.max_examples)
        splits, carved = _assign(source, keep, config.split_ratios)
        _require_every_split(splits, carved, source.description)
        write_split_images(folder, source.images, splits, SPLIT_NAMES,
                           (source.image_size, source.image_size, 3))
        shutil.rmtree(folder / "staging", ignore_errors=True)
        report = write_split_records(folder, source, splits, carved)
    print(format_data_report(report))
    return report


def write_split_records(folder: Path, source: SourceData, splits: np.ndarray,
                        carved: dict[str, float]) -> dict:
    """Everything of the split examples but their images: `<split>_labels.npy`, `files.json`,
    the data report and `dataset.json`.

    Args:
        folder: the data stage's (temporary) output folder.
        source: what the source yielded.
        splits: each example's split, "" where not kept (`_assign`).
        carved: the splits carved from the given train split, and their shares.

    Returns:
        The data report as a dict.
    """
    labels_by_split = {}
    for split in SPLIT_NAMES:
        chosen = np.flatnonzero(splits == split)
        np.save(folder / f"{split}_labels.npy", source.labels[chosen])
        labels_by_split[split] = source.labels[chosen]
    if source.files:  # the export checks the model from these files' bytes
        (folder / "files.json").write_text(json.dumps(
            {split: [source.files[index] for index in np.flatnonzero(splits == split)]
             for split in SPLIT_NAMES}, ensure_ascii=False), encoding="utf-8")
    report = build_data_report(class_names=source.class_names, labels_by_split=labels_by_split,
                               source=source.description, **source.extras,
                               notes=[*source.notes, *_carve_notes(carved)])
    write_data_report(report, folder)
    (folder / "dataset.json").write_text(json.dumps({
        "class_names": list(source.class_names), "source": source.description,
        "image_size": source.image_size,
        "counts": {split: int(len(labels)) for split, labels in labels_by_split.items()},
    }, indent=2, ensure_ascii=False))
    return report


def auto_image_size(short_sides: list[int], size_range: tuple[int, int]) -> int:
    """The stored and model input size that `image_size: auto` picks for these photos.

    Small photos are upscaled by about 1.25x (flowers128's 128 px photos: 160 px, which beat
    128-320 px on dev there); ordinary photos get the backbone's native size, since a smaller
    input cost 1.6-4.6 test points on folders of 300-500 px photos. Multiples of 32 suit every
    backbone's strides.

    Args:
        short_sides: the shorter side of each photo, in pixels.
        size_range: the backbone's (smallest, native) input size.

    Returns:
        A multiple of 32 within `size_range` (the native size when nothing is known).
    """
    smallest, native = size_range
    if not short_sides:
        return native
    wanted = 32 * round(1.25 * float(np.median(short_sides)) / 32)
    return int(min(native, max(smallest, wanted)))


def read_source(config: DataConfig, auto_size_range: tuple[int, int] = (32, 224), *,
                staging: Path) -> SourceData:
    """Dispatches on `data.source`; a folder's images are decoded into shards in `staging`."""
    if config.source == "folder":
        return _read_folder(config, auto_size_range, staging)
    readers = {"fashion_mnist": _read_fashion_mnist, "tfds": _read_tfds}
    return readers[config.source](config, auto_size_range)


def _stored_size(config: DataConfig, short_sides: list[int],
                 size_range: tuple[int, int]) -> tuple[int, list[str]]:
    """`data.image_size`, resolved, with a note saying how when it was "auto"."""
    if config.image_size != "auto":
        return config.image_size, []
    size = auto_image_size(short_sides, size_range)
    if not short_sides:
        return size, [f"Image size {size} px (data.image_size: auto): the backbone's native "
                      "size, as the photo sizes are not known before decoding."]
    median = int(np.median(short_sides))
    return size, [f"Image size {size} px (data.image_size: auto): the photos' median shorter "
                  f"side is {median} px; auto takes about 1.25x that, within the backbone's "
                  f"{size_range[0]}-{size_range[1]} px."]


def _read_fashion_mnist(config: DataConfig, size_range: tuple[int, int]) -> SourceData:
    from pipeline.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    loaded = load_fashion_mnist(Path(config.path))
    image_size, notes = _stored_size(config, [28], size_range)
    images, labels, given = [], [], []
    for split, (split_images, split_labels) in loaded.items():
        images.append(_resize_all(split_images, image_size))
        labels.append(split_labels)
        given += [split] * len(split_labels)
    images = np.concatenate(images)
    return SourceData(CLASS_NAMES, images, np.concatenate(labels), _content_keys(images),
                      given, f"Fashion-MNIST ({config.path})",
                      {"image_sizes": [(28, 28)] * len(images)}, image_size, notes)


def _read_tfds(config: DataConfig, size_range: tuple[int, int]) -> SourceData:
    from pipeline.data.tfds_source import TFDS_SPLITS, load_tfds

    if not config.tfds_name:
        raise DataError("data.source is 'tfds' but data.tfds_name is empty. "
                         "Set it, e.g. data.tfds_name=tf_flowers.")
    image_size, notes = _stored_size(config, [], size_range)
    loaded = load_tfds(config.tfds_name, Path(config.cache_dir) / "tfds", image_size)
    images, labels, given = [], [], []
    for split, (split_images, split_labels) in loaded["splits"].items():
        images.append(split_images)
        labels.append(split_labels)
        given += [TFDS_SPLITS.get(split, "")] * len(split_labels)
    images = np.concatenate(images)
    return SourceData(loaded["class_names"], images, np.concatenate(labels),
                      _content_keys(images), given, f"tfds:{config.tfds_name}", {}, image_size,
                      notes)


def _read_folder(config: DataConfig, size_range: tuple[int, int], staging: Path) -> SourceData:
    # Decoding happens once, below; the scan checks headers, hashes and layout.
    scan = scan_image_folder(Path(config.path).expanduser(), on_bad_file=config.on_bad_file,
                             verify_decode=False, max_pixels=config.max_image_pixels,
                             layout=config.layout, split_folders=config.split_folders or None)
    image_size, notes = _stored_size(config, [min(item.size) for item in scan.items if item.size],
                                     size_range)
    decoded = decode_in_stream(
        [item.path for item in scan.items],
        functools.partial(load_square, size=image_size, max_pixels=config.max_image_pixels),
        row_shape=(image_size, image_size, 3), staging=staging,
        threads=config.decode_threads or default_decode_threads(), errors=ImageDecodeError,
        stop_on_error=config.on_bad_file == "error")
    skipped = [*scan.skipped,
               *(SkippedFile(scan.items[index].path, str(error))
                 for index, error in decoded.failures)]
    items = [scan.items[index] for index in decoded.usable]
    keys = [item.content_hash if config.split_by == "content" else item.relative_path
            for item in items]
    return SourceData(scan.class_names, decoded.images,
                      np.array([item.label for item in items], np.int32), keys,
                      [item.given_split or "" for item in items], f"folder:{scan.root}",
                      {"skipped": skipped, "unsupported": scan.unsupported,
                       "duplicate_groups": scan.duplicate_groups,
                       "label_conflicts": scan.label_conflicts, "image_sizes": decoded.sizes,
                       "split_leaks": scan.split_leaks, "warnings": scan.warnings},
                      image_size, [scan.layout_description, *notes],
                      tuple(str(Path(item.path).resolve()) for item in items))


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


def _assign(source: SourceData, keep: np.ndarray,
            ratios: tuple[float, ...]) -> tuple[np.ndarray, dict[str, float]]:
    """Each example's split: the given one, or a stable hash-based one.

    Examples with no given split get train/dev/test by the ratios. When the source gives
    splits but not all three (train + test, as Fashion-MNIST; train + val, as many folders),
    each missing split is carved from the given training examples by the same stable hash,
    taking the share of train that the ratios give it.

    Returns:
        (the split of each example, "" where not kept; {carved split: share of train taken})
    """
    given = np.array(source.given_splits, dtype=object)
    ratios = tuple(ratios) or default_split_ratios(len(keep))
    result = np.full(len(given), "", dtype=object)
    result[keep] = given[keep]
    keys, labels = np.array(source.keys, dtype=object), source.labels
    unassigned = keep[given[keep] == ""]
    if len(unassigned):
        result[unassigned] = assign_splits(list(keys[unassigned]), labels[unassigned], ratios)
    given_splits = set(given[keep]) - {""}
    if not given_splits:
        return result, {}
    # The train share stays, each missing split takes its own ratio, renormalised over train.
    carve = [ratio if split == "train" or split not in given_splits else 0.0
             for split, ratio in zip(SPLIT_NAMES, ratios, strict=True)]
    carve = [ratio / sum(carve) for ratio in carve]
    train = keep[given[keep] == "train"]
    if len(train) and max(carve[1:]) > 0:
        result[train] = assign_splits(list(keys[train]), labels[train], tuple(carve), salt="dev")
    return result, {split: share for split, share in zip(SPLIT_NAMES[1:], carve[1:], strict=True)
                    if share > 0}


def _carve_notes(carved: dict[str, float]) -> list[str]:
    return [f"No {split} split was given: {split} is carved from the given training images by "
            f"a stable hash ({share:.0%} of them)." for split, share in carved.items()]


def _require_every_split(splits: np.ndarray, carved: dict[str, float], description: str) -> None:
    """Stops before any training when train, dev or test would be empty."""
    counts = {split: int(np.sum(splits == split)) for split in SPLIT_NAMES}
    for split, count in counts.items():
        if count:
            continue
        where = "the given train split" if split in carved else "the usable images"
        raise DataError(
            f"The {split} split of {description} would be empty (train {counts['train']}, dev "
            f"{counts['dev']}, test {counts['test']} images, taken from {where}). Add images: "
            f"a few dozen per class at least, or a {split} folder of class folders beside "
            f"train/, or change data.split_ratios.")
