"""`python -m bench export`: every export format's size, latency, throughput and accuracy.

Exports a trained run (default `runs/default`, the `make train` job; `BENCH_EXPORT_RUN` names
another) with every format into runs/bench/export/, through the product's own export: its
standalone check runs each file on the whole test split in one fresh process, side by side,
and measures single-image latency (median of 15 calls) and batch throughput (64 images a call).
"""

from __future__ import annotations

import json
import os
import time
import typing
from pathlib import Path

from pipeline.config import ExportFormat

RUN = Path(os.environ.get("BENCH_EXPORT_RUN", "runs/default"))


def bench_export(run_dir: Path = RUN, output: Path = Path("runs/bench/export")) -> dict:
    """Exports `run_dir` in every format and returns the measured numbers (or a skip)."""
    from pipeline.config import ExportConfig
    from pipeline.export import export_stage

    if not (run_dir / "model.keras").is_file() or not (run_dir / "metrics.json").is_file():
        return {"skipped": f"export: no trained and evaluated run in {run_dir} (make train)"}
    config = ExportConfig(models_dir=str(output.parent),
                          formats=typing.get_args(ExportFormat))
    started = time.perf_counter()
    export_stage(config, output.name, run_dir)
    seconds = time.perf_counter() - started
    checks = json.loads((output / "metrics.json").read_text())["export"]["checks"]
    print(f"{'check':20} {'size MB':>8} {'latency ms':>11} {'images/s':>9} {'accuracy':>9} "
          f"{'same top-1':>10}")
    for check, row in checks.items():
        print(f"{check:20} {row['size_bytes'] / 1e6:8.1f} {row['latency_ms']:11.2f} "
              f"{row['images_per_second']:9.0f} {row['test_accuracy']:9.4f} "
              f"{row['top1_agreement']:10.4%}")
    ratio = checks["litert_int8"]["latency_ms"] / checks["litert"]["latency_ms"]
    print(f"int8 / float32 LiteRT single-image latency: {ratio:.2f}; export stage {seconds:.0f} s")
    return {"export_checks": checks, "export_stage_seconds": seconds,
            "int8_over_float32_litert_latency": ratio}
