"""What a search leaves behind: the table of trials, the plot, and `best.yaml`.

    runs/<name>/search/results.json   every trial (best first), each round's space
    runs/<name>/search/trials.txt     the same table `make search` prints
    runs/<name>/search/search.png     dev accuracy against each searched hyperparameter
    runs/<name>/search/best.yaml      the whole config with the best trial's values:
                                      make train CONFIG=runs/<name>/search/best.yaml
"""

from __future__ import annotations

from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from pipeline.atomic import write_json, write_text
from pipeline.config import ExperimentConfig, to_dict
from pipeline.search.space import Dimension, from_json, with_values

PLOTS_PER_ROW = 4
ROUND_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def write_all(config: ExperimentConfig, result: dict, folder: Path) -> None:
    """Writes results.json, trials.txt, search.png and best.yaml into `folder`."""
    write_json(folder / "results.json", result)
    write_text(folder / "trials.txt", format_table(result, top=len(result["trials"])) + "\n")
    best = with_values(config, result["best"])
    header = (f"# The best of {len(result['trials'])} search trials (dev accuracy "
              f"{result['trials'][0]['dev_accuracy']:.4f}): "
              f"make train CONFIG={folder / 'best.yaml'}\n")
    write_text(folder / "best.yaml", header + yaml.safe_dump(
        to_dict(best), sort_keys=False, allow_unicode=True))
    plot(result, folder / "search.png")


def format_table(result: dict, top: int = 10) -> str:
    """The best `top` trials, one row each: rank, round, dev accuracy and every value drawn."""
    keys = list(result["keys"].values())
    widths = [max(len(key), 10) for key in keys]
    lines = [f"{len(result['trials'])} trials ({result['kind']}), best first, judged on dev:",
             "rank  round  dev acc  " + "  ".join(f"{key:>{width}s}"
                                                  for key, width in zip(keys, widths, strict=True))]
    for rank, trial in enumerate(result["trials"][:top], start=1):
        cells = "  ".join(f"{_cell(trial[key]):>{width}s}"
                          for key, width in zip(keys, widths, strict=True))
        lines.append(f"{rank:4d}  {trial['round']:5d}  {trial['dev_accuracy']:7.4f}  {cells}")
    best = " ".join(f"{key}={_cell(value)}" for key, value in result["best"].items())
    lines.append(f"best: {best}")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot(result: dict, path: Path) -> None:
    """Dev accuracy against each searched hyperparameter, coloured by round; log axes for
    values drawn on a log scale (1 - value for "one_minus_log"), categories for choices."""
    space = from_json(result["rounds"][0])
    columns = min(len(space), PLOTS_PER_ROW)
    rows = -(-len(space) // columns)
    figure = Figure(figsize=(3.4 * columns + 0.6, 3.2 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    for index, dimension in enumerate(space):
        axes = figure.add_subplot(rows, columns, index + 1)
        for number in range(1, len(result["rounds"]) + 1):
            trials = [trial for trial in result["trials"] if trial["round"] == number]
            axes.scatter([_x(dimension, trial[dimension.key]) for trial in trials],
                         [trial["dev_accuracy"] for trial in trials], s=20,
                         color=ROUND_COLOURS[(number - 1) % len(ROUND_COLOURS)],
                         label=f"round {number}")
        best = result["trials"][0]
        axes.scatter([_x(dimension, best[dimension.key])], [best["dev_accuracy"]], s=90,
                     facecolors="none", edgecolors="tab:red", label="best")
        _label(axes, dimension)
        axes.set_ylabel("dev accuracy" if index % columns == 0 else None)
    figure.axes[0].legend(fontsize=7)
    figure.suptitle(f"Search: {len(result['trials'])} trials ({result['kind']}), "
                    f"{len(result['rounds'])} rounds")
    figure.savefig(path, dpi=110)


def _x(dimension: Dimension, value):
    if dimension.scale == "choice":
        return str(value)  # matplotlib places strings as categories
    return 1.0 - value if dimension.scale == "one_minus_log" else value


def _label(axes, dimension: Dimension) -> None:
    if dimension.scale == "one_minus_log":
        axes.set(xscale="log", xlabel=f"1 - {dimension.key} (log)")
    elif dimension.scale == "log":
        axes.set(xscale="log", xlabel=f"{dimension.key} (log)")
    else:
        axes.set(xlabel=dimension.key)
    # after the scale, which resets it: labelled minor ticks overlap on spans under a decade
    axes.xaxis.set_minor_formatter(NullFormatter())


__all__ = ["write_all", "format_table", "plot"]
