"""Coarse-to-fine random search of hyperparameters on dev (`make search`).

- `space`: the config's ranges as keras-tuner hyperparameters (log, linear, 1 - value on a log
  scale, choices), zooming in on the best trials, and configs with drawn values set.
- `trial`: one trial, head only on cached features or both phases on cached activations.
- `rounds`: the rounds and the search stage (resumable).
- `results`: the table, the plot and `best.yaml`.
"""

from pipeline.search.results import format_table
from pipeline.search.rounds import RoundTuner, search, search_stage
from pipeline.search.space import Dimension, dimensions, hyperparameters, zoom
from pipeline.search.trial import TrialTrainer, trains_both_phases

__all__ = ["search", "search_stage", "RoundTuner", "format_table", "Dimension", "dimensions",
           "hyperparameters", "zoom", "TrialTrainer", "trains_both_phases"]
