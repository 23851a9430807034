"""`make bench`: every benchmark, ratios measured side by side in one run.

Prints each ratio beside its goal (`bench.goals.GOALS`), writes them and every other number to
runs/bench/results.json, and exits with status 1 when a ratio misses its goal, naming it.
Real photos come from flowers128 (`bench.datasets.FLOWERS`) when it is there; the throughput
benchmarks fall back to synthetic images, the accuracy comparisons are skipped without it.

    python -m bench                   # every suite
    python -m bench cached_features   # only the named suites
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.goals import check_goals, goals_table, missed_goals  # noqa: E402
from bench.suites import OUTPUT_DIR  # noqa: E402
from pipeline.atomic import write_json  # noqa: E402

RESULTS = OUTPUT_DIR / "results.json"
CURVES = {  # ratios measured at several points of one run
    "phase1_speedup_by_epochs": "phase 1 speedup by epochs E (default K), goal 0.8 x E",
    "phase1_speedup_by_epochs_plain_cache": "phase 1 speedup by epochs E (K=1), goal 0.8 x E",
    "time_to_accuracy_speedup_vs_keras_guide_by_margin": "time-to-accuracy speedup by margin "
                                                         "below the common best dev accuracy",
}


def main(argv: list[str]) -> int:
    """Runs the suites named in `argv[1:]` (all when none), then checks the goals.

    Returns:
        0 when every measured ratio meets its goal, 1 when one misses it, 2 on an unknown
        suite name.
    """
    from bench import suites

    only = argv[1:]
    unknown = [name for name in only if name not in suites.SUITES]
    if unknown:
        print(f"Unknown suite {', '.join(unknown)}. Expected any of: "
              f"{', '.join(suites.SUITES)}.", file=sys.stderr)
        return 2
    results = {}
    for name, run in suites.SUITES.items():
        if only and name not in only:
            continue
        print(f"\n== {name} ==", flush=True)
        started = time.perf_counter()
        results.update(run())
        results[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
        write_json(RESULTS, {"goals": check_goals(results), **results})
    return report(results)


def report(results: dict) -> int:
    """Prints the goals table, the curves and a line naming each missed goal.

    Returns:
        1 if a measured ratio missed its goal, else 0 (skipped ratios are not misses).
    """
    checked = check_goals(results)
    print("\n" + goals_table(checked))
    for key, title in CURVES.items():
        if key in results:
            print(f"{title}: " + ", ".join(f"{point} -> {value:.2f}"
                                           for point, value in results[key].items()))
    if "skipped" in results:
        print(f"Skipped: {results['skipped']}")
    print(f"\nAll numbers: {RESULTS}")
    misses = missed_goals(checked)
    for line in misses:
        print(line)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
