"""The evaluate stage: held-out metrics, the bias/variance diagnosis and terminal tables.

`evaluate_stage` runs the trained model of a run on its train sample, dev and test splits (the
test split is read here and nowhere else), writes `metrics.json` and the run report. Everything
else is a pure function of numpy arrays and plain dicts, cheap to test; importing this module
never imports TensorFlow. Errors are fractions in [0, 1] throughout (0.125 means 12.5%).

The diagnosis follows Andrew Ng's recipe for reading train/dev/test errors:

- avoidable bias = train error - baseline error (human-level or Bayes-error proxy);
- variance = dev error - train error;
- dev/test mismatch = test error - dev error.

Example:
    >>> metrics = {split: classification_metrics(labels[split], probabilities[split], names)
    ...            for split in ("train", "dev", "test")}
    >>> diagnosis = diagnose_bias_variance(train_error=metrics["train"]["error"],
    ...                                    dev_error=metrics["dev"]["error"],
    ...                                    test_error=metrics["test"]["error"])
    >>> print(format_metrics_table(metrics, diagnosis=diagnosis))
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_json
from pipeline.calibration import why_not_applied
from pipeline.config import EvaluateConfig
from pipeline.data.splits import SPLIT_NAMES, stratified_sample

TOP_K = 5
# Gaps are differences of floats: 0.07 - 0.05 is 0.020000000000000004, which must not count
# as exceeding a 0.02 tolerance.
_GAP_EPSILON = 1e-9

# The three gaps of the diagnosis, each between two errors: (name, lower, upper).
GAPS = (
    ("avoidable bias", "baseline_error", "train_error"),
    ("variance", "train_error", "dev_error"),
    ("dev/test mismatch", "dev_error", "test_error"),
)
# What to change for each gap, naming the config keys; one place, so a renamed key is fixed
# once. The trade-off steps lower one gap by raising the other, so they are left out when both
# bias and variance are high.
NEXT_STEPS = {
    "avoidable bias": (
        "try a bigger backbone (`model.backbone`; `make backbones` lists them)",
        "fine-tune deeper and longer (`train.fine_tune_epochs`, "
        "`train.fine_tune_learning_rate`) and train the head longer (`train.head_epochs`)",
    ),
    "variance": (
        "get more training data (more images per class in the data folder)",
        "augment harder (`augment.chain: strong`, more `train.cached_views`) or mix up "
        "examples (`train.mixup_alpha: 0.2-0.4`)",
    ),
    "dev/test mismatch": (
        "draw dev and test from the same distribution: let the data stage carve both from one "
        "pool of images (leave out a given test folder, or name the folders with "
        "`data.split_folders`)",
        "if dev and test do come from one distribution, dev was overfit by repeated tuning: "
        "use a bigger dev set (`data.split_ratios`)",
    ),
}
TRADE_OFF_STEPS = {
    "avoidable bias": ("regularise less (lower `model.dropout`, `model.l2`, "
                       "`train.mixup_alpha`)",),
    "variance": (
        "regularise more (raise `model.dropout`, `model.l2`)",
        "stop earlier (`train.early_stopping_patience`)",
    ),
}


# --------------------------------------------------------------------------- the stage


def evaluate_stage(config: EvaluateConfig, run_dir: Path, *, config_summary: dict) -> list[str]:
    """Evaluates `run_dir/model.keras` on the run's splits; writes metrics.json and the report.

    Args:
        config: the evaluate section of the experiment config.
        run_dir: the run folder, holding the data stage's output and the trained model.
        config_summary: the resolved experiment config as a dict, listed in the report.

    Returns:
        The outputs written, relative to `run_dir`.
    """
    from pipeline.calibration import calibration_report
    from pipeline.data.prepare import load_prepared
    from pipeline.model import load_classifier
    from pipeline.report import write_report
    from pipeline.train import load_history

    data = load_prepared(run_dir / "data")
    model = load_classifier(run_dir / "model.keras")
    metrics, labels, probabilities = predict_splits(model, data, config)
    diagnosis = diagnose_bias_variance(
        train_error=metrics["train"]["error"], dev_error=metrics["dev"]["error"],
        test_error=metrics["test"]["error"], baseline_error=config.baseline_error,
        tolerance=config.diagnosis_tolerance,
        examples={split: metrics[split]["num_examples"] for split in SPLIT_NAMES})
    history = load_history(run_dir)
    names = list(data.class_names)
    result = {
        **metrics, "diagnosis": diagnosis, "class_names": names,
        "timings": history["timings"], "image_size": history["image_size"],
        "model": parameter_counts(model, config_summary["model"]["backbone"],
                                  history.get("fine_tune_from", "top")),
        # the temperature the exported model's probabilities should use (1.0: as trained)
        "calibration": calibration_report(labels["dev"], probabilities["dev"],
                                          labels["test"], probabilities["test"]),
        "mistakes": most_confident_mistakes(labels["test"], probabilities["test"], names),
        "confused_pairs": most_confused_pairs(metrics["test"]["confusion_matrix"], names),
    }
    if config.tta:
        result["tta"] = tta_metrics(model, data, metrics, names)
    write_json(run_dir / "metrics.json", result)
    print(format_per_class_table(metrics["test"]))
    print(format_metrics_table(metrics, diagnosis=diagnosis))
    print(format_extras(result))
    report = write_report(run_dir, result, history, config_summary=config_summary,
                          test_images=data.images("test"))
    print(f"Report: {report} (and report.html beside it, one self-contained page)")
    return ["metrics.json", "report.md", "report.html"]


def predict_splits(model, data, config: EvaluateConfig) -> tuple[dict, dict, dict]:
    """The model's probabilities on the train sample, dev and test; their metrics (with the
    seconds each took), labels and probabilities by split."""
    from pipeline.predict import predict_array

    metrics, labels, probabilities = {}, {}, {}
    for split in SPLIT_NAMES:
        images, labels[split] = data.images(split), data.labels(split)
        if split == "train":
            # Train error on a stable stratified sample: enough for a bias/variance diagnosis.
            keep = train_error_sample(labels[split], config.train_error_examples)
            images, labels[split] = images[keep], labels[split][keep]
        started = time.perf_counter()
        probabilities[split] = predict_array(model, images, description=f"Evaluating ({split})")
        metrics[split] = classification_metrics(labels[split], probabilities[split],
                                                 data.class_names)
        metrics[split]["seconds"] = time.perf_counter() - started
    return metrics, labels, probabilities


def parameter_counts(model, backbone: str, fine_tune_from: str = "top") -> dict[str, int]:
    """Parameters of the classifier: in all, and trainable in each phase (phase 1: the head;
    phase 2: the base from `fine_tune_from`, the point training used, and the head)."""
    from pipeline.backbones import freeze_backbone, get_backbone_spec

    spec = get_backbone_spec(backbone)
    base = next(layer for layer in model.layers
                if hasattr(layer, "layers") and layer.name != "head")
    head = model.get_layer("head")

    def trainable(*layers) -> int:
        return sum(int(np.prod(weight.shape)) for layer in layers
                   for weight in layer.trainable_weights)

    freeze_backbone(base, spec, unfreeze_top=True, fine_tune_from=fine_tune_from)
    phase2 = trainable(base, head)
    freeze_backbone(base, spec, unfreeze_top=False)
    return {"total": int(model.count_params()), "trainable_phase1": trainable(head),
            "trainable_phase2": phase2, "frozen_phase2": int(model.count_params()) - phase2}


# --------------------------------------------------------------------------- predictions


def train_error_sample(labels: np.ndarray, count: int) -> np.ndarray:
    """The training examples on which train error is measured: all of them, or a stratified
    random sample of about `count` (seeded, so every evaluation of a run uses the same).

    A first-`count` subset would do for shuffled data, but the folder source stores images
    sorted by class, and the verdict would then speak for the first classes only.
    """
    if not count or count >= len(labels):
        return np.arange(len(labels))
    return stratified_sample(labels, count / len(labels), seed=0)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Computes accuracy, per-class precision/recall/F1 and the confusion matrix.

    Only the ranking of the scores is used, so logits work as well as probabilities.
    Conventions for empty denominators (all documented, all 0.0, never NaN):

    - precision of a class that is never predicted is 0.0;
    - recall of a class absent from `labels` is 0.0 (its support is 0);
    - F1 is 0.0 when precision + recall is 0.

    `macro_f1` averages F1 over the classes that occur in `labels` or in the predictions
    (as scikit-learn does by default): a class seen in neither carries no evidence.
    `top5_accuracy` is present only with more than 5 classes; a tie at the 5th place
    counts as a hit, as `tf.math.in_top_k` does.

    Args:
        labels: Integer class ids of shape `(num_examples,)`, or one-hot labels of shape
            `(num_examples, num_classes)`.
        probabilities: Scores of shape `(num_examples, num_classes)`.
        class_names: One name per class, in class-id order.

    Returns:
        A JSON-serialisable dict with keys `accuracy`, `error`, `top5_accuracy` (more than
        5 classes only), `num_examples`, `per_class` (`{name: {"precision", "recall", "f1",
        "support"}}`), `macro_f1` and `confusion_matrix` (rows = true, columns = predicted).

    Raises:
        ValueError: If shapes disagree, scores are not finite, labels are out of range or
            class names are duplicated.

    Example:
        >>> classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]),
        ...                        ["cat", "dog"])["accuracy"]
        0.5
    """
    labels, probabilities = _validate_predictions(labels, probabilities, class_names)
    predictions = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predictions, num_classes=len(class_names))
    per_class = per_class_metrics(confusion, class_names)
    accuracy = float(np.trace(confusion) / len(labels))
    metrics = {"accuracy": accuracy, "error": 1.0 - accuracy}
    if len(class_names) > TOP_K:
        metrics[f"top{TOP_K}_accuracy"] = top_k_accuracy(labels, probabilities, k=TOP_K)
    observed = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    f1_scores = [scores["f1"] for scores in per_class.values()]
    metrics["num_examples"] = int(len(labels))
    metrics["per_class"] = per_class
    metrics["macro_f1"] = float(np.mean(np.asarray(f1_scores)[observed]))
    metrics["confusion_matrix"] = confusion.tolist()
    return metrics


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `(true, predicted)` pairs; rows are true classes, columns predicted ones.

    Args:
        labels: Integer class ids of shape `(num_examples,)`.
        predictions: Integer class ids of shape `(num_examples,)`.
        num_classes: Size of the square matrix.

    Returns:
        An int64 array of shape `(num_classes, num_classes)`.
    """
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion


def per_class_metrics(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Args:
        confusion: Square count matrix, rows = true classes, columns = predicted classes.
        class_names: One name per row.

    Returns:
        `{name: {"precision", "recall", "f1", "support"}}`, with 0.0 for empty denominators.
    """
    true_positives = np.diag(confusion).astype(np.float64)
    precision = _safe_divide(true_positives, confusion.sum(axis=0))
    recall = _safe_divide(true_positives, confusion.sum(axis=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    support = confusion.sum(axis=1)
    return {
        name: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
        }
        for index, name in enumerate(class_names)
    }


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Fraction of examples whose true class is among the `k` highest scores.

    Ties are generous: an example is a hit when fewer than `k` classes score strictly
    higher than its true class (the `tf.math.in_top_k` rule).

    Args:
        labels: Integer class ids of shape `(num_examples,)`.
        probabilities: Scores of shape `(num_examples, num_classes)`.
        k: How many top-scoring classes count as a hit.

    Returns:
        The top-k accuracy as a float in [0, 1].
    """
    true_scores = probabilities[np.arange(len(labels)), labels]
    classes_ranked_higher = (probabilities > true_scores[:, None]).sum(axis=1)
    return float(np.mean(classes_ranked_higher < k))


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division that yields 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    result = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=result, where=np.asarray(denominator) != 0)
    return result


def _validate_predictions(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes and values; returns integer labels and float scores."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(
            "Expected probabilities of shape (num_examples, num_classes). "
            f"Received: probabilities.shape={probabilities.shape}. "
            "Pass the model's output for the whole split, e.g. model.predict(dataset)."
        )
    num_examples, num_classes = probabilities.shape
    if num_classes != len(class_names):
        raise ValueError(
            f"Expected {num_classes} class names to match "
            f"probabilities.shape={probabilities.shape}. "
            f"Received: {len(class_names)} class names. Pass one name per model output."
        )
    if len(set(class_names)) != len(class_names):
        duplicates = sorted(name for name, count in Counter(class_names).items() if count > 1)
        raise ValueError(f"Class names must be unique. Received duplicates: {duplicates}.")
    if num_examples == 0:
        raise ValueError("Expected at least one example. Received: probabilities.shape=(0, ...).")
    if not np.all(np.isfinite(probabilities)):
        raise ValueError(
            "Expected finite probabilities. Received NaN or inf; training probably diverged "
            "(lower the learning rate) or the input was not normalised."
        )
    return _integer_labels(labels, probabilities.shape), probabilities


def _integer_labels(labels: np.ndarray, probabilities_shape: tuple[int, int]) -> np.ndarray:
    """Turns integer or one-hot labels into validated integer class ids."""
    labels = np.asarray(labels)
    num_examples, num_classes = probabilities_shape
    if labels.ndim == 2 and labels.shape == probabilities_shape:
        labels = labels.argmax(axis=1)
    if labels.shape != (num_examples,):
        raise ValueError(
            f"Expected labels of shape ({num_examples},) or one-hot {probabilities_shape} "
            f"to match probabilities.shape={probabilities_shape}. "
            f"Received: labels.shape={labels.shape}. Check both come from the same split."
        )
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise ValueError(f"Expected integer class ids. Received: labels.dtype={labels.dtype}.")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"Expected labels in [0, {num_classes - 1}]. "
            f"Received: min={labels.min()}, max={labels.max()}. "
            "Check class_names covers every class in the dataset."
        )
    return labels


# --------------------------------------------------------------------------- mistakes


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray,
                            class_names: Sequence[str], count: int = 12) -> list[dict]:
    """The examples predicted wrong with the highest confidence, most confident first.

    Returns:
        Up to `count` dicts: `index` (in the split), `true`, `predicted` (class names),
        `confidence` (the predicted class's probability) and `true_probability`.
    """
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:count]
    return [{"index": int(index), "true": class_names[labels[index]],
             "predicted": class_names[predicted[index]],
             "confidence": float(probabilities[index, predicted[index]]),
             "true_probability": float(probabilities[index, labels[index]])}
            for index in order]


def most_confused_pairs(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                        count: int = 5) -> list[dict]:
    """The (true, predicted) pairs of different classes with the most examples.

    Returns:
        Up to `count` dicts: `true`, `predicted`, `count` and `fraction` (of the true class).
    """
    counts = np.asarray(confusion)
    off_diagonal = [(int(counts[row, column]), row, column)
                    for row, column in np.ndindex(counts.shape)
                    if row != column and counts[row, column] > 0]
    off_diagonal.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [{"true": class_names[row], "predicted": class_names[column], "count": number,
             "fraction": number / int(counts[row].sum())}
            for number, row, column in off_diagonal[:count]]


# --------------------------------------------------------------------------- test-time augmentation

TTA_CROP = 0.875  # each crop keeps this fraction of the side, as the common 224-of-256 does
TTA_VIEWS = ("original", "mirrored", "centre crop", "top-left crop", "bottom-right crop")


def tta_views(images: np.ndarray) -> dict[str, np.ndarray]:
    """The views test-time augmentation averages over, for square uint8 images (N, S, S, C):
    the images, their mirror images and three crops (the model's resize takes them to its
    input size, as it does the stored images)."""
    side = images.shape[1]
    crop = int(round(side * TTA_CROP))
    offset, far = (side - crop) // 2, side - crop
    return {
        "original": images,
        "mirrored": images[:, :, ::-1],
        "centre crop": images[:, offset:offset + crop, offset:offset + crop],
        "top-left crop": images[:, :crop, :crop],
        "bottom-right crop": images[:, far:, far:],
    }


def tta_probabilities(model, images: np.ndarray, description: str) -> np.ndarray:
    """The model's probabilities averaged over `tta_views`.

    Every view is resized to the model's input as evaluation does, and all of them go through
    one `predict_array` call: one traced graph, so the cost measured is the forward passes'.
    """
    from pipeline.predict import eval_inputs, predict_array

    size = model.input_shape[1]
    views = [eval_inputs(np.ascontiguousarray(view), size) for view in tta_views(images).values()]
    probabilities = predict_array(model, np.concatenate(views), description=description)
    return probabilities.reshape(len(views), len(images), -1).mean(axis=0)


def tta_metrics(model, data, plain: dict, class_names: Sequence[str]) -> dict:
    """Dev and test accuracy with test-time augmentation, beside the plain figures, and what
    it cost: seconds against the plain predictions' seconds on the same splits."""
    result = {"views": list(TTA_VIEWS), "crop_fraction": TTA_CROP}
    seconds = 0.0
    for split in ("dev", "test"):
        started = time.perf_counter()
        probabilities = tta_probabilities(model, data.images(split), f"TTA ({split})")
        seconds += time.perf_counter() - started
        metrics = classification_metrics(data.labels(split), probabilities, class_names)
        result[split] = {"accuracy": metrics["accuracy"], "error": metrics["error"],
                         "plain_accuracy": plain[split]["accuracy"]}
    plain_seconds = plain["dev"]["seconds"] + plain["test"]["seconds"]
    result.update(seconds=seconds, plain_seconds=plain_seconds,
                  cost=seconds / plain_seconds if plain_seconds else None)
    return result


def format_extras(result: dict) -> str:
    """Calibration and test-time augmentation in a few lines for the terminal."""
    calibration = result["calibration"]
    test = calibration["test"]
    kept = "kept" if calibration["applied"] else f"not kept: {why_not_applied(calibration)}"
    lines = [f"calibration (test, {calibration['bins']} bins): ECE {_percent(test['ece'])}; "
             f"temperature {calibration['temperature_fitted']:.3f} fitted on dev gives ECE "
             f"{_percent(test['ece_scaled'])} ("
             f"{kept})"]
    if "tta" in result:
        tta = result["tta"]
        lines.append(
            f"test-time augmentation ({len(tta['views'])} views): test accuracy "
            f"{_percent(tta['test']['accuracy'])} against {_percent(tta['test']['plain_accuracy'])}"
            f" plain, dev {_percent(tta['dev']['accuracy'])} against "
            f"{_percent(tta['dev']['plain_accuracy'])}; {tta['cost']:.1f}x the prediction time")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diagnosis


def diagnose_bias_variance(
    *,
    train_error: float,
    dev_error: float,
    test_error: float | None = None,
    baseline_error: float = 0.0,
    tolerance: float = EvaluateConfig.diagnosis_tolerance,
    examples: dict[str, int] | None = None,
) -> dict:
    """Reads train/dev/test errors the way Andrew Ng's recipe does and advises what to try.

    Three gaps, each with its size: avoidable bias (train - baseline), variance (dev - train)
    and dev/test mismatch (test - dev). A gap counts as a problem when it exceeds `tolerance`
    and, given the splits' sizes (`examples`), what chance alone moves it by: two standard
    errors of the difference of the two measured error rates (each `p (1 - p) / n`, with p
    smoothed as `(errors + 1) / (n + 2)`). With 2 dev and 4 test images one image is 25-50
    points, so no gap between them says anything, and the advice says so instead of naming a
    cure. The largest problem is the one to work on first, and `next_steps` say how, naming
    config keys. Train error should be measured on the training images without augmentation
    or dropout (`model.evaluate`), otherwise it reads high and hides variance.

    Args:
        train_error: Error on the training set, a fraction in [0, 1].
        dev_error: Error on the dev (validation) set.
        test_error: Error on the test set, if it was evaluated.
        baseline_error: Human-level or Bayes-error proxy; 0.0 if unknown.
        tolerance: Largest gap still considered acceptable (`evaluate.diagnosis_tolerance`).
        examples: {"train", "dev", "test"} -> how many images each error was measured on;
            None (or a split left out) counts that error as exact.

    Returns:
        A dict with the inputs, `avoidable_bias`, `variance`, `dev_test_gap` (None without a
        test error), `gaps` (`{name: size}` for the gaps measured), the flags `high_bias`,
        `high_variance`, `dev_test_mismatch`, a `verdict` in {"high bias", "high variance",
        "high bias and high variance", "good fit", "too few images to tell" (bias or
        variance beyond tolerance that chance could make)}, `largest_gap` (the name of the largest
        gap above tolerance, or None), `chance` (`{gap: two standard errors}`),
        `thresholds` (`{gap: the larger of tolerance and chance}`), `next_steps` (what to
        change for it), a one-line `summary` and `advice`, every step for every problem,
        largest gap first.

    Raises:
        ValueError: If an error is outside [0, 1] or the tolerance is negative.

    Example:
        >>> diagnose_bias_variance(train_error=0.01, dev_error=0.11)["verdict"]
        'high variance'
    """
    errors = {"train_error": train_error, "dev_error": dev_error, "baseline_error": baseline_error}
    if test_error is not None:
        errors["test_error"] = test_error
    _validate_fractions(errors, tolerance)
    gaps = {name: float(errors[upper] - errors[lower])
            for name, lower, upper in GAPS if upper in errors}
    chance = {name: _chance(errors, examples or {}, lower, upper)
              for name, lower, upper in GAPS if upper in errors}
    thresholds = {name: max(tolerance, chance[name]) for name in gaps}
    problems = {name: size for name, size in gaps.items()
                if size > thresholds[name] + _GAP_EPSILON}
    largest = max(problems, key=problems.get, default=None)
    diagnosis = {
        **{name: float(value) for name, value in errors.items()},
        "test_error": None if test_error is None else float(test_error),
        "tolerance": float(tolerance),
        "examples": dict(examples or {}),
        "chance": chance,
        "thresholds": thresholds,
        "avoidable_bias": gaps["avoidable bias"],
        "variance": gaps["variance"],
        "dev_test_gap": gaps.get("dev/test mismatch"),
        "gaps": gaps,
        "high_bias": "avoidable bias" in problems,
        "high_variance": "variance" in problems,
        "dev_test_mismatch": "dev/test mismatch" in problems,
        "verdict": _verdict("avoidable bias" in problems, "variance" in problems,
                            masked=any(tolerance + _GAP_EPSILON < abs(gaps[name]) <= chance[name]
                                       for name in ("avoidable bias", "variance"))),
        "largest_gap": largest,
    }
    diagnosis["next_steps"] = [] if largest is None else _steps_for(largest, problems)
    diagnosis["summary"] = _summary(diagnosis)
    diagnosis["advice"] = _advice(diagnosis, problems)
    return diagnosis


def _chance(errors: dict[str, float], examples: dict[str, int], lower: str, upper: str) -> float:
    """Two standard errors of the gap `upper - lower` from sampling alone: the baseline, and
    an error whose split size is not given, count as exact."""
    variance = 0.0
    for key in (lower, upper):
        count = examples.get(key.removesuffix("_error"))
        if key == "baseline_error" or not count:
            continue
        smoothed = (errors[key] * count + 1) / (count + 2)
        variance += smoothed * (1 - smoothed) / count
    return float(2 * np.sqrt(variance))


def _validate_fractions(errors: dict[str, float], tolerance: float) -> None:
    """Raises if any error is not a fraction in [0, 1] or the tolerance is negative."""
    for name, value in errors.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"Expected {name} as a fraction in [0, 1]. Received: {name}={value}. "
                "Pass fractions, e.g. 0.125 for 12.5%."
            )
    if tolerance < 0:
        raise ValueError(f"Expected tolerance >= 0. Received: tolerance={tolerance}.")


def _verdict(high_bias: bool, high_variance: bool, *, masked: bool) -> str:
    """`masked`: bias or variance beyond tolerance was left out as chance (a small split);
    a dev/test gap left out so has its own advice line, not the verdict."""
    if high_bias and high_variance:
        return "high bias and high variance"
    if high_bias:
        return "high bias"
    if high_variance:
        return "high variance"
    return "too few images to tell" if masked else "good fit"


def _steps_for(gap: str, problems: dict[str, float]) -> list[str]:
    """The next steps for one gap; a trade-off step is left out when it would widen another
    gap that is also a problem (less regularisation against variance, more against bias)."""
    other = {"avoidable bias": "variance", "variance": "avoidable bias"}.get(gap)
    trade_offs = () if other in problems else TRADE_OFF_STEPS.get(gap, ())
    return [*NEXT_STEPS[gap], *trade_offs]


def _summary(diagnosis: dict) -> str:
    """One line: the verdict followed by every gap, so the numbers travel with it."""
    names = {"dev/test mismatch": "dev/test gap"}
    parts = [f"{names.get(name, name)} {_percent(size, signed=True)}"
             for name, size in diagnosis["gaps"].items()]
    flag = ", dev/test mismatch" if diagnosis["dev_test_mismatch"] else ""
    largest = diagnosis["largest_gap"]
    focus = f"; largest: {largest}" if largest and diagnosis["verdict"] != largest else ""
    noisy = [f"{names.get(name, name)} ±{_percent(size)}"
             for name, size in diagnosis["chance"].items()
             if size > diagnosis["tolerance"] + _GAP_EPSILON]
    chance = f"; chance: {', '.join(noisy)}" if noisy else ""
    return (
        f"{diagnosis['verdict']}{flag} ({', '.join(parts)}; "
        f"tolerance {_percent(diagnosis['tolerance'])}{chance}{focus})"
    )


def _advice(diagnosis: dict, problems: dict[str, float]) -> list[str]:
    """Concrete next steps, largest gap first, each tagged with the gap that motivates it."""
    train, dev = _percent(diagnosis["train_error"]), _percent(diagnosis["dev_error"])
    baseline = _percent(diagnosis["baseline_error"])
    advice = []
    for gap in sorted(problems, key=problems.get, reverse=True):
        tag = f"[{gap} {_percent(problems[gap], signed=True)}]"
        advice += [f"{tag} {step}." for step in _steps_for(gap, problems)]
    if diagnosis["high_bias"] and diagnosis["high_variance"]:
        advice.append(
            "[both] tune `model.dropout`, `model.l2` and `train.early_stopping_patience` once "
            "train error nears the baseline: they trade one gap for the other."
        )
    advice += _chance_advice(diagnosis, problems)
    if diagnosis["variance"] < -diagnosis["thresholds"]["variance"] - _GAP_EPSILON:
        advice.append(
            f"[variance {_percent(diagnosis['variance'], signed=True)}] dev error {dev} is "
            f"below train error {train}: measure train error without "
            "augmentation or dropout, and check the dev set is not easier than train."
        )
    if not advice:
        advice.append(
            f"[good fit] train {train}, dev {dev}, baseline {baseline}: every gap is within "
            f"tolerance {_percent(diagnosis['tolerance'])} or chance; to go further, lower the "
            "baseline (`evaluate.baseline_error`, a better human-level estimate) or try a bigger "
            "backbone (`model.backbone`)."
        )
    return advice


def _chance_advice(diagnosis: dict, problems: dict[str, float]) -> list[str]:
    """One line per gap beyond tolerance that chance alone could make, naming the split sizes
    and how to measure it: more images in the smaller split."""
    sizes = diagnosis["examples"]
    advice = []
    for name, lower, upper in GAPS:
        size, noise = diagnosis["gaps"].get(name), diagnosis["chance"].get(name, 0.0)
        if (size is None or name in problems or abs(size) <= diagnosis["tolerance"]
                or noise <= diagnosis["tolerance"]):
            continue
        splits = [key.removesuffix("_error") for key in (lower, upper) if key != "baseline_error"]
        counted = " and ".join(f"{sizes[split]} {split}" for split in splits if split in sizes)
        held_out = [split for split in splits if split != "train"]
        more = (f", or give {' and '.join(held_out)} a larger share (`data.split_ratios`)"
                if held_out else "")
        advice.append(
            f"[chance ±{_percent(noise)}] the {name} of {_percent(size, signed=True)} is within "
            f"two standard errors of what {counted} images measure: chance alone can make it. "
            f"Add images{more}{',' if more else ''} to tell.")
    return advice


# --------------------------------------------------------------------------- tables


def format_metrics_table(
    errors_by_split: dict[str, dict],
    *,
    diagnosis: dict | None = None,
    baseline_error: float = 0.0,
) -> str:
    """Formats train/dev/test accuracy and error side by side, then verdict and advice.

    Args:
        errors_by_split: `{split: metrics}` for splits among "train", "dev", "test"; each
            metrics dict needs "error" or "accuracy" (a `classification_metrics` result works).
        diagnosis: A `diagnose_bias_variance` result. When omitted and both "train" and
            "dev" are present, it is computed here with `baseline_error`.
        baseline_error: Human-level error used when the diagnosis is computed here.

    Returns:
        A multi-line string for the terminal.

    Raises:
        ValueError: If a split name is unknown or a split has neither error nor accuracy.

    Example:
        >>> print(format_metrics_table({"train": {"error": 0.05}, "dev": {"error": 0.12}},
        ...                            baseline_error=0.04))
        split   accuracy    error   top-5  examples
        train     95.00%    5.00%       -         -
        dev       88.00%   12.00%       -         -
        <BLANKLINE>
        verdict: high variance (avoidable bias +1.00%, variance +7.00%; tolerance 2.00%)
        advice:
          - [variance +7.00%] get more data or augment harder (`augment.chain: strong`).
          ...
    """
    errors = split_errors(errors_by_split)
    lines = [f"{'split':<6}{'accuracy':>10}{'error':>9}{'top-5':>8}{'examples':>10}"]
    for split in errors:
        metrics = errors_by_split[split]
        top5 = metrics.get(f"top{TOP_K}_accuracy")
        examples = metrics.get("num_examples")
        lines.append(
            f"{split:<6}{_percent(1.0 - errors[split]):>10}{_percent(errors[split]):>9}"
            f"{'-' if top5 is None else _percent(top5, digits=1):>8}"
            f"{'-' if examples is None else examples:>10}"
        )
    if diagnosis is None and {"train", "dev"} <= errors.keys():
        diagnosis = diagnose_bias_variance(
            train_error=errors["train"],
            dev_error=errors["dev"],
            test_error=errors.get("test"),
            baseline_error=baseline_error,
        )
    if diagnosis is not None:
        lines += ["", f"verdict: {diagnosis['summary']}", "advice:"]
        lines += [f"  - {step}" for step in diagnosis["advice"]]
    return "\n".join(lines)


def format_per_class_table(metrics: dict) -> str:
    """Formats precision, recall, F1 and support per class, with a macro-F1 footer.

    Args:
        metrics: A `classification_metrics` result.

    Returns:
        A multi-line string for the terminal, one row per class in class-id order.

    Raises:
        ValueError: If `metrics` has no "per_class" entry.
    """
    if "per_class" not in metrics:
        raise ValueError(
            "Expected a classification_metrics() result with a 'per_class' entry. "
            f"Received keys: {sorted(metrics)}."
        )
    per_class = metrics["per_class"]
    width = max(len("class"), *(len(name) for name in per_class))
    lines = [f"{'class':<{width}}{'precision':>11}{'recall':>9}{'f1':>8}{'support':>9}"]
    for name, scores in per_class.items():
        lines.append(
            f"{name:<{width}}{scores['precision']:>11.3f}{scores['recall']:>9.3f}"
            f"{scores['f1']:>8.3f}{scores['support']:>9d}"
        )
    lines.append(f"{'macro F1':<{width}}{'':>11}{'':>9}{metrics['macro_f1']:>8.3f}")
    return "\n".join(lines)


def split_errors(errors_by_split: dict[str, Any]) -> dict[str, float]:
    """Extracts one error per split, in train/dev/test order.

    Args:
        errors_by_split: `{split: error}` or `{split: metrics}`, where a metrics dict has
            "error" or "accuracy". Split names must be among "train", "dev", "test".

    Returns:
        `{split: error}` ordered train, dev, test.

    Raises:
        ValueError: If empty, a split name is unknown or a split carries no error.
    """
    unknown = sorted(set(errors_by_split) - set(SPLIT_NAMES))
    if unknown or not errors_by_split:
        raise ValueError(
            f"Expected split names among {', '.join(SPLIT_NAMES)}. Received: "
            f"{sorted(errors_by_split)}. Rename 'val'/'validation' to 'dev'."
        )
    return {
        split: _error_of(split, errors_by_split[split])
        for split in SPLIT_NAMES
        if split in errors_by_split
    }


def _error_of(split: str, value: Any) -> float:
    """The error of one split, from a number or a metrics dict."""
    if isinstance(value, dict) and "error" in value:
        return float(value["error"])
    if isinstance(value, dict) and "accuracy" in value:
        return 1.0 - float(value["accuracy"])
    if isinstance(value, (int, float)):
        return float(value)
    raise ValueError(
        f"Expected an error (float) or a metrics dict with 'error' or 'accuracy' for split "
        f"'{split}'. Received: {value!r}."
    )


def _percent(fraction: float, *, signed: bool = False, digits: int = 2) -> str:
    sign = "+" if signed else ""
    return f"{fraction * 100:{sign}.{digits}f}%"
