"""Panoptic decoding of HLE network outputs (Sec. 3.5 and Supplementary C).

This module owns the step from raw per-pixel outputs (embedding, instance sigma,
spatial sigma, seed) to a COCO-style :class:`~hle.core.types.PanopticResult`:
semantic assignment by argmax of psi (Eq. 9), thing seeds by local-maximum NMS on
the seed map, greedy merging of seeds with the kernel Phi of Sec. 3.5, instance
masks by thresholding Phi, stuff thresholding on psi, minimum segment areas, and
the optional decoding on a downsampled map (Supplementary C) or on maps at a
stride (the network's stride-4 outputs) with the id map expanded to the image.
Everything is pure tensor code that runs on the device of its inputs (on CPU with
one thread, one strided copy goes through NumPy: :func:`_copy_into`). Per-pixel
work is done in pixel-major chunks (``[n, D] @ [D, C]``) and per-instance work is
one matmul over the candidate (thing) pixels only, so memory is
``O(K x candidates)``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hle.core.kernels import (
    DEFAULT_COORD_SCALE,
    axis_coordinates,
    check_class_parameters,
    instance_kernel,
    normalize_rows,
    split_views,
)
from hle.core.types import HLEOutputs, PanopticResult

#: Pixels per chunk of the pixel-major semantic and instance matmuls: large enough
#: to amortise the BLAS call, small enough that a ``[chunk, C]`` block stays in cache.
DEFAULT_CHUNK = 32768

DOWNSAMPLE_MODES = ("sample", "avg")

#: dtype of the decoded id map (as detectron2's ``panoptic_seg``): half the memory
#: and write time of int64 at 1024x2048, and ample for ids ``< 2^31``.
PANOPTIC_DTYPE = torch.int32

#: How an instance is scored (for AP and for ranking): the seed score s_i, the
#: mean Phi(seed, pixel) over its mask, or their product.
INSTANCE_SCORES = ("seed", "mean_phi", "seed_mean_phi")

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
        downsample_mode: ``"sample"`` (the centre pixel of each block: reads only
            every f-th row of the full maps) or ``"avg"`` (average-pool, re-normalise;
            a full pass over the embedding, about 4x slower at f=4).
        instance_score: one of :data:`INSTANCE_SCORES`; stuff is always scored by
            its mean max psi.
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
    instance_score: str = "seed"

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
    logits_into: Callable[[int, int, torch.Tensor], None],
    num_pixels: int,
    num_classes: int,
    num_stuff: int,
    stuff_threshold: float,
    like: torch.Tensor,
    chunk: int,
    exp_first: bool,
    pixel_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over pixel-major ``[n, C]`` logit chunks: class, thing flag, psi sums.

    Classes must be ordered stuff first (``0..num_stuff-1``), then things, so the
    thing flag is one comparison instead of a table lookup per pixel.
    ``max_c softmax(l)_c = max_c exp(l_c) / sum_c exp(l_c)`` is computed in place
    on the chunk. All chunk buffers are allocated once and reused: on CPU, fresh
    large allocations cost a page fault per 4 KiB on first touch, which was as
    expensive as the arithmetic.

    Args:
        logits_into: ``(start, stop, out)`` writes the ``[stop-start, C]`` logits into ``out``.
        pixel_weight: optional ``[N]`` float64 weight of each pixel in the psi sums.

    Returns:
        ``label [N]`` int64 class index, or ``num_classes`` (void) for a stuff pixel
        with ``max psi < stuff_threshold``; ``thing [N]`` bool; ``psi_sum [C+1]``
        float64, the (weighted) sum of max psi over the pixels of each label.
    """
    device, dtype = like.device, like.dtype
    label = torch.empty(num_pixels, dtype=torch.long, device=device)
    thing = torch.empty(num_pixels, dtype=torch.bool, device=device)
    psi_sum = torch.zeros(num_classes + 1, dtype=torch.float64, device=device)
    n_max = min(chunk, num_pixels)
    block_buf = torch.empty(n_max, num_classes, dtype=dtype, device=device)
    top_buf, sum_buf, psi_buf = (torch.empty(n_max, dtype=dtype, device=device) for _ in range(3))
    low_buf = torch.empty(n_max, dtype=torch.bool, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        n = stop - start
        block, top, sums, psi, low = block_buf[:n], top_buf[:n], sum_buf[:n], psi_buf[:n], low_buf[:n]
        label_c, thing_c = label[start:stop], thing[start:stop]
        logits_into(start, stop, block)
        if exp_first:
            torch.max(block.exp_(), dim=1, out=(top, label_c))
            torch.sum(block, dim=1, out=sums)
            torch.div(top, sums, out=psi)
        else:
            torch.max(block, dim=1, out=(top, label_c))
            torch.sum(block.sub_(top[:, None]).exp_(), dim=1, out=sums)
            torch.reciprocal(sums, out=psi)
        torch.ge(label_c, num_stuff, out=thing_c)
        # "not >=" rather than "<": a NaN psi counts as below the threshold.
        torch.ge(psi, stuff_threshold, out=low)
        torch.logical_or(low, thing_c, out=low).logical_not_()
        label_c.masked_fill_(low, num_classes)
        # Stuff labels are final after this pass, so their psi sums can be taken
        # now, in float64: bincount accumulates in the weights' dtype, and float32
        # sums of thousands of values near 1 drift by ~1e-4.
        weights = psi.double() if pixel_weight is None else psi.double() * pixel_weight[start:stop]
        psi_sum += torch.bincount(label_c, weights=weights, minlength=num_classes + 1)
    return label, thing, psi_sum


#: dtypes that NumPy shares memory with (not bfloat16).
_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool})


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a strided ``src`` and a contiguous ``dst`` of one dtype.

    On CPU with one intra-op thread this goes through NumPy, whose
    strided-to-contiguous loops are specialised by item size: for the
    every-4th-pixel block centres of a 1024x2048 embedding, 1.8 ms against 2.6 ms
    for ``Tensor.copy_`` (cold caches). NumPy copies on one thread, so with more
    torch threads ``Tensor.copy_`` (parallel: 1.3 ms on two) is used instead.
    """
    same_cpu_dtype = dst.device.type == src.device.type == "cpu" and dst.dtype == src.dtype
    if same_cpu_dtype and dst.dtype in _NUMPY_DTYPES and torch.get_num_threads() == 1:
        np.copyto(dst.detach().numpy(), src.detach().numpy(), casting="no")
    else:
        dst.copy_(src)


def _embedding_logits(
    embedding: torch.Tensor,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    chunk: int,
    store: torch.Tensor | None = None,
) -> tuple[Callable[[int, int, torch.Tensor], None], bool]:
    """Chunk writer of Eq. (9) logits ``[n, C]`` for a ``[D, h, w]`` map, and
    whether the exp-first softmax is safe for these sigmas.

    ``embedding`` may be a strided view (the block centres of a full map): each
    chunk's whole rows are then copied into ``store`` (a contiguous ``[D, h, w]``
    buffer) just before its matmul reads them from cache, so the map is read once
    and ``store`` holds the downsampled embedding when the pass is over. ``chunk``
    must then be a multiple of ``w``.
    """
    d, _, w = embedding.shape
    weight, bias = semantic_linear_form(class_means.to(embedding.dtype), class_sigma.to(embedding.dtype))
    exp_first = 1.0 / float(class_sigma.max()) ** 2 < _EXP_FIRST_LIMIT
    if embedding.is_contiguous():
        flat = embedding.reshape(d, -1)

        def logits_into(start: int, stop: int, out: torch.Tensor) -> None:
            # flat[:, a:b].T is a transposed view: BLAS reads it without a copy.
            torch.addmm(bias, flat[:, start:stop].transpose(0, 1), weight, out=out)

        return logits_into, exp_first

    if store is None or tuple(store.shape) != tuple(embedding.shape) or not store.is_contiguous():
        raise ValueError(f"a strided embedding {tuple(embedding.shape)} needs a contiguous store of that shape")
    flat_store = store.view(d, -1)

    def logits_into_rows(start: int, stop: int, out: torch.Tensor) -> None:
        if start % w or stop % w:
            raise ValueError(f"strided embedding needs whole-row chunks, got pixels {start}:{stop} with w={w}")
        _copy_into(store[:, start // w : stop // w], embedding[:, start // w : stop // w])
        torch.addmm(bias, flat_store[:, start:stop].transpose(0, 1), weight, out=out)

    return logits_into_rows, exp_first


def _given_logits(logits: torch.Tensor) -> Callable[[int, int, torch.Tensor], None]:
    """Chunk writer for separate-branch logits ``[C, H, W]`` (ablation)."""
    flat = logits.reshape(logits.shape[0], -1)

    def logits_into(start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(flat[:, start:stop].transpose(0, 1))

    return logits_into


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
    labels = torch.empty(h * w, dtype=torch.long, device=embedding.device)
    psi = torch.empty(h * w, dtype=embedding.dtype, device=embedding.device)
    for start in range(0, h * w, chunk):
        stop = min(start + chunk, h * w)
        block = torch.softmax(torch.addmm(bias, flat[:, start:stop].transpose(0, 1), weight), dim=1)
        torch.max(block, dim=1, out=(psi[start:stop], labels[start:stop]))
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

    Where seed values are distinct, the same pixels as ``kernel x kernel``
    max-pool NMS on ``seed * allowed`` (zero padding) followed by thresholding;
    but only the pixels above the threshold are inspected (their neighbours
    gathered as one ``[M, kernel^2 - 1]`` block), which is much cheaper than
    pooling the whole map. Ties on a plateau are broken by raster index, so a flat
    peak gives few seeds, not all of its pixels.

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
    above = torch.gt(seed, threshold).logical_and_(allowed)
    rows, cols = torch.nonzero(above, as_tuple=True)
    flat_seed, flat_allowed = seed.reshape(-1), allowed.reshape(-1)
    index = rows * w + cols
    score = flat_seed[index]
    r = kernel // 2
    if r > 0:
        # Cheap 1-D pre-filter: on a smooth peak most pixels above the threshold
        # already lose to their left or right neighbour (same tie rule as below).
        left, right = (index - 1).clamp_(min=0), (index + 1).clamp_(max=h * w - 1)
        left_ok = (cols == 0) | (score > flat_seed[left] * flat_allowed[left])
        right_ok = (cols == w - 1) | (score >= flat_seed[right] * flat_allowed[right])
        survive = left_ok & right_ok
        rows, cols, index, score = rows[survive], cols[survive], index[survive], score[survive]
    # All neighbour offsets at once: [M, k*k-1] gathers, not a loop over pixels.
    dy, dx = torch.meshgrid(
        torch.arange(-r, r + 1, device=seed.device), torch.arange(-r, r + 1, device=seed.device), indexing="ij"
    )
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    centre = dy.numel() // 2
    dy, dx = torch.cat([dy[:centre], dy[centre + 1 :]]), torch.cat([dx[:centre], dx[centre + 1 :]])
    nr, nc = rows[:, None] + dy, cols[:, None] + dx
    inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
    neighbour = nr.clamp(0, h - 1) * w + nc.clamp(0, w - 1)
    value = flat_seed[neighbour] * (flat_allowed[neighbour] & inside)
    # Tie rule "win against an equal neighbour of larger raster index": neighbours
    # after the centre in raster order are exactly the second half of the offsets.
    later = torch.arange(dy.numel(), device=seed.device) >= centre
    keep = torch.where(later, score[:, None] >= value, score[:, None] > value).all(dim=1)
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


def _best_seed(
    features_into: Callable[[int, int, torch.Tensor], None],
    num_pixels: int,
    weight: torch.Tensor,
    threshold: float,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best seed and its log Phi per pixel, from chunks of channel-major features.

    Args:
        features_into: ``(start, stop, out)`` writes ``[D+4, stop-start]`` features
            ``[e; rho; |rho|^2; 1]`` into ``out`` (a reused buffer).
        weight: ``[D+4, K]`` from :func:`_instance_weights`.

    Returns:
        ``(instance [n] int64, -1 where the best Phi <= threshold; best log Phi [n])``.
    """
    num_features, k = weight.shape
    device, dtype = weight.device, weight.dtype
    instance = torch.empty(num_pixels, dtype=torch.long, device=device)
    best = torch.empty(num_pixels, dtype=dtype, device=device)
    n_max = min(chunk, num_pixels)
    feat_buf = torch.empty(num_features * n_max, dtype=dtype, device=device)
    score_buf = torch.empty(n_max, k, dtype=dtype, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        n = stop - start
        features = feat_buf[: num_features * n].view(num_features, n)
        features_into(start, stop, features)
        torch.mm(features.transpose(0, 1), weight, out=score_buf[:n])
        torch.max(score_buf[:n], dim=1, out=(best[start:stop], instance[start:stop]))
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    # "not >" rather than "<=": a NaN score joins no instance.
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

    def features_into(start: int, stop: int, out: torch.Tensor) -> None:
        rho = coords[start:stop] - origin
        out[:d] = embedding[start:stop].transpose(0, 1)
        out[d : d + 2] = rho.transpose(0, 1)
        out[d + 2] = rho.pow(2).sum(dim=1)
        out[d + 3] = 1.0

    weight = _instance_weights(seed_embedding, seed_coords, seed_sigma, seed_spatial_sigma, origin)
    instance, best = _best_seed(features_into, n, weight, threshold, chunk)
    return instance, best.clamp_(max=0.0).exp_()


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
    if out.shape[1] == -(-h // factor) and out.shape[2] == -(-w // factor):
        dense = torch.empty(out.shape, dtype=x.dtype, device=x.device)
        _copy_into(dense, out)
        return dense
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
    # Columns first ([h, w*f], small), then whole rows repeated: the big write is then
    # row copies, about 2x faster than one 4-D strided expand.
    wide = ids[:, :, None].expand(h, w, factor).reshape(h, w * factor)[:, :width]
    return wide[:, None, :].expand(h, factor, width).reshape(h * factor, width)[:height]


def _segment_stats(
    label: torch.Tensor, num_labels: int, factor: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution area and bbox of every label of a (decode-resolution) map.

    Area and bbox are those of the nearest-upsampled map cropped to ``height x
    width``, computed exactly at decode resolution from per-row and per-column
    counts: every decode pixel covers ``factor^2`` output pixels, except in the
    last (cropped) block row and column.

    Args:
        label: ``[h, w]`` int64 in ``0..num_labels-1``; used as scratch space and
            restored before returning.

    Returns:
        ``(area [L] int64, bbox [L, 4] int64 as x, y, w, h)``.
    """
    h, w = label.shape
    device = label.device
    # Per (row, label) and (column, label) hit counts. Key = position * L + label,
    # not label * size + position: consecutive pixels then hit neighbouring bins,
    # whereas power-of-two strides between bins thrash the cache (20x slower).
    # The keys are built in place in ``label`` and undone afterwards: cheaper than
    # a fresh key buffer, whose page faults cost more than the two extra passes.
    row_base = torch.arange(h, device=device)[:, None] * num_labels
    col_base = torch.arange(w, device=device)[None, :] * num_labels
    row_hits = torch.bincount(label.add_(row_base).reshape(-1), minlength=h * num_labels).view(h, num_labels)
    label.sub_(row_base)
    col_hits = torch.bincount(label.add_(col_base).reshape(-1), minlength=w * num_labels).view(w, num_labels)
    label.sub_(col_base)
    area = row_hits.sum(dim=0)
    if factor > 1:
        # A decode pixel covers f x f output pixels, except in the last block row
        # (a x f) and column (f x b) and the corner (a x b): exact integer areas
        # from the counts already at hand, with no per-pixel weight pass.
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
    # First and last row / column where each label is present (absent labels get
    # an empty box; they are dropped by their zero area anyway).
    row_index = torch.arange(h, device=device)[:, None]
    col_index = torch.arange(w, device=device)[:, None]
    top = torch.where(row_hits > 0, row_index, h).amin(dim=0) * factor
    left = torch.where(col_hits > 0, col_index, w).amin(dim=0) * factor
    bottom = ((torch.where(row_hits > 0, row_index, -1).amax(dim=0) + 1) * factor).clamp_(max=height)
    right = ((torch.where(col_hits > 0, col_index, -1).amax(dim=0) + 1) * factor).clamp_(max=width)
    return area, torch.stack([left, top, right - left, bottom - top], dim=1)


# --------------------------------------------------------------------------- decoder


def _output_scale(
    height: int, width: int, stride: float, output_size: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """``(output pixels per map pixel, (H_out, W_out))`` for :func:`decode_panoptic`."""
    if output_size is None:
        return 1, (height, width)
    scale = round(stride)
    if scale < 1 or abs(stride - scale) > 1e-6:
        raise ValueError(f"decode_panoptic: output_size needs an integer stride >= 1, got stride={stride}")
    try:
        out_h, out_w = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"decode_panoptic: output_size must be (height, width), got {output_size!r}") from None
    if -(-out_h // scale) != height or -(-out_w // scale) != width or out_h < 1 or out_w < 1:
        raise ValueError(
            f"decode_panoptic: output_size {out_h}x{out_w} does not fit maps of {height}x{width} at stride "
            f"{scale} (expected ceil(H_out / {scale}) = {height} and ceil(W_out / {scale}) = {width})"
        )
    return scale, (out_h, out_w)


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
    c = check_class_parameters("decode_panoptic", class_means, class_sigma, is_thing, d)
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
    if params.instance_score not in INSTANCE_SCORES:
        raise ValueError(
            f"decode_panoptic: instance_score must be one of {INSTANCE_SCORES}, got {params.instance_score!r}"
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
    instance_score: str = _DEFAULTS.instance_score,
    coord_scale: float = DEFAULT_COORD_SCALE,
    stride: float = 1.0,
    output_size: tuple[int, int] | None = None,
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
            downsample_mode, instance_score: see :class:`DecoderParams` (defaults there).
        coord_scale: coordinate units per input pixel (:data:`DEFAULT_COORD_SCALE`).
        stride: input pixels per map pixel (1 for maps at image resolution).
        output_size: ``(H_out, W_out)`` of the returned id map for maps at an
            integer ``stride > 1`` (e.g. the network's own stride-4 outputs,
            ``HLENet(..., upsample=False)``): each map pixel then covers a
            ``stride x stride`` block of the output (nearest upsampling, the last
            block row / column cropped), and areas and boxes are counted at output
            resolution. ``ceil(H_out / stride)`` must equal ``H`` (and likewise
            for ``W``). ``None``: the id map has the size of the maps.
        chunk: pixels per matmul block (memory / speed trade-off only).

    Returns:
        :class:`PanopticResult` with ``panoptic [H, W]`` (``output_size`` if given)
        :data:`PANOPTIC_DTYPE` (ids ``1..S``,
        instances first by descending seed score, then stuff by class; 0 = void)
        and ``segments_info`` dicts ``id, category_id, isthing, area, bbox, score``;
        instance score per ``instance_score`` (default: the seed score), stuff
        score = mean max psi over the segment.
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
        instance_score=instance_score,
    )
    _check_inputs(
        embedding, sigma, spatial_sigma, seed, class_means, class_sigma, is_thing,
        semantic_logits, split_embedding, params,
    )
    _, height, width = embedding.shape
    num_classes = class_means.shape[0]
    device, dtype = embedding.device, embedding.dtype
    f = downsample
    # Output pixels per decode pixel along each axis, and the output size.
    scale, (out_h, out_w) = _output_scale(height, width, stride, output_size)
    big_f = f * scale

    # Classes reordered stuff first (stable, so stuff keeps its class order): the
    # thing flag of a pixel is then ``label >= num_stuff``. Decode labels are
    # 0..C-1 (reordered class), C (void), C+1+k (instance k).
    perm = torch.argsort(is_thing.to(torch.uint8), stable=True)
    num_stuff = int((~is_thing).sum())
    void = num_classes

    # -- (0) decode resolution (Supplementary C)
    off = f // 2
    store = None
    if (
        f > 1 and downsample_mode == "sample" and not split_embedding
        and (height - 1) % f >= off and (width - 1) % f >= off
    ):
        # Block centres as a strided view of the full map (every block has its
        # centre inside the image): the semantic pass copies them into ``store``
        # a few rows at a time, right before its matmul reads them, so the full
        # map is read once and only at the centre rows.
        sem_view = embedding[:, off::f, off::f]
        _, h, w = sem_view.shape
        store = torch.empty(sem_view.shape, dtype=dtype, device=device)
        if semantic_logits is not None:
            store.copy_(sem_view)
        ins_src = store.view(store.shape[0], -1)
        chunk = max(1, chunk // w) * w
    else:
        emb = _downsample_maps(embedding, f, downsample_mode)
        if f > 1 and downsample_mode == "avg":
            emb = F.normalize(emb, dim=0)
        _, h, w = emb.shape
        sem_view, ins_view = split_views(emb, split_embedding, dim=0)
        # A channels-last input is copied once; the chunked matmuls need flat rows.
        sem_view = sem_view.contiguous()
        ins_src = ins_view.reshape(ins_view.shape[0], -1)

    seed_map = _downsample_maps(seed, f, downsample_mode)[0].to(dtype)
    # Output pixels covered by each decode pixel, the weights of the stuff psi
    # and Phi means: f^2 everywhere when f divides the image size, else smaller
    # in the last block row and column.
    pixel_weight, weight_scale = None, float(big_f * big_f)
    if out_h % big_f or out_w % big_f:
        block = _block_sizes(out_h, big_f, device)[:, None] * _block_sizes(out_w, big_f, device)[None, :]
        pixel_weight, weight_scale = block.reshape(-1).double(), 1.0

    # -- (1) semantics, one pass over pixel-major chunks
    if semantic_logits is not None:
        logits_into = _given_logits(_downsample_maps(semantic_logits.to(dtype)[perm], f, downsample_mode))
        exp_first = False
    else:
        means = class_means[perm, : sem_view.shape[0]]
        logits_into, exp_first = _embedding_logits(sem_view, means, class_sigma[perm], chunk, store)
    label, thing, psi_sum = _semantic_pass(
        logits_into, h * w, num_classes, num_stuff, stuff_threshold, embedding, chunk, exp_first, pixel_weight
    )
    psi_sum *= weight_scale

    # -- (2)+(3) seeds on thing pixels, merged greedily with Phi
    axis = dict(stride=stride * f, coord_scale=coord_scale, device=device, dtype=dtype)
    row_coord, col_coord = axis_coordinates(h, **axis), axis_coordinates(w, **axis)
    seed_index, seed_score = find_seeds(
        seed_map, thing.view(h, w), threshold=seed_threshold, kernel=nms_kernel, max_seeds=max_instances
    )
    seed_row, seed_col = seed_index // w, seed_index % w
    seed_emb = ins_src[:, seed_index].transpose(0, 1)
    seed_xy = torch.stack([row_coord[seed_row], col_coord[seed_col]], dim=1)
    seed_sig = _read_at(sigma[0], seed_row, seed_col, f, downsample_mode).to(dtype)
    seed_ssig = _read_at(spatial_sigma[0], seed_row, seed_col, f, downsample_mode).to(dtype)
    kept = merge_seeds(seed_emb, seed_xy, seed_sig, seed_ssig, threshold=merge_threshold)
    seed_emb, seed_xy, seed_sig, seed_ssig = seed_emb[kept], seed_xy[kept], seed_sig[kept], seed_ssig[kept]
    seed_index, seed_score = seed_index[kept], seed_score[kept]
    num_seeds = seed_index.shape[0]
    seed_class = label[seed_index]  # reordered class: seeds lie on thing pixels

    # -- (4) instance masks over thing pixels only, in chunks of candidates
    if num_seeds > 0:
        candidates = torch.nonzero(thing).squeeze(1)
        d_ins = ins_src.shape[0]
        origin = seed_xy.mean(dim=0)

        def features_into(start: int, stop: int, out: torch.Tensor) -> None:
            index = candidates[start:stop]
            rows = torch.div(index, w, rounding_mode="floor")
            torch.index_select(ins_src, 1, index, out=out[:d_ins])
            torch.index_select(row_coord, 0, rows, out=out[d_ins])
            torch.index_select(col_coord, 0, index - rows * w, out=out[d_ins + 1])
            out[d_ins : d_ins + 2] -= origin[:, None]
            torch.mul(out[d_ins], out[d_ins], out=out[d_ins + 2])
            out[d_ins + 2].addcmul_(out[d_ins + 1], out[d_ins + 1])
            out[d_ins + 3] = 1.0

        weight = _instance_weights(seed_emb, seed_xy, seed_sig, seed_ssig, origin)
        instance, best = _best_seed(features_into, candidates.numel(), weight, mask_threshold, chunk)
        if instance_score != "seed":
            # Sum of Phi over each mask, weighted by the output pixels a decode
            # pixel covers, so that dividing by the full-resolution area is a mean.
            phi = best.clamp_(max=0.0).exp_().double()   # log Phi <= 0 up to rounding
            if pixel_weight is not None:
                phi *= pixel_weight[candidates]
            if weight_scale != 1.0:
                phi *= weight_scale
            phi_sum = torch.bincount(instance + 1, weights=phi, minlength=num_seeds + 1)[1:]
        # Every thing pixel is relabelled: instance k -> C+1+k, unclaimed (-1) -> void.
        label[candidates] = instance.add_(void + 1)
    else:
        label.masked_fill_(thing, void)
    label = label.view(h, w)
    num_labels = void + 1 + num_seeds

    # -- (5)+(6) full-resolution statistics, minimum areas, final ids
    area, bbox = _segment_stats(label, num_labels, big_f, out_h, out_w)
    labels = torch.arange(num_labels, device=device)
    is_inst_label = labels > void
    keep = (area > 0) & (
        ((labels < num_stuff) & (area >= min_stuff_area)) | (is_inst_label & (area >= min_thing_area))
    )
    # Instances first (already in descending score order), then stuff by class.
    order = torch.cat([labels[void + 1 :], labels[:num_stuff]])
    order = order[keep[order]]
    lut = torch.zeros(num_labels, dtype=PANOPTIC_DTYPE, device=device)
    lut[order] = torch.arange(1, order.numel() + 1, dtype=PANOPTIC_DTYPE, device=device)
    # index_select on a flat index: several times faster than ``lut[label]``.
    panoptic = torch.index_select(lut, 0, label.view(-1)).view(h, w)
    if big_f > 1:
        panoptic = _upsample_ids(panoptic, big_f, out_h, out_w)

    # Per decode label: original category id and score.
    category = perm[torch.cat([labels[:void], labels.new_zeros(1), seed_class])]
    stuff_score = psi_sum[:void] / area[:void].clamp(min=1)
    if num_seeds > 0 and instance_score != "seed":
        mean_phi = (phi_sum / area[void + 1 :].clamp(min=1)).to(dtype)
        seed_score = mean_phi if instance_score == "mean_phi" else seed_score * mean_phi
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
