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

import pipeline.backbones  # noqa: F401  (registers the layers model.keras holds)
from pipeline.model import load_classifier

ROOT = Path(__file__).resolve().parents[1]
RESUMABLE = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
             "train.head_epochs=4", "train.fine_tune_epochs=5", "train.cached_views=2",
             "train.early_stopping_patience=9", "train.deterministic=true",
             "augment.chain=light", "name=tiny"]


def pipeline(command: str, data: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", command, "--config", "configs/default.yaml",
            *RESUMABLE, f"data.path={data}", f"runs_dir={runs}"]


def run(command: str, data: Path, runs: Path) -> str:
    result = subprocess.run(pipeline(command, data, runs), cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
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


def test_a_run_killed_in_phase_2_resumes_to_the_same_weights(tiny_fashion_mnist, tmp_path):
    data = tiny_fashion_mnist
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run("data", data, whole)
    run("train", data, whole)

    run("data", data, killed)
    process = subprocess.Popen(pipeline("train", data, killed), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, "tiny/backup/*/phase2/checkpoint/training_metadata.json", killed)
    assert process.returncode == -signal.SIGKILL, "the run ended before phase 2 saved an epoch"
    assert not (killed / "tiny" / "model.keras").exists()

    output = run("train", data, killed)
    assert "Reusing the features cached before an interruption" in output
    assert "Phase 1 finished before the interruption: reusing its head." in output
    assert "Resuming at epoch" in output
    for resumed, uninterrupted in zip(weights(killed), weights(whole), strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)
    # every epoch's train and dev metrics too: the epochs after the kill saw the same batches
    # (the kept weights alone may be those of a best epoch from before the kill)
    assert history(killed) == history(whole)
    assert not any((killed / "tiny" / "backup").iterdir())  # nothing left to resume
