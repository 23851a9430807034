"""The data report: what the model will be trained and judged on, and what was left out.

`build_data_report` turns counts and scan findings into a plain, JSON-ready dict;
`write_data_report` saves it as `data_report.json` and a short `data_report.md`;
`format_data_report` gives the few lines printed on screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_json, write_text
from pipeline.data.splits import SPLIT_NAMES

IMBALANCE_WARNING_RATIO = 3.0
"""A largest/smallest class ratio above this gets a warning suggesting class weights."""

CLASS_WEIGHT_CONFIG = "train.class_weight: balanced"
JSON_FILE_NAME = "data_report.json"
MARKDOWN_FILE_NAME = "data_report.md"
_MARKDOWN_ROW_LIMIT = 50
_MARKDOWN_GROUP_LIMIT = 20
_SCREEN_CLASS_LIMIT = 8


def class_count_warnings(class_names: Sequence[str], counts: Sequence[int]) -> list[str]:
    """Warnings about classes too small to be split.

    Args:
        class_names: The class names.
        counts: The number of images of each class, in the same order.

    Returns:
        One warning per class with no image or a single image.
    """
    warnings = []
    for name, count in zip(class_names, counts, strict=True):
        if count == 0:
            warnings.append(f"Class '{name}' has no images; add some or remove the class.")
        elif count == 1:
            warnings.append(
                f"Class '{name}' has only 1 image, so it cannot appear in train, dev and "
                "test; add more images of it."
            )
    return warnings


def build_data_report(
    *,
    class_names: Sequence[str],
    labels_by_split: Mapping[str, np.ndarray],
    skipped: Iterable[Any] = (),
    unsupported: Mapping[str, int] | None = None,
    duplicate_groups: Iterable[Sequence[str]] = (),
    label_conflicts: Iterable[Sequence[str]] = (),
    image_sizes: list[tuple[int, int]] | None = None,
    source: str,
    split_leaks: Iterable[Sequence[str]] = (),
    warnings: Iterable[str] = (),
    notes: Iterable[str] = (),
    imbalance_warning_ratio: float = IMBALANCE_WARNING_RATIO,
) -> dict:
    """Builds the data report as a JSON-ready dict.

    Args:
        class_names: Class names; label i names `class_names[i]`.
        labels_by_split: Integer labels of the examples in each split, e.g.
            {"train": array([0, 1, ...]), "dev": ..., "test": ...}.
        skipped: Skipped files: `SkippedFile`s, or anything with `path` and `reason`
            attributes (and optionally `kind`).
        unsupported: Count of unsupported image files per format.
        duplicate_groups: Groups of paths with identical content.
        label_conflicts: Duplicate groups filed under different classes.
        image_sizes: (width, height) per image, for the size distribution.
        source: Where the data came from (a folder path or a dataset name).
        split_leaks: Duplicate groups found in different given splits.
        warnings: Warnings from earlier steps (e.g. `FolderScan.warnings`), listed first.
        notes: How the data was read, one line each: the layout found, splits carved from
            train, the image size chosen.
        imbalance_warning_ratio: Largest/smallest class ratio above which to warn.

    Returns:
        A dict of plain Python values (see `write_data_report` for the files).

    Raises:
        ValueError: If a label is not a valid class index.
    """
    class_names = [str(name) for name in class_names]
    by_class_and_split = _count_by_class_and_split(class_names, labels_by_split)
    per_class = {name: sum(counts.values()) for name, counts in by_class_and_split.items()}
    per_split = {
        split: int(np.asarray(labels).size) for split, labels in _ordered(labels_by_split).items()
    }
    imbalance = _class_imbalance(per_class, imbalance_warning_ratio)
    derived = _derived_warnings(class_names, per_class, by_class_and_split, imbalance)
    return {
        "source": str(source),
        "notes": list(notes),
        "num_images": sum(per_split.values()),
        "num_classes": len(class_names),
        "class_names": class_names,
        "images_per_split": per_split,
        "images_per_class": per_class,
        "images_per_class_and_split": by_class_and_split,
        "class_imbalance": imbalance,
        "image_sizes": _size_summary(image_sizes),
        "skipped": [_skipped_entry(entry) for entry in skipped],
        "unsupported": {str(key): int(value) for key, value in (unsupported or {}).items()},
        "duplicate_groups": [list(group) for group in duplicate_groups],
        "label_conflicts": [list(group) for group in label_conflicts],
        "split_leaks": [list(group) for group in split_leaks],
        "warnings": list(dict.fromkeys([*warnings, *derived])),
    }


def _ordered(labels_by_split: Mapping[str, Any]) -> dict[str, Any]:
    """The splits in train/dev/test order, any other names after them."""
    names = [name for name in SPLIT_NAMES if name in labels_by_split]
    names += [name for name in labels_by_split if name not in SPLIT_NAMES]
    return {name: labels_by_split[name] for name in names}


def _count_by_class_and_split(
    class_names: list[str], labels_by_split: Mapping[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Counts images per class and split, checking every label is a class index."""
    counts = {name: {} for name in class_names}
    for split, labels in _ordered(labels_by_split).items():
        labels = np.asarray(labels).reshape(-1)
        if labels.size and (
            not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() >= len(class_names)
        ):
            raise ValueError(
                f"Labels of split '{split}' must be integers from 0 to {len(class_names) - 1} "
                f"(one per class name). Received: dtype {labels.dtype}, values "
                f"{labels.min()} to {labels.max()}. Check class_names matches the labels."
            )
        per_label = np.bincount(labels.astype(np.int64), minlength=len(class_names))
        for name, count in zip(class_names, per_label, strict=True):
            counts[name][split] = int(count)
    return counts


def _class_imbalance(per_class: dict[str, int], threshold: float) -> dict[str, Any]:
    """The largest/smallest class count ratio (None when a class is empty)."""
    if not per_class:
        return {"ratio": None, "largest": None, "smallest": None, "warning_above": threshold}
    largest = max(per_class, key=per_class.get)
    smallest = min(per_class, key=per_class.get)
    ratio = per_class[largest] / per_class[smallest] if per_class[smallest] else None
    return {
        "ratio": None if ratio is None else round(ratio, 3),
        "largest": largest,
        "smallest": smallest,
        "warning_above": threshold,
    }


def _derived_warnings(
    class_names: list[str],
    per_class: dict[str, int],
    by_class_and_split: dict[str, dict[str, int]],
    imbalance: dict[str, Any],
) -> list[str]:
    """Warnings that follow from the counts alone."""
    warnings = class_count_warnings(class_names, [per_class[name] for name in class_names])
    ratio = imbalance["ratio"]
    if ratio is not None and ratio > imbalance["warning_above"]:
        largest, smallest = imbalance["largest"], imbalance["smallest"]
        warnings.append(
            f"Classes are imbalanced: '{largest}' has {per_class[largest]} images, "
            f"'{smallest}' {per_class[smallest]} ({ratio:.1f}x, above "
            f"{imbalance['warning_above']:g}x). Consider {CLASS_WEIGHT_CONFIG}."
        )
    for name in class_names:
        missing = [split for split, count in by_class_and_split[name].items() if count == 0]
        if per_class[name] >= 2 and missing:
            warnings.append(
                f"Class '{name}' has no images in the {' and '.join(missing)} split(s); "
                "its metrics there will be missing. Add images of it."
            )
    return warnings


def _size_summary(image_sizes: list[tuple[int, int]] | None) -> dict[str, Any] | None:
    """Min/median/max of widths and heights, or None without sizes."""
    if not image_sizes:
        return None
    sizes = np.asarray(image_sizes, dtype=np.int64).reshape(-1, 2)
    return {
        "count": int(len(sizes)),
        "width": _min_median_max(sizes[:, 0]),
        "height": _min_median_max(sizes[:, 1]),
    }


def _min_median_max(values: np.ndarray) -> dict[str, float | int]:
    """Min, median and max as plain numbers (the median stays an int when whole)."""
    median = float(np.median(values))
    return {
        "min": int(values.min()),
        "median": int(median) if median.is_integer() else median,
        "max": int(values.max()),
    }


def _skipped_entry(entry: Any) -> dict[str, str]:
    """A skipped file as a plain dict."""
    if isinstance(entry, Mapping):
        path, reason, kind = entry["path"], entry["reason"], entry.get("kind", "")
    else:
        path, reason, kind = entry.path, entry.reason, getattr(entry, "kind", "")
    return {"path": str(path), "reason": str(reason), "kind": str(kind)}


def write_data_report(report: dict, directory: Path) -> tuple[Path, Path]:
    """Writes `data_report.json` and `data_report.md` atomically.

    Each file is written to a temporary file in `directory` and moved into place with
    `os.replace`, so a reader never sees half a report.

    Args:
        report: A dict from `build_data_report`.
        directory: Where to write; created if missing.

    Returns:
        (json_path, markdown_path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / JSON_FILE_NAME
    markdown_path = directory / MARKDOWN_FILE_NAME
    write_json(json_path, report)
    write_text(markdown_path, format_data_report_markdown(report))
    return json_path, markdown_path


def format_data_report_markdown(report: dict) -> str:
    """The report as Markdown: a count table, then warnings and what was left out."""
    sections = [
        _markdown_summary(report),
        _markdown_count_table(report),
        _markdown_list("Warnings", report["warnings"]),
        _markdown_sizes(report["image_sizes"]),
        _markdown_skipped(report["skipped"]),
        _markdown_unsupported(report["unsupported"]),
        _markdown_groups(
            "Label conflicts (identical files under different classes)", report["label_conflicts"]
        ),
        _markdown_groups("Identical files in different given splits", report["split_leaks"]),
        _markdown_groups("Duplicate files", report["duplicate_groups"]),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _markdown_summary(report: dict) -> str:
    """The title and a one-paragraph summary."""
    splits = ", ".join(f"{split} {count:,}" for split, count in report["images_per_split"].items())
    imbalance = report["class_imbalance"]
    lines = [
        "# Data report",
        "",
        f"Source: `{report['source']}`",
        "",
        f"{report['num_images']:,} images in {report['num_classes']} classes ({splits}).",
    ]
    if report.get("notes"):
        lines += ["", *(f"- {note}" for note in report["notes"])]
    if imbalance["ratio"] is not None:
        lines[-1] += (
            f" Class imbalance {imbalance['ratio']:.2f}x (largest "
            f"'{imbalance['largest']}', smallest '{imbalance['smallest']}')."
        )
    return "\n".join(lines)


def _markdown_count_table(report: dict) -> str:
    """Images per class and split, with totals."""
    splits = list(report["images_per_split"])
    rows = ["| Class | " + " | ".join(splits) + " | Total |", "|---|" + "---:|" * (len(splits) + 1)]
    for name, counts in report["images_per_class_and_split"].items():
        cells = [f"{counts.get(split, 0):,}" for split in splits]
        total = report["images_per_class"][name]
        rows.append(f"| {_escape(name)} | " + " | ".join(cells) + f" | {total:,} |")
    totals = [f"{report['images_per_split'][split]:,}" for split in splits]
    rows.append("| **Total** | " + " | ".join(totals) + f" | {report['num_images']:,} |")
    return "\n".join(rows)


def _markdown_list(title: str, lines: list[str]) -> str:
    """A titled bullet list, or nothing when empty."""
    if not lines:
        return ""
    return f"## {title}\n\n" + "\n".join(f"- {line}" for line in lines)


def _markdown_sizes(sizes: dict[str, Any] | None) -> str:
    """The image size distribution as a small table."""
    if sizes is None:
        return ""
    rows = [
        f"## Image sizes ({sizes['count']:,} images)",
        "",
        "| | min | median | max |",
        "|---|---:|---:|---:|",
    ]
    for axis in ("width", "height"):
        values = sizes[axis]
        rows.append(f"| {axis} | {values['min']} | {values['median']} | {values['max']} |")
    return "\n".join(rows)


def _markdown_skipped(skipped: list[dict[str, str]]) -> str:
    """Skipped files with their reasons, the first rows only."""
    if not skipped:
        return ""
    rows = [f"## Skipped files ({len(skipped):,})", "", "| File | Kind | Reason |", "|---|---|---|"]
    rows += [
        f"| `{_escape(entry['path'])}` | {entry['kind']} | {_escape(entry['reason'])} |"
        for entry in skipped[:_MARKDOWN_ROW_LIMIT]
    ]
    if len(skipped) > _MARKDOWN_ROW_LIMIT:
        rows.append(f"\n... and {len(skipped) - _MARKDOWN_ROW_LIMIT:,} more in {JSON_FILE_NAME}.")
    return "\n".join(rows)


def _markdown_unsupported(unsupported: dict[str, int]) -> str:
    """Counts of unsupported image files per format."""
    if not unsupported:
        return ""
    rows = ["## Unsupported image formats (not used)", "", "| Format | Files |", "|---|---:|"]
    rows += [f"| {image_format} | {count:,} |" for image_format, count in unsupported.items()]
    return "\n".join(rows)


def _markdown_groups(title: str, groups: list[list[str]]) -> str:
    """Groups of paths, one bullet each, the first groups only."""
    if not groups:
        return ""
    lines = [
        ", ".join(f"`{_escape(path)}`" for path in group)
        for group in groups[:_MARKDOWN_GROUP_LIMIT]
    ]
    if len(groups) > _MARKDOWN_GROUP_LIMIT:
        lines.append(f"... and {len(groups) - _MARKDOWN_GROUP_LIMIT:,} more in {JSON_FILE_NAME}")
    return _markdown_list(f"{title}: {len(groups):,} groups", lines)


def _escape(text: str) -> str:
    """Escapes the characters that would break a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_data_report(report: dict) -> str:
    """A short screen summary of the report: counts, what was left out, warnings.

    Args:
        report: A dict from `build_data_report`.

    Returns:
        A few lines of plain text, without a trailing newline.
    """
    splits = " | ".join(f"{split} {count:,}" for split, count in report["images_per_split"].items())
    lines = [
        f"Data: {report['source']}",
        *(f"  {note}" for note in report.get("notes", [])),
        f"  {report['num_images']:,} images, {report['num_classes']} classes; {splits}",
        f"  per class: {_screen_class_counts(report)}",
        f"  image sizes: {_screen_sizes(report['image_sizes'])}",
        f"  skipped: {_screen_skipped(report['skipped'])}; unsupported: "
        f"{_screen_counts(report['unsupported'])}",
        f"  duplicates: {len(report['duplicate_groups'])} groups; label conflicts: "
        f"{len(report['label_conflicts'])} groups",
    ]
    lines += [f"  warning: {warning}" for warning in report["warnings"]]
    return "\n".join(lines)


def _screen_class_counts(report: dict) -> str:
    """Every class count for a few classes; min/max for many."""
    per_class = report["images_per_class"]
    imbalance = report["class_imbalance"]
    ratio = "n/a" if imbalance["ratio"] is None else f"{imbalance['ratio']:.1f}x"
    if len(per_class) <= _SCREEN_CLASS_LIMIT:
        counts = ", ".join(f"{name} {count:,}" for name, count in per_class.items())
    else:
        largest, smallest = imbalance["largest"], imbalance["smallest"]
        counts = (
            f"smallest {smallest} {per_class[smallest]:,}, largest {largest} {per_class[largest]:,}"
        )
    return f"{counts} (imbalance {ratio})"


def _screen_sizes(sizes: dict[str, Any] | None) -> str:
    """Min, median and max size as WxH."""
    if sizes is None:
        return "unknown"
    width, height = sizes["width"], sizes["height"]
    return (
        f"min {width['min']}x{height['min']}, median {width['median']}x{height['median']}, "
        f"max {width['max']}x{height['max']}"
    )


def _screen_skipped(skipped: list[dict[str, str]]) -> str:
    """The number of skipped files by kind."""
    kinds: dict[str, int] = {}
    for entry in skipped:
        kinds[entry["kind"] or "other"] = kinds.get(entry["kind"] or "other", 0) + 1
    return f"{len(skipped)} ({_screen_counts(kinds)})" if skipped else "none"


def _screen_counts(counts: Mapping[str, int]) -> str:
    """`name count` pairs, or "none"."""
    return ", ".join(f"{name} {count:,}" for name, count in counts.items()) or "none"
