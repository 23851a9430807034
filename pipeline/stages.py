"""The lock file and skip-if-fresh.

Each stage records in `runs/<name>/lock.json` a fingerprint of what it read: its slice of the
resolved config and the hashes of its input artifacts. When a stage is asked to run again and
that fingerprint is unchanged and its outputs are still there as it wrote them (their content
hashes are in the lock file too), it is skipped, like `make` or a DVC lock file. A stage that
fails or is killed records nothing, so it runs again next time; an output damaged or removed
since makes its stage run again, with a line saying why. The pipeline's own code is an input
too (`code_digest`, part of the data stage's fingerprint and so of every stage's): after an
upgrade or an edit of the package, every stage runs again, with a line saying why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.atomic import sha256_of, write_json
from pipeline.errors import RunInUseError

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; runs are not guarded there
    fcntl = None

LOCK_FILE_OF_PROCESS = ".in_use"
_HELD: set[Path] = set()

LOCK_FILE = "lock.json"


def fingerprint(config_slice: Any, inputs: list[Path] = ()) -> str:
    """A hash of a stage's config slice and the contents of its input files."""
    digest = hashlib.sha256(json.dumps(config_slice, sort_keys=True, default=str).encode())
    for path in sorted(Path(p) for p in inputs):
        digest.update(str(path).encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file, or of every file under a folder (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        digest.update(sha256_of(file).encode())
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 of the `pipeline` package's source files (names included), computed once per
    process: a stage's outputs depend on the code that wrote them as much as on its config."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(package)).encode())
            digest.update(sha256_of(path).encode())
    return digest.hexdigest()[:16]


def read_lock(run_dir: Path) -> dict:
    """The lock file's entries; a damaged lock file (written atomically, so damaged from
    outside) counts as empty, with a line saying so: every stage then runs again."""
    path = run_dir / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(lock, dict) and all(isinstance(entry, dict) for entry in lock.values()):
            return lock
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    print(f"{path} is damaged (not the JSON this pipeline writes); ignoring it, so every "
          f"stage runs again.")
    return {}


def stale_reason(run_dir: Path, stage: str, stage_fingerprint: str) -> str | None:
    """Why the stage must run again, or None when it last succeeded with this fingerprint
    and every output is still there, byte for byte as it wrote them."""
    entry = read_lock(run_dir).get(stage)
    if not entry:
        return "it has not run in this folder"
    if entry.get("fingerprint") != stage_fingerprint:
        if entry.get("code", code_digest()) != code_digest():
            return "the pipeline's code changed since it last ran (an upgrade or an edit)"
        return "its inputs changed"
    digests = entry.get("digests", {})
    for output in entry.get("outputs", []):
        path = run_dir / output
        if not path.exists():
            return f"its output {path} is missing"
        if output in digests and file_digest(path) != digests[output]:
            return f"its output {path} changed since the stage wrote it (damaged or edited)"
    return None


def is_fresh(run_dir: Path, stage: str, stage_fingerprint: str) -> bool:
    """True when the stage last succeeded with this fingerprint and its outputs are intact."""
    return stale_reason(run_dir, stage, stage_fingerprint) is None


def record_stage(run_dir: Path, stage: str, stage_fingerprint: str, outputs: list[str],
                 extra: dict | None = None) -> None:
    """Marks a stage as done, with the content hash of each output (so that an output damaged
    or replaced later is noticed); called only after all its outputs were written."""
    lock = read_lock(run_dir)
    digests = {output: file_digest(run_dir / output) for output in outputs}
    lock[stage] = {"fingerprint": stage_fingerprint, "outputs": outputs, "digests": digests,
                   "code": code_digest(), **(extra or {})}
    write_json(run_dir / LOCK_FILE, lock)


def run_stage(run_dir: Path, stage: str, stage_fingerprint: str, work: Callable[[], list[str]],
              *, force: bool = False) -> bool:
    """Runs `work` unless the stage is fresh. `work` returns output paths relative to run_dir.

    Returns:
        True if the stage ran, False if it was skipped as fresh.
    """
    reason = stale_reason(run_dir, stage, stage_fingerprint)
    if not force and reason is None:
        print(f"[{stage}] up to date (inputs unchanged since the last run); skipped. "
              f"Pass --force to run it again.")
        return False
    if reason and ("output" in reason or "code" in reason):
        print(f"[{stage}] runs again: {reason}.")
    outputs = work()
    record_stage(run_dir, stage, stage_fingerprint, outputs)
    return True


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Holds the run folder for this process: a second process asking for it fails at once.

    An advisory OS lock on `run_dir/.in_use`, which holds the holder's process id; the OS
    releases it when the process ends, however it ends, so a killed run never leaves the
    folder locked. Re-entrant within one process.

    Raises:
        RunInUseError: another live process holds the folder; the message names its id.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD or fcntl is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE_OF_PROCESS, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "unknown"
            raise RunInUseError(
                f"Run folder '{run_dir}' is in use by process {other}, which is writing it now. "
                f"Wait for it to finish (or stop it), or run under another name: "
                f"ARGS=\"name=<other name>\".") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD.add(run_dir)
        try:
            yield
        finally:
            _HELD.discard(run_dir)
            fcntl.flock(handle, fcntl.LOCK_UN)
