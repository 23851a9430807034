"""The data stage: every source becomes the same split arrays, or a clear error."""

import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data.prepare import load_prepared, prepare_data
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
