"""Export: `models/<run>/` with the model, its class names, preprocessing and metrics.

The folder is assembled beside its final place and renamed into it only when everything,
including the parity check, succeeded, so a half-written export never looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np

from pipeline.model import read_class_names
from pipeline.predict import predict_array
from pipeline.stages import atomic_path

PARITY_IMAGES = 64


def export_model(run_dir: Path, export_dir: Path, *, check_images: np.ndarray,
                 stored_size: int) -> Path:
    """Copies the trained model into `export_dir` and checks the copy predicts the same.

    Args:
        run_dir: the run folder holding model.keras and metrics.json.
        export_dir: e.g. models/<run name>; replaced atomically.
        check_images: uint8 images for the parity check (a few test images).
        stored_size: the square size images are decoded to before the model's own resize.

    Returns:
        export_dir.

    Raises:
        RuntimeError: the exported model predicts differently from the trained one.
    """
    trained = keras.models.load_model(run_dir / "model.keras")
    expected = predict_array(trained, check_images, description="Parity check (trained)")
    with atomic_path(export_dir) as folder:
        folder.mkdir()
        shutil.copy2(run_dir / "model.keras", folder / "model.keras")
        class_names = read_class_names(trained)
        (folder / "labels.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        shutil.copy2(run_dir / "metrics.json", folder / "metrics.json")
        (folder / "preprocessing.json").write_text(json.dumps({
            "input": "RGB, uint8 range [0, 255], float32 tensor of shape "
                     f"(batch, {trained.input_shape[1]}, {trained.input_shape[2]}, 3)",
            "decode": "pipeline.data.images.load_image (EXIF upright, RGB)",
            "stored_size": stored_size,
            "resize": f"shorter side to {stored_size}, centre crop, then resize to "
                      f"{trained.input_shape[1]} (pipeline.predict.predict_files does this)",
            "normalisation": "inside the model (its first layer)",
            "class_names": class_names,
        }, indent=2, ensure_ascii=False))
        exported = keras.models.load_model(folder / "model.keras")
        actual = predict_array(exported, check_images, description="Parity check (exported)")
        _check_parity(expected, actual)
    return export_dir


def _check_parity(expected: np.ndarray, actual: np.ndarray) -> None:
    if not np.array_equal(expected.argmax(-1), actual.argmax(-1)) or \
            not np.allclose(expected, actual, atol=1e-4):
        difference = float(np.abs(expected - actual).max())
        raise RuntimeError(f"The exported model predicts differently from the trained one "
                           f"(max probability difference {difference:.2g}); export aborted, "
                           f"nothing was written.")
