"""Calibration error and temperature scaling (`pipeline.calibration`), on constructed cases."""

import numpy as np
import pytest

from pipeline.calibration import (
    MIN_DEV_IMAGES,
    apply_temperature,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)


def softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def sampled(count: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), and the probabilities of a model `sharpen` times
    too confident: softmax(sharpen * logits). Its right temperature is `sharpen`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (count, 4))
    true = softmax(logits)
    labels = np.array([rng.choice(4, p=row) for row in true])
    return labels, softmax(sharpen * logits)


def test_ece_of_a_hand_computed_case():
    # both predictions say class 0 with 0.9; one is right: |0.5 - 0.9| = 0.4
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(np.array([0, 1]), probabilities) == pytest.approx(0.4)
    # a third, right and 0.6 confident, in its own bin: (2 * 0.4 + 1 * 0.4) / 3
    probabilities = np.vstack([probabilities, [[0.4, 0.6]]])
    assert expected_calibration_error(np.array([0, 1, 1]), probabilities) == pytest.approx(0.4)


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one():
    labels, calibrated = sampled(20000, sharpen=1.0, seed=0)
    _, overconfident = sampled(20000, sharpen=3.0, seed=0)
    assert expected_calibration_error(labels, calibrated) < 0.02
    assert expected_calibration_error(labels, overconfident) > 0.1


def test_reliability_bins_count_every_example_once():
    labels, probabilities = sampled(500, sharpen=2.0, seed=1)
    table = reliability_bins(labels, probabilities, bins=10)
    assert sum(table["count"]) == 500 and len(table["edges"]) == 11
    for count, accuracy, confidence, low, high in zip(
            table["count"], table["accuracy"], table["confidence"], table["edges"],
            table["edges"][1:], strict=False):
        assert (accuracy is None) == (count == 0)
        if count:
            assert low <= confidence <= high


def test_the_fitted_temperature_undoes_overconfidence_without_changing_predictions():
    labels, probabilities = sampled(5000, sharpen=3.0, seed=2)
    temperature = fit_temperature(labels, probabilities)
    assert temperature == pytest.approx(3.0, rel=0.1)
    scaled = apply_temperature(probabilities, temperature)
    np.testing.assert_array_equal(scaled.argmax(axis=1), probabilities.argmax(axis=1))
    assert expected_calibration_error(labels, scaled) < 0.03


def test_the_report_keeps_the_temperature_only_when_it_lowers_the_test_ece():
    dev_labels, dev = sampled(3000, sharpen=3.0, seed=3)
    test_labels, test = sampled(3000, sharpen=3.0, seed=4)
    report = calibration_report(dev_labels, dev, test_labels, test)
    assert report["applied"] and report["temperature"] == report["temperature_fitted"]
    assert report["test"]["ece_scaled"] < report["test"]["ece"]
    # a test split that is already calibrated: the dev temperature would make it worse
    test_labels, test = sampled(3000, sharpen=1.0, seed=5)
    report = calibration_report(dev_labels, dev, test_labels, test)
    assert not report["applied"] and report["temperature"] == 1.0
    assert sum(report["reliability"]["plain"]["count"]) == 3000


def test_a_temperature_is_not_kept_from_too_small_a_dev_split_or_a_degenerate_fit():
    test_labels, test = sampled(3000, sharpen=3.0, seed=4)
    dev_labels, dev = sampled(3000, sharpen=3.0, seed=3)
    few = calibration_report(dev_labels[:MIN_DEV_IMAGES - 1], dev[:MIN_DEV_IMAGES - 1],
                             test_labels, test)
    assert not few["applied"] and few["temperature"] == 1.0
    assert few["not_applied_because"] == (f"dev has {MIN_DEV_IMAGES - 1} images, too few to "
                                          f"fit it (at least {MIN_DEV_IMAGES})")
    enough = calibration_report(dev_labels[:MIN_DEV_IMAGES], dev[:MIN_DEV_IMAGES],
                                test_labels, test)
    assert enough["applied"] and enough["not_applied_because"] is None
    # every dev answer right: the likelihood wants T -> 0, towards the search range's edge
    right = np.eye(4)[dev_labels] * 0.6 + 0.1
    degenerate = calibration_report(dev_labels, right, test_labels, test)
    assert degenerate["temperature_fitted"] < 0.1 and not degenerate["applied"]
    assert "a degenerate fit" in degenerate["not_applied_because"]
