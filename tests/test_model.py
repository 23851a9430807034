"""The classifier: the head as configured, the assembled model, its class names, the optimizer."""

import keras
import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.errors import DataError
from pipeline.model import (
    adam_with_decay,
    assemble_classifier,
    build_head,
    load_classifier,
    read_class_names,
)

CLASS_NAMES = ["cat", "dog", "émeu"]


def _tiny_base() -> keras.Model:
    """A 16x16 image base with a BatchNorm whose moving statistics are far from a batch's."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    features = keras.layers.BatchNormalization(name="bn")(features)
    base = keras.Model(inputs, features, name="tiny_base")
    base.get_layer("bn").moving_mean.assign(np.full(4, 50.0, "float32"))
    base.get_layer("bn").moving_variance.assign(np.full(4, 4.0, "float32"))
    return base


def _images(count: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 16, 16, 3)).astype("float32")


# build_head


def test_the_head_outputs_one_probability_per_class():
    head = build_head(5, 8, ModelConfig())
    features = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(head(features, training=False))
    assert probabilities.shape == (3, 5)
    assert np.all(probabilities > 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_the_l2_penalty_is_the_configured_weight_times_the_squared_kernel():
    head = build_head(3, 4, ModelConfig(l2=0.01))
    kernel = keras.ops.convert_to_numpy(head.get_layer("predictions").kernel)
    head(np.zeros((1, 4), "float32"))
    penalty = float(keras.ops.convert_to_numpy(keras.ops.sum(head.losses)))
    assert penalty == pytest.approx(0.01 * float((kernel**2).sum()), rel=1e-5)
    assert penalty > 0


def test_dropout_at_the_configured_rate_acts_in_training_only():
    keras.utils.set_random_seed(0)
    features = np.ones((1, 2000), "float32")
    head = build_head(2, 2000, ModelConfig(dropout=0.25))
    dropout = head.layers[0]
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.25
    kept = keras.ops.convert_to_numpy(dropout(features, training=True))
    assert abs((kept == 0).mean() - 0.25) < 0.04
    np.testing.assert_allclose(kept[kept != 0], 1 / 0.75, rtol=1e-6)  # survivors rescaled
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dropout(features)), features)


def test_a_head_for_one_class_is_refused():
    with pytest.raises(ValueError, match="at least two classes. Received: 1"):
        build_head(1, 8, ModelConfig())


# assemble_classifier and read_class_names


def test_the_classifier_is_the_head_on_pooled_features_of_the_base():
    base = _tiny_base()
    head = build_head(len(CLASS_NAMES), 4, ModelConfig(dropout=0.0))
    model = assemble_classifier(base, head, CLASS_NAMES)
    images = _images()
    assert model.input_shape == (None, 16, 16, 3)
    pooled = keras.ops.convert_to_numpy(base(images, training=False)).mean(axis=(1, 2))
    expected = keras.ops.convert_to_numpy(head(pooled, training=False))
    actual = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_a_frozen_base_keeps_batchnorm_in_inference_mode_while_training():
    # Keras 3 passes the outer `training` on to the nested base, overriding the
    # `training=False` it was wired with: freezing is what keeps its BatchNorm on moving
    # statistics (as `freeze_backbone` does), so the model must be built around that.
    base = _tiny_base()
    model = assemble_classifier(base, build_head(3, 4, ModelConfig(dropout=0.0)), CLASS_NAMES)
    images = _images()
    inference = keras.ops.convert_to_numpy(model(images, training=False))
    base.trainable = False
    frozen = keras.ops.convert_to_numpy(model(images, training=True))
    np.testing.assert_allclose(frozen, inference, rtol=1e-5, atol=1e-6)
    base.trainable = True
    unfrozen = keras.ops.convert_to_numpy(model(images, training=True))
    assert np.abs(unfrozen - inference).max() > 0.1  # batch statistics would have shown


def test_class_names_survive_a_save_and_load_round_trip(tmp_path):
    model = assemble_classifier(_tiny_base(), build_head(3, 4, ModelConfig()), CLASS_NAMES)
    assert read_class_names(model) == CLASS_NAMES
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert read_class_names(loaded) == CLASS_NAMES
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(_images())),
                               keras.ops.convert_to_numpy(model(_images())), rtol=1e-6)


def test_a_model_without_class_names_is_a_clear_error():
    with pytest.raises(ValueError, match="'tiny_base' has no 'class_names' layer.*labels.txt"):
        read_class_names(_tiny_base())


# adam_with_decay


@pytest.mark.parametrize(("steps_per_epoch", "step", "expected"), [
    (10, 0, 0.01),
    (10, 5, 0.01 * 0.5**0.5),  # smooth, not a staircase
    (10, 10, 0.005),
    (10, 20, 0.0025),
    (0, 2, 0.0025),            # an empty epoch counts as one step
])
def test_the_learning_rate_decays_by_the_rate_each_epoch(steps_per_epoch, step, expected):
    optimizer = adam_with_decay(0.01, steps_per_epoch, decay_rate=0.5)
    assert isinstance(optimizer, keras.optimizers.Adam)
    optimizer.iterations.assign(step)
    assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)


def test_a_model_carrying_code_is_refused_not_run(tmp_path, capsys):
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)  # a pickled Python function
    keras.Model(inputs, outputs).save(tmp_path / "model.keras")
    with pytest.raises(DataError, match="Lambda layer.*refused \\(Keras safe mode\\)"):
        load_classifier(tmp_path / "model.keras")
