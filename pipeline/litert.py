"""Running a frozen network with LiteRT, TensorFlow Lite's runtime, on the CPU.

While a base is frozen nothing about it changes, so it can be handed to an inference engine.
LiteRT's XNNPACK kernels run the mobile backbones (depthwise convolutions) 1.9-2.9x faster than
TensorFlow's graph on a 2-core x86 CPU; ResNet and Inception run about as fast either way. Which
engine suits which backbone is `BackboneSpec.extraction_engine`; `pipeline.features` uses this.

On CPUs with half-precision arithmetic (x86 AVX512-FP16, as in Intel Xeon since Sapphire Rapids;
Arm FP16, as in Apple M-series and AWS Graviton) XNNPACK can also run the float32 model in
float16 arithmetic (`LiteRTFloat16Model`): at 160 px on 2 such x86 cores, 1.64x as fast as in
float32 for Lite0, 1.61x MobileNetV2, 1.75x EfficientNetB0, 1.27x ResNet50, 1.21x InceptionV3,
with Lite0's features about 1.5% off float32's (the cache stores float16 in any case).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import io
import os
import platform
import sys
import tempfile
import typing

import numpy as np
import tensorflow as tf

from pipeline.config import ExtractionPrecision


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


QUANTIZATIONS = ("float32", "dynamic_range", "int8")


def convert_classifier(model, *, quantization: str = "float32",
                       calibration: np.ndarray | None = None) -> bytes:
    """Converts a classifier (float32 pixels 0-255 in) to a LiteRT model that takes uint8 RGB
    pixels at its input size, any batch size, and returns float32 probabilities.

    Args:
        model: the Keras classifier; it normalises its input itself.
        quantization: "float32"; "dynamic_range" (int8 weights, float activations); or "int8"
            (weights and activations, calibrated on `calibration`).
        calibration: uint8 (N, size, size, 3) training images, for "int8".
    """
    size = model.input_shape[1]
    if quantization == "int8":
        # A float input quantised with scale 1 and zero point 0 is exactly the uint8 pixel:
        # the calibration's range must be [0, 255], which a black and a white image ensure.
        function = tf.function(lambda pixels: model(pixels, training=False))
        spec = tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")
        extremes = np.stack([np.zeros((size, size, 3), np.uint8),
                             np.full((size, size, 3), 255, np.uint8)])
        samples = np.concatenate([extremes, calibration]).astype(np.float32)
    else:
        function = tf.function(lambda pixels: model(tf.cast(pixels, tf.float32),
                                                    training=False))
        spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name="pixels")
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function(spec)], function)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        converter.representative_dataset = lambda: ([sample[None]] for sample in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter.convert()


def with_labels(model: bytes, class_names: list[str]) -> bytes:
    """The LiteRT model with TFLite metadata naming its input (RGB pixels) and its output
    classes (`labels.txt`, an associated file), as MediaPipe Tasks' ImageClassifier reads them.

    Raises:
        ImportError: MediaPipe's metadata writer (package `mediapipe`) is not installed.
    """
    with _without_mediapipe_import_noise():
        from mediapipe.tasks.python.metadata.metadata_writers import (
            image_classifier,
            metadata_writer,
        )

    # uint8 pixels go in as they are: mean 0, standard deviation 1
    writer = image_classifier.MetadataWriter.create(
        model, input_norm_mean=[0.0], input_norm_std=[1.0],
        labels=metadata_writer.Labels().add(list(class_names)))
    return writer.populate()[0]


def metadata_writer_available() -> bool:
    """Whether MediaPipe's TFLite metadata writer can be imported."""
    try:
        with _without_mediapipe_import_noise():
            from mediapipe.tasks.python.metadata.metadata_writers import (  # noqa: F401
                image_classifier,
            )
    except ImportError:
        return False
    return True


# Printed (not raised) by mediapipe 0.10.21's native module when it loads beside protobuf 5+;
# the metadata writer works regardless, and a user would read the line as the export failing.
_MEDIAPIPE_IMPORT_NOISE = "AttributeError: 'MessageFactory' object has no attribute 'GetPrototype'"


@contextlib.contextmanager
def _without_mediapipe_import_noise():
    """Imports mediapipe without its known harmless line on stderr; anything else it writes
    there is passed on."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    finally:
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if line.strip() != _MEDIAPIPE_IMPORT_NOISE]
        sys.stderr.write("".join(kept))


PRECISIONS = tuple(name for name in typing.get_args(ExtractionPrecision) if name != "auto")
# XNNPACK delegate flags (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h): its defaults
# (quantized operators, signed and unsigned) plus IEEE half-precision inference, forced
XNNPACK_FLAGS_FLOAT16 = 0x1 | 0x2 | 0x4


def litert_available() -> bool:
    """Whether the LiteRT runtime (package `ai-edge-litert`) is installed."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def available_cpus() -> int:
    """CPU cores this process may run on (container and `taskset` limits included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def native_float16() -> bool:
    """Whether this CPU does half-precision arithmetic natively (x86 AVX512-FP16, Arm FP16),
    so that XNNPACK's float16 kernels run faster than its float32 ones (elsewhere XNNPACK
    would emulate them, slowly). Every Apple-silicon Mac has it; on Linux the CPU's flags say;
    elsewhere False."""
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        return machine == "arm64"
    flags = _cpu_flags()
    return "avx512_fp16" in flags if machine in ("x86_64", "amd64") else "asimdhp" in flags


def _cpu_flags() -> set[str]:
    """The first CPU's feature flags from Linux's /proc/cpuinfo (x86 "flags", Arm "Features");
    empty where there is no such file."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


class LiteRTFloat16Model:
    """A converted float32 model run by XNNPACK in half precision (IEEE float16 arithmetic),
    called like `LiteRTModel`. Needs LiteRT's CompiledModel API: the interpreter cannot pass
    XNNPACK its flags.

    Raises:
        RuntimeError: if XNNPACK cannot run this model in float16 (with what LiteRT logged).
    """

    def __init__(self, model: bytes, *, threads: int | None = None):
        with _native_log_kept_back("LiteRT could not compile the model in float16"):
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.cpu_options import CpuOptions
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator
            from ai_edge_litert.options import Options

            options = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(
                num_threads=threads or available_cpus(), xnnpack_flags=XNNPACK_FLAGS_FLOAT16))
            self._model = CompiledModel.from_buffer(model, environment=_cpu_environment(),
                                                    options=options)
            self._inputs = self._model.create_input_buffers(0)
            self._outputs = self._model.create_output_buffers(0)
            signature = self._model.get_signature_by_index(0)
            details = self._model.get_output_tensor_details(signature["key"])
            self._shapes = [tuple(details[name]["shape"]) for name in signature["outputs"]]
            (spec,) = self._model.get_input_tensor_details(signature["key"]).values()
            self(np.zeros(spec["shape"], spec["dtype"]))  # the first run sets up, and logs

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """Runs one batch; its shape and dtype must be the converted input spec's."""
        self._inputs[0].write(np.ascontiguousarray(batch))
        self._model.run_by_index(0, self._inputs, self._outputs)
        return tuple(buffer.read(int(np.prod(shape)), np.float32).reshape(shape)
                     for buffer, shape in zip(self._outputs, self._shapes, strict=True))


@functools.cache
def _cpu_environment():
    """One LiteRT environment for the process (each one registers its accelerators, and logs
    doing so, again), for the CPU only: its plugin and dispatch paths hold no vendor (NPU)
    libraries."""
    from ai_edge_litert.environment import Environment

    runtime = os.path.dirname(importlib.util.find_spec("ai_edge_litert").origin)
    atexit.register(_native_log_silenced_at_exit)
    return Environment.create(runtime_path=runtime, compiler_plugin_path=runtime,
                              dispatch_library_path=runtime)


def _native_log_silenced_at_exit() -> None:
    """Tearing the environment down logs too, after everything else; Python has printed any
    traceback by the time exit handlers run."""
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)


@contextlib.contextmanager
def _native_log_kept_back(failure: str):
    """LiteRT's runtime logs a dozen INFO lines straight to the process's stderr while it sets
    up (accelerator registry, XNNPACK); they reach the user only inside the error, if setup
    fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except Exception as error:
            os.dup2(saved, 2)
            log.seek(0)
            said = log.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{failure}: {error}" + (f"\nLiteRT logged:\n{said}" if said
                                                        else "")) from error
        finally:
            os.dup2(saved, 2)
            os.close(saved)
