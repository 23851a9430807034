"""Export: `models/<run>/`, models that stand alone, each proven on the whole test split.

    model.keras                  the trained model (what `python -m pipeline predict` reads)
    saved_model/                 TensorFlow Serving: image bytes or pixels in, class names out,
                                 decoding and resizing inside (`pipeline.serving`)
    model.tflite                 LiteRT: uint8 pixels at the input size, labels in its metadata
    model_dynamic_range.tflite   the same, int8 weights
    model_int8.tflite            the same, int8 weights and activations
    model.onnx                   onnxruntime: uint8 pixels at the input size
    labels.txt, preprocessing.json, metrics.json, model_card.md, example.png

Every written model is run on every test image by `pipeline/export_check.py` in a fresh Python
process that does not import this package, from the files' bytes where the model takes bytes.
Float models must agree with the trained model's top-1 on at least 99.9% of the images (100%
for model.keras and the SavedModel fed pixels); quantised ones must stay within 1 point of its
test accuracy. The folder is assembled beside its final place and renamed into it only when
every check passed, so a half-written or failed export never looks complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from pipeline.atomic import atomic_path
from pipeline.config import ExportConfig
from pipeline.errors import UnavailableError
from pipeline.litert import convert_classifier, litert_available, with_labels
from pipeline.model import load_classifier, read_class_names, with_temperature
from pipeline.predict import eval_inputs

EXPORTED_FILES = {"keras": "model.keras", "saved_model": "saved_model",
                  "litert": "model.tflite", "litert_dynamic": "model_dynamic_range.tflite",
                  "litert_int8": "model_int8.tflite", "onnx": "model.onnx"}
# What the standalone check runs for each format: {check name: runner}
CHECKS = {"keras": {"keras": "keras"},
          "saved_model": {"saved_model_bytes": "saved_model:bytes",
                          "saved_model_pixels": "saved_model:pixels"},
          "litert": {"litert": "litert"}, "litert_dynamic": {"litert_dynamic": "litert"},
          "litert_int8": {"litert_int8": "litert"}, "onnx": {"onnx": "onnx"}}
EXACT_CHECKS = frozenset({"keras", "saved_model_pixels"})
QUANTISED_CHECKS = frozenset({"litert_dynamic", "litert_int8"})
MIN_AGREEMENT = 0.999
MAX_QUANTISED_DROP = 0.01
CALIBRATION_IMAGES = 200
CHECK_BATCH = 64
KERAS_LAYERS = "keras_layers.py"
TOP_K = 5


@dataclass(frozen=True)
class TestSplit:
    """The held-out images the export is checked on.

    Attributes:
        images: uint8 (N, stored, stored, 3), as the data stage stored them.
        labels: (N,) class ids.
        files: the image files they were decoded from, or None (array datasets).
    """

    __test__ = False  # not a pytest class, whatever its name

    images: np.ndarray
    labels: np.ndarray
    files: list[str] | None = None


class ExportCheckError(RuntimeError):
    """An exported model does not predict what the trained model did."""


def export_stage(config: ExportConfig, name: str, run_dir: Path) -> list[str]:
    """Exports the run's trained model to `<export.models_dir>/<name>/`, checked.

    Returns:
        The export folder, as an absolute path (it lives outside the run).
    """
    from pipeline.data.prepare import load_prepared

    data = load_prepared(run_dir / "data")
    test = TestSplit(np.asarray(data.images("test")), data.labels("test"), data.files("test"))
    train = data.images("train")
    chosen = np.sort(np.random.default_rng(0).permutation(len(train))[:CALIBRATION_IMAGES])
    export_dir = Path(config.models_dir) / name
    export_model(run_dir, export_dir, test=test, stored_size=data.image_size,
                 formats=config.formats, calibration=np.asarray(train[chosen]))
    print(f"Exported to {export_dir}: "
          f"{', '.join(EXPORTED_FILES[format_name] for format_name in config.formats)}, "
          f"model_card.md; each checked on all {len(test.labels):,} test images")
    return [str(export_dir.resolve())]


def export_model(run_dir: Path, export_dir: Path, *, test: TestSplit, stored_size: int,
                 formats: tuple[str, ...] = ("keras",),
                 calibration: np.ndarray | None = None) -> Path:
    """Writes the trained model into `export_dir` in `formats` and checks each on `test`.

    Args:
        run_dir: the run folder holding model.keras and metrics.json (and config.yaml).
        export_dir: e.g. models/<run name>; replaced atomically.
        test: the test split (all of it: the check is the proof).
        stored_size: the square size the data stage stored images at.
        formats: keys of `EXPORTED_FILES`; "keras" is always written.
        calibration: uint8 training images at the stored size, to calibrate "litert_int8".

    Returns:
        export_dir.

    Raises:
        ExportCheckError: an exported model predicts differently from the trained one.
        UnavailableError: a format's converter or runtime is not installed.
    """
    formats = tuple(dict.fromkeys(("keras", *formats)))
    _require_tools(formats)
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    # Temperature scaling fitted on dev at evaluation (1.0 when it did not help): every
    # exported file gives the calibrated probabilities; the predictions are the same.
    temperature = float(run_metrics.get("calibration", {}).get("temperature", 1.0))
    trained = with_temperature(load_classifier(run_dir / "model.keras"), temperature)
    class_names = read_class_names(trained)
    inputs = eval_inputs(test.images, trained.input_shape[1])
    expected = _probabilities(trained, inputs)
    with atomic_path(export_dir) as folder:
        folder.mkdir()
        (folder / "labels.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        Image.fromarray(np.asarray(test.images[0])).save(folder / "example.png")
        _write_preprocessing(folder, trained, stored_size, class_names, formats)
        for name in formats:
            _write_format(name, folder, trained, class_names=class_names,
                          stored_size=stored_size, calibration=calibration)
        checks = run_checks(folder, formats, test, inputs)
        results = {**judge(checks, expected, test.labels, folder), "temperature": temperature}
        metrics = {**run_metrics, "export": results}
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        from pipeline.model_card import write_model_card

        write_model_card(folder, run_dir, metrics, stored_size=stored_size,
                         image_size=trained.input_shape[1], test=test)
    return export_dir


def _require_tools(formats: tuple[str, ...]) -> None:
    litert = [name for name in formats if name.startswith("litert")]
    if litert and not litert_available():
        raise UnavailableError(f"export.formats includes {litert[0]!r}, but the LiteRT runtime "
                               f"(package ai-edge-litert, which has no Windows wheels) is not "
                               f"installed, so its files could not be checked. Install it, or "
                               f"export without it: export.formats=[keras, saved_model].")
    if "onnx" in formats and not all(_installed(module) for module in ("tf2onnx",
                                                                       "onnxruntime")):
        raise UnavailableError("export.formats includes 'onnx', but tf2onnx or onnxruntime is "
                               "not installed (pip install tf2onnx onnxruntime). Install them, "
                               "or export without it: export.formats=[keras, saved_model].")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _probabilities(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """The trained model's probabilities on eval-resized uint8 images, as evaluation gets them."""
    forward = tf.function(lambda batch: model(tf.cast(batch, tf.float32), training=False),
                          reduce_retracing=True)
    batches = [forward(inputs[start:start + CHECK_BATCH]).numpy()
               for start in range(0, len(inputs), CHECK_BATCH)]
    return np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]))


def _write_format(name: str, folder: Path, model: keras.Model, *, class_names: list[str],
                  stored_size: int, calibration: np.ndarray | None) -> None:
    path = folder / EXPORTED_FILES[name]
    if name == "keras":
        model.save(path)  # the run's model, with the temperature layer if calibrated
        _write_keras_layers(folder / KERAS_LAYERS)
    elif name == "saved_model":
        from pipeline.serving import write_saved_model

        write_saved_model(model, path, class_names=class_names, stored_size=stored_size,
                          top_k=TOP_K)
    elif name == "onnx":
        import tf2onnx

        size = model.input_shape[1]
        function = tf.function(lambda pixels: model(tf.cast(pixels, tf.float32),
                                                    training=False))
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[
            tf.TensorSpec((None, size, size, 3), tf.uint8, name="pixels")], opset=17)
        path.write_bytes(proto.SerializeToString())
    else:
        quantization = {"litert": "float32", "litert_dynamic": "dynamic_range",
                        "litert_int8": "int8"}[name]
        samples = None if calibration is None else eval_inputs(calibration,
                                                                model.input_shape[1])
        converted = convert_classifier(model, quantization=quantization, calibration=samples)
        path.write_bytes(with_labels(converted, class_names))


def _write_keras_layers(path: Path) -> None:
    """`keras_layers.py`: this package's layers inside model.keras (normalisation, temperature
    scaling and the class names), their own source, so that model.keras loads where `pipeline`
    is absent."""
    import inspect

    from pipeline.backbones import layers
    from pipeline.model import ClassNames, TemperatureScaling

    path.write_text("\n".join([
        '"""The custom layers of model.keras; import this module before loading it."""',
        "from collections.abc import Sequence", "", "import keras", "from keras import ops", "",
        f"_NORMALIZATIONS = {layers._NORMALIZATIONS!r}", "", "",
        inspect.getsource(layers.ImagePreprocessing), "",
        inspect.getsource(TemperatureScaling), "",
        inspect.getsource(ClassNames)]), encoding="utf-8")


def run_checks(folder: Path, formats: tuple[str, ...], test: TestSplit,
               inputs: np.ndarray) -> dict:
    """Runs `pipeline/export_check.py` on every written model in a fresh Python process.

    Returns:
        {"probabilities": {check: (N, classes)}, "checks": {check: timings},
         "imported_pipeline": bool}
    """
    checks = {check: (EXPORTED_FILES[name], runner) for name in formats
              for check, runner in CHECKS[name].items()}
    with tempfile.TemporaryDirectory(prefix="export-check-") as request:
        request = Path(request)
        np.save(request / "stored.npy", np.asarray(test.images))
        np.save(request / "inputs.npy", inputs)
        (request / "request.json").write_text(json.dumps({
            "export_dir": str(folder), "checks": checks, "files": test.files,
            "batch_size": CHECK_BATCH}), encoding="utf-8")
        script = Path(__file__).with_name("export_check.py")
        # A clean environment for imports: the script's folder, not the project, is on the path
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        done = subprocess.run([sys.executable, str(script), str(request)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ExportCheckError(f"The standalone check of the export failed (exit "
                                   f"{done.returncode}); export aborted, nothing was written. "
                                   f"It said:\n{done.stderr[-3000:]}")
        timings = json.loads((request / "timings.json").read_text())
        with np.load(request / "probabilities.npz") as loaded:
            probabilities = {check: loaded[check] for check in checks}
    return {"probabilities": probabilities, **timings}


def judge(checks: dict, expected: np.ndarray, labels: np.ndarray, folder: Path) -> dict:
    """Each check's agreement with the trained model and test accuracy, against the bars.

    Raises:
        ExportCheckError: naming the first file that misses its bar.
    """
    if checks.get("imported_pipeline"):
        raise ExportCheckError("The standalone check imported `pipeline`; it must not.")
    trained_accuracy = float(np.mean(expected.argmax(-1) == labels))
    results = {"trained_test_accuracy": trained_accuracy, "test_images": int(len(labels)),
               "checks": {}}
    for check, probabilities in checks["probabilities"].items():
        name = next(name for name, named in CHECKS.items() if check in named)
        path = folder / EXPORTED_FILES[name]
        agreement = (float(np.mean(probabilities.argmax(-1) == expected.argmax(-1)))
                     if len(labels) else 1.0)
        accuracy = float(np.mean(probabilities.argmax(-1) == labels)) if len(labels) else 0.0
        difference = (float(np.max(np.abs(probabilities - expected))) if len(labels) else 0.0)
        results["checks"][check] = {
            "file": path.name, "size_bytes": _size(path), "top1_agreement": agreement,
            "max_probability_difference": difference,
            "test_accuracy": accuracy, **checks["checks"][check]}
        _check_bar(check, path.name, agreement, accuracy, trained_accuracy)
    return results


def _check_bar(check: str, file_name: str, agreement: float, accuracy: float,
               trained_accuracy: float) -> None:
    if check in QUANTISED_CHECKS:
        if accuracy < trained_accuracy - MAX_QUANTISED_DROP:
            raise ExportCheckError(
                f"The exported {file_name} reaches test accuracy {accuracy:.4f}, more than "
                f"{MAX_QUANTISED_DROP:.0%} below the trained model's {trained_accuracy:.4f}; "
                f"export aborted, nothing was written. Leave it out of export.formats.")
        return
    bar = 1.0 if check in EXACT_CHECKS else MIN_AGREEMENT
    if agreement < bar:
        raise ExportCheckError(
            f"The exported {file_name} ({check}) predicts differently from the trained model: "
            f"same top-1 on {agreement:.4%} of the test images, below {bar:.1%}; export "
            f"aborted, nothing was written.")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size


def _write_preprocessing(folder: Path, model: keras.Model, stored_size: int,
                         class_names: list[str], formats: tuple[str, ...]) -> None:
    size = model.input_shape[1]
    (folder / "preprocessing.json").write_text(json.dumps({
        "input": f"RGB, uint8 range [0, 255]: model.keras float32 (batch, {size}, {size}, 3); "
                 f"model*.tflite and model.onnx uint8 (batch, {size}, {size}, 3); saved_model "
                 f"encoded image bytes or uint8 pixels of any size",
        "decode": "pipeline.data.images.load_image (EXIF upright, RGB); inside saved_model",
        "stored_size": stored_size,
        "resize": f"shorter side to {stored_size}, centre crop (Pillow bilinear), then resize "
                  f"to {size} (OpenCV: area when shrinking, linear when enlarging); inside "
                  f"saved_model",
        "normalisation": "inside every model",
        "output": "softmax probabilities, in the order of class_names (labels.txt)",
        "class_names": class_names,
        "files": [EXPORTED_FILES[name] for name in formats],
    }, indent=2, ensure_ascii=False))
