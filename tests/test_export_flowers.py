"""Real photos: the SavedModel's in-graph decode and resize give, from each flowers128 test
file's bytes, exactly the pixels the data stage stored (and `predict` computes) for it; and a
trained model served from those bytes predicts what `make predict` predicts, photo for photo."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bench.datasets import FLOWERS
from pipeline.config import load_config
from pipeline.data.images import load_image, resize_square
from pipeline.data.prepare import load_prepared, prepare_data
from pipeline.serving import decode_image
from pipeline.serving import resize_square as graph_resize_square

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FLOWERS.is_dir(), reason=f"{FLOWERS} is absent")]


def test_every_flowers128_test_photo_decodes_in_the_graph_as_in_training(tmp_path):
    config = load_config(Path("configs/folder.yaml"), [f"data.path={FLOWERS}"])
    prepare_data(config.data, tmp_path / "data")
    data = load_prepared(tmp_path / "data")
    files, stored = data.files("test"), np.asarray(data.images("test"))
    assert len(files) == len(stored) > 800
    square = tf.function(lambda encoded: graph_resize_square(
        decode_image(encoded)[None], data.image_size)[0])
    differing = [file for file, pixels in zip(files, stored, strict=True)
                 if not np.array_equal(square(tf.constant(Path(file).read_bytes())).numpy(),
                                       pixels)]
    assert differing == []
    # and the files are the ones the arrays came from
    assert np.array_equal(resize_square(load_image(Path(files[0])), data.image_size), stored[0])


# The fresh process of the done-when check: TensorFlow alone, `pipeline` (and Keras' own model
# loading) out of reach; each test photo's bytes through saved_model/'s serving signature.
STANDALONE = """
import json, sys
sys.modules["pipeline"] = None
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
top1 = {}
for path in json.load(open(sys.argv[2])):
    with open(path, "rb") as file:
        result = model.signatures["serving_default"](image_bytes=tf.constant([file.read()]))
    top1[path] = result["classes"][0, 0].numpy().decode("utf-8")
print(json.dumps(top1))
"""


def test_a_trained_flowers_model_served_from_bytes_agrees_with_make_predict(tmp_path):
    """Issue 14's done-when: a trained flowers128 model, exported; a process with only
    TensorFlow classifies every test photo from its bytes through saved_model/ with the same
    top-1 as `python -m pipeline predict` (what `make predict` runs)."""
    models = tmp_path / "models"
    # A short recipe: the check is the export's agreement, not the accuracy.
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "all", "--config", "configs/folder.yaml",
         f"data.path={FLOWERS}", "name=flowers", f"runs_dir={tmp_path / 'runs'}",
         f"export.models_dir={models}", "export.formats=[keras, saved_model]",
         "train.cached_views=1", "train.head_epochs=3", "train.fine_tune_epochs=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = load_prepared(tmp_path / "runs" / "flowers" / "data").files("test")
    assert len(files) > 800
    (tmp_path / "files.json").write_text(json.dumps(files))
    served = subprocess.run([sys.executable, "-c", STANDALONE, str(models / "flowers" /
                                                                   "saved_model"),
                             str(tmp_path / "files.json")],
                            capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert served.returncode == 0, served.stderr[-3000:]
    from_bytes = json.loads(served.stdout.splitlines()[-1])
    predicted = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", "--model", str(models / "flowers"),
         "--top-k", "1", "--format", "csv", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    by_predict = {row["file"]: row["class"] for row in rows if row["rank"] == "1"}
    assert len(by_predict) == len(from_bytes) == len(files)
    differing = [file for file in files if by_predict[file] != from_bytes[file]]
    print(f"{len(files)} test photos: saved_model from bytes and make predict differ on "
          f"{len(differing)}")
    assert differing == []
