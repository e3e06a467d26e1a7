"""Panoptic evaluation: PQ / PQ† / PC / mIoU / mask AP, streaming evaluator, result writers."""
from __future__ import annotations

from hle.core.pq import PQStat, pq_image_stats, summarize_pq, targets_to_panoptic
from hle.evaluation.ap import MaskAPAccumulator
from hle.evaluation.panoptic import (
    PanopticEvaluator,
    all_gather_states,
    categories_from_is_thing,
    format_pq_table,
    instance_ap,
    match_annotations,
    pq_compute,
)
from hle.evaluation.writers import (
    CITYSCAPES_TRAIN_TO_LABEL_ID,
    CityscapesPanopticWriter,
    CocoPanopticWriter,
    cityscapes_image_id,
    write_cityscapes_panoptic,
    write_coco_panoptic,
)

__all__ = [
    "CITYSCAPES_TRAIN_TO_LABEL_ID",
    "CityscapesPanopticWriter",
    "CocoPanopticWriter",
    "cityscapes_image_id",
    "write_cityscapes_panoptic",
    "write_coco_panoptic",
    "MaskAPAccumulator",
    "PQStat",
    "PanopticEvaluator",
    "all_gather_states",
    "categories_from_is_thing",
    "format_pq_table",
    "instance_ap",
    "match_annotations",
    "pq_compute",
    "pq_image_stats",
    "summarize_pq",
    "targets_to_panoptic",
]
