"""Atomic writes: a destination is either its old self or wholly new, never half-written."""

import json

import numpy as np
import pytest

from pipeline.atomic import (
    PARTIAL,
    SEAL_FILE,
    atomic_path,
    is_intact,
    remove_partial_writes,
    seal,
    write_json,
    write_text,
    write_with,
)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(ValueError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise ValueError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_folders(tmp_path):
    target = tmp_path / "export"
    for content in ("old", "new"):
        with atomic_path(target) as temporary:
            temporary.mkdir()
            (temporary / "file.txt").write_text(content)
    assert (target / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_interrupted_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "report.md", "complete report\n")

    def write_half_then_fail(handle):
        handle.write(b"half a rep")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with(path, write_half_then_fail)
    assert path.read_text() == "complete report\n"
    assert [child.name for child in tmp_path.iterdir()] == ["report.md"]


def test_written_files_are_readable_by_others(tmp_path):
    path = write_text(tmp_path / "nested" / "labels.txt", "cat\ndog\n")
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_json_converts_numpy_values_and_paths(tmp_path):
    path = write_json(tmp_path / "m.json", {"accuracy": np.float32(0.5), "counts": np.arange(3),
                                            "where": tmp_path, "pair": (1, 2), "name": "café"})
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "accuracy": 0.5, "counts": [0, 1, 2], "where": str(tmp_path), "pair": [1, 2],
        "name": "café"}
    assert "café" in path.read_text(encoding="utf-8")  # not escaped


def sealed_folder(tmp_path):
    with atomic_path(tmp_path / "checkpoint") as folder:
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes(range(256)) * 8)
        (folder / "meta.json").write_text('{"epoch": 3}')
        seal(folder)
    return tmp_path / "checkpoint"


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove", "add a file",
                                    "remove the seal"])
def test_a_sealed_folder_tells_any_change(tmp_path, damage):
    folder = sealed_folder(tmp_path)
    assert is_intact(folder)
    weights = folder / "weights.bin"
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[100] ^= 1
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "remove":
        weights.unlink()
    elif damage == "add a file":
        (folder / "stray.txt").write_text("x")
    else:
        (folder / SEAL_FILE).unlink()
    assert not is_intact(folder)


def test_remove_partial_writes_takes_only_what_killed_writers_left(tmp_path):
    keep = write_text(tmp_path / "report.md", "done")
    (tmp_path / ".hidden_by_user").mkdir()
    left = [tmp_path / f".model.keras{PARTIAL}abc123", tmp_path / "sub" / f".data{PARTIAL}x"]
    for path in left:
        path.mkdir(parents=True)
        (path / "half").write_text("half")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(left)
    assert keep.read_text() == "done" and (tmp_path / ".hidden_by_user").is_dir()
    assert not any(path.exists() for path in left)
