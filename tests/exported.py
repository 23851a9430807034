"""Tiny exported models for tests: an export folder as `make export` lays it out, with a
random-weight backbone at a few pixels, built in about a second."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from pipeline.backbones import create_backbone, freeze_backbone, get_backbone_spec
from pipeline.config import ModelConfig
from pipeline.model import assemble_classifier, build_head


def tiny_classifier(class_names: Sequence[str], *, image_size: int = 32,
                    backbone: str = "efficientnet_lite0", seed: int = 0) -> keras.Model:
    """A classifier as training assembles it, on a random-weight `backbone` at `image_size`."""
    keras.utils.set_random_seed(seed)
    spec = get_backbone_spec(backbone)
    base = create_backbone(spec.name, weights=None, image_size=image_size)
    freeze_backbone(base, spec, unfreeze_top=False)
    head = build_head(len(class_names), base.output_shape[-1], ModelConfig())
    # A random bias, so that the classes have distinct probabilities to rank.
    bias = head.get_layer("predictions").bias
    bias.assign(np.random.default_rng(seed).normal(0, 1, bias.shape).astype("float32"))
    return assemble_classifier(base, head, class_names)


def write_tiny_export(folder: Path, class_names: Sequence[str], *, image_size: int = 32,
                      stored_size: int = 40, model: keras.Model | None = None,
                      saved_model: bool = False) -> Path:
    """Writes `folder/model.keras` (`model`, or a `tiny_classifier`) and
    `folder/preprocessing.json` (images stored at `stored_size`), and with `saved_model` the
    export's `folder/saved_model/`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model or tiny_classifier(class_names, image_size=image_size)
    model.save(folder / "model.keras")
    if saved_model:
        from pipeline.serving import write_saved_model

        write_saved_model(model, folder / "saved_model", class_names=list(class_names),
                          stored_size=stored_size)
    (folder / "preprocessing.json").write_text(json.dumps({"stored_size": stored_size}))
    return folder
