"""Scan a user's image folder into labelled, checked, content-hashed items.

Layouts (detected from the top-level folder names):
    * "class_folders": `root/<class>/...`, images at any depth inside a class folder.
    * "split_folders": `root/{train,val|valid|validation|dev,test}/<class>/...`, used when
      every visible top-level folder is a split name and one of them is "train". The given
      splits are kept ("val", "valid", "validation" mean dev).

Class names are the class folder names normalised to Unicode NFC (so a name typed on macOS,
stored decomposed, matches the same name typed elsewhere), sorted by code point, and fixed:
label i is `class_names[i]`. Folders whose names normalise alike are one class.

What is skipped, and reported as a `SkippedFile` with a one-line reason and a kind:
    * "hidden": names starting with "." (`.DS_Store`, macOS `._photo.jpg` AppleDouble
      files, `.git`), system files (`Thumbs.db`, `desktop.ini`) and `__MACOSX` folders.
    * "ignored": files that are not images by extension or content (`notes.txt`), files
      outside any class folder, and special files (pipes, sockets).
    * "unsupported": recognised image formats this pipeline does not decode (WebP, TIFF,
      HEIC, AVIF, RAW ...), decided by content first and by extension when the content is
      not recognised. They are also counted per format in `FolderScan.unsupported`.
    * "bad": files that claim to be images (image extension or image content) but cannot be
      used: empty, truncated, corrupt, text, too many pixels, unreadable.
    * "link": dangling symlinks and symlink loops. Symlinks are otherwise followed; each
      folder is scanned once, so loops cannot recurse forever.
    With `on_bad_file="error"` the first "bad", "unsupported" or "link" file raises a
    ValueError naming it; "hidden" and "ignored" files never do.

A file's type is decided by its content, not its extension: a PNG or GIF named `.jpg` is
used if it decodes. With `verify_decode=True` (the default) every image is fully decoded
once, the only way to catch truncated files; with False only headers are read.

Duplicates: files with identical bytes (BLAKE2b content hash) form a duplicate group.
Copies inside one class are kept (they share a content hash and so a split). Copies filed
under two or more classes are label conflicts; with `on_label_conflict="exclude"` (the
default) every copy is left out of the usable items, since no label can be trusted.
In the split layout, copies in two given splits are reported as split leaks.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    UnsupportedFormatError,
    check_image_bytes,
    sniff_format_bytes,
)
from pipeline.data.report import class_count_warnings

ON_BAD_FILE_CHOICES: tuple[str, ...] = ("skip", "error")
ON_LABEL_CONFLICT_CHOICES: tuple[str, ...] = ("exclude", "keep", "error")
SKIP_KINDS: tuple[str, ...] = ("hidden", "ignored", "unsupported", "bad", "link")
ERROR_KINDS: frozenset[str] = frozenset({"bad", "unsupported", "link"})
"""Kinds of skipped file that `on_bad_file="error"` turns into an error."""

SPLIT_FOLDER_NAMES: dict[str, str] = {
    "train": "train",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "dev": "dev",
    "test": "test",
}
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib"}
)
UNSUPPORTED_EXTENSIONS: dict[str, str] = {
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".heic": "heic",
    ".heif": "heic",
    ".avif": "avif",
    ".jxl": "jxl",
    ".jp2": "jpeg2000",
    ".svg": "svg",
    ".psd": "psd",
    ".ico": "ico",
    ".dng": "raw",
    ".cr2": "raw",
    ".nef": "raw",
    ".arw": "raw",
    ".raw": "raw",
}
_SYSTEM_FILE_REASONS = {
    ".ds_store": "macOS folder metadata (.DS_Store), not an image",
    "thumbs.db": "Windows thumbnail cache (Thumbs.db), not an image",
    "desktop.ini": "Windows folder settings (desktop.ini), not an image",
}
_SYSTEM_FOLDER_NAMES = frozenset({"__MACOSX", "@eaDir", "$RECYCLE.BIN"})
_HASH_BYTES = 16

PathGroups = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FolderItem:
    """One usable image.

    Attributes:
        path: The file as found under the root (symlinks not resolved).
        relative_path: The path relative to the root, "/"-separated, NFC-normalised.
        label: Index into `FolderScan.class_names`.
        given_split: "train", "dev" or "test" in the split layout, else None.
        content_hash: BLAKE2b (128-bit) hex digest of the file's bytes.
        size: (width, height) of the upright image, or None if unknown.
    """

    path: Path
    relative_path: str
    label: int
    given_split: str | None
    content_hash: str
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class SkippedFile:
    """A file or folder that was not used, and why.

    Attributes:
        path: The file or folder.
        reason: A one-line human reason.
        kind: One of `SKIP_KINDS` (see the module docstring).
    """

    path: Path
    reason: str
    kind: str = "bad"


@dataclass(frozen=True)
class FolderScan:
    """The result of `scan_image_folder`.

    Attributes:
        root: The scanned folder.
        class_names: Usable class names, sorted; label i names `class_names[i]`.
        items: Usable images, sorted by relative path.
        skipped: Files and folders not used, with reasons.
        unsupported: Count of unsupported image files per format (e.g. {"webp": 2}).
        duplicate_groups: Relative paths of files with identical bytes, one tuple per group.
        label_conflicts: Duplicate groups whose copies are filed under different classes.
        layout: "class_folders" or "split_folders".
        split_leaks: Duplicate groups whose copies sit in different given splits.
        excluded_classes: Class folders left out because no usable image remained.
        warnings: Human-readable warnings for the data report.
    """

    root: Path
    class_names: tuple[str, ...]
    items: tuple[FolderItem, ...]
    skipped: tuple[SkippedFile, ...]
    unsupported: dict[str, int]
    duplicate_groups: tuple[tuple[str, ...], ...]
    label_conflicts: tuple[tuple[str, ...], ...]
    layout: str
    split_leaks: tuple[tuple[str, ...], ...] = ()
    excluded_classes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every usable image whose size is known."""
        return [item.size for item in self.items if item.size is not None]


@dataclass(frozen=True)
class _ClassFolder:
    """A folder holding the images of one class (in one given split)."""

    path: Path
    relative_path: str
    class_name: str
    given_split: str | None


@dataclass(frozen=True)
class _Candidate:
    """A file found inside a class folder, not yet read."""

    path: Path
    relative_path: str
    class_name: str
    given_split: str | None


@dataclass(frozen=True)
class _Image:
    """A candidate that passed the checks."""

    candidate: _Candidate
    content_hash: str
    size: tuple[int, int]


class _SkipLog:
    """Collects skipped files and applies the `on_bad_file` policy as they arrive."""

    def __init__(self, on_bad_file: str):
        self.on_bad_file = on_bad_file
        self.entries: list[SkippedFile] = []
        self.unsupported: dict[str, int] = defaultdict(int)

    def add(self, path: Path, reason: str, kind: str) -> None:
        """Records one skipped path, or raises if the policy says so."""
        if self.on_bad_file == "error" and kind in ERROR_KINDS:
            raise ValueError(
                f"Cannot use '{path}': {reason.rstrip('.')}. Fix or remove the file, or pass "
                "on_bad_file='skip' (config data.on_bad_file: skip) to skip and report it."
            )
        self.entries.append(SkippedFile(path=path, reason=reason, kind=kind))

    def add_unsupported(self, path: Path, image_format: str, reason: str) -> None:
        """Records an unsupported image and counts its format."""
        self.add(path, reason, "unsupported")
        self.unsupported[image_format] += 1


def scan_image_folder(
    root: Path,
    *,
    on_bad_file: str = "skip",
    on_label_conflict: str = "exclude",
    verify_decode: bool = True,
    show_progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FolderScan:
    """Finds, labels, checks and hashes every image in a user's folder.

    See the module docstring for the layouts and for the skip, duplicate and conflict
    policies.

    Args:
        root: The folder: `root/<class>/...` or `root/{train,val,test}/<class>/...`.
        on_bad_file: "skip" to skip and report bad files, "error" to raise on the first.
        on_label_conflict: What to do with identical files under different classes:
            "exclude" them all (default), "keep" them, or raise an "error".
        verify_decode: Fully decode every image (catches truncated files; slower).
        show_progress: Show a tqdm progress bar while reading files.
        max_pixels: Largest width x height accepted (config key `data.max_image_pixels`).

    Returns:
        The usable items and everything that was left out, with reasons.

    Raises:
        FileNotFoundError: If `root` does not exist.
        ValueError: If `root` is not a folder, has fewer than two usable classes, an
            option is invalid, or a policy set to "error" is triggered.

    Example:
        >>> scan = scan_image_folder(Path("~/photos").expanduser())
        >>> scan.class_names
        ('cat', 'dog')
    """
    root = _checked_root(root)
    _check_choice("on_bad_file", on_bad_file, ON_BAD_FILE_CHOICES)
    _check_choice("on_label_conflict", on_label_conflict, ON_LABEL_CONFLICT_CHOICES)
    skip_log = _SkipLog(on_bad_file)
    visited: set[tuple[int, int]] = set()
    layout, class_folders = _find_class_folders(root, skip_log, visited)
    candidates = _find_candidates(class_folders, skip_log, visited)
    images = _check_candidates(candidates, skip_log, verify_decode, show_progress, max_pixels)
    duplicate_groups, label_conflicts, split_leaks = _find_duplicates(images)
    images = _apply_conflict_policy(images, label_conflicts, on_label_conflict)
    all_class_names = sorted({folder.class_name for folder in class_folders})
    class_names = sorted({image.candidate.class_name for image in images})
    excluded = tuple(name for name in all_class_names if name not in class_names)
    _check_enough_classes(root, class_names, excluded, skip_log.entries)
    items = _build_items(images, class_names)
    return FolderScan(
        root=root,
        class_names=tuple(class_names),
        items=items,
        skipped=tuple(skip_log.entries),
        unsupported=dict(sorted(skip_log.unsupported.items())),
        duplicate_groups=duplicate_groups,
        label_conflicts=label_conflicts,
        layout=layout,
        split_leaks=split_leaks,
        excluded_classes=excluded,
        warnings=_scan_warnings(
            class_names, items, excluded, label_conflicts, split_leaks, on_label_conflict
        ),
    )


def _checked_root(root: Path) -> Path:
    """Returns `root` as a Path if it is an existing folder, else raises naming the fix."""
    root = Path(root).expanduser()
    example = f"{root}/cat/1.jpg and {root}/dog/2.jpg"
    if not root.exists():
        raise FileNotFoundError(
            f"Image folder '{root}' does not exist. Expected a folder with one sub-folder "
            f"per class, e.g. {example}. Check the path."
        )
    if not root.is_dir():
        raise ValueError(
            f"'{root}' is a file, not a folder. Expected a folder with one sub-folder per "
            f"class, e.g. {example}."
        )
    return root


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a ValueError if an option is not one of its choices."""
    if value not in choices:
        raise ValueError(
            f"Unknown {name} '{value}'. Expected one of: {', '.join(choices)}. "
            f"Received: {name}={value!r}."
        )


def _nfc(text: str) -> str:
    """Normalises text to Unicode NFC."""
    return unicodedata.normalize("NFC", text)


def _find_class_folders(
    root: Path, skip_log: _SkipLog, visited: set[tuple[int, int]]
) -> tuple[str, list[_ClassFolder]]:
    """Detects the layout and lists the class folders (one per class and given split)."""
    top_folders, top_files = _list_folder(root, skip_log, visited)
    for path in top_files:
        skip_log.add(path, "not inside a class folder, so it has no label", "ignored")
    split_names = {_nfc(path.name).lower() for path in top_folders}
    is_split_layout = "train" in split_names and split_names <= set(SPLIT_FOLDER_NAMES)
    if not is_split_layout:
        folders = [
            _ClassFolder(path, _nfc(path.name), _nfc(path.name), None) for path in top_folders
        ]
        return "class_folders", _require_class_folders(root, folders, top_files)
    folders = []
    for split_path in top_folders:
        given_split = SPLIT_FOLDER_NAMES[_nfc(split_path.name).lower()]
        class_paths, split_files = _list_folder(split_path, skip_log, visited)
        for path in split_files:
            skip_log.add(path, "not inside a class folder, so it has no label", "ignored")
        folders += [
            _ClassFolder(
                path, f"{_nfc(split_path.name)}/{_nfc(path.name)}", _nfc(path.name), given_split
            )
            for path in class_paths
        ]
    return "split_folders", _require_class_folders(root, folders, top_files)


def _require_class_folders(
    root: Path, folders: list[_ClassFolder], top_files: list[Path]
) -> list[_ClassFolder]:
    """Raises if the root holds no class folder at all."""
    if folders:
        return folders
    found = f" It holds {len(top_files)} file(s) directly; " if top_files else " "
    raise ValueError(
        f"Image folder '{root}' has no class folders.{found}Expected one sub-folder per "
        f"class with the images inside, e.g. {root}/cat/1.jpg and {root}/dog/2.jpg."
    )


def _list_folder(
    folder: Path, skip_log: _SkipLog, visited: set[tuple[int, int]]
) -> tuple[list[Path], list[Path]]:
    """Lists a folder's usable sub-folders and files, sorted, logging everything else.

    Symlinks are followed; a folder already scanned (a loop, or a second link to it) is
    logged instead of listed again.
    """
    try:
        folder_stat = os.stat(folder)
    except OSError as error:
        skip_log.add(folder, _link_reason(folder, error), "link")
        return [], []
    if (folder_stat.st_dev, folder_stat.st_ino) in visited:
        skip_log.add(
            folder,
            "symlink to a folder already scanned (a loop or a second "
            "link to it); skipped so files are not read twice",
            "link",
        )
        return [], []
    visited.add((folder_stat.st_dev, folder_stat.st_ino))
    folders: list[Path] = []
    files: list[Path] = []
    try:
        with os.scandir(folder) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
    except OSError as error:
        skip_log.add(folder, f"cannot list folder: {error.strerror or error}", "bad")
        return [], []
    for entry in entries:
        kind = _entry_kind(Path(entry.path), skip_log)
        if kind == "folder":
            folders.append(Path(entry.path))
        elif kind == "file":
            files.append(Path(entry.path))
    return folders, files


def _entry_kind(path: Path, skip_log: _SkipLog) -> str | None:
    """Says whether a folder entry is a "folder" or "file" to use; logs and returns None
    for hidden entries, broken links and special files."""
    hidden_reason = _hidden_reason(path.name)
    if hidden_reason is not None:
        skip_log.add(path, hidden_reason, "hidden")
        return None
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except OSError as error:
        skip_log.add(path, _link_reason(path, error), "link")
        return None
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    skip_log.add(path, "not a regular file (pipe, socket or device)", "ignored")
    return None


def _hidden_reason(name: str) -> str | None:
    """Why a file or folder name is hidden or system metadata, or None if it is not."""
    if name.lower() in _SYSTEM_FILE_REASONS:
        return _SYSTEM_FILE_REASONS[name.lower()]
    if name.startswith("._"):
        return "macOS AppleDouble metadata file (._ prefix), not an image"
    if name in _SYSTEM_FOLDER_NAMES:
        return f"system folder ({name}), not images"
    if name.startswith("."):
        return "hidden file or folder (name starts with '.')"
    return None


def _link_reason(path: Path, error: OSError) -> str:
    """A one-line reason for a path that `os.stat` cannot follow."""
    if not path.is_symlink():
        return f"cannot read: {error.strerror or error}"
    if isinstance(error, FileNotFoundError):
        return f"dangling symlink: its target '{os.readlink(path)}' does not exist"
    return f"symlink loop: the link cannot be resolved ({error.strerror or error})"


def _find_candidates(
    class_folders: Iterable[_ClassFolder],
    skip_log: _SkipLog,
    visited: set[tuple[int, int]],
) -> list[_Candidate]:
    """Lists every file at any depth inside the class folders."""
    candidates: list[_Candidate] = []
    for class_folder in class_folders:
        pending = [(class_folder.path, class_folder.relative_path)]
        while pending:
            folder, relative_folder = pending.pop()
            sub_folders, files = _list_folder(folder, skip_log, visited)
            pending += [(path, f"{relative_folder}/{_nfc(path.name)}") for path in sub_folders]
            candidates += [
                _Candidate(
                    path,
                    f"{relative_folder}/{_nfc(path.name)}",
                    class_folder.class_name,
                    class_folder.given_split,
                )
                for path in files
            ]
    return sorted(candidates, key=lambda candidate: candidate.relative_path)


def _check_candidates(
    candidates: list[_Candidate],
    skip_log: _SkipLog,
    verify_decode: bool,
    show_progress: bool,
    max_pixels: int,
) -> list[_Image]:
    """Reads, checks and hashes every candidate file, logging those that are not usable."""
    images: list[_Image] = []
    with tqdm(
        candidates, desc="Scanning images", unit="file", disable=not show_progress
    ) as progress:
        for candidate in progress:
            image = _check_candidate(candidate, skip_log, verify_decode, max_pixels)
            if image is not None:
                images.append(image)
    return images


def _check_candidate(
    candidate: _Candidate, skip_log: _SkipLog, verify_decode: bool, max_pixels: int
) -> _Image | None:
    """Reads one file; returns it as an image or logs why it is skipped."""
    path = candidate.path
    try:
        data = path.read_bytes()
    except OSError as error:
        skip_log.add(path, f"cannot read file: {error.strerror or error}", "bad")
        return None
    extension = path.suffix.lower()
    if sniff_format_bytes(data[:32]) is None and extension not in IMAGE_EXTENSIONS:
        _log_unrecognised(path, extension, len(data), skip_log)
        return None
    try:
        info = check_image_bytes(data, max_pixels=max_pixels, decode=verify_decode)
    except UnsupportedFormatError as error:
        skip_log.add_unsupported(path, error.image_format, str(error))
        return None
    except ImageDecodeError as error:
        skip_log.add(path, str(error), "bad")
        return None
    content_hash = hashlib.blake2b(data, digest_size=_HASH_BYTES).hexdigest()
    return _Image(candidate, content_hash, (info.width, info.height))


def _log_unrecognised(path: Path, extension: str, num_bytes: int, skip_log: _SkipLog) -> None:
    """Logs a file whose content is no known image and whose extension is no image one."""
    if extension in UNSUPPORTED_EXTENSIONS:
        image_format = UNSUPPORTED_EXTENSIONS[extension]
        reason = (
            f"unsupported image format '{image_format}' (by extension {extension}); "
            "convert the file (e.g. to PNG or JPEG) to use it"
        )
        skip_log.add_unsupported(path, image_format, reason)
    else:
        described = f"extension '{extension}'" if extension else "no extension"
        skip_log.add(path, f"not an image file ({described}, {num_bytes} bytes)", "ignored")


def _find_duplicates(images: list[_Image]) -> tuple[PathGroups, PathGroups, PathGroups]:
    """Groups identical files; returns (all groups, label conflicts, split leaks)."""
    by_hash: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_hash[image.content_hash].append(image)
    groups = [group for group in by_hash.values() if len(group) > 1]
    duplicates = _relative_paths(groups)
    conflicts = _relative_paths(
        group for group in groups if len({image.candidate.class_name for image in group}) > 1
    )
    leaks = _relative_paths(
        group for group in groups if len({image.candidate.given_split for image in group}) > 1
    )
    return duplicates, conflicts, leaks


def _relative_paths(groups: Iterable[list[_Image]]) -> PathGroups:
    """Sorted relative paths per group, groups sorted by their first path."""
    return tuple(
        sorted(tuple(sorted(image.candidate.relative_path for image in group)) for group in groups)
    )


def _apply_conflict_policy(
    images: list[_Image], label_conflicts: PathGroups, policy: str
) -> list[_Image]:
    """Drops, keeps or raises on images whose identical copies carry other labels."""
    if not label_conflicts or policy == "keep":
        return images
    if policy == "error":
        first = ", ".join(label_conflicts[0])
        raise ValueError(
            f"{len(label_conflicts)} group(s) of identical files are filed under different "
            f"classes, e.g. {first}. Keep each image in one class folder only, or pass "
            "on_label_conflict='exclude' to leave such files out."
        )
    conflicted = {path for group in label_conflicts for path in group}
    return [image for image in images if image.candidate.relative_path not in conflicted]


def _check_enough_classes(
    root: Path,
    class_names: list[str],
    excluded: tuple[str, ...],
    skipped: list[SkippedFile],
) -> None:
    """Raises if fewer than two classes have a usable image."""
    if len(class_names) >= 2:
        return
    found = ", ".join(f"'{name}'" for name in class_names) or "none"
    empty = f" Class folders without usable images: {', '.join(excluded)}." if excluded else ""
    raise ValueError(
        f"Image folder '{root}' has {len(class_names)} usable class(es) ({found}); a "
        f"classifier needs at least 2.{empty} {len(skipped)} file(s) were skipped. Expected "
        f"one sub-folder per class with images inside, e.g. {root}/cat/1.jpg and "
        f"{root}/dog/2.jpg."
    )


def _build_items(images: list[_Image], class_names: list[str]) -> tuple[FolderItem, ...]:
    """Turns checked images into labelled items."""
    label_of = {name: label for label, name in enumerate(class_names)}
    return tuple(
        FolderItem(
            path=image.candidate.path,
            relative_path=image.candidate.relative_path,
            label=label_of[image.candidate.class_name],
            given_split=image.candidate.given_split,
            content_hash=image.content_hash,
            size=image.size,
        )
        for image in images
    )


def _scan_warnings(
    class_names: list[str],
    items: tuple[FolderItem, ...],
    excluded: tuple[str, ...],
    label_conflicts: PathGroups,
    split_leaks: PathGroups,
    on_label_conflict: str,
) -> tuple[str, ...]:
    """Warnings about what the scan changed or found suspicious."""
    warnings = [
        f"Class folder '{name}' has no usable images; it was left out of the class list."
        for name in excluded
    ]
    counts = [sum(item.label == label for item in items) for label in range(len(class_names))]
    warnings += class_count_warnings(class_names, counts)
    if label_conflicts:
        action = "all copies were left out" if on_label_conflict == "exclude" else "kept"
        warnings.append(
            f"{len(label_conflicts)} group(s) of identical files are filed under different "
            f"classes (label conflicts); {action}. Keep each image in one class folder."
        )
    if split_leaks:
        warnings.append(
            f"{len(split_leaks)} group(s) of identical files sit in different given splits, "
            "so evaluation sees training images; remove the extra copies."
        )
    return tuple(warnings)
