"""Training and search on several workers (`pipeline.distribute`, `pipeline.search.cluster`).

The quick checks run in the default suite. Those marked `distributed` (`make test-distributed`)
start real `python -m pipeline` processes on 127.0.0.1, each with its own TF_CONFIG (or
keras-tuner variables), its own run folder as on its own machine, and free ports; every process
is bounded by a timeout and killed if it overstays.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.bench_distributed import free_ports
from pipeline.distribute import cluster_from_environment, share
from pipeline.errors import ConfigError
from pipeline.search import cluster
from pipeline.search.trial import kept_accuracy

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# 600 real Fashion-MNIST images (375 train, 138 dev) at 32 px through Lite0's ImageNet weights:
# the head learns to about 55% dev accuracy, where a wrong exchange of features or gradients
# would show, in about a minute per job on two shared cores.
SMALL = ["data.max_examples=600", "model.image_size=32", "train.batch_size=16",
         "train.head_epochs=10", "train.fine_tune_epochs=1", "train.cached_views=2",
         "train.early_stopping_patience=9", "augment.chain=light", "name=small",
         f"data.path={FASHION_MNIST}"]
TIMEOUT = 400


def test_tf_config_missing_or_malformed_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"needs the TF_CONFIG environment variable.*e\.g\."):
        cluster_from_environment({})
    for text in ("{not json", '{"cluster": {"worker": ["a:1"]}}',
                 '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
                 '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}'):
        with pytest.raises(ConfigError, match="TF_CONFIG is malformed.*e\\.g\\..*Received"):
            cluster_from_environment({"TF_CONFIG": text})
    parsed = cluster_from_environment({"TF_CONFIG": json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})})
    assert parsed.workers == ("a:1", "b:2") and parsed.index == 1 and not parsed.is_chief


@pytest.mark.parametrize("count,workers", [(10, 3), (375, 2), (1, 2), (7, 7), (0, 2)])
def test_the_workers_shares_cover_every_image_once(count, workers):
    shares = [share(count, index, workers) for index in range(workers)]
    assert [i for part in shares for i in range(count)[part]] == list(range(count))
    sizes = [part.stop - part.start for part in shares]
    assert max(sizes) - min(sizes) <= 1


def test_a_distributed_search_needs_all_three_variables(monkeypatch):
    for name in cluster.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert cluster.role() == "alone"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(ConfigError, match="KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_PORT not set"):
        cluster.role()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    assert cluster.role() == "worker"
    with cluster.round_port(3):
        assert os.environ["KERASTUNER_ORACLE_PORT"] == "8002"
    assert os.environ["KERASTUNER_ORACLE_PORT"] == "8000"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert cluster.role() == "chief"


def test_multi_worker_without_tf_config_stops_with_one_line(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "--config", "configs/default.yaml",
         "train.distribute=multi_worker", f"runs_dir={tmp_path}"], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
    assert "TF_CONFIG" in errors[0] and '"task"' in errors[0]
    assert "Traceback" not in result.stderr


# ---- several processes on loopback (make test-distributed) ----

def pipeline(command: str, runs: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", command, "--config", "configs/default.yaml",
            *SMALL, f"runs_dir={runs}", *overrides]


def start(argv: list[str], log: Path, **environment: str) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **environment},
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(processes: list[subprocess.Popen], logs: list[Path]) -> list[str]:
    """Waits for every process (killing all of them past the timeout); their outputs."""
    try:
        for process in processes:
            process.wait(timeout=TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [log.read_text() for log in logs]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    return outputs


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def dev_accuracy(run_dir: Path) -> float:
    """The dev accuracy of the weights training kept (the lowest dev loss)."""
    history = json.loads((run_dir / "train_history.json").read_text())["history"]
    return kept_accuracy(history, "val_loss")


needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed "
                                       "(make test-distributed installs it)")


@pytest.mark.distributed
@needs_fashion_mnist
def test_two_workers_reach_one_workers_dev_accuracy_each_extracting_half(tmp_path):
    one, workers = tmp_path / "one", [tmp_path / f"worker{index}" for index in range(2)]
    for runs in (one, *workers):
        subprocess.run(pipeline("data", runs), cwd=ROOT, check=True, capture_output=True,
                       timeout=TIMEOUT)
    ports = free_ports(2)
    logs = [tmp_path / name for name in ("one.log", "worker0.log", "worker1.log")]
    # the one-worker job on MirroredStrategy: one CPU device here, and it must work as well
    processes = [start(pipeline("train", one, "train.distribute=mirrored"), logs[0])]
    processes += [start(pipeline("train", runs, "train.distribute=multi_worker"), log,
                        TF_CONFIG=tf_config(ports, index))
                  for index, (runs, log) in enumerate(zip(workers, logs[1:], strict=True))]
    outputs = finish(processes, logs)

    # each worker extracted its half of the train images (and of dev), nothing twice
    shares = [re.findall(r"Worker (\d) of 2 extracts images (\d+)-(\d+) \((\d+) of (\d+)\): "
                         r"Features of 2", output) for output in outputs[1:]]
    assert [len(found) for found in shares] == [1, 1], outputs[1][-3000:]
    (_, start0, stop0, size0, total), (_, start1, stop1, size1, total1) = \
        shares[0][0], shares[1][0]
    assert (int(start0), int(stop0) + 1, int(stop1) + 1) == (0, int(start1), int(total))
    assert total == total1 and abs(int(size0) - int(size1)) <= 1

    # the same dev accuracy within a point (a model trained on half the data, or on features
    # paired with the wrong labels, would not reach it)
    alone, together = dev_accuracy(one / "small"), dev_accuracy(workers[0] / "small")
    assert abs(alone - together) <= 0.01, (alone, together)
    assert together > 0.3, together  # it learned: 10 classes, chance is 0.1

    # only the chief wrote the model and the history; the worker left no artifact behind
    assert (workers[0] / "small" / "model.keras").is_file()
    written = {path.name for path in (workers[1] / "small").iterdir()}
    assert not written & {"model.keras", "train_history.json", "tensorboard", "color_pca.json"}
    assert "This worker's share of training is done" in outputs[2]


@pytest.mark.distributed
def test_a_search_with_a_chief_and_two_workers_runs_each_trial_once(tmp_path):
    from tests.test_search import make_fake_fashion

    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=80, test=20)
    overrides = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
                 "train.head_epochs=2", "train.fine_tune_epochs=0", "train.cached_views=1",
                 "augment.chain=light", "name=tiny", f"data.path={tmp_path / 'idx'}",
                 "search.trials=3", "search.rounds=2", "search.keep_best=2"]
    port = free_ports(2)[0]  # rounds 1 and 2 use this port and the next
    ids = ("chief", "tuner1", "tuner2")
    logs = [tmp_path / f"{tuner}.log" for tuner in ids]
    processes = [start([sys.executable, "-m", "pipeline", "search", "--config",
                        "configs/default.yaml", *overrides, f"runs_dir={tmp_path / tuner}"],
                       log, KERASTUNER_TUNER_ID=tuner, KERASTUNER_ORACLE_IP="127.0.0.1",
                       KERASTUNER_ORACLE_PORT=str(port))
                 for tuner, log in zip(ids, logs, strict=True)]
    outputs = finish(processes, logs)

    result = json.loads((tmp_path / "chief" / "tiny" / "search" / "results.json").read_text())
    chief_trials = sorted((trial["round"], trial["trial"]) for trial in result["trials"])
    assert len(chief_trials) == 6 and len(set(chief_trials)) == 6
    ran = [re.findall(r"Trial (\w+) ran on this worker", output) for output in outputs[1:]]
    assert sorted(ran[0] + ran[1]) == sorted(trial for _, trial in chief_trials), ran
    for tuner in ids[1:]:  # one results file, the chief's
        assert not (tmp_path / tuner / "tiny" / "search").exists()


@pytest.mark.distributed
@needs_fashion_mnist
def test_a_killed_worker_stops_the_job_with_one_line_and_both_resume_from_their_backups(
        tmp_path):
    """SIGKILL worker 1 once phase 2 began: the chief stops with one `error:` line naming the
    fix; the same command again on both resumes each from its own backup (features and phase
    1 are not redone) and the chief writes the model."""
    workers = [tmp_path / f"worker{index}" for index in range(2)]
    for runs in workers:
        subprocess.run(pipeline("data", runs), cwd=ROOT, check=True, capture_output=True,
                       timeout=TIMEOUT)

    def launch(attempt: str) -> tuple[list[subprocess.Popen], list[Path]]:
        ports = free_ports(2)
        logs = [tmp_path / f"{attempt}{index}.log" for index in range(2)]
        return [start(pipeline("train", runs, "train.distribute=multi_worker",
                               "train.fine_tune_epochs=2"), log,
                      TF_CONFIG=tf_config(ports, index))
                for index, (runs, log) in enumerate(zip(workers, logs, strict=True))], logs

    processes, logs = launch("first")
    try:
        deadline = time.monotonic() + TIMEOUT
        while "Training phase 2" not in logs[1].read_text():
            assert time.monotonic() < deadline and processes[1].poll() is None, (
                logs[1].read_text()[-3000:])
            time.sleep(0.5)
        processes[1].kill()
        processes[1].wait()
        processes[0].wait(timeout=TIMEOUT)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    chief = logs[0].read_text()
    assert processes[0].returncode == 2, chief[-3000:]
    errors = [line for line in chief.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Start the same command again on every machine" in errors[0]
    assert "Traceback" not in chief

    processes, logs = launch("again")
    outputs = finish(processes, logs)
    for output in outputs:
        assert "Reusing the features cached before an interruption" in output, output[-3000:]
        assert "Phase 1 finished before the interruption" in output, output[-3000:]
    assert (workers[0] / "small" / "model.keras").is_file()
    assert not (workers[1] / "small" / "model.keras").exists()
