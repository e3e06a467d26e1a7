"""Instance stage of the decoder: each thing pixel joins the seed of highest Phi (Eq. 8).

This module owns the per-pixel instance assignment: the thing (candidate) pixels are scored
against all K seeds at once with the linear form of Eq. (8)
(:func:`hle.core.kernels.instance_linear_form`), one ``[n, D+4] @ [D+4, K]`` matmul per
chunk of candidates, so memory is ``O(chunk x K)`` and no pixel outside the things is read.
"""
from __future__ import annotations

import math

import torch

from hle.core.decode.params import DEFAULT_CHUNK
from hle.core.decode.seeds import Seeds
from hle.core.kernels import SPATIAL_FEATURES, instance_linear_form


def assign_instances(
    embedding: torch.Tensor,
    candidates: torch.Tensor,
    seeds: Seeds,
    coordinates: tuple[torch.Tensor, torch.Tensor],
    *,
    threshold: float,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Instance of each candidate pixel: the seed of highest Phi, if above ``threshold``.

    ``log Phi_k`` is linear in the features ``[e, rho, |rho|^2, 1]``
    (:func:`hle.core.kernels.spatial_features`; ``rho`` relative to the seeds' mean
    position, so the cancelling quadratic terms stay small): each chunk's features are
    gathered from the map into one reused channel-major buffer and scored against all
    seeds with one matmul.

    Args:
        embedding: ``[Di, h, w]`` contiguous unit instance embeddings.
        candidates: ``[n]`` int64 flat indices into ``[h, w]`` of the pixels to assign.
        seeds: K :class:`Seeds` (their ``embedding``, ``coords``, ``sigma``, ``spatial_sigma``).
        coordinates: ``([h], [w])`` row and column coordinates of the map's pixels.
        threshold: a pixel joins an instance when ``Phi > threshold`` (a NaN Phi never does).
        chunk: pixels per matmul block (memory / speed only).

    Returns:
        ``(instance [n] int64 in -1..K-1 with -1 = none, log_phi [n] best log Phi <= 0)``.
    """
    d, _, w = embedding.shape
    n, k = candidates.numel(), seeds.index.numel()
    device, dtype = embedding.device, embedding.dtype
    if k == 0 or n == 0:
        none = torch.full((n,), -1, dtype=torch.long, device=device)
        return none, torch.full((n,), -math.inf, device=device, dtype=dtype)
    flat = embedding.view(d, -1)
    row_coord, col_coord = coordinates
    origin = seeds.coords.mean(dim=0)
    weight = instance_linear_form(seeds.embedding, seeds.sigma, seeds.coords, seeds.spatial_sigma, origin)
    instance = torch.empty(n, dtype=torch.long, device=device)
    best = torch.empty(n, dtype=dtype, device=device)
    n_max, num_features = min(chunk, n), d + SPATIAL_FEATURES
    feature_buf = torch.empty(num_features * n_max, dtype=dtype, device=device)
    score_buf = torch.empty(n_max, k, dtype=dtype, device=device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        index = candidates[start:stop]
        rows = torch.div(index, w, rounding_mode="floor")
        # Channel-major [D+4, m]: every row is written by one gather or one pass.
        features = feature_buf[: num_features * (stop - start)].view(num_features, stop - start)
        torch.index_select(flat, 1, index, out=features[:d])
        torch.index_select(row_coord, 0, rows, out=features[d])
        torch.index_select(col_coord, 0, index - rows * w, out=features[d + 1])
        features[d : d + 2] -= origin[:, None]
        torch.mul(features[d], features[d], out=features[d + 2])
        features[d + 2].addcmul_(features[d + 1], features[d + 1])
        features[d + 3] = 1.0
        scores = score_buf[: stop - start]
        torch.mm(features.transpose(0, 1), weight, out=scores)
        torch.max(scores, dim=1, out=(best[start:stop], instance[start:stop]))
    # The exponent is <= 0 in exact arithmetic; clamped so Phi stays in (0, 1].
    best.clamp_(max=0.0)
    log_threshold = math.log(threshold) if threshold > 0 else -math.inf
    # "not >" rather than "<=": a NaN score joins no instance.
    instance.masked_fill_(~(best > log_threshold), -1)
    return instance, best
