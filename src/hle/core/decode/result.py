"""Result stage of the decoder: labels -> segment statistics -> id map and ``segments_info``.

This module owns the step from the decode-grid labels (stuff classes, void, instances) to a
COCO-style :class:`~hle.core.types.PanopticResult`: exact output-resolution areas and boxes
from per-row and per-column counts (:func:`segment_stats`), the segment scores, the
minimum areas, the final ids (instances first by descending seed score, then stuff by
class) and the expansion of the id map to the output size.
"""
from __future__ import annotations

import torch

from hle.core.decode.params import DecoderParams
from hle.core.decode.resolution import DecodeGrid, upsample_ids
from hle.core.decode.seeds import Seeds
from hle.core.decode.semantic import ClassOrder, SemanticAssignment
from hle.core.types import PanopticResult

#: dtype of the decoded id map (as detectron2's ``panoptic_seg``): half the memory
#: and write time of int64, and ample for ids ``< 2^31``.
PANOPTIC_DTYPE = torch.int32


def segment_stats(
    label: torch.Tensor, num_labels: int, factor: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output-resolution area and bbox of every label of a decode-grid label map.

    Area and bbox are those of the map nearest-upsampled by ``factor`` and cropped to
    ``height x width``, computed exactly at decode resolution from per-row and
    per-column counts: every decode pixel covers ``factor^2`` output pixels, except
    in the last (cropped) block row and column.

    Args:
        label: ``[h, w]`` int64 in ``0..num_labels-1``, contiguous; used as scratch
            space and restored before returning.
        num_labels: L.
        factor: output pixels per decode pixel along each axis.
        height, width: output size, ``ceil(height / factor) == h`` (same for w).

    Returns:
        ``(area [L] int64, bbox [L, 4] int64 as x, y, w, h)``; absent labels have area 0.
    """
    h, w = label.shape
    device = label.device
    # Key = position * L + label, not label * size + position: consecutive pixels then
    # hit neighbouring bins, whereas power-of-two strides between bins thrash the cache.
    # The keys are built in place in ``label`` and undone afterwards: cheaper than a
    # fresh key buffer, whose page faults cost more than the two extra passes.
    row_base = torch.arange(h, device=device)[:, None] * num_labels
    col_base = torch.arange(w, device=device)[None, :] * num_labels
    row_hits = torch.bincount(label.add_(row_base).reshape(-1), minlength=h * num_labels).view(h, num_labels)
    label.sub_(row_base)
    col_hits = torch.bincount(label.add_(col_base).reshape(-1), minlength=w * num_labels).view(w, num_labels)
    label.sub_(col_base)
    area = row_hits.sum(dim=0)
    if factor > 1:
        # A decode pixel covers f x f output pixels, except in the last block row
        # (a x f) and column (f x b) and the corner (a x b).
        a, b = height - (h - 1) * factor, width - (w - 1) * factor
        last_row, last_col = row_hits[h - 1], col_hits[w - 1]
        corner = torch.zeros(num_labels, dtype=area.dtype, device=device)
        corner[label[h - 1, w - 1]] = 1
        area = (
            factor * factor * (area - last_row - last_col + corner)
            + a * factor * (last_row - corner)
            + factor * b * (last_col - corner)
            + a * b * corner
        )
    row_index = torch.arange(h, device=device)[:, None]
    col_index = torch.arange(w, device=device)[:, None]
    top = torch.where(row_hits > 0, row_index, h).amin(dim=0) * factor
    left = torch.where(col_hits > 0, col_index, w).amin(dim=0) * factor
    bottom = ((torch.where(row_hits > 0, row_index, -1).amax(dim=0) + 1) * factor).clamp_(max=height)
    right = ((torch.where(col_hits > 0, col_index, -1).amax(dim=0) + 1) * factor).clamp_(max=width)
    return area, torch.stack([left, top, right - left, bottom - top], dim=1)


def _phi_sums(
    instance: torch.Tensor, log_phi: torch.Tensor, candidates: torch.Tensor, num_seeds: int, grid: DecodeGrid
) -> torch.Tensor:
    """``[K]`` float64 sum of Phi over each instance's output pixels (decode pixels weighted
    by the output pixels they cover), so that dividing by the area gives the mean."""
    phi = log_phi.exp().double()
    pixel_weight = grid.pixel_weight(log_phi.device)
    if pixel_weight is not None:
        phi *= pixel_weight[candidates]
    if grid.weight_scale != 1.0:
        phi *= grid.weight_scale
    return torch.bincount(instance + 1, weights=phi, minlength=num_seeds + 1)[1:]


def panoptic_result(
    semantic: SemanticAssignment,
    candidates: torch.Tensor,
    instance: torch.Tensor,
    log_phi: torch.Tensor,
    seeds: Seeds,
    order: ClassOrder,
    grid: DecodeGrid,
    params: DecoderParams,
) -> PanopticResult:
    """Assemble the id map and ``segments_info`` from the stages' outputs (Sec. 3.5, steps 5-6).

    Decode labels: ``0..C-1`` stuff-first classes, ``C`` void, ``C+1+k`` instance ``k``.
    Every thing pixel takes its instance's label (void when unclaimed); segments below
    ``min_thing_area`` / ``min_stuff_area`` output pixels become void.

    Args:
        semantic: the semantic stage's output; its ``label`` is relabelled in place.
        candidates: ``[n]`` flat indices of the thing pixels.
        instance, log_phi: ``[n]`` from :func:`hle.core.decode.instances.assign_instances`;
            ``instance`` is overwritten with the decode labels.
        seeds: the K kept seeds, by descending score.
        order: the stuff-first class order of ``semantic``.
        grid: the decode grid.
        params: the decoder's thresholds.

    Returns:
        :class:`PanopticResult` with ids ``1..S`` (instances first by descending seed
        score, then stuff by class; 0 = void) and ``segments_info`` dicts ``id,
        category_id, isthing, area, bbox, score`` with original class ids.
    """
    void, num_seeds = semantic.psi_sum.numel() - 1, seeds.index.numel()
    seed_score = seeds.score
    if num_seeds > 0 and params.instance_score != "seed":
        phi_sum = _phi_sums(instance, log_phi, candidates, num_seeds, grid)
    label = semantic.label
    seed_class = label[seeds.index]  # stuff-first class of each seed (a thing pixel)
    label[candidates] = instance.add_(void + 1)  # instance k -> C+1+k, unclaimed (-1) -> void
    num_labels = void + 1 + num_seeds
    h, w = grid.size
    area, bbox = segment_stats(label.view(h, w), num_labels, grid.block, *grid.output_size)
    labels = torch.arange(num_labels, device=label.device)
    is_instance = labels > void
    keep = (area > 0) & (
        ((labels < order.num_stuff) & (area >= params.min_stuff_area)) | (is_instance & (area >= params.min_thing_area))
    )
    ids = torch.cat([labels[void + 1 :], labels[: order.num_stuff]])  # instances, then stuff
    ids = ids[keep[ids]]
    lut = torch.zeros(num_labels, dtype=PANOPTIC_DTYPE, device=label.device)
    lut[ids] = torch.arange(1, ids.numel() + 1, dtype=PANOPTIC_DTYPE, device=label.device)
    # index_select on a flat index: several times faster than ``lut[label]``.
    panoptic = upsample_ids(torch.index_select(lut, 0, label).view(h, w), grid.block, *grid.output_size)

    dtype = seed_score.dtype
    stuff_score = semantic.psi_sum[:void] * grid.weight_scale / area[:void].clamp(min=1)
    if num_seeds > 0 and params.instance_score != "seed":
        mean_phi = (phi_sum / area[void + 1 :].clamp(min=1)).to(dtype)
        seed_score = mean_phi if params.instance_score == "mean_phi" else seed_score * mean_phi
    category = order.perm[torch.cat([labels[:void], labels.new_zeros(1), seed_class])]
    score = torch.cat([stuff_score.to(dtype), seed_score.new_zeros(1), seed_score])
    rows = zip(*(t[ids].tolist() for t in (category, is_instance, area, bbox, score)))
    segments_info = [
        {"id": i, "category_id": c, "isthing": t, "area": a, "bbox": b, "score": s}
        for i, (c, t, a, b, s) in enumerate(rows, start=1)
    ]
    return PanopticResult(panoptic=panoptic, segments_info=segments_info)
