"""The backbone registry: name -> how to build it, what it eats, where to fine-tune it.

Every backbone comes out the same shape: a flat functional model named "<name>_base" that takes
RGB pixels in [0, 255], normalises them with its own `ImagePreprocessing` layer, and returns the
last 4D feature map. Phase 2 fine-tunes the layers from `unfreeze_from` on: at each backbone
that is the start of the last resolution stage (the 7x7 or 8x8 blocks at the default size), a
point where a single tensor crosses, so `split_backbone` can cache what lies below it.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import zipfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import keras

from pipeline.backbones.layers import ImagePreprocessing
from pipeline.backbones.lite0 import efficientnet_lite0
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError, DataError, MissingInputError, UnavailableError


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the pipeline needs to know about one pretrained backbone.

    Attributes:
        name: registry key.
        builder: called as `builder(input_tensor=..., weights="imagenet" | None)`; builds the
            network without its classifier, ending in a 4D feature map.
        default_image_size: the input size the ImageNet weights were trained at.
        min_image_size: smallest input the architecture accepts.
        max_image_size: largest input this pipeline allows.
        preprocessing: the `ImagePreprocessing` mode: "caffe", "tf", "torch", "lite" or "raw".
        unfreeze_from: first layer of the top blocks that phase 2 fine-tunes by default
            (`train.fine_tune_from: top`), and where phase 2's activations are cached.
        boundaries: block boundaries phase 2 may start at (`train.fine_tune_from`), from the
            lowest to the highest: {boundary name: first layer of that block}. Each is a
            point where a single tensor crosses, so `split_backbone` can cut there.
        offline_weights: True when the ImageNet weights need no network.
        extraction_engine: the faster engine for the frozen forward pass on a CPU,
            "litert" or "tensorflow". Measured on 2 x86 cores at 160 px, LiteRT (batches of
            16) over TensorFlow (batches of 64): Lite0 2.16x, MobileNetV2 2.81x,
            EfficientNetB0 1.82x, ResNet50 1.02x, InceptionV3 0.87x; LiteRT in float16, where
            the CPU has half-precision arithmetic: 3.53x, 4.52x, 3.19x, 1.29x, 1.05x.
    """

    name: str
    builder: Callable[..., keras.Model]
    default_image_size: int
    min_image_size: int
    max_image_size: int
    preprocessing: str
    unfreeze_from: str
    boundaries: dict[str, str]
    offline_weights: bool
    extraction_engine: str


def _keras_application(constructor: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    return functools.partial(constructor, include_top=False, pooling=None)


BACKBONES = {
    "resnet50": BackboneSpec(
        name="resnet50",
        builder=_keras_application(keras.applications.ResNet50),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="caffe",
        unfreeze_from="conv5_block1_1_conv",
        boundaries={"conv3": "conv3_block1_1_conv", "conv4": "conv4_block1_1_conv",
                    "conv5": "conv5_block1_1_conv"},
        offline_weights=False,
        extraction_engine="tensorflow",
    ),
    "resnet50v2": BackboneSpec(
        name="resnet50v2",
        builder=_keras_application(keras.applications.ResNet50V2),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="tf",
        unfreeze_from="conv5_block1_preact_bn",
        boundaries={"conv3": "conv3_block1_preact_bn", "conv4": "conv4_block1_preact_bn",
                    "conv5": "conv5_block1_preact_bn"},
        offline_weights=False,
        extraction_engine="tensorflow",
    ),
    "resnet101": BackboneSpec(
        name="resnet101",
        builder=_keras_application(keras.applications.ResNet101),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="caffe",
        unfreeze_from="conv5_block1_1_conv",
        boundaries={"conv3": "conv3_block1_1_conv", "conv4": "conv4_block1_1_conv",
                    "conv5": "conv5_block1_1_conv"},
        offline_weights=False,
        extraction_engine="tensorflow",
    ),
    "inception_v3": BackboneSpec(
        name="inception_v3",
        builder=_keras_application(keras.applications.InceptionV3),
        default_image_size=299,
        min_image_size=75,
        max_image_size=512,
        preprocessing="tf",
        unfreeze_from="conv2d_80",  # the first layer of mixed9
        boundaries={"mixed7": "conv2d_64", "mixed8": "conv2d_72", "mixed9": "conv2d_80"},
        offline_weights=False,
        extraction_engine="tensorflow",
    ),
    "inception_resnet_v2": BackboneSpec(
        name="inception_resnet_v2",
        builder=_keras_application(keras.applications.InceptionResNetV2),
        default_image_size=299,
        min_image_size=75,
        max_image_size=512,
        preprocessing="tf",
        unfreeze_from="conv2d_164",  # the first layer of block8_1
        boundaries={"mixed_6a": "conv2d_73", "mixed_7a": "conv2d_160", "block8": "conv2d_164"},
        offline_weights=False,
        extraction_engine="tensorflow",
    ),
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2",
        builder=_keras_application(keras.applications.MobileNetV2),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="tf",
        unfreeze_from="block_13_expand",
        boundaries={"block_6": "block_6_expand", "block_10": "block_10_expand",
                    "block_13": "block_13_expand"},
        offline_weights=False,
        extraction_engine="litert",
    ),
    "efficientnet_b0": BackboneSpec(
        name="efficientnet_b0",
        builder=_keras_application(keras.applications.EfficientNetB0),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="raw",
        unfreeze_from="block6a_expand_conv",
        boundaries={"block4a": "block4a_expand_conv", "block5a": "block5a_expand_conv",
                    "block6a": "block6a_expand_conv"},
        offline_weights=False,
        extraction_engine="litert",
    ),
    "efficientnet_lite0": BackboneSpec(
        name="efficientnet_lite0",
        builder=functools.partial(efficientnet_lite0, include_top=False),
        default_image_size=224,
        min_image_size=32,
        max_image_size=512,
        preprocessing="lite",
        unfreeze_from="block6a_expand_conv",
        boundaries={"block4a": "block4a_expand_conv", "block5a": "block5a_expand_conv",
                    "block6a": "block6a_expand_conv"},
        offline_weights=True,
        extraction_engine="litert",
    ),
}


def list_backbones() -> list[str]:
    """The registered backbone names, in registry order."""
    return list(BACKBONES)


def describe_backbones() -> list[str]:
    """One line per registered backbone: sizes, preprocessing and where phase 2 begins."""
    return [f"{name:22s} default {spec.default_image_size}px, {spec.min_image_size}-"
            f"{spec.max_image_size}px, preprocessing {spec.preprocessing}, fine-tunes from "
            f"{spec.unfreeze_from}" for name, spec in BACKBONES.items()]


def model_image_size(model: ModelConfig, stored_size: int) -> int:
    """The model's input side: `model.image_size`; for "auto", the size the data stage stored
    the images at (`stored_size`); for 0, the backbone spec's default. When `model.weights`
    continues from an exported model, "auto" and 0 take that model's input size."""
    exported = exported_model_file(model.weights)
    if exported is not None and model.image_size in ("auto", 0):
        return describe_exported_base(exported).image_size
    if model.image_size == "auto":
        return stored_size
    return model.image_size or get_backbone_spec(model.backbone).default_image_size


def auto_size_range(name: str) -> tuple[int, int]:
    """The (smallest, native) input size of a backbone: the bounds of `image_size: auto`."""
    spec = get_backbone_spec(name)
    return spec.min_image_size, spec.default_image_size


def get_backbone_spec(name: str) -> BackboneSpec:
    """Looks up a backbone by name.

    Raises:
        ConfigError: if `name` is not registered (naming the closest match, if any).
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), BACKBONES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Unknown backbone '{name}'.{hint} Expected one of: {', '.join(list_backbones())}. "
            f"Received: name={name!r}"
        )
    return BACKBONES[name]


def create_backbone(name: str, *, weights: str | PathLike | None = "imagenet",
                    image_size: int | None = None) -> keras.Model:
    """Builds a backbone that takes RGB pixels in [0, 255] and returns its last feature map.

    Args:
        name: a name from `list_backbones()`.
        weights: "imagenet" (downloaded by Keras; offline for "efficientnet_lite0"),
            None or "none" (random), the path of a local weights file (`.weights.h5`), or an
            exported model to continue from: its folder (`models/<run>`) or a `.keras` file.
            That model's base is returned as it was fine-tuned: weights, input size and
            preprocessing (its first layer) carried over; its head is left behind.
        image_size: square input size; None takes the spec's default (an exported model's:
            its own).

    Returns:
        A flat functional model named f"{name}_base": input (image_size, image_size, 3)
        float32 pixels, first layer "preprocessing", output the backbone's 4D feature map.

    Raises:
        ConfigError: for an unknown name or an image size outside the spec's range, or an
            exported model whose base is another backbone or takes another size.
        DataError: an exported model holding code (a Lambda layer), or not from this pipeline.
        MissingInputError: if `weights` is a path that does not exist.
        UnavailableError: if the ImageNet weights cannot be downloaded.

    Example:
        >>> base = create_backbone("efficientnet_lite0", image_size=224)
        >>> base.output.shape
        (None, 7, 7, 1280)
    """
    spec = get_backbone_spec(name)
    exported = exported_model_file(weights)
    if exported is not None:
        return _exported_base(exported, spec, image_size)
    size = _checked_image_size(spec, image_size)
    source = _weights_source(weights)
    pixels = keras.Input((size, size, 3), dtype="float32", name="pixels")
    normalized = ImagePreprocessing(spec.preprocessing, name="preprocessing")(pixels)
    network = _build_network(spec, normalized, "imagenet" if source == "imagenet" else None)
    base = keras.Model(pixels, network.output, name=f"{name}_base")
    _renumber_generated_names(base)
    if isinstance(source, Path):
        base.load_weights(source)
    return base


@dataclass(frozen=True)
class ExportedBase:
    """What an exported model's file says about its base, read without loading it.

    Attributes:
        path: the `.keras` file.
        backbone: the registry name of its base.
        image_size: its input side.
    """

    path: Path
    backbone: str
    image_size: int


def exported_model_file(weights: str | PathLike | None) -> Path | None:
    """The `.keras` file that `model.weights` continues from, or None when it names no exported
    model ("imagenet", "none", a `.weights.h5` file).

    `models/<run>` (a folder) means its `model.keras`; a path ending in `.keras` the file
    itself. Neither needs to exist yet: loading it says so.
    """
    if weights is None or str(weights).lower() in ("imagenet", "none"):
        return None
    path = Path(weights).expanduser()
    if path.suffix == ".keras":
        return path
    if path.is_dir():
        return path / "model.keras"
    return None


def weights_file(weights: str | PathLike | None) -> Path | None:
    """The local file the pretrained weights are read from (a `.weights.h5` or an exported
    model's `.keras`), if any and if it exists: the train stage's fingerprint holds its
    content, so a file replaced under the same name retrains."""
    if weights is None or str(weights).lower() in ("imagenet", "none"):
        return None
    path = exported_model_file(weights) or Path(weights).expanduser()
    return path if path.is_file() else None


def describe_exported_base(path: Path) -> ExportedBase:
    """Reads an exported model's backbone and input size from its config (no weights loaded,
    no code run).

    Raises:
        MissingInputError: no such file.
        DataError: not a Keras model file, not a classifier exported by this pipeline, or one
            holding code (a Lambda layer; refused as Keras' safe mode refuses it).
    """
    config = _exported_config(path)
    if "Lambda" in _layer_classes(config):
        raise _code_refused(path)
    layers = config.get("config", {}).get("layers", [])
    bases = [layer["name"] for layer in layers if str(layer.get("name")).endswith("_base")]
    inputs = [layer["config"].get("batch_shape") for layer in layers
              if layer.get("class_name") == "InputLayer"]
    backbone = bases[0].removesuffix("_base") if len(bases) == 1 else None
    if backbone not in BACKBONES or len(inputs) != 1 or not inputs[0]:
        raise DataError(f"Config key 'model.weights': '{path}' is not a classifier exported by "
                        f"this pipeline (no '<backbone>_base' inside it). Continue from an "
                        f"export folder (models/<run>) or its model.keras.")
    return ExportedBase(path, backbone, int(inputs[0][1]))


def _exported_config(path: Path) -> dict:
    if not path.is_file():
        raise MissingInputError(f"Config key 'model.weights': no exported model at '{path}'. "
                                f"Name an export folder (models/<run>, made by make train or "
                                f"make export) or a .keras file.")
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise DataError(f"Config key 'model.weights': '{path}' is not a Keras model file "
                        f"({error}).") from None


def _layer_classes(node) -> set[str]:
    """The class names of every layer in a Keras config, nested models included."""
    if isinstance(node, list):
        return set().union(*map(_layer_classes, node))
    if not isinstance(node, dict):
        return set()
    found = {node["class_name"]} if isinstance(node.get("class_name"), str) else set()
    return found.union(*(_layer_classes(value) for value in node.values()))


def _code_refused(path: Path) -> DataError:
    return DataError(f"Config key 'model.weights': '{path}' holds a layer with code (a Lambda "
                     f"layer); loading it would run that code, so it is refused (Keras safe "
                     f"mode). Continue from a model this pipeline exported, which carries no "
                     f"code.")


def check_exported_base(path: Path, backbone: str, image_size: int | str | None) -> ExportedBase:
    """Checks that the exported model at `path` can be the base of a run with this
    `model.backbone` and `model.image_size` (None, 0 and "auto" take the model's own size).

    Raises:
        ConfigError: its base is another backbone, or takes another size (naming the fix).
        DataError, MissingInputError: as `describe_exported_base`.
    """
    exported = describe_exported_base(path)
    if exported.backbone != backbone:
        raise ConfigError(f"Config key 'model.weights': the base of '{path}' is "
                          f"'{exported.backbone}', not model.backbone '{backbone}'. Set "
                          f"model.backbone={exported.backbone}.")
    if image_size not in (None, 0, "auto", exported.image_size):
        raise ConfigError(f"Config key 'model.weights': '{path}' takes {exported.image_size} px "
                          f"images, not model.image_size {image_size}. Set model.image_size=auto "
                          f"(or {exported.image_size}) to continue from it.")
    return exported


def _exported_base(path: Path, spec: BackboneSpec, image_size: int | None) -> keras.Model:
    """The fine-tuned base of an exported classifier, loaded in Keras' safe mode."""
    from pipeline.model import load_classifier

    check_exported_base(path, spec.name, image_size)
    try:
        classifier = load_classifier(path)
    except DataError:
        raise _code_refused(path) from None
    base = classifier.get_layer(f"{spec.name}_base")
    print(f"Continuing from {path}: its fine-tuned {spec.name} base ({base.input_shape[1]} px) "
          f"is the backbone; the new head learns this run's classes.")
    return base


def _checked_image_size(spec: BackboneSpec, image_size: int | None) -> int:
    size = spec.default_image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or not (
            spec.min_image_size <= size <= spec.max_image_size):
        raise ConfigError(
            f"Backbone '{spec.name}' takes image sizes from {spec.min_image_size} to "
            f"{spec.max_image_size}: pick one in that range, or None for the default "
            f"{spec.default_image_size}. Received: image_size={image_size!r}"
        )
    return size


def _weights_source(weights: str | PathLike | None) -> str | Path | None:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"Weights file not found: {path}. Expected 'imagenet', None/'none', an existing "
            "local weights file (e.g. saved with `base.save_weights('base.weights.h5')`), or "
            "an exported model to continue from (models/<run> or a .keras file)."
        )
    return path


def _build_network(spec: BackboneSpec, normalized, weights: str | None) -> keras.Model:
    """Runs the spec's builder, turning a failed ImageNet download into one clear error."""
    try:
        return spec.builder(input_tensor=normalized, weights=weights)
    except Exception as error:
        if weights != "imagenet" or not _is_download_failure(error):
            raise
        raise UnavailableError(
            f"Could not download the ImageNet weights of '{spec.name}' ({error}). Fix: connect "
            "to the network, pass weights=<local .weights.h5 file>, or use the offline "
            "backbone 'efficientnet_lite0'."
        ) from error


def _is_download_failure(error: Exception) -> bool:
    # keras.utils.get_file re-raises URLError/HTTPError as a bare Exception("URL fetch failure").
    return isinstance(error, OSError) or isinstance(error.__context__, OSError) or (
        "URL fetch failure" in str(error))


def _renumber_generated_names(model: keras.Model) -> None:
    """Gives auto-named layers the names a fresh process would: "conv2d_94" -> "conv2d".

    Keras numbers unnamed layers with a process-wide counter, so the second InceptionV3 built
    in a process would otherwise have different layer names from the first, and
    `spec.unfreeze_from` could not name a layer reliably. Creation order is kept.
    """
    numbered = defaultdict(list)
    for layer in model.layers:
        prefix = _snake_case(type(layer).__name__)
        match = re.fullmatch(rf"{re.escape(prefix)}(?:_(\d+))?", layer.name)
        if match:
            numbered[prefix].append((int(match.group(1) or 0), layer))
    for prefix, layers in numbered.items():
        for index, (_, layer) in enumerate(sorted(layers, key=lambda item: item[0])):
            layer.name = prefix if index == 0 else f"{prefix}_{index}"


def _snake_case(class_name: str) -> str:
    """Keras's default layer name for a class: "BatchNormalization" -> "batch_normalization"."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def fine_tune_points(name: str) -> list[str]:
    """The values `train.fine_tune_from` takes for a backbone, from the shallowest phase 2 to
    the deepest: "top" (the spec's `unfreeze_from`), its block boundaries from the highest
    down, and "all" (every layer after the preprocessing); "auto" chooses one by the data."""
    return ["top", *reversed(get_backbone_spec(name).boundaries), "all"]


def check_fine_tune_from(name: str, fine_tune_from: str) -> None:
    """Raises a ConfigError naming the valid values when `fine_tune_from` is not one of
    `fine_tune_points(name)` or "auto"."""
    valid = ["auto", *fine_tune_points(name)]
    if fine_tune_from not in valid:
        raise ConfigError(f"Config key 'train.fine_tune_from': backbone '{name}' can fine-tune "
                          f"from one of: {', '.join(valid)}. Received: {fine_tune_from!r}.")


def boundary_index(base: keras.Model, spec: BackboneSpec, fine_tune_from: str = "top") -> int:
    """The index in `base.layers` of the first layer phase 2 trains from `fine_tune_from`
    (a value of `fine_tune_points`, not "auto"); every layer from there up lies above the cut.

    Raises:
        ConfigError: an unknown point for this backbone.
        ValueError: if `base` lacks the layer the spec names.
    """
    if fine_tune_from == "all":
        return _layer_index(base, "preprocessing") + 1
    check_fine_tune_from(spec.name, fine_tune_from)
    if fine_tune_from == "auto":
        raise ValueError("'auto' must be resolved to a point before the base is cut.")
    layer = spec.unfreeze_from if fine_tune_from == "top" else spec.boundaries[fine_tune_from]
    return _layer_index(base, layer)


def freeze_backbone(base: keras.Model, spec: BackboneSpec, *, unfreeze_top: bool,
                    fine_tune_from: str = "top") -> None:
    """Sets which layers of a base train; BatchNorm never does.

    Args:
        base: a model from `create_backbone(spec.name)`.
        spec: its spec.
        unfreeze_top: False freezes everything (phase 1). True makes the layers from
            `fine_tune_from` to the output trainable (phase 2), except BatchNormalization,
            which stays frozen and therefore in inference mode (Keras 3 runs a frozen
            BatchNormalization with its moving statistics even when `training=True`).
        fine_tune_from: "top" (the spec's `unfreeze_from`), one of `spec.boundaries`, or "all".

    Raises:
        ValueError: if `base` has no layer named where `fine_tune_from` points.

    Recompile any model that contains `base` after calling this.
    """
    first_top = boundary_index(base, spec, fine_tune_from)
    base.trainable = unfreeze_top
    if not unfreeze_top:
        return
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first_top and not isinstance(
            layer, keras.layers.BatchNormalization)


def split_backbone(base: keras.Model, spec: BackboneSpec,
                   fine_tune_from: str = "top") -> tuple[keras.Model, keras.Model]:
    """Cuts a base where phase 2 begins, sharing the layers (and weights) with it.

    Args:
        base: a model from `create_backbone(spec.name)`.
        spec: its spec.
        fine_tune_from: where to cut, as in `freeze_backbone`.

    Returns:
        (bottom, top): bottom maps pixels to the input of the first trainable layer, top maps
        that tensor to the base's output, so `top(bottom(x))` equals `base(x)`. Phase 2 caches
        bottom's output once and fine-tunes only top.

    Raises:
        ValueError: if `base` has no layer named where `fine_tune_from` points.
    """
    cut = base.layers[boundary_index(base, spec, fine_tune_from)].input
    bottom = keras.Model(base.input, cut, name=f"{base.name}_bottom")
    top = keras.Model(cut, base.output, name=f"{base.name}_top")
    return bottom, top


def _layer_index(base: keras.Model, name: str) -> int:
    for index, layer in enumerate(base.layers):
        if layer.name == name:
            return index
    raise ValueError(
        f"Model '{base.name}' has no layer '{name}'. Build it with `create_backbone` from the "
        f"same spec. Received: unfreeze_from={name!r}"
    )
