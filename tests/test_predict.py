"""Inference on files and folders: what predict finds, reads, skips and prints."""

import json

import keras
import numpy as np
import pytest

from pipeline.backbones import create_backbone, freeze_backbone, get_backbone_spec
from pipeline.config import ModelConfig
from pipeline.data.images import IMAGE_EXTENSIONS
from pipeline.errors import MissingInputError, UserError
from pipeline.model import assemble_classifier, build_head
from pipeline.predict import find_images, predict_array, predict_command, predict_files

CLASS_NAMES = ["cat", "dog"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported-looking model folder: model.keras and preprocessing.json."""
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    spec = get_backbone_spec("efficientnet_lite0")
    base = create_backbone(spec.name, weights=None, image_size=32)
    freeze_backbone(base, spec, unfreeze_top=False)
    head = build_head(len(CLASS_NAMES), base.output_shape[-1], ModelConfig())
    assemble_classifier(base, head, CLASS_NAMES).save(folder / "model.keras")
    (folder / "preprocessing.json").write_text(json.dumps({"stored_size": 40}))
    return folder


def test_find_images_takes_every_image_extension_the_data_stage_reads(image_file_factory):
    for index, extension in enumerate(sorted(IMAGE_EXTENSIONS)):
        image_file_factory.jpeg(f"new/{index}{extension}", seed=index)
    image_file_factory.text("new/notes.txt")
    image_file_factory.apple_double("new/._0.jpg")
    found = find_images(image_file_factory.root / "new")
    assert [path.suffix for path in found] == sorted(IMAGE_EXTENSIONS)  # .jfif, .jpe, .dib too


def test_find_images_of_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        find_images(tmp_path / "nothing")


def test_unreadable_files_are_reported_and_the_rest_predicted(model_dir, image_file_factory):
    good = image_file_factory.jpeg("new/a.jpg", size=(50, 40), seed=1)
    bad = image_file_factory.truncated_jpeg("new/b.jpg")
    model = keras.models.load_model(model_dir / "model.keras")
    results = predict_files(model, [good, bad], stored_size=40)
    assert results[1] == {"file": str(bad), "error": results[1]["error"]}
    ranked = results[0]["predictions"]
    assert [entry["class"] for entry in ranked] in (CLASS_NAMES, CLASS_NAMES[::-1])
    assert sum(entry["probability"] for entry in ranked) == pytest.approx(1.0, abs=1e-5)
    assert ranked[0]["probability"] >= ranked[1]["probability"]


def test_predict_array_matches_the_model_on_its_input_size(model_dir):
    model = keras.models.load_model(model_dir / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = model(images.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(predict_array(model, images, batch_size=2), expected, atol=1e-5)


def test_predict_command_prints_one_line_per_file(model_dir, image_file_factory, capsys):
    image_file_factory.jpeg("new/a.jpg", seed=1)
    image_file_factory.jpeg("new/sub/b.png", seed=2)
    predict_command(model_dir, image_file_factory.root / "new")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(image_file_factory.root / "new" / "a.jpg"),
        str(image_file_factory.root / "new" / "sub" / "b.png")]
    assert all("cat" in line and "dog" in line for line in lines)


def test_predict_command_without_an_export_names_the_fix(tmp_path, image_file_factory):
    image_file_factory.jpeg("new/a.jpg")
    with pytest.raises(UserError, match=r"No exported model .*\(make train\)"):
        predict_command(tmp_path, image_file_factory.root / "new")
