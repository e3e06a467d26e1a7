"""COCO-style instance mask AP of panoptic predictions, through pycocotools.

This module owns the conversion of the thing segments of panoptic id maps into RLE
annotations (ground truth keeps ``iscrowd`` so COCOeval ignores crowd regions; predictions
take ``score`` from ``segments_info`` when present, else 1.0) and their evaluation with
``pycocotools.cocoeval.COCOeval(iouType="segm")`` (Supplementary Eq. C). The accumulator
merges across workers and processes like :class:`hle.core.pq.PQStat`.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from hle.core.pq import to_numpy

AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _encode(pan: np.ndarray, seg_id: int) -> dict[str, Any]:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray((pan == seg_id)[:, :, None].astype(np.uint8)))[0]
    return rle


class MaskAPAccumulator:
    """Collects per-image RLE annotations of thing segments for COCO mask AP.

    Args:
        thing_ids: dataset category ids of the thing classes (only these are evaluated).
    """

    def __init__(self, thing_ids: Iterable[int]) -> None:
        self.thing_ids = tuple(sorted(int(c) for c in thing_ids))
        self.images: list[dict[str, Any]] = []  # {"height", "width", "gt": [...], "dt": [...]}

    def add(
        self,
        gt_pan: Any,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_pan: Any,
        pred_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add one image; id maps are ``[H, W]`` integer arrays (already validated)."""
        gt = to_numpy(gt_pan)
        pred = to_numpy(pred_pan)
        things = set(self.thing_ids)
        gt_anns = [
            {"rle": _encode(gt, int(s["id"])), "category_id": int(s["category_id"]),
             "iscrowd": int(bool(s.get("iscrowd", 0)))}
            for s in gt_segments if int(s["category_id"]) in things
        ]
        dt_anns = [
            {"rle": _encode(pred, int(s["id"])), "category_id": int(s["category_id"]),
             "score": float(s.get("score", 1.0))}
            for s in pred_segments if int(s["category_id"]) in things
        ]
        self.images.append({"height": int(gt.shape[0]), "width": int(gt.shape[1]),
                            "gt": gt_anns, "dt": dt_anns})

    def merge(self, other: MaskAPAccumulator) -> MaskAPAccumulator:
        if other.thing_ids != self.thing_ids:
            raise ValueError(
                f"MaskAPAccumulator.merge: thing ids differ: {self.thing_ids} vs {other.thing_ids}"
            )
        self.images.extend(other.images)
        return self

    def __iadd__(self, other: MaskAPAccumulator) -> MaskAPAccumulator:
        return self.merge(other)

    def evaluate(self) -> dict[str, float]:
        """COCO mask AP over all added images.

        Returns:
            ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}`` in ``[0, 1]``
            (COCOeval ``stats[0:6]``); ``nan`` where COCOeval has no ground truth (-1), and
            0 for every key when there is ground truth but no prediction.
        """
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        images, gts, dts = [], [], []
        for img_id, img in enumerate(self.images, start=1):
            images.append({"id": img_id, "height": img["height"], "width": img["width"]})
            for a in img["gt"]:
                gts.append({
                    "id": len(gts) + 1, "image_id": img_id, "category_id": a["category_id"],
                    "segmentation": a["rle"], "area": float(mask_util.area(a["rle"])),
                    "bbox": mask_util.toBbox(a["rle"]).tolist(), "iscrowd": a["iscrowd"],
                })
            for a in img["dt"]:
                dts.append({"image_id": img_id, "category_id": a["category_id"],
                            "segmentation": a["rle"], "score": a["score"]})
        if not any(g["iscrowd"] == 0 for g in gts):
            return {k: math.nan for k in AP_KEYS}
        if not dts:
            return {k: 0.0 for k in AP_KEYS}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt = COCO()
            coco_gt.dataset = {"images": images, "annotations": gts,
                               "categories": [{"id": c} for c in self.thing_ids]}
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(dts)
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(AP_KEYS, ev.stats[:6])}
