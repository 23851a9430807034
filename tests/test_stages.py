import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.atomic import write_json
from pipeline.errors import RunInUseError
from pipeline.stages import fingerprint, is_fresh, record_stage, run_folder_lock, run_stage


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


def test_write_json_and_lock(tmp_path):
    write_json(tmp_path / "m.json", {"accuracy": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.5}
    record_stage(tmp_path, "data", "abc", ["m.json"])
    assert is_fresh(tmp_path, "data", "abc")
    assert not is_fresh(tmp_path, "data", "abd")


def test_a_second_process_cannot_write_a_run_folder_in_use(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.stages import run_folder_lock\n"
         f"with run_folder_lock({str(tmp_path)!r}):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}"):
            with run_folder_lock(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock with the process
        holder.wait()
    with run_folder_lock(tmp_path), run_folder_lock(tmp_path):  # free again, and re-entrant
        assert (tmp_path / ".in_use").read_text().strip() == str(os.getpid())


@pytest.mark.parametrize("damage", ["truncate", "edit", "remove"])
def test_an_output_damaged_after_the_stage_makes_it_run_again(tmp_path, damage, capsys):
    def work():
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "train.npy").write_bytes(b"0123456789" * 10)
        return ["data"]

    assert run_stage(tmp_path, "data", "f1", work)
    assert not run_stage(tmp_path, "data", "f1", work)
    array = tmp_path / "data" / "train.npy"
    if damage == "truncate":
        array.write_bytes(array.read_bytes()[:50])
    elif damage == "edit":
        array.write_bytes(b"x" + array.read_bytes()[1:])
    else:
        array.unlink()
    capsys.readouterr()
    assert run_stage(tmp_path, "data", "f1", work)
    assert f"[data] runs again: its output {tmp_path / 'data'} changed" in capsys.readouterr().out
    assert not run_stage(tmp_path, "data", "f1", work)


@pytest.mark.parametrize("content", ["{ torn", "[1, 2]", '{"data": 3}', "\xff\xfe"])
def test_a_damaged_lock_file_reruns_every_stage(tmp_path, content, capsys):
    record_stage(tmp_path, "data", "f1", [])
    (tmp_path / "lock.json").write_text(content, encoding="latin-1")
    assert not is_fresh(tmp_path, "data", "f1")
    assert "lock.json is damaged" in capsys.readouterr().out
    record_stage(tmp_path, "data", "f1", [])  # and it is written whole again
    assert is_fresh(tmp_path, "data", "f1")


def test_a_change_of_the_pipeline_code_reruns_the_stage_and_says_why(tmp_path, monkeypatch,
                                                                      capsys):
    from pipeline import stages

    calls = []

    def work():
        calls.append(1)
        return []

    assert run_stage(tmp_path, "data", "f1", work)
    assert not run_stage(tmp_path, "data", "f1", work)  # same code, same inputs: skipped
    # A new version of the package: its digest changes, and so do the fingerprints built on it.
    monkeypatch.setattr(stages, "code_digest", lambda: "another version")
    assert run_stage(tmp_path, "data", "f2", work)
    assert "[data] runs again: the pipeline's code changed" in capsys.readouterr().out
    assert len(calls) == 2


def test_the_code_digest_is_in_every_stage_fingerprint(monkeypatch):
    from pipeline import run, stages
    from pipeline.config import load_config

    config = load_config(None, [])
    before = run.stage_fingerprints(config)
    monkeypatch.setattr(run, "code_digest", lambda: "another version")
    after = run.stage_fingerprints(config)
    assert all(before[name] != after[name] for name in before), (before, after)
    assert len(stages.code_digest()) == 16
