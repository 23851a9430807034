"""Scan a user's image folder into labelled, checked, content-hashed items.

Layouts, decided from folder names and structure before any image file is read (the result
is in `FolderScan.layout`, `given_splits`, `split_folder_names` and `layout_description`):
    * Wrapper folders: while the root holds exactly one visible folder and no image files,
      and that folder holds sub-folders but no image files and is not named like a split,
      the scan descends into it (a Kaggle download `archive/chest_xray/{train,val,test}`).
      It also descends into the one folder of images among folders that hold files but no
      images (Food-101's `images/<class>/` beside `meta/`), skipping the others.
      `FolderScan.root_used` is the folder reached; relative paths stay relative to `root`.
    * "split_folders" by name: every visible top-level folder (the skipped folders below
      aside) is named like a split (see below) and a train folder holds sub-folders. Each
      split folder's sub-folders are its classes; the class sets may differ (a class missing
      from test is fine). Two folders named like one split (`train/`, `training/`) are an
      error. Beside the split folders (train among them), folders without images (Fruits-360's
      `papers/`) and folders of loose images (its `test-multiple_fruits/`) are skipped with a
      warning; a dev or test folder whose folders match none of train's classes (Tiny
      ImageNet's `val/images/`) gives no split, with a warning.
    * "split_folders" by structure: two or more top-level folders that all hold the same set
      of at least two sub-folder names (NFC, case-insensitive) look like split folders,
      whatever their names. When exactly one is named like no split and the others like
      distinct splits other than train (`rps/` beside `rps-test-set/`), it is train, with a
      warning. When the names do not say which split is which (`part1/`,
      `part2/`; or classes `cat/{indoor,outdoor}`, `dog/{indoor,outdoor}`) it is an error
      naming both fixes: `split_folders` (config `data.split_folders`) or
      `layout="class_folders"` (config `data.layout`).
    * "class_folders": otherwise, `root/<class>/...`, images at any depth in a class folder.
      In the auto layout, folders that are plainly no classes are an error before any image
      is read: one named like a dataset's image folder (`IMAGE_SET_FOLDER_NAMES`: Oxford
      Pets' `images/` beside `annotations/`), or names that differ only by a number, like
      parts of one download, either named so (`images_001`, `HAM10000_images_part_1`) or
      beside a label file (`part_1/`, `part_2/` beside `metadata.csv`).
      When every top-level folder is named like a split but the train folder holds no
      sub-folders (`train/*.jpg`, `test/*.jpg`), no image has a label: that is an error.

Split names (`split_of_folder_name`), compared in NFC lower case, as the whole name, as a
token of it (split on `_ - . space`: `seg_train`, `Data-Train`, `train_images`, `TEST SET`) or
as two adjacent tokens (`train_set`):
    * train: train, training, training_set, train_set, trainset, trn, train_data,
      training_data; also trainval and train_val (train and val merged, as in PASCAL VOC).
    * dev: val, valid, validation, dev, val_set, valset, validation_set, development.
    * test: test, testing, test_set, testset, eval, evaluation, tst.
    A name matching two different splits (`train_test`) is no split name.
In a split layout:
    * A split folder holding only one folder named like itself or its split
      (`seg_train/seg_train/<class>`) is unwrapped, repeatedly.
    * A split folder holding no class folders (a Kaggle `test/` of unlabelled images) gives
      no split: its files are skipped as "ignored" and a warning counts them.
    * Folders named like unlabelled data (a name or token among `UNLABELLED_FOLDER_NAMES`:
      `pred`, `seg_pred`, `unlabeled`, `inference` ...) are skipped with a warning, and so
      are folders, not named like splits, that hold split folders of their own, train among
      them (Kaggle's chest_xray repeats `train/`, `val/`, `test/` in `chest_xray/chest_xray/`).
      When the one such folder has no split folder of class folders beside it, the layout
      inside it is used and the folders beside it are skipped with a warning (Kaggle's New
      Plant Diseases: `<name>/<name>/{train,valid}/` beside an unlabelled `test/test/`).
Explicit control: `layout="class_folders"` never looks for splits (wrappers are still
unwrapped); `layout="split_folders"` raises when no split folders are found;
`split_folders={"train": "part1", "test": "part2"}` (keys among train, dev, test, train
required; values folder paths relative to `root`, nested ones like `a/b` allowed) names the
split folders, and every other top-level folder is skipped with a warning.

Class names are the class folder names normalised to Unicode NFC (so a name typed on macOS,
stored decomposed, matches the same name typed elsewhere), sorted by code point, and fixed:
label i is `class_names[i]`. Folders whose names normalise alike are one class.

What is skipped, and reported as a `SkippedFile` with a one-line reason and a kind:
    * "hidden": names starting with "." (`.DS_Store`, macOS `._photo.jpg` AppleDouble
      files, `.git`), system files (`Thumbs.db`, `desktop.ini`) and `__MACOSX` folders.
    * "ignored": files that are not images by extension or content (`notes.txt`), files
      outside any class folder, and special files (pipes, sockets).
    * "unsupported": recognised image formats this pipeline does not decode (TIFF, HEIC,
      AVIF, RAW ...), decided by content first and by extension when the content is
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
In a split layout, copies in two given splits are reported as split leaks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import re
import stat
import typing
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.config import Layout, OnBadFile
from pipeline.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    UnsupportedFormatError,
    check_image_bytes,
    sniff_format_bytes,
)
from pipeline.data.report import class_count_warnings
from pipeline.data.splits import SPLIT_NAMES
from pipeline.data.stream import default_decode_threads, ordered_map
from pipeline.errors import DataError, MissingInputError

ON_BAD_FILE_CHOICES: tuple[str, ...] = typing.get_args(OnBadFile)
ON_LABEL_CONFLICT_CHOICES: tuple[str, ...] = ("exclude", "keep", "error")
SKIP_KINDS: tuple[str, ...] = ("hidden", "ignored", "unsupported", "bad", "link")
ERROR_KINDS: frozenset[str] = frozenset({"bad", "unsupported", "link"})
"""Kinds of skipped file that `on_bad_file="error"` turns into an error."""

LAYOUT_CHOICES: tuple[str, ...] = typing.get_args(Layout)
SPLIT_FOLDER_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ("train", "training", "training_set", "train_set", "trainset", "trn", "train_data"),
        "train",
    ),
    **dict.fromkeys(("training_data", "trainval", "train_val"), "train"),
    **dict.fromkeys(
        ("val", "valid", "validation", "dev", "val_set", "valset", "validation_set"), "dev"
    ),
    "development": "dev",
    **dict.fromkeys(
        ("test", "testing", "test_set", "testset", "eval", "evaluation", "tst"), "test"
    ),
}
"""Split folder names (and name tokens), lower-case NFC, and the split each one means."""
UNLABELLED_FOLDER_NAMES: frozenset[str] = frozenset(
    {"pred", "predict", "prediction", "predictions", "unlabeled", "unlabelled", "inference"}
)
"""Folder names (and name tokens) of images without labels, such as Kaggle's `seg_pred`."""
_TRAIN_AND_DEV_NAMES = frozenset({"trainval", "train_val"})
_NAME_SEPARATORS = re.compile(r"[_\-. ]+")
_NUMBERED_TOKEN = re.compile(r"([^\W\d_]+)\d+")
# Files whose labels this pipeline does not read (it reads them from folder names): tables of
# any name, and text files named like labels (`labels.txt`, `val_annotations.txt`; not
# `README.txt`).
_LABEL_FILE_SUFFIXES = frozenset({".csv", ".tsv", ".json", ".xlsx"})
_LABEL_TEXT_WORDS = ("label", "class", "annotation", "meta", "solution", "truth", "categor")
IMAGE_SET_FOLDER_NAMES: frozenset[str] = frozenset(
    {"images", "image", "imgs", "img", "jpegimages", "photos", "pictures", "pics"}
)
"""Folder names that say "a dataset's images", never one class (Oxford Pets' `images/`
beside `annotations/`, PASCAL VOC's `JPEGImages/`)."""
_PART_WORDS = IMAGE_SET_FOLDER_NAMES | {"part", "batch", "chunk", "shard", "set", "folder", "dir"}
_NUMBERED_NAME = re.compile(r"(.*?)[_\-. ]*(\d+)")
UNSUPPORTED_EXTENSIONS: dict[str, str] = {
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
        given_split: "train", "dev" or "test" in a split layout, else None.
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
        root: The folder passed to `scan_image_folder`; relative paths are relative to it.
        class_names: Usable class names, sorted; label i names `class_names[i]`.
        items: Usable images, sorted by relative path.
        skipped: Files and folders not used, with reasons.
        unsupported: Count of unsupported image files per format (e.g. {"tiff": 2}).
        duplicate_groups: Relative paths of files with identical bytes, one tuple per group.
        label_conflicts: Duplicate groups whose copies are filed under different classes.
        layout: "class_folders" or "split_folders".
        root_used: The folder the layout was read from: `root`, or the folder reached by
            descending through wrapper folders (e.g. `root/archive/chest_xray`).
        split_leaks: Duplicate groups whose copies sit in different given splits.
        excluded_classes: Class folders left out because no usable image remained.
        warnings: Human-readable warnings for the data report.
        given_splits: The splits the layout gave, in train, dev, test order (a split folder
            without class folders gives none); empty for class folders.
        split_folder_names: Split -> the folder used for it, "/"-separated and relative to
            `root` (e.g. {"train": "training_set", "test": "test_set"}); a valid
            `split_folders` argument. Empty for class folders.
        layout_description: One line saying what was detected, for the data report, e.g.
            "Split folders found: training_set -> train, test_set -> test (no dev folder)."
    """

    root: Path
    class_names: tuple[str, ...]
    items: tuple[FolderItem, ...]
    skipped: tuple[SkippedFile, ...]
    unsupported: dict[str, int]
    duplicate_groups: tuple[tuple[str, ...], ...]
    label_conflicts: tuple[tuple[str, ...], ...]
    layout: str
    root_used: Path
    split_leaks: tuple[tuple[str, ...], ...] = ()
    excluded_classes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    given_splits: tuple[str, ...] = ()
    split_folder_names: dict[str, str] = field(default_factory=dict)
    layout_description: str = ""

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
class _Layout:
    """What the folder names and structure say, decided before any image file is read."""

    name: str
    root_used: Path
    class_folders: tuple[_ClassFolder, ...]
    split_folder_names: dict[str, str]
    description: str
    warnings: tuple[str, ...] = ()


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
            raise DataError(
                f"Cannot use '{path}': {reason.rstrip('.')}. Fix or remove the file, or pass "
                "on_bad_file='skip' (config data.on_bad_file: skip) to skip and report it."
            )
        self.entries.append(SkippedFile(path=path, reason=reason, kind=kind))

    def add_unsupported(self, path: Path, image_format: str, reason: str) -> None:
        """Records an unsupported image and counts its format."""
        self.add(path, reason, "unsupported")
        self.unsupported[image_format] += 1


class _FolderLister:
    """Lists each folder once (layout detection looks ahead), logging what it skips."""

    def __init__(self, skip_log: _SkipLog):
        self.skip_log = skip_log
        self.visited: set[tuple[int, int]] = set()
        self.listings: dict[Path, tuple[list[Path], list[Path]]] = {}

    def contents(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """The folder's usable (sub-folders, files), sorted; see `_list_folder`."""
        if folder not in self.listings:
            self.listings[folder] = _list_folder(folder, self.skip_log, self.visited)
        return self.listings[folder]

    def log_unlabelled_files(self, files: Iterable[Path]) -> None:
        """Logs files found outside any class folder."""
        for path in files:
            self.skip_log.add(path, "not inside a class folder, so it has no label", "ignored")


def scan_image_folder(
    root: Path,
    *,
    layout: str = "auto",
    split_folders: Mapping[str, str] | None = None,
    on_bad_file: str = "skip",
    on_label_conflict: str = "exclude",
    verify_decode: bool = True,
    show_progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FolderScan:
    """Finds, labels, checks and hashes every image in a user's folder.

    See the module docstring for the layout rules and for the skip, duplicate and conflict
    policies.

    Args:
        root: The folder: `root/<class>/...` or `root/{train,val,test}/<class>/...`, possibly
            inside wrapper folders.
        layout: One of `LAYOUT_CHOICES` (config key `data.layout`): "auto" detects the
            layout, "class_folders" never looks for split folders, "split_folders" raises
            when none are found.
        split_folders: Split ("train", "dev", "test"; train required) -> folder path relative
            to `root` (config key `data.split_folders`), e.g. {"train": "part1", "test":
            "part2"}. Names the split folders; other top-level folders are skipped. None or
            empty to detect them.
        on_bad_file: "skip" to skip and report bad files, "error" to raise on the first.
        on_label_conflict: What to do with identical files under different classes:
            "exclude" them all (default), "keep" them, or raise an "error".
        verify_decode: Fully decode every image (catches truncated files; slower).
        show_progress: Show a tqdm progress bar while reading files.
        max_pixels: Largest width x height accepted (config key `data.max_image_pixels`).

    Returns:
        The usable items and everything that was left out, with reasons.

    Raises:
        MissingInputError: If `root` does not exist.
        DataError: If `root` is not a folder, has fewer than two usable classes, its layout
            is ambiguous, an option is invalid, or a policy set to "error" is triggered.

    Example:
        >>> scan = scan_image_folder(Path("~/photos").expanduser())
        >>> scan.class_names
        ('cat', 'dog')
        >>> scan_image_folder(Path("~/parts").expanduser(),
        ...                   split_folders={"train": "part1", "test": "part2"}).given_splits
        ('train', 'test')
    """
    root = _checked_root(root)
    _check_choice("layout", layout, LAYOUT_CHOICES)
    _check_choice("on_bad_file", on_bad_file, ON_BAD_FILE_CHOICES)
    _check_choice("on_label_conflict", on_label_conflict, ON_LABEL_CONFLICT_CHOICES)
    skip_log = _SkipLog(on_bad_file)
    lister = _FolderLister(skip_log)
    found = _find_layout(root, lister, layout, split_folders)
    candidates = _find_candidates(found.class_folders, lister)
    images = _check_candidates(candidates, skip_log, verify_decode, show_progress, max_pixels)
    duplicate_groups, label_conflicts, split_leaks = _find_duplicates(images)
    images = _apply_conflict_policy(images, label_conflicts, on_label_conflict)
    all_class_names = sorted({folder.class_name for folder in found.class_folders})
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
        layout=found.name,
        root_used=found.root_used,
        split_leaks=split_leaks,
        excluded_classes=excluded,
        warnings=found.warnings
        + _scan_warnings(
            class_names, items, excluded, label_conflicts, split_leaks, on_label_conflict
        ),
        given_splits=tuple(split for split in SPLIT_NAMES if split in found.split_folder_names),
        split_folder_names=found.split_folder_names,
        layout_description=found.description,
    )


def split_of_folder_name(name: str) -> str | None:
    """The split a folder name says, by the name table in the module docstring.

    Args:
        name: A folder name, in any case and Unicode normal form.

    Returns:
        "train", "dev" or "test"; None when the name says no split, says two different
        splits, or names unlabelled data.

    Example:
        >>> [split_of_folder_name(name) for name in ("seg_train", "Validation", "trainval")]
        ['train', 'dev', 'train']
        >>> split_of_folder_name("train_test") is None
        True
    """
    phrases = _name_phrases(name)
    if phrases & UNLABELLED_FOLDER_NAMES:
        return None
    if phrases & _TRAIN_AND_DEV_NAMES:
        return "train"
    splits = {SPLIT_FOLDER_NAMES[phrase] for phrase in phrases if phrase in SPLIT_FOLDER_NAMES}
    return splits.pop() if len(splits) == 1 else None


def is_unlabelled_folder_name(name: str) -> bool:
    """Whether a folder name says its images have no labels (`seg_pred`, `unlabeled` ...)."""
    return bool(_name_phrases(name) & UNLABELLED_FOLDER_NAMES)


def _name_phrases(name: str) -> set[str]:
    """A folder name in NFC lower case, its tokens and its adjacent token pairs joined by
    "_": "Data-Train Set" gives {"data-train set", "data", "train", "set", "data_train",
    "train_set"}. A token's trailing number is dropped as well (COCO's `train2017`, Kaggle's
    `test1`): "val2017" gives {"val2017", "val"}."""
    whole = _nfc(name).lower()
    tokens = [token for token in _NAME_SEPARATORS.split(whole) if token]
    pairs = {f"{first}_{second}" for first, second in itertools.pairwise(tokens)}
    numbered = {match[1] for token in tokens if (match := _NUMBERED_TOKEN.fullmatch(token))}
    return {whole, *tokens, *pairs, *numbered}


def _checked_root(root: Path) -> Path:
    """Returns `root` as a Path if it is an existing folder, else raises naming the fix."""
    root = Path(root).expanduser()
    example = f"{root}/cat/1.jpg and {root}/dog/2.jpg"
    if not root.exists():
        raise MissingInputError(
            f"Image folder '{root}' does not exist. Expected a folder with one sub-folder "
            f"per class, e.g. {example}. Check the path."
        )
    if not root.is_dir():
        raise DataError(
            f"'{root}' is a file, not a folder. Expected a folder with one sub-folder per "
            f"class, e.g. {example}."
        )
    return root


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raises a ValueError if an option is not one of its choices."""
    if value not in choices:
        raise DataError(
            f"Unknown {name} '{value}'. Expected one of: {', '.join(choices)}. "
            f"Received: {name}={value!r}."
        )


def _nfc(text: str) -> str:
    """Normalises text to Unicode NFC."""
    return unicodedata.normalize("NFC", text)


def _relative(root: Path, path: Path) -> str:
    """`path` relative to `root`, "/"-separated and NFC ("" for the root itself)."""
    return "/".join(_nfc(part) for part in path.relative_to(root).parts)


def _short_list(names: Iterable[str], limit: int = 10) -> str:
    """Names joined by commas, the first `limit` of them."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _has_image_names(files: Iterable[Path]) -> bool:
    """Whether any file has an image extension (content is not read here)."""
    extensions = IMAGE_EXTENSIONS | set(UNSUPPORTED_EXTENSIONS)
    return any(path.suffix.lower() in extensions for path in files)


# Layout detection: folder names and listings only, never image contents.


def _find_layout(
    root: Path, lister: _FolderLister, layout: str, split_folders: Mapping[str, str] | None
) -> _Layout:
    """Decides the layout and lists the class folders (one per class and given split)."""
    if split_folders:
        if layout == "class_folders":
            raise DataError(
                "layout='class_folders' never uses split folders, but split_folders was "
                "given. Remove data.split_folders, or set data.layout=auto. Received: "
                f"layout='class_folders', split_folders={dict(split_folders)!r}."
            )
        return _given_split_layout(root, lister, split_folders)
    root_used = _unwrap_root(root, lister)
    folders, files = lister.contents(root_used)
    lister.log_unlabelled_files(files)
    if layout != "class_folders":
        found = _detected_split_layout(root, root_used, folders, lister)
        if found is not None:
            return found
        if layout == "split_folders":
            raise _no_split_folders_error(root, root_used, folders)
    return _class_layout(root, root_used, folders, files, warn_split_names=layout == "auto")


def _unwrap_root(root: Path, lister: _FolderLister) -> Path:
    """Descends through wrapper folders (see `_is_wrapper` and `_beside_metadata`); returns
    the folder reached."""
    folder = root
    folders, files = lister.contents(folder)
    while True:
        if _is_wrapper(folders, files, lister):
            inner = folders[0]
        elif (inner := _beside_metadata(folders, files, lister)) is not None:
            for other in folders:
                if other != inner:
                    lister.skip_log.add(other, f"holds no images, beside the image folder "
                                               f"'{inner.name}' that was used", "ignored")
        else:
            return folder
        lister.log_unlabelled_files(files)
        folder = inner
        folders, files = lister.contents(folder)


def _beside_metadata(folders: list[Path], files: list[Path],
                     lister: _FolderLister) -> Path | None:
    """The one folder of images among folders of other files (Food-101's `images/<class>/`
    beside `meta/*.txt`): it holds class folders, no loose images and is no split; every other
    folder holds files but no image. None when the folders are not like that (an empty
    folder may be a class still to fill, so it is no metadata)."""
    if len(folders) < 2 or _has_image_names(files):
        return None
    with_images = [folder for folder in folders if _holds_image_names(folder, lister)]
    if len(with_images) != 1:
        return None
    [inner] = with_images
    inner_folders, inner_files = lister.contents(inner)
    if (not inner_folders or _has_image_names(inner_files) or split_of_folder_name(inner.name)
            or is_unlabelled_folder_name(inner.name)):
        return None
    others = [folder for folder in folders if folder != inner]
    return inner if all(_holds_files(folder, lister) for folder in others) else None


def _holds_image_names(folder: Path, lister: _FolderLister) -> bool:
    """Whether any file at any depth of `folder` has an image extension (stops at the first)."""
    sub_folders, files = lister.contents(folder)
    return _has_image_names(files) or any(_holds_image_names(sub, lister) for sub in sub_folders)


def _holds_files(folder: Path, lister: _FolderLister) -> bool:
    """Whether `folder` holds any visible file at any depth."""
    sub_folders, files = lister.contents(folder)
    return bool(files) or any(_holds_files(sub, lister) for sub in sub_folders)


def _is_wrapper(folders: list[Path], files: list[Path], lister: _FolderLister) -> bool:
    """Whether a folder's contents are one folder that only wraps further folders: no image
    files at either level, and a name that is no split (`train/` alone stays a split)."""
    if len(folders) != 1 or _has_image_names(files) or split_of_folder_name(folders[0].name):
        return False
    inner_folders, inner_files = lister.contents(folders[0])
    return bool(inner_folders) and not _has_image_names(inner_files)


def _class_layout(root: Path, root_used: Path, folders: list[Path], files: list[Path], *,
                  warn_split_names: bool) -> _Layout:
    """The class-folder layout: each folder of `root_used` is a class; with
    `warn_split_names`, a warning for each named like a split (CIFAR-100 has a class
    'train', but more often it is a split folder of unsorted images)."""
    prefix = _relative(root, root_used)
    class_folders = tuple(
        _ClassFolder(path, _relative(root, path), _nfc(path.name), None) for path in folders
    )
    _require_class_folders(root_used, class_folders, files)
    if warn_split_names:
        _refuse_image_set_folders(root_used, class_folders, files)
    where = f" in {prefix} (wrapper folders unwrapped)" if prefix else ""
    description = f"Class folders found{where}: {len(class_folders)} folders, one per class."
    warnings = tuple(
        f"Class folder '{folder.relative_path}' is named like a {split} split folder. If it "
        f"holds {split} images rather than pictures of a '{folder.class_name}', its images "
        "are mislabelled: put them in one sub-folder per class, or name the split folders "
        "with data.split_folders."
        for folder in class_folders
        if warn_split_names and (split := split_of_folder_name(folder.class_name)))
    return _Layout("class_folders", root_used, class_folders, {}, description, warnings)


def _refuse_image_set_folders(
    root: Path, folders: tuple[_ClassFolder, ...], top_files: list[Path]
) -> None:
    """Raises, before any image is read, when the class folders are plainly no classes:
    one is named like a dataset's image folder (`images/` beside `annotations/`), or they
    differ only by a number, like parts of one download (HAM10000's `..._part_1`,
    `..._part_2`; NIH ChestX-ray14's `images_001` ...), named so or beside a label file."""
    if len(folders) < 2:
        return
    names = [folder.class_name for folder in folders]
    label_files = _label_files(root, top_files)
    hint = _label_file_hint(label_files) or (
        " Labels are read from folder names only: sort the images into one folder per class.")
    fix = (f"{hint.strip()} For example {root}/cat/1.jpg and {root}/dog/2.jpg. If "
           f"{_short_list(names)} really are the classes, set data.layout=class_folders. No "
           "image was read.")
    image_sets = [name for name in names if name.lower() in IMAGE_SET_FOLDER_NAMES]
    if image_sets:
        raise DataError(
            f"'{root}' looks like a dataset's images with their annotations or metadata, not "
            f"one folder per class: a folder named '{image_sets[0]}' holds the images of "
            f"every class, beside {_short_list(n for n in names if n != image_sets[0])}. {fix}"
        )
    matches = [_NUMBERED_NAME.fullmatch(name.lower()) for name in names]
    if not all(matches) or len({match[1] for match in matches}) != 1 or not matches[0][1]:
        return
    words = set(_NAME_SEPARATORS.split(matches[0][1]))
    if words & _PART_WORDS or label_files:
        raise DataError(
            f"The folders {_short_list(names)} in '{root}' differ only by a number, like "
            f"parts of one image set, not classes. {fix}"
        )


def _may_hold_labels(path: Path) -> bool:
    """Whether a file may be a label file: a table (`trainLabels.csv`, `_classes.csv`) or a
    text file named like one (`labels.txt`), never `README.txt` or `LICENSE.txt`."""
    suffix = path.suffix.lower()
    return suffix in _LABEL_FILE_SUFFIXES or (
        suffix == ".txt" and any(word in path.stem.lower() for word in _LABEL_TEXT_WORDS))


def _label_files(root: Path, files: Iterable[Path]) -> list[str]:
    """The quoted paths, relative to `root`, of the files that may hold labels."""
    return [f"'{_relative(root, path)}'" for path in files if _may_hold_labels(path)]


def _label_file_hint(label_files: list[str]) -> str:
    """The sentence naming files whose labels are never read, or "" when there are none."""
    if not label_files:
        return ""
    return (f" Labels are read from folder names only, never from a file like "
            f"{_short_list(label_files, 3)}: sort the images into one folder per class (a few "
            f"lines of Python reading that file can move them).")


def _require_class_folders(
    root: Path, folders: tuple[_ClassFolder, ...], top_files: list[Path]
) -> None:
    """Raises if the root holds no class folder at all."""
    if folders:
        return
    found = f" It holds {len(top_files)} file(s) directly; " if top_files else " "
    raise DataError(
        f"Image folder '{root}' has no class folders.{found}Expected one sub-folder per "
        f"class with the images inside, e.g. {root}/cat/1.jpg and {root}/dog/2.jpg."
    )


def _detected_split_layout(
    root: Path, root_used: Path, folders: list[Path], lister: _FolderLister
) -> _Layout | None:
    """The split layout the names or the structure of `root_used` show, or None.

    Structure alone decides which folder is which split only by elimination: among folders
    holding the same class folders, one named like no split beside others named like
    distinct splits other than train is train. Every other such case is ambiguous.
    """
    unlabelled = [folder for folder in folders if is_unlabelled_folder_name(folder.name)]
    candidates = [folder for folder in folders if folder not in unlabelled]
    copies = [folder for folder in candidates if _holds_split_folders(folder, lister)]
    named = [folder for folder in candidates if folder not in copies]
    splits = [split_of_folder_name(folder.name) for folder in named]
    extras: list[Path] = []
    warnings: list[str] = []
    if _named_like_splits(root, named, splits, lister, lister.contents(root_used)[1]):
        split_paths = _distinct_splits(root, named, splits)
    elif (kept := _split_folders_beside_extras(named, splits, lister)) is not None:
        named, extras = kept
        split_paths = _distinct_splits(root, named, [split_of_folder_name(f.name) for f in named])
    elif len(copies) == 1 and (inside := _split_layout_inside(root, copies[0], folders, lister)):
        return inside
    elif _share_class_folders(candidates, lister):
        all_splits = [split_of_folder_name(folder.name) for folder in candidates]
        split_paths = _train_by_elimination(candidates, all_splits)
        if copies or split_paths is None:
            raise _ambiguous_layout_error(root, candidates, all_splits, lister)
        train = _relative(root, split_paths["train"])
        others = ", ".join(f"'{_relative(root, path)}' ({split})"
                           for split, path in split_paths.items() if split != "train")
        warnings.append(
            f"Folder '{train}' is named like no split; it was taken as the train split, since "
            f"it holds the same class folders as {others}. If that is wrong, name the splits "
            "with data.split_folders."
        )
    else:
        return None
    warnings += _skip_folders(
        root,
        unlabelled,
        "folder named like unlabelled data: its images have no labels",
        "is named like unlabelled data (prediction or inference images); its images have no "
        "labels and were skipped.",
        lister,
    )
    warnings += _skip_folders(
        root,
        copies,
        "holds split folders of its own (a nested copy?), beside the split folders used",
        "holds split folders of its own (a nested copy?) beside the split folders used; it "
        "was skipped. To use it instead, pass it as the image folder.",
        lister,
    )
    for folder in extras:
        loose = _holds_image_names(folder, lister)
        reason = ("holds images outside class folders, so they have no label" if loose
                  else "holds no images")
        warnings += _skip_folders(root, [folder], f"{reason}, beside the split folders",
                                  f"{reason}; it was skipped beside the split folders.", lister)
    return _split_layout(root, root_used, split_paths, lister, "found", warnings)


def _split_folders_beside_extras(
    named: list[Path], splits: list[str | None], lister: _FolderLister
) -> tuple[list[Path], list[Path]] | None:
    """Split folders of class folders, train among them, beside folders that cannot be
    classes of a class-folder layout either: folders without images (Fruits-360's `papers/`)
    and folders of loose images (its `test-multiple_fruits/`). Returns (split folders,
    extras), or None when any other folder holds images in sub-folders (a class, maybe)."""
    with_classes = [folder for folder, split in zip(named, splits, strict=True)
                    if split and lister.contents(_unwrap_split_folder(folder, lister))[0]]
    extras = [folder for folder in named if folder not in with_classes]
    if not extras or "train" not in {split_of_folder_name(f.name) for f in with_classes}:
        return None
    for folder in extras:
        sub_folders, _ = lister.contents(folder)
        if any(_holds_image_names(sub, lister) for sub in sub_folders):
            return None
    return with_classes, extras


def _split_layout_inside(
    root: Path, holder: Path, folders: list[Path], lister: _FolderLister
) -> _Layout | None:
    """The split layout inside the one folder that holds split folders, when no split folder
    of class folders is beside it (Kaggle's New Plant Diseases: `<name>/<name>/{train,valid}/`
    beside a `test/test/` of unlabelled images); the folders beside it are skipped, each with
    a warning."""
    inner = _descend_wrappers(holder, lister)
    found = _detected_split_layout(root, inner, lister.contents(inner)[0], lister)
    if found is None:
        return None
    others = [folder for folder in folders if folder != holder]
    for folder in others:
        lister.skip_log.add(folder, f"beside '{_relative(root, holder)}', which holds the "
                                    "split folders", "ignored")
    warnings = tuple(
        f"Folder '{_relative(root, folder)}' was skipped: the split folders are in "
        f"'{_relative(root, inner)}'. To use it as a split, name every split with "
        "data.split_folders (paths relative to the image folder)."
        for folder in others)
    return dataclasses.replace(found, warnings=warnings + found.warnings)


def _descend_wrappers(folder: Path, lister: _FolderLister) -> Path:
    """Descends while a folder holds exactly one folder and no image files."""
    while True:
        sub_folders, files = lister.contents(folder)
        if len(sub_folders) != 1 or _has_image_names(files):
            return folder
        folder = sub_folders[0]


def _train_by_elimination(
    folders: list[Path], splits: list[str | None]
) -> dict[str, Path] | None:
    """Split -> folder when exactly one of the folders is named like no split and the others
    are named like distinct splits other than train (`rps/` beside `rps-test-set/`,
    `horse-or-human/` beside `validation-horse-or-human/`): the unnamed one is train."""
    unnamed = [folder for folder, split in zip(folders, splits, strict=True) if split is None]
    named = [split for split in splits if split is not None]
    if len(unnamed) != 1 or not named or "train" in named or len(set(named)) != len(named):
        return None
    found = {split: folder for folder, split in zip(folders, splits, strict=True) if split}
    return {"train": unnamed[0], **found}


def _holds_split_folders(folder: Path, lister: _FolderLister) -> bool:
    """Whether a folder not named like a split holds only split folders, train among them,
    maybe inside wrapper folders (Kaggle's chest_xray download repeats its splits in
    `chest_xray/chest_xray/`)."""
    if split_of_folder_name(folder.name) is not None:
        return False
    splits = [split_of_folder_name(path.name)
              for path in lister.contents(_descend_wrappers(folder, lister))[0]]
    return "train" in splits and all(splits)


def _skip_folders(
    root: Path, folders: list[Path], reason: str, warning: str, lister: _FolderLister
) -> list[str]:
    """Logs folders left out of a split layout; returns one warning per folder."""
    for folder in folders:
        lister.skip_log.add(folder, reason, "ignored")
    return [f"Folder '{_relative(root, folder)}' {warning}" for folder in folders]


def _named_like_splits(
    root: Path, candidates: list[Path], splits: list[str | None], lister: _FolderLister,
    top_files: list[Path],
) -> bool:
    """Whether every folder is named like a split and a train folder holds sub-folders.

    Raises:
        ValueError: If two or more folders are all named like splits but the train folders
            hold images directly (`train/*.jpg`, `test/*.jpg`): no image has a label.
    """
    if not candidates or not all(splits):
        return False
    trains = [folder for folder, split in zip(candidates, splits, strict=True) if split == "train"]
    if any(lister.contents(folder)[0] for folder in trains):
        return True
    if not trains or len(candidates) < 2:
        return False
    names = ", ".join(_relative(root, folder) for folder in candidates)
    # Labels may sit beside the splits (Kaggle's `trainLabels.csv`) or in each (Roboflow's
    # `train/_classes.csv`).
    label_files = _label_files(root, [*top_files, *lister.contents(trains[0])[1]])
    raise DataError(
        f"The folders {names} in '{root}' are named like splits, but the train folder "
        f"'{_relative(root, trains[0])}' holds no class folders, so no image has a label. "
        f"Put each split's images in one sub-folder per class, e.g. "
        f"{_relative(root, trains[0])}/cat/1.jpg.{_label_file_hint(label_files)} "
        f"If {names} really are the classes, set data.layout=class_folders."
    )


def _distinct_splits(
    root: Path, candidates: list[Path], splits: list[str | None]
) -> dict[str, Path]:
    """Split -> folder; raises if two folders are named like the same split."""
    by_split: dict[str, list[Path]] = defaultdict(list)
    for folder, split in zip(candidates, splits, strict=True):
        by_split[split].append(folder)
    for split, folders in by_split.items():
        if len(folders) > 1:
            names = " and ".join(f"'{_relative(root, folder)}'" for folder in folders)
            example = {name: _relative(root, paths[0]) for name, paths in by_split.items()}
            raise DataError(
                f"Folders {names} in '{root}' are both named like the {split} split, so it "
                "is not clear which to use. Name the split folders with data.split_folders, "
                f"e.g. {_format_split_folders(example)} (keys train, dev, test; values folder "
                "paths relative to the image folder); other folders are then skipped."
            )
    return {split: folders[0] for split, folders in by_split.items()}


def _share_class_folders(candidates: list[Path], lister: _FolderLister) -> bool:
    """Whether two or more folders hold the same set of at least two sub-folder names."""
    if len(candidates) < 2:
        return False
    name_sets = [_sub_folder_names(folder, lister) for folder in candidates]
    return len(name_sets[0]) >= 2 and all(names == name_sets[0] for names in name_sets)


def _sub_folder_names(folder: Path, lister: _FolderLister) -> frozenset[str]:
    """The NFC lower-case names of a (possibly wrapped) split folder's sub-folders."""
    sub_folders, _ = lister.contents(_unwrap_split_folder(folder, lister))
    return frozenset(_nfc(path.name).lower() for path in sub_folders)


def _ambiguous_layout_error(
    root: Path, candidates: list[Path], splits: list[str | None], lister: _FolderLister
) -> DataError:
    """The error for folders that hold the same class folders but name no splits."""
    folders = [_relative(root, folder) for folder in candidates]
    listed = ", ".join(folders)
    sub_folders, _ = lister.contents(_unwrap_split_folder(candidates[0], lister))
    shared = _short_list(_nfc(path.name) for path in sub_folders)
    example = _format_split_folders(_suggested_split_folders(folders, splits))
    return DataError(
        f"Cannot tell how '{root}' is laid out: the folders {listed} all hold the same "
        f"sub-folders ({shared}), as split folders do, but their names do not say which "
        f"split is which. If they are splits, name them: {example} (keys train, dev, "
        "test; values folder paths relative to the image folder). If "
        f"{listed} are classes that happen to hold sub-folders of the same names, set "
        "data.layout=class_folders. If they are versions of the same images (PlantVillage's "
        f"color/, grayscale/, segmented/), pass one as the image folder, e.g. "
        f"data.path='{candidates[0]}'. No image was read."
    )


def _suggested_split_folders(folders: list[str], splits: list[str | None]) -> dict[str, str]:
    """A `split_folders` example for an error: folders named like distinct splits keep
    them when train is among them; the others fill train, test, dev in order."""
    named = {split: folder for folder, split in zip(folders, splits, strict=True) if split}
    if "train" not in named or len(named) != sum(split is not None for split in splits):
        named = {}
    free_splits = [split for split in ("train", "test", "dev") if split not in named]
    free_folders = [folder for folder in folders if folder not in named.values()]
    named.update(zip(free_splits, free_folders, strict=False))
    return named


def _format_split_folders(split_folders: Mapping[str, str]) -> str:
    """A split_folders mapping as command-line overrides (no spaces, so it fits in make's
    ARGS): data.split_folders.train=a data.split_folders.test=b."""
    return " ".join(f"data.split_folders.{split}={split_folders[split]}"
                    for split in SPLIT_NAMES if split in split_folders)


def _no_split_folders_error(root: Path, root_used: Path, folders: list[Path]) -> DataError:
    """The error for `layout="split_folders"` when no split folders are found."""
    found = _short_list(_relative(root, folder) for folder in folders) or "none"
    return DataError(
        f"No split folders found in '{root_used}' (layout='split_folders', config "
        f"data.layout=split_folders, insists on them). Top-level folders: {found}. Expected "
        f"folders such as train/, val/, test/ holding one sub-folder per class, e.g. "
        f"{root_used}/train/cat/1.jpg; or name them with data.split_folders="
        "{train: part1, test: part2}, or set data.layout=auto."
    )


def _unwrap_split_folder(folder: Path, lister: _FolderLister) -> Path:
    """Descends while a split folder holds only one folder, named like itself or its split
    (`seg_train/seg_train`), and no image files."""
    split = split_of_folder_name(folder.name)
    while True:
        sub_folders, files = lister.contents(folder)
        if len(sub_folders) != 1 or _has_image_names(files):
            return folder
        inner = sub_folders[0]
        same_name = _nfc(inner.name).lower() == _nfc(folder.name).lower()
        if not same_name and (split is None or split_of_folder_name(inner.name) != split):
            return folder
        folder = inner


def _split_layout(
    root: Path,
    root_used: Path,
    split_paths: dict[str, Path],
    lister: _FolderLister,
    source: str,
    earlier_warnings: list[str],
) -> _Layout:
    """The split layout: each split folder's sub-folders are its classes."""
    class_folders: list[_ClassFolder] = []
    names: dict[str, str] = {}
    warnings = list(earlier_warnings)
    for split in SPLIT_NAMES:
        if split not in split_paths:
            continue
        folder = _unwrap_split_folder(split_paths[split], lister)
        found = _split_class_folders(root, folder, split, lister)
        if found and split != "train" and "train" in names and not _shares_a_class(
                found, class_folders):
            warnings.append(_no_shared_class_warning(root, folder, split, found, class_folders))
            lister.skip_log.add(folder, "its folders match none of train's classes", "ignored")
        elif found:
            class_folders += found
            names[split] = _relative(root, folder)
        else:
            warnings.append(_no_class_folders_warning(root, folder, split, lister))
    if "train" not in names:
        train = _relative(root, _unwrap_split_folder(split_paths["train"], lister))
        raise DataError(
            f"The train folder '{train}' in '{root}' holds no class folders, so no training "
            f"image has a label. Expected one sub-folder per class, e.g. {train}/cat/1.jpg."
        )
    pairs = ", ".join(f"{names[split]} -> {split}" for split in SPLIT_NAMES if split in names)
    missing = [split for split in SPLIT_NAMES if split not in names]
    note = f" (no {' or '.join(missing)} folder)" if missing else ""
    description = f"Split folders {source}: {pairs}{note}."
    return _Layout(
        "split_folders", root_used, tuple(class_folders), names, description, tuple(warnings)
    )


def _shares_a_class(found: list[_ClassFolder], train: list[_ClassFolder]) -> bool:
    """Whether a split's class folders share a name (NFC, case-insensitive) with train's."""
    train_names = {folder.class_name.lower() for folder in train}
    return any(folder.class_name.lower() in train_names for folder in found)


def _no_shared_class_warning(root: Path, folder: Path, split: str, found: list[_ClassFolder],
                             train: list[_ClassFolder]) -> str:
    """The warning for a split folder whose folders are none of train's classes (Tiny
    ImageNet's `val/images/` of unsorted images, labelled in `val_annotations.txt`)."""
    return (
        f"Split folder '{_relative(root, folder)}' holds folders "
        f"({_short_list(f.class_name for f in found)}) that match none of train's classes "
        f"({_short_list(f.class_name for f in train)}), so its images have no usable label "
        f"and were skipped; no {split} split is given, and splits not given are carved from "
        f"train. Sort them into folders named like train's classes to use them."
    )


def _split_class_folders(
    root: Path, folder: Path, split: str, lister: _FolderLister
) -> list[_ClassFolder]:
    """The class folders of one split folder; logs the files beside them (no label)."""
    sub_folders, files = lister.contents(folder)
    if not sub_folders:
        reason = "in a split folder without class folders, so it has no label"
        for path in files:
            lister.skip_log.add(path, reason, "ignored")
        return []
    lister.log_unlabelled_files(files)
    return [
        _ClassFolder(path, _relative(root, path), _nfc(path.name), split) for path in sub_folders
    ]


def _no_class_folders_warning(root: Path, folder: Path, split: str, lister: _FolderLister) -> str:
    """The warning for a split folder that holds no class folders (e.g. unlabelled test)."""
    _, files = lister.contents(folder)
    return (
        f"Split folder '{_relative(root, folder)}' holds no class folders ({len(files)} "
        f"file(s) directly, which have no label and were skipped), so no {split} split is "
        "given; splits not given are carved from train."
    )


def _given_split_layout(
    root: Path, lister: _FolderLister, split_folders: Mapping[str, str]
) -> _Layout:
    """The split layout named by `split_folders`; other top-level folders are skipped."""
    split_paths = _checked_split_folders(root, split_folders)
    folders, files = lister.contents(root)
    lister.log_unlabelled_files(files)
    used = split_paths.values()
    others = [
        folder for folder in folders if not any(folder in (path, *path.parents) for path in used)
    ]
    for folder in others:
        lister.skip_log.add(folder, "not named in split_folders, so skipped", "ignored")
    warnings = []
    if others:
        skipped = _short_list(_relative(root, folder) for folder in others)
        warnings.append(f"Folders not named in data.split_folders were skipped: {skipped}.")
    return _split_layout(root, root, split_paths, lister, "given by data.split_folders", warnings)


def _checked_split_folders(root: Path, split_folders: Mapping[str, str]) -> dict[str, Path]:
    """Split -> folder path from `split_folders`, checked: known keys, train included,
    existing, distinct and not nested folders."""
    received = f"Received: split_folders={dict(split_folders)!r}."
    for key in split_folders:
        if key not in SPLIT_NAMES:
            meant = split_of_folder_name(str(key))
            hint = f" Did you mean '{meant}'?" if meant else ""
            raise DataError(
                f"Unknown split '{key}' in split_folders.{hint} Expected keys among: "
                f"{', '.join(SPLIT_NAMES)}. {received}"
            )
    if "train" not in split_folders:
        raise DataError(
            "split_folders names no train folder, and training needs one. Add it, e.g. "
            f"data.split_folders.train=part1 data.split_folders.test=part2. {received}"
        )
    paths = {
        split: _checked_split_folder(root, split, split_folders[split], received)
        for split in SPLIT_NAMES
        if split in split_folders
    }
    for split, path in paths.items():
        for other, other_path in paths.items():
            if other != split and path in (other_path, *other_path.parents):
                raise DataError(
                    f"split_folders gives '{split_folders[split]}' for {split} and "
                    f"'{split_folders[other]}' for {other}; split folders must be distinct "
                    f"and not inside one another. {received}"
                )
    return paths


def _checked_split_folder(root: Path, split: str, value: str, received: str) -> Path:
    """The folder `root/value`; raises unless it is an existing folder inside `root`."""
    relative = Path(str(value))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise DataError(
            f"split_folders['{split}'] must be a folder path relative to '{root}', e.g. "
            f"'part1' or 'data/train'. {received}"
        )
    path = root / relative
    if not path.is_dir():
        present = sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and hidden_reason(entry.name) is None
        )
        raise DataError(
            f"Split folder '{value}' (split_folders['{split}']) is not a folder in '{root}'. "
            f"Folders there: {_short_list(present) or 'none'}. {received}"
        )
    return path


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
    reason = hidden_reason(path.name)
    if reason is not None:
        skip_log.add(path, reason, "hidden")
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


def list_image_files(root: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Every file at any depth under `root` that the scan would take as an image
    (`is_image_candidate`), sorted, and the links it could not follow. Folders are listed as
    the scan lists them: symlinks followed, each folder once, hidden and system entries left
    out. `predict` finds its files with this."""
    skip_log = _SkipLog("skip")
    lister = _FolderLister(skip_log)
    pending, files = [root], []
    while pending:
        folders, found = lister.contents(pending.pop())
        pending += folders
        files += [path for path in found if is_image_candidate(path)]
    return sorted(files), [entry for entry in skip_log.entries if entry.kind == "link"]


def is_image_candidate(path: Path) -> bool:
    """Whether a file found in a folder is taken as an image, as the scan takes it: a name that
    is not hidden or system metadata, and image content (by magic bytes, supported or not) or
    an image extension (supported or not). Everything else (`notes.txt`) is passed over.
    `predict` finds its files with this rule too. A file that cannot be read counts as a
    candidate, so that reading it reports why."""
    if hidden_reason(path.name) is not None:
        return False
    extension = path.suffix.lower()
    if extension in IMAGE_EXTENSIONS or extension in UNSUPPORTED_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as file:
            return sniff_format_bytes(file.read(32)) is not None
    except OSError:
        return True


def hidden_reason(name: str) -> str | None:
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
    class_folders: Iterable[_ClassFolder], lister: _FolderLister
) -> list[_Candidate]:
    """Lists every file at any depth inside the class folders."""
    candidates: list[_Candidate] = []
    for class_folder in class_folders:
        pending = [(class_folder.path, class_folder.relative_path)]
        while pending:
            folder, relative_folder = pending.pop()
            sub_folders, files = lister.contents(folder)
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
    """Reads, checks and hashes every candidate file, logging those that are not usable.

    Files are read and hashed on a pool of threads (reads and hashing release the GIL); what
    each one logs is replayed in the candidates' order, so the log, and the first file that
    stops an `on_bad_file: error` scan, are those of a scan on one thread.
    """

    def check(candidate: _Candidate) -> tuple[_Image | None, _RecordedLog]:
        recorded = _RecordedLog()
        return _check_candidate(candidate, recorded, verify_decode, max_pixels), recorded

    images: list[_Image] = []
    with tqdm(
        total=len(candidates), desc="Scanning images", unit="file", disable=not show_progress
    ) as progress:
        for outcome in ordered_map(check, candidates, default_decode_threads()):
            if isinstance(outcome, BaseException):
                raise outcome
            image, recorded = outcome
            recorded.replay(skip_log)
            progress.update(1)
            if image is not None:
                images.append(image)
    return images


class _RecordedLog:
    """Stands in for a `_SkipLog` on a scanning thread: records the calls, to be replayed on
    the real log in order."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []

    def add(self, *arguments) -> None:
        self.calls.append(("add", arguments))

    def add_unsupported(self, *arguments) -> None:
        self.calls.append(("add_unsupported", arguments))

    def replay(self, skip_log: _SkipLog) -> None:
        for name, arguments in self.calls:
            getattr(skip_log, name)(*arguments)


def _check_candidate(
    candidate: _Candidate, skip_log: _SkipLog | _RecordedLog, verify_decode: bool, max_pixels: int
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


def _log_unrecognised(
    path: Path, extension: str, num_bytes: int, skip_log: _SkipLog | _RecordedLog
) -> None:
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
        raise DataError(
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
    label_files = [f"'{_relative(root, entry.path)}'" for entry in skipped
                   if entry.kind == "ignored" and _may_hold_labels(entry.path)]
    hint = _label_file_hint(label_files)
    raise DataError(
        f"Image folder '{root}' has {len(class_names)} usable class(es) ({found}); a "
        f"classifier needs at least 2.{empty} {len(skipped)} file(s) were skipped. Expected "
        f"one sub-folder per class with images inside, e.g. {root}/cat/1.jpg and "
        f"{root}/dog/2.jpg.{hint}"
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
