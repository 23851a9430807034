"""Tests for pipeline.data.splits: ratios, stability, stratification, no leakage."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict

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


def _unit(key: str, salt: str = "") -> float:
    """The documented per-key hash, written out independently of the module."""
    salt_digest = hashlib.blake2b(salt.encode(), digest_size=16).digest()
    digest = hashlib.blake2b(salt_digest + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _plain_splits(keys: list[str], ratios, salt: str = "") -> list[str]:
    """Reference: the split of each key from its own hash alone (test | train | dev on [0, 1))."""
    _, dev, test = ratios
    return ["test" if _unit(key, salt) < test else "dev" if _unit(key, salt) >= 1 - dev
            else "train" for key in keys]


def _by_class(splits: list[str], labels: list[int]) -> dict[int, list[str]]:
    grouped = defaultdict(list)
    for split, label in zip(splits, labels, strict=True):
        grouped[label].append(split)
    return grouped


def _small_classes(sizes, prefix: str = "small") -> tuple[list[str], list[int]]:
    """One class per size, with distinct keys."""
    keys, labels = [], []
    for label, size in enumerate(sizes):
        keys += _keys(size, prefix=f"{prefix}{label}-")
        labels += [label] * size
    return keys, labels


SALTS = [f"salt-{index}" for index in range(50)]


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


def test_the_plain_hash_is_the_documented_one():
    keys = _keys(2000)
    assert assign_splits(keys, [0] * 2000, RATIOS, salt="s") == _plain_splits(keys, RATIOS, "s")


@pytest.mark.parametrize("size", [3, 4, 5])
def test_a_class_of_a_few_images_reaches_every_split_for_every_salt(size):
    keys, labels = _small_classes([size] * 20)
    for salt in SALTS:
        splits = assign_splits(keys, labels, RATIOS, salt=salt)
        for label, class_splits in _by_class(splits, labels).items():
            assert set(class_splits) == set(SPLIT_NAMES), (salt, label, class_splits)


def test_classes_that_reach_every_split_keep_the_plain_hash_assignment():
    big_keys, big_labels = _keys(400, prefix="big"), [99] * 400
    small_keys, small_labels = _small_classes([3, 4, 5, 6, 8, 12] * 5)
    keys, labels = big_keys + small_keys, big_labels + small_labels
    untouched = moved = 0
    for salt in SALTS[:10]:
        splits = _by_class(assign_splits(keys, labels, RATIOS, salt=salt), labels)
        plain = _by_class(_plain_splits(keys, RATIOS, salt), labels)
        for label, class_plain in plain.items():
            missing = set(SPLIT_NAMES) - set(class_plain)
            changed = sum(a != b for a, b in zip(class_plain, splits[label], strict=True))
            if missing:
                moved += 1
                assert changed == len(missing)  # one example into each missing split
                assert set(splits[label]) == set(SPLIT_NAMES)
            else:
                untouched += 1
                assert splits[label] == class_plain
    assert untouched > 100 and moved > 50  # both cases were exercised


def test_the_example_nearest_the_missing_split_moves_from_the_largest_split():
    # with these keys and salt the plain hash puts all three images in train
    keys, labels = _keys(3, prefix="c"), [0, 0, 0]
    salt = next(salt for salt in SALTS if set(_plain_splits(keys, RATIOS, salt)) == {"train"})
    units = [_unit(key, salt) for key in keys]
    expected = ["train"] * 3
    expected[units.index(max(units))] = "dev"   # dev is the top of [0, 1)
    expected[units.index(min(units))] = "test"  # test is the bottom
    assert assign_splits(keys, labels, RATIOS, salt=salt) == expected


def test_a_tie_between_donor_splits_takes_from_train():
    # with these keys and salt the plain hash puts two images in train and two in test
    keys, labels = _keys(4, prefix="t"), [0] * 4
    salt = next(salt for salt in SALTS
                if sorted(_plain_splits(keys, RATIOS, salt)) == ["test", "test", "train", "train"])
    expected = _plain_splits(keys, RATIOS, salt)
    in_train = [index for index, split in enumerate(expected) if split == "train"]
    expected[max(in_train, key=lambda index: _unit(keys[index], salt))] = "dev"
    assert assign_splits(keys, labels, RATIOS, salt=salt) == expected


def test_a_class_of_two_is_left_as_hashed():
    keys, labels = _small_classes([2] * 30)
    for salt in SALTS[:10]:
        assert assign_splits(keys, labels, RATIOS, salt=salt) == _plain_splits(keys, RATIOS, salt)


def test_a_zero_ratio_split_never_receives_a_small_class():
    keys, labels = _small_classes([3, 4, 5] * 10)
    for salt in SALTS:
        splits = assign_splits(keys, labels, (0.8, 0.2, 0.0), salt=salt)
        for class_splits in _by_class(splits, labels).values():
            assert set(class_splits) == {"train", "dev"}


def test_small_classes_do_not_depend_on_input_order_or_on_other_classes():
    keys, labels = _small_classes([3, 4, 5] * 10)
    for salt in SALTS[:10]:
        first = dict(zip(keys, assign_splits(keys, labels, RATIOS, salt=salt), strict=True))
        order = list(range(len(keys)))
        random.Random(salt).shuffle(order)
        shuffled = assign_splits([keys[i] for i in order], [labels[i] for i in order], RATIOS,
                                 salt=salt)
        assert {keys[i]: split for i, split in zip(order, shuffled, strict=True)} == first
        alone = assign_splits(keys[:3], labels[:3], RATIOS, salt=salt)
        assert alone == [first[key] for key in keys[:3]]


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


def test_identical_files_share_a_split_in_small_classes_too():
    shared, others = _keys(1, prefix="dup")[0], _keys(5, prefix="other")
    # class 0 holds the shared file twice, class 1 once
    keys = [shared, shared, others[0], others[1], shared, others[2], others[3], others[4]]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    for salt in SALTS:
        splits = assign_splits(keys, labels, RATIOS, salt=salt)
        assert splits[0] == splits[1] == splits[4]
        assert splits[0] == _plain_splits([shared], RATIOS, salt)[0]  # a shared key never moves
        assert set(splits[:4]) == set(SPLIT_NAMES)  # its two unique keys fill what is missing


def test_adding_images_to_a_big_class_never_moves_its_old_images():
    old_keys = _keys(300, prefix="big")
    small_keys, small_labels = _small_classes([3, 4, 5] * 4)
    before = assign_splits(old_keys + small_keys, [99] * 300 + small_labels, RATIOS)
    new_keys = _keys(200, prefix="new")
    after = assign_splits(new_keys + old_keys + small_keys,
                          [99] * 500 + small_labels, RATIOS)
    assert after[200:] == before
    assert after[200:500] == _plain_splits(old_keys, RATIOS)


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
