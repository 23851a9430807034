"""Typed experiment configuration: one frozen dataclass per stage, loaded from YAML.

A config file is a short YAML document whose top-level keys are the stage sections below
(`data`, `augment`, `model`, `train`, `evaluate`, `export`) plus `name` and `runs_dir`.
Anything not given takes the dataclass default. Command-line overrides are `section.key=value`
pairs whose values are parsed as YAML and type-checked like the file.

    config = load_config("configs/default.yaml", ["train.head_epochs=3", "model.dropout=0.3"])

Every mistake is one `ConfigError` line naming the key, what was received and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.atomic import write_text
from pipeline.data.images import DEFAULT_MAX_PIXELS
from pipeline.errors import ConfigError

# The allowed values of choice-valued keys, written once: loading checks them, and the modules
# that act on a choice take their list from here.
Source = Literal["fashion_mnist", "folder", "tfds"]
Layout = Literal["auto", "class_folders", "split_folders"]
SplitBy = Literal["content", "path"]
OnBadFile = Literal["skip", "error"]
ClassWeight = Literal["none", "balanced"]
EarlyStoppingMonitor = Literal["val_loss", "val_accuracy"]
ExtractionEngine = Literal["auto", "litert", "tensorflow"]
ExtractionPrecision = Literal["auto", "float32", "float16"]
ExportFormat = Literal["keras", "saved_model", "litert", "litert_dynamic", "litert_int8", "onnx"]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split.

    Attributes:
        source: "fashion_mnist" (the IDX files of Debian's `dataset-fashion-mnist`), "folder"
            (one sub-folder per class, or train/dev/test folders) or "tfds" (any
            tensorflow-datasets image classification dataset, downloaded on first use).
        path: the folder for "folder"; the IDX folder for "fashion_mnist".
        tfds_name: the tensorflow-datasets name for "tfds", e.g. "tf_flowers".
        image_size: images are stored square at this size (shorter side resized, centre crop);
            "auto" follows the photos (`pipeline.data.prepare.auto_image_size`): about 1.25x
            the median shorter side of small photos, the backbone's native size for ordinary
            ones.
        layout: "auto" recognises one folder per class or split folders (`train/`, `val/`,
            `test/`, `training_set/`, `seg_test/` ... or any top-level folders that hold the
            same class folders); "class_folders" never looks for splits; "split_folders"
            insists on them.
        split_folders: names the split folders when their names do not say which is which,
            e.g. {train: part1, test: part2}; splits not given are carved from train.
        split_ratios: train/dev/test fractions; empty means "follow the dataset's size".
        split_by: "content" hashes the file bytes (duplicates share a split), "path" the path.
        on_bad_file: "skip" reports unreadable files and goes on; "error" stops at the first.
        max_image_pixels: decompression-bomb guard; larger images are skipped.
        max_examples: keep at most this many training examples (0 keeps all); for quick runs.
        cache_dir: where decoded images and downloads are kept.
    """

    source: Source = "fashion_mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    tfds_name: str = ""
    image_size: int | Literal["auto"] = 160
    layout: Layout = "auto"
    split_folders: dict[str, str] = field(default_factory=dict)
    split_ratios: tuple[float, ...] = ()
    split_by: SplitBy = "content"
    on_bad_file: OnBadFile = "skip"
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_examples: int = 0
    cache_dir: str = "data"


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation chain: a preset name or a list of albumentations transforms.

    Attributes:
        chain: "none", "light", "standard", "strong", or a list of
            `{name: HorizontalFlip, p: 0.5, ...}` entries.
        preview_images: how many training images the preview grid shows.
        preview_views: augmented versions shown per image.
    """

    chain: str | list = "standard"
    preview_images: int = 6
    preview_views: int = 5


@dataclass(frozen=True)
class ModelConfig:
    """The pretrained backbone and the new classification head.

    Attributes:
        backbone: a name from `pipeline.backbones.list_backbones()`.
        weights: "imagenet", "none", or a path to a local `.weights.h5` file.
        image_size: model input size; 0 takes the backbone's default, "auto" the size the data
            stage stored the images at (`data.image_size`, which may itself be "auto").
        dropout: dropout rate before the new softmax layer.
        l2: L2 weight penalty on the new softmax layer's kernel.
    """

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | Literal["auto"] = 0
    dropout: float = 0.2
    l2: float = 1e-4


@dataclass(frozen=True)
class TrainConfig:
    """Two-phase fine-tuning: a head on cached frozen features, then the top blocks.

    Attributes:
        batch_size: examples per step in both phases.
        cached_views: augmented views of each training image whose features are cached (K).
        head_epochs: phase 1 epochs (head only, frozen base).
        head_learning_rate: phase 1 Adam initial learning rate.
        fine_tune_epochs: phase 2 epochs (top blocks unfrozen); 0 skips phase 2.
        fine_tune_learning_rate: phase 2 Adam initial learning rate.
        decay_rate: exponential learning-rate decay per epoch in both phases.
        early_stopping_patience: epochs without improvement of the monitored dev metric
            before stopping; the best epoch's weights are kept.
        early_stopping_monitor: "val_loss" (dev cross-entropy, the smoother signal) or
            "val_accuracy" (what you report; on small dev sets the lowest-loss epoch can be
            1-3 points less accurate than the most accurate one).
        class_weight: "none" or "balanced" (weights inversely proportional to class counts).
        mixup_alpha: mixup on the cached inputs of both phases (0 = off; 0.2-0.4 is usual):
            a regulariser for when train accuracy runs far ahead of dev accuracy.
        extraction_engine: what runs the frozen base while features are cached: "auto" (the
            backbone spec's faster one), "litert" or "tensorflow"; results agree to float32
            round-off.
        extraction_precision: LiteRT's arithmetic while features are cached: "auto" (float16
            where the CPU has half-precision arithmetic, `pipeline.litert.native_float16`),
            "float32" or "float16"; float16 features are within about 2% of float32's.
        seed: seeds augmentation, shuffling and weight initialisation.
        deterministic: TensorFlow op determinism (every seed set as well): the same config
            gives the same weights bit for bit, and so does a killed run resumed; slower.
    """

    batch_size: int = 64
    cached_views: int = 2
    head_epochs: int = 15
    head_learning_rate: float = 1e-3
    fine_tune_epochs: int = 3
    fine_tune_learning_rate: float = 1e-4
    decay_rate: float = 0.8
    early_stopping_patience: int = 3
    early_stopping_monitor: EarlyStoppingMonitor = "val_loss"
    class_weight: ClassWeight = "none"
    mixup_alpha: float = 0.0
    extraction_engine: ExtractionEngine = "auto"
    extraction_precision: ExtractionPrecision = "auto"
    seed: int = 0
    deterministic: bool = False


@dataclass(frozen=True)
class EvaluateConfig:
    """Held-out evaluation and the bias/variance diagnosis.

    Attributes:
        baseline_error: the error you consider unavoidable (human-level or Bayes error proxy);
            avoidable bias is measured against it.
        train_error_examples: about this many training examples, a stratified random sample,
            measure train error (0 = all).
    """

    baseline_error: float = 0.0
    train_error_examples: int = 5000


@dataclass(frozen=True)
class ExportConfig:
    """Where and how the fine-tuned model is exported.

    Attributes:
        models_dir: exported models go to `<models_dir>/<run name>/`.
        formats: what to write beside `model.keras` (always written: `predict` reads it):
            "saved_model" (`saved_model/`, TensorFlow Serving: image bytes in, class names
            out), "litert" (`model.tflite`, uint8 pixels in, labels in its metadata: phones,
            small boards, CPU servers), "litert_dynamic" and "litert_int8" (the same
            quantised: int8 weights; int8 weights and activations), "onnx" (`model.onnx`,
            onnxruntime). Each is checked on the whole test split in a fresh process.
    """

    models_dir: str = "models"
    formats: tuple[ExportFormat, ...] = ("keras", "saved_model", "litert", "litert_dynamic",
                                         "litert_int8", "onnx")


@dataclass(frozen=True)
class SearchConfig:
    """Random search of the head's hyperparameters (`python -m pipeline search`).

    Each range is [low, high]; learning rate and L2 are drawn uniformly on a log scale (a
    value between 1e-4 and 1e-3 is as likely as one between 1e-2 and 1e-1), dropout linearly.

    Attributes:
        trials: how many random draws to train and compare on dev.
        head_learning_rate: range of phase 1's Adam learning rate.
        l2: range of the head's L2 penalty.
        dropout: range of the head's dropout rate.
    """

    trials: int = 12
    head_learning_rate: tuple[float, ...] = (1e-4, 1e-1)
    l2: tuple[float, ...] = (1e-6, 1e-2)
    dropout: tuple[float, ...] = (0.0, 0.5)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a run name and a config section per stage."""

    name: str = "default"
    runs_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


SECTIONS = ("data", "augment", "model", "train", "evaluate", "export", "search")
POSITIVE = {
    "data.image_size", "data.max_image_pixels", "train.batch_size", "train.cached_views",
    "search.trials",
}
FRACTIONS = {"model.dropout", "train.decay_rate", "evaluate.baseline_error"}


def choice_keys() -> dict[str, tuple[str, ...]]:
    """Every choice-valued key ("train.class_weight") and its allowed values, from the types."""
    choices = {}
    for section in SECTIONS:
        hints = typing.get_type_hints(type(getattr(ExperimentConfig(), section)))
        for name, kind in hints.items():
            if typing.get_origin(kind) is Literal:
                choices[f"{section}.{name}"] = typing.get_args(kind)
    return choices


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Loads an experiment config from YAML and applies `section.key=value` overrides.

    Args:
        path: a YAML file; None starts from the defaults.
        overrides: strings like "train.batch_size=32"; values are parsed as YAML.

    Returns:
        The validated, frozen experiment config.

    Raises:
        ConfigError: unknown key, wrong type, value out of range, unreadable file.
    """
    raw = _read_yaml(Path(path)) if path else {}
    for override in overrides:
        key, value = _parse_override(override)
        _set_nested(raw, key, value)
    config = _build(ExperimentConfig, raw, prefix="")
    _validate(config)
    return config


def to_dict(config: Any) -> dict:
    """The config as plain YAML-ready data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def save_config(config: ExperimentConfig, path: Path) -> None:
    """Writes the resolved config, so a run folder always says exactly what ran."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist. Pass an existing YAML file, "
                          f"e.g. --config configs/default.yaml.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file '{path}' must be a mapping of sections. "
                          f"Received: {type(raw).__name__}.")
    return raw


def _parse_override(text: str) -> tuple[str, Any]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ConfigError(f"Override '{text}' must look like section.key=value, "
                          f"e.g. train.batch_size=32.")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def _set_nested(raw: dict, dotted_key: str, value: Any) -> None:
    *sections, leaf = dotted_key.split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{dotted_key}': '{section}' is not a section.")
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config file"
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping. Received: {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), list(fields), prefix))
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, prefix=f"{prefix}{name}.")
        else:
            values[name] = _coerce(prefix + name, value, kind)
    return cls(**values)


def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return (f"Unknown config key '{key}'.{hint} Valid keys here: "
            f"{', '.join(prefix + name for name in valid)}.")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """Checks one value against its annotated type, allowing int -> float and list -> tuple."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        if value is None and "none" in typing.get_args(kind):
            return "none"  # YAML reads a bare `none` as null
        if value not in typing.get_args(kind):
            raise _choice_error(key, value, typing.get_args(kind))
        return value
    if isinstance(kind, types.UnionType) or origin is typing.Union:
        for option in typing.get_args(kind):
            if _matches(value, option):
                return _coerce(key, value, option)
        raise _type_error(key, value, kind)
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, kind)
        key_kind, value_kind = typing.get_args(kind)
        return {_coerce(key, name, key_kind): _coerce(f"{key}.{name}", item, value_kind)
                for name, item in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, kind)
        item_kind = typing.get_args(kind)[0]
        return tuple(_coerce(key, item, item_kind) for item in value)
    if kind is float and isinstance(value, str):
        value = _float_or_text(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    if not _matches(value, kind):
        raise _type_error(key, value, kind)
    if kind is float:
        return float(value)
    if kind is str and value is None:
        return "none"
    return value


def _float_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _matches(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if origin is Literal:
        return value in typing.get_args(kind)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is str:
        return isinstance(value, str) or value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, origin)


def _describe(kind: Any) -> str:
    """A type as a user reads it: "int or 'auto'", "list", "str"."""
    origin = typing.get_origin(kind)
    if origin is Literal:
        return " or ".join(repr(value) for value in typing.get_args(kind))
    if isinstance(kind, types.UnionType) or origin is typing.Union:
        return " or ".join(_describe(option) for option in typing.get_args(kind))
    return getattr(origin or kind, "__name__", None) or str(kind).replace("typing.", "")


def _choice_error(key: str, value: Any, allowed: tuple) -> ConfigError:
    return ConfigError(f"Config key '{key}' must be one of: {', '.join(map(str, allowed))}. "
                       f"Received: {value!r}.")


def _type_error(key: str, value: Any, kind: Any) -> ConfigError:
    expected = _describe(kind)
    return ConfigError(f"Config key '{key}' expects {expected}. Received: {value!r} "
                       f"({type(value).__name__}).")


def _validate(config: ExperimentConfig) -> None:
    flat = {}
    for section in SECTIONS:
        for name, value in dataclasses.asdict(getattr(config, section)).items():
            flat[f"{section}.{name}"] = value
    for key in POSITIVE:
        if not isinstance(flat[key], str) and flat[key] <= 0:
            raise ConfigError(f"Config key '{key}' must be positive. Received: {flat[key]!r}.")
    for key in FRACTIONS:
        if not 0.0 <= flat[key] < 1.0 and not (key == "train.decay_rate" and flat[key] == 1.0):
            raise ConfigError(f"Config key '{key}' must be in [0, 1). Received: {flat[key]!r}.")
    for key, value in flat.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"Config key '{key}' must not be negative. Received: {value!r}.")
    _validate_ratios(config.data.split_ratios)
    _validate_formats(config.export.formats)
    _validate_search_ranges(config.search)
    _validate_names(config)
    _validate_run_name(config.name)


def _validate_run_name(name: str) -> None:
    """The run folder is `<runs_dir>/<name>` and the export `<models_dir>/<name>`: the name must
    not lead anywhere else."""
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ConfigError(f"Config key 'name' must be a plain folder name: no '/' or '\\', not "
                          f"starting with '.' ('..' would leave {ExperimentConfig.runs_dir}/), no "
                          f"leading or trailing spaces, e.g. name=photos. Received: {name!r}.")


def _validate_names(config: ExperimentConfig) -> None:
    """Augmentation chains and backbone names are checked now, not an hour into a run."""
    from pipeline.augment import resolve_chain
    from pipeline.backbones import get_backbone_spec

    try:
        resolve_chain(config.augment.chain)
    except ValueError as error:
        raise ConfigError(f"Config key 'augment.chain': {error}") from None
    try:
        get_backbone_spec(config.model.backbone)
    except ValueError as error:
        raise ConfigError(f"Config key 'model.backbone': {error}") from None


def _validate_formats(formats: tuple[str, ...]) -> None:
    if "keras" not in formats or len(set(formats)) != len(formats):
        allowed = ", ".join(typing.get_args(ExportFormat))
        raise ConfigError(f"Config key 'export.formats' must list distinct formats from "
                          f"{allowed}, 'keras' included (predict reads it), "
                          f"e.g. [keras, litert]. Received: {list(formats)!r}.")


def _validate_search_ranges(search: SearchConfig) -> None:
    log_scale = ("0 < low < high", lambda low, high: 0 < low < high)
    rules = {"head_learning_rate": log_scale, "l2": log_scale,
             "dropout": ("0 <= low < high < 1", lambda low, high: 0 <= low < high < 1)}
    for name, (wanted, holds) in rules.items():
        bounds = getattr(search, name)
        if len(bounds) != 2 or not holds(*bounds):
            raise ConfigError(f"Config key 'search.{name}' must be a range [low, high] with "
                              f"{wanted}. Received: {list(bounds)!r}.")


def _validate_ratios(ratios: tuple[float, ...]) -> None:
    if not ratios:
        return
    if len(ratios) != 3 or abs(sum(ratios) - 1.0) > 1e-6 or min(ratios) < 0 or ratios[0] == 0:
        raise ConfigError(f"Config key 'data.split_ratios' must be three fractions "
                          f"(train, dev, test) that sum to 1, e.g. [0.6, 0.2, 0.2]. "
                          f"Received: {list(ratios)!r}.")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
