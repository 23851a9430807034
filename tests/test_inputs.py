"""Feeding Keras: prefetching, augmented image batches, and cached-view batches.

`tests/test_features.py` covers `pad_batch` and, for `CachedViews`, one view per example per
epoch, one-hot dev batches and how mixup blends; this file covers the rest.
"""

import time

import numpy as np
import pytest

from pipeline.inputs import AugmentedImages, CachedViews, augmented_batches, prefetched


def _numbered_images(count: int) -> np.ndarray:
    """Image i holds the value i everywhere, so a batch shows which images it holds."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None],
                           (count, 2, 2, 3)).copy()


class RecordingAugmenter:
    """Adds 100 * epoch to every pixel and records the (indices, epoch) of each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, batch: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        self.calls.append((list(indices), epoch))
        return batch + np.uint8(100 * epoch)


def _views(count: int = 10, views: int = 3) -> np.ndarray:
    """View k of example i holds the value 100 * k + i everywhere."""
    values = 100 * np.arange(views)[:, None] + np.arange(count)[None, :]
    return np.broadcast_to(values[:, :, None], (views, count, 4)).astype(np.float16)


def _epoch(data) -> tuple[np.ndarray, np.ndarray]:
    """All inputs and labels of one pass over a PyDataset, concatenated."""
    batches = [data[index] for index in range(len(data))]
    return (np.concatenate([inputs for inputs, _ in batches]),
            np.concatenate([labels for _, labels in batches]))


# prefetched


def test_prefetched_yields_every_result_in_order_computing_at_most_depth_ahead():
    started = []

    def produce(index: int) -> int:
        started.append(index)
        return index * index

    stream = prefetched(produce, 7, depth=2)
    assert next(stream) == 0
    time.sleep(0.2)  # the worker may run as far ahead as it is allowed to
    assert started == [0, 1, 2]
    assert list(stream) == [1, 4, 9, 16, 25, 36]
    assert started == list(range(7))


def test_prefetched_of_nothing_yields_nothing():
    assert list(prefetched(lambda index: index, 0)) == []


# augmented_batches


def test_augmented_batches_cover_every_image_once_in_order_for_the_given_epoch():
    augmenter = RecordingAugmenter()
    batches = list(augmented_batches(_numbered_images(10), augmenter, 4, epoch=1))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert all(batch.dtype == np.uint8 for batch in batches)
    np.testing.assert_array_equal(np.concatenate(batches)[:, 0, 0, 0], np.arange(10) + 100)
    assert augmenter.calls == [([0, 1, 2, 3], 1), ([4, 5, 6, 7], 1), ([8, 9], 1)]


# AugmentedImages


def test_augmented_images_shuffle_each_epoch_and_keep_labels_with_their_images():
    labels = np.arange(10) * 10
    data = AugmentedImages(_numbered_images(10), labels, RecordingAugmenter(), 4, seed=0)
    assert len(data) == 3
    orders = []
    for epoch in range(2):
        inputs, batch_labels = _epoch(data)
        assert inputs.dtype == np.float32 and inputs.shape == (10, 2, 2, 3)
        assert set(inputs[:, 0, 0, 0]) == {100 * epoch + image for image in range(10)}
        np.testing.assert_array_equal(batch_labels, (inputs[:, 0, 0, 0] - 100 * epoch) * 10)
        orders.append(list(inputs[:, 0, 0, 0] - 100 * epoch))
        data.on_epoch_end()
    assert orders[0] != orders[1] and orders[0] != list(range(10))


def test_augmented_images_ask_the_augmenter_for_sorted_indices_of_the_epoch():
    augmenter = RecordingAugmenter()
    data = AugmentedImages(_numbered_images(10), np.zeros(10), augmenter, 4, seed=3)
    _epoch(data)
    data.on_epoch_end()
    _epoch(data)
    assert [epoch for _, epoch in augmenter.calls] == [0, 0, 0, 1, 1, 1]
    for indices, _ in augmenter.calls:
        assert indices == sorted(indices)
    first, second = augmenter.calls[:3], augmenter.calls[3:]
    assert sorted(i for indices, _ in first for i in indices) == list(range(10))
    assert sorted(i for indices, _ in second for i in indices) == list(range(10))


def test_augmented_images_are_reproducible_and_unshuffled_on_request():
    images, labels = _numbered_images(9), np.arange(9)
    one = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=7)
    two = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=7)
    other = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=8)
    np.testing.assert_array_equal(_epoch(one)[1], _epoch(two)[1])
    assert list(_epoch(one)[1]) != list(_epoch(other)[1])
    in_order = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=7, shuffle=False)
    np.testing.assert_array_equal(_epoch(in_order)[1], np.arange(9))


def test_augmented_images_resume_at_any_epoch_with_its_views_one_hot_labels_and_mixup():
    images, labels = _numbered_images(10), np.arange(10) % 3
    walked = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=5, num_classes=3,
                             mixup_alpha=0.4, first_view=1)
    walked.on_epoch_end()
    resumed = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=5, num_classes=3,
                              mixup_alpha=0.4, first_view=1)
    resumed.set_epoch(1)  # as a run killed after epoch 0 starts again
    for (inputs, targets), (expected_inputs, expected_targets) in zip(
            (resumed[i] for i in range(3)), (walked[i] for i in range(3)), strict=True):
        np.testing.assert_array_equal(inputs, expected_inputs)
        np.testing.assert_array_equal(targets, expected_targets)
    assert {epoch for _, epoch in resumed.augmenter.calls} == {2}  # first_view + epoch
    assert targets.shape == (2, 3)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    assert (targets.max(axis=1) < 1).any()  # mixed
    plain = AugmentedImages(images, labels, RecordingAugmenter(), 4, seed=5, num_classes=3,
                            shuffle=False)
    np.testing.assert_array_equal(_epoch(plain)[1], np.eye(3)[labels])


# CachedViews


def test_cached_views_keep_each_label_with_its_example():
    labels = np.arange(10) * 7
    data = CachedViews(_views(), labels, 3, seed=0)
    assert len(data) == 4
    inputs, batch_labels = _epoch(data)
    assert inputs.dtype == np.float32 and inputs.shape == (10, 4)
    np.testing.assert_array_equal(batch_labels, (inputs[:, 0] % 100) * 7)


def test_cached_views_draw_new_views_and_order_each_epoch_reproducibly():
    def three_epochs(seed: int) -> list[np.ndarray]:
        data = CachedViews(_views(count=40), np.zeros(40, int), 16, seed=seed)
        epochs = []
        for _ in range(3):
            epochs.append(_epoch(data)[0][:, 0])
            data.on_epoch_end()
        return epochs

    first = three_epochs(seed=0)
    for epoch, again in zip(first, three_epochs(seed=0), strict=True):
        np.testing.assert_array_equal(epoch, again)
    views = [epoch // 100 for epoch in first]
    orders = [list(epoch % 100) for epoch in first]
    assert set(np.concatenate(views)) == {0, 1, 2}  # 40 examples: every view is drawn
    assert orders[0] != orders[1] != orders[2]
    view_of = [dict(zip(epoch % 100, epoch // 100, strict=True)) for epoch in first]
    assert view_of[0] != view_of[1]  # an example's view changes between epochs
    assert not np.array_equal(first[0], three_epochs(seed=1)[0])


def test_cached_views_without_mixup_give_plain_one_hot_labels():
    labels = np.arange(10) % 4
    data = CachedViews(_views(), labels, 5, seed=0, num_classes=4)
    inputs, targets = _epoch(data)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, np.eye(4)[labels[(inputs[:, 0] % 100).astype(int)]])


def test_cached_views_and_labels_must_agree_in_length():
    with pytest.raises(ValueError, match="hold 10 examples but 9 labels"):
        CachedViews(_views(), np.zeros(9, int), 4, seed=0)


def test_set_epoch_draws_that_epochs_batches_as_if_the_run_had_never_stopped():
    views = np.arange(3 * 10 * 2, dtype="float32").reshape(3, 10, 2)
    labels = np.arange(10) % 2
    walked = CachedViews(views, labels, 4, seed=3, num_classes=2, mixup_alpha=0.4)
    for _ in range(2):
        walked.on_epoch_end()
    resumed = CachedViews(views, labels, 4, seed=3, num_classes=2, mixup_alpha=0.4)
    resumed.set_epoch(2)  # a fresh process resuming at epoch 2
    for index in range(len(walked)):
        for expected, actual in zip(walked[index], resumed[index], strict=True):
            np.testing.assert_array_equal(actual, expected)
    fresh = CachedViews(views, labels, 4, seed=3, num_classes=2, mixup_alpha=0.4)
    assert not np.array_equal(fresh[0][0], resumed[0][0])  # epoch 0 differs from epoch 2
