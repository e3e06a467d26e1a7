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
import math
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
DEFAULT_CHUNK = 32768

DOWNSAMPLE_MODES = ("sample", "avg")

#: psi is computed as ``exp(l) / sum exp(l)`` without subtracting the row maximum
#: when ``1 / sigma_max^2`` is below this: Eq. (9) logits of class c lie in
#: ``[-1/sigma_c^2, 0]``, so the best logit is at least ``-1/sigma_max^2``, far
#: from float32 underflow (``exp(-87)``), and one pass over each block is saved.
_EXP_FIRST_LIMIT = 60.0


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


def _semantic_pass(
    logits_of: Callable[[int, int], torch.Tensor],
    num_pixels: int,
    num_stuff: int,
    stuff_threshold: float,
    void_label: int,
    like: torch.Tensor,
    chunk: int,
    exp_first: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over pixel-major ``[n, C]`` logit chunks: class, thing flag, max psi.

    Classes must be ordered stuff first (``0..num_stuff-1``), then things, so the
    thing flag is one comparison instead of a table lookup per pixel.
    ``max_c softmax(l)_c = max_c exp(l_c) / sum_c exp(l_c)`` is computed in place
    on the chunk, so nothing ``[N, C]`` is ever allocated, and the per-pixel work
    runs while the chunk is in cache.

    Returns:
        ``label [N]`` int64 class index, or ``void_label`` for a stuff pixel with
        ``psi < stuff_threshold``; ``thing [N]`` bool; ``psi [N]`` max probability.
    """
    device = like.device
    label = torch.empty(num_pixels, dtype=torch.long, device=device)
    thing = torch.empty(num_pixels, dtype=torch.bool, device=device)
    psi = torch.empty(num_pixels, dtype=like.dtype, device=device)
    top = torch.empty(min(chunk, num_pixels), dtype=like.dtype, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        block = logits_of(start, stop)
        psi_c, label_c, thing_c, top_c = psi[start:stop], label[start:stop], thing[start:stop], top[: stop - start]
        if exp_first:
            torch.max(block.exp_(), dim=1, out=(top_c, label_c))
            torch.div(top_c, block.sum(dim=1), out=psi_c)
        else:
            torch.max(block, dim=1, out=(top_c, label_c))
            torch.reciprocal(block.sub_(top_c[:, None]).exp_().sum(dim=1), out=psi_c)
        torch.ge(label_c, num_stuff, out=thing_c)
        label_c.masked_fill_((psi_c < stuff_threshold) & ~thing_c, void_label)
    return label, thing, psi


def _embedding_logits(
    embedding: torch.Tensor, class_means: torch.Tensor, class_sigma: torch.Tensor
) -> tuple[Callable[[int, int], torch.Tensor], bool]:
    """Chunk producer of Eq. (9) logits ``[n, C]`` for a ``[D, H, W]`` map, and
    whether the exp-first softmax is safe for these sigmas."""
    d = embedding.shape[0]
    weight, bias = semantic_linear_form(class_means.to(embedding.dtype), class_sigma.to(embedding.dtype))
    flat = embedding.reshape(d, -1)

    def logits_of(start: int, stop: int) -> torch.Tensor:
        # flat[:, a:b].T is a transposed view: BLAS reads it without a copy.
        return torch.addmm(bias, flat[:, start:stop].transpose(0, 1), weight)

    exp_first = 1.0 / float(class_sigma.max()) ** 2 < _EXP_FIRST_LIMIT
    return logits_of, exp_first


def _given_logits(logits: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Chunk producer for separate-branch logits ``[C, H, W]`` (ablation)."""
    flat = logits.reshape(logits.shape[0], -1)
    return lambda start, stop: flat[:, start:stop].transpose(0, 1).contiguous()


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
    _, h, w = embedding.shape
    logits_of, exp_first = _embedding_logits(embedding, class_means, class_sigma)
    num_classes = class_means.shape[0]
    label, _, psi = _semantic_pass(logits_of, h * w, num_classes, 0.0, num_classes, embedding, chunk, exp_first)
    return label.view(h, w), psi.view(h, w)


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

    The same pixels as ``kernel x kernel`` max-pool NMS on ``seed * allowed``
    followed by thresholding, but only the pixels above the threshold are
    inspected (one gather per neighbour offset into a zero-padded copy), which is
    much cheaper than pooling the whole map. Ties on a plateau are broken by
    raster index, so a flat peak gives few seeds, not all of its pixels.

    Args:
        seed: ``[H, W]`` seed scores (non-negative).
        allowed: ``[H, W]`` bool, pixels that may hold a seed (thing pixels).
        threshold: minimum seed score (strict), ``>= 0``.
        kernel: odd neighbourhood size.
        max_seeds: keep at most this many, the highest scores.

    Returns:
        ``(index [K] flat pixel indices into [H, W], score [K])`` sorted by
        descending score, ties by ascending index.
    """
    h, w = seed.shape
    r = kernel // 2
    wp = w + 2 * r
    padded = torch.zeros(h + 2 * r, wp, dtype=seed.dtype, device=seed.device)
    inner = padded[r : r + h, r : r + w]
    torch.mul(seed, allowed, out=inner)
    rows, cols = torch.nonzero(inner > threshold, as_tuple=True)
    index_p = (rows + r) * wp + (cols + r)
    flat_p = padded.reshape(-1)
    score = flat_p[index_p]
    keep = torch.ones_like(score, dtype=torch.bool)
    # One gather per neighbour offset (8 for 3x3): a loop over offsets, not pixels.
    # Tie rule "win against an equal neighbour of larger raster index" reduces to
    # the sign of the offset.
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            offset = dy * wp + dx
            if offset == 0:
                continue
            value = flat_p[index_p + offset]
            keep &= (score >= value) if offset > 0 else (score > value)
    rows, cols, score = rows[keep], cols[keep], score[keep]
    order = torch.sort(score, descending=True, stable=True).indices[:max_seeds]
    return rows[order] * w + cols[order], score[order]


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


def _instance_weights(
    seed_embedding: torch.Tensor,
    seed_coords: torch.Tensor,
    seed_sigma: torch.Tensor,
    seed_spatial_sigma: torch.Tensor,
    origin: torch.Tensor,
) -> torch.Tensor:
    """``[D+4, K]`` weights with ``[e, rho, |rho|^2, 1] @ W = log Phi`` (rho relative to origin)."""
    c_rho = seed_coords - origin
    a = 1.0 / (2.0 * seed_sigma * seed_sigma)
    b = 1.0 / (2.0 * seed_spatial_sigma * seed_spatial_sigma)
    return torch.cat(
        [
            normalize_rows(seed_embedding) * a[:, None],
            2.0 * c_rho * b[:, None],
            -b[:, None],
            (-a - b * c_rho.pow(2).sum(dim=1))[:, None],
        ],
        dim=1,
    ).transpose(0, 1).contiguous()


def _assign_features(
    features: torch.Tensor, weight: torch.Tensor, threshold: float, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best seed and its log Phi for channel-major features ``[D+4, Nc]``."""
    n = features.shape[1]
    instance = torch.empty(n, dtype=torch.long, device=features.device)
    best = torch.empty(n, dtype=features.dtype, device=features.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        torch.max(features[:, start:stop].transpose(0, 1) @ weight, dim=1, out=(best[start:stop], instance[start:stop]))
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    instance.masked_fill_(~(best > log_threshold), -1)
    return instance, best


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
    if seed_embedding.shape[0] == 0 or n == 0:
        return (
            torch.full((n,), -1, dtype=torch.long, device=embedding.device),
            torch.zeros(n, dtype=embedding.dtype, device=embedding.device),
        )
    origin = seed_coords.mean(dim=0)
    rho = coords - origin
    features = torch.cat(
        [embedding.transpose(0, 1), rho.transpose(0, 1), rho.pow(2).sum(dim=1)[None], torch.ones_like(rho[:, 0])[None]]
    )
    weight = _instance_weights(seed_embedding, seed_coords, seed_sigma, seed_spatial_sigma, origin)
    instance, best = _assign_features(features, weight, threshold, chunk)
    return instance, best.exp()


# --------------------------------------------------------------------------- resolution


def _downsample_maps(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """``[C, H, W] -> [C, ceil(H/f), ceil(W/f)]`` by block-centre sampling or averaging."""
    if factor == 1:
        return x
    _, h, w = x.shape
    if mode == "avg":
        # ceil_mode: partial border blocks average over their in-image pixels only.
        return F.avg_pool2d(x[None], factor, factor, ceil_mode=True)[0]
    off = factor // 2
    out = x[:, off::factor, off::factor]
    # A partial last block whose centre falls outside the image samples its last pixel.
    if out.shape[1] < -(-h // factor):
        out = torch.cat([out, x[:, h - 1 :, off::factor]], dim=1)
    if out.shape[2] < -(-w // factor):
        last = x[:, off::factor, w - 1 :]
        if last.shape[1] < out.shape[1]:
            last = torch.cat([last, x[:, h - 1 :, w - 1 :]], dim=1)
        out = torch.cat([out, last], dim=2)
    return out.contiguous()


def _read_at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """Values of the ``[H, W]`` map ``x`` as :func:`_downsample_maps` would give them at
    decode pixels ``(rows, cols)``, without reducing the whole map (only seeds need it)."""
    if factor == 1:
        return x[rows, cols]
    h, w = x.shape
    if mode == "avg":
        return _downsample_maps(x[None], factor, mode)[0][rows, cols]
    off = factor // 2
    return x[(rows * factor + off).clamp(max=h - 1), (cols * factor + off).clamp(max=w - 1)]


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
        label: ``[h, w]`` int32 in ``0..num_labels-1``.
        psi: ``[h, w]`` per-pixel value summed per label (area-weighted).

    Returns:
        ``(area [L] int64, bbox [L, 4] int64 as x, y, w, h, psi_sum [L] float64)``.
    """
    h, w = label.shape
    device = label.device
    # Key = position * L + label (not label * size + position): consecutive pixels
    # then hit neighbouring bins, whereas power-of-two strides between bins thrash
    # the cache (measured 20x slower).
    row_base = torch.arange(h, device=device, dtype=label.dtype)[:, None] * num_labels
    col_base = torch.arange(w, device=device, dtype=label.dtype)[None, :] * num_labels
    row_keys = torch.add(label, row_base).reshape(-1)
    row_hits = torch.bincount(row_keys, minlength=h * num_labels).view(h, num_labels)
    col_hits = torch.bincount(torch.add(label, col_base).reshape(-1), minlength=w * num_labels).view(w, num_labels)
    if factor == 1:
        area = row_hits.sum(dim=0)
        # Per (row, label) sums in the weights' dtype (at most w terms each, so
        # float32 is accurate), then rows summed in float64: a float32 sum over a
        # million pixels would drift by ~1e-4.
        row_psi = torch.bincount(row_keys, weights=psi.reshape(-1), minlength=h * num_labels)
        psi_sum = row_psi.view(h, num_labels).double().sum(dim=0)
    else:
        block = _block_sizes(height, factor, device)[:, None] * _block_sizes(width, factor, device)[None, :]
        weights = block.reshape(-1).double()
        flat = label.reshape(-1)
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
    if params.seed_threshold < 0:
        raise ValueError(f"decode_panoptic: seed_threshold must be >= 0, got {params.seed_threshold}")


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
    _, height, width = embedding.shape
    num_classes = class_means.shape[0]
    device, dtype = embedding.device, embedding.dtype
    f = downsample

    # Classes reordered stuff first (stable, so stuff keeps its class order): the
    # thing flag of a pixel is then ``label >= num_stuff``. Decode labels are
    # 0..C-1 (reordered class), C (void), C+1+k (instance k).
    perm = torch.argsort(is_thing.to(torch.uint8), stable=True)
    num_stuff = int((~is_thing).sum())
    void = num_classes

    # -- (0) decode resolution (Supplementary C)
    emb = _downsample_maps(embedding, f, downsample_mode)
    if f > 1 and downsample_mode == "avg":
        emb = F.normalize(emb, dim=0)
    seed_map = _downsample_maps(seed, f, downsample_mode)[0].to(dtype)
    _, h, w = emb.shape
    sem_view, ins_view = split_views(emb, split_embedding, dim=0)

    # -- (1) semantics, one pass over pixel-major chunks
    if semantic_logits is not None:
        logits_of = _given_logits(_downsample_maps(semantic_logits.to(dtype)[perm], f, downsample_mode))
        exp_first = False
    else:
        means = class_means[perm, : sem_view.shape[0]]
        logits_of, exp_first = _embedding_logits(sem_view, means, class_sigma[perm])
    label, thing, psi = _semantic_pass(
        logits_of, h * w, num_stuff, stuff_threshold, void, emb, chunk, exp_first
    )

    # -- (2)+(3) seeds on thing pixels, merged greedily with Phi
    row_coord = pixel_coordinates(h, 1, stride=stride * f, coord_scale=coord_scale, device=device, dtype=dtype)[:, 0]
    col_coord = pixel_coordinates(1, w, stride=stride * f, coord_scale=coord_scale, device=device, dtype=dtype)[:, 1]
    ins_flat = ins_view.reshape(ins_view.shape[0], h * w)
    seed_index, seed_score = find_seeds(
        seed_map, thing.view(h, w), threshold=seed_threshold, kernel=nms_kernel, max_seeds=max_instances
    )
    seed_row, seed_col = seed_index // w, seed_index % w
    seed_emb = ins_flat[:, seed_index].transpose(0, 1)
    seed_xy = torch.stack([row_coord[seed_row], col_coord[seed_col]], dim=1)
    seed_sig = _read_at(sigma[0], seed_row, seed_col, f, downsample_mode).to(dtype)
    seed_ssig = _read_at(spatial_sigma[0], seed_row, seed_col, f, downsample_mode).to(dtype)
    kept = merge_seeds(seed_emb, seed_xy, seed_sig, seed_ssig, threshold=merge_threshold)
    seed_emb, seed_xy, seed_sig, seed_ssig = seed_emb[kept], seed_xy[kept], seed_sig[kept], seed_ssig[kept]
    seed_index, seed_score = seed_index[kept], seed_score[kept]
    num_seeds = seed_index.shape[0]
    seed_class = label[seed_index]  # reordered class: seeds lie on thing pixels

    # -- (4) instance masks over thing pixels only, channel-major features [D+4, Nc]
    if num_seeds > 0:
        candidates = torch.nonzero(thing).squeeze(1)
        d_ins = ins_flat.shape[0]
        features = torch.empty(d_ins + 4, candidates.numel(), dtype=dtype, device=device)
        torch.index_select(ins_flat, 1, candidates, out=features[:d_ins])
        origin = seed_xy.mean(dim=0)
        torch.sub(row_coord[candidates // w], origin[0], out=features[d_ins])
        torch.sub(col_coord[candidates % w], origin[1], out=features[d_ins + 1])
        torch.sum(features[d_ins : d_ins + 2].pow(2), dim=0, out=features[d_ins + 2])
        features[d_ins + 3] = 1.0
        weight = _instance_weights(seed_emb, seed_xy, seed_sig, seed_ssig, origin)
        instance, _ = _assign_features(features, weight, mask_threshold, chunk)
        # Every thing pixel is relabelled: instance k -> C+1+k, unclaimed -> void.
        label[candidates] = torch.where(instance >= 0, instance + (void + 1), void)
    else:
        label.masked_fill_(thing, void)
    label = label.view(h, w)
    num_labels = void + 1 + num_seeds

    # -- (5)+(6) full-resolution statistics, minimum areas, final ids
    area, bbox, psi_sum = _segment_stats(label, num_labels, f, height, width, psi.view(h, w))
    labels = torch.arange(num_labels, device=device)
    is_inst_label = labels > void
    keep = (area > 0) & (
        ((labels < num_stuff) & (area >= min_stuff_area)) | (is_inst_label & (area >= min_thing_area))
    )
    # Instances first (already in descending score order), then stuff by class.
    order = torch.cat([labels[void + 1 :], labels[:num_stuff]])
    order = order[keep[order]]
    lut = torch.zeros(num_labels, dtype=torch.long, device=device)
    lut[order] = torch.arange(1, order.numel() + 1, device=device)
    panoptic = _upsample_ids(lut[label], f, height, width)

    # Per decode label: original category id and score.
    category = perm[torch.cat([labels[:void], labels.new_zeros(1), seed_class])]
    stuff_score = psi_sum[:void] / area[:void].clamp(min=1)
    score = torch.cat([stuff_score.to(dtype), stuff_score.new_zeros(1).to(dtype), seed_score])
    segments_info = [
        {
            "id": i + 1,
            "category_id": int(cat),
            "isthing": bool(is_inst),
            "area": int(a),
            "bbox": [int(v) for v in box],
            "score": float(s),
        }
        for i, (cat, is_inst, a, box, s) in enumerate(
            zip(
                category[order].tolist(),
                is_inst_label[order].tolist(),
                area[order].tolist(),
                bbox[order].tolist(),
                score[order].tolist(),
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
