"""Phase-1 training on cached features: early stopping keeps the best epoch of the chosen metric."""

import dataclasses

import keras
import numpy as np
import pytest

from pipeline import train
from pipeline.atomic import atomic_path, seal, write_json, write_with
from pipeline.config import ConfigError, ModelConfig, TrainConfig, load_config
from pipeline.model import build_head
from pipeline.train import class_weights, train_head


def _noisy_features(count: int, seed: int):
    """Two classes that overlap a lot, so dev loss and dev accuracy peak at different epochs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    features = rng.normal(0, 1, (count, 8)) + labels[:, None] * 0.4
    return features.astype("float16")[None], labels


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_the_kept_weights_are_those_of_the_best_epoch_of_the_monitored_metric(monitor, tmp_path):
    keras.utils.set_random_seed(0)
    train_features, train_labels = _noisy_features(256, seed=1)
    dev_features, dev_labels = _noisy_features(96, seed=2)
    config = dataclasses.replace(TrainConfig(), batch_size=16, head_epochs=8,
                                 head_learning_rate=0.05, decay_rate=1.0,
                                 early_stopping_patience=8, early_stopping_monitor=monitor)
    head = build_head(2, 8, ModelConfig(dropout=0.0))
    history = train_head(head, train_features, train_labels, dev_features, dev_labels, config,
                         tmp_path / "backup")
    probabilities = head.predict(dev_features[0].astype("float32"), verbose=0)
    accuracy = float((probabilities.argmax(1) == dev_labels).mean())
    loss = float(-np.log(probabilities[np.arange(len(dev_labels)), dev_labels]).mean())
    if monitor == "val_accuracy":
        assert accuracy == pytest.approx(max(history["val_accuracy"]), abs=1e-6)
    else:
        assert loss == pytest.approx(min(history["val_loss"]), rel=1e-3)
    assert len(history["loss"]) == 8


def test_an_unknown_monitor_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="val_loss.*val_accuracy"):
        load_config(None, ["train.early_stopping_monitor=accuracy"])


def test_balanced_class_weights_follow_the_inverse_counts():
    config = dataclasses.replace(TrainConfig(), class_weight="balanced")
    weights = class_weights(np.array([0, 0, 0, 1]), config)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights(np.array([0, 1]), TrainConfig()) is None


def test_a_head_trained_with_mixup_still_learns_separable_classes(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    features = (np.eye(3)[labels] * 3 + rng.normal(0, 0.5, (300, 3))).astype("float16")
    config = dataclasses.replace(TrainConfig(), batch_size=32, head_epochs=6,
                                 head_learning_rate=0.05, mixup_alpha=0.4)
    head = build_head(3, 3, ModelConfig(dropout=0.0))
    history = train_head(head, features[None, :200], labels[:200], features[None, 200:],
                         labels[200:], config, tmp_path / "backup")
    assert max(history["val_accuracy"]) > 0.95


def test_many_steps_per_execution_train_the_same_head_as_one(monkeypatch, tmp_path):
    # 250 examples in batches of 16: 16 steps, the last one short; class weights and K=2 views
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 250)
    features = (np.eye(3)[labels] + rng.normal(0, 1, (2, 250, 3))).astype("float16")
    config = dataclasses.replace(TrainConfig(), batch_size=16, head_epochs=3,
                                 class_weight="balanced")
    results = []
    for steps in (1, train.HEAD_STEPS_PER_EXECUTION):
        monkeypatch.setattr(train, "HEAD_STEPS_PER_EXECUTION", steps)
        keras.utils.set_random_seed(0)
        head = build_head(3, 3, ModelConfig())
        history = train_head(head, features, labels, features[:1, :50], labels[:50], config,
                             tmp_path / f"backup{steps}")
        results.append((history, head.get_weights()))
    (one_history, one_weights), (many_history, many_weights) = results
    assert many_history.keys() == one_history.keys()
    for key, values in one_history.items():
        assert many_history[key] == pytest.approx(values, rel=1e-5), key
    for one, many in zip(one_weights, many_weights, strict=True):
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)


def write_backup(backup):
    """A backup as a run killed in phase 2's third epoch leaves it (file names as train writes
    them; contents small)."""
    for name in ("features", "phase1_done", "phase2/checkpoint"):
        with atomic_path(backup / name) as folder:
            folder.mkdir()
            (folder / "data.bin").write_bytes(np.arange(64, dtype="uint8").tobytes())
            if name.endswith("checkpoint"):
                (folder / "training_metadata.json").write_text('{"epoch": 2, "batch": -1}')
            seal(folder)
    state = backup / "phase2_state"
    state.mkdir()
    write_json(state / "epoch_1.json", {"wait": 0, "best": 0.5, "best_epoch": 1, "history": {}})
    for name in ("random_1.npz", "best_1.npz"):
        write_with(state / name, lambda handle: np.savez(handle, np.ones(3)))


def damage(path, how):
    if how == "remove":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["remove", "truncate", "flip a byte"])
@pytest.mark.parametrize("target, discarded", [
    ("features/data.bin", {"features", "phase1_done", "phase2", "phase2_state"}),
    ("phase1_done/data.bin", {"phase1_done", "phase2", "phase2_state"}),
    ("phase2/checkpoint/data.bin", {"phase2", "phase2_state"}),
    ("phase2_state/best_1.npz", {"phase2", "phase2_state"}),
    ("phase2_state/epoch_1.json", {"phase2", "phase2_state"}),
])
def test_a_damaged_backup_part_is_discarded_with_every_part_after_it(
        tmp_path, capsys, how, target, discarded):
    backup = tmp_path / "backup"
    write_backup(backup)
    train.discard_damaged_backup(backup)
    assert sorted(path.name for path in backup.iterdir()) == [
        "features", "phase1_done", "phase2", "phase2_state"]  # intact: all kept
    damage(backup / target, how)
    train.discard_damaged_backup(backup)
    kept = {"features", "phase1_done", "phase2", "phase2_state"} - discarded
    assert {path.name for path in backup.iterdir()} == kept
    assert "is damaged" in capsys.readouterr().out


# ---------------------------------------------------------------- phase 2: depth and feeding


def _phase2_parts(fine_tune_from: str, image_size: int = 32):
    """The Lite0 base with its ImageNet weights (offline; random weights would map every
    image to nearly the same output, and hide a difference in the input), cut at
    `fine_tune_from` and unfrozen from there, and a head without dropout."""
    from pipeline.backbones import create_backbone, freeze_backbone, get_backbone_spec

    keras.utils.set_random_seed(0)
    spec = get_backbone_spec("efficientnet_lite0")
    base = create_backbone(spec.name, weights="imagenet", image_size=image_size)
    freeze_backbone(base, spec, unfreeze_top=False)
    bottom, top = train.split_backbone(base, spec, fine_tune_from)
    freeze_backbone(base, spec, unfreeze_top=True, fine_tune_from=fine_tune_from)
    head = build_head(3, base.output.shape[-1], ModelConfig(dropout=0.0))
    return spec, base, bottom, top, head


@pytest.mark.parametrize("fine_tune_from", ["top", "block5a"])
def test_pixel_fed_and_cached_phase_2_compute_the_same_loss_on_the_same_batch(fine_tune_from):
    from pipeline.augment import BatchAugmenter, build_eval_transform
    from pipeline.features import extract_features, make_forward
    from pipeline.inputs import AugmentedImages

    spec, base, bottom, top, head = _phase2_parts(fine_tune_from)
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28, 3), dtype=np.uint8)
    labels = np.arange(8) % 3
    plain = BatchAugmenter(build_eval_transform(32), seed=0)  # no augmentation: a resize
    # the cached path as train feeds it: the product's forward pass and float16 cache
    cache = extract_features(make_forward(bottom, top, batch_size=8), images, plain, views=1,
                             keep_activations=True, description="test")
    cached_inputs, targets = train.CachedViews(cache.activations, labels, 8, seed=0,
                                               shuffle=False, num_classes=3)[0]
    pixel_inputs, pixel_targets = AugmentedImages(images, labels, plain, 8, seed=0,
                                                  shuffle=False, num_classes=3)[0]
    np.testing.assert_array_equal(pixel_targets, targets)
    losses = []
    for model, inputs in ((train.phase2_model(top, head, cached_inputs.shape[1:], name="c"),
                           cached_inputs),
                          (train.phase2_model(base, head, pixel_inputs.shape[1:], name="p"),
                           pixel_inputs)):
        # training=True, as fit calls it: BatchNorm must still use its moving statistics
        probabilities = model(inputs, training=True)
        losses.append(float(keras.ops.mean(keras.losses.categorical_crossentropy(
            targets, probabilities))))
    # The cache holds float16 activations: the losses agree to its round-off (4e-6 measured),
    # while pixels one grey level off already move the loss by 1e-4.
    assert losses[0] == pytest.approx(losses[1], rel=3e-5)


def test_batch_norm_in_training_mode_would_change_the_loss():
    """The test above can fail: the same comparison with BatchNorm in training mode does."""
    spec, base, bottom, top, head = _phase2_parts("top")
    pixels = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    inference = head(keras.layers.GlobalAveragePooling2D()(base(pixels, training=False)))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
    batch_stats = head(keras.layers.GlobalAveragePooling2D()(base(pixels, training=True)))
    assert not np.allclose(keras.ops.convert_to_numpy(inference),
                           keras.ops.convert_to_numpy(batch_stats), rtol=2e-3)


def test_phase2_feeding_follows_the_depth_unless_forced():
    assert train.phase2_feeding("auto", "top") == "cached"
    assert train.phase2_feeding("auto", "block6a") == "cached"
    assert train.phase2_feeding("auto", "block5a") == "cached"
    assert train.phase2_feeding("auto", "block4a") == "cached"
    assert train.phase2_feeding("auto", "all") == "pixels"
    assert train.phase2_feeding("pixels", "top") == "pixels"
    assert train.phase2_feeding("cached", "block4a") == "cached"


def test_auto_depth_goes_deeper_with_more_images_per_class(capsys):
    from pipeline.backbones import get_backbone_spec

    spec = get_backbone_spec("efficientnet_lite0")
    few = np.repeat(np.arange(5), 40)
    many = np.repeat(np.arange(10), max(bound for bound, _ in train.AUTO_DEPTH))
    shallow = train.resolve_fine_tune_from("auto", spec, few)
    deep = train.resolve_fine_tune_from("auto", spec, many)
    base = train.create_backbone(spec.name, weights=None, image_size=32)
    assert (train.boundary_index(base, spec, deep) < train.boundary_index(base, spec, shallow))
    assert "smallest class" in capsys.readouterr().out
    assert train.resolve_fine_tune_from("block4a", spec, few) == "block4a"


def test_an_unknown_fine_tune_point_is_a_config_error_naming_the_backbones_points():
    with pytest.raises(ConfigError, match="train.fine_tune_from.*efficientnet_lite0.*block5a"):
        load_config(None, ["train.fine_tune_from=conv4"])
    assert load_config(None, ["model.backbone=resnet50",
                              "train.fine_tune_from=conv4"]).train.fine_tune_from == "conv4"
    with pytest.raises(ConfigError, match="cached, pixels"):
        load_config(None, ["train.phase2_input=live"])


# ---------------------------------------------------------------- phase 2: layer_lr_decay


@pytest.mark.parametrize(("fine_tune_from", "factors"), [
    ("top", [0.5]), ("block5a", [0.5, 0.25]), ("block4a", [0.5, 0.25, 0.125])])
def test_layer_rate_scales_step_down_one_factor_per_block_group(fine_tune_from, factors):
    from pipeline.model import layer_rate_scales

    spec, base, bottom, top, head = _phase2_parts(fine_tune_from)
    scales = layer_rate_scales(top, tuple(spec.boundaries.values()), 0.5)
    assert sorted(set(scales.values()), reverse=True) == factors
    # every trainable weight of the part has a factor; the highest group has the largest
    assert set(scales) == {variable.path for variable in top.trainable_weights}
    assert scales["top_conv/kernel"] == 0.5
    if fine_tune_from == "block5a":
        assert scales["block5a_expand_conv/kernel"] == 0.25
        assert scales["block6a_expand_conv/kernel"] == 0.5


def test_layerwise_adam_steps_each_weight_as_adam_at_its_own_rate():
    from pipeline.model import LayerwiseAdam, adam_with_decay

    def stepped(optimizer):
        keras.utils.set_random_seed(3)  # the same start, so the same first gradients
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, name="low")(inputs)
        net = keras.Model(inputs, keras.layers.Dense(2, name="high")(hidden))
        net.compile(optimizer=optimizer, loss="categorical_crossentropy")
        x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        net.train_on_batch(x, keras.utils.to_categorical(np.arange(16) % 2, 2))
        return {layer: net.get_layer(layer).kernel.numpy() for layer in ("low", "high")}

    scaled = stepped(LayerwiseAdam(1e-2, rate_scales={"low/kernel": 0.1, "low/bias": 0.1}))
    full, tenth = stepped(keras.optimizers.Adam(1e-2)), stepped(keras.optimizers.Adam(1e-3))
    np.testing.assert_allclose(scaled["low"], tenth["low"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(scaled["high"], full["high"], rtol=0, atol=1e-7)
    assert np.abs(full["low"] - tenth["low"]).max() > 1e-3  # the rates did differ
    assert isinstance(adam_with_decay(1e-3, 10, 0.8, {"low/kernel": 0.5}), LayerwiseAdam)
    assert type(adam_with_decay(1e-3, 10, 0.8)) is keras.optimizers.Adam


def test_layer_lr_decay_is_checked():
    with pytest.raises(ConfigError, match=r"'train.layer_lr_decay' must be in \(0, 1\]"):
        load_config(None, ["train.layer_lr_decay=0"])
    assert load_config(None, ["train.layer_lr_decay=0.7"]).train.layer_lr_decay == 0.7
