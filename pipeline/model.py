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


def adam_with_decay(learning_rate: float, steps_per_epoch: int, decay_rate: float,
                    rate_scales: dict[str, float] | None = None) -> keras.optimizers.Adam:
    """Adam whose learning rate decays exponentially, by `decay_rate` each epoch; with
    `rate_scales` ({variable path: factor}, see `layer_rate_scales`), each variable steps at
    its own multiple of that rate."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        learning_rate, decay_steps=max(steps_per_epoch, 1), decay_rate=decay_rate)
    if rate_scales:
        return LayerwiseAdam(schedule, rate_scales=rate_scales)
    return keras.optimizers.Adam(schedule)


@keras.saving.register_keras_serializable(package="pipeline")
class LayerwiseAdam(keras.optimizers.Adam):
    """Adam with a learning-rate factor per variable (discriminative fine-tuning: lower
    layers, which hold more general features, move more slowly).

    Scaling the gradient would not do it: Adam divides by the gradient's running size, so
    only the rate itself changes the step. The factors are keyed by variable path (a layer
    name and the weight's name), so a copy of the model built under a distribution strategy
    finds them too; a variable not listed steps at the full rate.
    """

    def __init__(self, *args, rate_scales: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales or {})
        self._factors: list[float] = []

    def build(self, variables):
        super().build(variables)
        self._factors = [self.rate_scales.get(variable.path, 1.0) for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * factor)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate_scales": self.rate_scales}


def layer_rate_scales(part: keras.Model, boundary_layers: tuple[str, ...] | list[str],
                      decay: float) -> dict[str, float]:
    """{variable path: learning-rate factor} for the trainable variables of `part` (the
    unfrozen part of a backbone): the block group above the highest boundary the part holds
    gets `decay`, the group below it `decay` squared, and so on down to the first layer
    (the head, not in `part`, keeps the full rate).

    Args:
        part: the trainable part, its layers in the order they run.
        boundary_layers: the first layer of each block group (the backbone spec's
            `boundaries` values).
        decay: the factor per group, in (0, 1].
    """
    groups: list[tuple[int, keras.layers.Layer]] = []
    group = 0
    for layer in _flat_layers(part):
        group += layer.name in boundary_layers
        groups.append((group, layer))
    highest = max((group for group, _ in groups), default=0)
    return {variable.path: float(decay ** (highest - group + 1))
            for group, layer in groups for variable in layer.trainable_weights}


def _flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """A model's layers in order, those of nested models in their place."""
    layers = []
    for layer in model.layers:
        layers.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return layers
