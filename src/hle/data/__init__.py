"""Datasets: index loaders (records + metadata), the per-sample mapper and the synthetic set.

The synthetic loader is `hle.data.synthetic.synthetic` (or `DATASETS["synthetic"]`); it is not
re-exported here so that `hle.data.synthetic` keeps naming the module.
"""
from __future__ import annotations

from hle.data.catalog import DATASETS, load_dataset
from hle.data.datasets import (
    cityscapes_metadata,
    cityscapes_panoptic,
    coco_panoptic,
    custom_panoptic,
    load_coco_panoptic,
    vistas_panoptic,
)
from hle.data.mapper import PanopticDataset, PanopticMapper, collate
from hle.data.metadata import Metadata
from hle.data.synthetic import generate_synthetic, synthetic_metadata
from hle.data.targets import panoptic_targets

__all__ = [
    "DATASETS",
    "Metadata",
    "PanopticDataset",
    "PanopticMapper",
    "cityscapes_metadata",
    "cityscapes_panoptic",
    "coco_panoptic",
    "collate",
    "custom_panoptic",
    "generate_synthetic",
    "load_coco_panoptic",
    "load_dataset",
    "panoptic_targets",
    "synthetic_metadata",
    "vistas_panoptic",
]
