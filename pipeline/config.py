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
Phase2Input = Literal["auto", "cached", "pixels"]
# issue 17 (distributed training): see pipeline/distribute.py
Distribute = Literal["none", "mirrored", "multi_worker"]
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
        max_examples: keep at most this many examples in all, before splitting (0 keeps all):
            the same subset every run (the lowest hashes of the examples' keys), so every
            split, a given test split too, shrinks in proportion; for quick runs and
            learning curves.
        cache_dir: where decoded images and downloads are kept.
        decode_threads: threads decoding a folder's photos; 0 picks two per CPU core, at most
            8 (`pipeline.data.stream.default_decode_threads`).
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
    decode_threads: int = 0


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
        weights: "imagenet", "none", a path to a local `.weights.h5` file, or an exported
            model to continue from: `models/<run>` (an export folder) or a `.keras` file. Its
            fine-tuned base becomes this run's backbone, with its input size and preprocessing,
            phase 2 fine-tunes from the same block, and a new head learns this run's classes;
            `backbone` must name its base (the error says which). Loaded in Keras' safe mode: a
            file holding code (a Lambda layer) is refused.
        image_size: model input size; 0 takes the backbone's default, "auto" the size the data
            stage stored the images at (`data.image_size`, which may itself be "auto"); both
            take an exported model's own size when `weights` continues from one.
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
        head_learning_rate: phase 1 Adam initial learning rate; "auto" takes the learning-rate
            finder's suggestion (`pipeline.lr_find`, over `search.lr_find_range`).
        fine_tune_epochs: phase 2 epochs (top blocks unfrozen); 0 skips phase 2.
        fine_tune_from: where phase 2's trainable part begins: "top" (the backbone spec's
            point, Lite0's block6a), a block boundary of the backbone (Lite0: block5a,
            block4a; `pipeline.backbones.fine_tune_points` lists each backbone's), "all" (every
            layer), or "auto" (chosen by the training images per class, see the README).
        phase2_input: how phase 2 is fed: "cached" (activations at its start, cached once for
            the K views: cheap), "pixels" (the whole base runs every step on a fresh augmented
            view of every image each epoch), or "auto" (cached wherever phase 2 starts inside the
            base, pixels from "all"; measured in the README).
        fine_tune_learning_rate: phase 2 Adam initial learning rate; "auto" takes the
            learning-rate finder's suggestion for the trainable part with the trained head
            (`pipeline.lr_find.sweep_fine_tune`, 150 steps; plot in the run folder).
        decay_rate: exponential learning-rate decay per epoch in both phases.
        layer_lr_decay: phase 2's learning rate per depth, as in discriminative fine-tuning:
            the head trains at `fine_tune_learning_rate`, the backbone's highest block group
            (above its highest boundary, see `fine_tune_from`) at that times this factor, the
            group below at the factor squared, and so on. 1 (the default) trains every layer
            at one rate; in (0, 1]. Measured in the README.
        adam_beta_1, adam_beta_2: Adam's decay rates of its gradient mean and square.
        early_stopping_patience: epochs without improvement of the monitored dev metric
            before stopping; the best epoch's weights are kept.
        early_stopping_monitor: "val_loss" (dev cross-entropy, the smoother signal) or
            "val_accuracy" (what you report; on small dev sets the lowest-loss epoch can be
            1-3 points less accurate than the most accurate one).
        class_weight: "none" or "balanced" (weights inversely proportional to class counts).
        mixup_alpha: mixup on the cached inputs of both phases (0 = off; 0.2-0.4 is usual):
            a regulariser for when train accuracy runs far ahead of dev accuracy.
        label_smoothing: in both phases the one-hot targets become (1 - s) on the true class
            and s / num_classes spread over all classes (0 = off; 0.1 is usual): the model is
            taught not to be certain, which may calibrate its probabilities better.
        extraction_engine: what runs the frozen base while features are cached: "auto" (the
            backbone spec's faster one), "litert" or "tensorflow"; results agree to float32
            round-off.
        extraction_precision: LiteRT's arithmetic while features are cached: "auto" (float16
            where the CPU has half-precision arithmetic, `pipeline.litert.native_float16`),
            "float32" or "float16"; float16 features are within about 2% of float32's.
        seed: seeds augmentation, shuffling and weight initialisation.
        deterministic: TensorFlow op determinism (every seed set as well): the same config
            gives the same weights bit for bit, and so does a killed run resumed; slower.
        distribute: "none" (one device), "mirrored" (every GPU of this machine,
            `tf.distribute.MirroredStrategy`) or "multi_worker" (several machines described by
            the TF_CONFIG environment variable, `MultiWorkerMirroredStrategy`); see
            `pipeline.distribute` and the README's "Several machines".
    """

    batch_size: int = 64
    cached_views: int = 2
    head_epochs: int = 15
    head_learning_rate: float | Literal["auto"] = 1e-3
    fine_tune_epochs: int = 3
    fine_tune_from: str = "top"
    phase2_input: Phase2Input = "auto"
    fine_tune_learning_rate: float | Literal["auto"] = 1e-4
    decay_rate: float = 0.8
    layer_lr_decay: float = 1.0
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    early_stopping_patience: int = 3
    early_stopping_monitor: EarlyStoppingMonitor = "val_loss"
    class_weight: ClassWeight = "none"
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    extraction_engine: ExtractionEngine = "auto"
    extraction_precision: ExtractionPrecision = "auto"
    seed: int = 0
    deterministic: bool = False
    distribute: Distribute = "none"  # issue 17: pipeline/distribute.py


@dataclass(frozen=True)
class EvaluateConfig:
    """Held-out evaluation and the bias/variance diagnosis.

    Attributes:
        baseline_error: the error you consider unavoidable (human-level or Bayes error proxy);
            avoidable bias is measured against it. 0 means unknown: all of the train error
            then counts as avoidable bias.
        diagnosis_tolerance: a gap between errors (avoidable bias, variance, dev/test
            mismatch) larger than this is a problem the diagnosis acts on; raise it for small
            dev/test sets, whose errors move by more than 2 points from chance alone.
        train_error_examples: about this many training examples, a stratified random sample,
            measure train error (0 = all).
        tta: test-time augmentation, reported beside the plain figures (never instead of
            them): each dev and test image is also predicted mirrored and as a few crops,
            and the probabilities are averaged; costs 5 forward passes per image
            (the plain view, its mirror image and three crops).
    """

    baseline_error: float = 0.0
    diagnosis_tolerance: float = 0.02
    train_error_examples: int = 5000
    tta: bool = False


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


# A search range: [scale, low, high] for "log" (uniform in log(value)), "linear" and
# "one_minus_log" (uniform in log(1 - value): Adam's betas, whose region near 1 matters), or
# [choice, value, ...]. `pipeline.search.space` turns them into keras-tuner hyperparameters.
SearchScale = Literal["log", "linear", "one_minus_log", "choice"]
SearchPhases = Literal["auto", "head", "both"]
# search range name -> the config key it sets
SEARCHABLE = {
    "head_learning_rate": "train.head_learning_rate",
    "fine_tune_learning_rate": "train.fine_tune_learning_rate",
    "l2": "model.l2", "dropout": "model.dropout",
    "adam_beta_1": "train.adam_beta_1", "adam_beta_2": "train.adam_beta_2",
    "decay_rate": "train.decay_rate", "batch_size": "train.batch_size",
    "mixup_alpha": "train.mixup_alpha", "label_smoothing": "train.label_smoothing",
    "chain": "augment.chain", "fine_tune_from": "train.fine_tune_from",
    "layer_lr_decay": "train.layer_lr_decay",
}
# keys only phase 2 reads: searching one makes every trial train both phases
PHASE_2_KEYS = ("fine_tune_learning_rate", "fine_tune_from", "layer_lr_decay")


@dataclass(frozen=True)
class SearchConfig:
    """Coarse-to-fine random search on dev (`python -m pipeline search`).

    Each range is [scale, low, high] or [choice, value, ...]: "log" draws uniformly on a log
    scale (a value in 1e-4..1e-3 is as likely as one in 1e-2..1e-1), "one_minus_log" draws
    1 - value on a log scale (beta 0.9..0.999 is 1 - beta 0.1..0.001), "linear" uniformly.
    A trial is phase 1 alone on cached features, or both phases on cached activations when a
    key that only phase 2 reads is searched (`phases`). Trials feed phase 2 from activations
    cached where it starts, at every depth (`fine_tune_from`): a trial from pixels would cost
    a whole training run.

    Attributes:
        keys: which ranges below are searched; the others keep the config's values.
        trials: random draws per round, each trained and compared on dev accuracy.
        rounds: rounds of `trials`; each round after the first samples only around the best
            trials so far (coarse to fine).
        zoom: the next round's range is the span of the best trials widened by this fraction
            of the last round's width (in the scale drawn on), inside the last round's range.
        keep_best: how many of the best trials so far the next round zooms around.
        phases: "auto" (both phases if a phase-2 key is searched), "head" or "both".
        head_learning_rate, fine_tune_learning_rate, l2, dropout, adam_beta_1, adam_beta_2,
            decay_rate, batch_size, mixup_alpha, label_smoothing, chain, fine_tune_from,
            layer_lr_decay: the
            range of the config key each sets (`SEARCHABLE`), searched when named in `keys`.
            `fine_tune_from`'s choices are the backbone's points (`make backbones`).
    """

    keys: tuple[str, ...] = ("head_learning_rate", "l2", "dropout")
    trials: int = 8
    rounds: int = 2
    zoom: float = 0.3
    keep_best: int = 3
    phases: SearchPhases = "auto"
    head_learning_rate: tuple[int | float | str, ...] = ("log", 1e-4, 1e-1)
    fine_tune_learning_rate: tuple[int | float | str, ...] = ("log", 1e-5, 1e-3)
    l2: tuple[int | float | str, ...] = ("log", 1e-6, 1e-2)
    dropout: tuple[int | float | str, ...] = ("linear", 0.0, 0.5)
    adam_beta_1: tuple[int | float | str, ...] = ("one_minus_log", 0.8, 0.99)
    adam_beta_2: tuple[int | float | str, ...] = ("one_minus_log", 0.99, 0.9999)
    decay_rate: tuple[int | float | str, ...] = ("linear", 0.5, 1.0)
    batch_size: tuple[int | float | str, ...] = ("choice", 16, 32, 64, 128)
    mixup_alpha: tuple[int | float | str, ...] = ("linear", 0.0, 0.5)
    label_smoothing: tuple[int | float | str, ...] = ("linear", 0.0, 0.2)
    chain: tuple[int | float | str, ...] = ("choice", "none", "light", "standard")
    fine_tune_from: tuple[int | float | str, ...] = ("choice", "top", "auto")
    layer_lr_decay: tuple[int | float | str, ...] = ("linear", 0.3, 1.0)


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
    "search.trials", "search.rounds", "search.keep_best",
}
FRACTIONS = {"model.dropout", "train.decay_rate", "train.label_smoothing",
             "evaluate.baseline_error", "evaluate.diagnosis_tolerance", "train.adam_beta_1",
             "train.adam_beta_2"}


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
        if float in typing.get_args(kind) and isinstance(value, str):
            value = _float_or_text(value)  # "1e-4" again
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
    for key, value in flat.items():
        _check_value(key, value)
    _validate_ratios(config.data.split_ratios)
    _validate_formats(config.export.formats)
    _validate_search(config.search)
    _validate_names(config)
    _validate_run_name(config.name)
    _validate_continued_model(config)


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
    from pipeline.backbones import check_fine_tune_from, get_backbone_spec

    try:
        resolve_chain(config.augment.chain)
    except ValueError as error:
        raise ConfigError(f"Config key 'augment.chain': {error}") from None
    try:
        get_backbone_spec(config.model.backbone)
    except ValueError as error:
        raise ConfigError(f"Config key 'model.backbone': {error}") from None
    check_fine_tune_from(config.model.backbone, config.train.fine_tune_from)
    for depth in config.search.fine_tune_from[1:]:
        try:
            check_fine_tune_from(config.model.backbone, depth)
        except ConfigError as error:
            raise ConfigError(f"Config key 'search.fine_tune_from': {error}") from None


def _validate_continued_model(config: ExperimentConfig) -> None:
    """A run continuing from an exported model is checked against it now (when it exists), and
    may not continue from its own export, which the export stage would replace."""
    from pipeline.backbones import check_exported_base, exported_model_file

    path = exported_model_file(config.model.weights)
    if path is None:
        return
    own = Path(config.export.models_dir) / config.name / "model.keras"
    if path.expanduser().resolve() == own.resolve():
        raise ConfigError(f"Config key 'model.weights' names this run's own export ({own}), "
                          f"which its export stage would replace. Give the new run another "
                          f"name, e.g. name={config.name}_continued.")
    if path.is_file():
        check_exported_base(path, config.model.backbone, config.model.image_size)


def _validate_formats(formats: tuple[str, ...]) -> None:
    if "keras" not in formats or len(set(formats)) != len(formats):
        allowed = ", ".join(typing.get_args(ExportFormat))
        raise ConfigError(f"Config key 'export.formats' must list distinct formats from "
                          f"{allowed}, 'keras' included (predict reads it), "
                          f"e.g. [keras, litert]. Received: {list(formats)!r}.")


def _check_value(key: str, value: Any) -> None:
    """The range rules of one scalar key: positive, a fraction, not negative."""
    if isinstance(value, str) or isinstance(value, bool):
        return
    if key in POSITIVE and value <= 0:
        raise ConfigError(f"Config key '{key}' must be positive. Received: {value!r}.")
    if key in FRACTIONS and not 0.0 <= value < 1.0 and not (
            key == "train.decay_rate" and value == 1.0):
        raise ConfigError(f"Config key '{key}' must be in [0, 1). Received: {value!r}.")
    if key == "train.layer_lr_decay" and not 0.0 < value <= 1.0:
        raise ConfigError(f"Config key '{key}' must be in (0, 1]: 1 trains every layer at one "
                          f"rate, 0.7 each block group below at 0.7x the rate above. Received: "
                          f"{value!r}.")
    if isinstance(value, (int, float)) and value < 0:
        raise ConfigError(f"Config key '{key}' must not be negative. Received: {value!r}.")


# scale -> (what a [scale, low, high] range needs, the test)
RANGE_RULES = {"log": ("0 < low < high", lambda low, high: 0 < low < high),
               "one_minus_log": ("0 <= low < high < 1", lambda low, high: 0 <= low < high < 1),
               "linear": ("low < high", lambda low, high: low < high)}


def _validate_search(search: SearchConfig) -> None:
    """Searched keys exist, and every range (searched or not) holds values its key accepts."""
    for name in search.keys:
        if name not in SEARCHABLE:
            raise ConfigError(f"Config key 'search.keys' names '{name}', which is not "
                              f"searchable.{_close(name, SEARCHABLE)} Searchable: "
                              f"{', '.join(SEARCHABLE)}.")
    if not search.keys or len(set(search.keys)) != len(search.keys):
        raise ConfigError(f"Config key 'search.keys' must list distinct searchable keys, e.g. "
                          f"[head_learning_rate, l2]. Received: {list(search.keys)!r}.")
    if not 0 < search.zoom <= 1:
        raise ConfigError(f"Config key 'search.zoom' must be in (0, 1]. Received: "
                          f"{search.zoom!r}.")
    for name in SEARCHABLE:
        _validate_range(name, getattr(search, name))


def _validate_range(name: str, spec: tuple) -> None:
    key, target = f"search.{name}", SEARCHABLE[name]
    scales = typing.get_args(SearchScale)
    how = (f"[scale, low, high] with scale {', '.join(scales[:-1])}, or [choice, value, ...], "
           f"e.g. {key}=[log, 1.0e-4, 0.1]")
    if not spec or spec[0] not in scales:
        raise ConfigError(f"Config key '{key}' must be {how}. Received: {list(spec)!r}.")
    scale, *values = spec
    if scale == "choice":
        if not values or len({repr(value) for value in values}) != len(values) or len(
                {type(value) for value in values}) != 1:
            raise ConfigError(f"Config key '{key}' must list distinct values of one type after "
                              f"'choice'. Received: {list(spec)!r}.")
    else:
        wanted, holds = RANGE_RULES[scale]
        if len(values) != 2 or not all(_matches(value, float) for value in values) or not holds(
                *values):
            raise ConfigError(f"Config key '{key}' must be [{scale}, low, high] with {wanted}. "
                              f"Received: {list(spec)!r}.")
    for value in values:  # every bound and choice is a value the key it sets must accept
        _check_target(key, target, value)


def _check_target(key: str, target: str, value: Any) -> None:
    section, name = target.split(".")
    kind = typing.get_type_hints(type(getattr(ExperimentConfig(), section)))[name]
    try:
        _check_value(target, _coerce(target, value, kind))
        if target == "augment.chain":
            from pipeline.augment import resolve_chain

            resolve_chain(value)
    except (ConfigError, ValueError) as error:
        raise ConfigError(f"Config key '{key}' holds {value!r}, a value '{target}' refuses: "
                          f"{error}") from None


def _close(name: str, valid: Any) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


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
