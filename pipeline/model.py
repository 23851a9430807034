"""The classifier: a pretrained base, a new softmax head, and the class names it was trained on.

    base (frozen, BatchNorm in inference mode) -> global average pooling -> head
    head = Dropout -> Dense(num_classes, softmax, L2 penalty)

The class names travel inside the saved model (the `ClassNames` output layer stores them in
its config), so a `.keras` file always knows what its outputs mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
from keras import ops

from pipeline.config import ModelConfig
from pipeline.errors import DataError


@keras.saving.register_keras_serializable(package="pipeline")
class ClassNames(keras.layers.Layer):
    """Identity layer on the probabilities that records the class names in the model."""

    def __init__(self, class_names: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.class_names = list(class_names)

    def call(self, inputs):
        return inputs

    def get_config(self) -> dict:
        return {**super().get_config(), "class_names": self.class_names}


@keras.saving.register_keras_serializable(package="pipeline")
class TemperatureScaling(keras.layers.Layer):
    """softmax(log(p) / T) on probabilities p: temperature scaling (Guo et al., 2017).

    T > 1 softens overconfident probabilities, T < 1 sharpens them; the ranking of the classes,
    hence every prediction, is unchanged. A layer with its own config rather than a `Lambda`,
    so that the model still loads in Keras' safe mode.
    """

    def __init__(self, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        logits = ops.log(ops.clip(inputs, 1e-12, 1.0))
        return ops.softmax(logits / self.temperature, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}


def build_head(num_classes: int, feature_dim: int, config: ModelConfig) -> keras.Sequential:
    """The new classification head, trained on pooled features of the base."""
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least two classes. Received: {num_classes}.")
    return keras.Sequential([
        keras.Input((feature_dim,)),
        keras.layers.Dropout(config.dropout),
        keras.layers.Dense(num_classes, activation="softmax",
                           kernel_regularizer=keras.regularizers.L2(config.l2), name="predictions"),
    ], name="head")


def assemble_classifier(base: keras.Model, head: keras.Model,
                        class_names: Sequence[str]) -> keras.Model:
    """The deployable model: uint8-range RGB images in, class probabilities out."""
    inputs = keras.Input(base.input_shape[1:], name="image")
    features = base(inputs, training=False)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    probabilities = head(pooled)
    outputs = ClassNames(class_names, name="class_names")(probabilities)
    return keras.Model(inputs, outputs, name="classifier")


def with_temperature(classifier: keras.Model, temperature: float) -> keras.Model:
    """`classifier` (from `assemble_classifier`) with its probabilities temperature-scaled
    before the class names; the weights are shared, not copied. T = 1 returns it unchanged."""
    if temperature == 1.0:
        return classifier
    names = classifier.get_layer("class_names")
    scaled = TemperatureScaling(temperature, name="temperature")(names.input)
    outputs = ClassNames(names.class_names, name="class_names")(scaled)
    return keras.Model(classifier.input, outputs, name=classifier.name)


def load_classifier(path: Path) -> keras.Model:
    """Loads a `.keras` classifier in Keras' safe mode: a file whose layers carry code (a
    `Lambda` layer's pickled function) is refused, never run.

    Raises:
        DataError: the file holds code, or is not a Keras model file.
    """
    try:
        return keras.models.load_model(path, safe_mode=True)
    except ValueError as error:
        if "safe_mode" not in str(error) and "Lambda" not in str(error):
            raise
        raise DataError(f"'{path}' holds a layer with code (a Lambda layer); loading it would "
                        f"run that code, so it is refused (Keras safe mode). Export the model "
                        f"with this pipeline, whose models carry no code.") from None


def read_class_names(model: keras.Model) -> list[str]:
    """The class names stored in a model built by `assemble_classifier`."""
    try:
        return list(model.get_layer("class_names").class_names)
    except ValueError:
        raise DataError(f"Model '{model.name}' has no 'class_names' layer; it was not exported "
                         f"by this pipeline. Read the names from labels.txt instead.") from None


def adam_with_decay(learning_rate: float, steps_per_epoch: int,
                    decay_rate: float) -> keras.optimizers.Adam:
    """Adam whose learning rate decays exponentially, by `decay_rate` each epoch."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        learning_rate, decay_steps=max(steps_per_epoch, 1), decay_rate=decay_rate)
    return keras.optimizers.Adam(schedule)
