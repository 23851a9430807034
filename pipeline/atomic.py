"""Atomic writes: every file and folder the pipeline writes appears whole or not at all.

Each writer fills a temporary sibling of the destination (same folder, so the same file
system) and moves it into place with `os.replace`, which is atomic; a write that fails or is
killed leaves the destination as it was, with no file that looks complete. Files are flushed
to disk before the move, and made readable like any other file (0644).

    write_json(run_dir / "metrics.json", metrics)
    with atomic_path(run_dir / "data") as folder:   # a whole folder
        folder.mkdir()
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`, moved into place only if the block succeeds.

    Works for files and folders: the block creates whatever it likes at the yielded path. An
    existing folder at `path` is replaced; missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = temporary / path.name
    try:
        yield target
        if target.is_file():
            os.chmod(target, 0o644)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        _remove(temporary)


def write_with(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Writes `path` through `write(handle)`, given a binary handle (e.g. `figure.savefig`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_bytes(path: Path, data: bytes) -> Path:
    """Writes bytes atomically."""
    return write_with(path, lambda handle: handle.write(data))


def write_text(path: Path, text: str) -> Path:
    """Writes UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> Path:
    """Writes indented UTF-8 JSON atomically; NumPy values and paths become plain JSON."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False,
                                       default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
