"""Tests for pipeline.data.splits: ratios, stability, stratification, no leakage."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from pipeline.data.splits import SPLIT_NAMES, assign_splits, default_split_ratios

RATIOS = (0.6, 0.2, 0.2)


def _keys(count: int, prefix: str = "image") -> list[str]:
    """Content-hash-like keys."""
    return [
        hashlib.blake2b(f"{prefix}{index}".encode(), digest_size=16).hexdigest()
        for index in range(count)
    ]


def _fractions(splits: list[str]) -> tuple[float, ...]:
    counts = Counter(splits)
    return tuple(counts[name] / len(splits) for name in SPLIT_NAMES)


# default_split_ratios


@pytest.mark.parametrize(
    ("num_examples", "expected"),
    [
        (0, (0.6, 0.2, 0.2)),
        (300, (0.6, 0.2, 0.2)),
        (4_317, (0.6, 0.2, 0.2)),
        (19_999, (0.6, 0.2, 0.2)),
        (20_000, (0.7, 0.15, 0.15)),
        (60_000, (0.8, 0.1, 0.1)),
        (150_000, (0.9, 0.05, 0.05)),
        (300_000, (0.95, 0.025, 0.025)),
        (700_000, (0.97, 0.015, 0.015)),
        (1_000_000, (0.98, 0.01, 0.01)),
        (50_000_000, (0.98, 0.01, 0.01)),
    ],
)
def test_default_split_ratios_follow_the_documented_steps(num_examples, expected):
    assert default_split_ratios(num_examples) == pytest.approx(expected)


def test_default_split_ratios_sum_to_one_and_held_out_sets_keep_growing():
    sizes = [10**exponent * factor for exponent in range(2, 8) for factor in (1, 2, 5)]
    held_out_sizes = []
    for size in sizes:
        ratios = default_split_ratios(size)
        assert sum(ratios) == pytest.approx(1.0)
        assert ratios[1] == ratios[2]
        held_out_sizes.append(size * ratios[2])
    assert held_out_sizes[-1] > held_out_sizes[0]
    train_fractions = [default_split_ratios(size)[0] for size in sizes]
    assert train_fractions == sorted(train_fractions)


def test_default_split_ratios_refuse_negative_sizes():
    with pytest.raises(ValueError, match="Received: num_examples=-1"):
        default_split_ratios(-1)


# assign_splits


def test_ratios_hold_within_tolerance_on_5000_keys():
    splits = assign_splits(_keys(5000), [0] * 5000, RATIOS)
    assert set(splits) == set(SPLIT_NAMES)
    for observed, expected in zip(_fractions(splits), RATIOS, strict=True):
        assert abs(observed - expected) < 0.025


def test_every_class_is_split_in_the_same_proportions():
    keys = _keys(6000)
    labels = [index % 3 for index in range(6000)]  # three classes of 2,000
    splits = assign_splits(keys, labels, RATIOS)
    for label in range(3):
        class_splits = [split for split, lab in zip(splits, labels, strict=True) if lab == label]
        for observed, expected in zip(_fractions(class_splits), RATIOS, strict=True):
            assert abs(observed - expected) < 0.04


def test_reruns_and_input_order_give_the_same_splits():
    keys = _keys(500)
    first = dict(zip(keys, assign_splits(keys, [0] * 500, RATIOS), strict=True))
    shuffled = list(keys)
    random.Random(0).shuffle(shuffled)
    second = dict(zip(shuffled, assign_splits(shuffled, [1] * 500, RATIOS), strict=True))
    assert first == second


def test_adding_images_never_moves_an_existing_image():
    old_keys = _keys(1000)
    before = assign_splits(old_keys, [0] * 1000, RATIOS)
    new_keys = _keys(700, prefix="new")
    after = assign_splits(new_keys + old_keys, [1] * 1700, RATIOS)
    assert after[700:] == before


def test_identical_files_always_share_a_split():
    keys = _keys(300)
    duplicated = keys + keys[:100]
    labels = [0] * 300 + [1] * 100  # even under another label
    splits = assign_splits(duplicated, labels, RATIOS)
    assert splits[300:] == splits[:100]


def test_salt_changes_the_assignment_but_not_the_ratios():
    keys = _keys(5000)
    plain = assign_splits(keys, [0] * 5000, RATIOS)
    salted = assign_splits(keys, [0] * 5000, RATIOS, salt="draw-2")
    changed = sum(a != b for a, b in zip(plain, salted, strict=True)) / len(keys)
    assert changed > 0.4  # independent draws differ about 56% of the time
    assert assign_splits(keys, [0] * 5000, RATIOS, salt="draw-2") == salted
    for observed, expected in zip(_fractions(salted), RATIOS, strict=True):
        assert abs(observed - expected) < 0.025


def test_a_smaller_held_out_ratio_only_moves_dev_and_test_images_into_train():
    keys = _keys(5000)
    small = assign_splits(keys, [0] * 5000, default_split_ratios(10_000))
    large = assign_splits(keys, [0] * 5000, default_split_ratios(30_000))
    moves = Counter((a, b) for a, b in zip(small, large, strict=True) if a != b)
    assert set(moves) == {("dev", "train"), ("test", "train")}


def test_a_zero_ratio_split_stays_empty():
    splits = assign_splits(_keys(1000), [0] * 1000, (0.8, 0.0, 0.2))
    assert "dev" not in splits


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.6, 0.2), "three fractions"),
        ((0.6, 0.3, 0.3), "must sum to 1"),
        ((1.2, -0.1, -0.1), "between 0 and 1"),
        ((0.0, 0.5, 0.5), "train ratio must be above 0"),
        ((float("nan"), 0.5, 0.5), "between 0 and 1"),
    ],
)
def test_invalid_ratios_are_refused(ratios, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(["a"], [0], ratios)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="Received: 2 keys and 1 labels"):
        assign_splits(["a", "b"], [0], RATIOS)


def test_keys_must_be_strings():
    with pytest.raises(ValueError, match="must be strings"):
        assign_splits([b"raw-bytes"], [0], RATIOS)
