"""The `scale` benchmark's folder of camera-sized photos, and its goals' direction."""

import numpy as np
from PIL import Image

from bench.bench_scale import CAMERA_SIZE, every_fourth, make_camera_folder
from bench.goals import check_goals


def test_the_camera_folder_holds_distinct_photos_of_every_class_and_its_quarter_too(tmp_path):
    source = tmp_path / "source"
    for channel, name in enumerate(("a", "b", "c")):
        (source / name).mkdir(parents=True)
        for index in range(2):
            pixels = np.zeros((24, 32, 3), np.uint8)  # no symmetry: flips differ
            pixels[..., channel] = np.add.outer(np.arange(24) * 3, np.arange(32) * 5) + index
            Image.fromarray(pixels).save(source / name / f"{index}.jpg")
    folder = make_camera_folder(source, tmp_path / "large", 12)  # 6 photos, 2 flips each
    photos = sorted(folder.rglob("*.jpg"))
    assert len(photos) == 12 and len({path.read_bytes() for path in photos}) == 12
    with Image.open(photos[0]) as image:
        assert image.size == CAMERA_SIZE
    quarter = every_fourth(folder, tmp_path / "small")
    assert len(list(quarter.rglob("*.jpg"))) == 3
    # the source's photos are taken one class at a time: the first 3 made cover every class
    assert {path.parent.name for path in folder.rglob("00000[0-2]_*.jpg")} == {"a", "b", "c"}


def test_memory_goals_hold_at_up_to_1_25x_the_memory_for_4x_the_photos():
    checked = check_goals({"scale_data_stream_rss_n_over_4n": 1 / 1.25,
                           "scale_train_rss_n_over_4n": 1 / 1.3})
    assert checked["scale_data_stream_rss_n_over_4n"]["met"] is True
    assert checked["scale_train_rss_n_over_4n"]["met"] is False
