"""Runs every exported model on the whole test split, as a deployer would: no `pipeline` inside.

The export stage starts this file as a script in a fresh Python process (`python
export_check.py REQUEST_DIR`), so what it proves holds for a machine that has TensorFlow,
LiteRT or onnxruntime and the export folder, and nothing of this project. It must never import
`pipeline`; it says so in its results (`imported_pipeline`).

REQUEST_DIR holds `request.json` (the export folder, the files per format, the test files'
paths or none) and `stored.npy` (the test images at the stored size, as the data stage keeps
them) and `inputs.npy` (the same images resized for the network, as evaluation feeds it). It
writes `probabilities.npz` (one array per check) and `timings.json`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

LATENCY_RUNS = 15
# LiteRT's CPU kernels run small batches faster per image: on Lite0 at 96 px here (2 threads)
# batches of 8 gave 1.8x (float32) and 2.8x (int8) the images/s of batches of 64.
LITERT_BATCH = 8


class _RefusePipeline:
    """An import hook that makes `pipeline` unimportable here, as on a deployer's machine
    (Keras would otherwise import the module a layer's config names)."""

    def find_spec(self, name, path=None, target=None):
        if name == "pipeline" or name.startswith("pipeline."):
            raise ImportError(f"{name} is not available to the standalone check")
        return None


def main(request_dir: Path) -> None:
    request = json.loads((request_dir / "request.json").read_text(encoding="utf-8"))
    export_dir, batch_size = Path(request["export_dir"]), request["batch_size"]
    stored = np.load(request_dir / "stored.npy", mmap_mode="r")
    inputs = np.load(request_dir / "inputs.npy", mmap_mode="r")
    encoded = _test_bytes(request["files"], stored)
    probabilities, timings = {}, {}
    for check, (file_name, kind) in request["checks"].items():
        path = export_dir / file_name
        predict = RUNNERS[kind](path)
        data = {"bytes": encoded, "pixels": stored}.get(kind.split(":")[-1], inputs)
        batch = LITERT_BATCH if kind == "litert" else batch_size
        timings[check] = {"latency_ms": _latency_ms(predict, data[:1])}
        predict(data[:batch])  # warm up at the batch size: tracing is not throughput
        started = time.perf_counter()
        probabilities[check] = _in_batches(predict, data, batch)
        timings[check]["images_per_second"] = len(data) / (time.perf_counter() - started)
    np.savez(request_dir / "probabilities.npz", **probabilities)
    (request_dir / "timings.json").write_text(json.dumps(
        {"checks": timings, "imported_pipeline": "pipeline" in sys.modules}))


def _test_bytes(files: list[str] | None, stored: np.ndarray) -> list[bytes]:
    """The test files' bytes; for array datasets (no files), the stored pixels as PNG files,
    and so for an animated WebP, which the serving graph refuses (training took its first
    frame)."""
    import tensorflow as tf

    if files is None:
        return [tf.io.encode_png(image).numpy() for image in stored]
    encoded = [Path(file).read_bytes() for file in files]
    return [tf.io.encode_png(stored[index]).numpy() if _is_animated_webp(data) else data
            for index, data in enumerate(encoded)]


def _is_animated_webp(data: bytes) -> bool:
    """An extended WebP ("VP8X" chunk) with its animation flag set (bit 1 of byte 20)."""
    return (data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X"
            and len(data) > 20 and bool(data[20] & 0x02))


def _in_batches(predict: Callable, data, batch_size: int) -> np.ndarray:
    outputs = [predict(data[start:start + batch_size])
               for start in range(0, len(data), batch_size)]
    return np.concatenate(outputs).astype(np.float32)


def _latency_ms(predict: Callable, one) -> float:
    """Median wall time of classifying one image, after two warm-up calls."""
    times = []
    for run in range(LATENCY_RUNS + 2):
        started = time.perf_counter()
        predict(one)
        if run >= 2:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _keras(path: Path) -> Callable:
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(path.parent))
    import keras_layers  # noqa: F401  (the export's own custom layers, registered on import)

    model = keras.saving.load_model(path, safe_mode=True)
    forward = tf.function(lambda batch: model(tf.cast(batch, tf.float32), training=False),
                          reduce_retracing=True)
    return lambda batch: forward(np.asarray(batch)).numpy()


def _saved_model(signature: str) -> Callable[[Path], Callable]:
    def load(path: Path) -> Callable:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures[signature]

        def predict(batch):
            _ = loaded  # the signature needs the loaded object alive
            if signature == "serving_default":
                return serve(image_bytes=tf.constant(list(batch)))["probabilities"].numpy()
            return serve(pixels=tf.constant(np.asarray(batch)))["probabilities"].numpy()
        return predict
    return load


def _litert(path: Path) -> Callable:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own copy of the same runtime
        from tensorflow.lite.python.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path), num_threads=len(os.sched_getaffinity(0))
                              if hasattr(os, "sched_getaffinity") else os.cpu_count())
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    sizes = {}

    def predict(batch):
        batch = np.asarray(batch)
        if sizes.get("batch") != len(batch):  # resize only when the batch size changes
            interpreter.resize_tensor_input(source["index"], list(batch.shape))
            interpreter.allocate_tensors()
            sizes["batch"] = len(batch)
        interpreter.set_tensor(source["index"], batch)
        interpreter.invoke()
        return interpreter.get_tensor(target["index"]).copy()
    return predict


def _onnx(path: Path) -> Callable:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: np.asarray(batch)})[0]


RUNNERS = {"keras": _keras, "saved_model:bytes": _saved_model("serving_default"),
           "saved_model:pixels": _saved_model("classify_pixels"), "litert": _litert,
           "onnx": _onnx}

if __name__ == "__main__":
    sys.meta_path.insert(0, _RefusePipeline())
    main(Path(sys.argv[1]))
