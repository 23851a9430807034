"""Inference on files and folders: what predict finds, reads, skips and prints, in each format."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data.images import IMAGE_EXTENSIONS, ImageDecodeError
from pipeline.errors import DataError, MissingInputError, UserError
from pipeline.predict import (
    Predictor,
    classify_paths,
    find_images,
    predict_array,
    predict_command,
    predict_files,
)
from tests.exported import write_tiny_export

CLASS_NAMES = ["cat", "dog", "emu", "fox"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An exported-looking model folder: model.keras (4 classes, 32 px) and preprocessing.json."""
    return write_tiny_export(tmp_path_factory.mktemp("model"), CLASS_NAMES)


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.load(model_dir)


@pytest.fixture
def photos(image_file_factory):
    """new/ with two images at two depths, a truncated JPEG and a text file."""
    image_file_factory.jpeg("new/a.jpg", size=(50, 40), seed=1)
    image_file_factory.png("new/sub/b.png", np.full((30, 45, 3), 200, np.uint8))
    image_file_factory.truncated_jpeg("new/broken.jpg")
    image_file_factory.text("new/notes.txt")
    return image_file_factory.root / "new"


def _run(predictor, targets, *, top_k=3, output_format="table") -> tuple[str, str]:
    """What `predict_command` writes (with its model already loaded: tracing it takes seconds)."""
    out, err = io.StringIO(), io.StringIO()
    classify_paths(predictor, targets, top_k=top_k, output_format=output_format, out=out,
                   err=err)
    return out.getvalue(), err.getvalue()


# finding files, as the data stage finds them


def test_find_images_takes_every_image_extension_the_data_stage_reads(image_file_factory):
    for index, extension in enumerate(sorted(IMAGE_EXTENSIONS)):
        image_file_factory.jpeg(f"new/{index}{extension}", seed=index)
    image_file_factory.text("new/notes.txt")
    image_file_factory.apple_double("new/._0.jpg")
    found, skipped = find_images([image_file_factory.root / "new"])
    assert [path.suffix for path in found] == sorted(IMAGE_EXTENSIONS)  # .jfif, .jpe, .dib too
    assert skipped == []


def test_find_images_decides_by_content_and_leaves_out_what_the_data_stage_does(
        image_file_factory):
    root = image_file_factory.root / "new"
    image_file_factory.save("new/scan", Image.new("RGB", (8, 8)), "PNG")  # no extension
    image_file_factory.tiff("new/photo.tif")  # unsupported: found, then reported
    image_file_factory.jpeg("new/.hidden/c.jpg")
    image_file_factory.jpeg("new/__MACOSX/d.jpg")
    image_file_factory.ds_store("new/.DS_Store")
    image_file_factory.text("new/readme")
    (root / "gone.jpg").symlink_to(root / "nowhere.jpg")
    found, skipped = find_images([root])
    assert found == [root / "photo.tif", root / "scan"]
    assert [(entry.path, entry.kind) for entry in skipped] == [(root / "gone.jpg", "link")]
    assert "dangling symlink" in skipped[0].reason


def test_find_images_of_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        find_images([tmp_path / "nothing"])


# classifying


def test_unreadable_files_are_reported_and_the_rest_predicted(predictor, image_file_factory):
    good = image_file_factory.jpeg("new/a.jpg", size=(50, 40), seed=1)
    bad = image_file_factory.truncated_jpeg("new/b.jpg")
    results = predict_files(predictor.model, [good, bad], stored_size=40, top_k=4)
    assert results[1] == {"file": str(bad), "error": results[1]["error"]}
    ranked = results[0]["predictions"]
    assert sorted(entry["class"] for entry in ranked) == CLASS_NAMES
    assert sum(entry["probability"] for entry in ranked) == pytest.approx(1.0, abs=1e-5)
    probabilities = [entry["probability"] for entry in ranked]
    assert probabilities == sorted(probabilities, reverse=True)


def test_bytes_and_files_and_arrays_give_the_same_probabilities(predictor, image_file_factory):
    path = image_file_factory.jpeg("new/a.jpg", size=(50, 40), seed=3)
    from_file = predictor.classify_files([path], top_k=4)[0]["predictions"]
    assert predictor.classify_bytes(path.read_bytes(), top_k=4) == from_file
    with pytest.raises(ImageDecodeError, match="not an image"):
        predictor.classify_bytes(b"hello, world")


def test_predict_array_matches_the_model_on_its_input_size(predictor):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    expected = predictor.model(images.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(predict_array(predictor.model, images, batch_size=2), expected,
                               atol=1e-5)


# the command and its formats


def test_the_table_has_one_row_per_classified_file_and_top_k_columns(predictor, photos):
    out, err = _run(predictor, [photos], top_k=2)
    header, *rows = out.splitlines()
    assert header.split() == ["file", "top", "1", "top", "2"]
    assert [row.split()[0] for row in rows] == [str(photos / "a.jpg"),
                                                str(photos / "sub" / "b.png")]
    for row in rows:
        cells = row.split()[1:]
        assert len(cells) == 4 and {cells[0], cells[2]} <= set(CLASS_NAMES)
        assert float(cells[1]) >= float(cells[3])
    assert err.splitlines() == [f"{photos / 'broken.jpg'}: skipped (truncated or corrupt "
                                f"JPEG data: {err.split('JPEG data: ')[1].splitlines()[0]}"]


def test_json_lists_every_file_with_its_predictions_or_error(predictor, photos):
    out, err = _run(predictor, [photos / "a.jpg", photos / "broken.jpg"], top_k=9,
                    output_format="json")
    results = json.loads(out)
    assert [result["file"] for result in results] == [str(photos / "a.jpg"),
                                                      str(photos / "broken.jpg")]
    assert len(results[0]["predictions"]) == len(CLASS_NAMES)  # top-k caps at the classes
    assert "truncated" in results[1]["error"] and "predictions" not in results[1]
    assert "broken.jpg: skipped" in err


def test_csv_has_a_row_per_file_and_rank_and_one_per_error(predictor, photos):
    out, _ = _run(predictor, [photos], top_k=3, output_format="csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(row["file"].rsplit("/", 1)[1], row["rank"]) for row in rows] == [
        ("a.jpg", "1"), ("a.jpg", "2"), ("a.jpg", "3"), ("broken.jpg", ""),
        ("b.png", "1"), ("b.png", "2"), ("b.png", "3")]
    assert rows[3]["error"].startswith("truncated") and rows[3]["class"] == ""
    assert all(row["class"] in CLASS_NAMES for row in rows if row["rank"])
    assert float(rows[0]["probability"]) >= float(rows[1]["probability"])


def test_nothing_classified_is_the_only_failure(predictor, photos):
    with pytest.raises(DataError, match="None of the 1 image files could be classified"):
        _run(predictor, [photos / "broken.jpg"])
    (photos.parent / "empty").mkdir()
    with pytest.raises(DataError, match="No image files in"):
        _run(predictor, [photos.parent / "empty"])
    out, err = _run(predictor, [photos / "broken.jpg", photos / "a.jpg"], top_k=1)
    assert len(out.splitlines()) == 2 and "broken.jpg: skipped" in err


def test_the_command_line_takes_paths_options_and_images_in_any_order(model_dir, photos,
                                                                      capsys):
    assert main(["predict", str(photos / "a.jpg"), "--format", "json", "--model",
                 str(model_dir), "--top-k", "2", "--images", str(photos / "sub")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["file"] for result in results] == [str(photos / "a.jpg"),
                                                      str(photos / "sub" / "b.png")]
    assert [len(result["predictions"]) for result in results] == [2, 2]
    assert main(["predict", "--model", str(model_dir), str(photos / "broken.jpg")]) == 2
    assert "None of the 1 image files could be classified" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_dir), str(photos), "--format", "xml"]) == 2
    assert "--format must be one of: table, json, csv. Received: 'xml'" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_dir), str(photos), "--top-k", "0"]) == 2
    assert "--top-k must be at least 1" in capsys.readouterr().err
    assert main(["predict", "--model", str(model_dir)]) == 2
    assert "predict needs image files or folders" in capsys.readouterr().err


def test_predict_command_without_an_export_names_the_fix(tmp_path, image_file_factory):
    image_file_factory.jpeg("new/a.jpg")
    with pytest.raises(UserError, match=r"No exported model .*\(make train\)"):
        predict_command(tmp_path, [image_file_factory.root / "new"])
