"""Continuing from your own model: `model.weights: models/<run>` (or a `.keras` file) makes the
fine-tuned base of an exported model the backbone of a new run, with its input size,
preprocessing and fine-tuning point, and a new head for the new classes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from bench.datasets import FLOWERS
from pipeline.backbones import create_backbone, get_backbone_spec, model_image_size
from pipeline.config import ModelConfig, load_config
from pipeline.demo import load_demo_model
from pipeline.errors import ConfigError, DataError, MissingInputError
from pipeline.model import load_classifier, read_class_names
from pipeline.run import run_stages, stage_fingerprints
from tests.exported import tiny_classifier, write_tiny_export

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200),
           "yellow": (200, 200, 30), "grey": (128, 128, 128)}
TINY_RUN = ["data.source=folder", "data.image_size=40", "train.head_epochs=2",
            "train.fine_tune_epochs=1", "train.cached_views=1", "train.batch_size=8",
            "train.extraction_engine=tensorflow", "evaluate.train_error_examples=0",
            "export.formats=[keras]", "augment.chain=light"]


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    """A tiny classifier: Lite0 with random weights at 48 px, classes a and b."""
    return tiny_classifier(["a", "b"], image_size=48)


@pytest.fixture(scope="module")
def exported(classifier, tmp_path_factory) -> Path:
    """`classifier`, exported."""
    return write_tiny_export(tmp_path_factory.mktemp("models") / "old", ["a", "b"],
                             model=classifier)


def _rewritten(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of a .keras file whose config.json has `old` replaced by `new`."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(old.encode(), new.encode())
            copy.writestr(item, data)
    return target


def _colour_photos(folder: Path, classes: list[str], per_class: int = 10) -> Path:
    """Noisy 48 px JPEGs whose colour is the class."""
    rng = np.random.default_rng(len(classes))
    for name in classes:
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.normal(COLOURS[name], 40, (48, 48, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.jpg", quality=90)
    return folder


def _bottom_weights(model_file: Path) -> list[np.ndarray]:
    """The weights of the base's layers below the fine-tuned top blocks."""
    spec = get_backbone_spec("efficientnet_lite0")
    base = load_classifier(model_file).get_layer(f"{spec.name}_base")
    names = [layer.name for layer in base.layers]
    below = base.layers[:names.index(spec.unfreeze_from)]
    return [weight for layer in below for weight in layer.get_weights()]


@pytest.mark.slow  # two whole runs: 2 minutes on a busy 2-core machine
def test_a_run_continues_from_an_exported_model_with_new_classes(tmp_path):
    places = [f"runs_dir={tmp_path / 'runs'}", f"export.models_dir={tmp_path / 'models'}"]
    first = load_config("configs/folder.yaml", [
        *TINY_RUN, *places, "name=first", "model.weights=none", "model.image_size=32",
        f"data.path={_colour_photos(tmp_path / 'two', ['red', 'green'])}"])
    run_stages(first)
    exported = tmp_path / "models" / "first"
    second = load_config("configs/folder.yaml", [
        *TINY_RUN, *places, "name=second", f"model.weights={exported}", "train.seed=1",
        f"data.path={_colour_photos(tmp_path / 'three', ['blue', 'yellow', 'grey'])}"])
    run_stages(second)

    continued = load_classifier(tmp_path / "models" / "second" / "model.keras")
    assert read_class_names(continued) == ["blue", "grey", "yellow"]
    assert continued.input_shape[1] == 32  # the exported model's size, not data.image_size 40
    base = continued.get_layer("efficientnet_lite0_base")
    assert base.get_layer("preprocessing").mode == "lite"
    carried = _bottom_weights(exported / "model.keras")
    for mine, theirs in zip(_bottom_weights(tmp_path / "runs" / "second" / "model.keras"),
                            carried, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # what a fresh start with the second run's seed would have had instead
    keras.utils.set_random_seed(1)
    fresh = create_backbone("efficientnet_lite0", weights=None, image_size=32)
    assert not np.array_equal(fresh.get_layer("stem_conv").get_weights()[0],
                              base.get_layer("stem_conv").get_weights()[0])
    history = json.loads((tmp_path / "runs" / "second" / "train_history.json").read_text())
    assert history["image_size"] == 32


def test_the_exported_models_content_is_in_the_train_fingerprint(exported, tmp_path):
    folder = tmp_path / "models" / "old"
    shutil.copytree(exported, folder)
    config = load_config(None, [f"model.weights={folder}", "model.image_size=auto"])
    before = stage_fingerprints(config)
    with open(folder / "model.keras", "ab") as file:  # same path, other content
        file.write(b"\0")
    after = stage_fingerprints(config)
    assert before["train"] != after["train"] and before["data"] == after["data"]


def test_the_input_size_comes_from_the_exported_model(exported, classifier):
    for image_size in ("auto", 0):
        model = ModelConfig(weights=str(exported), image_size=image_size)
        assert model_image_size(model, stored_size=160) == 48
    base = create_backbone("efficientnet_lite0", weights=str(exported / "model.keras"))
    assert base.input_shape == (None, 48, 48, 3)
    assert base.get_layer("preprocessing").mode == "lite"
    exported_base = classifier.get_layer("efficientnet_lite0_base")
    for name in ("stem_conv", "block6a_expand_conv", "top_conv"):
        np.testing.assert_array_equal(base.get_layer(name).get_weights()[0],
                                      exported_base.get_layer(name).get_weights()[0])


def test_a_keras_file_carrying_code_is_refused(tmp_path):
    inputs = keras.Input((32, 32, 3), name="image")
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)  # a pickled Python function
    keras.Model(inputs, outputs).save(tmp_path / "code.keras")
    message = r"holds a layer with code \(a Lambda layer\).*refused \(Keras safe mode\)"
    with pytest.raises(DataError, match="model.weights.*" + message):
        load_config(None, [f"model.weights={tmp_path / 'code.keras'}"])
    with pytest.raises(DataError, match=message):
        create_backbone("efficientnet_lite0", weights=tmp_path / "code.keras")


def test_a_class_named_lambda_is_not_code(exported, tmp_path):
    path = _rewritten(exported / "model.keras", tmp_path / "named.keras", '"b"', '"Lambda"')
    assert load_config(None, [f"model.weights={path}"]).model.weights == str(path)


def test_another_backbone_or_size_names_the_fix(exported, tmp_path):
    path = _rewritten(exported / "model.keras", tmp_path / "mobile.keras",
                      "efficientnet_lite0_base", "mobilenet_v2_base")
    with pytest.raises(ConfigError, match="base of .* is 'mobilenet_v2'.*"
                                          "Set model.backbone=mobilenet_v2"):
        load_config(None, [f"model.weights={path}"])
    with pytest.raises(ConfigError, match="takes 48 px images, not model.image_size 64"):
        load_config(None, [f"model.weights={exported}", "model.image_size=64"])


def test_a_run_cannot_continue_from_its_own_export(exported):
    with pytest.raises(ConfigError, match="this run's own export.*name=old_continued"):
        load_config(None, [f"model.weights={exported}", "name=old",
                           f"export.models_dir={exported.parent}"])


def test_a_missing_or_foreign_model_is_a_clear_error(tmp_path):
    with pytest.raises(MissingInputError, match="no exported model at"):
        create_backbone("efficientnet_lite0", weights=tmp_path / "gone.keras")
    with pytest.raises(MissingInputError, match=r"exported model to continue from \(models/<run>"):
        create_backbone("efficientnet_lite0", weights=tmp_path / "models" / "gone")
    (tmp_path / "fake.keras").write_text("not a zip")
    with pytest.raises(DataError, match="not a Keras model file"):
        create_backbone("efficientnet_lite0", weights=tmp_path / "fake.keras")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(tmp_path / "plain.keras")
    with pytest.raises(DataError, match="not a classifier exported by this pipeline"):
        create_backbone("efficientnet_lite0", weights=tmp_path / "plain.keras")


@pytest.mark.slow
@pytest.mark.skipif(not FLOWERS.is_dir(), reason=f"flowers128 is not at {FLOWERS}")
def test_flowers_two_classes_then_the_other_three_from_that_model(tmp_path):
    """Train on two flowers128 classes, export, then train the other three from that model."""
    classes = sorted(path.name for path in FLOWERS.iterdir() if path.is_dir())
    for folder, names in (("two", classes[:2]), ("three", classes[2:])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).symlink_to(FLOWERS / name)
    common = ["--config", "configs/folder.yaml", f"runs_dir={tmp_path / 'runs'}",
              f"export.models_dir={tmp_path / 'models'}", "train.head_epochs=8",
              "train.fine_tune_epochs=3"]
    for name, extra in (("two", []), ("three", [f"model.weights={tmp_path / 'models' / 'two'}"])):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "all", *common, f"name={name}",
             f"data.path={tmp_path / name}", *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
        print(f"{name}: test accuracy {metrics['test']['accuracy']:.4f}, "
              f"dev {metrics['dev']['accuracy']:.4f}")
    assert "Continuing from" in result.stdout
    continued = load_classifier(tmp_path / "models" / "three" / "model.keras")
    assert read_class_names(continued) == classes[2:]
    assert metrics["test"]["accuracy"] > 0.6  # three classes: chance is 0.33
    shutil.rmtree(tmp_path / "runs")
    if shutil.which("chromium"):  # the demo page on the continued model, with a real photo
        from tests.test_demo import check_page

        photo = sorted((FLOWERS / classes[-1]).glob("*.jpg"))[0]
        shown = check_page(load_demo_model(tmp_path / "models" / "three"), [photo],
                           tmp_path / "demo.png")
        print(f"demo page for {photo.name}: {shown[0]}; screenshot {tmp_path / 'demo.png'}")
        assert {name for name, _ in shown[0]} == set(classes[2:])
