"""Inference: class probabilities for arrays of images, and for image files and folders.

Files are decoded exactly as the data stage decodes them (`pipeline.data.images`), then resized
like the eval transform, so a deployed model sees what it saw in evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.augment import BatchAugmenter, build_eval_transform
from pipeline.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_image, resize_square
from pipeline.errors import MissingInputError
from pipeline.inputs import augmented_batches, pad_batch
from pipeline.model import load_classifier, read_class_names


def predict_array(model: keras.Model, images: np.ndarray, *, batch_size: int = 128,
                  description: str = "Predicting") -> np.ndarray:
    """Class probabilities for uint8 images of any square size (resized to the model's input).

    Runs one compiled forward pass per batch (not `model.predict`, which has a fixed cost per
    call), with the last batch padded so the graph is traced once.
    """
    image_size = model.input_shape[1]
    augmenter = BatchAugmenter(build_eval_transform(image_size), seed=0)
    forward = tf.function(lambda batch: model(tf.cast(batch, tf.float32), training=False))
    outputs = []
    with tqdm(total=len(images), desc=description, unit="img", leave=False) as progress:
        for batch in augmented_batches(images, augmenter, batch_size):
            outputs.append(forward(pad_batch(batch, batch_size)).numpy()[:len(batch)])
            progress.update(len(batch))
    if not outputs:
        return np.zeros((0, model.output_shape[-1]), "float32")
    return np.concatenate(outputs)


def eval_inputs(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 images resized to the model's input as evaluation does (the eval transform)."""
    augmenter = BatchAugmenter(build_eval_transform(image_size), seed=0)
    return augmenter(np.asarray(images), np.arange(len(images)), 0)


def find_images(target: Path) -> list[Path]:
    """One file, or every image file under a folder (sorted, hidden files left out)."""
    if not target.exists():
        raise MissingInputError(f"'{target}' does not exist. Pass an image file or a folder.")
    if target.is_file():
        return [target]
    return sorted(path for path in target.rglob("*")
                  if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                  and not path.name.startswith("."))


def predict_command(model_dir: Path, images: Path) -> None:
    """`python -m pipeline predict`: prints the top classes of each image file under `images`.

    Raises:
        MissingInputError: `model_dir` holds no exported model, or `images` does not exist.
    """
    if not (model_dir / "model.keras").is_file():
        raise MissingInputError(f"No exported model in '{model_dir}'. Train and export first "
                                f"(make train), or pass --model models/<run name>.")
    model = load_classifier(model_dir / "model.keras")
    stored_size = json.loads((model_dir / "preprocessing.json").read_text())["stored_size"]
    for result in predict_files(model, find_images(images), stored_size=stored_size):
        if "error" in result:
            print(f"{result['file']}: skipped ({result['error']})")
        else:
            best = ", ".join(f"{p['class']} {p['probability']:.3f}"
                             for p in result["predictions"])
            print(f"{result['file']}: {best}")


def predict_files(model: keras.Model, paths: list[Path], *, stored_size: int,
                  top_k: int = 3) -> list[dict]:
    """Top-k predictions per file; unreadable files get an "error" entry instead.

    Args:
        model: a classifier exported by this pipeline.
        paths: image files.
        stored_size: the square size the data stage stored images at (from preprocessing.json),
            so files go through the same two resizes as the training images did.
        top_k: how many classes to list per file.
    """
    class_names = read_class_names(model)
    results, images = [], []
    for path in paths:
        try:
            images.append(resize_square(load_image(path), stored_size))
            results.append({"file": str(path)})
        except ImageDecodeError as error:
            results.append({"file": str(path), "error": str(error)})
    if images:
        probabilities = predict_array(model, np.stack(images))
        readable = [result for result in results if "error" not in result]
        for result, row in zip(readable, probabilities, strict=True):
            best = np.argsort(row)[::-1][:min(top_k, len(class_names))]
            result["predictions"] = [{"class": class_names[i], "probability": float(row[i])}
                                     for i in best]
    return results
