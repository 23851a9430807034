"""One worker against two on loopback (`python -m bench distributed`, issue 17).

Both jobs train the same config with `train.distribute=multi_worker` (one TF_CONFIG listing one
worker, then two) on the same prepared data, one job after the other; each worker has its own
run folder as on its own machine. Printed: each worker's extraction speed (image views per
second, from the line `pipeline.distribute` prints), the whole training job's wall time, the
phases' times of the chief, and from the one-worker job's per-image costs the arithmetic of a
1,000,000-photo folder on 1, 4 and 16 machines. On one machine the two workers share its cores,
so the two-worker job is not faster here: what it shows is that each worker does half of the
extraction, and what the collective steps cost.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGES = 1000  # Fashion-MNIST examples kept (about 62% of them train)
SIZE = 160  # the model input of the photo-folder recipe
VIEWS, HEAD_EPOCHS, FINE_TUNE_EPOCHS = 2, 5, 1
CONFIG = [f"data.max_examples={IMAGES}", f"model.image_size={SIZE}", "train.batch_size=32",
          f"train.cached_views={VIEWS}", f"train.head_epochs={HEAD_EPOCHS}",
          f"train.fine_tune_epochs={FINE_TUNE_EPOCHS}",
          "train.early_stopping_patience=9", "augment.chain=light", "name=bench",
          f"data.path={FASHION_MNIST}", "train.distribute=multi_worker"]
PHOTOS = 1_000_000
TRAIN_SHARE = 0.98  # a million examples or more: about 98/1/1 (pipeline.data.splits)
MACHINES = (1, 4, 16)
VIEWS_PATTERN = re.compile(r"Worker (\d+) of (\d+) extracted (\d+) image views in ([\d.]+) s")


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (the OS picks them; a race with another program is rare)."""
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("127.0.0.1", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def _argv(command: str, runs: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", command, "--config", "configs/default.yaml",
            *CONFIG, f"runs_dir={runs}"]


def run_job(workers: int, folder: Path) -> dict:
    """Prepares each worker's data, then times the train stage of `workers` processes."""
    runs = [folder / f"worker{index}" for index in range(workers)]
    for run in runs:
        subprocess.run(_argv("data", run), cwd=ROOT, check=True, capture_output=True)
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    started = time.perf_counter()
    processes = [subprocess.Popen(
        _argv("train", run), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index, run in enumerate(runs)]
    outputs = [process.communicate(timeout=1800)[0] for process in processes]
    seconds = time.perf_counter() - started
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode:
            raise RuntimeError(f"a worker failed:\n{output[-3000:]}")
    history = json.loads((runs[0] / "bench" / "train_history.json").read_text())
    extraction = [_extraction(output) for output in outputs]
    return {"job_s": seconds, "timings": history["timings"], "extraction": extraction,
            "epochs": (history["phase_boundaries"][0],
                       len(history["history"]["loss"]) - history["phase_boundaries"][0])}


def _extraction(output: str) -> dict:
    """Image views and seconds of the train split's extraction on one worker (the first of its
    two extractions: train, then dev)."""
    found = VIEWS_PATTERN.findall(output)
    _, _, views, seconds = found[0]
    return {"views": int(views), "seconds": float(seconds),
            "views_per_s": int(views) / float(seconds)}


def estimate(one: dict, train_images: int) -> dict:
    """Hours for a 1,000,000-photo folder on 1, 4 and 16 machines, from one worker's measured
    per-image costs: extraction and both phases divide by the machines (each does its share of
    every batch), so hours(n) = hours(1) / n plus what the collectives cost (not modelled)."""
    extraction_s = 1 / one["extraction"][0]["views_per_s"]  # per image view
    head_s = one["timings"]["phase1_head_s"] / (one["epochs"][0] * train_images)
    fine_tune_s = one["timings"]["phase2_fine_tune_s"] / (one["epochs"][1] * train_images)
    train = PHOTOS * TRAIN_SHARE
    # the default job's epochs: 12 head, 4 fine-tune (configs/default.yaml), K views
    total_1 = train * (VIEWS * extraction_s + 12 * head_s + 4 * fine_tune_s)
    return {"per_view_extraction_ms": 1000 * extraction_s, "per_image_epoch_head_ms":
            1000 * head_s, "per_image_epoch_fine_tune_ms": 1000 * fine_tune_s,
            **{f"million_photos_hours_{n}_machines": total_1 / n / 3600 for n in MACHINES}}


def bench_distributed() -> dict:
    """Runs the one-worker and the two-worker job; prints and returns the numbers."""
    with tempfile.TemporaryDirectory() as folder:
        one = run_job(1, Path(folder) / "one")
        two = run_job(2, Path(folder) / "two")
    train_images = one["extraction"][0]["views"] // VIEWS
    results = {
        "distributed_one_worker_views_per_s": one["extraction"][0]["views_per_s"],
        "distributed_two_workers_views_per_s": [item["views_per_s"] for item in two["extraction"]],
        "distributed_two_workers_views_each": [item["views"] for item in two["extraction"]],
        "distributed_one_worker_job_s": one["job_s"], "distributed_two_workers_job_s":
            two["job_s"], "distributed_one_worker_timings": one["timings"],
        "distributed_two_workers_timings": two["timings"],
        **estimate(one, train_images)}
    print(f"Train images {train_images} x {VIEWS} views at {SIZE} px (Fashion-MNIST, Lite0 "
          f"ImageNet), {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}:")
    print(f"  one worker: extraction {results['distributed_one_worker_views_per_s']:.1f} "
          f"views/s, job {one['job_s']:.1f} s, phases {one['timings']}")
    print(f"  two workers: extraction {two['extraction'][0]['views_per_s']:.1f} and "
          f"{two['extraction'][1]['views_per_s']:.1f} views/s per worker on "
          f"{results['distributed_two_workers_views_each']} views, job {two['job_s']:.1f} s "
          f"({two['job_s'] / one['job_s']:.2f}x one worker's), phases {two['timings']}")
    for n in MACHINES:
        print(f"  1,000,000 photos on {n} machine(s): "
              f"{results[f'million_photos_hours_{n}_machines']:.1f} h")
    return results


if __name__ == "__main__":
    print(json.dumps(bench_distributed(), indent=1))
