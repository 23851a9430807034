"""`make search` on several machines: keras-tuner's own chief/worker mode (issue 17).

Every machine runs the same `make search`; keras-tuner's environment variables say who is who:

    KERASTUNER_TUNER_ID     "chief" on one machine, "tuner1", "tuner2", ... on the others
    KERASTUNER_ORACLE_IP    the chief's address (the chief listens there)
    KERASTUNER_ORACLE_PORT  the port of the first round; round n uses this port + n - 1

The chief's oracle draws the trials and hands them out over gRPC; the workers run them (each
trial once, wherever a worker is free) and report their dev accuracy back. Each round is a
keras-tuner search of its own, so each gets its own port: a worker that finished round 1
connects to round 2's port and waits there (keras-tuner's client waits until the server is up)
while the chief, having all of round 1's scores, zooms in and starts round 2. Only the chief
keeps the trials and writes the results; the workers write into a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ConfigError

VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
EXAMPLE = ("KERASTUNER_TUNER_ID=chief KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000 "
           "on the chief, KERASTUNER_TUNER_ID=tuner1 (same IP and port) on each worker")


def role() -> str:
    """"alone" (no distributed search), "chief" or "worker", from keras-tuner's variables.

    Raises:
        ConfigError: some of the variables are set but not all, or the port is not a number.
    """
    present = [name for name in VARIABLES if os.environ.get(name)]
    if not present or present == ["KERASTUNER_TUNER_ID"]:
        return "alone"  # keras-tuner itself only reads the ID when the IP is set
    missing = [name for name in VARIABLES if name not in present]
    if missing:
        raise ConfigError(f"A distributed search needs {', '.join(VARIABLES)}; "
                          f"{', '.join(missing)} not set. Set e.g. {EXAMPLE}.")
    if not os.environ["KERASTUNER_ORACLE_PORT"].isdigit():
        raise ConfigError(f"KERASTUNER_ORACLE_PORT must be a port number. Set e.g. {EXAMPLE}. "
                          f"Received: {os.environ['KERASTUNER_ORACLE_PORT']!r}")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def tuner_id() -> str:
    """This machine's KERASTUNER_TUNER_ID."""
    return os.environ.get("KERASTUNER_TUNER_ID", "tuner0")


@contextlib.contextmanager
def round_port(number: int) -> Iterator[None]:
    """While round `number` runs, KERASTUNER_ORACLE_PORT is the first round's port + number - 1
    (keras-tuner reads it when a tuner starts); unchanged when the search runs alone."""
    if role() == "alone":
        yield
        return
    first = os.environ["KERASTUNER_ORACLE_PORT"]
    os.environ["KERASTUNER_ORACLE_PORT"] = str(int(first) + number - 1)
    try:
        yield
    finally:
        os.environ["KERASTUNER_ORACLE_PORT"] = first


@contextlib.contextmanager
def tuner_folder(folder: Path) -> Iterator[Path]:
    """Where this machine's tuner keeps its files: `folder` on the chief (or alone); on a worker
    a temporary folder, removed afterwards (the chief's oracle keeps every trial)."""
    if role() != "worker":
        yield folder
        return
    temporary = Path(tempfile.mkdtemp(prefix="search_worker_"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


__all__ = ["role", "tuner_id", "round_port", "tuner_folder", "VARIABLES"]
