"""The search: right scales, config-checked ranges, coarse to fine, dev only, resumable, and
results (table, plot, best.yaml) that train directly."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import SEARCHABLE, ConfigError, load_config
from pipeline.data.prepare import PreparedData, load_prepared
from pipeline.run import run_search, run_stages
from pipeline.search import dimensions, hyperparameters, trains_both_phases, zoom
from pipeline.search.space import config_values, from_json, with_values
from pipeline.search.trial import kept_accuracy
from tests.test_fashion_mnist import make_fake_fashion

TINY = ["model.weights=none", "model.image_size=32", "train.batch_size=16",
        "train.head_epochs=2", "train.fine_tune_epochs=1", "train.cached_views=1",
        "augment.chain=light", "name=tiny"]


@pytest.fixture
def tiny_config(tmp_path):
    def config(*overrides: str):
        return load_config("configs/default.yaml", [
            *TINY, f"data.path={tmp_path / 'idx'}", f"runs_dir={tmp_path / 'runs'}",
            *overrides])

    (tmp_path / "idx").mkdir()
    make_fake_fashion(tmp_path / "idx", train=80, test=20)
    return config


def draws(config, count: int = 600) -> dict[str, np.ndarray]:
    """`count` draws of every searched key, as config values."""
    space = dimensions(config.search)
    tuner_space = hyperparameters(space).space
    samples = [config_values(space, {hp.name: hp.random_sample(seed) for hp in tuner_space})
               for seed in range(count)]
    return {key: np.array([sample[key] for sample in samples]) for key in samples[0]}


def test_each_key_is_drawn_on_its_own_scale():
    config = load_config(None, [
        "search.keys=[head_learning_rate, dropout, adam_beta_1, adam_beta_2, batch_size, chain]",
        "search.adam_beta_1=[one_minus_log, 0.9, 0.999]"])
    values = draws(config)
    # log-uniform: each decade equally likely (a linear draw puts 0.9% in the lowest decade)
    decades = np.histogram(np.log10(values["train.head_learning_rate"]), bins=[-4, -3, -2, -1])
    assert decades[0] / 600 == pytest.approx([1 / 3] * 3, abs=0.06)
    # 1 - beta log-uniform: beta in 0.9..0.99 as likely as in 0.99..0.999 (linear: 91% vs 9%)
    beta_1 = values["train.adam_beta_1"]
    assert beta_1.min() >= 0.9 and beta_1.max() <= 0.999
    assert np.mean(beta_1 > 0.99) == pytest.approx(0.5, abs=0.07)
    assert np.mean(values["train.adam_beta_2"] > 0.999) == pytest.approx(0.5, abs=0.07)
    assert np.mean(values["model.dropout"] < 0.25) == pytest.approx(0.5, abs=0.07)
    assert set(values["train.batch_size"].tolist()) == {16, 32, 64, 128}
    assert values["train.batch_size"].dtype.kind == "i"
    assert set(values["augment.chain"]) == {"none", "light", "standard"}


@pytest.mark.parametrize("override, message", [
    ("search.keys=[learning_rate]", "not searchable.*Did you mean 'head_learning_rate'.*"
                                    "Searchable: head_learning_rate, fine_tune_learning_rate"),
    ("search.keys=[l2, l2]", "distinct"),
    ("search.momentum=[log, 0.1, 1]", "Unknown config key 'search.momentum'.*search.adam_beta_1"),
    ("search.head_learning_rate=[log, 0, 0.1]", "0 < low < high"),
    ("search.l2=[1e-6, 1e-2]", "scale log, linear, one_minus_log, or \\[choice"),
    ("search.adam_beta_1=[one_minus_log, 0.9, 1.0]", "0 <= low < high < 1"),
    ("search.dropout=[linear, 0.1, 1.0]", "'model.dropout' must be in \\[0, 1\\)"),
    ("search.batch_size=[choice, 16, 0]", "'train.batch_size' must be positive"),
    ("search.batch_size=[choice, 16, 32.5]", "one type"),
    ("search.chain=[choice, light, heavy]", "Unknown augmentation preset 'heavy'"),
    ("search.trials=0", "must be positive"),
    ("search.rounds=0", "must be positive"),
    ("search.zoom=0", "\\(0, 1\\]"),
    ("search.phases=some", "must be one of: auto, head, both"),
])
def test_search_ranges_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_every_searchable_key_exists_and_its_default_range_loads():
    config = load_config(None, [f"search.keys=[{', '.join(SEARCHABLE)}]"])
    for key in SEARCHABLE.values():
        section, field = key.split(".")
        assert hasattr(getattr(config, section), field)
    assert {dimension.key for dimension in dimensions(config.search)} == set(SEARCHABLE.values())


def test_next_round_samples_only_around_the_best_trials_on_the_drawn_scale():
    config = load_config(None, ["search.keys=[head_learning_rate, adam_beta_1, dropout, chain]",
                                "search.adam_beta_1=[one_minus_log, 0.9, 0.999]"])
    space = dimensions(config.search)
    best = [{"train.head_learning_rate": 1e-3, "train.adam_beta_1": 0.99, "model.dropout": 0.1,
             "augment.chain": "light"},
            {"train.head_learning_rate": 1e-2, "train.adam_beta_1": 0.99, "model.dropout": 0.2,
             "augment.chain": "none"}]
    narrow = {dimension.key: dimension for dimension in zoom(space, best, 0.2)}
    # log: the decade 1e-3..1e-2 widened by 10% of the 3 decades at each end (10**0.3 = 2)
    low, high = narrow["train.head_learning_rate"].values
    assert (math.log10(low), math.log10(high)) == pytest.approx((-3.3, -1.7))
    # one_minus_log: both best have 1 - beta = 0.01; 2 decades wide, so 10**0.2 either side
    low, high = narrow["train.adam_beta_1"].values
    assert (1 - high, 1 - low) == pytest.approx((0.01 / 10 ** 0.2, 0.01 * 10 ** 0.2))
    assert narrow["model.dropout"].values == pytest.approx((0.05, 0.25))
    assert narrow["augment.chain"].values == ("none", "light")
    # kept inside the last round's range
    edge = {**best[0], "train.head_learning_rate": 1e-4}
    low, high = {d.key: d for d in zoom(space, [edge], 0.2)}["train.head_learning_rate"].values
    assert low == pytest.approx(1e-4) and high == pytest.approx(10 ** -3.7)


def test_a_trial_trains_both_phases_only_when_a_phase_2_key_is_searched():
    assert not trains_both_phases(load_config(None, ["search.keys=[head_learning_rate, chain]"]))
    assert trains_both_phases(load_config(None, ["search.keys=[l2, fine_tune_learning_rate]"]))
    assert not trains_both_phases(load_config(None, ["search.keys=[fine_tune_learning_rate]",
                                                     "train.fine_tune_epochs=0"]))
    assert trains_both_phases(load_config(None, ["search.phases=both"]))
    assert not trains_both_phases(load_config(None, ["search.keys=[fine_tune_learning_rate]",
                                                     "search.phases=head"]))


def test_a_trial_scores_the_epoch_early_stopping_keeps():
    history = {"val_loss": [0.9, 0.5, 0.6, 0.5], "val_accuracy": [0.5, 0.7, 0.8, 0.75]}
    assert kept_accuracy(history, "val_loss") == 0.7
    assert kept_accuracy(history, "val_accuracy") == 0.8


@pytest.mark.e2e
def test_trials_fine_tune_from_the_searched_depth_on_activations_cached_there(tiny_config,
                                                                           tmp_path):
    """`fine_tune_from` searched: each depth gets its own cached activations (once), and a
    trial from deeper trains more of the base."""
    from pipeline.search.trial import TrialTrainer

    config = tiny_config("search.keys=[fine_tune_from]",
                         "search.fine_tune_from=[choice, top, block5a]")
    run_stages(config, ("data",))
    caches = tmp_path / "caches"
    (caches / "stale").mkdir(parents=True)  # another search's leftovers
    trainer = TrialTrainer(config, load_prepared(config.run_dir / "data"), config.run_dir,
                           tmp_path / "scratch", caches)
    assert trainer.both_phases and not caches.exists()
    scores = [trainer({"train.fine_tune_from": depth}) for depth in ("top", "block5a", "top")]
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert scores[0] == scores[2]  # the same depth again: the same trial
    shapes = {depth: cache[0].activations.shape for (_, depth), cache in trainer.caches.items()}
    assert set(shapes) == {"top", "block5a"} and shapes["top"] != shapes["block5a"]
    trainable = {depth: sum(int(np.prod(w.shape)) for w in trainer.split(depth)[2].weights)
                 for depth in shapes}
    assert trainable["block5a"] > trainable["top"]
    # issue 17: the caches are files, read memory-mapped, not arrays held in memory
    for train_cache, dev_cache in trainer.caches.values():
        for array in (train_cache.pooled, train_cache.activations, dev_cache.activations):
            assert isinstance(array, np.memmap) and Path(array.filename).is_relative_to(caches)
    assert sorted(path.name for path in caches.iterdir()) == ["0", "1"]
    trainer.close()
    assert not caches.exists() and not trainer.caches


def test_a_searched_depth_the_backbone_lacks_is_a_config_error():
    with pytest.raises(ConfigError, match=r"search.fine_tune_from.*conv4"):
        load_config(None, ["search.fine_tune_from=[choice, top, conv4]"])


def poison_test_split(config) -> None:
    """Replaces the prepared test split with bytes no reader accepts."""
    for name in ("test_images.npy", "test_labels.npy"):
        (config.run_dir / "data" / name).write_bytes(b"not an array: the search read the test")


def test_two_rounds_on_dev_never_read_test_write_results_and_resume(tiny_config, monkeypatch,
                                                                    capsys):
    config = tiny_config("search.trials=2", "search.rounds=2", "search.keep_best=1",
                         "search.keys=[head_learning_rate, adam_beta_1, batch_size]")
    run_stages(config, ("data",))
    poison_test_split(config)
    with pytest.raises(ValueError):
        load_prepared(config.run_dir / "data").images("test")  # the poison bites
    images = PreparedData.images

    def train_and_dev_only(self, split):
        if split == "test":
            raise AssertionError("the search read the test split")
        return images(self, split)
    monkeypatch.setattr(PreparedData, "images", train_and_dev_only)

    result = run_search(config)
    folder = config.run_dir / "search"
    assert json.loads((folder / "results.json").read_text()) == result
    trials = result["trials"]
    assert [trial["round"] for trial in trials].count(2) == 2 and len(trials) == 4
    accuracies = [trial["dev_accuracy"] for trial in trials]
    assert accuracies == sorted(accuracies, reverse=True)
    round_2 = {d.key: d for d in from_json(result["rounds"][1])}
    for trial in trials:
        assert 0.8 <= trial["train.adam_beta_1"] <= 0.99
        if trial["round"] == 2:  # drawn inside the zoomed space
            low, high = round_2["train.head_learning_rate"].values
            assert low <= trial["train.head_learning_rate"] <= high
            assert trial["train.batch_size"] in round_2["train.batch_size"].values
    printed = capsys.readouterr().out
    assert "train.adam_beta_1" in printed and f"{accuracies[0]:7.4f}" in printed
    assert (folder / "trials.txt").read_text().count("\n") == 4 + 3
    assert (folder / "search.png").read_bytes().startswith(b"\x89PNG")

    # best.yaml is the whole config with the best values, and it loads and validates
    best = load_config(folder / "best.yaml")
    assert best == with_values(config, result["best"])
    assert best.train.adam_beta_1 == trials[0]["train.adam_beta_1"]

    # a third round resumes the search: the first two rounds are kept, one trial is added
    more = run_search(tiny_config("search.trials=1", "search.rounds=3", "search.keep_best=1",
                                  "search.keys=[head_learning_rate, adam_beta_1, batch_size]"))
    assert len(more["trials"]) == 5
    first = {json.dumps(trial, sort_keys=True) for trial in trials}
    assert first <= {json.dumps(trial, sort_keys=True) for trial in more["trials"]}
    assert len(list(folder.glob("*/round_*/trial_*"))) == 5


@pytest.mark.slow
def test_full_recipe_trials_and_best_yaml_trains(tiny_config, monkeypatch):
    """Both phases per trial (a phase-2 key searched), two chains; `best.yaml` trains as is,
    its `train.head_learning_rate: auto` taken from the learning-rate finder."""
    from pipeline.cli import main
    from pipeline.lr_find import SWEEP

    config = tiny_config("search.trials=2", "search.rounds=1", "train.head_learning_rate=auto",
                         "search.keys=[fine_tune_learning_rate, chain]",
                         "search.chain=[choice, none, light]")
    run_stages(config, ("data",))
    poison_test_split(config)
    result = run_search(config)
    assert result["kind"] == "both phases" and len(result["trials"]) == 2
    for trial in result["trials"]:
        assert 1e-5 <= trial["train.fine_tune_learning_rate"] <= 1e-3
    best = config.run_dir / "search" / "best.yaml"
    assert main(["train", "--config", str(best), "--force"]) == 0  # test still poisoned
    trained = load_config(best)
    history = json.loads((config.run_dir / "train_history.json").read_text())
    assert trained.train.head_learning_rate == "auto"
    assert SWEEP[0] < history["head_learning_rate"] < SWEEP[1]
    assert len(history["history"]["loss"]) > history["phase_boundaries"][0]  # phase 2 ran
    assert trained.train.fine_tune_learning_rate == result["best"][
        "train.fine_tune_learning_rate"]


def test_adam_betas_from_the_config_reach_the_optimizer():
    import keras

    from pipeline.train import compile_model

    def first_momentum(*overrides: str) -> np.ndarray:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
        compile_model(model, learning_rate=0.01, steps_per_epoch=4,
                      config=load_config(None, list(overrides)).train)
        model.train_on_batch(np.ones((4, 3), "float32"), np.eye(2, dtype="float32")[[0, 1, 0, 1]])
        return model.optimizer.variables[2].numpy()  # m after one step: (1 - beta1) * gradient

    default = first_momentum()
    custom = first_momentum("train.adam_beta_1=0.95", "train.adam_beta_2=0.9995")
    np.testing.assert_allclose(default, 2 * custom, rtol=1e-5)  # (1 - 0.9) / (1 - 0.95)
    assert np.abs(default).max() > 0
