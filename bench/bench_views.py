"""What do more cached views buy? Dev and test accuracy, and time, against K.

Phase 1 trains the head on features cached for K augmented views of each training image, and
phase 2 fine-tunes on activations cached for the same K views: every view costs one forward
pass of the frozen base up front, and more views show the model more of the augmentation. This
runs the product's folder recipe on the same splits for each K and training seed and reports
what each K reached and what it cost, so K can be chosen on dev accuracy and time.

Run from the repository root: `python -m bench.bench_views` (the folder recipe on flowers128,
K = 1, 2, 3, seeds 0, 1, 2: about 30 minutes on 2 CPU cores). It prints a table and saves
`runs/bench/views.png` and `runs/bench/views.json`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.bench_augment_effect import train_and_test  # noqa: E402
from bench.datasets import FLOWERS  # noqa: E402
from bench.suites import OUTPUT_DIR  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.data.prepare import load_prepared, prepare_data  # noqa: E402


def compare_views(
    flowers_root: str | Path | None = None,
    *,
    views: Sequence[int] = (1, 2, 3),
    seeds: Sequence[int] = (0, 1, 2),
    config_path: str | Path = "configs/folder.yaml",
    overrides: Sequence[str] = (),
) -> dict:
    """Trains the recipe once per (K, seed) on the same splits and tests each model.

    Args:
        flowers_root: a class-folder dataset; None takes flowers128 in the shared datasets.
        views: the K values compared (`train.cached_views`).
        seeds: training seeds (`train.seed`); the splits do not depend on them.
        config_path: the experiment config every run starts from.
        overrides: more `section.key=value` overrides for every run.

    Returns:
        {"runs": one dict per run (views, seed, best dev accuracy of phase 1 and of the whole
         run, test accuracy, seconds of extraction, phase 1 and phase 2), "by_views": the mean
         of each over the seeds, per K}, or {"skipped": reason} when `flowers_root` is not a
        folder.
    """
    root = Path(flowers_root or FLOWERS)
    if not root.is_dir():
        return {"skipped": f"no dataset folder at {root}"}
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        def config_for(k: int, seed: int):
            return load_config(config_path, [
                "data.source=folder", f"data.path={root}", f"runs_dir={folder}",
                f"name=views{k}_seed{seed}", f"train.cached_views={k}", f"train.seed={seed}",
                *overrides])

        prepare_data(config_for(views[0], seeds[0]).data, Path(folder) / "data")
        data = load_prepared(Path(folder) / "data")
        for k in views:
            for seed in seeds:
                print(f"K={k}, seed {seed}", flush=True)
                runs.append({"views": k, "seed": seed, **_train_and_test(config_for(k, seed),
                                                                         data)})
    by_views = {str(k): {key: float(np.mean([run[key] for run in runs if run["views"] == k]))
                         for key in runs[0] if key not in ("views", "seed")}
                for k in views}
    return {"runs": runs, "by_views": by_views}


def _train_and_test(config, data) -> dict[str, float]:
    result, test_accuracy = train_and_test(config, data)
    dev = result["history"]["val_accuracy"]
    phase1_epochs = result["phase_boundaries"][0] if result["phase_boundaries"] else len(dev)
    timings = result["timings"]
    return {"phase1_best_dev_accuracy": max(dev[:phase1_epochs]),
            "best_dev_accuracy": max(dev),
            "test_accuracy": test_accuracy,
            "extract_features_s": timings["extract_features_s"],
            "phase1_head_s": timings["phase1_head_s"],
            "phase2_fine_tune_s": timings.get("phase2_fine_tune_s", 0.0)}


def plot_views(result: dict, path: Path) -> None:
    """Dev and test accuracy (each seed, and the mean) against K, with the seconds per K."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ks = sorted({run["views"] for run in result["runs"]})
    for key, colour in (("best_dev_accuracy", "tab:blue"), ("test_accuracy", "tab:orange")):
        axes.scatter([run["views"] for run in result["runs"]],
                     [run[key] for run in result["runs"]], color=colour, alpha=0.4, s=14)
        axes.plot(ks, [result["by_views"][str(k)][key] for k in ks], color=colour, marker="o",
                  label=f"{key.replace('_', ' ')} (mean of seeds)")
    for k in ks:  # what K costs: phase 2's time varies more with early stopping than with K
        seconds = result["by_views"][str(k)]["extract_features_s"]
        axes.annotate(f"features {seconds:.1f} s", (k, result["by_views"][str(k)]["test_accuracy"]),
                      textcoords="offset points", xytext=(0, -16), ha="center", fontsize=8)
    axes.set(xlabel="cached views per training image (K)", ylabel="accuracy", xticks=ks,
             title="What more cached views buy (mean of seeds; dots: each seed)")
    axes.margins(x=0.15)
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    result = compare_views()
    if "skipped" in result:
        print(result["skipped"])
        return
    print(f"{'K':>2} {'phase-1 dev':>11} {'dev':>6} {'test':>6} {'extract s':>9} "
          f"{'phase 1 s':>9} {'phase 2 s':>9}")
    for k, means in result["by_views"].items():
        print(f"{k:>2} {means['phase1_best_dev_accuracy']:11.4f} "
              f"{means['best_dev_accuracy']:6.4f} {means['test_accuracy']:6.4f} "
              f"{means['extract_features_s']:9.1f} {means['phase1_head_s']:9.1f} "
              f"{means['phase2_fine_tune_s']:9.1f}")
    write_json(OUTPUT_DIR / "views.json", result)
    plot_views(result, OUTPUT_DIR / "views.png")
    print(f"Saved {OUTPUT_DIR / 'views.json'} and {OUTPUT_DIR / 'views.png'}")


if __name__ == "__main__":
    main(sys.argv)
