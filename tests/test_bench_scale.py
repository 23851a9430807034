"""The `scale` benchmark's folder of camera-sized photos, and its goals' direction."""

import numpy as np
import pytest
from PIL import Image

from bench.bench_scale import CAMERA_SIZE, every_fourth, make_camera_folder
from bench.goals import check_goals


def make_source(folder):
    """6 photos, 2 in each of 3 class folders, none with a symmetry (flips and turns differ)."""
    for channel, name in enumerate(("a", "b", "c")):
        (folder / name).mkdir(parents=True)
        for index in range(2):
            pixels = np.zeros((24, 32, 3), np.uint8)
            pixels[..., channel] = np.add.outer(np.arange(24) * 3, np.arange(32) * 5) + index
            Image.fromarray(pixels).save(folder / name / f"{index}.jpg")
    return folder


def test_the_camera_folder_holds_distinct_photos_of_every_class_and_its_quarter_too(tmp_path):
    source = make_source(tmp_path / "source")
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


def test_past_the_flips_the_folder_turns_and_crops_so_no_photo_repeats(tmp_path):
    """`bench.bench_scale large` needs 100,000 distinct photos from 4,317: 8 symmetries, then
    crops; each made photo's pixels differ from every other's."""
    source = make_source(tmp_path / "source")
    folder = make_camera_folder(source, tmp_path / "large", 6 * 8 * 4, size=(64, 48))
    decoded = [np.asarray(Image.open(path)) for path in sorted(folder.rglob("*.jpg"))]
    assert len(decoded) == 192
    assert len({image.tobytes() for image in decoded}) == 192
    assert {image.shape for image in decoded} == {(48, 64, 3), (64, 48, 3)}  # turned too
    with pytest.raises(ValueError, match="At most 192 distinct photos"):
        make_camera_folder(source, tmp_path / "more", 193)
