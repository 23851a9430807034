"""What `train.deterministic` costs: training time with and without TensorFlow op determinism.

Determinism is process-wide in TensorFlow (it can be turned on, never off), so each run is its
own `python -m pipeline train` process, on the same prepared data (a stratified share of
flowers128's photos, linked into a temporary folder, through the folder recipe
`configs/folder.yaml`). The runs alternate (default, deterministic, default, ...) so that a
machine getting busier or quieter weighs on both; the ratio compares their medians. Whether
two runs of each kind ended with the same weights is reported too.

    python -m bench determinism        (part of `make bench`)
    python -m bench.bench_determinism [fraction]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.datasets import FLOWERS

TIMINGS = ("extract_features_s", "phase1_head_s", "phase2_fine_tune_s")


def bench_determinism(fraction: float = 0.3, repeats: int = 2) -> dict:
    """Trains the folder recipe `repeats` times each way, alternating.

    Returns:
        {"determinism_time_ratio": median deterministic / median default training seconds,
         per-phase ratios, "determinism_<kind>_runs_identical": whether the two runs of a kind
         ended with the same weights, sizes and seconds}, or {"skipped": reason}.
    """
    if not FLOWERS.is_dir():
        return {"skipped": f"no flowers128 at {FLOWERS}"}
    with tempfile.TemporaryDirectory() as folder:
        photos = _share_of_photos(FLOWERS, Path(folder) / "photos", fraction)
        count = photos_count(photos)
        seconds: dict[bool, list[dict]] = {False: [], True: []}
        weights: dict[bool, list[list[np.ndarray]]] = {False: [], True: []}
        for _ in range(repeats):
            for deterministic in (False, True):
                timings, model = _train(photos, Path(folder), deterministic, len(
                    seconds[deterministic]))
                seconds[deterministic].append(timings)
                weights[deterministic].append(model)
    results = {"determinism_photos": count, "determinism_repeats": repeats}
    for name in (*TIMINGS, "total"):
        default = statistics.median(run[name] for run in seconds[False])
        determined = statistics.median(run[name] for run in seconds[True])
        suffix = "" if name == "total" else f"_{name.removesuffix('_s')}"
        results[f"determinism_time_ratio{suffix}"] = round(determined / default, 3)
        results[f"determinism_seconds{suffix}"] = {"default": round(default, 1),
                                                   "deterministic": round(determined, 1)}
    for deterministic, kind in ((False, "default"), (True, "deterministic")):
        first, *others = weights[deterministic]
        results[f"determinism_{kind}_runs_identical"] = all(
            all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
            for other in others)
    return results


def _share_of_photos(root: Path, target: Path, fraction: float) -> Path:
    """Links the first `fraction` of each class folder's photos (in name order) into target."""
    for class_folder in sorted(path for path in root.iterdir() if path.is_dir()):
        photos = sorted(path for path in class_folder.iterdir() if path.is_file())
        (target / class_folder.name).mkdir(parents=True)
        for photo in photos[:max(1, round(fraction * len(photos)))]:
            (target / class_folder.name / photo.name).symlink_to(photo)
    return target


def photos_count(root: Path) -> int:
    return sum(1 for path in root.rglob("*") if path.is_symlink())


def _train(photos: Path, folder: Path, deterministic: bool,
           index: int) -> tuple[dict, list[np.ndarray]]:
    name = f"{'deterministic' if deterministic else 'default'}_{index}"
    command = [sys.executable, "-m", "pipeline", "all", "--config", "configs/folder.yaml",
               "data.source=folder", f"data.path={photos}", f"runs_dir={folder / 'runs'}",
               f"export.models_dir={folder / 'models'}", "export.formats=[keras]",
               f"name={name}", f"train.deterministic={str(deterministic).lower()}"]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    run_dir = folder / "runs" / name
    timings = json.loads((run_dir / "train_history.json").read_text())["timings"]
    timings["total"] = sum(timings[key] for key in TIMINGS)
    import pipeline.backbones  # noqa: F401  (registers the layers model.keras holds)
    from pipeline.model import load_classifier

    return timings, load_classifier(run_dir / "model.keras").get_weights()


if __name__ == "__main__":
    print(json.dumps(bench_determinism(float(sys.argv[1]) if len(sys.argv) > 1 else 0.3),
                     indent=2))
