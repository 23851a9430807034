"""`model_card.md`: what an exported model is, how it was made and checked, and how to use it.

Every ```python block in the card loads one exported file and classifies `example.png` (a test
image the export ships) with no import of this package; `tests/test_model_card.py` runs each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Snippets per exported file; {size} is the model's input size. Run from the export folder.
SNIPPETS = {
    "saved_model": '''import tensorflow as tf

model = tf.saved_model.load("saved_model")
with open("example.png", "rb") as file:
    result = model.signatures["serving_default"](image_bytes=tf.constant([file.read()]))
print(result["classes"][0, 0].numpy().decode(), float(result["scores"][0, 0]))''',
    "litert": '''import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image, ImageOps

FILE = "{file}"
image = ImageOps.fit(Image.open("example.png").convert("RGB"), ({size}, {size}), Image.BILINEAR)
interpreter = Interpreter(model_path=FILE)
interpreter.allocate_tensors()
interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(image)[None])
interpreter.invoke()
probabilities = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
labels = open("labels.txt", encoding="utf-8").read().splitlines()
print(labels[probabilities.argmax()], probabilities.max())''',
    "onnx": '''import numpy as np
import onnxruntime
from PIL import Image, ImageOps

image = ImageOps.fit(Image.open("example.png").convert("RGB"), ({size}, {size}), Image.BILINEAR)
session = onnxruntime.InferenceSession("model.onnx")
probabilities = session.run(None, {{"pixels": np.asarray(image)[None]}})[0][0]
labels = open("labels.txt", encoding="utf-8").read().splitlines()
print(labels[probabilities.argmax()], probabilities.max())''',
    "keras": '''import keras
import keras_layers  # the export's custom layers (normalisation, temperature, class names)
import numpy as np
from PIL import Image, ImageOps

model = keras.saving.load_model("model.keras")  # safe mode: a file with code is refused
image = ImageOps.fit(Image.open("example.png").convert("RGB"), ({size}, {size}), Image.BILINEAR)
probabilities = model(np.asarray(image, "float32")[None]).numpy()[0]
labels = model.get_layer("class_names").class_names
print(labels[probabilities.argmax()], probabilities.max())''',
}
LIMITS = """\
- Photos are decoded inside `saved_model/` by TensorFlow's decoders, where training used
  Pillow: JPEGs (CMYK ones too) with the same accurate integer DCT, PNGs with transparency
  composited on white and 16-bit PNGs reduced to their high byte, as in training; the resizes
  reproduce Pillow's and OpenCV's arithmetic bit for bit (but Pillow 13 resizes some portrait
  photos vertical pass first: within one grey level). What differs: EXIF orientation is *not*
  applied (send photos upright; training saw them upright); GIF transparency is not
  composited on white; BMPs other than uncompressed 24/32-bit are refused, and so are
  animated WebPs (training took their first frame; still WebPs decode as in training).
- `model*.tflite`, `model.onnx` and `model.keras` take pixels already resized to the input
  size; the snippets use Pillow's `ImageOps.fit` (one resize), close to but not exactly the
  two resizes of evaluation (`preprocessing.json`). For identical results send pixels or
  bytes to `saved_model/`.
- The model knows only the classes below; anything else is forced into one of them."""


def write_model_card(folder: Path, run_dir: Path, metrics: dict, *, stored_size: int,
                     image_size: int, test) -> None:
    """Writes `folder/model_card.md` from the run's data, config, metrics and export checks."""
    dataset = json.loads((run_dir / "data" / "dataset.json").read_text())
    sections = [f"# Model card: {run_dir.name}", _data_section(run_dir, dataset),
                _metrics_section(metrics), _input_section(stored_size, image_size),
                "## Known limits\n\n" + LIMITS, _files_section(folder, metrics, image_size)]
    config = run_dir / "config.yaml"
    if config.is_file():
        sections.insert(2, "## Config that ran\n\n```yaml\n" + config.read_text().strip()
                        + "\n```")
    (folder / "model_card.md").write_text("\n\n".join(sections) + "\n", encoding="utf-8")


def _data_section(run_dir: Path, dataset: dict) -> str:
    names = dataset["class_names"]
    rows = ["| class | " + " | ".join(dataset["counts"]) + " |",
            "|---|" + "---|" * len(dataset["counts"])]
    counts = {split: np.bincount(np.load(run_dir / "data" / f"{split}_labels.npy"),
                                 minlength=len(names)) for split in dataset["counts"]}
    for index, name in enumerate(names):
        rows.append(f"| {name} | " + " | ".join(str(int(counts[split][index]))
                                              for split in counts) + " |")
    return (f"## Data\n\nSource: {dataset['source']}, {len(names)} classes, images stored at "
            f"{dataset['image_size']} px square. Splits: the source's own where it gives them "
            f"(a missing dev or test split is carved from train), otherwise a stable hash of "
            f"each image's content, stratified by class, so adding images never moves an old "
            f"one between splits (`pipeline/data/splits.py`; the run's data report has the "
            f"details).\n\n" + "\n".join(rows))


def _metrics_section(metrics: dict) -> str:
    diagnosis = metrics.get("diagnosis", {})
    lines = ["## Test metrics", ""]
    for split in ("train", "dev", "test"):
        if split in metrics:
            lines.append(f"- {split} accuracy {metrics[split]['accuracy']:.4f}")
    if diagnosis:
        lines.append(f"- bias/variance: **{diagnosis['verdict']}** ({diagnosis['summary']})")
    temperature = metrics.get("export", {}).get("temperature", 1.0)
    if temperature != 1.0:
        test = metrics["calibration"]["test"]
        lines.append(f"- calibration: every file's probabilities are temperature-scaled "
                     f"(T = {temperature:.3f}, fitted on dev), which took the test expected "
                     f"calibration error from {test['ece']:.2%} to {test['ece_scaled']:.2%}; "
                     f"the predictions are those of the model as trained")
    else:
        lines.append("- calibration: probabilities as trained (temperature scaling fitted on "
                     "dev did not lower the test calibration error, or was not measured)")
    return "\n".join(lines)


def _input_section(stored_size: int, image_size: int) -> str:
    return (f"## Intended input\n\nRGB photos like the training data. `saved_model/` takes "
            f"the encoded files (JPEG, PNG, GIF, BMP, WebP) or uint8 pixels of any size and does "
            f"everything inside: shorter side to {stored_size} px and centre crop, then "
            f"{image_size} px. The other files take uint8 pixels (0-255) at {image_size}x"
            f"{image_size}; each normalises inside.")


def _files_section(folder: Path, metrics: dict, image_size: int) -> str:
    from pipeline.export import CHECKS, EXPORTED_FILES

    export = metrics["export"]
    lines = [f"## Files, checked on all {export['test_images']:,} test images",
             "", "Each row ran in a fresh Python process that did not import `pipeline`. "
             f"Trained model's test accuracy: {export['trained_test_accuracy']:.4f}.", "",
             "| check | file | size | same top-1 as trained | test accuracy | latency (1 image)"
             " | images/s |", "|---|---|---|---|---|---|---|"]
    for check, row in export["checks"].items():
        lines.append(f"| {check} | {row['file']} | {row['size_bytes'] / 1e6:.1f} MB | "
                     f"{row['top1_agreement']:.4%} | {row['test_accuracy']:.4f} | "
                     f"{row['latency_ms']:.2f} ms | {row['images_per_second']:.0f} |")
    for name, file_name in EXPORTED_FILES.items():
        if not (folder / file_name).exists() or not set(CHECKS[name]) & set(export["checks"]):
            continue
        snippet = SNIPPETS[name.split("_")[0] if name.startswith("litert") else name]
        lines += ["", f"### {file_name}", "", "```python",
                  snippet.format(file=file_name, size=image_size), "```"]
    return "\n".join(lines)
