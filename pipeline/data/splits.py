"""Stable, stratified train/dev/test assignment by hashing each example's key.

How an example's split is chosen:
    Its key (by default the content hash of the file) is hashed with an optional salt to a
    number u, uniform in [0, 1). With ratios (train, dev, test) the example goes to

        test   if u <  test
        dev    if u >= 1 - dev
        train  otherwise

    so its split depends on its own key only (small classes aside, see below):

    * Reruns give the same splits, on any machine, in any order of the inputs.
    * Adding images never moves an existing image (at fixed ratios), in every class that
      the hash alone spreads over all splits (see the small-class rule below).
    * Identical files share a key, so they always land in the same split: no leakage.
    * Stratified in expectation: every class is split with the same ratios on average
      (per class, each example is an independent draw), which for classes of a few hundred
      images is within a few percent. Exact per-class quotas would have to move old images
      when new ones arrive, so they are traded for stability.

    The nested layout (test at the bottom of [0, 1), dev at the top) makes ratio changes
    gentle too: shrinking dev or test, as `default_split_ratios` does when a dataset grows
    past a step, only moves some dev/test images into train, never train images into dev
    or test and never images between dev and test. Pin the ratios in the config
    (`data.split_ratios`) to freeze the splits entirely.

Small classes:
    A class with a handful of images may miss a split by hash alone. So, per class, after
    hashing: if the class has at least 3 examples, then for each split with a non-zero ratio
    that received none of them, in the order train, dev, test, one example moves into it:

    * from the split holding the most examples of the class (ties: train, dev, test), among
      splits holding at least 2 of them and a movable one, so no split is emptied;
    * only an example whose key occurs once in all the keys: a duplicated file keeps its
      hashed split, so identical files still share one;
    * the one whose u lies closest to the missing split's interval (test [0, test),
      train [test, 1 - dev), dev [1 - dev, 1)); ties go to the smaller key.

    The rule looks at the class's own keys (and whether they occur elsewhere) only, so it too
    is independent of input order and of other classes. A class that the hash already spreads
    over every split is assigned exactly as by the hash alone (a class of n images misses a
    split of ratio r with probability (1 - r)^n: 0.1% for 30 images at r = 0.2, 0.004% for
    1,000 at r = 0.01); only in a class that misses a split may adding or removing images
    change which of its images is moved. A split with ratio 0 never receives an example, and
    a class of 1 or 2 images, or one without a movable example, may still miss a split; the
    data report warns about it.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

SPLIT_NAMES: tuple[str, str, str] = ("train", "dev", "test")

# (smallest dataset size, dev and test fraction each), largest size first.
# The dev and test sets keep growing in absolute size across every step
# (4,000 -> 3,000 at 20k, 5,000 at 50k and 100k, 6,250 at 250k, 7,500 at 500k, 10,000 at 1M),
# while the fraction held out shrinks, as is usual for big datasets.
_HELD_OUT_STEPS: tuple[tuple[int, float], ...] = (
    (1_000_000, 0.01),
    (500_000, 0.015),
    (250_000, 0.025),
    (100_000, 0.05),
    (50_000, 0.10),
    (20_000, 0.15),
    (0, 0.20),
)
_RATIO_TOLERANCE = 1e-6
_HASH_BYTES = 8
# A class this small may miss a split by hash and is then completed (see the module docstring).
_MIN_CLASS_TO_COMPLETE = 3


def default_split_ratios(num_examples: int) -> tuple[float, float, float]:
    """The (train, dev, test) fractions for a dataset of a given size.

    Small datasets need large dev and test fractions to measure anything; big ones need only
    a few thousand examples each, so the held-out fraction shrinks stepwise with size:

    ==================  ===================
    examples            train / dev / test
    ==================  ===================
    under 20,000        60 / 20 / 20
    20,000 - 49,999     70 / 15 / 15
    50,000 - 99,999     80 / 10 / 10
    100,000 - 249,999   90 / 5 / 5
    250,000 - 499,999   95 / 2.5 / 2.5
    500,000 - 999,999   97 / 1.5 / 1.5
    1,000,000 and more  98 / 1 / 1
    ==================  ===================

    Steps rather than a smooth curve keep the ratios, and so the splits, fixed while a
    dataset grows inside a step (see the module docstring for what a step changes).

    Args:
        num_examples: How many labelled examples the dataset has.

    Returns:
        (train, dev, test) fractions summing to 1.

    Raises:
        ValueError: If `num_examples` is negative.
    """
    if num_examples < 0:
        raise ValueError(
            f"num_examples must be zero or more. Received: num_examples={num_examples}."
        )
    held_out = next(fraction for size, fraction in _HELD_OUT_STEPS if num_examples >= size)
    return (round(1.0 - 2 * held_out, 6), held_out, held_out)


def assign_splits(
    keys: Sequence[str],
    labels: Sequence[int],
    ratios: tuple[float, float, float],
    *,
    salt: str = "",
) -> list[str]:
    """Assigns each example to "train", "dev" or "test" from a hash of its key.

    A class of 3 or more examples that misses a split with a non-zero ratio gets one example
    moved into it (see "Small classes" in the module docstring); every other example keeps
    the split of its own hash.

    Args:
        keys: One stable key per example; the file's content hash is the usual choice, so
            identical files share a split.
        labels: One class index per example; used only to complete small classes.
        ratios: (train, dev, test) fractions, each in [0, 1], summing to 1.
        salt: Changes every assignment when changed; use it to draw a different split.

    Returns:
        One of "train", "dev", "test" per key, in the order of `keys`.

    Raises:
        ValueError: If the lengths differ, a key is not a string, or the ratios are invalid.

    Example:
        >>> assign_splits(["dog", "cat"], [0, 1], (0.6, 0.2, 0.2))
        ['train', 'test']
    """
    if len(keys) != len(labels):
        raise ValueError(
            "keys and labels must have one entry per example. "
            f"Received: {len(keys)} keys and {len(labels)} labels."
        )
    _, dev_ratio, test_ratio = _checked_ratios(ratios)
    salt_digest = hashlib.blake2b(salt.encode("utf-8"), digest_size=16).digest()
    units = [_unit_hash(key, salt_digest) for key in keys]
    splits = [_split_for(unit, dev_ratio, test_ratio) for unit in units]
    intervals = _split_intervals(dev_ratio, test_ratio)
    members = defaultdict(list)
    for index, label in enumerate(labels):
        members[label].append(index)
    # Moves touch unique keys only, each in one class, so classes are completed independently.
    incomplete = [indices for indices in members.values()
                  if len(indices) >= _MIN_CLASS_TO_COMPLETE
                  and not intervals.keys() <= {splits[index] for index in indices}]
    key_counts = Counter(keys) if incomplete else Counter()
    for indices in incomplete:
        movable = [index for index in indices if key_counts[keys[index]] == 1]
        _complete_class(indices, movable, splits, units, keys, intervals)
    return splits


def _checked_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    """Validates (train, dev, test) fractions and returns them as floats."""
    if len(ratios) != 3:
        raise ValueError(
            f"ratios must be three fractions (train, dev, test). Received: ratios={ratios}."
        )
    values = tuple(float(ratio) for ratio in ratios)
    if any(not math.isfinite(value) or value < 0 or value > 1 for value in values):
        raise ValueError(f"Each split ratio must be between 0 and 1. Received: ratios={ratios}.")
    if abs(sum(values) - 1.0) > _RATIO_TOLERANCE:
        raise ValueError(
            f"Split ratios must sum to 1. Received: ratios={ratios} (sum {sum(values):g}). "
            "Use e.g. (0.6, 0.2, 0.2), or default_split_ratios(num_examples)."
        )
    if values[0] <= 0:
        raise ValueError(f"The train ratio must be above 0. Received: ratios={ratios}.")
    return values  # type: ignore[return-value]


def _unit_hash(key: str, salt_digest: bytes) -> float:
    """Maps a key to a number uniform in [0, 1), the same on every machine and run."""
    if not isinstance(key, str):
        raise ValueError(
            f"Split keys must be strings (e.g. content hashes). Received: {key!r} "
            f"of type {type(key).__name__}."
        )
    # The salt enters as a fixed-length digest, so no salt/key pair can collide with another.
    digest = hashlib.blake2b(salt_digest + key.encode("utf-8"), digest_size=_HASH_BYTES).digest()
    return int.from_bytes(digest, "big") / 2 ** (8 * _HASH_BYTES)


def _split_for(unit: float, dev_ratio: float, test_ratio: float) -> str:
    """The split of one example from its hash value; see the module docstring's layout."""
    if unit < test_ratio:
        return "test"
    if unit >= 1.0 - dev_ratio:
        return "dev"
    return "train"


def _split_intervals(dev_ratio: float, test_ratio: float) -> dict[str, tuple[float, float]]:
    """The [low, high) range of u of each split with a non-zero ratio, in SPLIT_NAMES order."""
    intervals = {"train": (test_ratio, 1.0 - dev_ratio), "dev": (1.0 - dev_ratio, 1.0),
                 "test": (0.0, test_ratio)}
    ratios = {"train": 1.0, "dev": dev_ratio, "test": test_ratio}
    return {name: intervals[name] for name in SPLIT_NAMES if ratios[name] > 0}


def _complete_class(indices: list[int], movable: list[int], splits: list[str],
                    units: list[float], keys: Sequence[str],
                    intervals: dict[str, tuple[float, float]]) -> None:
    """Moves one movable example of a class into each split it misses, in place."""
    for name, (low, high) in intervals.items():
        counts = Counter(splits[index] for index in indices)
        # a donor split keeps at least one example of the class
        candidates = [index for index in movable if counts[splits[index]] >= 2]
        if counts[name] or not candidates:
            continue
        donor = max({splits[index] for index in candidates},
                    key=lambda split: (counts[split], -SPLIT_NAMES.index(split)))
        nearest = min((index for index in candidates if splits[index] == donor),
                      key=lambda index: (_distance(units[index], low, high), keys[index]))
        splits[nearest] = name


def _distance(unit: float, low: float, high: float) -> float:
    """How far a hash value lies outside [low, high); 0 inside."""
    return max(low - unit, unit - high, 0.0)


def stratified_sample(labels: np.ndarray, fraction: float, *, seed: int) -> np.ndarray:
    """A random `fraction` of every class (at least one example each), in index order.

    Used where a subset must speak for the whole split, e.g. the training images on which
    train error is measured: a first-N subset of class-sorted data would cover the first
    classes only.

    Args:
        labels: one class index per example.
        fraction: the share of each class to keep, in (0, 1].
        seed: the same seed gives the same sample.

    Returns:
        Sorted indices into `labels`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = (np.flatnonzero(labels == label) for label in np.unique(labels))
    chosen = [rng.permutation(indices)[:max(1, round(fraction * len(indices)))]
              for indices in members]
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
