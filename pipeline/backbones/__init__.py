"""Pretrained backbones: a registry of Keras models that take RGB pixels in [0, 255]."""

from pipeline.backbones.layers import PREPROCESSING_MODES, ImagePreprocessing
from pipeline.backbones.lite0 import efficientnet_lite0
from pipeline.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    ExportedBase,
    auto_size_range,
    boundary_index,
    check_exported_base,
    check_fine_tune_from,
    create_backbone,
    describe_backbones,
    describe_exported_base,
    exported_model_file,
    fine_tune_points,
    freeze_backbone,
    get_backbone_spec,
    list_backbones,
    model_image_size,
    split_backbone,
    weights_file,
)
from pipeline.backbones.torch_weights import read_legacy_state_dict

__all__ = [
    "BACKBONES",
    "PREPROCESSING_MODES",
    "BackboneSpec",
    "ExportedBase",
    "ImagePreprocessing",
    "auto_size_range",
    "boundary_index",
    "check_exported_base",
    "check_fine_tune_from",
    "create_backbone",
    "describe_backbones",
    "describe_exported_base",
    "efficientnet_lite0",
    "exported_model_file",
    "fine_tune_points",
    "freeze_backbone",
    "get_backbone_spec",
    "list_backbones",
    "model_image_size",
    "read_legacy_state_dict",
    "split_backbone",
    "weights_file",
]
