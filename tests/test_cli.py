"""The command line: argument order, and user errors as one line without a traceback."""

import pytest

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
