"""The README is the user's manual, and it is executable: every command in its ```bash blocks
runs here exactly as written.

The commands run in a sandbox copy of the project (symlinks to the checkout's Makefile,
package, configs and virtualenv; `runs/` and `models/` of its own), with `HOME` pointing at a
folder that holds `~/photos` (a dozen real flowers128 photos per class, or generated JPEGs
when flowers128 is absent) and `new/` holding images to classify. The only thing added is
`TEST_ARGS` in the environment, which the Makefile appends after `ARGS` to keep each run to
seconds (one epoch per phase, a few hundred Fashion-MNIST images). Commands that cannot run
here say why in `NOT_RUN`, or carry "needs a network" in their comment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main
from tests.conftest import copy_photos

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PHOTOS_PER_CLASS = 12
NOT_RUN = {
    "make test": "the suite itself (this test is part of it); CI runs it through .ci/run",
    "make test-slow": "the slow suite, its own target: real training on full datasets",
    "make test-e2e": "whole jobs end to end, its own target (CI runs it after make test)",
    "make test-faults": "the fault-injection suite, its own target (CI runs it after make test)",
    "make test-distributed": "the distributed suite, its own target: workers on 127.0.0.1",
    "make bench": "benchmarks of several minutes, their own target",
    "make demo MODEL=models/photos": "a server that runs until Ctrl+C; tests/test_demo.py runs "
                                     "its page in headless Chromium",
}
NETWORK = "needs a network"
PREREQUISITES = {"model.weights=models/photos": "make train DATA=~/photos"}
# The "Several machines" commands wait for the other hosts; tests/test_distribute.py runs the
# same stages as processes on 127.0.0.1 (`make test-distributed`).
OTHER_HOSTS = "# on 10.0.0."
TEST_ARGS = " ".join([
    "data.max_examples=400", "train.head_epochs=1", "train.fine_tune_epochs=1",
    "train.cached_views=1", "evaluate.train_error_examples=100", "search.trials=2",
    "augment.preview_images=2", "augment.preview_views=2",
])
SANDBOX_LINKS = ("Makefile", "pyproject.toml", "README.md", "configs", "pipeline", "bench",
                 "tests", ".venv")


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def command_only(line: str) -> str:
    """The command without its trailing comment."""
    return line.split("  #")[0].split(" #")[0].strip()


def commands_to_run() -> list[str]:
    return [line for line in readme_commands()
            if command_only(line) not in NOT_RUN and NETWORK not in line
            and OTHER_HOSTS not in line]


def test_every_readme_command_is_run_or_says_why_not():
    commands = [command_only(line) for line in readme_commands()]
    assert "make train" in commands and "make test" in commands
    assert any("DATA=" in command for command in commands_to_run())
    # a reason for a command the README no longer shows is stale: drop it
    assert set(NOT_RUN) <= set(commands), set(NOT_RUN) - set(commands)


def test_readme_error_example_is_what_the_cli_prints(capsys):
    shown = re.search(r"```\n(error: Unknown config key .*?)\n```", README.read_text()).group(1)
    key = re.search(r"'(train\.\w+)'", shown).group(1)
    assert main(["train", f"{key}=5"]) == 2
    printed = capsys.readouterr().err.splitlines()[0]
    prefix = shown.split("Valid keys here:")[0]
    assert printed.startswith(prefix), (printed, prefix)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    """A project copy to run commands in, a HOME with ~/photos, and new/ images."""
    root = tmp_path_factory.mktemp("readme")
    project, home = root / "project", root / "home"
    project.mkdir()
    for name in SANDBOX_LINKS:
        (project / name).symlink_to(ROOT / name)
    copy_photos(home / "photos", PHOTOS_PER_CLASS)
    (project / "new").mkdir()
    for path in sorted((home / "photos").rglob("*.jpg"))[::PHOTOS_PER_CLASS][:3]:
        shutil.copy(path, project / "new" / path.name)
    environment = {**os.environ, "HOME": str(home), "TEST_ARGS": TEST_ARGS}
    environment.pop("MAKEFLAGS", None)
    return {"project": project, "home": home, "env": environment}


def marked(line: str):
    """A README line as a test parameter: the `make train` variants with ARGS (each a whole
    job of about two minutes) run with `make test-e2e`; `make train` and the front door
    `make train DATA=~/photos` stay in `make test`."""
    heavy = command_only(line).startswith("make train") and "ARGS=" in line
    return pytest.param(line, marks=pytest.mark.e2e) if heavy else line


@pytest.mark.parametrize("line", [marked(line) for line in commands_to_run()])
def test_readme_command_runs_as_written(sandbox, line):
    # A command that starts from another's export runs that one first when it has not run in
    # this session (`make test-e2e` runs the continued training without the front door).
    for needed, first in PREREQUISITES.items():
        if needed in line and not (sandbox["project"] / needed.split("=")[1]).exists():
            subprocess.run(["bash", "-c", first], cwd=sandbox["project"], env=sandbox["env"],
                           capture_output=True, text=True, timeout=900, check=True)
    result = subprocess.run(["bash", "-c", line], cwd=sandbox["project"], env=sandbox["env"],
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{line}\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    check_outputs(command_only(line), sandbox, result.stdout)


def check_outputs(command: str, sandbox: dict, stdout: str) -> None:
    """What each kind of command must have produced, beyond a zero exit status."""
    project = sandbox["project"]
    named = re.search(r"\bname=(\w+)", command)
    name = named.group(1) if named else "photos" if "DATA=~/photos" in command else "default"
    if command.startswith("make train"):
        assert (project / "runs" / name / "metrics.json").is_file()
        assert (project / "models" / name / "model.keras").is_file()
        assert f"Exported model: models/{name}\n" in stdout
    if command.startswith("make predict"):
        classified = [line for line in stdout.splitlines() if line.startswith("new/")]
        assert len(classified) == len(list((project / "new").iterdir())), stdout
    if command.startswith("make search"):
        assert (project / "runs" / name / "search" / "results.json").is_file()
    if command.startswith("make backbones"):
        assert "efficientnet_lite0" in stdout
