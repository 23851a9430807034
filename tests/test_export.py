"""Export: every written model must load as a user loads it and predict like the trained one."""

import json

import keras
import numpy as np
import pytest

from pipeline import export
from pipeline.backbones import create_backbone, freeze_backbone, get_backbone_spec
from pipeline.config import ConfigError, ModelConfig, load_config
from pipeline.export import EXPORTED_FILES, export_model
from pipeline.model import assemble_classifier, build_head

CLASS_NAMES = ["cat", "dog", "émeu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a small trained-looking classifier and its metrics."""
    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    spec = get_backbone_spec("efficientnet_lite0")
    base = create_backbone(spec.name, weights="imagenet", image_size=32)
    freeze_backbone(base, spec, unfreeze_top=False)
    head = build_head(len(CLASS_NAMES), base.output_shape[-1], ModelConfig())
    assemble_classifier(base, head, CLASS_NAMES).save(folder / "model.keras")
    (folder / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    return folder


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)


def test_every_format_is_written_and_predicts_like_the_trained_model(run_dir, images,
                                                                      tmp_path):
    target = tmp_path / "models" / "run"
    export_model(run_dir, target, check_images=images, stored_size=40,
                 formats=("keras", "litert", "saved_model"))

    assert (target / "labels.txt").read_text(encoding="utf-8").splitlines() == CLASS_NAMES
    described = json.loads((target / "preprocessing.json").read_text(encoding="utf-8"))
    assert set(described["files"]) == {"model.keras", "model.tflite", "saved_model"}
    # load each the way preprocessing.json tells users to, on inputs the check did not use
    inputs = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype("float32")
    expected = keras.models.load_model(run_dir / "model.keras")(inputs, training=False).numpy()
    assert expected.std(axis=0).max() > 1e-3  # the images get different predictions
    for name in ("keras", "litert", "saved_model"):
        actual = export._run_exported(name, target / EXPORTED_FILES[name], inputs)
        np.testing.assert_allclose(actual, expected, atol=1e-5, err_msg=name)


def test_a_model_that_predicts_differently_aborts_the_export_and_keeps_the_old_one(
        run_dir, images, tmp_path, monkeypatch):
    target = tmp_path / "models" / "run"
    target.mkdir(parents=True)
    (target / "model.keras").write_text("the previous export")
    run_exported = export._run_exported

    def drifted(name, path, inputs):  # a conversion that changed the network's outputs
        probabilities = run_exported(name, path, inputs)
        return probabilities[:, ::-1] if name == "litert" else probabilities
    monkeypatch.setattr(export, "_run_exported", drifted)

    with pytest.raises(RuntimeError, match="exported model.tflite predicts differently"):
        export_model(run_dir, target, check_images=images, stored_size=40,
                     formats=("keras", "litert"))
    assert sorted(path.name for path in target.parent.iterdir()) == ["run"]
    assert (target / "model.keras").read_text() == "the previous export"


def test_keras_alone_writes_no_other_model(run_dir, images, tmp_path):
    target = export_model(run_dir, tmp_path / "run", check_images=images, stored_size=40)
    assert not (target / "model.tflite").exists() and not (target / "saved_model").exists()
    assert keras.models.load_model(target / "model.keras").output_shape == (None, 3)


def test_litert_export_without_the_runtime_is_a_clear_error_before_writing(run_dir, images,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(export, "litert_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"ai-edge-litert.*export.formats=\[keras\]"):
        export_model(run_dir, tmp_path / "run", check_images=images, stored_size=40,
                     formats=("keras", "litert"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("formats", "message"), [
    ("[litert]", "'export.formats' must list distinct formats from keras, litert, saved_model, "
                 "'keras' included"),
    ("[keras, keras]", "'export.formats' must list distinct formats"),
    ("[keras, onnx]", "'export.formats' must be one of: keras, litert, saved_model. "
                      "Received: 'onnx'"),
])
def test_export_formats_are_checked_when_the_config_loads(formats, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"export.formats={formats}"])
