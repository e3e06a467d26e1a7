"""The HLE network (DeepLabV3+ over torchvision backbones), its backbones and flip TTA."""
from __future__ import annotations

from .backbones import BACKBONES, build_backbone, imagenet_weights, load_backbone_weights
from .deeplab import HLENet, param_groups
from .tta import flip_inference, merge_flipped

__all__ = [
    "BACKBONES",
    "HLENet",
    "build_backbone",
    "flip_inference",
    "imagenet_weights",
    "load_backbone_weights",
    "merge_flipped",
    "param_groups",
]
