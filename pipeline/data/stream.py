"""Decoding a folder of photos in a stream, into files that later stages read lazily.

Why: decoding every photo into one in-memory array, then copying it per split, needs several
times the dataset's decoded size in memory (a folder of 100,000 photos at 160 px would not fit
in 24 GiB). Here memory is bounded by a few shards whatever the folder's size:

1. A pool of threads decodes the photos (Pillow releases the GIL while it decodes and resizes,
   so threads overlap on several cores). JPEGs much larger than the stored size are decoded at
   the nearest power-of-two reduction (Pillow's draft mode, `images.load_square`).
2. The decoded squares go, in the scan's order, into fixed-size staging shards (`.npy` files
   of about `SHARD_BYTES`), written as each one fills. Splits can only be chosen once every
   file is decoded (an undecodable file is skipped, which changes the split ratios and caps),
   so the images wait there.
3. Once the splits are known, each shard is read back in turn and its rows appended to the
   split's `<split>_images.npy` (`NpyAppender`), then the staging shards are removed.

The result is the data stage's usual files: one `.npy` per split, read by every later stage
through a memory map (`PreparedData.images`), and by row ranges with no map at all
(`FileRows`), so one worker of several reads exactly its share.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

# A staging shard's size: big enough that writes are sequential and few, small enough that a
# few of them in memory stay far below the rest of the process (about 430 images at 160 px).
SHARD_BYTES = 32 * 2**20
# Decodes submitted ahead of the one being stored, per thread: keeps the threads busy while
# bounding the decoded images held in memory.
QUEUE_PER_THREAD = 8


def default_decode_threads() -> int:
    """`data.decode_threads: 0`: two threads per usable core, at most 8.

    Decoding is CPU work outside the GIL, and file reads wait on the disk, so a little more
    than one thread per core keeps every core busy (on 2 cores, 4 threads decoded 1024x768
    JPEGs fastest of 1-4; see the README's "Large folders").
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, 2 * (cores or 1)))


def rows_per_shard(row_shape: Sequence[int], dtype=np.uint8) -> int:
    """How many rows of this shape make a shard of about `SHARD_BYTES` (at least one)."""
    row_bytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
    return max(1, SHARD_BYTES // max(1, row_bytes))


class NpyAppender:
    """Writes a `.npy` file of a known shape block by block, with ordinary file writes.

    No memory map: rows written never count in this process's resident memory, and only the
    block being written is held. A row is one entry of the first `leading_axes` axes (an
    image of (N, S, S, 3); a (view, example) pair of (K, N, D)), written in C order; `close`
    checks that exactly all of them came.

    Example:
        >>> with NpyAppender(Path("train_images.npy"), (1000, 160, 160, 3)) as out:
        ...     for block in blocks:
        ...         out.write(block)
    """

    def __init__(self, path: Path, shape: Sequence[int], dtype=np.uint8, *,
                 leading_axes: int = 1):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.row_shape = self.shape[leading_axes:]
        self.total = int(np.prod(self.shape[:leading_axes], dtype=np.int64))
        self.rows = 0
        self._file = open(self.path, "wb")  # noqa: SIM115  (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._file, header)

    def write(self, block: np.ndarray) -> None:
        """Appends rows: an array of shape (n, *row_shape), cast to the file's dtype."""
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {self.row_shape} expected. "
                             f"Received: shape={block.shape}.")
        if self.rows + len(block) > self.total:
            raise ValueError(f"{self.path.name}: more than {self.total} rows written.")
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        self._file.close()
        if self.rows != self.total:
            raise ValueError(f"{self.path.name}: {self.rows} rows written of {self.total}.")

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()


@dataclass(frozen=True)
class StagedImages:
    """Decoded images in fixed-size staging shards, in decode order.

    Attributes:
        shards: the shard files, each a `.npy` of (rows, S, S, 3) uint8.
        count: the number of images in all of them.
    """

    shards: tuple[Path, ...]
    count: int

    def __len__(self) -> int:
        return self.count

    def blocks(self) -> Iterator[np.ndarray]:
        """Each shard, read whole, one at a time."""
        for shard in self.shards:
            yield np.load(shard)


def image_blocks(images: np.ndarray | StagedImages) -> Iterator[np.ndarray]:
    """Consecutive row blocks of about `SHARD_BYTES` of an array, or a staging's shards."""
    if isinstance(images, StagedImages):
        yield from images.blocks()
        return
    step = rows_per_shard(images.shape[1:], images.dtype)
    for start in range(0, len(images), step):
        yield np.asarray(images[start:start + step])


def write_split_images(folder: Path, images: np.ndarray | StagedImages, splits: np.ndarray,
                       split_names: Sequence[str], row_shape: Sequence[int]) -> None:
    """Writes `<split>_images.npy` for each split, in one pass over `images`.

    Args:
        folder: where the files go.
        images: every example, in order (an array, or staging shards).
        splits: the split of each example, "" for those not kept.
        split_names: the splits to write (each gets a file, empty or not).
        row_shape: one image's shape, (S, S, 3).
    """
    writers = {split: NpyAppender(folder / f"{split}_images.npy",
                                  (int(np.sum(splits == split)), *row_shape))
               for split in split_names}
    start = 0
    try:
        for block in image_blocks(images):
            part = splits[start:start + len(block)]
            for split, writer in writers.items():
                writer.write(block[part == split])
            start += len(block)
    finally:
        for writer in writers.values():
            writer.close()


@dataclass
class DecodedFolder:
    """What `decode_in_stream` returns: the usable images and what became of the others.

    Attributes:
        images: the decoded squares, in the order of `usable`.
        usable: indices (into the items given) of the images that decoded.
        sizes: each usable image's upright (width, height) before resizing.
        failures: (item index, error) of each image that did not decode.
    """

    images: StagedImages
    usable: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    failures: list[tuple[int, Exception]] = field(default_factory=list)


def decode_in_stream(paths: Sequence[Path], decode: Callable[[Path], tuple[np.ndarray,
                                                                             tuple[int, int]]],
                     *, row_shape: Sequence[int], staging: Path, threads: int,
                     errors: type[Exception] | tuple[type[Exception], ...],
                     stop_on_error: bool = False, description: str = "Decoding images"
                     ) -> DecodedFolder:
    """Decodes `paths` on a pool of threads into staging shards, in the order given.

    Args:
        paths: the files.
        decode: file -> (image of `row_shape`, upright (width, height) before resizing).
        row_shape: one stored image's shape, (S, S, 3).
        staging: an empty folder for the shards (the caller removes it).
        threads: decoding threads; 1 decodes on the calling thread.
        errors: the exceptions that mark a file unusable (others propagate).
        stop_on_error: raise the first such error (in the order of `paths`) instead of
            recording it.
        description: progress bar label.

    Returns:
        The staged images and which files made them.
    """
    staging.mkdir(parents=True, exist_ok=True)
    capacity = rows_per_shard(row_shape)
    buffer = np.empty((min(capacity, max(1, len(paths))), *row_shape), np.uint8)
    shards: list[Path] = []
    result = DecodedFolder(StagedImages((), 0))
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled:
            shard = staging / f"shard-{len(shards):05d}.npy"
            np.save(shard, buffer[:filled])
            shards.append(shard)
            filled = 0

    with tqdm(total=len(paths), desc=description, unit="img") as progress:
        for index, outcome in enumerate(ordered_map(decode, paths, threads)):
            progress.update(1)
            if isinstance(outcome, errors):
                if stop_on_error:
                    raise outcome
                result.failures.append((index, outcome))
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            image, size = outcome
            buffer[filled] = image
            filled += 1
            result.usable.append(index)
            result.sizes.append(size)
            if filled == len(buffer):
                flush()
        flush()
    result.images = StagedImages(tuple(shards), len(result.usable))
    return result


def ordered_map(function: Callable, items: Iterable, threads: int) -> Iterator[object]:
    """`function(item)` for each item on a pool of threads: each result (or the exception it
    raised, returned rather than raised), in the items' order, with at most
    `threads * QUEUE_PER_THREAD` computed ahead of the consumer (so memory stays bounded)."""

    def attempt(item) -> object:
        try:
            return function(item)
        except Exception as error:  # noqa: BLE001  (handed to the consumer, in order)
            return error

    if threads <= 1:
        for item in items:
            yield attempt(item)
        return
    pending: deque[Future] = deque()
    remaining = iter(items)
    with ThreadPoolExecutor(threads, thread_name_prefix="pipeline-data") as pool:
        try:
            for item in remaining:
                pending.append(pool.submit(attempt, item))
                if len(pending) >= threads * QUEUE_PER_THREAD:
                    break
            while pending:
                outcome = pending.popleft().result()
                for item in itertools.islice(remaining, 1):
                    pending.append(pool.submit(attempt, item))
                yield outcome
        finally:
            for future in pending:  # the consumer stopped early (an error): skip the rest
                future.cancel()


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a C-ordered `.npy` file, from its header."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(file)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported.")
        return tuple(shape), dtype, file.tell()


class FileRows:
    """The rows of a `.npy` file, read on demand with positioned reads and no memory map.

    A memory-mapped read leaves every page it touched in the process's resident memory (until
    the kernel needs it back); these reads leave them only in the operating system's file
    cache, so a reader that walks the whole file holds one batch at a time. It supports what a
    batch reader needs: `len`, `shape`, `dtype`, slices of the first axis (one read each) and
    `np.asarray` (the whole file). Rows [a, b) are also one worker's share of several.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.shape, self.dtype, self._offset = npy_layout(self.path)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(f"row {key} of {len(self)}")
            return self._read(index, index + 1)[0]
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(len(self))
            return self._read(start, max(start, stop))
        return np.asarray(self)[key]  # anything else: read whole (not used by batch readers)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = self._read(0, len(self))
        return rows if dtype is None else rows.astype(dtype)

    def _read(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as file:
            rows = np.fromfile(file, self.dtype, count=(stop - start) * self._row_bytes
                               // self.dtype.itemsize,
                               offset=self._offset + start * self._row_bytes)
        return rows.reshape(stop - start, *self.shape[1:])


def unmapped(images):
    """A `FileRows` over the file behind a memory map of a whole `.npy` file (as
    `np.load(..., mmap_mode="r")` returns), so a pass over it holds one batch at a time;
    anything else (an array in memory, a view of part of a file) is returned as it is."""
    filename = getattr(images, "filename", None)
    if not isinstance(images, np.memmap) or filename is None or not images.flags.c_contiguous:
        return images
    try:
        shape, dtype, offset = npy_layout(Path(filename))
    except (OSError, ValueError):
        return images
    whole = (shape == images.shape and dtype == images.dtype and offset == images.offset
             and os.path.getsize(filename) == offset + images.nbytes)
    return FileRows(Path(filename)) if whole else images
