"""Calibration: do the model's probabilities mean what they say?

A classifier is calibrated when, of the images it labels with confidence 0.8, about 80% are
right. `expected_calibration_error` (ECE) measures the gap: predictions are binned by their
top probability and each bin's |accuracy - mean confidence| is averaged, weighted by the bin's
share of examples (Guo et al., "On Calibration of Modern Neural Networks", 2017).
`fit_temperature` fits temperature scaling, the one-parameter fix from the same paper: the
logits are divided by a temperature T before the softmax, which changes every confidence and
no prediction (the ranking of the classes is unchanged, so accuracy is too).

The model outputs probabilities, not logits; log-probabilities serve as logits, because a
softmax is unchanged by adding a constant to every logit of an example.
Pure numpy; importing this module never imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # Guo et al.'s choice; with ~900 test images, about 60 per bin on average
_TEMPERATURE_RANGE = (0.05, 20.0)
# Fewer dev images than this fit a temperature to a handful of answers: with 2 dev images one
# run here fitted T = 0.05 (the range's edge), making every test probability near 0 or 1.
MIN_DEV_IMAGES = 50
# A fit near the search range's edges (a likelihood still falling there, when dev's answers
# are all right or all wrong) is no calibration; trained networks need about 0.5-5.
_PLAUSIBLE_TEMPERATURES = (0.1, 10.0)


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray,
                     bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin confidence, accuracy and count of the top prediction, bins equally wide in (0, 1].

    Returns:
        {"edges": bins + 1 floats, "confidence": mean top probability per bin (None when
        empty), "accuracy": fraction right per bin (None when empty), "count": examples}.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds confidences in (edges[i], edges[i + 1]]; a confidence of exactly 0 joins bin 0
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    result = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for bin_index in range(bins):
        members = index == bin_index
        count = int(members.sum())
        result["count"].append(count)
        result["confidence"].append(float(confidence[members].mean()) if count else None)
        result["accuracy"].append(float(correct[members].mean()) if count else None)
    return result


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """The bin-weighted mean of |accuracy - confidence|, a fraction in [0, 1].

    Example:
        >>> expected_calibration_error(np.array([0, 1]), np.array([[0.9, 0.1], [0.9, 0.1]]))
        0.4
    """
    table = reliability_bins(labels, probabilities, bins)
    total = sum(table["count"])
    gaps = [count * abs(accuracy - confidence) for count, accuracy, confidence
            in zip(table["count"], table["accuracy"], table["confidence"], strict=True) if count]
    return float(sum(gaps) / total)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens the probabilities, T < 1 sharpens them."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the true classes."""
    chosen = np.asarray(probabilities)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(chosen, 1e-12, 1.0))))


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels` (the dev split's).

    The likelihood is unimodal in log T, so a golden-section search over log T in
    [0.05, 20] finds it to about 1e-4 relative; no optimiser library needed for one parameter.
    """
    def loss(log_temperature: float) -> float:
        return negative_log_likelihood(labels,
                                       apply_temperature(probabilities, np.exp(log_temperature)))

    low, high = np.log(_TEMPERATURE_RANGE[0]), np.log(_TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    while high - low > 1e-4:
        if loss_left < loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return float(np.exp((low + high) / 2.0))


def why_not_applied(calibration: dict) -> str:
    """Why a `calibration_report`'s temperature was not kept (reports written before the
    reason was recorded were only ever refused for being no better on test)."""
    return calibration.get("not_applied_because") or "no better on test"


def _reason_not_to_apply(dev_images: int, temperature: float, better_on_test: bool) -> str | None:
    if dev_images < MIN_DEV_IMAGES:
        return f"dev has {dev_images} images, too few to fit it (at least {MIN_DEV_IMAGES})"
    low, high = _PLAUSIBLE_TEMPERATURES
    if not low <= temperature <= high:
        return (f"T = {temperature:.3f} is outside {low:g}-{high:g}: a degenerate fit (dev's "
                f"answers all right or all wrong), not a calibration")
    return None if better_on_test else "no better on test"


def calibration_report(dev_labels: np.ndarray, dev_probabilities: np.ndarray,
                       test_labels: np.ndarray, test_probabilities: np.ndarray) -> dict:
    """ECE before and after temperature scaling fitted on dev; the temperature is kept only
    when dev has at least `MIN_DEV_IMAGES` images, the fit is plausible (0.1-10, not run off
    towards the search range's edges) and it lowers the test ECE; else 1.0, as trained.

    Returns:
        {"bins", "temperature_fitted", "temperature" (the one to apply: fitted or 1.0),
         "applied", "not_applied_because" (None when applied, else the reason in words),
         "dev": {"ece", "ece_scaled", "nll", "nll_scaled"}, "test": {same},
         "reliability": {"plain": reliability_bins(test), "scaled": ... with the fitted T}}
    """
    temperature = fit_temperature(dev_labels, dev_probabilities)
    result = {"bins": ECE_BINS, "temperature_fitted": temperature}
    for split, labels, probabilities in (("dev", dev_labels, dev_probabilities),
                                         ("test", test_labels, test_probabilities)):
        scaled = apply_temperature(probabilities, temperature)
        result[split] = {
            "ece": expected_calibration_error(labels, probabilities),
            "ece_scaled": expected_calibration_error(labels, scaled),
            "nll": negative_log_likelihood(labels, probabilities),
            "nll_scaled": negative_log_likelihood(labels, scaled),
        }
    result["not_applied_because"] = _reason_not_to_apply(
        len(dev_labels), temperature, result["test"]["ece_scaled"] < result["test"]["ece"])
    result["applied"] = result["not_applied_because"] is None
    result["temperature"] = temperature if result["applied"] else 1.0
    result["reliability"] = {
        "plain": reliability_bins(test_labels, test_probabilities),
        "scaled": reliability_bins(test_labels, apply_temperature(test_probabilities,
                                                                  temperature)),
    }
    return result
