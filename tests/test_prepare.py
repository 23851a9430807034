"""The data stage: every source becomes the same split arrays, or a clear error."""

import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data.prepare import auto_image_size, load_prepared, prepare_data
from pipeline.data.tfds_source import DatasetUnavailableError


def folder_config(path, *overrides):
    return load_config(None, ["data.source=folder", f"data.path={path}", "data.image_size=16",
                              *overrides]).data


def make_class_folders(image_file_factory, classes, per_class=10):
    for label, name in enumerate(classes):
        for index in range(per_class):
            image_file_factory.jpeg(f"{name}/{index}.jpg", seed=label * 100 + index)
    return image_file_factory.root


def test_folder_source_splits_and_writes_arrays(image_file_factory, tmp_path):
    root = make_class_folders(image_file_factory, ["cat", "dog"], per_class=20)
    image_file_factory.write_bytes("cat/broken.jpg", b"not an image at all")
    report = prepare_data(folder_config(root), tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.class_names == ("cat", "dog")
    total = sum(len(data.labels(split)) for split in ("train", "dev", "test"))
    assert total == 40
    assert data.images("train").shape[1:] == (16, 16, 3)
    assert data.images("train").dtype == np.uint8
    assert any("broken.jpg" in str(entry) for entry in report["skipped"])
    saved = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert saved["class_names"] == ["cat", "dog"] and saved["image_size"] == 16


def test_rerun_gives_the_same_split(image_file_factory, tmp_path):
    root = make_class_folders(image_file_factory, ["a", "b"], per_class=15)
    prepare_data(folder_config(root), tmp_path / "one")
    prepare_data(folder_config(root), tmp_path / "two")
    for split in ("train", "dev", "test"):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / f"{split}_images.npy"),
                                      np.load(tmp_path / "two" / f"{split}_images.npy"))


def test_single_class_is_refused(image_file_factory, tmp_path):
    root = make_class_folders(image_file_factory, ["only"], per_class=5)
    with pytest.raises(ValueError, match="needs at least 2"):
        prepare_data(folder_config(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="does-not-exist"):
        prepare_data(folder_config(tmp_path / "does-not-exist"), tmp_path / "out")


def test_max_examples_caps_the_dataset(image_file_factory, tmp_path):
    root = make_class_folders(image_file_factory, ["a", "b"], per_class=20)
    prepare_data(folder_config(root, "data.max_examples=10"), tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert sum(len(data.labels(split)) for split in ("train", "dev", "test")) == 10


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = load_config(None, ["data.source=tfds", "data.tfds_name=tf_flowers",
                                "data.image_size=24", f"data.cache_dir={tmp_path}"]).data
    with tfds.testing.mock_data(num_examples=30):
        prepare_data(config, tmp_path / "out")
    data = load_prepared(tmp_path / "out")
    assert data.class_names == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    assert sum(len(data.labels(split)) for split in ("train", "dev", "test")) == 30
    assert data.images("dev").shape[1:] == (24, 24, 3)


def test_tfds_without_network_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    builder_class = type(tfds.builder("tf_flowers", data_dir=str(tmp_path)))
    monkeypatch.setattr(builder_class, "download_and_prepare", no_network)
    config = load_config("configs/flowers.yaml", [f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(DatasetUnavailableError, match="needs a network connection"):
        prepare_data(config, tmp_path / "out")
    # said before the download starts, which offline takes minutes to fail
    assert "Downloading tfds dataset 'tf_flowers'" in capsys.readouterr().out


def test_unknown_tfds_name(tmp_path):
    config = load_config(None, ["data.source=tfds", "data.tfds_name=no_such_dataset_xyz",
                                f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(DatasetUnavailableError, match="no_such_dataset_xyz"):
        prepare_data(config, tmp_path / "out")


def make_split_folders(image_file_factory, splits: dict[str, int], classes=("cat", "dog")):
    """`<split>/<class>/<i>.jpg` with the given number of images per class in each split."""
    seed = 0
    for split, per_class in splits.items():
        for name in classes:
            for index in range(per_class):
                seed += 1
                image_file_factory.jpeg(f"{split}/{name}/{index}.jpg", seed=seed)
    return image_file_factory.root


@pytest.mark.parametrize(("given", "carved"), [
    ({"train": 30, "val": 8}, "test"),
    ({"training_set": 30, "test_set": 8}, "dev"),
])
def test_a_missing_split_is_carved_from_train(image_file_factory, tmp_path, given, carved):
    root = make_split_folders(image_file_factory, given)
    report = prepare_data(folder_config(root), tmp_path / "out")
    counts = report["images_per_split"]
    # the given held-out split is kept whole; the missing one takes its share of train only
    held_out = "dev" if carved == "test" else "test"
    assert counts[held_out] == 16
    assert counts["train"] + counts[carved] == 60 and 0 < counts[carved] < 30
    assert any(f"No {carved} split was given" in note for note in report["notes"])
    assert report["class_names"] == ["cat", "dog"]


def test_carving_is_stable_when_images_are_added(image_file_factory, tmp_path):
    root = make_split_folders(image_file_factory, {"train": 30, "val": 5})
    prepare_data(folder_config(root, "data.split_by=path"), tmp_path / "one")
    before = np.load(tmp_path / "one" / "test_images.npy")
    for index in range(30, 40):
        image_file_factory.jpeg(f"train/cat/{index}.jpg", seed=1000 + index)
    prepare_data(folder_config(root, "data.split_by=path"), tmp_path / "two")
    after = np.load(tmp_path / "two" / "test_images.npy")
    kept = {image.tobytes() for image in after}
    assert all(image.tobytes() in kept for image in before)  # no old image left test


def test_an_empty_split_stops_the_data_stage(image_file_factory, tmp_path):
    root = make_split_folders(image_file_factory, {"train": 1, "val": 1})
    with pytest.raises(ValueError, match=r"The test split .* would be empty.*Add images"):
        prepare_data(folder_config(root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("short_sides", "expected"), [
    ([128] * 5, 160),           # flowers128: 1.25x, a multiple of 32
    ([300, 375, 480], 224),     # ordinary photos: the backbone's native size
    ([28], 32),                 # tiny images: the backbone's smallest input
    ([], 224),                  # unknown: native
])
def test_auto_image_size_follows_the_photos(short_sides, expected):
    assert auto_image_size(short_sides, (32, 224)) == expected


def test_auto_image_size_is_stored_and_reported(image_file_factory, tmp_path):
    for label, name in enumerate(["a", "b"]):
        for index in range(10):
            image_file_factory.jpeg(f"{name}/{index}.jpg", size=(100, 75), seed=label * 50 + index)
    report = prepare_data(folder_config(image_file_factory.root, "data.image_size=auto"),
                          tmp_path / "out", auto_size_range=(32, 224))
    data = load_prepared(tmp_path / "out")
    assert data.image_size == 96 and data.images("train").shape[1:] == (96, 96, 3)
    assert any("Image size 96 px (data.image_size: auto)" in note for note in report["notes"])
