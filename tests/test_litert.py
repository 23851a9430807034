"""Tests for pipeline.litert: half-precision detection and the float16 runner."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import litert
from pipeline.litert import LiteRTFloat16Model, LiteRTModel, convert, native_float16

needs_float16 = pytest.mark.skipif(not native_float16(),
                                   reason="this CPU has no half-precision arithmetic")


@pytest.mark.parametrize(("machine", "flags", "expected"), [
    ("x86_64", {"avx2", "avx512f", "avx512_fp16"}, True),
    ("x86_64", {"avx2", "avx512f", "avx512_bf16"}, False),  # bfloat16 is not IEEE half
    ("aarch64", {"fp", "asimd", "fphp", "asimdhp"}, True),
    ("aarch64", {"fp", "asimd"}, False),
    ("x86_64", set(), False),  # no /proc/cpuinfo
])
def test_native_float16_reads_the_cpu_flags(monkeypatch, machine, flags, expected):
    monkeypatch.setattr(litert.sys, "platform", "linux")
    monkeypatch.setattr(litert.platform, "machine", lambda: machine)
    monkeypatch.setattr(litert, "_cpu_flags", lambda: flags)
    assert native_float16() is expected


def test_cpu_flags_come_from_the_flags_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512_fp16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *args, **kwargs: real_open(
        cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs))
    assert litert._cpu_flags() == {"fpu", "avx2", "avx512_fp16"}


@pytest.fixture(scope="module")
def small_network():
    """A small convolutional network with two outputs, converted at a batch of 4."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs / 255.0)
    hidden = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(hidden)
    network = keras.Model(inputs, [hidden, keras.layers.GlobalAveragePooling2D()(hidden)])
    function = tf.function(lambda images: network(tf.cast(images, tf.float32)))
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return convert(function, tf.TensorSpec(images.shape, tf.uint8)), images


@needs_float16
def test_float16_runs_the_float32_model_to_half_precision(small_network, capfd):
    model, images = small_network
    half = LiteRTFloat16Model(model)
    assert capfd.readouterr().err == ""  # LiteRT's set-up log is kept back
    for ours, reference in zip(half(images), LiteRTModel(model)(images), strict=True):
        assert ours.dtype == np.float32 and ours.shape == reference.shape
        assert np.abs(ours - reference).max() <= 1e-2 * np.abs(reference).max()
        assert not np.array_equal(ours, reference)  # it really ran in float16


def test_float16_on_bytes_that_are_no_model_says_what_litert_said():
    with pytest.raises(RuntimeError, match="could not compile the model in float16"):
        LiteRTFloat16Model(b"not a LiteRT model" * 8)


def test_loading_the_metadata_writer_prints_nothing_a_user_would_take_for_an_error():
    """mediapipe's native module prints an AttributeError line when it loads beside protobuf
    5+ (harmless: the writer works); the export must not show it."""
    import subprocess
    import sys

    pytest.importorskip("mediapipe.tasks.python.metadata.metadata_writers")
    done = subprocess.run([sys.executable, "-c", (
        "from pipeline.litert import metadata_writer_available\n"
        "assert metadata_writer_available()")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AttributeError" not in done.stderr, done.stderr
