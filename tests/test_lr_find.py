"""Learning-rate finder: an exponential sweep, a smoothed loss, the steepest fall suggested."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.lr_find import (
    resolve_fine_tune_learning_rate,
    resolve_head_learning_rate,
    suggestions,
    sweep,
    sweep_fine_tune,
)
from tests.test_search import TINY


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    rates = np.geomspace(1e-6, 1.0, 300)
    position = np.log10(rates)
    # flat, a fall centred on 1e-3, a minimum at 1e-1, then divergence
    loss = 2.0 - np.tanh(2 * (position + 3)) + np.where(position > -1, 30 * (position + 1) ** 2, 0)
    found = suggestions(rates, loss)
    assert found["suggested"] == pytest.approx(1e-3, rel=0.1)
    minimum = rates[np.argmin(loss)]
    assert found["minimum_over_10"] == pytest.approx(minimum / 10)
    assert 0.5e-2 < found["minimum_over_10"] < 2e-2


def test_phase_2_suggests_a_tenth_of_where_its_flat_loss_starts_to_climb():
    """From a trained head the loss has nothing to fall from: flat and noisy, then climbing.
    The steepest fall is noise there; a tenth of the climb's start is the suggestion."""
    rates = np.geomspace(1e-7, 1e-1, 150)
    noise = np.random.default_rng(0).normal(0, 0.01, 150)
    climb = np.where(rates > 1e-3, np.log10(rates / 1e-3), 0.0)
    found = suggestions(rates, 0.9 + noise + climb, rule="edge")
    assert found["suggested"] == found["edge_over_10"]
    assert 1e-4 < found["suggested"] < 2e-4
    assert suggestions(rates, 0.9 + noise + climb)["suggested"] < 1e-5  # steepest: noise


def separable(count: int = 512, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    features = rng.normal(0, 1, (1, count, 8)).astype("float32")
    features[0, np.arange(count), labels] += 3.0
    return features, labels


def test_sweep_learns_then_stops_when_the_loss_diverges():
    features, labels = separable()
    config = load_config(None, ["train.batch_size=32", "model.dropout=0.0"])
    result = sweep(features, labels, 4, config.model, config.train, steps=100, span=(1e-4, 1e3))
    rates = np.array(result["learning_rates"])
    np.testing.assert_allclose(rates[1:] / rates[:-1], 1e7 ** (1 / 99))
    smoothed = np.array(result["smoothed"])
    assert smoothed.min() < 0.5 * smoothed[0]  # it learned
    assert rates[0] < result["suggested"] < rates[np.argmin(smoothed)]
    assert result["minimum_over_10"] == pytest.approx(rates[np.argmin(smoothed)] / 10)
    # a rate that diverges ends the sweep early; a sweep that stays small runs every step
    assert len(rates) < 100 and smoothed[-1] > 4 * smoothed.min()
    calm = sweep(features, labels, 4, config.model, config.train, steps=100, span=(1e-6, 1e-4))
    assert len(calm["losses"]) == 100


def test_auto_takes_the_suggestion(monkeypatch):
    features, labels = separable()
    seen = {}

    def fake_sweep(features, labels, num_classes, model, training):
        seen.update(shape=features.shape, num_classes=num_classes, batch=training.batch_size)
        return {"suggested": 0.0123}
    monkeypatch.setattr("pipeline.lr_find.sweep", fake_sweep)
    config = load_config(None, ["train.head_learning_rate=auto", "train.batch_size=32"])
    resolved = resolve_head_learning_rate(config.train, config.model, features, labels, 4)
    assert resolved.head_learning_rate == 0.0123 and resolved.batch_size == 32
    assert seen == {"shape": (1, 512, 8), "num_classes": 4, "batch": 32}


def test_fine_tune_sweep_trains_top_and_head_then_puts_their_weights_back(tmp_path):
    """Phase 2's sweep: block inputs through a conv `top` and a head; it learns, stops on
    divergence, and leaves both as they were (auto then trains from there)."""
    import keras

    from pipeline.train import cached_phase2

    features, labels = separable(count=256)
    activations = np.tile(features[:, :, None, None, :], (1, 1, 3, 3, 1))  # (1, N, 3, 3, 8)
    keras.utils.set_random_seed(0)
    top = keras.Sequential([keras.Input((3, 3, 8)), keras.layers.Conv2D(8, 1),
                            keras.layers.BatchNormalization()], name="top")
    head = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    before = [weight.copy() for weight in top.get_weights() + head.get_weights()]
    config = load_config(None, ["train.batch_size=32", "train.fine_tune_learning_rate=auto"])
    phase2 = cached_phase2(top, head, activations, labels, activations, labels, config.train)
    result = sweep_fine_tune(phase2.model, phase2.train_data, config.train, steps=80,
                             span=(1e-5, 1e2))
    smoothed = np.array(result["smoothed"])
    assert smoothed.min() < 0.7 * smoothed[0] and len(smoothed) < 80
    for old, new in zip(before, top.get_weights() + head.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    resolved = resolve_fine_tune_learning_rate(config.train, phase2.model, phase2.train_data,
                                               tmp_path)
    assert isinstance(resolved.fine_tune_learning_rate, float)
    assert 1e-7 < resolved.fine_tune_learning_rate < 1e-1
    saved = json.loads((tmp_path / "lr_find_fine_tune.json").read_text())
    assert saved["suggested"] == resolved.fine_tune_learning_rate
    assert (tmp_path / "lr_find_fine_tune.png").read_bytes().startswith(b"\x89PNG")


def test_a_learning_rate_that_is_neither_a_number_nor_auto_is_a_config_error():
    with pytest.raises(ConfigError, match="train.fine_tune_learning_rate"):
        load_config(None, ["train.fine_tune_learning_rate=fast"])


@pytest.mark.slow
def test_lr_find_command_writes_the_plot_and_the_sweep(tmp_path, capsys):
    from tests.test_fashion_mnist import make_fake_fashion

    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=80, test=20)
    assert main(["lr-find", *TINY, f"data.path={tmp_path / 'idx'}",
                 f"runs_dir={tmp_path / 'runs'}"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    result = json.loads((run_dir / "lr_find.json").read_text())
    assert (run_dir / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert not list(run_dir.glob(".lr_find_features-*"))  # its feature files are removed
    assert f"Suggested train.head_learning_rate: {result['suggested']:.3g}" in (
        capsys.readouterr().out)


@pytest.mark.e2e
def test_train_with_fine_tune_rate_auto_sweeps_phase_2_and_trains_with_the_suggestion(
        tmp_path):
    from pipeline.lr_find import FINE_TUNE_SWEEP
    from tests.test_fashion_mnist import make_fake_fashion

    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=80, test=20)
    for stage in ("data", "train"):
        assert main([stage, "--config", "configs/default.yaml", *TINY,
                     f"data.path={tmp_path / 'idx'}", f"runs_dir={tmp_path / 'runs'}",
                     "train.fine_tune_learning_rate=auto"]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    history = json.loads((run_dir / "train_history.json").read_text())
    swept = json.loads((run_dir / "lr_find_fine_tune.json").read_text())
    assert history["fine_tune_learning_rate"] == swept["suggested"]
    assert FINE_TUNE_SWEEP[0] < swept["suggested"] < FINE_TUNE_SWEEP[1]
    assert len(history["history"]["loss"]) > history["phase_boundaries"][0]  # phase 2 ran
