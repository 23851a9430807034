"""The performance goals: one table, each measured ratio's lower bound beside what it compares.

`python -m bench` checks every result against this table, writes each goal beside its
measurement to runs/bench/results.json and exits non-zero when one is missed. A ratio that was
not measured (its suite not run, or skipped because flowers128 is absent) is skipped, not missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """A lower bound on one measured ratio.

    Attributes:
        minimum: the ratio must be at least this, times the result named by `per` if given.
        description: what the ratio compares, in one line.
        per: a results key whose value multiplies `minimum` (phase 1 over E epochs: 0.8 x E).
    """

    minimum: float
    description: str
    per: str = ""


# Where no K is named, K is the product's default, `TrainConfig.cached_views`.
GOALS: dict[str, Goal] = {
    "augment_speedup_vs_numpy_function": Goal(
        2, "augmentation images/s vs per-image tf.numpy_function + AUTOTUNE"),
    "online_vs_preaugmented_train_speed": Goal(
        0.95, "training images/s (Lite0), augmenting online vs pre-augmented images"),
    "phase2_live_vs_preaugmented_train_speed": Goal(
        0.95, "pixel-fed phase 2 images/s (Lite0 from block5a, default job's size), augmenting "
              "live vs the same images pre-augmented"),
    "cached_head_epoch_speedup": Goal(50, "cached head epoch vs frozen end-to-end epoch"),
    "extraction_vs_raw_forward": Goal(
        0.95, "feature extraction (the product's engine) vs the base's raw tf.function forward"),
    "phase1_speedup_over_epochs": Goal(
        0.8, "phase 1 over E epochs (extraction of K views + E cached epochs) vs E end-to-end "
             "epochs; goal 0.8 x E", per="phase1_epochs"),
    "phase1_speedup_over_epochs_plain_cache": Goal(
        0.8, "the same with a plain cache (K=1, no augmentation); goal 0.8 x E",
        per="phase1_epochs_plain_cache"),
    "time_to_accuracy_speedup_vs_keras_guide": Goal(
        3, "time to the same dev accuracy on flowers128 vs the Keras-guide recipe"),
    "time_to_accuracy_speedup_vs_keras_guide_k1": Goal(3, "the same with K=1"),
    "test_accuracy_minus_keras_guide": Goal(
        -1, "test accuracy minus the Keras-guide recipe's, in points"),
    "test_accuracy_minus_keras_guide_k1": Goal(-1, "the same with K=1"),
    "scale_data_speedup_vs_today": Goal(
        2, "data stage photos/s on 4N 1024x768 JPEGs, streaming vs before (one thread)"),
    "scale_data_speedup_vs_keras_loader": Goal(
        1, "the same, streaming vs one pass of keras.utils.image_dataset_from_directory"),
    "scale_data_stream_rss_n_over_4n": Goal(
        0.8, "data stage peak memory at N over at 4N photos (4x photos, at most 1.25x memory)"),
    "scale_train_rss_n_over_4n": Goal(
        0.8, "training peak memory at N over at 4N photos (4x photos, at most 1.25x memory)"),
}


def check_goals(results: dict) -> dict[str, dict]:
    """Each goal of `GOALS` beside its measurement in `results`, as results.json stores them.

    Args:
        results: the merged dicts of the benchmark suites.

    Returns:
        {key: {"goal": bound, "measured": value, "met": bool, "description": str}} in `GOALS`
        order; "measured" and "met" are None where the ratio was not measured (skipped).

    Raises:
        ValueError: If a ratio was measured but the result its goal is scaled by was not.
    """
    return {key: _check(key, goal, results) for key, goal in GOALS.items()}


def _check(key: str, goal: Goal, results: dict) -> dict:
    measured = results.get(key)
    bound = goal.minimum
    if goal.per and goal.per in results:
        bound = goal.minimum * results[goal.per]
    elif goal.per and measured is not None:
        raise ValueError(f"The goal of {key} is {goal.minimum} x {goal.per}, but the results "
                         f"have no {goal.per}. Record it beside {key}. Received keys: "
                         f"{', '.join(sorted(results))}.")
    met = None if measured is None else bool(math.isfinite(measured) and measured >= bound)
    return {"goal": bound, "measured": measured, "met": met, "description": goal.description}


def missed_goals(checked: dict[str, dict]) -> list[str]:
    """One line for each ratio under its goal (skipped ones are not missed)."""
    return [f"MISSED {key}: measured {entry['measured']:.3f}, goal >= {entry['goal']:g}"
            for key, entry in checked.items() if entry["met"] is False]


def goals_table(checked: dict[str, dict]) -> str:
    """The ratios, their measurements and goals as a printable table."""
    lines = [f"{'ratio':45s} {'measured':>10s}  {'goal':>8s}  status"]
    for key, entry in checked.items():
        measured = "-" if entry["measured"] is None else f"{entry['measured']:10.3f}"
        status = {None: "skipped", True: "met", False: "MISSED"}[entry["met"]]
        lines.append(f"{key:45s} {measured:>10s}  >= {entry['goal']:<5g}  {status}")
    return "\n".join(lines)
