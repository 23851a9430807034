"""The streaming data stage and the streamed feature cache (issue 17).

The streaming stage must write what the former in-memory stage wrote (kept in
`bench.reference_data`): the same splits, labels, files and report, the same pixels but for
JPEGs decoded in draft mode (within a few levels); its memory must not grow with the folder.
"""

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.reference_data import prepare_folder_in_memory
from pipeline.config import DataConfig
from pipeline.data import prepare, stream
from pipeline.data.images import ImageDecodeError
from pipeline.data.prepare import load_prepared, prepare_data
from pipeline.features import FeatureCache, Forward, extract_features

SPLITS = ("train", "dev", "test")


def smooth_photo(seed: int, size: tuple[int, int], channel: int) -> Image.Image:
    """A photo-like image (smooth, so JPEG keeps it) whose `channel` is brighter."""
    small = np.random.default_rng(seed).integers(0, 120, (6, 8, 3), dtype=np.uint8)
    small[..., channel] += 120
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def make_folder(root: Path, per_class: int, *, size=(320, 240), extras: bool = True) -> Path:
    """Three classes of big JPEGs (decoded in draft mode at 48 px) and small PNGs (never),
    with, when `extras`, a corrupt file and a duplicate under two classes (a label conflict)."""
    for channel, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            photo = smooth_photo(channel * 10_000 + index, size, channel)
            if index % 3 == 0:
                photo.resize((60, 45)).save(root / name / f"{index}.png")
            else:
                photo.save(root / name / f"{index}.jpg", quality=92)
    if extras:
        (root / "red" / "broken.jpg").write_bytes((root / "red" / "1.jpg").read_bytes()[:900])
        (root / "green" / "copy.jpg").write_bytes((root / "blue" / "1.jpg").read_bytes())
    return root


def test_the_streaming_stage_writes_what_the_in_memory_stage_wrote(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "photos", 14)
    config = DataConfig(source="folder", path=str(folder), image_size=48, decode_threads=3)
    monkeypatch.setattr(stream, "SHARD_BYTES", 5 * 48 * 48 * 3)  # 5 images a shard
    prepare_data(config, tmp_path / "streamed")
    prepare_folder_in_memory(config, tmp_path / "reference")
    ours, theirs = tmp_path / "streamed", tmp_path / "reference"
    assert sorted(path.name for path in ours.iterdir()) == sorted(
        path.name for path in theirs.iterdir())  # no staging shards left behind
    for name in ("files.json", "dataset.json", "data_report.json", "data_report.md"):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    report = json.loads((ours / "data_report.json").read_text())
    assert "broken.jpg" in json.dumps(report) and "copy.jpg" in json.dumps(report)
    files = json.loads((ours / "files.json").read_text())
    for split in SPLITS:
        np.testing.assert_array_equal(np.load(ours / f"{split}_labels.npy"),
                                      np.load(theirs / f"{split}_labels.npy"))
        streamed = np.load(ours / f"{split}_images.npy").astype(int)
        reference = np.load(theirs / f"{split}_images.npy").astype(int)
        assert streamed.shape == reference.shape and len(streamed) > 0
        is_png = np.array([file.endswith(".png") for file in files[split]])
        np.testing.assert_array_equal(streamed[is_png], reference[is_png])  # decoded whole
        drafted = np.abs(streamed[~is_png] - reference[~is_png])
        assert drafted.mean() < 1.5 and drafted.max() <= 12, (drafted.mean(), drafted.max())


def test_threads_and_shard_sizes_do_not_change_the_output(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "photos", 8, extras=False)
    written = {}
    for threads, shard_images in ((1, 1000), (4, 3)):
        monkeypatch.setattr(stream, "SHARD_BYTES", shard_images * 40 * 40 * 3)
        output = tmp_path / f"out_{threads}"
        prepare_data(DataConfig(source="folder", path=str(folder), image_size=40,
                                decode_threads=threads), output)
        data = load_prepared(output)
        written[threads] = [np.asarray(data.images(split)) for split in SPLITS]
    for one, four in zip(written[1], written[4], strict=True):
        np.testing.assert_array_equal(one, four)


def test_a_bad_file_stops_the_stage_at_the_first_in_scan_order_with_on_bad_file_error(
        tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "photos", 6, extras=False)
    decode = prepare.load_square

    def failing(path: Path, **options):
        if path.name == "2.jpg" and path.parent.name in ("blue", "red"):
            if path.parent.name == "blue":
                time.sleep(0.5)  # the first bad file in scan order fails last
            raise ImageDecodeError(f"bad {path.parent.name}")
        return decode(path, **options)

    monkeypatch.setattr(prepare, "load_square", failing)
    config = DataConfig(source="folder", path=str(folder), image_size=32, decode_threads=4,
                        on_bad_file="error")
    with pytest.raises(ImageDecodeError, match="bad blue"):
        prepare_data(config, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def decoded_peak_bytes(run, folder: Path, output: Path) -> int:
    """The peak of memory allocated (NumPy included) while `run` prepares `folder`."""
    tracemalloc.start()
    try:
        run(DataConfig(source="folder", path=str(folder), image_size=96, decode_threads=2),
            output)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_stage_memory_does_not_grow_with_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "SHARD_BYTES", 8 * 96 * 96 * 3)
    small = make_folder(tmp_path / "small", 12, size=(128, 96), extras=False)
    large = make_folder(tmp_path / "large", 48, size=(128, 96), extras=False)
    extra_decoded = (48 - 12) * 3 * 96 * 96 * 3
    growth = {}
    for name, run in (("stream", prepare_data), ("reference", prepare_folder_in_memory)):
        growth[name] = (decoded_peak_bytes(run, large, tmp_path / f"{name}_large")
                        - decoded_peak_bytes(run, small, tmp_path / f"{name}_small"))
    # The in-memory stage holds every image, then a copy of a split: this test can fail.
    assert growth["reference"] > extra_decoded
    assert growth["stream"] < 0.25 * extra_decoded, (growth, extra_decoded)


def test_npy_appender_writes_a_file_numpy_reads_and_checks_the_row_count(tmp_path):
    rows = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    with stream.NpyAppender(tmp_path / "a.npy", rows.shape) as out:
        out.write(rows[:2])
        out.write(rows[2:])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)
    short = stream.NpyAppender(tmp_path / "b.npy", rows.shape)
    short.write(rows[:4])
    with pytest.raises(ValueError, match="4 rows written of 5"):
        short.close()
    with pytest.raises(ValueError, match="rows of shape"):
        stream.NpyAppender(tmp_path / "c.npy", rows.shape).write(rows[:, :2])


def test_file_rows_read_ranges_without_a_memory_map_and_only_for_whole_files(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", array)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = stream.unmapped(mapped)
    assert isinstance(rows, stream.FileRows)
    assert len(rows) == 9 and rows.shape == array.shape and rows.dtype == array.dtype
    np.testing.assert_array_equal(rows[2:7], array[2:7])
    np.testing.assert_array_equal(rows[-1], array[-1])
    np.testing.assert_array_equal(rows[[1, 5]], array[[1, 5]])
    np.testing.assert_array_equal(np.asarray(rows), array)
    for partial in (mapped[1:], mapped[:, 1:], array):  # views and arrays stay as they are
        assert stream.unmapped(partial) is partial


def fake_forward(batch_size: int) -> Forward:
    """A deterministic stand-in for the frozen base: activations and pooled features that
    depend on every image."""

    def run(batch: np.ndarray):
        pixels = batch.astype(np.float32) / 255
        return pixels[:, :2, :2, :], pixels.mean(axis=(1, 2))

    return Forward("tensorflow", "float32", batch_size, run)


def shift_augmenter(images: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
    return (images.astype(np.int32) + 17 * epoch).clip(0, 255).astype(np.uint8)


def test_features_written_as_they_come_equal_those_kept_in_memory(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "train_images.npy", images)
    mapped = np.load(tmp_path / "train_images.npy", mmap_mode="r")
    kept = extract_features(fake_forward(4), images, shift_augmenter, views=3,
                            keep_activations=True, description="memory")
    written = extract_features(fake_forward(4), mapped, shift_augmenter, views=3,
                               keep_activations=True, description="files",
                               folder=tmp_path, prefix="train")
    assert isinstance(written.pooled, np.memmap) and isinstance(written.activations, np.memmap)
    assert written.pooled.shape == (3, 11, 3) and written.activations.shape == (3, 11, 2, 2, 3)
    np.testing.assert_array_equal(written.pooled, kept.pooled)
    np.testing.assert_array_equal(written.activations, kept.activations)
    loaded = FeatureCache.load(tmp_path, "train")
    np.testing.assert_array_equal(loaded.pooled, kept.pooled)
    assert not np.array_equal(kept.pooled[0], kept.pooled[1])  # the views differ


def test_decode_threads_is_a_config_key_that_must_not_be_negative():
    from pipeline.config import ConfigError, load_config

    assert load_config(None, ["data.decode_threads=3"]).data.decode_threads == 3
    with pytest.raises(ConfigError, match="'data.decode_threads' must not be negative"):
        load_config(None, ["data.decode_threads=-1"])
