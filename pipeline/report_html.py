"""The run report as one self-contained HTML page: `report.html`, beside `report.md`.

Everything the page shows is inside the file: plots and photos are PNG `data:` URIs, the style
sheet is inline, and nothing needs JavaScript or a network, so the page can be mailed or
attached to an issue and opens the same anywhere. It is rendered by Jinja2 from
`pipeline/templates/report.html.j2` with autoescaping on: class names come from folder names
and file names from the user's disk, and none of them may turn into markup.

`report_context` gathers what the page shows from the run folder (the data report, the train
history, metrics.json, the plots); the Markdown twin (`pipeline.report.write_run_report`) uses
the same context for its extra sections.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
from PIL import Image

from pipeline.atomic import write_text
from pipeline.data.splits import SPLIT_NAMES

SKIPPED_SHOWN = 20  # files listed per kind of finding; the counts are always complete
GROUPS_SHOWN = 10
THUMBNAIL_SIDE = 128


def png_data_uri(data: bytes) -> str:
    """`data:image/png;base64,...` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_data_uri(path: Path) -> str | None:
    """The PNG file as a data URI, or None when it does not exist."""
    return png_data_uri(Path(path).read_bytes()) if Path(path).is_file() else None


def image_data_uri(image: np.ndarray) -> str:
    """A uint8 image (H, W), (H, W, 1) or (H, W, 3) as a PNG data URI; small images are
    enlarged (nearest neighbour, so pixels stay pixels) to about `THUMBNAIL_SIDE`."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    picture = Image.fromarray(array)
    scale = max(1, THUMBNAIL_SIDE // max(picture.size))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return png_data_uri(buffer.getvalue())


def report_context(run_dir: Path, metrics: dict, history: dict, *, config_summary: dict,
                   plots: dict[str, Path], test_images: np.ndarray | None = None) -> dict:
    """Everything the HTML page (and the Markdown twin's extra sections) shows, as plain data.

    Args:
        run_dir: the run folder (`data/data_report.json`, `augment_preview.png` are read).
        metrics: what the evaluate stage writes to metrics.json.
        history: `train_history.json`.
        config_summary: the resolved experiment config as a dict.
        plots: `{key: png path}` with keys "training curves", "confusion matrix",
            "bias / variance", "reliability".
        test_images: the test split's stored images, for the mistakes gallery.
    """
    data_report_path = Path(run_dir) / "data" / "data_report.json"
    data_report = (_read_json(data_report_path) if data_report_path.is_file() else None)
    return {
        "run_name": Path(run_dir).name,
        "splits": [split for split in SPLIT_NAMES if split in metrics],
        "metrics": metrics,
        "diagnosis": metrics["diagnosis"],
        "data": _data_section(data_report),
        "augment": {"chain": config_summary["augment"]["chain"],
                    "preview": file_data_uri(Path(run_dir) / "augment_preview.png")},
        "model": _model_section(metrics, history, config_summary),
        "training": _training_section(history),
        "images": {key: file_data_uri(path) for key, path in plots.items()},
        "mistakes": _mistakes_section(metrics.get("mistakes", []), test_images),
        "export": _export_section(config_summary, metrics),
        "config": _flatten(config_summary),
    }


def write_html_report(run_dir: Path, context: dict) -> Path:
    """Renders `report.html` into the run folder (atomically) and returns its path."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    environment.filters["percent"] = lambda value, digits=2: f"{value * 100:.{digits}f}%"
    environment.filters["signed_percent"] = lambda value: f"{value * 100:+.2f}%"
    environment.filters["thousands"] = lambda value: f"{value:,}"
    environment.filters["duration"] = _duration
    environment.filters["code"] = inline_code
    html = environment.get_template("report.html.j2").render(**context)
    return write_text(Path(run_dir) / "report.html", html)


def inline_code(text: str) -> markupsafe.Markup:
    """Escapes `text`, then shows its `backquoted` parts (config keys in the advice) as code.
    The markup is added after escaping, so nothing in `text` can become markup itself."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped))


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _data_section(report: dict | None) -> dict | None:
    """The data report's counts and findings, the long lists cut to their first entries."""
    if report is None:
        return None
    splits = list(report["images_per_split"])
    rows = [[name, *(counts.get(split, 0) for split in splits), sum(counts.values())]
            for name, counts in report["images_per_class_and_split"].items()]
    totals = [sum(column) for column in zip(*(row[1:] for row in rows), strict=True)]
    return {
        "source": report["source"], "notes": report.get("notes", []),
        "warnings": report.get("warnings", []), "splits": splits, "rows": rows,
        "totals": totals, "skipped": report["skipped"][:SKIPPED_SHOWN],
        "skipped_count": len(report["skipped"]), "unsupported": report.get("unsupported", {}),
        "duplicate_count": len(report["duplicate_groups"]),
        "duplicates": report["duplicate_groups"][:GROUPS_SHOWN],
        "conflicts": report["label_conflicts"][:GROUPS_SHOWN],
        "conflict_count": len(report["label_conflicts"]),
        "leaks": report.get("split_leaks", [])[:GROUPS_SHOWN],
        "leak_count": len(report.get("split_leaks", [])),
        "sizes": report.get("image_sizes"),
    }


def _model_section(metrics: dict, history: dict, config_summary: dict) -> dict:
    from pipeline.backbones import get_backbone_spec

    spec = get_backbone_spec(config_summary["model"]["backbone"])
    train = config_summary["train"]
    return {
        "backbone": spec.name, "weights": config_summary["model"]["weights"],
        "input_size": history["image_size"], "preprocessing": spec.preprocessing,
        "unfreeze_from": _fine_tune_layer(spec, history.get("fine_tune_from", "top")),
        "phase2_feeding": history.get("phase2_feeding", "cached"),
        "parameters": metrics.get("model"),
        "engine": history.get("extraction_engine"),
        "precision": history.get("extraction_precision"),
        "cached_views": train["cached_views"], "fine_tune_epochs": train["fine_tune_epochs"],
        "dropout": config_summary["model"]["dropout"], "l2": config_summary["model"]["l2"],
    }


def _fine_tune_layer(spec, fine_tune_from: str) -> str:
    """Where phase 2 began, as the README names it: "block5a (layer block5a_expand_conv)"."""
    if fine_tune_from == "all":
        return "all (every layer)"
    layer = spec.unfreeze_from if fine_tune_from == "top" else spec.boundaries[fine_tune_from]
    return f"{fine_tune_from} (layer {layer})"


def _training_section(history: dict) -> list[dict]:
    """One row per phase: epochs run, best dev epoch and accuracy, learning rates, time."""
    series = history["history"]
    epochs = len(series.get("loss", []))
    boundary = history["phase_boundaries"][0] if history["phase_boundaries"] else epochs
    timings = history["timings"]
    phases = [("phase 1: head on cached features", 0, boundary, "phase1_head_s"),
              ("phase 2: fine-tune the top blocks", boundary, epochs, "phase2_fine_tune_s")]
    rows = []
    for name, start, end, timing in phases:
        if end <= start:
            continue
        dev = series.get("val_accuracy", [])[start:end]
        rates = series.get("learning_rate", [])[start:end]
        best = int(np.argmax(dev)) if dev else None
        rows.append({"name": name, "epochs": end - start, "seconds": timings.get(timing),
                     "best_epoch": None if best is None else start + best + 1,
                     "best_dev_accuracy": None if best is None else dev[best],
                     "learning_rate": (rates[0], rates[-1]) if rates else None})
    return rows


def _mistakes_section(mistakes: list[dict], test_images: np.ndarray | None) -> list[dict]:
    """The most confident mistakes, each with its photo (when the test images are given)."""
    shown = []
    for mistake in mistakes:
        image = None if test_images is None else image_data_uri(test_images[mistake["index"]])
        shown.append({**mistake, "image": image})
    return shown


def _export_section(config_summary: dict, metrics: dict) -> dict:
    from pipeline.export import EXPORTED_FILES

    folder = Path(config_summary["export"]["models_dir"]) / config_summary["name"]
    calibration = metrics.get("calibration", {})
    tensorboard = Path(config_summary["runs_dir"]) / config_summary["name"] / "tensorboard"
    files = [EXPORTED_FILES[name] for name in config_summary["export"]["formats"]
             if name != "keras"]
    return {"folder": folder.as_posix(), "files": files,
            "temperature": calibration.get("temperature", 1.0),
            "tensorboard": tensorboard.as_posix()}


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
