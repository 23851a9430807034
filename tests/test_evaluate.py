"""Tests for pipeline.evaluate: metrics against hand-computed cases, diagnosis, tables."""

import numpy as np
import pytest

from pipeline.evaluate import (
    classification_metrics,
    diagnose_bias_variance,
    format_metrics_table,
    format_per_class_table,
    top_k_accuracy,
    train_error_sample,
)

# Hand-computed case. "bird" is in the labels but never predicted; "fish" is predicted but
# absent from the labels; "owl" appears in neither.
CLASS_NAMES = ["cat", "dog", "bird", "fish", "owl"]
LABELS = np.array([0, 0, 1, 1, 1, 2, 2])
PREDICTIONS = np.array([0, 1, 1, 1, 3, 1, 0])
# Rows = true, columns = predicted.
EXPECTED_CONFUSION = [
    [1, 1, 0, 0, 0],
    [0, 2, 0, 1, 0],
    [1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]


def scores_for(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities whose argmax is `predictions`."""
    probabilities = np.full((len(predictions), num_classes), 0.1 / (num_classes - 1))
    probabilities[np.arange(len(predictions)), predictions] = 0.9
    return probabilities


@pytest.fixture
def metrics() -> dict:
    return classification_metrics(LABELS, scores_for(PREDICTIONS, 5), CLASS_NAMES)


# --------------------------------------------------------------------------- metrics


def test_accuracy_and_confusion_matrix_match_hand_computation(metrics):
    assert metrics["accuracy"] == pytest.approx(3 / 7)
    assert metrics["error"] == pytest.approx(4 / 7)
    assert metrics["num_examples"] == 7
    assert metrics["confusion_matrix"] == EXPECTED_CONFUSION


def test_per_class_scores_match_hand_computation(metrics):
    per_class = metrics["per_class"]
    assert per_class["cat"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2}
    )
    # dog: predicted 4 times, 2 right; 3 true dogs. F1 = 2 * 1/2 * 2/3 / (1/2 + 2/3) = 4/7.
    assert per_class["dog"] == pytest.approx(
        {"precision": 1 / 2, "recall": 2 / 3, "f1": 4 / 7, "support": 3}
    )


def test_never_predicted_class_has_zero_precision(metrics):
    bird = metrics["per_class"]["bird"]
    assert bird == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}


def test_class_absent_from_labels_has_zero_recall_and_support(metrics):
    fish = metrics["per_class"]["fish"]
    assert fish == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_macro_f1_skips_classes_neither_labelled_nor_predicted(metrics):
    # cat, dog, bird (labelled) and fish (predicted) count; owl does not.
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 7 + 0 + 0) / 4)


def test_metrics_are_plain_python_types(metrics):
    assert type(metrics["accuracy"]) is float
    assert type(metrics["confusion_matrix"][0][0]) is int
    assert type(metrics["per_class"]["cat"]["support"]) is int


def test_one_hot_labels_give_the_same_metrics(metrics):
    one_hot = np.eye(5)[LABELS]
    assert classification_metrics(one_hot, scores_for(PREDICTIONS, 5), CLASS_NAMES) == metrics


def test_top5_only_with_more_than_five_classes(metrics):
    assert "top5_accuracy" not in metrics
    six_classes = classification_metrics(LABELS, scores_for(PREDICTIONS, 6), [*CLASS_NAMES, "x"])
    assert "top5_accuracy" in six_classes


def test_top5_accuracy_on_constructed_case():
    # 7 classes. Example 0: true class ranks 7th (miss). Example 1: true class ranks 5th (hit).
    # Example 2: true class ranks 1st (hit).
    probabilities = np.array([
        [0.01, 0.20, 0.19, 0.18, 0.17, 0.16, 0.09],
        [0.30, 0.25, 0.20, 0.15, 0.01, 0.02, 0.07],
        [0.05, 0.05, 0.05, 0.60, 0.10, 0.10, 0.05],
    ])
    labels = np.array([0, 6, 3])
    metrics = classification_metrics(labels, probabilities, list("abcdefg"))
    assert metrics["top5_accuracy"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)


def test_top_k_counts_a_tie_at_the_boundary_as_a_hit():
    probabilities = np.array([[0.5, 0.5, 0.0]])
    assert top_k_accuracy(np.array([1]), probabilities, k=1) == 1.0
    assert top_k_accuracy(np.array([2]), probabilities, k=2) == 0.0


@pytest.mark.parametrize(
    ("labels", "probabilities", "class_names", "message"),
    [
        (LABELS[:6], scores_for(PREDICTIONS, 5), CLASS_NAMES, "labels.shape=\\(6,\\)"),
        (LABELS, np.zeros(7), CLASS_NAMES, "probabilities.shape=\\(7,\\)"),
        (LABELS, np.zeros((7, 5, 1)), CLASS_NAMES, "probabilities.shape=\\(7, 5, 1\\)"),
        (LABELS, scores_for(PREDICTIONS, 5), CLASS_NAMES[:4], "Received: 4 class names"),
        (LABELS, scores_for(PREDICTIONS, 5), ["a", "a", "b", "c", "d"], "duplicates: \\['a'\\]"),
        (LABELS + 3, scores_for(PREDICTIONS, 5), CLASS_NAMES, "labels in \\[0, 4\\]"),
        (LABELS + 0.5, scores_for(PREDICTIONS, 5), CLASS_NAMES, "integer class ids"),
        (LABELS[:0], np.zeros((0, 5)), CLASS_NAMES, "at least one example"),
    ],
    ids=["length", "1d", "3d", "names", "duplicates", "range", "fractional", "empty"],
)
def test_invalid_inputs_raise_value_error(labels, probabilities, class_names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, probabilities, class_names)


def test_nan_probabilities_raise_value_error():
    probabilities = scores_for(PREDICTIONS, 5)
    probabilities[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        classification_metrics(LABELS, probabilities, CLASS_NAMES)


# --------------------------------------------------------------------------- diagnosis

HIGH_BIAS_KEYS = ["`model.backbone`", "`train.fine_tune_epochs`", "`model.dropout`", "`model.l2`"]
HIGH_VARIANCE_KEYS = ["`augment.chain: strong`", "`train.mixup_alpha", "`model.dropout`",
                      "`model.l2`", "`train.early_stopping_patience`"]
MISMATCH_KEYS = ["`data.split_folders`", "`data.split_ratios`"]


@pytest.mark.parametrize(
    ("errors", "verdict", "largest", "expected_keys"),
    [
        ({"train_error": 0.15, "dev_error": 0.16, "baseline_error": 0.02}, "high bias",
         "avoidable bias", HIGH_BIAS_KEYS),
        ({"train_error": 0.02, "dev_error": 0.10}, "high variance", "variance",
         HIGH_VARIANCE_KEYS),
        ({"train_error": 0.15, "dev_error": 0.35}, "high bias and high variance", "variance",
         ["`augment.chain: strong`", "`train.mixup_alpha"]),
        ({"train_error": 0.03, "dev_error": 0.04, "test_error": 0.10, "baseline_error": 0.02},
         "good fit", "dev/test mismatch", MISMATCH_KEYS),
        ({"train_error": 0.03, "dev_error": 0.04, "test_error": 0.05, "baseline_error": 0.02},
         "good fit", None, []),
    ],
    ids=["bias", "variance", "both", "mismatch", "good"],
)
def test_each_verdict_names_its_largest_gap_and_the_keys_to_change(errors, verdict, largest,
                                                                  expected_keys):
    diagnosis = diagnose_bias_variance(**errors)
    assert diagnosis["verdict"] == verdict
    assert diagnosis["largest_gap"] == largest
    steps = "\n".join(diagnosis["next_steps"])
    for key in expected_keys:
        assert key in steps
    if largest is None:
        assert diagnosis["next_steps"] == []
        assert diagnosis["advice"][0].startswith("[good fit]")
    else:
        assert diagnosis["advice"][0].startswith(f"[{largest} ")  # the largest gap comes first


def test_the_tolerance_decides_what_counts_as_a_problem():
    errors = {"train_error": 0.10, "dev_error": 0.14, "test_error": 0.15}
    assert diagnose_bias_variance(**errors, baseline_error=0.09)["verdict"] == "high variance"
    relaxed = diagnose_bias_variance(**errors, baseline_error=0.09, tolerance=0.05)
    assert relaxed["verdict"] == "good fit" and relaxed["largest_gap"] is None
    assert "tolerance 5.00%" in relaxed["summary"]


def test_the_tolerance_is_a_config_key(tmp_path):
    from pipeline.config import ConfigError, load_config

    assert load_config(None, ["evaluate.diagnosis_tolerance=0.05"]).evaluate \
        .diagnosis_tolerance == 0.05
    with pytest.raises(ConfigError, match="evaluate.diagnosis_tolerance"):
        load_config(None, ["evaluate.diagnosis_tolerance=1.5"])


def test_the_largest_gap_leads_when_several_are_high():
    diagnosis = diagnose_bias_variance(train_error=0.10, dev_error=0.14, test_error=0.30)
    assert diagnosis["largest_gap"] == "dev/test mismatch"  # +16 points against +10 and +4
    tags = [step.split("]")[0] for step in diagnosis["advice"]]
    assert tags[0] == "[dev/test mismatch +16.00%"
    assert tags.index("[avoidable bias +10.00%") < tags.index("[variance +4.00%")


def test_diagnosis_reports_the_gaps_as_numbers():
    diagnosis = diagnose_bias_variance(
        train_error=0.15, dev_error=0.16, test_error=0.165, baseline_error=0.02
    )
    assert diagnosis["avoidable_bias"] == pytest.approx(0.13)
    assert diagnosis["variance"] == pytest.approx(0.01)
    assert diagnosis["dev_test_gap"] == pytest.approx(0.005)
    assert "+13.00%" in diagnosis["summary"] and "+1.00%" in diagnosis["summary"]
    assert all("13.00%" in step for step in diagnosis["advice"])


def test_both_high_leaves_out_advice_that_trades_one_gap_for_the_other():
    advice = diagnose_bias_variance(train_error=0.15, dev_error=0.30)["advice"]
    assert not any("regularise less" in step or "regularise more" in step for step in advice)
    assert any(step.startswith("[both]") for step in advice)
    alone = diagnose_bias_variance(train_error=0.02, dev_error=0.30)["advice"]
    assert any("regularise more" in step for step in alone)


def test_dev_test_mismatch_is_flagged_beside_the_verdict():
    diagnosis = diagnose_bias_variance(train_error=0.03, dev_error=0.04, test_error=0.10,
                                       baseline_error=0.02)
    assert diagnosis["verdict"] == "good fit"
    assert diagnosis["dev_test_mismatch"] is True
    assert "dev/test mismatch" in diagnosis["summary"]
    assert any("[dev/test mismatch +6.00%]" in step for step in diagnosis["advice"])


def test_no_mismatch_without_test_error_or_within_tolerance():
    assert diagnose_bias_variance(train_error=0.03, dev_error=0.04)["dev_test_gap"] is None
    assert not diagnose_bias_variance(
        train_error=0.03, dev_error=0.04, test_error=0.05
    )["dev_test_mismatch"]


def test_a_gap_equal_to_the_tolerance_is_not_flagged():
    # 0.07 - 0.05 is 0.020000000000000004 in floating point.
    assert diagnose_bias_variance(train_error=0.05, dev_error=0.07,
                                  baseline_error=0.03)["verdict"] == "good fit"


def test_dev_below_train_suggests_checking_how_train_error_was_measured():
    advice = diagnose_bias_variance(train_error=0.10, dev_error=0.05, baseline_error=0.09)["advice"]
    assert any("without augmentation or dropout" in step for step in advice)


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        ({"train_error": 12.5, "dev_error": 0.2}, "train_error=12.5. Pass fractions"),
        ({"train_error": 0.1, "dev_error": -0.1}, "dev_error=-0.1"),
        ({"train_error": 0.1, "dev_error": 0.2, "test_error": 2.0}, "test_error=2.0"),
        ({"train_error": 0.1, "dev_error": 0.2, "tolerance": -0.01}, "tolerance=-0.01"),
    ],
)
def test_diagnosis_rejects_values_that_are_not_fractions(errors, message):
    with pytest.raises(ValueError, match=message):
        diagnose_bias_variance(**errors)


# --------------------------------------------------------------------------- tables


def test_metrics_table_shows_each_split_then_verdict_and_advice():
    table = format_metrics_table(
        {"train": {"accuracy": 0.98, "error": 0.02, "num_examples": 800},
         "dev": {"accuracy": 0.90, "error": 0.10, "num_examples": 100},
         "test": {"accuracy": 0.895, "error": 0.105, "top5_accuracy": 0.99}}
    )
    lines = table.splitlines()
    assert lines[1].split() == ["train", "98.00%", "2.00%", "-", "800"]
    assert lines[2].split() == ["dev", "90.00%", "10.00%", "-", "100"]
    assert lines[3].split() == ["test", "89.50%", "10.50%", "99.0%", "-"]
    assert "verdict: high variance" in table
    assert "`augment.chain: strong`" in table


def test_metrics_table_uses_a_given_diagnosis_and_accepts_accuracy_only():
    diagnosis = diagnose_bias_variance(train_error=0.2, dev_error=0.2, baseline_error=0.1)
    table = format_metrics_table({"dev": {"accuracy": 0.8}}, diagnosis=diagnosis)
    assert "20.00%" in table
    assert "verdict: high bias" in table


def test_metrics_table_rejects_unknown_split_names():
    with pytest.raises(ValueError, match="Rename 'val'/'validation' to 'dev'"):
        format_metrics_table({"train": {"error": 0.1}, "val": {"error": 0.2}})


def test_per_class_table_contains_every_class_and_score(metrics):
    table = format_per_class_table(metrics)
    dog_row = next(line for line in table.splitlines() if line.startswith("dog"))
    assert dog_row.split() == ["dog", "0.500", "0.667", "0.571", "3"]
    for name in CLASS_NAMES:
        assert name in table
    assert table.splitlines()[-1].split() == ["macro", "F1", f"{metrics['macro_f1']:.3f}"]


def test_per_class_table_rejects_a_dict_without_per_class():
    with pytest.raises(ValueError, match="per_class"):
        format_per_class_table({"accuracy": 0.5})


def test_train_error_sample_covers_every_class_of_class_sorted_data():
    # the folder source stores training images sorted by class: a first-N subset of 5,000
    # would measure train error on classes 0-1 only
    labels = np.repeat(np.arange(6), [3000, 2500, 800, 700, 2000, 1000])
    chosen = train_error_sample(labels, 5000)
    counts = np.bincount(labels[chosen], minlength=6)
    expected = 5000 * np.bincount(labels) / len(labels)
    assert np.all(np.abs(counts - expected) <= 1), counts
    np.testing.assert_array_equal(chosen, train_error_sample(labels, 5000))  # stable
    assert len(train_error_sample(labels, 0)) == len(labels)


def test_gaps_that_chance_alone_can_make_on_small_splits_are_not_problems():
    # the tiny run: 10 train images sampled, 2 dev, 4 test
    errors = {"train_error": 0.20, "dev_error": 0.0, "test_error": 0.25}
    tiny = diagnose_bias_variance(**errors, examples={"train": 10, "dev": 2, "test": 4})
    assert not tiny["dev_test_mismatch"] and tiny["largest_gap"] is None
    assert tiny["verdict"] == "too few images to tell"
    assert tiny["chance"]["dev/test mismatch"] > 0.5  # one image is 25-50 points here
    assert "chance: avoidable bias ±27.39%, variance ±" in tiny["summary"]
    [line] = [step for step in tiny["advice"] if "dev/test mismatch of" in step]
    assert line.startswith("[chance ±") and "2 dev and 4 test images" in line
    assert not any("variance -" in step and "below train error" in step
                   for step in tiny["advice"])  # -20 points on 2 dev images is no finding
    # without sizes the same errors read as a mismatch, as before
    assert diagnose_bias_variance(**errors)["dev_test_mismatch"]
    # the same gaps measured on 10,000 images each are real
    large = diagnose_bias_variance(**errors, examples={"train": 10_000, "dev": 10_000,
                                                       "test": 10_000})
    assert large["dev_test_mismatch"] and large["thresholds"]["dev/test mismatch"] == 0.02
    assert "chance" not in large["summary"]
    # a dev/test gap that chance can make leaves the bias/variance verdict alone
    fit = diagnose_bias_variance(train_error=0.10, dev_error=0.11, test_error=0.14,
                                 baseline_error=0.09,
                                 examples={"train": 2000, "dev": 500, "test": 500})
    assert fit["verdict"] == "good fit" and not fit["dev_test_mismatch"]
    assert any(step.startswith("[chance ±") for step in fit["advice"])
