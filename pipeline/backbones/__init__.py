"""Pretrained backbones: a registry of Keras models that take RGB pixels in [0, 255]."""

from pipeline.backbones.layers import PREPROCESSING_MODES, ImagePreprocessing
from pipeline.backbones.lite0 import efficientnet_lite0
from pipeline.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    auto_size_range,
    create_backbone,
    describe_backbones,
    freeze_backbone,
    get_backbone_spec,
    list_backbones,
    model_image_size,
    split_backbone,
)
from pipeline.backbones.torch_weights import read_legacy_state_dict

__all__ = [
    "BACKBONES",
    "PREPROCESSING_MODES",
    "BackboneSpec",
    "ImagePreprocessing",
    "auto_size_range",
    "create_backbone",
    "describe_backbones",
    "efficientnet_lite0",
    "freeze_backbone",
    "get_backbone_spec",
    "list_backbones",
    "model_image_size",
    "read_legacy_state_dict",
    "split_backbone",
]
