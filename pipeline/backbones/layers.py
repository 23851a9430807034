"""The preprocessing layer that sits first in every backbone.

Keeping the normalisation inside the model means training, export and prediction all feed
the same thing, RGB pixels in [0, 255], and can never disagree about what happens next.
"""

from __future__ import annotations

import keras
from keras import ops

# Per mode: (mean, standard deviation) per RGB channel on the 0-255 scale, and whether the
# channels are reversed to BGR first. Output = (pixel - mean) / std, in the backbone's order.
_NORMALIZATIONS = {
    # ResNet v1 (Caffe weights): BGR, minus the ImageNet mean, no scaling.
    "caffe": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0), True),
    # Inception, ResNet v2, MobileNet: [-1, 1].
    "tf": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5), False),
    # torchvision: [0, 1] then the ImageNet mean and standard deviation.
    "torch": (
        (0.485 * 255, 0.456 * 255, 0.406 * 255),
        (0.229 * 255, 0.224 * 255, 0.225 * 255),
        False,
    ),
    # EfficientNet-Lite (tensorflow/tpu efficientnet_lite_builder.py: MEAN_RGB 127, STDDEV_RGB 128).
    "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0), False),
    # The backbone normalises by itself (Keras EfficientNet): pass the pixels through.
    "raw": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),
}

PREPROCESSING_MODES = tuple(_NORMALIZATIONS)


@keras.saving.register_keras_serializable(package="pipeline")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to the input a pretrained backbone expects.

    Args:
        mode: one of `PREPROCESSING_MODES`: "caffe", "tf", "torch", "lite" or "raw".
        **kwargs: standard layer arguments (`name`, `dtype`).

    Raises:
        ValueError: if `mode` is unknown.

    Example:
        >>> layer = ImagePreprocessing("tf")
        >>> layer(np.full((1, 2, 2, 3), 255.0)).numpy().max()
        1.0
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in _NORMALIZATIONS:
            raise ValueError(
                f"Unknown preprocessing mode. Expected one of: {', '.join(PREPROCESSING_MODES)}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode
        mean, std, self._reverse_channels = _NORMALIZATIONS[mode]
        if self._reverse_channels:
            mean, std = mean[::-1], std[::-1]
        self._mean = mean
        self._std = std

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self._reverse_channels:
            images = ops.flip(images, axis=-1)
        mean = ops.convert_to_tensor(self._mean, dtype=self.compute_dtype)
        std = ops.convert_to_tensor(self._std, dtype=self.compute_dtype)
        return (images - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
