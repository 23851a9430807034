"""Cached features: what `extract_features` stores must equal running the frozen base directly,
on either engine."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline import features
from pipeline.augment import BatchAugmenter, build_eval_transform, build_train_transform
from pipeline.backbones import (
    create_backbone,
    freeze_backbone,
    get_backbone_spec,
    list_backbones,
    split_backbone,
)
from pipeline.features import ENGINES, extract_features, make_forward
from pipeline.inputs import CachedViews, augmented_batches, pad_batch
from pipeline.litert import native_float16

SIZE = 32


@pytest.fixture(scope="module")
def lite0_base():
    # real ImageNet weights (offline): a random-init Lite0 outputs near-constant features
    spec = get_backbone_spec("efficientnet_lite0")
    base = create_backbone(spec.name, weights="imagenet", image_size=SIZE)
    freeze_backbone(base, spec, unfreeze_top=False)
    return base, split_backbone(base, spec)


@pytest.fixture(scope="module", params=ENGINES)
def lite0(request, lite0_base):
    """(base, forward_for(batch_size)) with the forward pass on each engine in turn."""
    base, (bottom, top) = lite0_base
    made = {}

    def forward_for(batch_size: int):
        if batch_size not in made:
            made[batch_size] = make_forward(bottom, top, batch_size=batch_size,
                                            engine=request.param)
            assert made[batch_size].engine == request.param  # no silent fallback
        return made[batch_size]

    return base, forward_for


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (11, SIZE, SIZE, 3), dtype=np.uint8)


def test_pad_batch_pads_short_batches_with_zero_images_and_keeps_full_ones():
    batch = np.full((3, 2, 2, 3), 7, np.uint8)
    padded = pad_batch(batch, 5)
    assert padded.shape == (5, 2, 2, 3) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:3], batch)
    assert not padded[3:].any()
    assert pad_batch(batch, 3) is batch


def test_one_eval_view_matches_the_base_run_directly(lite0, images):
    base, forward_for = lite0
    augmenter = BatchAugmenter(build_eval_transform(SIZE), seed=0)
    # 11 images in batches of 4: the last batch is padded, which must not leak into results
    cache = extract_features(forward_for(4), images, augmenter, views=1,
                             keep_activations=True, description="test")
    expected = base(images.astype("float32"), training=False).numpy().mean(axis=(1, 2))
    assert cache.pooled.shape == (1, 11, 1280) and cache.pooled.dtype == np.float16
    assert expected.std(axis=0).max() > 0.1  # the images give different features
    np.testing.assert_allclose(cache.pooled[0], expected, rtol=1e-2, atol=1e-2)
    assert cache.activations.shape[:2] == (1, 11)


def test_features_do_not_depend_on_the_batch_size(lite0, images):
    _, forward_for = lite0
    augmenter = BatchAugmenter(build_eval_transform(SIZE), seed=0)
    by_three = extract_features(forward_for(3), images, augmenter, views=1,
                                keep_activations=False, description="test")
    by_eleven = extract_features(forward_for(11), images, augmenter, views=1,
                                 keep_activations=False, description="test")
    assert by_three.activations is None
    np.testing.assert_allclose(by_three.pooled.astype("float32"),
                               by_eleven.pooled.astype("float32"), atol=1e-2)


def test_each_view_is_the_augmented_epoch_it_stands_for(lite0, images):
    base, forward_for = lite0
    augmenter = BatchAugmenter(build_train_transform("light", SIZE), seed=3)
    cache = extract_features(forward_for(4), images, augmenter, views=2,
                             keep_activations=False, description="test")
    for view in range(2):
        augmented = np.concatenate(list(augmented_batches(images, augmenter, 4, epoch=view)))
        expected = base(tf.constant(augmented, tf.float32), training=False).numpy()
        np.testing.assert_allclose(cache.pooled[view], expected.mean(axis=(1, 2)),
                                   rtol=1e-2, atol=1e-2)
    assert np.abs(cache.pooled[0].astype("float32") - cache.pooled[1]).max() > 1e-2


def test_extracting_nothing_is_an_error(lite0):
    _, forward_for = lite0
    augmenter = BatchAugmenter(build_eval_transform(SIZE), seed=0)
    with pytest.raises(ValueError, match="No images"):
        extract_features(forward_for(4), np.zeros((0, SIZE, SIZE, 3), np.uint8), augmenter,
                         views=1, keep_activations=False, description="empty")


def test_both_engines_give_the_same_activations_and_features(lite0_base, images):
    _, (bottom, top) = lite0_base
    batch = images[:8]
    litert = make_forward(bottom, top, batch_size=8, engine="litert")(batch)
    tensorflow = make_forward(bottom, top, batch_size=8, engine="tensorflow")(batch)
    for ours, reference in zip(litert, tensorflow, strict=True):
        assert ours.dtype == np.float32 and ours.shape == reference.shape
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_litert_runs_small_batches_whatever_the_training_batch_size(lite0_base, images):
    _, (bottom, top) = lite0_base
    big = features.LITERT_BATCH_SIZE + 8
    litert = make_forward(bottom, top, batch_size=big, engine="litert")
    tensorflow = make_forward(bottom, top, batch_size=big, engine="tensorflow")
    assert (litert.batch_size, tensorflow.batch_size) == (features.LITERT_BATCH_SIZE, big)
    many = np.concatenate([images, images[::-1], images])  # more than one LiteRT batch
    augmenter = BatchAugmenter(build_eval_transform(SIZE), seed=0)
    ours, reference = (extract_features(forward, many, augmenter, views=1,
                                        keep_activations=True, description="test")
                       for forward in (litert, tensorflow))
    for name in ("pooled", "activations"):
        np.testing.assert_allclose(getattr(ours, name).astype("float32"),
                                   getattr(reference, name).astype("float32"),
                                   rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("failure", ["missing runtime", "wrong outputs"])
def test_litert_falls_back_to_tensorflow_and_says_why(lite0_base, images, monkeypatch, capsys,
                                                       failure):
    _, (bottom, top) = lite0_base
    if failure == "missing runtime":
        def convert(*args):
            raise ImportError("No module named 'ai_edge_litert'")
        monkeypatch.setattr(features, "convert", convert)
    else:
        real_model = features.LiteRTModel

        def shifted_model(*args, **kwargs):  # a conversion that silently changed the network
            model = real_model(*args, **kwargs)
            return lambda batch: tuple(output + 0.5 for output in model(batch))
        monkeypatch.setattr(features, "LiteRTModel", shifted_model)
    forward = make_forward(bottom, top, batch_size=4, engine="litert")
    assert forward.engine == "tensorflow"
    message = capsys.readouterr().out
    assert "running it with TensorFlow instead" in message
    assert ("ai_edge_litert" if failure == "missing runtime" else "differ") in message
    expected = make_forward(bottom, top, batch_size=4, engine="tensorflow")(images[:4])
    np.testing.assert_array_equal(forward(images[:4])[1], expected[1])


@pytest.mark.skipif(not native_float16(), reason="this CPU has no half-precision arithmetic")
def test_litert_in_float16_stays_within_its_tolerance_of_tensorflow(lite0_base, images):
    _, (bottom, top) = lite0_base
    half = make_forward(bottom, top, batch_size=8, engine="litert", precision="float16")
    assert (half.engine, half.precision) == ("litert", "float16")
    reference = make_forward(bottom, top, batch_size=8, engine="tensorflow")(images[:8])
    for ours, expected in zip(half(images[:8]), reference, strict=True):
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(ours - expected).max() <= features.TOLERANCE["float16"] * scale
        assert not np.allclose(ours, expected, rtol=1e-4, atol=1e-4)  # not float32 after all


def test_float16_that_disagrees_falls_back_to_float32_and_says_why(lite0_base, images,
                                                                    monkeypatch, capsys):
    _, (bottom, top) = lite0_base

    class WrongHalf:  # float16 kernels that silently broke the network
        def __init__(self, model):
            self.model = features.LiteRTModel(model)

        def __call__(self, batch):
            return tuple(output * 1.5 for output in self.model(batch))
    monkeypatch.setattr(features, "LiteRTFloat16Model", WrongHalf)
    forward = make_forward(bottom, top, batch_size=4, engine="litert", precision="float16")
    assert (forward.engine, forward.precision) == ("litert", "float32")
    assert "in float16 (ValueError: the converted model's activations differ" in \
        capsys.readouterr().out
    expected = make_forward(bottom, top, batch_size=4, engine="tensorflow")(images[:4])
    np.testing.assert_allclose(forward(images[:4])[1], expected[1], rtol=1e-4, atol=1e-4)


def test_an_unknown_precision_is_refused(lite0_base):
    _, (bottom, top) = lite0_base
    with pytest.raises(ValueError, match="Unknown precision 'bfloat16'. Expected one of: "
                                         "auto, float32, float16"):
        make_forward(bottom, top, batch_size=4, engine="litert", precision="bfloat16")


def test_an_unknown_engine_is_refused(lite0_base):
    _, (bottom, top) = lite0_base
    with pytest.raises(ValueError, match="Expected one of: litert, tensorflow"):
        make_forward(bottom, top, batch_size=4, engine="onnx")


@pytest.mark.parametrize("name", [name for name in list_backbones()
                                  if get_backbone_spec(name).extraction_engine == "litert"])
def test_every_backbone_sent_to_litert_converts_and_agrees(name):
    spec = get_backbone_spec(name)
    base = create_backbone(name, weights=None, image_size=SIZE)
    freeze_backbone(base, spec, unfreeze_top=False)
    assert make_forward(*split_backbone(base, spec), batch_size=2,
                        engine="litert").engine == "litert"


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_names_a_known_engine(name):
    assert get_backbone_spec(name).extraction_engine in ENGINES


# ----------------------------------------------------------------------------------------------
# CachedViews: the batches phase 1 and phase 2 train on


def _views(count: int = 10, views: int = 3):
    """View k of example i holds the value 100 * k + i everywhere, so a batch shows its origin."""
    values = 100 * np.arange(views)[:, None] + np.arange(count)[None, :]
    return np.broadcast_to(values[:, :, None], (views, count, 4)).astype(np.float16)


def test_each_epoch_shows_every_example_once_in_one_of_its_views():
    data = CachedViews(_views(), np.arange(10) % 2, 4, seed=0)
    for _ in range(2):
        inputs = np.concatenate([data[index][0] for index in range(len(data))])
        examples, views = inputs[:, 0] % 100, inputs[:, 0] // 100
        assert sorted(examples) == list(range(10)) and set(views) <= {0, 1, 2}
        data.on_epoch_end()


def test_one_hot_labels_and_an_unshuffled_dev_set_are_never_mixed():
    labels = np.arange(10) % 3
    dev = CachedViews(_views(), labels, 4, seed=0, shuffle=False, num_classes=3,
                      mixup_alpha=0.4)
    inputs, targets = dev[0]
    np.testing.assert_array_equal(inputs[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(targets, np.eye(3)[labels[:4]])


def test_mixup_blends_inputs_and_labels_alike_with_the_example_as_the_larger_part():
    labels = np.arange(10)  # example i holds the value i and has class i: blends are readable
    data = CachedViews(_views(views=1), labels, 10, seed=0, num_classes=10, mixup_alpha=0.4)
    inputs, targets = data[0]
    own = data.order[:10]
    weights = targets[np.arange(10), own]
    assert np.all(weights >= 0.5 - 1e-6) and np.allclose(targets.sum(axis=1), 1)
    blended = weights < 1
    assert blended.sum() >= 5
    partner = np.where(blended, (targets - np.eye(10)[own] * weights[:, None]).argmax(1), own)
    np.testing.assert_allclose(inputs[:, 0], weights * own + (1 - weights) * partner, atol=1e-4)
    again, _ = CachedViews(_views(views=1), labels, 10, seed=0, num_classes=10,
                           mixup_alpha=0.4)[0]
    np.testing.assert_array_equal(inputs, again)  # reproducible


def test_mixup_without_one_hot_labels_is_refused():
    with pytest.raises(ValueError, match="num_classes"):
        CachedViews(_views(), np.zeros(10, int), 4, seed=0, mixup_alpha=0.2)
