"""The search space: config ranges as keras-tuner hyperparameters, and zooming in on the best.

A range from the config is `[scale, low, high]` or `[choice, value, ...]`. keras-tuner draws
"log" ranges uniformly in log(value) (`sampling="log"`) and "linear" ones uniformly. Adam's
betas are "one_minus_log": the tuner draws 1 - beta on a log scale, because beta 0.9 -> 0.99
(ten times longer memory) matters as much as 0.99 -> 0.999, while 0.5 -> 0.59 hardly does.

Coarse to fine: after a round, `zoom` narrows each range to the span of the best trials plus a
fraction of the round's width, measured in the scale the values were drawn on.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

import keras_tuner

from pipeline.config import SEARCHABLE, ExperimentConfig, SearchConfig


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter.

    Attributes:
        name: the search range's name (`search.<name>`), also the keras-tuner name.
        key: the config key it sets, e.g. "train.adam_beta_1".
        scale: "log", "linear", "one_minus_log" or "choice".
        values: (low, high) in the key's own units (betas, not 1 - beta), or the choices.
        integer: the key takes whole numbers (batch size).
    """

    name: str
    key: str
    scale: str
    values: tuple
    integer: bool = False

    @property
    def logarithmic(self) -> bool:
        return self.scale in ("log", "one_minus_log")

    def to_tuner(self, value: Any) -> Any:
        """A config value as keras-tuner holds it (1 - beta for "one_minus_log")."""
        return 1.0 - value if self.scale == "one_minus_log" else value

    def from_tuner(self, value: Any) -> Any:
        """keras-tuner's draw as the config value."""
        if self.scale == "one_minus_log":
            return 1.0 - value
        return int(value) if self.integer else value

    def position(self, value: float) -> float:
        """Where a value lies on the axis it is drawn uniformly along."""
        if self.scale == "log":
            return math.log(value)
        return math.log(1.0 - value) if self.scale == "one_minus_log" else value

    def at(self, position: float) -> float:
        """The value at a position on that axis (inverse of `position`)."""
        if self.scale == "log":
            return math.exp(position)
        return 1.0 - math.exp(position) if self.scale == "one_minus_log" else position

    def declare(self, hyperparameters: keras_tuner.HyperParameters) -> None:
        """Declares this dimension in a keras-tuner search space."""
        if self.scale == "choice":
            hyperparameters.Choice(self.name, list(self.values))
            return
        low, high = sorted(self.to_tuner(value) for value in self.values)
        sampling = "log" if self.logarithmic else "linear"
        if self.integer:
            hyperparameters.Int(self.name, int(low), int(high), sampling=sampling)
        else:
            hyperparameters.Float(self.name, float(low), float(high), sampling=sampling)


def dimensions(search: SearchConfig) -> list[Dimension]:
    """The searched keys (`search.keys`) with their ranges, in the order the config lists them."""
    result = []
    for name in search.keys:
        scale, *values = getattr(search, name)
        section, field = SEARCHABLE[name].split(".")
        kind = typing.get_type_hints(type(getattr(ExperimentConfig(), section)))[field]
        result.append(Dimension(name, SEARCHABLE[name], scale, tuple(values),
                                integer=kind is int))
    return result


def hyperparameters(space: list[Dimension]) -> keras_tuner.HyperParameters:
    """The keras-tuner search space of these dimensions."""
    result = keras_tuner.HyperParameters()
    for dimension in space:
        dimension.declare(result)
    return result


def config_values(space: list[Dimension], drawn: dict[str, Any]) -> dict[str, Any]:
    """keras-tuner's draw {name: value} as {config key: value}."""
    return {dimension.key: dimension.from_tuner(drawn[dimension.name]) for dimension in space}


def zoom(space: list[Dimension], best: list[dict[str, Any]], fraction: float) -> list[Dimension]:
    """The next round's space: around the best trials ({config key: value} each).

    A numeric range becomes the span of the best trials' values, widened by `fraction` of the
    current width (half on each side) and kept inside the current range, all measured along
    the axis values are drawn on (log, log(1 - value) or linear). A choice keeps the values
    the best trials took.
    """
    return [_zoom_one(dimension, [trial[dimension.key] for trial in best], fraction)
            for dimension in space]


def _zoom_one(dimension: Dimension, values: list, fraction: float) -> Dimension:
    if dimension.scale == "choice":
        kept = tuple(value for value in dimension.values if value in values)
        return dataclasses.replace(dimension, values=kept)
    ends = sorted(dimension.position(value) for value in dimension.values)
    positions = [dimension.position(value) for value in values]
    margin = fraction * (ends[1] - ends[0]) / 2
    low = max(ends[0], min(positions) - margin)
    high = min(ends[1], max(positions) + margin)
    bounds = sorted([dimension.at(low), dimension.at(high)])
    if dimension.integer:
        bounds = [math.floor(bounds[0]), math.ceil(bounds[1])]
    return dataclasses.replace(dimension, values=tuple(bounds))


def with_values(config: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """The config with {config key: value} set, e.g. {"train.batch_size": 32}."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    return dataclasses.replace(config, **{
        section: dataclasses.replace(getattr(config, section), **fields)
        for section, fields in sections.items()})


def to_json(space: list[Dimension]) -> list[dict]:
    return [{**dataclasses.asdict(dimension), "values": list(dimension.values)}
            for dimension in space]


def from_json(stored: list[dict]) -> list[Dimension]:
    return [Dimension(**{**item, "values": tuple(item["values"])}) for item in stored]


__all__ = ["Dimension", "dimensions", "hyperparameters", "config_values", "zoom",
           "with_values", "to_json", "from_json"]
