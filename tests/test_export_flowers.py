"""Real photos: the SavedModel's in-graph decode and resize give, from each flowers128 test
file's bytes, exactly the pixels the data stage stored (and `predict` computes) for it."""

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
