"""Running a frozen network with LiteRT, TensorFlow Lite's runtime, on the CPU.

While a base is frozen nothing about it changes, so it can be handed to an inference engine.
LiteRT's XNNPACK kernels run the mobile backbones (depthwise convolutions) 1.9-2.9x faster than
TensorFlow's graph on a 2-core x86 CPU; ResNet and Inception run about as fast either way. Which
engine suits which backbone is `BackboneSpec.extraction_engine`; `pipeline.features` uses this.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import tensorflow as tf


def convert(function: tf.types.experimental.PolymorphicFunction,
            input_spec: tf.TensorSpec) -> bytes:
    """Converts a `tf.function` of one input, traced for `input_spec`, to a float32 LiteRT model.

    Raises:
        ImportError: if the LiteRT runtime (package `ai-edge-litert`) is not installed, so the
            conversion is not wasted.
    """
    if not litert_available():  # fail before the costly conversion
        raise ImportError("No module named 'ai_edge_litert' (install the package "
                          "ai-edge-litert)")
    concrete = function.get_concrete_function(input_spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], function).convert()


def litert_available() -> bool:
    """Whether the LiteRT runtime (package `ai-edge-litert`) is installed."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def available_cpus() -> int:
    """CPU cores this process may run on (container and `taskset` limits included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


class LiteRTModel:
    """A converted model called like the function it came from, with NumPy in and out.

    Example:
        >>> model = LiteRTModel(convert(forward, tf.TensorSpec((64, 96, 96, 3), tf.uint8)))
        >>> activations, pooled = model(batch)  # batch: uint8 (64, 96, 96, 3)
    """

    def __init__(self, model: bytes, *, threads: int | None = None,
                 input_shape: tuple[int, ...] | None = None):
        """Loads `model` (the bytes of a .tflite file); `input_shape` fixes a dynamic input
        shape (such as a batch size of None) before the tensors are allocated."""
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=model,
                                        num_threads=threads or available_cpus())
        self._input = self._interpreter.get_input_details()[0]["index"]
        if input_shape is not None:
            self._interpreter.resize_tensor_input(self._input, list(input_shape))
        self._interpreter.allocate_tensors()
        self._outputs = [detail["index"] for detail in self._interpreter.get_output_details()]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Runs one batch; its shape and dtype must be the converted input spec's."""
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return tuple(self._interpreter.get_tensor(index) for index in self._outputs)
