"""The command line: argument order, and user errors as one line without a traceback."""

import errno

import pytest

from pipeline import cli
from pipeline.cli import main, parse_arguments


@pytest.mark.parametrize("argv", [
    ["train", "--config", "configs/folder.yaml", "train.head_epochs=5", "model.dropout=0.3"],
    ["--config", "configs/folder.yaml", "train.head_epochs=5", "model.dropout=0.3", "train"],
    ["train.head_epochs=5", "train", "--config", "configs/folder.yaml", "model.dropout=0.3"],
])
def test_the_command_may_come_anywhere(argv):
    arguments = parse_arguments(argv)
    assert arguments.command == "train"
    assert arguments.overrides == ["train.head_epochs=5", "model.dropout=0.3"]
    assert arguments.config == "configs/folder.yaml"


@pytest.mark.parametrize(("argv", "received"), [
    (["train.head_epochs=5"], "none"),
    (["trian"], "trian"),
    (["data", "train"], "data train"),
])
def test_a_missing_or_unknown_command_names_the_choices(argv, received, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"Received command: {received}" in error and "backbones" in error


def test_backbones_lists_the_registry_whatever_the_order(capsys):
    assert main(["--config", "configs/default.yaml", "backbones"]) == 0
    listed = capsys.readouterr().out
    assert "efficientnet_lite0" in listed and "resnet50 " in listed


def disk_full_inside_a_library():
    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.keras")
    except OSError as error:
        raise RuntimeError("Unable to write the file") from error


@pytest.mark.parametrize("raise_it", [
    lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", "f")),
    disk_full_inside_a_library,
    lambda: (_ for _ in ()).throw(RuntimeError("write failed; No space left on device")),
])
def test_a_full_disk_is_one_line_naming_the_fix(monkeypatch, capsys, raise_it):
    monkeypatch.setattr(cli, "_dispatch", lambda arguments: raise_it())
    assert cli.main(["train"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: the disk is full") and "Traceback" not in error
    assert "run the same command again" in error


def test_other_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "_dispatch", lambda arguments: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train"])
