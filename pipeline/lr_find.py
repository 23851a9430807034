"""Learning-rate finder (Smith, 2017; fastai's `lr_find`): which learning rate to start from.

The head is trained on cached features for a few hundred steps while the learning rate grows
exponentially from tiny to huge (and, for `train.fine_tune_learning_rate: auto`, the unfrozen
top blocks with the trained head on their cached inputs, for fewer steps: they cost more).
The loss first stays flat (too small to learn), then falls (learning), then shoots up
(diverging). The suggestion is where the smoothed loss falls fastest against
log(learning rate), a rate that learns quickly while still far from diverging;
the rate at the minimum, divided by ten (fastai's older rule), is reported beside it.
Keras has no finder of its own, so this one drives a plain Adam with `train_on_batch`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import keras
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.atomic import write_json
from pipeline.config import ModelConfig, TrainConfig
from pipeline.inputs import CachedViews
from pipeline.model import build_head

# From far below any useful Adam rate to far above; the sweep stops once the loss diverges.
SWEEP = (1e-6, 1.0)
STEPS = 300
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (as fastai does)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of its minimum
EDGE = 1.1  # phase 2's loss has begun to diverge 10% above its lowest so far
# Phase 2 starts from a trained head: its useful rates are lower, and each step costs a pass
# through the top blocks (0.8-1.1 s on flowers128 here), so the sweep is shorter.
FINE_TUNE_SWEEP = (1e-7, 1e-1)
FINE_TUNE_STEPS = 150


def sweep(features: np.ndarray, labels: np.ndarray, num_classes: int, model: ModelConfig,
          training: TrainConfig, *, steps: int = STEPS, span: tuple[float, float] = SWEEP
          ) -> dict:
    """Trains a fresh head on cached features while the learning rate grows exponentially.

    Args:
        features: (K, N, D) pooled features of K views of the training images.
        labels: (N,) integer labels.
        num_classes: outputs of the head.
        model: the head's dropout and L2.
        training: batch size, Adam's betas, mixup and the seed.
        steps: steps of the sweep (batches, cycling through the epochs).
        span: the first and last learning rate.

    Returns:
        {"learning_rates", "losses", "smoothed": per step until divergence,
         "suggested": the steepest fall, and the others of `suggestions`}
    """
    keras.utils.set_random_seed(training.seed)
    head = build_head(num_classes, features.shape[-1], model)
    data = CachedViews(features, labels, training.batch_size, seed=training.seed,
                       num_classes=num_classes, mixup_alpha=training.mixup_alpha)
    return _sweep_model(head, data, training, steps=steps, span=span)


def sweep_fine_tune(model: keras.Model, data, training: TrainConfig, *,
                    steps: int = FINE_TUNE_STEPS,
                    span: tuple[float, float] = FINE_TUNE_SWEEP) -> dict:
    """Phase 2's sweep: `model` (the trainable part of the base and the phase-1 head,
    `pipeline.train.Phase2.model`) on its training batches `data` (cached activations or
    pixels augmented live), as phase 2 trains it. The weights are put back afterwards: the
    sweep only looks.

    Returns:
        As `sweep`, the suggestion by the "edge" rule (see `suggestions`).
    """
    keras.utils.set_random_seed(training.seed)
    weights = model.get_weights()
    try:
        return _sweep_model(model, data, training, steps=steps, span=span, rule="edge")
    finally:
        model.set_weights(weights)
        data.set_epoch(0)


def _sweep_model(model: keras.Model, data, training: TrainConfig, *, steps: int,
                 span: tuple[float, float], rule: str = "steepest") -> dict:
    """Trains `model` on batches of `data` (a PyDataset of (inputs, one-hot labels)) with
    Adam, the rate growing exponentially over `span` in `steps` steps, until the smoothed loss
    diverges."""
    optimizer = keras.optimizers.Adam(span[0], beta_1=training.adam_beta_1,
                                      beta_2=training.adam_beta_2)
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    rates = span[0] * (span[1] / span[0]) ** (np.arange(steps) / max(steps - 1, 1))
    losses, smoothed, average = [], [], 0.0
    for step, rate in enumerate(rates):
        if step and step % len(data) == 0:
            data.set_epoch(step // len(data))
        optimizer.learning_rate.assign(rate)
        loss = float(model.train_on_batch(*data[step % len(data)]))
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        losses.append(loss)
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        if not np.isfinite(loss) or smoothed[-1] > DIVERGED * min(smoothed):
            break
    return {"learning_rates": rates[:len(losses)].tolist(), "losses": losses,
            "smoothed": smoothed,
            **suggestions(rates[:len(losses)], np.array(smoothed), rule)}


def suggestions(rates: np.ndarray, smoothed: np.ndarray, rule: str = "steepest") -> dict:
    """The rates a sweep suggests; `rule` says which one is "suggested".

    - "steepest" (the head, trained from scratch): the steepest fall of the smoothed loss
      before its minimum. The first and last tenth of the sweep are left out: the moving
      average has not settled at the start, and the end is the divergence itself.
    - "edge" (phase 2, which starts from a trained head): the loss has nothing left to fall
      from, so it stays flat, noisy, until the rate is too high, then climbs. The suggestion
      is a tenth of the edge, the first rate whose smoothed loss is `EDGE` above the lowest
      so far (Smith's "an order of magnitude below where the loss diverges").

    Also returned: the minimum's rate / 10 (fastai's older rule) and the edge / 10.
    """
    lowest = int(np.nanargmin(smoothed))
    start = len(rates) // 10
    stop = max(lowest, start + 2)
    slopes = np.gradient(smoothed[:stop], np.log(rates[:stop]))
    steepest = start + int(np.argmin(slopes[start:]))
    settled = smoothed[start:]  # the average of the first few batches is too noisy to compare
    above = np.flatnonzero(settled > EDGE * np.minimum.accumulate(settled))
    edge = start + int(above[0]) if len(above) else len(rates) - 1
    found = {"steepest": float(rates[steepest]), "minimum_over_10": float(rates[lowest] / 10),
             "edge_over_10": float(rates[edge] / 10)}
    return {"suggested": found["steepest" if rule == "steepest" else "edge_over_10"],
            "rule": rule, **found}


def plot(result: dict, path: Path,
         title: str = "Learning-rate finder: the head on cached features") -> None:
    """Loss and smoothed loss against the learning rate (log axis), the suggestion marked."""
    figure = Figure(figsize=(6.5, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(result["learning_rates"], result["losses"], color="0.8", lw=0.8, label="loss")
    axes.plot(result["learning_rates"], result["smoothed"], color="tab:blue",
              label="smoothed loss")
    why = "steepest fall" if result.get("rule", "steepest") == "steepest" else "edge / 10"
    axes.axvline(result["suggested"], color="tab:red", ls="--",
                 label=f"suggested {result['suggested']:.2g} ({why})")
    axes.axvline(result["minimum_over_10"], color="tab:green", ls=":",
                 label=f"minimum / 10: {result['minimum_over_10']:.2g}")
    top = float(np.percentile(result["smoothed"], 95)) * 1.2
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss",
             ylim=(0, top), title=title)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110)


def resolve_head_learning_rate(training: TrainConfig, model: ModelConfig, features: np.ndarray,
                               labels: np.ndarray, num_classes: int) -> TrainConfig:
    """`train.head_learning_rate: auto` replaced by the finder's suggestion (printed)."""
    rate = sweep(features, labels, num_classes, model, training)["suggested"]
    print(f"train.head_learning_rate: auto -> {rate:.3g} (learning-rate finder)")
    return dataclasses.replace(training, head_learning_rate=rate)


def resolve_fine_tune_learning_rate(training: TrainConfig, model: keras.Model, data,
                                    run_dir: Path | None = None) -> TrainConfig:
    """`train.fine_tune_learning_rate: auto` replaced by phase 2's sweep's suggestion (printed;
    the sweep and its plot saved as `lr_find_fine_tune.json`/`.png` in `run_dir`).

    Args:
        model, data: phase 2's model and training batches (`pipeline.train.Phase2`).
    """
    result = sweep_fine_tune(model, data, training)
    rate = result["suggested"]
    print(f"train.fine_tune_learning_rate: auto -> {rate:.3g} (learning-rate finder on phase "
          f"2's trainable part, {len(result['losses'])} steps)")
    if run_dir is not None:
        write_json(run_dir / "lr_find_fine_tune.json", result)
        plot(result, run_dir / "lr_find_fine_tune.png",
             title="Learning-rate finder: phase 2, from the trained head")
    return dataclasses.replace(training, fine_tune_learning_rate=rate)


__all__ = ["sweep", "sweep_fine_tune", "suggestions", "plot", "resolve_head_learning_rate",
           "resolve_fine_tune_learning_rate", "SWEEP", "STEPS"]


def lr_find_stage(config, run_dir: Path) -> dict:
    """`make lr-find`: the sweep on the run's training split (the test split is not read); writes
    `lr_find.json` and `lr_find.png` to the run folder and prints the suggestion.

    Args:
        config: the experiment (`augment`, `model` and `train` are read).
        run_dir: the run folder, whose data stage has run.
    """
    from pipeline.backbones import model_image_size
    from pipeline.data.prepare import load_prepared
    from pipeline.train import cache_features, frozen_base

    data = load_prepared(run_dir / "data")
    _, bottom, top = frozen_base(config.model, model_image_size(config.model, data.image_size))
    # the features go to files read memory-mapped (issue 17), removed once the sweep is done
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".lr_find_features-") as folder:
        train_cache, _, _ = cache_features(config.augment, config.model, config.train, data,
                                           run_dir, bottom, top, keep_activations=False,
                                           folder=Path(folder))
        result = sweep(train_cache.pooled, data.labels("train"), len(data.class_names),
                       config.model, config.train)
        del train_cache
    write_json(run_dir / "lr_find.json", result)
    plot(result, run_dir / "lr_find.png")
    print(f"Suggested train.head_learning_rate: {result['suggested']:.3g} (steepest fall of the "
          f"loss; the minimum / 10 is {result['minimum_over_10']:.3g}); the config has "
          f"{config.train.head_learning_rate}.\nPlot: {run_dir / 'lr_find.png'}")
    return result
