import json

import pytest

from pipeline.stages import atomic_path, fingerprint, is_fresh, record_stage, run_stage, write_json


def test_fingerprint_changes_with_config_and_input_content(tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(b"one")
    first = fingerprint({"a": 1}, [source])
    assert fingerprint({"a": 1}, [source]) == first
    assert fingerprint({"a": 2}, [source]) != first
    source.write_bytes(b"two")
    assert fingerprint({"a": 1}, [source]) != first


def test_stage_is_skipped_when_fresh_and_rerun_when_changed(tmp_path):
    calls = []

    def work():
        calls.append(1)
        (tmp_path / "out.txt").write_text("x")
        return ["out.txt"]

    assert run_stage(tmp_path, "s", "f1", work)
    assert not run_stage(tmp_path, "s", "f1", work)
    assert run_stage(tmp_path, "s", "f2", work)
    (tmp_path / "out.txt").unlink()  # an output went missing: not fresh any more
    assert run_stage(tmp_path, "s", "f2", work)
    assert run_stage(tmp_path, "s", "f2", work, force=True)
    assert len(calls) == 4


def test_failed_stage_records_nothing(tmp_path):
    def work():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "s", "f1", work)
    assert not is_fresh(tmp_path, "s", "f1")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(ValueError):
        with atomic_path(target) as temporary:
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


def test_write_json_and_lock(tmp_path):
    write_json(tmp_path / "m.json", {"accuracy": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.5}
    record_stage(tmp_path, "data", "abc", ["m.json"])
    assert is_fresh(tmp_path, "data", "abc")
    assert not is_fresh(tmp_path, "data", "abd")
