"""Panoptic decoding of HLE network outputs (Sec. 3.5 and Supplementary C).

This module owns the step from raw per-pixel outputs (embedding, instance sigma,
spatial sigma, seed) to a COCO-style :class:`~hle.core.types.PanopticResult`:
semantic assignment by argmax of psi (Eq. 9), thing seeds by local-maximum NMS on
the seed map, greedy merging of seeds with the kernel Phi of Sec. 3.5, instance
masks by thresholding Phi, stuff thresholding on psi, minimum segment areas, and
the optional decoding on a downsampled map (Supplementary C). Everything is pure
tensor code that runs on the device of its inputs; per-pixel work is done in
pixel-major chunks (``[n, D] @ [D, C]``) and per-instance work is one matmul over
the candidate (thing) pixels only, so memory is ``O(K x candidates)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hle.core.kernels import (
    DEFAULT_COORD_SCALE,
    instance_kernel,
    normalize_rows,
    pixel_coordinates,
    split_views,
)
from hle.core.types import HLEOutputs, PanopticResult

#: Pixels per chunk of the pixel-major semantic and instance matmuls: large enough
#: to amortise the BLAS call, small enough that a ``[chunk, C]`` block stays in cache.
DEFAULT_CHUNK = 65536

DOWNSAMPLE_MODES = ("sample", "avg")


@dataclass(frozen=True)
class DecoderParams:
    """Thresholds of :func:`decode_panoptic` with their defaults, as one value.

    A frozen dataclass so a threshold search (e.g. Optuna on cached network
    outputs) can build, hash, log and pass a whole setting around:
    ``decode_panoptic(..., **params.as_kwargs())``.

    Attributes:
        seed_threshold: a local maximum of the seed map becomes a candidate seed
            when its score is above this. Seeds regress Phi (Eq. 13), whose
            training decision boundary is 0.5.
        merge_threshold: a seed is merged into (dropped in favour of) a stronger
            kept seed when Phi(stronger, weaker) is above this.
        mask_threshold: a thing pixel joins an instance when Phi(seed, pixel) is
            above this (0.5 is the boundary the Lovász hinge of Eq. 11 trains).
        stuff_threshold: a stuff pixel whose largest psi (Eq. 9) is below this
            becomes void.
        min_thing_area: instances smaller than this (in output pixels) become void.
        min_stuff_area: stuff segments smaller than this (in output pixels) become void.
        nms_kernel: odd side of the square neighbourhood for the seed NMS (3 = the
            paper's 3x3 max pooling).
        max_instances: at most this many candidate seeds (the highest scores)
            enter merging, hence at most this many instances per image.
        downsample: decode on maps ``downsample`` times smaller (Supplementary C).
        downsample_mode: ``"sample"`` (take the centre pixel of each block; no
            pass over the full map) or ``"avg"`` (average-pool, re-normalise).
    """

    seed_threshold: float = 0.5
    merge_threshold: float = 0.5
    mask_threshold: float = 0.5
    stuff_threshold: float = 0.3
    min_thing_area: int = 16
    min_stuff_area: int = 512
    nms_kernel: int = 3
    max_instances: int = 512
    downsample: int = 1
    downsample_mode: str = "sample"

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`decode_panoptic`."""
        return dataclasses.asdict(self)


_DEFAULTS = DecoderParams()


# --------------------------------------------------------------------------- semantics


def semantic_linear_form(
    class_means: torch.Tensor, class_sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias with ``e @ weight + bias`` equal to the logits of Eq. (9).

    ``log p_c(e) = -(1 - e^T mu_c / |mu_c|) / (2 sigma_c^2)`` is linear in a unit
    embedding ``e``: ``w_c = mu_c / (|mu_c| 2 sigma_c^2)``, ``b_c = -1 / (2 sigma_c^2)``.
    So the argmax of psi is one pixel-major matmul, and psi itself its softmax.

    Args:
        class_means: ``[C, D]`` class means (normalised here).
        class_sigma: ``[C]`` positive class sigmas.

    Returns:
        ``(weight [D, C], bias [C])``.
    """
    inv = 1.0 / (2.0 * class_sigma * class_sigma)
    weight = (normalize_rows(class_means) * inv[:, None]).transpose(0, 1).contiguous()
    return weight, -inv


def _chunked_argmax_softmax(
    logits_of: Callable[[int, int], torch.Tensor],
    num_pixels: int,
    like: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax class and max softmax probability of ``[N, C]`` logits made in chunks.

    ``max_c softmax(l)_c = 1 / sum_c exp(l_c - max l)``: computed in place on the
    chunk so nothing ``[N, C]`` is ever allocated.
    """
    labels = torch.empty(num_pixels, dtype=torch.long, device=like.device)
    psi = torch.empty(num_pixels, dtype=like.dtype, device=like.device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        block = logits_of(start, stop)
        top, arg = block.max(dim=1)
        labels[start:stop] = arg
        psi[start:stop] = block.sub_(top[:, None]).exp_().sum(dim=1).reciprocal_()
    return labels, psi


def semantic_assignment(
    embedding: torch.Tensor,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    *,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic class ``argmax_k psi_k(e_i)`` and its probability ``max_k psi_k`` (Eq. 9).

    Args:
        embedding: ``[D, H, W]`` unit embeddings.
        class_means: ``[C, D]`` class means.
        class_sigma: ``[C]`` class sigmas.
        chunk: pixels per matmul block.

    Returns:
        ``(labels [H, W] int64 train ids, psi_max [H, W])``.
    """
    d, h, w = embedding.shape
    weight, bias = semantic_linear_form(class_means.to(embedding.dtype), class_sigma.to(embedding.dtype))
    flat = embedding.reshape(d, h * w)

    def logits_of(start: int, stop: int) -> torch.Tensor:
        # flat[:, a:b].T is a transposed view: BLAS reads it without a copy.
        return torch.addmm(bias, flat[:, start:stop].transpose(0, 1), weight)

    labels, psi = _chunked_argmax_softmax(logits_of, h * w, embedding, chunk)
    return labels.view(h, w), psi.view(h, w)


def _assignment_from_logits(logits: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and max softmax of separate-branch logits ``[C, H, W]`` (ablation)."""
    c, h, w = logits.shape
    flat = logits.reshape(c, h * w)
    labels, psi = _chunked_argmax_softmax(
        lambda a, b: flat[:, a:b].transpose(0, 1).contiguous(), h * w, logits, chunk
    )
    return labels.view(h, w), psi.view(h, w)


# --------------------------------------------------------------------------- seeds


def find_seeds(
    seed: torch.Tensor,
    allowed: torch.Tensor,
    *,
    threshold: float,
    kernel: int = 3,
    max_seeds: int = _DEFAULTS.max_instances,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate seeds: local maxima of the seed map above ``threshold`` (Sec. 3.5).

    Equivalent to ``kernel x kernel`` max-pool NMS on ``seed * allowed`` followed by
    thresholding, but only the pixels above the threshold are inspected (their
    neighbours gathered), which is much cheaper than pooling the whole map. Ties on
    a plateau are broken by raster index, so a flat peak gives few seeds, not all
    of its pixels.

    Args:
        seed: ``[H, W]`` seed scores.
        allowed: ``[H, W]`` bool, pixels that may hold a seed (thing pixels).
        threshold: minimum seed score (strict).
        kernel: odd neighbourhood size.
        max_seeds: keep at most this many, the highest scores.

    Returns:
        ``(index [K] flat pixel indices, score [K])`` sorted by descending score,
        ties by ascending index.
    """
    h, w = seed.shape
    masked = torch.where(allowed, seed, torch.zeros((), dtype=seed.dtype, device=seed.device))
    flat = masked.reshape(-1)
    index = torch.nonzero(flat > threshold).squeeze(1)
    score = flat[index]
    rows, cols = index // w, index % w
    keep = torch.ones_like(index, dtype=torch.bool)
    radius = kernel // 2
    # One gather per neighbour offset (8 for 3x3): a loop over offsets, not pixels.
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            nr, nc = rows + dy, cols + dx
            inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
            neighbour = nr.clamp(0, h - 1) * w + nc.clamp(0, w - 1)
            value = flat[neighbour]
            wins = (score > value) | ((score == value) & (index < neighbour))
            keep &= wins | ~inside
    index, score = index[keep], score[keep]
    order = torch.sort(score, descending=True, stable=True).indices[:max_seeds]
    return index[order], score[order]


def merge_seeds(
    embedding: torch.Tensor,
    coords: torch.Tensor,
    sigma: torch.Tensor,
    spatial_sigma: torch.Tensor,
    *,
    threshold: float,
) -> torch.Tensor:
    """Greedy merge of seeds that Phi says are the same instance (Sec. 3.5).

    Seeds must be sorted by descending score. Seed ``j`` is dropped when a *kept*
    stronger seed ``i < j`` has ``Phi(e_i, e_j) > threshold``, with
    ``Phi(e_i, e_j) = exp(-d_cos(e_i, e_j) / (2 sigma_i^2)
    - |rho_i - rho_j|^2 / (2 sigma_{i,spatial}^2))``. The sequential greedy rule is
    computed as the fixed point of ``keep_j = not any_i (keep_i and same_ij)`` over
    the strictly upper-triangular ``[K, K]`` relation (Cluster-NMS): entry ``t`` is
    final after ``t`` iterations, and in practice a handful suffice.

    Args:
        embedding: ``[K, D]`` seed embeddings.
        coords: ``[K, 2]`` seed coordinates.
        sigma: ``[K]`` seed instance sigmas.
        spatial_sigma: ``[K]`` seed spatial sigmas.
        threshold: merge when Phi is above this.

    Returns:
        ``[K]`` bool, the seeds that survive.
    """
    k = embedding.shape[0]
    if k == 0:
        return torch.ones(0, dtype=torch.bool, device=embedding.device)
    phi = instance_kernel(embedding, coords, embedding, sigma, coords, spatial_sigma)
    same = (phi > threshold).triu(diagonal=1)
    keep = torch.ones(k, dtype=torch.bool, device=embedding.device)
    for _ in range(k):
        new_keep = ~(same & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


# --------------------------------------------------------------------------- instances


def assign_instances(
    embedding: torch.Tensor,
    coords: torch.Tensor,
    seed_embedding: torch.Tensor,
    seed_coords: torch.Tensor,
    seed_sigma: torch.Tensor,
    seed_spatial_sigma: torch.Tensor,
    *,
    threshold: float,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance of each candidate pixel: the seed of highest Phi, if above threshold.

    ``log Phi_k(x) = e.m_k/(2s_k^2) - 1/(2s_k^2) - |rho - rho_k|^2/(2t_k^2)`` is linear
    in the features ``[e, rho, |rho|^2, 1]``, so all K seeds are scored against a
    chunk of pixels with one ``[n, D+4] @ [D+4, K]`` matmul; memory is
    ``O(chunk x K)``. Coordinates are shifted to the seeds' centroid first so the
    cancelling quadratic terms stay small in float32.

    Args:
        embedding: ``[Nc, D]`` unit embeddings of the candidate pixels.
        coords: ``[Nc, 2]`` their coordinates.
        seed_embedding: ``[K, D]`` seed embeddings (normalised here).
        seed_coords: ``[K, 2]``; seed_sigma, seed_spatial_sigma: ``[K]``.
        threshold: a pixel joins an instance when ``Phi > threshold``.
        chunk: pixels per matmul block.

    Returns:
        ``(instance [Nc] int64 in -1..K-1 with -1 = none, phi [Nc] best Phi)``.
    """
    n, d = embedding.shape
    k = seed_embedding.shape[0]
    dtype, device = embedding.dtype, embedding.device
    if k == 0 or n == 0:
        return torch.full((n,), -1, dtype=torch.long, device=device), torch.zeros(n, dtype=dtype, device=device)
    origin = seed_coords.mean(dim=0)
    c_rho = seed_coords - origin
    a = 1.0 / (2.0 * seed_sigma * seed_sigma)
    b = 1.0 / (2.0 * seed_spatial_sigma * seed_spatial_sigma)
    weight = torch.cat(
        [
            normalize_rows(seed_embedding) * a[:, None],
            2.0 * c_rho * b[:, None],
            -b[:, None],
            (-a - b * c_rho.pow(2).sum(dim=1))[:, None],
        ],
        dim=1,
    ).transpose(0, 1).contiguous()  # [D+4, K]
    instance = torch.empty(n, dtype=torch.long, device=device)
    best = torch.empty(n, dtype=dtype, device=device)
    features = torch.empty(min(chunk, n), d + 4, dtype=dtype, device=device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        feat = features[: stop - start]
        rho = coords[start:stop] - origin
        feat[:, :d] = embedding[start:stop]
        feat[:, d : d + 2] = rho
        feat[:, d + 2] = rho.pow(2).sum(dim=1)
        feat[:, d + 3] = 1.0
        log_phi, arg = (feat @ weight).max(dim=1)
        best[start:stop] = log_phi
        instance[start:stop] = arg
    best = best.exp_()
    instance = torch.where(best > threshold, instance, torch.full_like(instance, -1))
    return instance, best


# --------------------------------------------------------------------------- resolution


def _downsample_maps(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """``[C, H, W] -> [C, ceil(H/f), ceil(W/f)]`` by block centre sampling or averaging."""
    if factor == 1:
        return x
    _, h, w = x.shape
    if mode == "avg":
        # ceil_mode: partial border blocks average over their in-image pixels only.
        return F.avg_pool2d(x[None], factor, factor, ceil_mode=True)[0]
    rows = (torch.arange(-(-h // factor), device=x.device) * factor + factor // 2).clamp(max=h - 1)
    cols = (torch.arange(-(-w // factor), device=x.device) * factor + factor // 2).clamp(max=w - 1)
    return x.index_select(1, rows).index_select(2, cols)


def _block_sizes(size: int, factor: int, device: torch.device) -> torch.Tensor:
    """How many full-resolution pixels each of the ``ceil(size/f)`` blocks covers."""
    starts = torch.arange(-(-size // factor), device=device) * factor
    return (starts + factor).clamp(max=size) - starts


def _upsample_ids(ids: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    """Nearest upsampling of an ``[h, w]`` id map by an integer factor, cropped to ``[H, W]``."""
    if factor == 1:
        return ids
    h, w = ids.shape
    big = ids[:, None, :, None].expand(h, factor, w, factor).reshape(h * factor, w * factor)
    return big[:height, :width].contiguous()


def _segment_stats(
    label: torch.Tensor, num_labels: int, factor: int, height: int, width: int, psi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-resolution area, bbox and psi sum of every label of a (decode-resolution) map.

    Area and bbox are those of the nearest-upsampled map cropped to ``height x
    width``, computed exactly at decode resolution by weighting each decode pixel
    with the number of output pixels its block covers.

    Args:
        label: ``[h, w]`` int64 in ``0..num_labels-1``.
        psi: ``[h, w]`` per-pixel value summed per label (area-weighted).

    Returns:
        ``(area [L] int64, bbox [L, 4] int64 as x, y, w, h, psi_sum [L] float64)``.
    """
    h, w = label.shape
    device = label.device
    # Key = position * L + label (not label * size + position): consecutive pixels
    # then hit neighbouring bins, whereas power-of-two strides between bins thrash
    # the cache (measured 20x slower).
    row_hits = torch.bincount(
        (torch.arange(h, device=device)[:, None] * num_labels + label).reshape(-1), minlength=h * num_labels
    ).view(h, num_labels)
    col_hits = torch.bincount(
        (torch.arange(w, device=device)[None, :] * num_labels + label).reshape(-1), minlength=w * num_labels
    ).view(w, num_labels)
    flat = label.reshape(-1)
    if factor == 1:
        area = row_hits.sum(dim=0)
        psi_sum = torch.bincount(flat, weights=psi.reshape(-1).double(), minlength=num_labels)
    else:
        block = _block_sizes(height, factor, device)[:, None] * _block_sizes(width, factor, device)[None, :]
        weights = block.reshape(-1).double()
        area = torch.bincount(flat, weights=weights, minlength=num_labels).round().long()
        psi_sum = torch.bincount(flat, weights=weights * psi.reshape(-1).double(), minlength=num_labels)
    rows_present, cols_present = row_hits > 0, col_hits > 0
    # argmax returns the first maximal index: first / last row and column present.
    y0 = rows_present.byte().argmax(dim=0)
    y1 = h - 1 - rows_present.flip(0).byte().argmax(dim=0)
    x0 = cols_present.byte().argmax(dim=0)
    x1 = w - 1 - cols_present.flip(0).byte().argmax(dim=0)
    top, left = y0 * factor, x0 * factor
    bottom = ((y1 + 1) * factor).clamp(max=height)
    right = ((x1 + 1) * factor).clamp(max=width)
    bbox = torch.stack([left, top, right - left, bottom - top], dim=1)
    return area, bbox, psi_sum


# --------------------------------------------------------------------------- decoder


def _check_inputs(
    embedding: torch.Tensor,
    sigma: torch.Tensor,
    spatial_sigma: torch.Tensor,
    seed: torch.Tensor,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    semantic_logits: torch.Tensor | None,
    split_embedding: bool,
    params: DecoderParams,
) -> None:
    if embedding.dim() != 3:
        raise ValueError(f"decode_panoptic: embedding must be [D, H, W], got shape {tuple(embedding.shape)}")
    d, h, w = embedding.shape
    for name, t in (("sigma", sigma), ("spatial_sigma", spatial_sigma), ("seed", seed)):
        if tuple(t.shape) != (1, h, w):
            raise ValueError(f"decode_panoptic: {name} must be [1, {h}, {w}] like the embedding, got {tuple(t.shape)}")
    if class_means.dim() != 2 or class_means.shape[1] != d:
        raise ValueError(f"decode_panoptic: class_means must be [C, {d}], got {tuple(class_means.shape)}")
    c = class_means.shape[0]
    if tuple(class_sigma.shape) != (c,):
        raise ValueError(f"decode_panoptic: class_sigma must be [{c}], got {tuple(class_sigma.shape)}")
    if tuple(is_thing.shape) != (c,) or is_thing.dtype != torch.bool:
        raise ValueError(
            f"decode_panoptic: is_thing must be a [{c}] bool tensor, got {tuple(is_thing.shape)} {is_thing.dtype}"
        )
    if semantic_logits is not None and tuple(semantic_logits.shape) != (c, h, w):
        raise ValueError(
            f"decode_panoptic: semantic_logits must be [{c}, {h}, {w}], got {tuple(semantic_logits.shape)}"
        )
    if split_embedding and (d < 2 or d % 2):
        raise ValueError(f"decode_panoptic: split_embedding needs an even D >= 2, got D={d}")
    devices = {t.device for t in (embedding, sigma, spatial_sigma, seed, class_means, class_sigma, is_thing)}
    if semantic_logits is not None:
        devices.add(semantic_logits.device)
    if len(devices) != 1:
        raise ValueError(f"decode_panoptic: all inputs must be on one device, got {sorted(map(str, devices))}")
    if not isinstance(params.downsample, int) or params.downsample < 1:
        raise ValueError(f"decode_panoptic: downsample must be an int >= 1, got {params.downsample!r}")
    if params.downsample_mode not in DOWNSAMPLE_MODES:
        raise ValueError(
            f"decode_panoptic: downsample_mode must be one of {DOWNSAMPLE_MODES}, got {params.downsample_mode!r}"
        )
    if params.nms_kernel < 1 or params.nms_kernel % 2 == 0:
        raise ValueError(f"decode_panoptic: nms_kernel must be odd and >= 1, got {params.nms_kernel}")
    if params.max_instances < 0:
        raise ValueError(f"decode_panoptic: max_instances must be >= 0, got {params.max_instances}")


@torch.no_grad()
def decode_panoptic(
    embedding: torch.Tensor,
    sigma: torch.Tensor,
    spatial_sigma: torch.Tensor,
    seed: torch.Tensor,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    *,
    semantic_logits: torch.Tensor | None = None,
    split_embedding: bool = False,
    seed_threshold: float = _DEFAULTS.seed_threshold,
    merge_threshold: float = _DEFAULTS.merge_threshold,
    mask_threshold: float = _DEFAULTS.mask_threshold,
    stuff_threshold: float = _DEFAULTS.stuff_threshold,
    min_thing_area: int = _DEFAULTS.min_thing_area,
    min_stuff_area: int = _DEFAULTS.min_stuff_area,
    nms_kernel: int = _DEFAULTS.nms_kernel,
    max_instances: int = _DEFAULTS.max_instances,
    downsample: int = _DEFAULTS.downsample,
    downsample_mode: str = _DEFAULTS.downsample_mode,
    coord_scale: float = DEFAULT_COORD_SCALE,
    stride: float = 1.0,
    chunk: int = DEFAULT_CHUNK,
) -> PanopticResult:
    """Decode one image's HLE outputs into a panoptic segmentation (Sec. 3.5).

    Steps: (1) semantic class per pixel by argmax of psi (Eq. 9; or of
    ``semantic_logits`` for the separate-branch ablation); (2) candidate seeds =
    local maxima (``nms_kernel``) of the seed map over thing pixels with score above
    ``seed_threshold``; (3) greedy merge, in descending score, of seeds whose kernel
    ``Phi(e_i, e_j)`` exceeds ``merge_threshold``; (4) each thing pixel joins the
    seed of highest ``Phi(seed, pixel)`` if above ``mask_threshold``, else void; the
    instance takes the class of its seed pixel; (5) one segment per stuff class,
    pixels with ``max psi < stuff_threshold`` void; (6) segments below
    ``min_thing_area`` / ``min_stuff_area`` become void. With ``downsample=f`` all
    maps are first reduced by ``f`` (Supplementary C), coordinates use stride
    ``stride * f`` so the spatial sigma keeps its meaning, and the id map is
    upsampled back with nearest; areas and boxes are those at full resolution.

    Args:
        embedding: ``[D, H, W]`` unit embeddings.
        sigma: ``[1, H, W]`` positive instance sigma.
        spatial_sigma: ``[1, H, W]`` positive spatial sigma.
        seed: ``[1, H, W]`` seed scores in (0, 1).
        class_means: ``[C, D]`` persistent class means (with ``split_embedding``
            only the first ``D/2`` columns are used).
        class_sigma: ``[C]`` class sigmas.
        is_thing: ``[C]`` bool.
        semantic_logits: optional ``[C, H, W]`` separate-branch logits; their
            argmax/softmax replace psi.
        split_embedding: decode the split-space ablation (:func:`split_views`):
            semantics from the first half of the channels, instances from the second.
        seed_threshold, merge_threshold, mask_threshold, stuff_threshold,
            min_thing_area, min_stuff_area, nms_kernel, max_instances, downsample,
            downsample_mode: see :class:`DecoderParams` (defaults there).
        coord_scale: coordinate units per input pixel (:data:`DEFAULT_COORD_SCALE`).
        stride: input pixels per map pixel (1 for maps at image resolution).
        chunk: pixels per matmul block (memory / speed trade-off only).

    Returns:
        :class:`PanopticResult` with ``panoptic [H, W]`` int64 (ids ``1..S``,
        instances first by descending score, then stuff by class; 0 = void) and
        ``segments_info`` dicts ``id, category_id, isthing, area, bbox, score``;
        instance score = seed score, stuff score = mean psi over the segment.
    """
    params = DecoderParams(
        seed_threshold=seed_threshold,
        merge_threshold=merge_threshold,
        mask_threshold=mask_threshold,
        stuff_threshold=stuff_threshold,
        min_thing_area=min_thing_area,
        min_stuff_area=min_stuff_area,
        nms_kernel=nms_kernel,
        max_instances=max_instances,
        downsample=downsample,
        downsample_mode=downsample_mode,
    )
    _check_inputs(
        embedding, sigma, spatial_sigma, seed, class_means, class_sigma, is_thing,
        semantic_logits, split_embedding, params,
    )
    d, height, width = embedding.shape
    num_classes = class_means.shape[0]
    device, dtype = embedding.device, embedding.dtype
    f = downsample

    # -- (0) decode resolution (Supplementary C)
    emb = _downsample_maps(embedding, f, downsample_mode)
    if f > 1 and downsample_mode == "avg":
        emb = F.normalize(emb, dim=0)
    maps = _downsample_maps(torch.cat([sigma, spatial_sigma, seed], dim=0).to(dtype), f, downsample_mode)
    sig_map, ssig_map, seed_map = maps[0], maps[1], maps[2]
    _, h, w = emb.shape
    sem_view, ins_view = split_views(emb, split_embedding, dim=0)

    # -- (1) semantics: argmax psi (Eq. 9), pixel-major chunks
    if semantic_logits is not None:
        labels, psi = _assignment_from_logits(_downsample_maps(semantic_logits.to(dtype), f, downsample_mode), chunk)
    else:
        means = class_means[:, : sem_view.shape[0]]
        labels, psi = semantic_assignment(sem_view, means, class_sigma, chunk=chunk)
    thing_pixel = is_thing[labels]  # [h, w]

    # -- (2)+(3) seeds on thing pixels, merged greedily with Phi
    row_coord = pixel_coordinates(h, 1, stride=stride * f, coord_scale=coord_scale, device=device, dtype=dtype)[:, 0]
    col_coord = pixel_coordinates(1, w, stride=stride * f, coord_scale=coord_scale, device=device, dtype=dtype)[:, 1]

    def coords_of(index: torch.Tensor) -> torch.Tensor:
        return torch.stack([row_coord[index // w], col_coord[index % w]], dim=1)

    ins_flat = ins_view.reshape(ins_view.shape[0], h * w)
    seed_index, seed_score = find_seeds(
        seed_map, thing_pixel, threshold=seed_threshold, kernel=nms_kernel, max_seeds=max_instances
    )
    seed_emb = ins_flat[:, seed_index].transpose(0, 1)
    seed_xy = coords_of(seed_index)
    seed_sig = sig_map.reshape(-1)[seed_index]
    seed_ssig = ssig_map.reshape(-1)[seed_index]
    kept = merge_seeds(seed_emb, seed_xy, seed_sig, seed_ssig, threshold=merge_threshold)
    seed_index, seed_score = seed_index[kept], seed_score[kept]
    seed_emb, seed_xy, seed_sig, seed_ssig = seed_emb[kept], seed_xy[kept], seed_sig[kept], seed_ssig[kept]
    num_seeds = seed_index.shape[0]

    # -- (4) instance masks over thing pixels only: [K x candidates]
    candidates = torch.nonzero(thing_pixel.reshape(-1)).squeeze(1)
    instance, _ = assign_instances(
        ins_flat[:, candidates].transpose(0, 1),
        coords_of(candidates),
        seed_emb,
        seed_xy,
        seed_sig,
        seed_ssig,
        threshold=mask_threshold,
        chunk=chunk,
    )

    # -- (5) provisional labels: 0 void, 1..C stuff class c-1, C+1..C+K instance k-1-C
    stuff_ok = ~thing_pixel & (psi >= stuff_threshold)
    label = torch.where(stuff_ok, labels + 1, torch.zeros((), dtype=torch.long, device=device)).reshape(-1)
    label[candidates] = torch.where(instance >= 0, instance + 1 + num_classes, torch.zeros_like(instance))
    label = label.view(h, w)
    num_labels = 1 + num_classes + num_seeds

    # -- (6) full-resolution statistics, minimum areas, final ids
    area, bbox, psi_sum = _segment_stats(label, num_labels, f, height, width, psi)
    is_stuff_label = torch.zeros(num_labels, dtype=torch.bool, device=device)
    is_stuff_label[1 : 1 + num_classes] = ~is_thing
    is_inst_label = torch.zeros(num_labels, dtype=torch.bool, device=device)
    is_inst_label[1 + num_classes :] = True
    keep = (area > 0) & (
        (is_stuff_label & (area >= min_stuff_area)) | (is_inst_label & (area >= min_thing_area))
    )
    # Instances first (already in descending score order), then stuff by class.
    order = torch.cat([torch.arange(1 + num_classes, num_labels, device=device), torch.arange(1, 1 + num_classes, device=device)])
    order = order[keep[order]]
    lut = torch.zeros(num_labels, dtype=torch.long, device=device)
    lut[order] = torch.arange(1, order.numel() + 1, device=device)
    panoptic = _upsample_ids(lut[label], f, height, width)

    category = torch.cat([torch.arange(num_classes, device=device), labels.reshape(-1)[seed_index]])[order - 1]
    score = torch.cat(
        [
            (psi_sum[1 : 1 + num_classes] / area[1 : 1 + num_classes].clamp(min=1)).to(dtype),
            seed_score,
        ]
    )[order - 1]
    segments_info = [
        {
            "id": i + 1,
            "category_id": int(cat),
            "isthing": bool(thing),
            "area": int(a),
            "bbox": [int(v) for v in box],
            "score": float(s),
        }
        for i, (cat, thing, a, box, s) in enumerate(
            zip(
                category.tolist(),
                is_inst_label[order].tolist(),
                area[order].tolist(),
                bbox[order].tolist(),
                score.tolist(),
            )
        )
    ]
    return PanopticResult(panoptic=panoptic, segments_info=segments_info)


def decode_batch(
    outputs: HLEOutputs,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    **kwargs: Any,
) -> list[PanopticResult]:
    """Decode every image of a batch of network outputs with :func:`decode_panoptic`.

    Args:
        outputs: :class:`HLEOutputs` with ``[B, ...]`` tensors.
        class_means, class_sigma, is_thing: as in :func:`decode_panoptic`.
        **kwargs: keyword arguments of :func:`decode_panoptic` (e.g.
            ``**DecoderParams().as_kwargs()``).

    Returns:
        ``B`` results, in batch order.
    """
    if outputs.embedding.dim() != 4:
        raise ValueError(
            f"decode_batch: outputs.embedding must be [B, D, H, W], got {tuple(outputs.embedding.shape)}"
        )
    if "semantic_logits" in kwargs:
        raise ValueError("decode_batch: pass semantic_logits inside outputs, not as a keyword")
    results = []
    for b in range(outputs.embedding.shape[0]):
        logits = None if outputs.semantic_logits is None else outputs.semantic_logits[b]
        results.append(
            decode_panoptic(
                outputs.embedding[b],
                outputs.sigma[b],
                outputs.spatial_sigma[b],
                outputs.seed[b],
                class_means,
                class_sigma,
                is_thing,
                semantic_logits=logits,
                **kwargs,
            )
        )
    return results
