"""Tests for bench.goals and the exit status of `python -m bench`, on small fake result dicts
(no benchmark runs)."""

from __future__ import annotations

import json

import pytest

import bench.__main__ as bench_main
from bench import suites
from bench.goals import GOALS, check_goals, goals_table, missed_goals


def all_met() -> dict:
    """A full result set in which every ratio meets its goal (E = 30 epochs for phase 1)."""
    return {
        "augment_speedup_vs_numpy_function": 5.1,
        "online_vs_preaugmented_train_speed": 0.98,
        "phase2_live_vs_preaugmented_train_speed": 0.97,
        "cached_head_epoch_speedup": 149.0,
        "extraction_vs_raw_forward": 3.2,
        "phase1_speedup_over_epochs": 25.7, "phase1_epochs": 30,
        "phase1_speedup_over_epochs_plain_cache": 30.9, "phase1_epochs_plain_cache": 30,
        "phase1_speedup_by_epochs": {"1": 1.38, "30": 25.7},
        "time_to_accuracy_speedup_vs_keras_guide": 3.96,
        "time_to_accuracy_speedup_vs_keras_guide_k1": 5.24,
        "test_accuracy_minus_keras_guide": 1.4,
        "test_accuracy_minus_keras_guide_k1": -0.8,
        "scale_data_speedup_vs_today": 2.5, "scale_data_speedup_vs_keras_loader": 1.1,
        "scale_data_stream_rss_n_over_4n": 0.95, "scale_train_rss_n_over_4n": 0.9,
    }


def test_every_goal_is_checked_with_its_bound():
    checked = check_goals(all_met())
    assert list(checked) == list(GOALS)
    assert all(entry["met"] is True for entry in checked.values())
    assert checked["phase1_speedup_over_epochs"]["goal"] == pytest.approx(24.0)  # 0.8 x E
    assert checked["cached_head_epoch_speedup"] == {
        "goal": 50, "measured": 149.0, "met": True,
        "description": GOALS["cached_head_epoch_speedup"].description}
    assert missed_goals(checked) == []


def test_a_ratio_under_its_goal_is_missed_and_named():
    results = all_met() | {"phase1_speedup_over_epochs": 19.9,
                           "test_accuracy_minus_keras_guide": -1.0}  # the bound itself is met
    checked = check_goals(results)
    assert checked["phase1_speedup_over_epochs"]["met"] is False
    assert checked["test_accuracy_minus_keras_guide"]["met"] is True
    assert missed_goals(checked) == ["MISSED phase1_speedup_over_epochs: measured 19.900, "
                                     "goal >= 24"]


def test_a_ratio_that_is_not_a_number_misses_its_goal():
    checked = check_goals(all_met() | {"extraction_vs_raw_forward": float("nan")})
    assert checked["extraction_vs_raw_forward"]["met"] is False


def test_ratios_not_measured_are_skipped_not_missed():
    results = {key: value for key, value in all_met().items()
               if "keras_guide" not in key}  # flowers128 absent
    checked = check_goals(results)
    skipped = [key for key, entry in checked.items() if entry["met"] is None]
    assert skipped == [key for key in GOALS if "keras_guide" in key]
    assert all(checked[key]["measured"] is None for key in skipped)
    assert missed_goals(checked) == []
    assert "skipped" in goals_table(checked)


def test_a_scaled_goal_without_its_factor_is_an_error():
    results = all_met()
    del results["phase1_epochs"]
    with pytest.raises(ValueError, match="0.8 x phase1_epochs.*Record it"):
        check_goals(results)


@pytest.fixture
def fake_suites(monkeypatch, tmp_path):
    """Replaces the real suites with ones returning `results`; results.json goes to tmp_path."""
    def install(**runs):
        monkeypatch.setattr(suites, "SUITES", {name: (lambda value=value: dict(value))
                                               for name, value in runs.items()})
        monkeypatch.setattr(bench_main, "RESULTS", tmp_path / "results.json")
        return tmp_path / "results.json"
    return install


def test_main_exits_non_zero_naming_the_missed_ratio(fake_suites, capsys):
    results = all_met() | {"cached_head_epoch_speedup": 42.0}
    path = fake_suites(throughput={k: v for k, v in results.items() if "keras" not in k},
                       accuracy={k: v for k, v in results.items() if "keras" in k})

    assert bench_main.main(["bench"]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("MISSED")] == [
        "MISSED cached_head_epoch_speedup: measured 42.000, goal >= 50"]
    written = json.loads(path.read_text())
    assert written["goals"]["cached_head_epoch_speedup"] == {
        "goal": 50, "measured": 42.0, "met": False,
        "description": GOALS["cached_head_epoch_speedup"].description}
    assert written["cached_head_epoch_speedup"] == 42.0 and "throughput_seconds" in written


def test_main_exits_zero_when_every_goal_is_met(fake_suites, capsys):
    fake_suites(everything=all_met())
    assert bench_main.main(["bench"]) == 0
    assert "MISSED" not in capsys.readouterr().out


def test_main_does_not_count_a_skipped_suite_as_a_miss(fake_suites, capsys):
    path = fake_suites(throughput={"cached_head_epoch_speedup": 60.0},
                       accuracy={"skipped": "no flowers128 folder at /absent"})
    assert bench_main.main(["bench"]) == 0
    output = capsys.readouterr().out
    assert "Skipped: no flowers128 folder at /absent" in output
    goals = json.loads(path.read_text())["goals"]
    assert goals["cached_head_epoch_speedup"]["met"] is True
    assert goals["time_to_accuracy_speedup_vs_keras_guide"] == {
        "goal": 3, "measured": None, "met": None,
        "description": GOALS["time_to_accuracy_speedup_vs_keras_guide"].description}


def test_main_runs_only_the_named_suites_and_rejects_unknown_ones(fake_suites, capsys):
    fake_suites(first={"cached_head_epoch_speedup": 10.0}, second={"extraction_vs_raw_forward": 1})
    assert bench_main.main(["bench", "second"]) == 0
    assert bench_main.main(["bench", "thrid"]) == 2
    assert "Unknown suite thrid. Expected any of: first, second." in capsys.readouterr().err
