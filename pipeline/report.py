"""Run report: training curves, confusion matrix, bias/variance bars and `report.md`.

Figures are built as `matplotlib.figure.Figure` objects on an Agg canvas, never through
`pyplot`, so importing this module changes no global matplotlib state and works headless.
Every file is written atomically (temporary file in the same folder, then `os.replace`):
an interrupted run leaves either the previous file or none, never a truncated one.

Example:
    >>> plots = {
    ...     "history": plot_history(history, run_dir / "plots" / "history.png",
    ...                             phase_boundaries=[head_epochs]),
    ...     "confusion": plot_confusion_matrix(metrics["test"]["confusion_matrix"],
    ...                                        class_names, run_dir / "plots" / "confusion.png"),
    ... }
    >>> write_run_report(run_dir, metrics=metrics, diagnosis=diagnosis,
    ...                  timings={"train_head": 61.0, "fine_tune": 240.5}, plots=plots)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from pipeline.atomic import write_text, write_with
from pipeline.calibration import why_not_applied
from pipeline.config import EvaluateConfig
from pipeline.data.splits import SPLIT_NAMES
from pipeline.evaluate import diagnose_bias_variance, split_errors

DPI = 120
ANNOTATE_MAX_CLASSES = 20  # above this, per-cell counts no longer fit in the cells
MAX_LABEL_CHARS = 20
SPLIT_COLORS = {"baseline": "#9e9e9e", "train": "#1f77b4", "dev": "#ff7f0e", "test": "#2ca02c"}
GAP_NAMES = {
    ("baseline", "train"): "avoidable bias",
    ("train", "dev"): "variance",
    ("dev", "test"): "dev/test gap",
}
_NOT_PLOTTED = {"learning_rate", "lr"}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Figure, path: Path) -> Path:
    # a tight box: constrained layout alone clipped the confusion matrix's long y label
    return write_with(path, lambda handle: figure.savefig(handle, format="png",
                                                          bbox_inches="tight", pad_inches=0.1))


# --------------------------------------------------------------------------- training curves


def plot_history(
    history: dict[str, list[float]], path: Path, *, phase_boundaries: Sequence[int] = ()
) -> Path:
    """Plots train and dev curves per epoch, one panel per metric, phases marked.

    Args:
        history: Keras-style history, e.g. `{"loss": [...], "val_loss": [...],
            "accuracy": [...], "val_accuracy": [...]}`, with phase 2 appended to phase 1.
            `val_*` series are drawn as "dev"; a "learning_rate" series is drawn on a second,
            logarithmic axis of every panel.
        path: Where to write the PNG.
        phase_boundaries: Number of epochs completed when each new phase started, e.g.
            `[head_epochs]` for head training followed by fine-tuning. A boundary at 0 or at
            the last epoch (a phase that ran no epochs, e.g. `train.fine_tune_epochs=0`) is
            accepted and not drawn.

    Returns:
        `path`.

    Raises:
        ValueError: If the history has no series or a boundary is outside the epochs.
    """
    metric_names = _history_metric_names(history)
    num_epochs = max(len(series) for series in history.values())
    _validate_phase_boundaries(phase_boundaries, num_epochs)
    phase_boundaries = sorted(b for b in set(phase_boundaries) if 0 < b < num_epochs)
    figure = _new_figure(5.0 * len(metric_names), 4.0)
    panels = figure.subplots(1, len(metric_names), squeeze=False)[0]
    for axes, name in zip(panels, metric_names, strict=True):
        _plot_metric(axes, history, name)
        _mark_phases(axes, phase_boundaries, num_epochs)
        _plot_learning_rate(axes, history.get("learning_rate", []), num_epochs,
                            phase_boundaries)
    return _save_figure(figure, path)


def _history_metric_names(history: dict[str, list[float]]) -> list[str]:
    """Metric names without the `val_` prefix, loss first."""
    names = {key.removeprefix("val_") for key, series in history.items() if len(series)}
    names -= _NOT_PLOTTED
    if not names:
        raise ValueError(
            "Expected a history with at least one non-empty series such as 'loss'. "
            f"Received keys: {sorted(history)}. Pass `model.fit(...).history`."
        )
    return sorted(names, key=lambda name: (name != "loss", name))


def _validate_phase_boundaries(phase_boundaries: Sequence[int], num_epochs: int) -> None:
    for boundary in phase_boundaries:
        if not 0 <= boundary <= num_epochs:
            raise ValueError(
                f"Expected phase boundaries between 0 and {num_epochs} (epochs completed "
                f"before the next phase). Received: phase_boundaries={list(phase_boundaries)}. "
                "Pass the epochs of each phase as recorded in its history."
            )


def _plot_metric(axes, history: dict[str, list[float]], name: str) -> None:
    """Draws the train and dev series of one metric and marks the best dev epoch."""
    for split, key in (("train", name), ("dev", f"val_{name}")):
        series = history.get(key, [])
        if len(series) == 0:
            continue
        epochs = np.arange(1, len(series) + 1)
        marker = "o" if len(series) <= 30 else None
        axes.plot(epochs, series, label=split, color=SPLIT_COLORS[split], marker=marker, ms=3)
        if split == "dev":
            best = int(np.argmin(series) if name == "loss" else np.argmax(series))
            axes.scatter([best + 1], [series[best]], s=80, facecolors="none",
                         edgecolors="black", zorder=3, label=f"best dev (epoch {best + 1})")
    if "accuracy" in name:
        axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    axes.set_title(name.replace("_", " "), pad=14)  # room for the phase labels
    axes.set_xlabel("epoch")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)


def _plot_learning_rate(axes, rates: Sequence[float], num_epochs: int,
                        phase_boundaries: Sequence[int]) -> None:
    """The learning rate per epoch on a second, logarithmic y axis (both phases decay it
    exponentially, so it reads as straight lines), one line per phase; one legend for both
    axes."""
    if len(rates) != num_epochs or min(rates, default=0) <= 0:
        return  # a history from before the rate was logged, or one with gaps
    second = axes.twinx()
    edges = [0, *phase_boundaries, num_epochs]
    for index, (start, end) in enumerate(pairwise(edges)):
        second.plot(np.arange(start + 1, end + 1), rates[start:end], color="#7f7f7f",
                    linestyle=":", linewidth=1.5, label="learning rate" if index == 0 else None)
    second.set_yscale("log")
    second.set_ylabel("learning rate", color="#7f7f7f")
    second.tick_params(axis="y", colors="#7f7f7f", labelsize=8)
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = second.get_legend_handles_labels()
    axes.legend(handles + more_handles, labels + more_labels, loc="best", fontsize=8)


def _mark_phases(axes, phase_boundaries: Sequence[int], num_epochs: int) -> None:
    """Dashed line between phases and a 'phase N' label centred over each phase."""
    if not phase_boundaries:
        return
    edges = [0.5, *(boundary + 0.5 for boundary in phase_boundaries), num_epochs + 0.5]
    for edge in edges[1:-1]:
        axes.axvline(edge, color="gray", linestyle="--", linewidth=1)
    for index, (start, end) in enumerate(pairwise(edges), start=1):
        axes.text((start + end) / 2, 1.0, f"phase {index}", transform=axes.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize=8, color="gray")


# --------------------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    class_names: Sequence[str],
    path: Path,
    *,
    normalize: bool = True,
) -> Path:
    """Plots a confusion matrix that stays readable from 2 to 100+ classes.

    Colour shows the row-normalised fraction (recall per true class) when `normalize` is
    true, raw counts otherwise, on a square-root scale so that a 5% confusion is still
    visible among 100 classes. Counts are written in the cells only up to
    `ANNOTATE_MAX_CLASSES` classes; the figure and font sizes scale with the class count.

    Args:
        confusion: Square counts, rows = true classes, columns = predicted classes (the
            `confusion_matrix` entry of `classification_metrics`).
        class_names: One name per row; long names are shortened on the axes.
        path: Where to write the PNG.
        normalize: Colour by fraction of each true class instead of by count.

    Returns:
        `path`.

    Raises:
        ValueError: If the matrix is not square, does not match `class_names` or has
            negative entries.
    """
    counts = _validate_confusion(confusion, class_names)
    num_classes = len(class_names)
    values = _row_normalize(counts) if normalize else counts
    side = float(np.clip(0.13 * num_classes + 3.5, 5.0, 17.0))
    figure = _new_figure(side + 1.0, side)
    axes = figure.subplots()
    color_scale = PowerNorm(gamma=0.5, vmin=0, vmax=1.0 if normalize else max(counts.max(), 1))
    image = axes.imshow(values, cmap="Blues", norm=color_scale)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    colorbar.set_label("fraction of true class" if normalize else "count")
    if normalize:
        colorbar.formatter = PercentFormatter(xmax=1.0)
    _label_confusion_axes(axes, class_names)
    if num_classes <= ANNOTATE_MAX_CLASSES:
        _annotate_counts(axes, counts, color_scale(values), values if normalize else None)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    scale = "rows normalised to recall" if normalize else "counts"
    axes.set_title(f"Confusion matrix ({scale})\n{counts.sum()} examples, "
                   f"accuracy {accuracy:.1%}")
    return _save_figure(figure, path)


def _validate_confusion(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str]
) -> np.ndarray:
    counts = np.asarray(confusion)
    expected = (len(class_names), len(class_names))
    if counts.shape != expected:
        raise ValueError(
            f"Expected a square confusion matrix of shape {expected} to match "
            f"{len(class_names)} class names. Received: shape={counts.shape}. "
            "Pass classification_metrics(...)['confusion_matrix'] with the same class names."
        )
    if len(class_names) == 0 or counts.min() < 0:
        raise ValueError(
            "Expected non-negative counts for at least one class. "
            f"Received: {len(class_names)} classes, smallest count {counts.min(initial=0)}."
        )
    return counts.astype(np.int64)


def _row_normalize(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total; rows of a class absent from the labels stay zero."""
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.zeros(counts.shape, dtype=np.float64)
    np.divide(counts, totals, out=fractions, where=totals != 0)
    return fractions


def _label_confusion_axes(axes, class_names: Sequence[str]) -> None:
    num_classes = len(class_names)
    labels = [_shorten(str(name)) for name in class_names]
    fontsize = 10 if num_classes <= 20 else 8 if num_classes <= 50 else 6
    rotate = num_classes * max(len(label) for label in labels) > 60
    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, labels, fontsize=fontsize, rotation=90 if rotate else 0)
    axes.set_yticks(ticks, labels, fontsize=fontsize)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")


def _annotate_counts(axes, counts: np.ndarray, shade: np.ndarray,
                     fractions: np.ndarray | None = None) -> None:
    """Writes each non-zero count in its cell (under its fraction of the row when given),
    white on dark cells."""
    fontsize = 12 if len(counts) <= 5 else 9 if len(counts) <= 10 else 7
    if fractions is not None and len(counts) > 10:
        fontsize = 6  # two lines per cell
    for (row, column), count in np.ndenumerate(counts):
        if count:
            color = "white" if shade[row, column] > 0.5 else "black"
            text = str(count) if fractions is None else \
                f"{fractions[row, column]:.0%}\n({count})"
            axes.text(column, row, text, ha="center", va="center",
                      fontsize=fontsize, color=color)


def _shorten(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


# --------------------------------------------------------------------------- bias / variance


def plot_error_bars(
    errors_by_split: dict[str, float],
    path: Path,
    *,
    diagnosis: dict | None = None,
    baseline_error: float = 0.0,
) -> Path:
    """Draws baseline, train, dev and test error as bars with the gaps between them labelled.

    The gaps are the bias/variance picture: baseline -> train is avoidable bias, train -> dev
    is variance, dev -> test is the dev/test gap. A gap above the diagnosis' tolerance is red.

    Args:
        errors_by_split: `{split: error}` (or `{split: metrics dict}`) for splits among
            "train", "dev", "test".
        path: Where to write the PNG.
        diagnosis: The run's `diagnose_bias_variance` result, whose verdict, baseline and
            tolerance the plot shows; without it, one is made from train and dev (if both
            are given) with `baseline_error` and the default tolerance.
        baseline_error: Human-level or Bayes-error proxy, used when no diagnosis is given.

    Returns:
        `path`.

    Raises:
        ValueError: If a split name is unknown or an error is not a fraction in [0, 1].
    """
    errors = split_errors(errors_by_split)
    if diagnosis is None and {"train", "dev"} <= errors.keys():
        diagnosis = diagnose_bias_variance(
            train_error=errors["train"], dev_error=errors["dev"], test_error=errors.get("test"),
            baseline_error=baseline_error)
    title, tolerance = "Error by split", EvaluateConfig.diagnosis_tolerance
    if diagnosis is not None:
        baseline_error, tolerance = diagnosis["baseline_error"], diagnosis["tolerance"]
        flag = ", dev/test mismatch" if diagnosis["dev_test_mismatch"] else ""
        title = f"Bias / variance: {diagnosis['verdict']}{flag}"
    errors = {"baseline": baseline_error, **errors}
    figure = _new_figure(1.6 * len(errors) + 1.5, 4.5)
    axes = figure.subplots()
    _draw_error_bars(axes, errors)
    top = max(max(errors.values()) * 1.25, 0.05)
    axes.set_ylim(0, top)
    _draw_gaps(axes, errors, tolerance, min_arrow=0.08 * top)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_ylabel("error")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return _save_figure(figure, path)


def _draw_error_bars(axes, errors: dict[str, float]) -> None:
    names = list(errors)
    positions = np.arange(len(names))
    colors = [SPLIT_COLORS[name] for name in names]
    bars = axes.bar(positions, list(errors.values()), width=0.5, color=colors)
    axes.bar_label(bars, labels=[f"{error:.2%}" for error in errors.values()], padding=2)
    axes.set_xticks(positions, ["baseline\n(human/Bayes)" if n == "baseline" else n for n in names])


def _draw_gaps(axes, errors: dict[str, float], tolerance: float, min_arrow: float) -> None:
    """A double arrow between neighbouring bars, labelled with the gap's name and size.

    Gaps shorter than `min_arrow` (in data units) get the label without the arrow, whose
    heads would otherwise collapse into a blot.
    """
    names = list(errors)
    for index, (lower, upper) in enumerate(pairwise(names)):
        if (lower, upper) not in GAP_NAMES:
            continue
        gap = errors[upper] - errors[lower]
        color = "#d62728" if gap > tolerance else "#555555"
        x = index + 0.5
        if abs(gap) >= min_arrow:
            axes.annotate("", xy=(x, errors[upper]), xytext=(x, errors[lower]),
                          arrowprops={"arrowstyle": "<->", "color": color, "lw": 1.5})
        for level in (errors[lower], errors[upper]):
            axes.hlines(level, x - 0.25, x + 0.25, colors=color, linestyles=":", linewidth=1)
        axes.text(x, max(errors[lower], errors[upper]), f"{GAP_NAMES[lower, upper]}\n{gap:+.2%}",
                  ha="center", va="bottom", fontsize=8, color=color,
                  bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


# --------------------------------------------------------------------------- calibration


def plot_reliability(calibration: dict, path: Path) -> Path:
    """Reliability diagram of the test split: accuracy against confidence per bin, before and
    after the temperature fitted on dev; a calibrated model follows the diagonal.

    Args:
        calibration: a `pipeline.calibration.calibration_report` result.
        path: Where to write the PNG.

    Returns:
        `path`.
    """
    figure = _new_figure(5.5, 4.5)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    edges = np.asarray(calibration["reliability"]["plain"]["edges"])
    width = edges[1] - edges[0]
    test = calibration["test"]
    series = (("plain", f"as trained (ECE {test['ece']:.2%})", SPLIT_COLORS["train"]),
              ("scaled", f"T = {calibration['temperature_fitted']:.2f} "
                         f"(ECE {test['ece_scaled']:.2%})", SPLIT_COLORS["dev"]))
    for offset, (key, label, color) in zip((0.25, 0.75), series, strict=True):
        table = calibration["reliability"][key]
        shown = [index for index, count in enumerate(table["count"]) if count]
        axes.bar(edges[shown] + offset * width, [table["accuracy"][i] for i in shown],
                 width=width / 2, color=color, alpha=0.8, label=label)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_xlabel("confidence (top probability), binned")
    axes.set_ylabel("accuracy in the bin")
    kept = "kept" if calibration["applied"] else "not kept"
    axes.set_title(f"Reliability (test): temperature {kept}")
    axes.legend(loc="upper left", fontsize=8)
    axes.grid(alpha=0.3)
    return _save_figure(figure, path)


# --------------------------------------------------------------------------- report.md


def write_run_report(
    run_dir: Path,
    *,
    metrics: dict,
    diagnosis: dict,
    timings: dict[str, float],
    plots: dict[str, Path],
    config_summary: dict | None = None,
    extra: list[str] = (),
) -> Path:
    """Writes `run_dir/report.md`: headline numbers, verdict, timings, per-class table, plots.

    Args:
        run_dir: The run folder, e.g. `runs/<run>`; created if missing.
        metrics: `{split: classification_metrics(...)}` for splits among "train", "dev",
            "test". Other keys (e.g. "diagnosis", "class_names" beside the splits in
            `metrics.json`) are ignored. The per-class table uses test, else dev, else train.
        diagnosis: A `diagnose_bias_variance` result.
        timings: Seconds per phase, e.g. `{"train_head": 61.0, "fine_tune": 240.5}`.
        plots: `{title: png_path}`; linked relative to `run_dir`.
        config_summary: Optional (possibly nested) config values to list, e.g. the resolved
            experiment config as a dict.
        extra: Markdown lines inserted after the headline (see `markdown_extras`).

    Returns:
        The path of `report.md`.

    Raises:
        ValueError: If `metrics` is not keyed by split or a timing is negative.
        FileNotFoundError: If a plot file does not exist.
    """
    run_dir = Path(run_dir)
    _validate_metrics_by_split(metrics)
    lines = [f"# Run report: {run_dir.name}", ""]
    lines += _headline_section(metrics, diagnosis)
    lines += list(extra)
    if config_summary:
        lines += _config_section(config_summary)
    lines += _timings_section(timings)
    lines += _per_class_section(metrics)
    lines += _plots_section(plots, run_dir)
    return write_text(run_dir / "report.md", "\n".join(lines))


def _validate_metrics_by_split(metrics: dict) -> None:
    if not set(metrics) & set(SPLIT_NAMES):
        raise ValueError(
            f"Expected metrics keyed by split, at least one of {', '.join(SPLIT_NAMES)}, each a "
            f"classification_metrics() result. Received keys: {sorted(metrics)}. "
            "Wrap a single result as {'test': metrics}."
        )


def _headline_section(metrics: dict, diagnosis: dict) -> list[str]:
    rows = []
    for split in (split for split in SPLIT_NAMES if split in metrics):
        split_metrics = metrics[split]
        top5 = split_metrics.get("top5_accuracy")
        rows.append([
            split, f"{split_metrics['accuracy']:.2%}", f"{split_metrics['error']:.2%}",
            "-" if top5 is None else f"{top5:.2%}", f"{split_metrics['macro_f1']:.3f}",
            str(split_metrics["num_examples"]),
        ])
    header = ["split", "accuracy", "error", "top-5 accuracy", "macro F1", "examples"]
    lines = ["## Headline", "", *_markdown_table(header, rows), ""]
    lines += [f"Baseline (human/Bayes) error: {diagnosis['baseline_error']:.2%}.", ""]
    lines += [f"**Verdict: {diagnosis['summary']}**", "", "Next steps:", ""]
    lines += [f"- {step}" for step in diagnosis["advice"]]
    return [*lines, ""]


def _config_section(config_summary: dict) -> list[str]:
    rows = [[f"`{key}`", f"`{value}`"] for key, value in _flatten(config_summary).items()]
    return ["## Configuration", "", *_markdown_table(["key", "value"], rows), ""]


def _timings_section(timings: dict[str, float]) -> list[str]:
    negative = {phase: seconds for phase, seconds in timings.items() if seconds < 0}
    if negative:
        raise ValueError(f"Expected timings in seconds >= 0. Received: {negative}.")
    total = sum(timings.values())
    rows = [
        [phase, _duration(seconds), f"{seconds / total:.0%}" if total else "-"]
        for phase, seconds in timings.items()
    ]
    rows.append(["**total**", f"**{_duration(total)}**", "100%" if total else "-"])
    return ["## Timings", "", *_markdown_table(["phase", "time", "share"], rows), ""]


def _per_class_section(metrics: dict) -> list[str]:
    split = next(split for split in reversed(SPLIT_NAMES) if split in metrics)
    per_class = metrics[split]["per_class"]
    rows = [
        [name, f"{scores['precision']:.3f}", f"{scores['recall']:.3f}", f"{scores['f1']:.3f}",
         str(scores["support"])]
        for name, scores in per_class.items()
    ]
    header = ["class", "precision", "recall", "F1", "support"]
    lines = [f"## Per-class metrics ({split})", ""]
    seen = {name: scores for name, scores in per_class.items() if scores["support"] > 0}
    weakest = sorted(seen, key=lambda name: seen[name]["f1"])[:5]
    if len(per_class) > len(weakest):  # with 5 classes or fewer the table says it all
        listed = ", ".join(f"{name} ({seen[name]['f1']:.3f})" for name in weakest)
        lines += [f"Weakest classes by F1: {listed}.", ""]
    return [*lines, *_markdown_table(header, rows), ""]


def _plots_section(plots: dict[str, Path], run_dir: Path) -> list[str]:
    lines = ["## Plots", ""]
    for title, plot_path in plots.items():
        plot_path = Path(plot_path)
        if not plot_path.is_file():
            raise FileNotFoundError(
                f"Plot '{title}' not found at {plot_path}. Write it first, e.g. with "
                "plot_history(...), or drop it from `plots`."
            )
        link = Path(os.path.relpath(plot_path.resolve(), run_dir.resolve())).as_posix()
        lines += [f"### {title}", "", f"![{title}]({link})", ""]
    return lines


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def row_line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [row_line(header), "|" + "|".join("---" for _ in header) + "|", *map(row_line, rows)]


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts to dotted keys: {"model": {"dropout": 0.2}} -> {"model.dropout": 0.2}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


# ------------------------------------------------------------------ the evaluate stage's report


def write_report(run_dir: Path, metrics: dict, history: dict, *, config_summary: dict,
                 test_images: np.ndarray | None = None) -> Path:
    """The run's plots, `report.md` and its self-contained twin `report.html`, from the
    evaluate stage's metrics and the train history.

    Args:
        run_dir: the run folder; the plots are written beside `report.md`.
        metrics: what the evaluate stage writes to metrics.json: metrics per split,
            "diagnosis", "class_names", and (optional) "calibration", "mistakes",
            "confused_pairs", "tta", "model".
        history: `train_history.json` (per-epoch metrics, phase boundaries, timings).
        config_summary: the resolved experiment config as a dict.
        test_images: the test split's stored images, shown in the mistakes gallery.

    Returns:
        The path of `report.md`.
    """
    from pipeline.report_html import report_context, write_html_report

    plots = {
        "training curves": plot_history(history["history"], run_dir / "training_curves.png",
                                        phase_boundaries=history["phase_boundaries"]),
        "confusion matrix": plot_confusion_matrix(
            metrics["test"]["confusion_matrix"], metrics["class_names"],
            run_dir / "confusion_matrix.png"),
        "bias / variance": plot_error_bars(
            {split: metrics[split]["error"] for split in SPLIT_NAMES}, run_dir / "errors.png",
            diagnosis=metrics["diagnosis"]),
    }
    if "calibration" in metrics:
        plots["reliability"] = plot_reliability(metrics["calibration"],
                                                run_dir / "reliability.png")
    context = report_context(run_dir, metrics, history, config_summary=config_summary,
                             plots=plots, test_images=test_images)
    write_html_report(run_dir, context)
    if (run_dir / "augment_preview.png").exists():
        plots["augmentation preview"] = run_dir / "augment_preview.png"
    return write_run_report(run_dir, metrics=metrics, diagnosis=metrics["diagnosis"],
                            timings=history["timings"], plots=plots,
                            config_summary=config_summary, extra=markdown_extras(metrics))


def markdown_extras(metrics: dict) -> list[str]:
    """The Markdown twin of the HTML page's extra sections: next steps, calibration,
    test-time augmentation, the most confident mistakes and the most confused pairs."""
    lines = []
    diagnosis = metrics["diagnosis"]
    if diagnosis.get("largest_gap"):
        gap = diagnosis["largest_gap"]
        lines += [f"## Next steps for the largest gap: {gap} "
                  f"({diagnosis['gaps'][gap]:+.2%})", ""]
        lines += [f"- {step}" for step in diagnosis["next_steps"]] + [""]
    if "calibration" in metrics:
        calibration = metrics["calibration"]
        rows = [[split, *(f"{calibration[split][key]:.2%}" for key in ("ece", "ece_scaled")),
                 *(f"{calibration[split][key]:.4f}" for key in ("nll", "nll_scaled"))]
                for split in ("dev", "test")]
        kept = "kept" if calibration["applied"] else f"not kept ({why_not_applied(calibration)})"
        lines += ["## Calibration", "",
                  f"Temperature fitted on dev: {calibration['temperature_fitted']:.3f}, {kept}; "
                  f"the exported probabilities use T = {calibration['temperature']:.3f}.", "",
                  *_markdown_table(["split", "ECE", "ECE with T", "NLL", "NLL with T"], rows), ""]
    if "tta" in metrics:
        tta = metrics["tta"]
        rows = [[split, f"{tta[split]['plain_accuracy']:.2%}", f"{tta[split]['accuracy']:.2%}"]
                for split in ("dev", "test")]
        lines += ["## Test-time augmentation", "",
                  f"{len(tta['views'])} views ({', '.join(tta['views'])}), "
                  f"{tta['cost']:.1f}x the prediction time.", "",
                  *_markdown_table(["split", "plain accuracy", "with TTA"], rows), ""]
    if metrics.get("mistakes"):
        rows = [[str(m["index"]), m["true"], m["predicted"], f"{m['confidence']:.1%}"]
                for m in metrics["mistakes"]]
        lines += ["## Most confident mistakes (test)", "",
                  *_markdown_table(["test image", "true", "predicted", "confidence"], rows), ""]
    if metrics.get("confused_pairs"):
        rows = [[p["true"], p["predicted"], str(p["count"]), f"{p['fraction']:.1%}"]
                for p in metrics["confused_pairs"]]
        lines += ["## Most confused pairs (test)", "",
                  *_markdown_table(["true", "predicted as", "images", "of the true class"], rows),
                  ""]
    return lines
