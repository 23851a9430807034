"""Inference: class probabilities for arrays of images, and for image files, folders and bytes.

Files are found and decoded exactly as the data stage finds and decodes them
(`pipeline.data.folder.list_image_files`, `pipeline.data.images`), then resized like the eval
transform, so a deployed model sees what it saw in evaluation.

    python -m pipeline predict --model models/photos new/ extra.jpg --top-k 5 --format csv
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, TextIO

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.augment import BatchAugmenter, build_eval_transform
from pipeline.data.folder import SkippedFile, list_image_files
from pipeline.data.images import ImageDecodeError, decode_image_bytes, load_image, resize_square
from pipeline.errors import ConfigError, DataError, MissingInputError
from pipeline.inputs import augmented_batches, pad_batch
from pipeline.model import load_classifier, read_class_names

OutputFormat = Literal["table", "json", "csv"]
# Files are decoded and classified this many at a time, so a folder of any size needs the
# memory of one chunk, and the table streams out as it goes.
CHUNK_FILES = 256


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


class Predictor:
    """A trained classifier that ranks the classes of image files, or of their bytes.

    Args:
        model: a classifier exported by this pipeline (class names inside).
        stored_size: the square size the data stage stored images at (preprocessing.json), so
            a file goes through the same two resizes as the training images did.
    """

    def __init__(self, model: keras.Model, stored_size: int):
        self.model = model
        self.stored_size = stored_size
        self.class_names = read_class_names(model)
        size = model.input_shape[1]
        self._eval = BatchAugmenter(build_eval_transform(size), seed=0)
        # One trace for every batch size: the demo classifies one photo at a time.
        self._forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])

    @classmethod
    def load(cls, model_path: Path) -> Predictor:
        """The model of an export folder (`models/<run>`), or a `.keras` file beside its
        `preprocessing.json`; loaded in Keras' safe mode.

        Raises:
            MissingInputError: no exported model there.
        """
        model_path = Path(model_path)
        folder = model_path.parent if model_path.suffix == ".keras" else model_path
        model_file = model_path if model_path.suffix == ".keras" else folder / "model.keras"
        if not model_file.is_file():
            raise MissingInputError(f"No exported model in '{model_path}'. Train and export "
                                    f"first (make train), or pass --model models/<run name>.")
        model = load_classifier(model_file)
        preprocessing = folder / "preprocessing.json"
        stored_size = (json.loads(preprocessing.read_text())["stored_size"]
                       if preprocessing.is_file() else model.input_shape[1])
        return cls(model, stored_size)

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities of decoded uint8 RGB images of any size."""
        stored = np.stack([resize_square(image, self.stored_size) for image in images])
        inputs = self._eval(stored, np.arange(len(stored)), 0).astype("float32")
        return self._forward(tf.constant(inputs)).numpy()

    def rank(self, probabilities: np.ndarray, top_k: int) -> list[dict]:
        """The top-k classes of one row of probabilities, best first."""
        best = np.argsort(probabilities)[::-1][:min(top_k, len(self.class_names))]
        return [{"class": self.class_names[index], "probability": float(probabilities[index])}
                for index in best]

    def classify_bytes(self, data: bytes, top_k: int = 5) -> list[dict]:
        """The top-k classes of one encoded image (JPEG, PNG, GIF or BMP, decided by content).

        Raises:
            ImageDecodeError: the bytes are not a usable image (the message says why).
        """
        return self.rank(self.probabilities([decode_image_bytes(data)])[0], top_k)

    def classify_files(self, paths: Sequence[Path], top_k: int = 3) -> list[dict]:
        """{"file", "predictions"} per file, or {"file", "error"} for a file that cannot be
        read, in the order given."""
        results, images = [], []
        for path in paths:
            try:
                images.append(load_image(path))
                results.append({"file": str(path)})
            except ImageDecodeError as error:
                results.append({"file": str(path), "error": str(error)})
        if images:
            readable = [result for result in results if "error" not in result]
            for result, row in zip(readable, self.probabilities(images), strict=True):
                result["predictions"] = self.rank(row, top_k)
        return results


def predict_files(model: keras.Model, paths: list[Path], *, stored_size: int,
                  top_k: int = 3) -> list[dict]:
    """Top-k predictions per file; unreadable files get an "error" entry instead
    (`Predictor.classify_files` for a model already loaded)."""
    return Predictor(model, stored_size).classify_files(paths, top_k)


def find_images(targets: Sequence[Path]) -> tuple[list[Path], list[SkippedFile]]:
    """The image files among `targets`, and the links under them that could not be followed.

    A file is taken as given; under a folder, every file the data stage would take as an image
    (by content or extension, at any depth; hidden and system files left out), sorted.

    Raises:
        MissingInputError: a target does not exist.
    """
    found, skipped = [], []
    for target in map(Path, targets):
        if not target.exists() and not target.is_symlink():
            raise MissingInputError(f"'{target}' does not exist. Pass image files or folders.")
        if target.is_dir():
            files, links = list_image_files(target)
            found += files
            skipped += links
        else:
            found.append(target)
    return found, skipped


def predict_command(model_path: Path, targets: Sequence[Path], *, top_k: int = 3,
                    output_format: OutputFormat = "table", out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    """`python -m pipeline predict`: the top-k classes of every image file among `targets`,
    written to `out` (standard output) as a table, JSON or CSV; one line per unreadable file
    on `err` (standard error).

    Returns:
        How many files were classified.

    Raises:
        ConfigError: `top_k` below 1, or an unknown `output_format`.
        MissingInputError: no exported model at `model_path`, or a target does not exist.
        DataError: no file could be classified (the only failure a partly readable folder has).
    """
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1. Received: {top_k}.")
    if output_format not in _WRITERS:
        raise ConfigError(f"--format must be one of: {', '.join(_WRITERS)}. "
                          f"Received: {output_format!r}.")
    return classify_paths(Predictor.load(model_path), targets, top_k=top_k,
                          output_format=output_format, out=out or sys.stdout,
                          err=err or sys.stderr)


def classify_paths(predictor: Predictor, targets: Sequence[Path], *, top_k: int,
                   output_format: OutputFormat, out: TextIO, err: TextIO) -> int:
    """`predict_command` with its model loaded: finds, classifies and writes, a chunk of
    files at a time. Returns how many files were classified; raises DataError if none."""
    paths, skipped = find_images(targets)
    for entry in skipped:
        print(f"{entry.path}: skipped ({entry.reason})", file=err)
    if not paths:
        raise DataError(f"No image files in {', '.join(map(str, targets))}: nothing to classify "
                        f"(JPEG, PNG, GIF or BMP files are read, at any depth).")
    writer = _WRITERS[output_format](out, top_k, paths)
    classified = 0
    for start in tqdm(range(0, len(paths), CHUNK_FILES), desc="Classifying", unit="chunk",
                      leave=False, disable=len(paths) <= CHUNK_FILES):
        results = predictor.classify_files(paths[start:start + CHUNK_FILES], top_k)
        for result in results:
            if "error" in result:
                print(f"{result['file']}: skipped ({result['error']})", file=err)
        classified += sum("error" not in result for result in results)
        writer.write(results)
    writer.close()
    if not classified:
        raise DataError(f"None of the {len(paths)} image files could be classified "
                        f"(one line each above says why).")
    return classified


class _TableWriter:
    """One row per classified file: the file, then each top class with its probability."""

    def __init__(self, out: TextIO, top_k: int, paths: Sequence[Path]):
        self.out, self.width = out, max(len("file"), *(len(str(path)) for path in paths))
        columns = [f"top {rank + 1}" for rank in range(top_k)]
        print(f"{'file':{self.width}}  " + "  ".join(f"{name:22}" for name in columns).rstrip(),
              file=out)

    def write(self, results: Iterable[dict]) -> None:
        for result in results:
            if "predictions" in result:
                cells = [f"{entry['class']} {entry['probability']:.3f}"
                         for entry in result["predictions"]]
                print(f"{result['file']:{self.width}}  "
                      + "  ".join(f"{cell:22}" for cell in cells).rstrip(), file=self.out)

    def close(self) -> None:
        self.out.flush()


class _JsonWriter:
    """One JSON list of {"file", "predictions"} or {"file", "error"}, written at the end."""

    def __init__(self, out: TextIO, top_k: int, paths: Sequence[Path]):
        self.out, self.results = out, []

    def write(self, results: Iterable[dict]) -> None:
        self.results += results

    def close(self) -> None:
        json.dump(self.results, self.out, indent=2, ensure_ascii=False)
        self.out.write("\n")


class _CsvWriter:
    """file,rank,class,probability,error: one row per file and rank, or one with the error."""

    def __init__(self, out: TextIO, top_k: int, paths: Sequence[Path]):
        self.out, self.writer = out, csv.writer(out, lineterminator="\n")
        self.writer.writerow(["file", "rank", "class", "probability", "error"])

    def write(self, results: Iterable[dict]) -> None:
        for result in results:
            if "error" in result:
                self.writer.writerow([result["file"], "", "", "", result["error"]])
            for rank, entry in enumerate(result.get("predictions", []), start=1):
                self.writer.writerow([result["file"], rank, entry["class"],
                                      f"{entry['probability']:.6f}", ""])

    def close(self) -> None:
        self.out.flush()


_WRITERS = {"table": _TableWriter, "json": _JsonWriter, "csv": _CsvWriter}
