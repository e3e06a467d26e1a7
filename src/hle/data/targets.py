"""Training targets of one image from its panoptic segment-id map.

Pure tensor code: a ``[H, W]`` segment-id map plus the record's ``segments_info``
and the :class:`Metadata` give :class:`hle.core.types.PanopticTargets` with
``[H, W]`` tensors. Void pixels (id 0, ids absent from ``segments_info`` and
categories that map to ignore) are ignored everywhere; crowd thing segments keep
their class but get no instance id; every other thing segment present in the map
gets its own instance id ``1..L`` in ``segments_info`` order.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from hle.core.types import PanopticTargets
from hle.data.metadata import Metadata


def panoptic_targets(
    panoptic: torch.Tensor, segments_info: Sequence[dict[str, Any]], metadata: Metadata
) -> PanopticTargets:
    """Build the per-pixel targets of one image.

    Args:
        panoptic: ``[H, W]`` int64 segment ids (COCO panoptic ids, 0 = void).
        segments_info: segments with keys ``id, category_id`` (dataset id) and
            ``iscrowd``; segments absent from the map are skipped.
        metadata: dataset id -> train id and thing flags.

    Returns:
        :class:`PanopticTargets` with ``[H, W]`` tensors: ``semantic`` int64
        (``metadata.ignore_label`` on void), ``instance`` int64 (``1..L``, 0 for
        stuff/void/crowd), ``thing``/``ignore``/``crowd`` bool.
    """
    if panoptic.dim() != 2:
        raise ValueError(f"panoptic_targets: panoptic must be [H, W], got shape {tuple(panoptic.shape)}")
    panoptic = panoptic.to(torch.int64)
    ignore_label = metadata.ignore_label
    is_thing_class = metadata.is_thing
    present = set(torch.unique(panoptic).tolist())
    seg_ids: list[int] = []
    seg_sem: list[int] = []
    seg_inst: list[int] = []
    seg_thing: list[bool] = []
    seg_crowd: list[bool] = []
    next_instance = 1
    for s in segments_info:
        sid = int(s["id"])
        if sid == 0 or sid not in present or sid in seg_ids:
            continue
        tid = metadata.train_id(s["category_id"])
        thing = tid != ignore_label and bool(is_thing_class[tid])
        crowd = thing and bool(s.get("iscrowd", 0))
        inst = 0
        if thing and not crowd:
            inst = next_instance
            next_instance += 1
        seg_ids.append(sid)
        seg_sem.append(tid)
        seg_inst.append(inst)
        seg_thing.append(thing)
        seg_crowd.append(crowd)

    semantic = torch.full_like(panoptic, ignore_label)
    instance = torch.zeros_like(panoptic)
    thing = torch.zeros(panoptic.shape, dtype=torch.bool)
    crowd = torch.zeros(panoptic.shape, dtype=torch.bool)
    if seg_ids:
        # One sort + searchsorted maps every pixel to its segment row without a per-segment loop.
        ids = torch.tensor(seg_ids, dtype=torch.int64)
        order = torch.argsort(ids)
        sorted_ids = ids[order]
        pos = torch.searchsorted(sorted_ids, panoptic.reshape(-1)).clamp_(max=len(seg_ids) - 1)
        hit = sorted_ids[pos] == panoptic.reshape(-1)
        row = order[pos]
        table = lambda values, dtype: torch.tensor(values, dtype=dtype)[row]  # noqa: E731
        semantic = torch.where(hit, table(seg_sem, torch.int64), semantic.reshape(-1)).reshape(panoptic.shape)
        instance = torch.where(hit, table(seg_inst, torch.int64), instance.reshape(-1)).reshape(panoptic.shape)
        thing = (hit & table(seg_thing, torch.bool)).reshape(panoptic.shape)
        crowd = (hit & table(seg_crowd, torch.bool)).reshape(panoptic.shape)
    ignore = semantic == ignore_label
    return PanopticTargets(semantic=semantic, instance=instance, thing=thing, ignore=ignore, crowd=crowd)


def segments_in_map(panoptic: torch.Tensor, segments_info: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The segments still present in a (cropped / resized) id map, with area and bbox recomputed.

    Args:
        panoptic: ``[H, W]`` int64 segment ids.
        segments_info: the record's segments.

    Returns:
        copies of the present segments, ``area`` and ``bbox`` (``[x, y, w, h]``) of the map.
    """
    if panoptic.dim() != 2:
        raise ValueError(f"segments_in_map: panoptic must be [H, W], got shape {tuple(panoptic.shape)}")
    ids, counts = torch.unique(panoptic, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist()))
    out = []
    for s in segments_info:
        sid = int(s["id"])
        if sid == 0 or sid not in area:
            continue
        mask = panoptic == sid
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        seg = dict(s)
        seg["area"] = int(area[sid])
        seg["bbox"] = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        out.append(seg)
    return out
