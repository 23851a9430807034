"""tensorflow-datasets as a source: every split as square uint8 RGB arrays, under mocked tfds."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.tfds_source import TFDS_SPLITS, DatasetUnavailableError, load_tfds

tfds = pytest.importorskip("tensorflow_datasets")

BEANS_CLASSES = ("angular_leaf_spot", "bean_rust", "healthy")


def _metadata_with_splits(root: Path, name: str, split_names: tuple[str, ...]) -> Path:
    """Writes the dataset_info.json that tells mocked tfds which splits `name` has."""
    builder = tfds.builder(name, data_dir=str(root))
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=split, shard_lengths=[4], num_bytes=0)
         for split in split_names]))
    Path(builder.data_dir).mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)
    return root


def test_every_split_comes_back_square_rgb_with_the_dataset_class_names(tmp_path):
    metadata = _metadata_with_splits(tmp_path / "metadata", "beans",
                                     ("train", "validation", "test"))
    with tfds.testing.mock_data(num_examples=4, data_dir=str(metadata),
                                policy=tfds.testing.MockPolicy.USE_FILES):
        loaded = load_tfds("beans", tmp_path / "tfds", image_size=24)
    assert loaded["class_names"] == BEANS_CLASSES
    assert list(loaded["splits"]) == ["train", "validation", "test"]
    for images, labels in loaded["splits"].values():
        assert images.shape == (4, 24, 24, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and labels.shape == (4,)
        assert set(labels.tolist()) <= {0, 1, 2}
    # the data stage files tfds's "validation" as dev
    assert [TFDS_SPLITS[split] for split in loaded["splits"]] == ["train", "dev", "test"]


def _gray_digits(self, split, decoders=None, read_config=None, **kwargs):
    """Six 28x28x1 MNIST-like images; image i is flat grey 40 * i and has label i."""
    import tensorflow as tf

    shades = 40 * np.arange(6, dtype=np.uint8)
    images = np.broadcast_to(shades[:, None, None, None], (6, 28, 28, 1))
    return tf.data.Dataset.from_tensor_slices({"image": images,
                                               "label": np.arange(6, dtype=np.int64)})


def test_grayscale_images_become_rgb_and_stay_with_their_labels(tmp_path):
    # no metadata: tfds does not know the split names, so everything loads as train
    with tfds.testing.mock_data(as_dataset_fn=_gray_digits):
        loaded = load_tfds("mnist", tmp_path / "tfds", image_size=32)
    assert loaded["class_names"] == tuple(str(digit) for digit in range(10))
    assert list(loaded["splits"]) == ["train"]
    images, labels = loaded["splits"]["train"]
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.arange(6))
    expected = np.broadcast_to((40 * np.arange(6))[:, None, None, None], (6, 32, 32, 3))
    np.testing.assert_array_equal(images, expected)


def test_a_dataset_without_class_labels_is_refused(tmp_path):
    with tfds.testing.mock_data(num_examples=2), \
            pytest.raises(DatasetUnavailableError, match="'lsun' has no class labels"):
        load_tfds("lsun", tmp_path / "tfds", image_size=16)
