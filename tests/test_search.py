"""Random search of the head's hyperparameters: log-scale draws, ranked dev results, resumable."""

import json

import keras_tuner
import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.data.prepare import PreparedData
from pipeline.run import run_search
from pipeline.search import HeadHyperModel
from tests.test_fashion_mnist import make_fake_fashion

TINY = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
        "train.head_epochs=2", "train.cached_views=1", "augment.chain=light", "name=tiny"]


@pytest.fixture
def tiny_config(tmp_path):
    def config(*overrides: str):
        return load_config("configs/default.yaml", [
            *TINY, f"data.path={tmp_path / 'idx'}", f"runs_dir={tmp_path / 'runs'}",
            *overrides])

    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=80, test=20)
    return config


def test_learning_rate_and_l2_are_drawn_on_a_log_scale_dropout_linearly():
    config = load_config(None, ["search.head_learning_rate=[1e-4, 1e-1]",
                                "search.l2=[1e-6, 1e-2]", "search.dropout=[0.0, 0.5]"])
    hyperparameters = keras_tuner.HyperParameters()
    HeadHyperModel(config, num_classes=3, feature_dim=8, steps_per_epoch=1).build(hyperparameters)
    draws = {space.name: np.array([space.random_sample(seed) for seed in range(600)])
             for space in hyperparameters.space}
    # log-uniform: each decade equally likely (a linear draw puts 0.9% in the lowest decade)
    learning_rates = np.log10(draws["head_learning_rate"])
    assert np.histogram(learning_rates, bins=[-4, -3, -2, -1])[0] / 600 == pytest.approx(
        [1 / 3] * 3, abs=0.06)
    assert np.mean(np.log10(draws["l2"]) < -4) == pytest.approx(0.5, abs=0.07)
    assert np.mean(draws["dropout"] < 0.25) == pytest.approx(0.5, abs=0.07)
    assert draws["dropout"].min() >= 0 and draws["dropout"].max() <= 0.5


def test_search_ranks_trials_on_dev_never_reads_test_and_resumes(tiny_config, monkeypatch,
                                                                 capsys):
    images = PreparedData.images

    def train_and_dev_only(self, split):
        if split == "test":
            raise AssertionError("the search read the test split")
        return images(self, split)
    monkeypatch.setattr(PreparedData, "images", train_and_dev_only)

    config = tiny_config("search.trials=3")
    result = run_search(config)
    folder = config.run_dir / "search"
    assert json.loads((folder / "results.json").read_text()) == result
    trials = result["trials"]
    assert len(trials) == 3
    accuracies = [trial["dev_accuracy"] for trial in trials]
    assert accuracies == sorted(accuracies, reverse=True)
    for trial in trials:
        assert 1e-4 <= trial["head_learning_rate"] <= 1e-1 and 1e-6 <= trial["l2"] <= 1e-2
    best = trials[0]
    assert result["best_overrides"] == [
        f"train.head_learning_rate={best['head_learning_rate']:.3g}",
        f"model.l2={best['l2']:.3g}", f"model.dropout={best['dropout']:.3g}"]
    assert (folder / "search.png").read_bytes().startswith(b"\x89PNG")
    assert "best: train.head_learning_rate=" in capsys.readouterr().out

    # raising the trial count resumes: the first three are kept, only two more are trained
    more = run_search(tiny_config("search.trials=5"))
    assert len(more["trials"]) == 5
    first = {json.dumps(trial, sort_keys=True) for trial in trials}
    assert first <= {json.dumps(trial, sort_keys=True) for trial in more["trials"]}
    assert len(list(folder.glob("*/trial_*"))) == 5


@pytest.mark.parametrize("override, message", [
    ("search.head_learning_rate=[0, 0.1]", "0 < low < high"),
    ("search.l2=[1e-2, 1e-6]", "0 < low < high"),
    ("search.dropout=[0.1, 1.0]", "0 <= low < high < 1"),
    ("search.dropout=[0.1]", "range \\[low, high\\]"),
    ("search.trials=0", "must be positive"),
])
def test_search_ranges_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
