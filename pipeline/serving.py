"""The SavedModel's serving graph: image bytes or pixels in, class names and scores out.

Everything between a file and the network is inside the graph, reproducing what evaluation
does (`pipeline.data.images.load_image`, `resize_square`, the eval transform), so a deployer
writes no preprocessing:

    decode   JPEG with libjpeg's accurate integer DCT (Pillow's), PNG and WebP with their alpha
             composited on white, GIF (first frame) and BMP by `tf.io.decode_image`; an
             animated WebP is refused (TensorFlow 2.21's decoder corrupts memory on one)
    square   shorter side to the stored size, centre crop: Pillow's bilinear filter (a
             triangle widened by the scale when shrinking) with the crop box in continuous
             coordinates, in Pillow's fixed point: bit for bit what Pillow computes
    resize   stored size to the model's input size as the eval transform does it (OpenCV's
             INTER_AREA when shrinking, its fixed-point INTER_LINEAR when enlarging), as
             constant per-axis weights: bit for bit what OpenCV computes
    network  the trained Keras model (it normalises inside)

Signatures (`tf.saved_model.load(path).signatures[...]`, or TensorFlow Serving):
    serving_default  image_bytes: string (batch,)   encoded JPEG, PNG, GIF, BMP or WebP files
    classify_pixels  pixels: uint8 (batch, height, width, 3)   RGB, any height and width
Both return probabilities (batch, classes), classes (batch, k) strings and scores (batch, k).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

# OpenCV's fixed-point resize of 8-bit images keeps weights in 11 bits (INTER_RESIZE_COEF_BITS).
_COEF_SCALE = 2048.0
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A WebP file is a RIFF container; an extended one ("VP8X" chunk) sets bit 1 of its flags
# byte when animated.
_RIFF_MAGIC, _WEBP_MAGIC, _EXTENDED_WEBP = b"RIFF", b"WEBP", b"VP8X"
_WEBP_ANIMATED_FLAG = 0x02
# Pillow resamples 8-bit images in fixed point with 22 fractional bits (PRECISION_BITS).
_PILLOW_ONE = float(1 << 22)


def eval_resize_weights(stored_size: int, image_size: int) -> dict[str, np.ndarray]:
    """Per-axis weights that reproduce the eval transform's uint8 resize `stored -> image`.

    Shrinking (INTER_AREA) is a linear map in float, rounded once: one matrix serves both
    axes. Enlarging (INTER_LINEAR on uint8) is OpenCV's fixed point: 11-bit column weights,
    and rows blended by its vectorised kernel from two source rows each (rows past the border
    are clamped, not re-weighted), which the graph reproduces step by step.

    Returns:
        {"columns": (image, stored) weights} and, when enlarging, "rows" (image, 2) source
        row indices and "row_weights" (image, 2) 11-bit weights.
    """
    interpolation = cv2.INTER_AREA if image_size < stored_size else cv2.INTER_LINEAR
    # OpenCV's own weights: each column of an identity image resized along its rows
    identity = np.eye(stored_size, dtype=np.float32)
    columns = cv2.resize(identity, (image_size, stored_size),
                         interpolation=interpolation).T.astype(np.float64)
    if image_size <= stored_size:
        return {"columns": columns}
    position = ((np.arange(image_size) + 0.5) * (stored_size / image_size) - 0.5)
    position = position.astype(np.float32)
    first = np.floor(position)
    fraction = position - first
    rows = np.clip(np.stack([first, first + 1], axis=1), 0, stored_size - 1).astype(np.int64)
    row_weights = np.rint(np.stack([1 - fraction, fraction], axis=1) * np.float32(_COEF_SCALE))
    return {"columns": np.rint(columns * _COEF_SCALE), "rows": rows,
            "row_weights": row_weights.astype(np.float64)}


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """One encoded image (scalar string) -> uint8 (height, width, 3) RGB, as Pillow decodes it.

    Left to TensorFlow's decoders, with the differences the model card lists: EXIF
    orientation is not applied, GIF transparency is not composited on white.
    """
    def jpeg():
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def png():
        return _over_white(tf.io.decode_png(data, channels=4))

    def webp():
        flags = tf.io.decode_raw(tf.strings.substr(data, 20, 1), tf.uint8)[0]
        animated = tf.logical_and(tf.strings.substr(data, 12, 4) == _EXTENDED_WEBP,
                                  tf.bitwise.bitwise_and(flags, _WEBP_ANIMATED_FLAG) > 0)
        refuse = tf.debugging.Assert(tf.logical_not(animated), [
            "An animated WebP cannot be decoded by this model's serving function; send one "
            "frame of it as a JPEG, PNG or still WebP."])
        with tf.control_dependencies([refuse]):
            # One frame; 4 channels whether or not the file has alpha (channels=0)
            frame = tf.io.decode_webp(data, channels=0)[0]
        rgba = tf.concat([frame, tf.fill(tf.shape(frame[..., :1]), tf.constant(255, tf.uint8))],
                         axis=-1)[..., :4]
        return _over_white(rgba)

    def other():
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.ensure_shape(image, [None, None, 3])

    head = tf.strings.substr(data, 0, 12)
    is_webp = tf.logical_and(tf.strings.substr(head, 0, 4) == _RIFF_MAGIC,
                             tf.strings.substr(head, 8, 4) == _WEBP_MAGIC)
    return tf.case([(tf.strings.substr(head, 0, 3) == _JPEG_MAGIC, jpeg),
                    (tf.strings.substr(head, 0, 8) == _PNG_MAGIC, png),
                    (is_webp, webp)], default=other, exclusive=True)


def _over_white(rgba: tf.Tensor) -> tf.Tensor:
    """uint8 RGBA -> uint8 RGB composited on white, rounded as Pillow's decode path does."""
    rgba = tf.cast(rgba, tf.float32)
    alpha = rgba[..., 3:] / 255.0
    over_white = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return tf.cast(tf.round(over_white), tf.uint8)


def resize_square(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (batch, height, width, 3) -> (batch, size, size, 3): shorter side to `size`, centre
    crop; Pillow's bilinear resize with a crop box, bit for bit (see `_pillow_weights`)."""
    shape = tf.shape(images)
    height, width = tf.cast(shape[1], tf.float64), tf.cast(shape[2], tf.float64)
    side = tf.minimum(height, width)
    columns = _pillow_weights(shape[2], (width - side) / 2, side, size)
    rows = _pillow_weights(shape[1], (height - side) / 2, side, size)
    # Pillow resizes rows first into 8-bit pixels, then columns of that
    across = _fixed_point(tf.einsum("jx,nyxc->nyjc", columns, tf.cast(images, tf.float64)))
    return tf.cast(_fixed_point(tf.einsum("iy,nyjc->nijc", rows, across)), tf.uint8)


def _pillow_weights(length: tf.Tensor, start: tf.Tensor, extent: tf.Tensor,
                    size: int) -> tf.Tensor:
    """Pillow's fixed-point bilinear weights (libImaging/Resample.c, `precompute_coeffs`) for
    resizing the span [start, start + extent) of an axis of `length` pixels to `size`, as a
    dense (size, length) matrix of integers scaled by 2**22."""
    scale = extent / size
    filter_scale = tf.maximum(scale, 1.0)
    support = filter_scale  # the bilinear filter's support is 1, widened when shrinking
    centers = start + (tf.range(size, dtype=tf.float64) + 0.5) * scale
    first = tf.maximum(tf.floor(centers - support + 0.5), 0.0)
    stop = tf.minimum(tf.floor(centers + support + 0.5), tf.cast(length, tf.float64))
    positions = tf.range(tf.cast(length, tf.float64), dtype=tf.float64)[None, :]
    inside = (positions >= first[:, None]) & (positions < stop[:, None])
    weights = tf.maximum(1.0 - tf.abs((positions - centers[:, None] + 0.5) / filter_scale), 0.0)
    weights = tf.where(inside, weights, 0.0)
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)
    return tf.floor(0.5 + weights * _PILLOW_ONE)


def _fixed_point(sums: tf.Tensor) -> tf.Tensor:
    """Pillow's rounding of a fixed-point weighted sum back to an 8-bit value."""
    return tf.clip_by_value(tf.floor((sums + _PILLOW_ONE / 2) / _PILLOW_ONE), 0.0, 255.0)


def eval_resize(squares: tf.Tensor, weights: dict[str, np.ndarray]) -> tf.Tensor:
    """uint8 (batch, stored, stored, 3) -> (batch, image, image, 3) as the eval transform."""
    columns = tf.constant(weights["columns"], tf.float64)
    across = tf.einsum("jx,nyxc->nyjc", columns, tf.cast(squares, tf.float64))
    if "rows" not in weights:
        resized = tf.round(tf.einsum("iy,nyjc->nijc", columns, across))
    else:
        # OpenCV's vectorised row blend: each term shifted right by 4, multiplied by its
        # weight keeping the high 16 bits, then summed and rounded off by 2 more bits.
        rows, row_weights = weights["rows"], weights["row_weights"]
        terms = [tf.floor(tf.floor(tf.gather(across, rows[:, tap], axis=1) / 16.0)
                          * row_weights[None, :, tap, None, None] / 65536.0) for tap in (0, 1)]
        resized = tf.floor((terms[0] + terms[1] + 2.0) / 4.0)
    return tf.cast(tf.clip_by_value(resized, 0.0, 255.0), tf.uint8)


def write_saved_model(model: keras.Model, path: Path, *, class_names: list[str],
                      stored_size: int, top_k: int = 5) -> None:
    """Writes `model` as a SavedModel with the two serving signatures of the module docstring.

    Args:
        model: the trained classifier (float32 pixels 0-255 in, probabilities out).
        path: the folder to write.
        class_names: names of the model's outputs, in order.
        stored_size: the square size the data stage stored images at.
        top_k: how many classes and scores each signature returns (at most all classes).
    """
    image_size = model.input_shape[1]
    weights = eval_resize_weights(stored_size, image_size)
    names = tf.constant(class_names)
    k = min(top_k, len(class_names))

    def classify(squares: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(eval_resize(squares, weights), tf.float32)
        probabilities = model(pixels, training=False)
        scores, indices = tf.math.top_k(probabilities, k=k)
        return {"probabilities": probabilities, "classes": tf.gather(names, indices),
                "scores": scores}

    def classify_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        squares = tf.map_fn(lambda data: resize_square(decode_image(data)[None], stored_size)[0],
                            image_bytes, fn_output_signature=tf.TensorSpec(
                                (stored_size, stored_size, 3), tf.uint8))
        return classify(squares)

    def classify_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return classify(resize_square(pixels, stored_size))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", classify_bytes, input_signature=[
        tf.TensorSpec((None,), tf.string, name="image_bytes")])
    archive.add_endpoint("classify_pixels", classify_pixels, input_signature=[
        tf.TensorSpec((None, None, None, 3), tf.uint8, name="pixels")])
    archive.write_out(str(path), verbose=False)
