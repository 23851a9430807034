"""Export: every written model stands alone and predicts like the trained model on the test
split."""

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import export
from pipeline.backbones import create_backbone, freeze_backbone, get_backbone_spec
from pipeline.calibration import apply_temperature
from pipeline.config import ConfigError, ModelConfig, load_config
from pipeline.data.images import decode_image_bytes, load_square, resize_square
from pipeline.export import ExportCheckError, TestSplit, export_model, judge
from pipeline.model import assemble_classifier, build_head
from pipeline.predict import eval_inputs

CLASS_NAMES = ["cat", "dog", "émeu"]
# The run's evaluation fitted this temperature on dev and kept it: the exports must apply it.
TEMPERATURE = 2.0
FLOAT_FORMATS = ("keras", "saved_model", "litert", "onnx")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding a small trained-looking classifier, its metrics and data info."""
    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    spec = get_backbone_spec("efficientnet_lite0")
    base = create_backbone(spec.name, weights="imagenet", image_size=32)
    freeze_backbone(base, spec, unfreeze_top=False)
    head = build_head(len(CLASS_NAMES), base.output_shape[-1], ModelConfig())
    assemble_classifier(base, head, CLASS_NAMES).save(folder / "model.keras")
    (folder / "metrics.json").write_text(json.dumps({
        "test": {"accuracy": 0.5},
        "calibration": {"temperature": TEMPERATURE, "applied": True,
                        "test": {"ece": 0.2, "ece_scaled": 0.1}}}))
    (folder / "data").mkdir()
    for split in ("train", "dev", "test"):
        np.save(folder / "data" / f"{split}_labels.npy", np.array([0, 1, 2, 0, 1, 2]))
    (folder / "data" / "dataset.json").write_text(json.dumps({
        "class_names": CLASS_NAMES, "source": "synthetic", "image_size": 40,
        "counts": {"train": 6, "dev": 6, "test": 6}}))
    return folder


@pytest.fixture(scope="module")
def test_split():
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    return TestSplit(images, np.array([0, 1, 2, 0, 1, 2]))


@pytest.fixture(scope="module")
def exported(run_dir, test_split, tmp_path_factory):
    target = tmp_path_factory.mktemp("models") / "run"
    return export_model(run_dir, target, test=test_split, stored_size=40, formats=FLOAT_FORMATS)


def test_every_format_is_checked_on_the_test_split_in_a_process_without_pipeline(exported):
    metrics = json.loads((exported / "metrics.json").read_text())
    checks = metrics["export"]["checks"]
    assert set(checks) == {"keras", "saved_model_bytes", "saved_model_pixels", "litert", "onnx"}
    for check, row in checks.items():
        assert row["top1_agreement"] == 1.0, check
        assert row["size_bytes"] > 10_000 and row["latency_ms"] > 0, check
        # the probabilities themselves, temperature included, not only the ranking
        assert row["max_probability_difference"] < 1e-4, (check, row)
    assert metrics["test"] == {"accuracy": 0.5}  # the run's metrics travel with the export
    assert metrics["export"]["temperature"] == TEMPERATURE
    assert (exported / "labels.txt").read_text(encoding="utf-8").splitlines() == CLASS_NAMES


def test_saved_model_takes_bytes_and_pixels_and_preprocesses_as_evaluation(exported, run_dir):
    """A photo-sized image through the SavedModel gives the trained model's probabilities on
    the product's own decode, square resize and eval resize."""
    rng = np.random.default_rng(3)
    photo = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 11, 3), dtype=np.uint8))
                       .resize((77, 53), Image.BICUBIC))
    trained = keras.models.load_model(run_dir / "model.keras")

    def calibrated(pixels):  # the trained model's probabilities, temperature-scaled
        return apply_temperature(trained(pixels.astype("float32")).numpy(), TEMPERATURE)

    square = resize_square(photo, 40)
    expected = calibrated(eval_inputs(square[None], 32))
    loaded = tf.saved_model.load(str(exported / "saved_model"))
    pixels = loaded.signatures["classify_pixels"](pixels=tf.constant(photo[None]))
    np.testing.assert_allclose(pixels["probabilities"].numpy(), expected, atol=1e-5)
    assert pixels["classes"].numpy()[0, 0].decode() == CLASS_NAMES[expected.argmax()]
    encoded = []
    for image_format in ("PNG", "JPEG", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, image_format)
        encoded.append(buffer.getvalue())
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    product = np.stack([resize_square(decode_image_bytes(data), 40) for data in encoded])
    expected = calibrated(eval_inputs(product, 32))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    assert served["scores"].shape == (4, 3)


def test_exported_keras_model_applies_the_dev_fitted_temperature_and_loads_safely(
        exported, run_dir, test_split):
    """The export's probabilities are the calibrated ones; its predictions are the trained
    model's, and the temperature layer carries no code (safe mode loads it)."""
    trained = keras.models.load_model(run_dir / "model.keras")
    calibrated = keras.models.load_model(exported / "model.keras", safe_mode=True)
    inputs = eval_inputs(test_split.images, 32).astype("float32")
    plain = trained(inputs).numpy()
    scaled = calibrated(inputs).numpy()
    np.testing.assert_allclose(scaled, apply_temperature(plain, TEMPERATURE), atol=1e-5)
    assert np.array_equal(scaled.argmax(-1), plain.argmax(-1))
    assert scaled.max() < plain.max()  # T = 2 softens
    assert "TemperatureScaling" in (exported / "keras_layers.py").read_text()


# Portrait images Pillow 13 sometimes resizes vertical pass first (e.g. 90x41: within one grey
# level of the graph); the model card lists it.
@pytest.mark.parametrize("shape", [(40, 40), (53, 77), (17, 23), (40, 41), (200, 150)])
def test_graph_square_resize_is_pillows_bit_for_bit(shape):
    from pipeline.serving import resize_square as graph_resize_square

    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    graph = graph_resize_square(tf.constant(image[None]), 40).numpy()[0]
    np.testing.assert_array_equal(graph, resize_square(image, 40))


@pytest.mark.parametrize("kind", ["cmyk_jpeg", "rgba_png", "gray16_png", "palette_png",
                                  "rgb_webp", "rgba_webp", "lossless_rgba_webp"])
def test_graph_decodes_the_awkward_files_as_training_does(kind):
    from pipeline.serving import decode_image

    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (16, 12, 4), dtype=np.uint8)
    image, image_format, options = {
        "cmyk_jpeg": (Image.fromarray(rgba[..., :3]).convert("CMYK"), "JPEG", {}),
        "rgba_png": (Image.fromarray(rgba, "RGBA"), "PNG", {}),
        "gray16_png": (Image.fromarray(rng.integers(0, 65536, (16, 12)).astype(np.uint16)),
                       "PNG", {}),
        "palette_png": (Image.fromarray(rgba[..., :3]).convert("P"), "PNG", {}),
        "rgb_webp": (Image.fromarray(rgba[..., :3]), "WEBP", {"quality": 80}),
        "rgba_webp": (Image.fromarray(rgba, "RGBA"), "WEBP", {"quality": 80}),
        "lossless_rgba_webp": (Image.fromarray(rgba, "RGBA"), "WEBP", {"lossless": True}),
    }[kind]
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    graph = decode_image(tf.constant(buffer.getvalue())).numpy()
    np.testing.assert_array_equal(graph, decode_image_bytes(buffer.getvalue()))


def test_graph_refuses_an_animated_webp_with_a_message_where_training_takes_its_first_frame():
    from pipeline.serving import decode_image

    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert decode_image_bytes(buffer.getvalue())[0, 0].tolist() == [255, 0, 0]
    graph = tf.function(decode_image, input_signature=[tf.TensorSpec((), tf.string)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="An animated WebP cannot be"):
        graph(tf.constant(buffer.getvalue()))


def test_the_export_checks_webp_test_files_from_their_bytes_and_an_animated_one_from_pixels(
        run_dir, tmp_path):
    rng = np.random.default_rng(7)
    files = []
    for index, (image_format, options) in enumerate(
            [("WEBP", {"quality": 80}), ("WEBP", {"lossless": True}), ("JPEG", {}),
             ("WEBP", {"save_all": True, "lossless": True}), ("PNG", {}), ("WEBP", {})]):
        frames = [Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
                  for _ in range(2)]
        path = tmp_path / f"photo{index}.{image_format.lower()}"
        extra = {"append_images": frames[1:]} if options.get("save_all") else {}
        frames[0].save(path, image_format, **options, **extra)
        files.append(str(path))
    stored = np.stack([load_square(Path(file), 40)[0] for file in files])
    test = TestSplit(stored, np.array([0, 1, 2, 0, 1, 2]), files)
    exported = export_model(run_dir, tmp_path / "models" / "run", test=test, stored_size=40,
                            formats=("saved_model",))
    checks = json.loads((exported / "metrics.json").read_text())["export"]["checks"]
    assert checks["saved_model_bytes"]["top1_agreement"] == 1.0
    assert checks["saved_model_bytes"]["max_probability_difference"] < 1e-4


@pytest.mark.parametrize(("stored", "size"), [(28, 96), (40, 32), (33, 97), (50, 50)])
def test_graph_eval_resize_is_the_eval_transforms_bit_for_bit(stored, size):
    from pipeline.serving import eval_resize, eval_resize_weights

    images = np.random.default_rng(stored).integers(0, 256, (4, stored, stored, 3), np.uint8)
    graph = eval_resize(tf.constant(images), eval_resize_weights(stored, size)).numpy()
    np.testing.assert_array_equal(graph, eval_inputs(images, size))


def test_litert_file_carries_its_labels_in_tflite_metadata(exported):
    data = (exported / "model.tflite").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:  # associated files are a zip appended
        assert bundle.read("labels.txt").decode().splitlines() == CLASS_NAMES
    metadata = pytest.importorskip("mediapipe.tasks.python.metadata.metadata")
    displayer = metadata.MetadataDisplayer.with_model_buffer(data)
    described = json.loads(displayer.get_metadata_json())
    subgraph = described["subgraph_metadata"][0]
    assert subgraph["output_tensor_metadata"][0]["associated_files"][0]["name"] == "labels.txt"
    assert subgraph["input_tensor_metadata"][0]["content"]["content_properties"][
        "color_space"] == "RGB"


@pytest.mark.slow  # four fresh Python processes importing TensorFlow
def test_every_model_card_snippet_classifies_the_example_without_pipeline(exported):
    card = (exported / "model_card.md").read_text(encoding="utf-8")
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 4
    for snippet in snippets:
        guarded = "import sys\nsys.modules['pipeline'] = None\n" + snippet
        done = subprocess.run([sys.executable, "-c", guarded], cwd=exported,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split()[0] in CLASS_NAMES, snippet


def test_a_model_that_predicts_differently_aborts_the_export_and_keeps_the_old_one(
        run_dir, test_split, tmp_path, monkeypatch):
    target = tmp_path / "models" / "run"
    target.mkdir(parents=True)
    (target / "model.keras").write_text("the previous export")
    trained = keras.models.load_model(run_dir / "model.keras")

    def drifted(folder, formats, test, inputs):  # a conversion that changed the network
        right = trained(inputs.astype("float32")).numpy()
        timing = {"latency_ms": 1.0, "images_per_second": 1.0}
        return {"probabilities": {"keras": right, "litert": right[:, ::-1]},
                "checks": {"keras": timing, "litert": timing}, "imported_pipeline": False}
    monkeypatch.setattr(export, "run_checks", drifted)

    with pytest.raises(ExportCheckError, match=r"exported model.tflite \(litert\) predicts "
                                               r"differently"):
        export_model(run_dir, target, test=test_split, stored_size=40,
                     formats=("keras", "litert"))
    assert sorted(path.name for path in target.parent.iterdir()) == ["run"]
    assert (target / "model.keras").read_text() == "the previous export"


@pytest.fixture
def written(tmp_path):
    """An export folder whose model files are placeholders (only their sizes are read)."""
    for name in ("model_int8.tflite", "model.onnx", "saved_model/saved_model.pb"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"model")
    return tmp_path


def _checks(**probabilities):
    timing = {"latency_ms": 1.0, "images_per_second": 1.0}
    return {"probabilities": probabilities, "checks": {name: timing for name in probabilities},
            "imported_pipeline": False}


def test_int8_more_than_a_point_below_float32_fails_naming_the_file(written):
    labels = np.arange(200) % 2
    expected = np.eye(2)[labels]  # the trained model is always right
    worse = expected.copy()
    worse[:3] = worse[:3, ::-1]  # 1.5 points worse
    with pytest.raises(ExportCheckError, match="model_int8.tflite reaches test accuracy 0.9850"):
        judge(_checks(litert_int8=worse), expected, labels, written)
    one_point = expected.copy()
    one_point[:2] = one_point[:2, ::-1]
    assert judge(_checks(litert_int8=one_point), expected, labels, written)["checks"][
        "litert_int8"]["test_accuracy"] == 0.99


def test_a_float_model_must_agree_on_999_in_1000(written):
    labels = np.arange(2000) % 2
    expected = np.eye(2)[labels]
    two_wrong = expected.copy()
    two_wrong[:2] = two_wrong[:2, ::-1]
    three_wrong = expected.copy()
    three_wrong[:3] = three_wrong[:3, ::-1]
    assert judge(_checks(onnx=two_wrong), expected, labels, written)["checks"]["onnx"][
        "top1_agreement"] == 0.999
    with pytest.raises(ExportCheckError, match="model.onnx"):
        judge(_checks(onnx=three_wrong), expected, labels, written)
    with pytest.raises(ExportCheckError, match="saved_model_pixels"):  # exact for pixels
        judge(_checks(saved_model_pixels=two_wrong), expected, labels, written)
    with pytest.raises(ExportCheckError, match="imported `pipeline`"):
        judge({**_checks(onnx=expected), "imported_pipeline": True}, expected, labels,
              written)


def test_litert_export_without_the_runtime_is_a_clear_error_before_writing(run_dir, test_split,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr(export, "litert_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"ai-edge-litert.*export.formats=\[keras, "):
        export_model(run_dir, tmp_path / "run", test=test_split, stored_size=40,
                     formats=("keras", "litert"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("formats", "message"), [
    ("[litert]", "'export.formats' must list distinct formats from keras, saved_model, litert, "
                 "litert_dynamic, litert_int8, onnx, 'keras' included"),
    ("[keras, keras]", "'export.formats' must list distinct formats"),
    ("[keras, tensorrt]", "'export.formats' must be one of: keras, saved_model, litert, "
                          "litert_dynamic, litert_int8, onnx. Received: 'tensorrt'"),
])
def test_export_formats_are_checked_when_the_config_loads(formats, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"export.formats={formats}"])
