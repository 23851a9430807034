"""What training records beside the weights: the learning rate per epoch in the history,
TensorBoard scalars of each phase, and the label-smoothed loss (`pipeline.train`)."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig, TrainConfig
from pipeline.model import build_head
from pipeline.train import compile_model, tensorboard_logs, train_head


def _separable(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    features = (np.eye(3)[labels] * 2 + rng.normal(0, 0.5, (count, 3))).astype("float16")
    return features[None], labels


def _scalar_tags(folder) -> dict[str, list[float]]:
    """Every scalar written under `folder`, by tag, in step order."""
    values: dict[str, list[float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else value.simple_value
                values.setdefault(value.tag, []).append(number)
    return values


def test_the_history_and_tensorboard_hold_the_decaying_learning_rate(tmp_path):
    keras.utils.set_random_seed(0)
    train_features, train_labels = _separable(128, seed=0)
    dev_features, dev_labels = _separable(32, seed=1)
    config = dataclasses.replace(TrainConfig(), batch_size=32, head_epochs=3,
                                 head_learning_rate=0.01, decay_rate=0.5,
                                 early_stopping_patience=5)
    head = build_head(3, 3, ModelConfig(dropout=0.0))
    history = train_head(head, train_features, train_labels, dev_features, dev_labels, config,
                         tmp_path / "backup", callbacks=[tensorboard_logs(tmp_path, "phase1")])
    # 4 steps an epoch, decay 0.5 an epoch: the rate after epoch n is 0.01 * 0.5 ** n
    assert history["learning_rate"] == pytest.approx([0.005, 0.0025, 0.00125], rel=1e-5)
    scalars = _scalar_tags(tmp_path / "tensorboard" / "phase1")
    assert scalars["epoch_learning_rate"] == pytest.approx(history["learning_rate"], rel=1e-5)
    assert len(scalars["epoch_loss"]) == 6  # train and dev (validation/), 3 epochs each
    assert len(scalars["epoch_accuracy"]) == 6


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_moves_the_targets_off_one_hot(smoothing):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Softmax()])
    compile_model(model, learning_rate=1e-3, steps_per_epoch=1,
                  config=dataclasses.replace(TrainConfig(), label_smoothing=smoothing))
    one_hot = np.eye(3, dtype="float32")
    # a smoothed target is best matched by its own distribution, not by the one-hot one
    smoothed = one_hot * (1 - smoothing) + smoothing / 3
    loss_one_hot = float(model.loss(one_hot, np.clip(one_hot, 1e-7, 1)))
    loss_smoothed = float(model.loss(one_hot, smoothed))
    if smoothing:
        assert loss_smoothed < loss_one_hot
    else:
        assert loss_one_hot == pytest.approx(0.0, abs=1e-5)
