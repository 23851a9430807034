"""Computing a frozen base's features once, for K augmented views of each image.

While the base is frozen (BatchNorm in inference mode) its output for a given input never
changes, so phase 1 can train the head on cached features instead of re-running the base every
epoch. Caching K augmented views keeps augmentation: each epoch draws one view per image.

The same pass also caches the activations where the top blocks begin (the backbone spec's
`unfreeze_from`): phase 2 fine-tunes only those blocks, and the layers below them are frozen
too, so their output can be cached just the same.

The pass runs in batches of one fixed size (a short last batch is padded), on TensorFlow or, for
the backbones where it is faster, on LiteRT (`pipeline.litert`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pipeline.config import ExtractionEngine
from pipeline.data.stream import NpyAppender, unmapped
from pipeline.inputs import augmented_batches, pad_batch
from pipeline.litert import (
    PRECISIONS,
    LiteRTFloat16Model,
    LiteRTModel,
    convert,
    native_float16,
)

ENGINES = tuple(name for name in typing.get_args(ExtractionEngine) if name != "auto")
# The agreement check's bound on |LiteRT - TensorFlow|, as a share of the largest output (at
# least 1): float32 round-off, and float16 arithmetic (Lite0 on random pixels, pooled features
# and activations: 1.1% and 1.6% at 160 px, 6.5% and 1.1% at 32 px). A wrong conversion is
# off by about the whole output.
TOLERANCE = {"float32": 1e-3, "float16": 0.1}

# LiteRT runs these networks fastest in small batches (their activations stay in the CPU's
# caches). Images/s, batch 16 against 64, 160 px, 2 cores: Lite0 1.21x, MobileNetV2 1.22x,
# EfficientNetB0 1.16x; Lite0 at 224 px 1.20x, at 96 px the same; batch 8 is no faster than
# 16. TensorFlow is fastest at 64 (Lite0: 16 runs at 0.87x), so it keeps the training batch.
LITERT_BATCH_SIZE = 16


@dataclass(frozen=True)
class FeatureCache:
    """Cached outputs for K views of N images.

    Attributes:
        pooled: (K, N, D) float16 pooled features of the whole base (phase 1 input).
        activations: (K, N, H, W, C) float16 activations at the top blocks' input
            (phase 2 input), or None when phase 2 is not run.
    """

    pooled: np.ndarray
    activations: np.ndarray | None

    def save(self, folder: Path, prefix: str) -> None:
        """Writes `<prefix>_pooled.npy` (and `<prefix>_activations.npy`) into `folder`
        (`extract_features(folder=...)` writes the same files as it goes)."""
        np.save(folder / f"{prefix}_pooled.npy", self.pooled)
        if self.activations is not None:
            np.save(folder / f"{prefix}_activations.npy", self.activations)

    @classmethod
    def load(cls, folder: Path, prefix: str) -> FeatureCache:
        """Reads what `save` wrote, memory-mapped."""
        activations = folder / f"{prefix}_activations.npy"
        return cls(np.load(folder / f"{prefix}_pooled.npy", mmap_mode="r"),
                   np.load(activations, mmap_mode="r") if activations.is_file() else None)


@dataclass(frozen=True)
class Forward:
    """The frozen base's forward pass over uint8 batches of exactly `batch_size` images.

    Called with a NumPy batch, it returns NumPy (top-block input activations, pooled features).

    Attributes:
        engine: "tensorflow" or "litert", the engine that actually runs it.
        precision: "float32", or "float16" when LiteRT runs it in half precision.
        batch_size: the one batch size it accepts (pad a short last batch).
        run: the callable behind it.
    """

    engine: str
    precision: str
    batch_size: int
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.run(batch)


def make_forward(bottom: keras.Model, top: keras.Model, *, batch_size: int,
                 engine: str = "tensorflow", precision: str = "float32") -> Forward:
    """Compiles the frozen base's forward pass, returning (top-block input, pooled features).

    Args:
        bottom, top: from `split_backbone`.
        batch_size: images per call (LiteRT takes at most `LITERT_BATCH_SIZE`).
        engine: "tensorflow" (a `tf.function`) or "litert" (the same graph converted to LiteRT
            and run by its XNNPACK kernels). LiteRT is checked against TensorFlow on one batch
            first; when it is not installed, cannot convert the model or disagrees, the pass
            falls back to TensorFlow and says why.
        precision: LiteRT's arithmetic, "float32", "float16" (`LiteRTFloat16Model`) or "auto"
            (float16 where the CPU has half-precision arithmetic, `native_float16`); float16
            that fails or disagrees falls back to float32 and says why. TensorFlow runs float32.

    Returns:
        A `Forward`; its `engine` and `precision` say what actually runs it.
    """
    pool = keras.layers.GlobalAveragePooling2D()

    @tf.function
    def function(images):
        # uint8 batches cross into the graph (a quarter of float32's bytes) and are cast here
        activations = bottom(tf.cast(images, tf.float32), training=False)
        return activations, pool(top(activations, training=False))

    def run_tensorflow(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        activations, pooled = function(tf.constant(batch))
        return activations.numpy(), pooled.numpy()

    tensorflow = Forward("tensorflow", "float32", batch_size, run_tensorflow)
    for name, value, known in (("engine", engine, ENGINES),
                               ("precision", precision, ("auto", *PRECISIONS))):
        if value not in known:
            raise ValueError(f"Unknown {name} '{value}'. Expected one of: {', '.join(known)}. "
                             f"Received: {name}={value!r}")
    if precision == "auto":
        precision = "float16" if native_float16() else "float32"
    if engine == "tensorflow":
        return tensorflow
    input_spec = tf.TensorSpec((min(batch_size, LITERT_BATCH_SIZE), *bottom.input.shape[1:]),
                               tf.uint8)
    return _litert_forward(function, run_tensorflow, input_spec, precision) or tensorflow


def _litert_forward(function, run_tensorflow, input_spec: tf.TensorSpec,
                    precision: str) -> Forward | None:
    """`function` converted to LiteRT and checked against TensorFlow, in `precision` or else in
    float32; None (having said why) when LiteRT cannot run it."""
    try:
        converted = convert(function, input_spec)
    except Exception as error:  # noqa: BLE001  (any failure here only costs speed)
        print(f"LiteRT cannot run this backbone ({type(error).__name__}: {error}); "
              f"running it with TensorFlow instead (slower, same results).")
        return None
    batch = np.random.default_rng(0).integers(0, 256, input_spec.shape, dtype=np.uint8)
    reference = run_tensorflow(batch)
    for attempt in dict.fromkeys((precision, "float32")):  # float16 first, if asked for
        try:
            model = (LiteRTFloat16Model if attempt == "float16" else LiteRTModel)(converted)
            _check_agreement(model(batch), reference, TOLERANCE[attempt])
            return Forward("litert", attempt, input_spec.shape[0], model)
        except Exception as error:  # noqa: BLE001
            fallback = ("in float32 instead" if attempt == "float16"
                        else "with TensorFlow instead (slower, same results)")
            print(f"LiteRT cannot run this backbone in {attempt} ({type(error).__name__}: "
                  f"{error}); running it {fallback}.")
    return None


def _check_agreement(outputs: tuple[np.ndarray, ...], reference: tuple[np.ndarray, ...],
                     tolerance: float) -> None:
    """LiteRT's outputs must equal TensorFlow's on the same batch, within `tolerance` of the
    largest output."""
    for name, ours, expected in zip(("activations", "pooled features"), outputs, reference,
                                    strict=True):
        scale = max(1.0, float(np.abs(expected).max()))
        if ours.shape != expected.shape or np.abs(ours - expected).max() > tolerance * scale:
            raise ValueError(f"the converted model's {name} differ from TensorFlow's")


def extract_features(forward: Forward, images: np.ndarray, augmenter, *, views: int,
                     keep_activations: bool, description: str,
                     folder: Path | None = None, prefix: str = "") -> FeatureCache:
    """Runs the frozen base over `views` augmented passes of `images`.

    Images are read a batch at a time (a memory-mapped split through plain file reads,
    `pipeline.data.stream.unmapped`). With `folder`, each batch's outputs are appended to the
    cache files as they come (`FeatureCache.save`'s names, `NpyAppender`) and the cache is
    returned memory-mapped, so extraction holds a batch, not the cache: K views of 100,000
    images' block activations are tens of GB.

    Args:
        forward: from `make_forward`.
        images: uint8 (N, H, W, 3) images (may be memory-mapped).
        augmenter: a `BatchAugmenter`; view k uses its epoch k, so views differ and repeat
            exactly with the same seed.
        views: K, the number of augmented views per image.
        keep_activations: also keep the top-block input activations (for phase 2).
        description: progress bar label.
        folder: write the cache here, as `<prefix>_pooled.npy` (and `_activations.npy`);
            None keeps it in memory.
        prefix: the files' prefix in `folder`.

    Returns:
        The cache, float16.
    """
    count, batch_size = len(images), forward.batch_size
    if count == 0:
        raise ValueError(f"No images to extract features from ({description}).")
    images = unmapped(images)
    sink = _CacheSink(views, count, keep_activations, folder, prefix)
    with tqdm(total=views * count, desc=description, unit="img", smoothing=0.1) as progress:
        for view in range(views):
            stream = augmented_batches(images, augmenter, batch_size, epoch=view)
            for index, batch in enumerate(stream):
                size = len(batch)
                batch_activations, batch_pooled = forward(pad_batch(batch, batch_size))
                sink.put(view, index * batch_size, batch_pooled[:size],
                         batch_activations[:size])
                progress.update(size)
    return sink.close()


class _CacheSink:
    """Where `extract_features` puts each batch's outputs: arrays in memory, or `.npy` files
    appended in order (view by view, batch by batch: the files' row order)."""

    def __init__(self, views: int, count: int, keep_activations: bool, folder: Path | None,
                 prefix: str):
        self.views, self.count, self.keep = views, count, keep_activations
        self.folder, self.prefix = folder, prefix
        self.pooled = self.activations = None

    def put(self, view: int, start: int, pooled: np.ndarray, activations: np.ndarray) -> None:
        if self.pooled is None:
            self._open(pooled.shape[1:], activations.shape[1:])
        if self.folder is not None:
            self.pooled.write(pooled.astype(np.float16))
            if self.keep:
                self.activations.write(activations.astype(np.float16))
            return
        self.pooled[view, start:start + len(pooled)] = pooled
        if self.keep:
            self.activations[view, start:start + len(activations)] = activations

    def _open(self, pooled_shape: tuple[int, ...], activations_shape: tuple[int, ...]) -> None:
        shapes = {"pooled": (self.views, self.count, *pooled_shape)}
        if self.keep:
            shapes["activations"] = (self.views, self.count, *activations_shape)
        for name, shape in shapes.items():
            if self.folder is None:
                setattr(self, name, np.empty(shape, np.float16))
            else:  # rows of (view, example) in C order: views * count rows
                path = self.folder / f"{self.prefix}_{name}.npy"
                setattr(self, name, NpyAppender(path, shape, np.float16, leading_axes=2))

    def close(self) -> FeatureCache:
        if self.folder is None:
            return FeatureCache(self.pooled, self.activations)
        self.pooled.close()
        if self.keep:
            self.activations.close()
        return FeatureCache.load(self.folder, self.prefix)
