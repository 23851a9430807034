"""`make bench`: every benchmark, ratios measured side by side in one run.

Prints a table of ratios against their goals and writes them all to runs/bench/results.json.
Real photos come from ../shared/datasets/flowers128 when it is there; the throughput
benchmarks fall back to synthetic images, the accuracy comparisons are skipped without it.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.suites import OUTPUT_DIR  # noqa: E402

RESULTS = OUTPUT_DIR / "results.json"
GOALS = {
    "augment_speedup_vs_numpy_function": ">= 2",
    "online_vs_preaugmented_train_speed": ">= 0.95",
    "cached_head_epoch_speedup": ">= 50",
    "phase1_speedup_over_epochs": ">= 0.8 x E (E=30, K=2)",
    "phase1_speedup_over_epochs_plain_cache": ">= 0.8 x E (E=30, K=1)",
    "extraction_vs_raw_forward": ">= 0.95",
    "time_to_accuracy_speedup_vs_keras_guide": ">= 3",
    "test_accuracy_minus_keras_guide": ">= -1 point",
    "time_to_accuracy_speedup_vs_keras_guide_k1": ">= 3 (K=1)",
    "test_accuracy_minus_keras_guide_k1": ">= -1 point (K=1)",
}
CURVES = {  # ratios measured at several points of one run
    "phase1_speedup_by_epochs": "phase 1 speedup by epochs E (K=2), goal 0.8 x E",
    "phase1_speedup_by_epochs_plain_cache": "phase 1 speedup by epochs E (K=1), goal 0.8 x E",
    "time_to_accuracy_speedup_vs_keras_guide_by_margin": "time-to-accuracy speedup by margin "
                                                         "below the common best dev accuracy",
}


def main(argv: list[str]) -> int:
    from bench import suites

    only = set(argv[1:])
    results = {}
    for name, run in suites.SUITES.items():
        if only and name not in only:
            continue
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        results.update(run())
        results[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        _write(results)
    print(f"\n{'ratio':45s} {'measured':>10s}  goal")
    for key, goal in GOALS.items():
        value = results.get(key)
        shown = "skipped" if value is None else f"{value:10.3f}"
        print(f"{key:45s} {shown:>10s}  {goal}")
    for key, title in CURVES.items():
        if key in results:
            print(f"{title}: " + ", ".join(f"{point} -> {value:.2f}"
                                           for point, value in results[key].items()))
    print(f"\nAll numbers: {RESULTS}")
    return 0


def _write(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    temporary = RESULTS.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, default=float) + "\n")
    temporary.replace(RESULTS)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
