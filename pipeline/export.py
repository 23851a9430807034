"""Export: `models/<run>/` with the model, its class names, preprocessing and metrics.

Besides `model.keras` (what `python -m pipeline predict` reads) the model can be written for
deployment as LiteRT (`model.tflite`) and as a TensorFlow SavedModel, both by Keras' own
`Model.export`. Every written model is loaded back and must predict what the trained model did
on a few test images. The folder is assembled beside its final place and renamed into it only
when everything, parity checks included, succeeded, so a half-written export never looks
complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.atomic import atomic_path
from pipeline.config import ExportConfig
from pipeline.errors import UnavailableError
from pipeline.litert import LiteRTModel, litert_available
from pipeline.model import load_classifier, read_class_names
from pipeline.predict import eval_inputs

PARITY_IMAGES = 64
EXPORTED_FILES = {"keras": "model.keras", "litert": "model.tflite", "saved_model": "saved_model"}
KERAS_EXPORT_FORMATS = {"litert": "litert", "saved_model": "tf_saved_model"}
HOW_TO_LOAD = {
    "keras": "keras.models.load_model(path)",
    "litert": "ai_edge_litert.interpreter.Interpreter(model_path=path); resize input 0 to "
              "your batch size, allocate_tensors, set_tensor, invoke, get_tensor(output 0)",
    "saved_model": "model = tf.saved_model.load(path); model.serve(images), or TensorFlow "
                   "Serving",
}


def export_stage(config: ExportConfig, name: str, run_dir: Path) -> list[str]:
    """Exports the run's trained model to `<export.models_dir>/<name>/`, checked.

    Returns:
        The export folder, as an absolute path (it lives outside the run).
    """
    from pipeline.data.prepare import load_prepared

    data = load_prepared(run_dir / "data")
    export_dir = Path(config.models_dir) / name
    export_model(run_dir, export_dir, check_images=np.asarray(data.images("test")[:PARITY_IMAGES]),
                 stored_size=data.image_size, formats=config.formats)
    written = [EXPORTED_FILES[format_name] for format_name in config.formats]
    print(f"Exported to {export_dir} ({', '.join(written)}, labels.txt, preprocessing.json, "
          f"metrics.json), each model checked against the trained one")
    return [str(export_dir.resolve())]


def export_model(run_dir: Path, export_dir: Path, *, check_images: np.ndarray,
                 stored_size: int, formats: tuple[str, ...] = ("keras",)) -> Path:
    """Writes the trained model into `export_dir` in `formats` and checks each predicts the same.

    Args:
        run_dir: the run folder holding model.keras and metrics.json.
        export_dir: e.g. models/<run name>; replaced atomically.
        check_images: uint8 images for the parity check (a few test images).
        stored_size: the square size images are decoded to before the model's own resize.
        formats: keys of `EXPORTED_FILES`; "keras" is always written.

    Returns:
        export_dir.

    Raises:
        RuntimeError: an exported model predicts differently from the trained one.
    """
    if "litert" in formats and not litert_available():
        raise UnavailableError("export.formats includes 'litert', but the LiteRT runtime (package "
                           "ai-edge-litert, which has no Windows wheels) is not installed, so "
                           "model.tflite could not be checked. Install it, or export without "
                           "it: export.formats=[keras].")
    formats = tuple(dict.fromkeys(("keras", *formats)))
    trained = load_classifier(run_dir / "model.keras")
    inputs = eval_inputs(check_images, trained.input_shape[1]).astype("float32")
    expected = trained(inputs, training=False).numpy()
    with atomic_path(export_dir) as folder:
        folder.mkdir()
        class_names = read_class_names(trained)
        (folder / "labels.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        shutil.copy2(run_dir / "metrics.json", folder / "metrics.json")
        _write_preprocessing(folder, trained, stored_size, class_names, formats)
        for name in formats:
            path = folder / EXPORTED_FILES[name]
            if name == "keras":
                shutil.copy2(run_dir / "model.keras", path)
            else:
                trained.export(path, format=KERAS_EXPORT_FORMATS[name], verbose=False)
            _check_parity(path.name, expected, _run_exported(name, path, inputs))
    return export_dir


def _write_preprocessing(folder: Path, model: keras.Model, stored_size: int,
                         class_names: list[str], formats: tuple[str, ...]) -> None:
    size = model.input_shape[1]
    (folder / "preprocessing.json").write_text(json.dumps({
        "input": f"RGB, uint8 range [0, 255], float32 tensor of shape (batch, {size}, {size}, 3)",
        "decode": "pipeline.data.images.load_image (EXIF upright, RGB)",
        "stored_size": stored_size,
        "resize": f"shorter side to {stored_size}, centre crop, then resize to {size} "
                  f"(pipeline.predict.predict_files does this)",
        "normalisation": "inside the model (its first layer)",
        "output": "softmax probabilities, in the order of class_names (labels.txt)",
        "class_names": class_names,
        "files": {EXPORTED_FILES[name]: HOW_TO_LOAD[name] for name in formats},
    }, indent=2, ensure_ascii=False))


def _run_exported(name: str, path: Path, inputs: np.ndarray) -> np.ndarray:
    """Class probabilities of the model written at `path`, loaded as a user would load it."""
    if name == "keras":
        return load_classifier(path)(inputs, training=False).numpy()
    if name == "litert":
        return LiteRTModel(path.read_bytes(), input_shape=inputs.shape)(inputs)[0]
    loaded = tf.saved_model.load(str(path))  # keep it referenced: it owns the variables
    return loaded.serve(tf.constant(inputs)).numpy()


def _check_parity(file_name: str, expected: np.ndarray, actual: np.ndarray) -> None:
    if expected.shape != actual.shape or not np.array_equal(expected.argmax(-1),
                                                            actual.argmax(-1)) \
            or not np.allclose(expected, actual, atol=1e-4):
        difference = (float(np.abs(expected - actual).max())
                      if expected.shape == actual.shape else float("nan"))
        raise RuntimeError(f"The exported {file_name} predicts differently from the trained "
                           f"model (max probability difference {difference:.2g}); export "
                           f"aborted, nothing was written.")
