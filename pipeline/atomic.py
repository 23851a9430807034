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
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

PARTIAL = ".partial-"  # in the names of the temporary folders writes go through


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`, moved into place only if the block succeeds.

    Works for files and folders: the block creates whatever it likes at the yielded path. An
    existing folder at `path` is replaced; missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent))
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


def remove_partial_writes(folder: Path, name: str = "*") -> list[Path]:
    """Removes what killed writers left under `folder` (their temporary folders, hidden and
    named `.<name>.partial-*`, never mistaken for output); call it only while holding the
    folder (`pipeline.stages.run_folder_lock`), since a live writer's folder looks the same.

    Returns:
        The removed paths.
    """
    partial = sorted(Path(folder).rglob(f".{name}{PARTIAL}*")) if Path(folder).is_dir() else []
    for path in partial:
        _remove(path)
    return partial


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


SEAL_FILE = "SHA256SUMS"


def sha256_of(path: Path) -> str:
    """The sha256 of one file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: Path) -> None:
    """Writes `folder/SHA256SUMS`, the hash of every file in it (in `sha256sum`'s format, so
    `sha256sum -c SHA256SUMS` checks it by hand). Seal a folder inside its `atomic_path`
    block: then `is_intact` tells later whether it is still exactly as written."""
    lines = [f"{sha256_of(path)}  {path.relative_to(folder).as_posix()}"
             for path in sorted(Path(folder).rglob("*")) if path.is_file()]
    (Path(folder) / SEAL_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def is_intact(folder: Path) -> bool:
    """True when `folder` holds exactly the files its seal lists, with their hashes."""
    folder = Path(folder)
    try:
        lines = (folder / SEAL_FILE).read_text(encoding="utf-8").splitlines()
        listed = {name: digest for digest, name in (line.split("  ", 1) for line in lines)}
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    present = {path.relative_to(folder).as_posix() for path in folder.rglob("*")
               if path.is_file() and path.name != SEAL_FILE}
    return present == set(listed) and all(sha256_of(folder / name) == digest
                                          for name, digest in listed.items())


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
