"""`python -m bench scale`: the data stage and training on N and 4N camera-sized photos.

On one folder of distinct 1024x768 JPEGs made from flowers128 photos (4N of them, and a folder
of every fourth one, N), each job runs in its own process, side by side in one run, with its
peak resident memory (`os.wait4`) and two times: the whole process (start-up included, as a
user waits for it) and the work alone (after the imports, which differ: TensorFlow takes
seconds to import and the data stage does not need it):

* `today`: the data stage before streaming (`bench.reference_data`: one thread, full-size
  decode, the whole dataset in one array, copied per split);
* `stream`: the product's data stage (`pipeline.data.prepare.prepare_data`, streaming);
* `keras`: `keras.utils.image_dataset_from_directory` making one pass over the folder at the
  same size (the loader most Keras users start from);
* `cli`: the same streaming stage as users run it, `python -m pipeline data`
  (`configs/folder.yaml` at 160 px), whose process imports TensorFlow;
* `train`: a short training run on that data, `python -m pipeline train` (2 head epochs, 1
  fine-tune epoch), for its peak memory.

Ratios (goals in `bench.goals`): photos/s of the work, streaming against today's and against
the Keras loader's, on the 4N folder; peak memory at N over peak memory at 4N, for the data
stage and for training (0.8 or more: 4x the photos cost at most 1.25x the memory).

N is 1,000 (the issue's measurement); `BENCH_SCALE_IMAGES=250` makes a quicker run. Skipped
without flowers128.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.datasets import FLOWERS

CAMERA_SIZE = (1024, 768)
CROPS = 4  # crop rounds `make_camera_folder` may use
IMAGE_SIZE = 160
TRAIN_OVERRIDES = ("train.head_epochs=2", "train.fine_tune_epochs=1")
JOBS = ("data_today", "data_stream", "data_keras", "data_cli", "train")
WORK_MARK = "work seconds: "  # what a job run by `_job` prints
CPU_MARK = "work CPU seconds: "


def bench_scale(count: int | None = None) -> dict:
    """Runs every job on N and 4N photos; returns seconds, peak MB and the goal ratios."""
    count = count or int(os.environ.get("BENCH_SCALE_IMAGES", "1000"))
    if not FLOWERS.is_dir():
        print(f"scale: skipped, {FLOWERS} is absent (the photos are made from flowers128).")
        return {}
    results: dict = {"scale_images": count, "scale_load_average_start": _load()}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as temporary:
        root = Path(temporary)
        started = time.perf_counter()
        large = make_camera_folder(FLOWERS, root / "photos_4n", 4 * count)
        small = every_fourth(large, root / "photos_n")
        print(f"Made {4 * count} photos of {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} in "
              f"{time.perf_counter() - started:.0f} s.")
        for label, folder in (("n", small), ("4n", large)):
            results.update(_measure_size(label, folder, root))
    results["scale_load_average_end"] = _load()
    results["scale_data_speedup_vs_today"] = (results["scale_data_today_work_s_4n"]
                                              / results["scale_data_stream_work_s_4n"])
    results["scale_data_speedup_vs_keras_loader"] = (results["scale_data_keras_work_s_4n"]
                                                     / results["scale_data_stream_work_s_4n"])
    for job in ("data_today", "data_keras"):
        results[f"scale_data_cpu_ratio_stream_vs_{job[5:]}"] = (
            results[f"scale_{job}_work_cpu_s_4n"] / results["scale_data_stream_work_cpu_s_4n"])
    for job in JOBS:
        results[f"scale_{job}_photos_per_s_4n"] = 4 * count / results[f"scale_{job}_work_s_4n"]
        results[f"scale_{job}_rss_n_over_4n"] = (results[f"scale_{job}_peak_mb_n"]
                                                 / results[f"scale_{job}_peak_mb_4n"])
    _print_table(results)
    return results


def _measure_size(label: str, folder: Path, root: Path) -> dict:
    """The four jobs on one folder; keys end in `_<label>`."""
    python, me = sys.executable, "bench.bench_scale"
    run_overrides = [f"data.path={folder}", f"data.image_size={IMAGE_SIZE}",
                     f"name=scale_{label}", f"runs_dir={root / 'runs'}",
                     f"export.models_dir={root / 'models'}"]
    jobs = {
        "data_today": [python, "-m", me, "today", str(folder), str(root / f"today_{label}")],
        "data_stream": [python, "-m", me, "stream", str(folder), str(root / f"stream_{label}")],
        "data_keras": [python, "-m", me, "keras", str(folder)],
        "data_cli": [python, "-m", "pipeline", "data", "--config", "configs/folder.yaml",
                     *run_overrides],
        "train": [python, "-m", "pipeline", "train", "--config", "configs/folder.yaml",
                  *run_overrides, *TRAIN_OVERRIDES],
    }
    results = {}
    for job, command in jobs.items():
        seconds, peak_mb, output = timed_process(command)
        work = float(output.split(WORK_MARK)[1].split()[0]) if WORK_MARK in output else seconds
        if CPU_MARK in output:  # CPU time of the work: what it costs whatever else runs
            results[f"scale_{job}_work_cpu_s_{label}"] = float(
                output.split(CPU_MARK)[1].split()[0])
        results[f"scale_{job}_s_{label}"] = round(seconds, 2)
        results[f"scale_{job}_work_s_{label}"] = round(work, 2)
        results[f"scale_{job}_peak_mb_{label}"] = round(peak_mb, 1)
        print(f"  {job:12s} {label:>2s}: {seconds:7.1f} s ({work:6.1f} s of work), peak "
              f"{peak_mb:7.0f} MB (load average {_load():.1f})", flush=True)
    return results


def timed_process(command: list[str]) -> tuple[float, float, str]:
    """Runs `command` to its end; returns (wall seconds, its peak resident memory in MB, its
    output).

    Raises:
        RuntimeError: the command failed (its output is shown above the message).
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        print(output.decode(errors="replace")[-3000:])
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({process.returncode}).")
    return seconds, usage.ru_maxrss / 1024, output.decode(errors="replace")  # KB on Linux


def make_camera_folder(source: Path, folder: Path, count: int,
                       size: tuple[int, int] = CAMERA_SIZE) -> Path:
    """`count` distinct JPEGs of `size` (quality 90) made from the class folders of `source`:
    each photo scaled up, and past the first round mirrored, flipped or turned (the 8 symmetries
    of a rectangle), then past 8 rounds cropped a little more off its top-left corner each
    round, so none repeats (4,317 photos make up to 138,144)."""
    from PIL import Image

    photos = _interleaved(sorted(path for path in source.rglob("*")
                                 if path.suffix.lower() == ".jpg"))
    variants = (None, *Image.Transpose)  # the first three as before: None, mirrored, flipped
    if count > len(photos) * len(variants) * CROPS:
        raise ValueError(f"At most {len(photos) * len(variants) * CROPS} distinct photos can be "
                         f"made from {source}. Received: count={count}.")

    def make(index: int) -> None:
        photo = photos[index % len(photos)]
        variant = variants[index // len(photos) % len(variants)]
        crop = index // (len(photos) * len(variants))
        with Image.open(photo) as image:
            image = image.convert("RGB")
            if crop:  # 3% (at least a pixel) more off the top and the left each round
                width, height = image.size
                image = image.crop((max(crop, width * 3 * crop // 100),
                                    max(crop, height * 3 * crop // 100), width, height))
            image = image.resize(size, Image.Resampling.BILINEAR)
        if variant is not None:
            image = image.transpose(variant)
        target = folder / photo.parent.name / f"{index:06d}_{photo.stem}.jpg"
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        target.write_bytes(buffer.getvalue())

    for name in {photo.parent.name for photo in photos}:
        (folder / name).mkdir(parents=True, exist_ok=True)
    order = range(count)
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(make, order))
    return folder


def _interleaved(photos: list[Path]) -> list[Path]:
    """The photos taking one of each class in turn, so any first n hold every class."""
    rank: dict[str, int] = {}
    keyed = []
    for photo in photos:
        rank[photo.parent.name] = rank.get(photo.parent.name, -1) + 1
        keyed.append((rank[photo.parent.name], photo.parent.name, photo))
    return [photo for *_, photo in sorted(keyed)]


def every_fourth(folder: Path, target: Path) -> Path:
    """A folder of every fourth photo of `folder` (hard links: same files, no copies)."""
    for index, path in enumerate(sorted(folder.rglob("*.jpg"))):
        if index % 4 == 0:
            (target / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, target / path.parent.name / path.name)
    return target


def keras_loader_pass(folder: Path, image_size: int) -> int:
    """One pass of `keras.utils.image_dataset_from_directory` at `image_size` (centre crop to
    a square, as the data stage stores); returns the number of images."""
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        folder, image_size=(image_size, image_size), batch_size=64, shuffle=False,
        crop_to_aspect_ratio=True, verbose=False)
    return sum(int(images.shape[0]) for images, _ in dataset)


def _job(name: str, folder: Path, output: Path | None) -> None:
    """One data job in this process (`python -m bench.bench_scale NAME FOLDER [OUTPUT]`):
    imports what it needs, then prints the seconds of the work alone."""
    import resource

    if name == "keras":
        import keras  # noqa: F401  (imported before the clock starts, like the others)

        cpu, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        keras_loader_pass(folder, IMAGE_SIZE)
    else:
        from bench.reference_data import prepare_folder_in_memory
        from pipeline.config import DataConfig
        from pipeline.data.prepare import prepare_data

        run = prepare_folder_in_memory if name == "today" else prepare_data
        cpu, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run(DataConfig(source="folder", path=str(folder), image_size=IMAGE_SIZE), output)
    print(f"{WORK_MARK}{time.perf_counter() - started:.3f}")
    after = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    print(f"{CPU_MARK}{after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime:.3f}")


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _print_table(results: dict) -> None:
    count = results["scale_images"]
    print(f"\n{'job':12s} {'N=' + str(count) + ': work / process, peak':>32s} "
          f"{'4N=' + str(4 * count):>32s}   4N/N memory")
    for job in JOBS:
        cells = [f"{results[f'scale_{job}_work_s_{label}']:6.1f} s / "
                 f"{results[f'scale_{job}_s_{label}']:6.1f} s "
                 f"{results[f'scale_{job}_peak_mb_{label}']:6.0f} MB" for label in ("n", "4n")]
        ratio = results[f"scale_{job}_peak_mb_4n"] / results[f"scale_{job}_peak_mb_n"]
        print(f"{job:12s} {cells[0]:>32s} {cells[1]:>32s}   {ratio:.2f}x")
    print(f"load average: {results['scale_load_average_start']} at the start, "
          f"{results['scale_load_average_end']} at the end (2 cores shared with other jobs)")


LARGE_SIZE = (640, 480)  # smaller than a camera's, so 100,000 of them are made in minutes


def bench_large(count: int) -> dict:
    """`python -m bench.bench_scale large COUNT` (not part of `make bench`: 100,000 photos take
    about 4 GB of disk, their arrays 7.3 GB, twice that while staged, and 15 minutes here):
    `python -m pipeline data` at 160 px on COUNT/4 and
    COUNT distinct 640x480 JPEGs, with the time, the peak memory and the size of what it wrote."""
    if not FLOWERS.is_dir():
        print(f"large: skipped, {FLOWERS} is absent (the photos are made from flowers128).")
        return {}
    results: dict = {"large_images": count}
    with tempfile.TemporaryDirectory(prefix="bench-large-") as temporary:
        root = Path(temporary)
        started = time.perf_counter()
        whole = make_camera_folder(FLOWERS, root / "photos", count, size=LARGE_SIZE)
        quarter = every_fourth(whole, root / "photos_quarter")
        print(f"Made {count} photos of {LARGE_SIZE[0]}x{LARGE_SIZE[1]} in "
              f"{time.perf_counter() - started:.0f} s.", flush=True)
        for label, folder, photos in (("quarter", quarter, count // 4), ("whole", whole, count)):
            name = f"large_{label}"
            seconds, peak_mb, _ = timed_process([
                sys.executable, "-m", "pipeline", "data", "--config", "configs/folder.yaml",
                f"data.path={folder}", f"data.image_size={IMAGE_SIZE}", f"name={name}",
                f"runs_dir={root / 'runs'}"])
            written = sum(path.stat().st_size for path in (root / "runs" / name).rglob("*.npy"))
            results.update({f"large_s_{label}": round(seconds, 1),
                            f"large_peak_mb_{label}": round(peak_mb),
                            f"large_written_mb_{label}": round(written / 2**20)})
            print(f"  {photos:7d} photos: {seconds:6.0f} s ({photos / seconds:5.0f} photos/s), "
                  f"peak {peak_mb:5.0f} MB, wrote {written / 2**20:6.0f} MB of arrays "
                  f"(load average {_load():.1f})", flush=True)
    results["large_peak_ratio"] = results["large_peak_mb_whole"] / results["large_peak_mb_quarter"]
    print(f"4x the photos: {results['large_peak_ratio']:.2f}x the peak memory")
    return results


if __name__ == "__main__":
    if sys.argv[1] == "large":
        bench_large(int(sys.argv[2]))
    else:
        _job(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
