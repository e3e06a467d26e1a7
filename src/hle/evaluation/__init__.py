"""Panoptic evaluation: PQ / PQ† / PC / mIoU / mask AP, streaming evaluator, result writers."""
from __future__ import annotations

from hle.core.pq import PQStat, pq_image_stats, summarize_pq
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

__all__ = [
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
]
