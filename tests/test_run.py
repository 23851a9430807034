"""The whole pipeline, end to end, on a tiny fake Fashion-MNIST and a tiny untrained backbone."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.litert import native_float16
from pipeline.model import read_class_names
from pipeline.run import STAGES, run_stages, stage_fingerprints
from pipeline.stages import read_lock
from tests.test_fashion_mnist import make_fake_fashion

TINY = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
        "train.head_epochs=2", "train.fine_tune_epochs=1", "train.cached_views=2",
        "augment.chain=light", "augment.preview_images=2", "augment.preview_views=2"]


@pytest.fixture
def tiny_config(tmp_path):
    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=60, test=20)
    return load_config("configs/default.yaml", [
        *TINY, f"data.path={tmp_path / 'idx'}", f"runs_dir={tmp_path / 'runs'}",
        f"export.models_dir={tmp_path / 'models'}", "name=tiny"])


@pytest.mark.e2e
def test_all_stages_write_their_artifacts(tiny_config, tmp_path, capsys):
    run_dir = tiny_config.run_dir
    stale = run_dir / "backup" / "phase1"  # an older config's backup (or an older layout's)
    stale.mkdir(parents=True)
    (stale / "chkpt.weights.h5").write_bytes(b"not for this config")
    run_stages(tiny_config)
    for name in ("config.yaml", "lock.json", "data/dataset.json", "data/data_report.json",
                 "augment_preview.png", "model.keras", "metrics.json", "report.md",
                 "training_curves.png", "confusion_matrix.png"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    counts = json.loads((run_dir / "data" / "dataset.json").read_text())["counts"]
    for split in ("train", "dev", "test"):
        # every example of each split (train has fewer than train_error_examples) was scored
        confusion = np.array(metrics[split]["confusion_matrix"])
        assert confusion.sum() == metrics[split]["num_examples"] == counts[split]
        assert metrics[split]["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
        assert metrics[split]["error"] == pytest.approx(1 - metrics[split]["accuracy"])
    assert metrics["test"]["num_examples"] == 20  # the official test split, untouched
    assert metrics["diagnosis"]["train_error"] == pytest.approx(metrics["train"]["error"])
    export_dir = tmp_path / "models" / "tiny"
    labels = (export_dir / "labels.txt").read_text().splitlines()
    assert labels[0] == "T-shirt/top" and len(labels) == 10
    exported = keras.models.load_model(export_dir / "model.keras")
    assert (export_dir / "model.tflite").stat().st_size > 0  # export.formats default: + litert
    assert read_class_names(exported) == labels
    assert exported.input_shape[1:] == (32, 32, 3)
    output = capsys.readouterr().out
    assert f"Run folder: {run_dir}" in output and "Exported model:" in output
    assert not stale.exists()
    assert f"Removed {stale}: a training backup of another config, never resumed." in output
    assert set(read_lock(run_dir)) == set(STAGES)
    # Lite0 is a backbone the registry sends to LiteRT, and nothing made it fall back
    # (in float16 where the CPU has half-precision arithmetic: extraction_precision "auto")
    precision = "float16" if native_float16() else "float32"
    assert f"Feature extraction runs on litert in {precision}" in output
    history = json.loads((run_dir / "train_history.json").read_text())
    assert (history["extraction_engine"], history["extraction_precision"]) == ("litert",
                                                                               precision)


def test_fresh_stages_are_skipped_and_changed_ones_rerun(tiny_config, capsys):
    run_stages(tiny_config, ("data",))
    before = (tiny_config.run_dir / "data" / "train_labels.npy").stat().st_mtime_ns
    capsys.readouterr()
    run_stages(tiny_config, ("data",))
    assert "[data] up to date" in capsys.readouterr().out
    assert (tiny_config.run_dir / "data" / "train_labels.npy").stat().st_mtime_ns == before


def test_stage_out_of_order_is_a_clear_error(tiny_config, capsys):
    argv = ["evaluate", "--config", "configs/default.yaml", *TINY,
            f"data.path={tiny_config.data.path}", f"runs_dir={tiny_config.runs_dir}"]
    assert main(argv) == 2
    assert "needs the 'train' stage" in capsys.readouterr().err


def test_cli_reports_config_errors_without_traceback(capsys):
    assert main(["data", "train.head_epoch=1"]) == 2
    error = capsys.readouterr().err
    assert "Unknown config key 'train.head_epoch'" in error and "Traceback" not in error


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["data", f"data.path={tmp_path}", f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_split_keeps_official_test_and_divides_train(tiny_config):
    run_stages(tiny_config, ("data",))
    counts = json.loads((tiny_config.run_dir / "data" / "dataset.json").read_text())["counts"]
    assert counts["test"] == 20
    assert counts["train"] + counts["dev"] == 60 and counts["dev"] > 0
    labels = np.load(tiny_config.run_dir / "data" / "train_labels.npy")
    assert labels.dtype == np.int32


def test_a_replaced_local_weights_file_makes_training_stale(tiny_config, tmp_path):
    weights = tmp_path / "base.weights.h5"
    weights.write_bytes(b"first weights")
    config = dataclasses.replace(tiny_config, model=dataclasses.replace(
        tiny_config.model, weights=str(weights)))
    before = stage_fingerprints(config)
    weights.write_bytes(b"other weights")  # same path, new content
    after = stage_fingerprints(config)
    assert after["data"] == before["data"]
    assert after["train"] != before["train"] and after["search"] != before["search"]


def test_phase_2_from_all_trains_every_layer_but_batch_norm_on_live_pixels(tiny_config, capsys):
    """`train.fine_tune_from=all`: `auto` feeds it pixels augmented live (a cache at the input
    would save nothing), and every weight trains except BatchNorm's."""
    config = dataclasses.replace(
        tiny_config, train=dataclasses.replace(tiny_config.train, fine_tune_from="all"))
    run_stages(config, ("data", "train"))
    output = capsys.readouterr().out
    assert "(phase2_feeding: pixels)" in output
    history = json.loads((config.run_dir / "train_history.json").read_text())
    assert (history["fine_tune_from"], history["phase2_feeding"]) == ("all", "pixels")
    model = keras.models.load_model(config.run_dir / "model.keras")
    layers = [layer for layer in model.layers if isinstance(layer, keras.Model)] + [model]
    batch_norm = sum(int(np.prod(weight.shape)) for owner in layers for layer in owner.layers
                     if isinstance(layer, keras.layers.BatchNormalization)
                     for weight in layer.weights)
    trainable = model.count_params() - batch_norm
    assert f"{model.count_params():,} parameters, {trainable:,} trainable." in output
