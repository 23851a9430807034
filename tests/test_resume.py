"""A killed training run resumes where it stopped, and under `train.deterministic` ends with
the weights of an uninterrupted run, bit for bit (`pipeline.train`'s resume machinery).

Each run is a real `python -m pipeline` process on a tiny fake Fashion-MNIST; the interrupted
one gets a real SIGKILL as soon as phase 2 has saved its first epoch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pipeline.backbones  # noqa: F401  (registers the layers model.keras holds)
from pipeline.model import load_classifier

ROOT = Path(__file__).resolve().parents[1]
RESUMABLE = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
             "train.head_epochs=4", "train.fine_tune_epochs=5", "train.cached_views=2",
             "train.early_stopping_patience=9", "train.deterministic=true",
             "augment.chain=light", "name=tiny"]


def pipeline(command: str, data: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", command, "--config", "configs/default.yaml",
            *RESUMABLE, f"data.path={data}", f"runs_dir={runs}", *extra]


def run(command: str, data: Path, runs: Path, *extra: str) -> str:
    result = subprocess.run(pipeline(command, data, runs, *extra), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def weights(runs: Path) -> list[np.ndarray]:
    return load_classifier(runs / "tiny" / "model.keras").get_weights()


def history(runs: Path) -> dict:
    return json.loads((runs / "tiny" / "train_history.json").read_text())["history"]


def kill_when(process: subprocess.Popen, pattern: str, runs: Path, timeout: float = 300) -> None:
    """SIGKILLs `process` as soon as a file matching `pattern` appears under `runs`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if any(runs.glob(pattern)):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()


# Phase 2 fed from cached activations (the default depth) and from pixels augmented live (a
# fresh view each epoch: the resumed epochs must draw the views the killed run would have;
# about 1.4x the cached run's time, so it runs with `make test-slow`).
@pytest.mark.parametrize("depth", [
    pytest.param([], id="cached", marks=pytest.mark.e2e),
    pytest.param(["train.fine_tune_from=block5a", "train.phase2_input=pixels"], id="pixels",
                 marks=pytest.mark.slow)])
def test_a_run_killed_in_phase_2_resumes_to_the_same_weights(tiny_fashion_mnist, tmp_path,
                                                              depth):
    data = tiny_fashion_mnist
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run("data", data, whole)
    run("train", data, whole, *depth)

    run("data", data, killed)
    process = subprocess.Popen(pipeline("train", data, killed, *depth), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, "tiny/backup/*/phase2/checkpoint/training_metadata.json", killed)
    assert process.returncode == -signal.SIGKILL, "the run ended before phase 2 saved an epoch"
    assert not (killed / "tiny" / "model.keras").exists()

    output = run("train", data, killed, *depth)
    assert f"phase2_feeding: {'pixels' if depth else 'cached'}" in output
    assert "Reusing the features cached before an interruption" in output
    assert "Phase 1 finished before the interruption: reusing its head." in output
    assert "Resuming at epoch" in output
    for resumed, uninterrupted in zip(weights(killed), weights(whole), strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)
    # every epoch's train and dev metrics too: the epochs after the kill saw the same batches
    # (the kept weights alone may be those of a best epoch from before the kill)
    assert history(killed) == history(whole)
    recorded = json.loads((killed / "tiny" / "train_history.json").read_text())
    assert recorded["phase2_feeding"] == ("pixels" if depth else "cached")
    assert not any((killed / "tiny" / "backup").iterdir())  # nothing left to resume
