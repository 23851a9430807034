"""Training on several devices or machines, on TensorFlow's own engine (`tf.distribute`).

`train.distribute` picks the strategy:

    none          one device, as before.
    mirrored      `MirroredStrategy`: every GPU of this machine holds a copy of the model, each
                  step's batch is split between them and the gradients are summed.
    multi_worker  `MultiWorkerMirroredStrategy`: the same across machines, which the TF_CONFIG
                  environment variable describes as TensorFlow documents (every worker runs the
                  same command; worker 0 is the chief).

What changes under a strategy, and why:
- The strategy is created before any other TensorFlow work in the process (`start`): the
  collective ops it configures cannot be set up once TensorFlow's runtime has started.
- Feature extraction is shared (`extract_share`): worker i of n runs the frozen base over the
  i-th of n contiguous ranges of the images (augmented exactly as one worker would), then all
  workers exchange their parts with one collective all-gather. The gather is also the barrier:
  no worker trains before every part is there, and no shared file system is needed.
- Both phases compile and fit a copy of the model built under the strategy's scope
  (`fit_copy`), fed through `tf.data` (`as_dataset`) so that each worker gets its share of
  every global batch; the trained weights are copied back, so the rest of `pipeline.train`
  does not change. The global batch stays `train.batch_size`, so one worker and two compute
  the same gradient steps.
- Only the chief writes the run's artifacts (`written_by_chief`): the other workers write into a
  temporary folder they delete, as TensorFlow's multi-worker guide recommends, and stop after
  training. Each worker keeps its own training backup (Keras' `BackupAndRestore` writes one per
  worker), so when a worker is killed, all workers started again resume at the same epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, UnavailableError

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')

_strategy = None  # the process's strategy, created once by `start`
# Keras 3.15 runs several steps per call in a loop that, under MultiWorkerMirroredStrategy, fails
# ("You must feed a value for placeholder tensor ..."): under a strategy, one step per call.
STEPS_PER_EXECUTION = 1


@dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker job and which one this process is (from TF_CONFIG)."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def cluster_from_environment(environ: dict[str, str] | None = None) -> Cluster:
    """Reads TF_CONFIG as TensorFlow documents it: a "cluster" of "worker" addresses and this
    process's "task" (type "worker", its index in that list; worker 0 is the chief).

    Raises:
        ConfigError: TF_CONFIG is missing or malformed; the message shows an example.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG")
    fix = f"Set it on each machine, e.g. {TF_CONFIG_EXAMPLE} (index 1 on the second)."
    if not text:
        raise ConfigError(f"train.distribute=multi_worker needs the TF_CONFIG environment "
                          f"variable, which is not set. {fix}")
    try:
        parsed = json.loads(text)
        workers = tuple(parsed["cluster"]["worker"])
        task = parsed["task"]
        index = int(task["index"])
        if task.get("type") != "worker" or not 0 <= index < len(workers) or not all(
                isinstance(address, str) and ":" in address for address in workers):
            raise ValueError("a worker task whose index is in the worker list")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is malformed ({type(error).__name__}: {error}). "
                          f"{fix} Received: TF_CONFIG={text!r}") from None
    return Cluster(workers, index)


def start(mode: str):
    """Creates the process's strategy for `train.distribute` (once; later calls return it).

    Call it before any other TensorFlow work: `MultiWorkerMirroredStrategy` configures the
    collective ops, which TensorFlow's runtime accepts only before it starts.

    Returns:
        The `tf.distribute.Strategy`, or None for "none".
    """
    global _strategy
    if mode == "none" or _strategy is not None:
        return _strategy
    import tensorflow as tf

    if mode == "mirrored":
        _strategy = tf.distribute.MirroredStrategy()
    elif mode == "multi_worker":
        cluster = cluster_from_environment()
        print(f"Worker {cluster.index} of {len(cluster.workers)} "
              f"({'chief' if cluster.is_chief else 'worker'}); waiting for every worker of "
              f"{', '.join(cluster.workers)}.")
        _strategy = _multi_worker_strategy()
    else:
        raise ConfigError(f"Unknown train.distribute '{mode}'. Expected one of: none, "
                          f"mirrored, multi_worker. Received: train.distribute={mode!r}")
    print(f"Distributed training ({mode}): {_strategy.num_replicas_in_sync} replica(s) in sync.")
    return _strategy


def _multi_worker_strategy():
    """`MultiWorkerMirroredStrategy`, with Keras 3's reductions of step results made to work.

    Keras 3.15 reduces each step's logs with `strategy.reduce("MEAN", value, axis=0)` on scalar
    metrics, and the first batch (an (x, y) tuple) in one call; MultiWorkerMirroredStrategy
    takes neither ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388). This subclass reduces a structure item by item, scalars
    across replicas only; everything else is TensorFlow's own.
    """
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            def one(item):
                local = item.values[0] if isinstance(item, tf.distribute.DistributedValues) \
                    else item
                rank = getattr(getattr(local, "shape", None), "rank", 0)
                return super(MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, item, axis if rank else None)

            return tf.nest.map_structure(one, value)

    return MultiWorkerMirroredStrategy()


def strategy():
    """The strategy `start` created, or None when training runs on one device."""
    return _strategy


def worker() -> tuple[int, int]:
    """(this worker's index, the number of workers): (0, 1) unless multi-worker."""
    resolver = getattr(_strategy, "cluster_resolver", None)  # None for MirroredStrategy
    if resolver is None:
        return 0, 1
    count = len(resolver.cluster_spec().as_dict().get("worker", [])) or 1
    return int(resolver.task_id or 0), count


def is_chief() -> bool:
    """Whether this process writes the run's artifacts (worker 0, or the only process)."""
    return worker()[0] == 0


def share(count: int, index: int, workers: int) -> slice:
    """Worker `index`'s contiguous range of `count` items, the ranges of all `workers` covering
    them once, their sizes differing by at most one (e.g. 10 items, 3 workers: 4, 3, 3)."""
    base, extra = divmod(count, workers)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


class _OffsetAugmenter:
    """An augmenter seen through a range of the images: image i of the range is augmented as
    image `offset + i` of the whole, so a worker's share is augmented as one worker would."""

    def __init__(self, augmenter, offset: int):
        self.augmenter, self.offset = augmenter, offset

    def __call__(self, batch: np.ndarray, indices: np.ndarray, epoch: int) -> np.ndarray:
        return self.augmenter(batch, np.asarray(indices) + self.offset, epoch)


def extract_share(extract: Callable, images: np.ndarray, augmenter, *, description: str,
                  **options):
    """`extract(images, augmenter, description=..., **options)` (`features.extract_features`
    with its `forward` bound), shared between the workers: each runs its range of the images
    (`share`), then all gather the whole cache, in the images' order.

    Returns:
        The `FeatureCache` of all images, on every worker.
    """
    from pipeline.features import FeatureCache

    if _strategy is None:
        return extract(images, augmenter, description=description, **options)
    index, count = worker()
    part = share(len(images), index, count)
    print(f"Worker {index} of {count} extracts images {part.start}-{part.stop - 1} "
          f"({part.stop - part.start} of {len(images)}): {description}.")
    started = time.perf_counter()
    cache = extract(images[part], _OffsetAugmenter(augmenter, part.start),
                    description=f"{description}, worker {index}", **options)
    seconds = time.perf_counter() - started
    passes = cache.pooled.shape[0] * cache.pooled.shape[1]  # views x images
    print(f"Worker {index} of {count} extracted {passes} image views in {seconds:.2f} s "
          f"({passes / seconds:.1f} image views/s).")
    if count == 1:
        return cache
    activations = cache.activations
    gathered = FeatureCache(gather(cache.pooled, axis=1),
                            None if activations is None else gather(activations, axis=1))
    folder = options.get("folder")
    if folder is not None:  # the files hold this worker's share: replace them with the whole
        for path in Path(folder).glob(f"{options.get('prefix', '')}_*.npy"):
            path.unlink()  # not truncated in place: the share may still be memory-mapped
        gathered.save(Path(folder), options.get("prefix", ""))
    return gathered


def gather(array: np.ndarray, *, axis: int) -> np.ndarray:
    """Every worker's `array` concatenated along `axis` in worker order (one collective
    all-gather; the parts may differ in length along `axis`). Also a barrier: it returns once
    every worker has sent its part."""
    import tensorflow as tf

    moved = np.ascontiguousarray(np.moveaxis(array, axis, 0))

    @tf.function
    def all_gather(value):
        # tf.identity places the value on the replica's device; the gather needs one
        return _strategy.run(lambda local: tf.distribute.get_replica_context().all_gather(
            tf.identity(local), axis=0), args=(value,))

    with workers_in_step():
        result = _strategy.experimental_local_results(all_gather(tf.constant(moved)))[0]
    return np.moveaxis(result.numpy(), 0, axis)


def as_dataset(batches):
    """A `keras.utils.PyDataset` of (inputs, targets) batches as a `tf.data.Dataset`.

    Under MultiWorkerMirroredStrategy Keras fails on a PyDataset (its workers' batch shapes
    disagree in the first collective step); as tf.data, each global batch is split between the
    workers by TensorFlow's sharding ("DATA": each worker takes its part of every batch). Batches
    are read from `batches` when the step asks for them, so its `set_epoch` still applies.
    """
    import tensorflow as tf

    first = batches[0]
    specs = tuple(tf.TensorSpec((None, *item.shape[1:]), tf.as_dtype(item.dtype))
                  for item in first)

    def read(index):
        return batches[int(index)]

    def load(index):
        items = tf.numpy_function(read, [index], [spec.dtype for spec in specs])
        return tuple(tf.ensure_shape(item, spec.shape) for item, spec in zip(items, specs,
                                                                             strict=True))

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return tf.data.Dataset.range(len(batches)).map(load).prefetch(2).with_options(options)


def fit_copy(model, fit: Callable) -> None:
    """Runs `fit(copy)` on a copy of `model` built under the strategy's scope, then copies the
    trained weights back into `model` (whose layers the classifier is assembled from).

    Variables must be created under the scope to be mirrored; building the frozen base and the
    head there too would also put the feature extraction's graph under the strategy.
    """
    import keras

    with _strategy.scope(), workers_in_step():
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        fit(copy)
    model.set_weights(copy.get_weights())


@contextlib.contextmanager
def workers_in_step() -> Iterator[None]:
    """Turns the abort of the collective ops when another worker stops (killed, crashed, its
    machine gone: TensorFlow's `UnavailableError` after the missed heartbeats) into one line
    saying how to resume."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.UnavailableError as error:
        lost = [line.strip() for line in str(error).splitlines() if line.startswith("/job:")]
        raise UnavailableError(
            f"a worker of this multi-worker job stopped ({', '.join(lost) or 'no heartbeat'}), "
            f"so the others cannot go on. Start the same command again on every machine: each "
            f"resumes from its own training backup.") from None


@contextlib.contextmanager
def written_by_chief(run_dir: Path) -> Iterator[Path]:
    """The folder this worker writes the run's artifacts to: `run_dir` on the chief; on the
    other workers a temporary folder, removed afterwards, as TensorFlow's multi-worker guide
    recommends (they compute the same weights; one copy is kept)."""
    if is_chief():
        yield run_dir
        return
    folder = Path(tempfile.mkdtemp(prefix=f"pipeline_worker{worker()[0]}_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["Cluster", "cluster_from_environment", "start", "strategy", "worker", "is_chief",
           "share", "extract_share", "gather", "as_dataset", "fit_copy", "written_by_chief",
           "TF_CONFIG_EXAMPLE"]
