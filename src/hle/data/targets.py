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


def segment_lookup(panoptic: torch.Tensor, segment_ids: Sequence[int]) -> torch.Tensor:
    """Position in ``segment_ids`` of every pixel's segment, ``-1`` where it is not listed.

    One sort of the (few) ids and one ``searchsorted`` over the pixels, no per-segment loop.

    Args:
        panoptic: ``[H, W]`` int64 segment ids.
        segment_ids: ``[S]`` distinct ids.

    Returns:
        ``[H, W]`` int64 in ``-1 .. S-1``.
    """
    flat = panoptic.reshape(-1)
    if len(segment_ids) == 0:
        return torch.full_like(panoptic, -1)
    ids = torch.as_tensor(list(segment_ids), dtype=torch.int64)
    order = torch.argsort(ids)
    sorted_ids = ids[order]
    pos = torch.searchsorted(sorted_ids, flat).clamp_(max=len(ids) - 1)
    hit = sorted_ids[pos] == flat
    return torch.where(hit, order[pos], torch.full_like(pos, -1)).reshape(panoptic.shape)


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
    is_thing_class = metadata.is_thing.tolist()
    segments: dict[int, dict[str, Any]] = {}
    for s in segments_info:  # first listing of an id wins; id 0 is void by definition
        if int(s["id"]) != 0:
            segments.setdefault(int(s["id"]), s)
    seg_ids = list(segments)
    row = segment_lookup(panoptic, seg_ids)
    present = torch.bincount(row.reshape(-1) + 1, minlength=len(seg_ids) + 1)[1:] > 0
    # Per segment (row of the tables): class, instance number, thing and crowd flags; the
    # last row (index -1 of the lookup) describes void.
    sem, inst, thing, crowd = [], [], [], []
    next_instance = 1
    for sid, is_present in zip(seg_ids, present.tolist()):
        s = segments[sid]
        tid = metadata.train_id(s["category_id"])
        th = tid != ignore_label and bool(is_thing_class[tid])
        cr = th and bool(s.get("iscrowd", 0))
        number = 0
        if th and not cr and is_present:  # numbered over the segments left after cropping
            number = next_instance
            next_instance += 1
        sem.append(tid)
        inst.append(number)
        thing.append(th)
        crowd.append(cr)
    sem.append(ignore_label)
    inst.append(0)
    thing.append(False)
    crowd.append(False)
    return PanopticTargets(
        semantic=torch.tensor(sem, dtype=torch.int64)[row],
        instance=torch.tensor(inst, dtype=torch.int64)[row],
        thing=torch.tensor(thing, dtype=torch.bool)[row],
        ignore=torch.tensor([t == ignore_label for t in sem], dtype=torch.bool)[row],
        crowd=torch.tensor(crowd, dtype=torch.bool)[row],
    )


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
