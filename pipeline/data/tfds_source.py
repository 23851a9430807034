"""Image classification datasets from tensorflow-datasets, downloaded once into data/tfds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.data.images import resize_square
from pipeline.errors import UnavailableError

TFDS_SPLITS = {"train": "train", "validation": "dev", "dev": "dev", "test": "test"}


class DatasetUnavailableError(UnavailableError):
    """A tfds dataset could not be downloaded or prepared; the message says what to do."""


def load_tfds(name: str, data_dir: Path, image_size: int) -> dict:
    """Loads every split of a tfds image dataset as square uint8 RGB arrays.

    Args:
        name: the tfds name, e.g. "tf_flowers".
        data_dir: the tfds data folder (downloads and prepared records are kept there).
        image_size: images are resized (shorter side) and centre-cropped to this size.

    Returns:
        {"class_names": tuple, "splits": {tfds split name: (images, labels)}}

    Raises:
        DatasetUnavailableError: unknown name, no network, or a dataset without labels.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except Exception as error:  # tfds raises many types for unknown names; re-raised clearly
        raise DatasetUnavailableError(f"Unknown tensorflow-datasets name '{name}': {error}. "
                                      f"Check data.tfds_name.") from None
    if not builder.is_prepared():
        # tfds retries a failed connection with growing pauses, so offline its error comes only
        # after about 3.4 minutes (measured): say up front what the wait is
        print(f"Downloading tfds dataset '{name}' into {data_dir} (first time only; it needs a "
              f"network, and offline tfds gives up after about 3 minutes of retries).")
    try:
        builder.download_and_prepare()
    except Exception as error:  # download failures surface as many error types
        raise DatasetUnavailableError(
            f"Could not download tfds dataset '{name}' into '{data_dir}' "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            f"It needs a network connection the first time; offline, use the default job "
            f"(configs/default.yaml) or your own folder: make train DATA=path/to/images."
        ) from None
    keys = builder.info.supervised_keys
    label_feature = builder.info.features[keys[1]] if keys else None
    if label_feature is None or not hasattr(label_feature, "names"):
        raise DatasetUnavailableError(f"tfds dataset '{name}' has no class labels "
                                      f"(supervised_keys); it cannot train a classifier.")
    splits = {}
    for split in list(builder.info.splits) or ["train"]:
        dataset = builder.as_dataset(split=split, as_supervised=True)
        splits[split] = _to_arrays(tfds.as_numpy(dataset), image_size, f"{name}[{split}]")
    return {"class_names": tuple(label_feature.names), "splits": splits}


def _to_arrays(examples, image_size: int, description: str):
    images, labels = [], []
    for image, label in tqdm(examples, desc=f"Decoding {description}", unit="img"):
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
        images.append(resize_square(image[..., :3].astype(np.uint8), image_size))
        labels.append(label)
    shape = (0, image_size, image_size, 3)
    return (np.stack(images) if images else np.empty(shape, np.uint8),
            np.array(labels, dtype=np.int32))
