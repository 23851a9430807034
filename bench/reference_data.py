"""The data stage as it was before it streamed, kept as the `scale` benchmark's baseline.

It decodes every photo of a folder on one thread at full size into one in-memory array, then
copies each split out of it (`np.save(images[chosen])`), exactly as `pipeline.data.prepare`
did until issue 17: same scan, splits and report, so its output equals the streaming stage's
but for JPEG draft mode's pixels (`tests/test_stream.py` checks both). Only benchmarks run it.

    python -m bench.bench_scale today FOLDER OUTPUT_DIR
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.config import DataConfig
from pipeline.data.folder import SkippedFile, scan_image_folder
from pipeline.data.images import ImageDecodeError, load_image, resize_square
from pipeline.data.prepare import (
    SourceData,
    _assign,
    _cap_examples,
    _require_every_split,
    _stored_size,
    write_split_records,
)
from pipeline.data.splits import SPLIT_NAMES


def prepare_folder_in_memory(config: DataConfig, output_dir: Path,
                             auto_size_range: tuple[int, int] = (32, 224)) -> dict:
    """The former `prepare_data` for `data.source: folder`; returns the data report."""
    source = _read_folder_in_memory(config, auto_size_range)
    keep = _cap_examples(source.keys, config.max_examples)
    splits, carved = _assign(source, keep, config.split_ratios)
    _require_every_split(splits, carved, source.description)
    with atomic_path(output_dir) as folder:
        folder.mkdir()
        for split in SPLIT_NAMES:
            np.save(folder / f"{split}_images.npy", source.images[splits == split])
        return write_split_records(folder, source, splits, carved)


def _read_folder_in_memory(config: DataConfig, size_range: tuple[int, int]) -> SourceData:
    scan = scan_image_folder(Path(config.path).expanduser(), on_bad_file=config.on_bad_file,
                             verify_decode=False, max_pixels=config.max_image_pixels,
                             layout=config.layout, split_folders=config.split_folders or None)
    image_size, notes = _stored_size(config, [min(item.size) for item in scan.items if item.size],
                                     size_range)
    images = np.empty((len(scan.items), image_size, image_size, 3), np.uint8)
    usable, sizes, skipped = [], [], list(scan.skipped)
    for index, item in enumerate(scan.items):
        try:
            image = load_image(item.path, max_pixels=config.max_image_pixels)
        except ImageDecodeError as error:
            if config.on_bad_file == "error":
                raise
            skipped.append(SkippedFile(item.path, str(error)))
            continue
        sizes.append(image.shape[1::-1])
        images[index] = resize_square(image, image_size)
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
                       "split_leaks": scan.split_leaks, "warnings": scan.warnings},
                      image_size, [scan.layout_description, *notes],
                      tuple(str(Path(item.path).resolve()) for item in items))

