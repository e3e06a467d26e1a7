"""Seed stage of the decoder: candidate seeds, their properties and greedy merging (Sec. 3.5).

This module owns the step from the seed map to the instances' seeds: local maxima of the
seed map over thing pixels (NMS on the candidates only), the embedding, coordinates and
sigmas read at each seed (:class:`Seeds`), and the greedy merge of seeds that the kernel
Phi of Eq. (8) (:func:`hle.core.kernels.instance_kernel`) says are one instance.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from hle.core.decode.resolution import read_at
from hle.core.kernels import instance_kernel


def find_seeds(
    seed: torch.Tensor,
    allowed: torch.Tensor,
    *,
    threshold: float,
    kernel: int = 3,
    max_seeds: int | None = None,
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
        max_seeds: keep at most this many, the highest scores (``None``: all).

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


class Seeds(NamedTuple):
    """K seeds on the decode grid, sorted by descending score.

    Attributes:
        index: ``[K]`` int64 flat indices into the ``[h, w]`` decode grid.
        score: ``[K]`` seed scores.
        embedding: ``[K, Di]`` instance embeddings at the seeds.
        coords: ``[K, 2]`` (row, col) coordinates of the seeds.
        sigma: ``[K]`` instance sigmas at the seeds.
        spatial_sigma: ``[K]`` spatial sigmas at the seeds.
    """

    index: torch.Tensor
    score: torch.Tensor
    embedding: torch.Tensor
    coords: torch.Tensor
    sigma: torch.Tensor
    spatial_sigma: torch.Tensor

    def select(self, keep: torch.Tensor) -> Seeds:
        """The seeds where ``keep`` (``[K]`` bool, or indices) holds, in order."""
        return Seeds(*(t[keep] for t in self))


def gather_seeds(
    index: torch.Tensor,
    score: torch.Tensor,
    embedding: torch.Tensor,
    coordinates: tuple[torch.Tensor, torch.Tensor],
    sigma: torch.Tensor,
    spatial_sigma: torch.Tensor,
    *,
    factor: int,
    mode: str,
) -> Seeds:
    """The :class:`Seeds` at decode pixels ``index`` (from :func:`find_seeds`).

    Args:
        index, score: ``[K]`` from :func:`find_seeds`.
        embedding: ``[Di, h, w]`` contiguous instance embedding on the decode grid.
        coordinates: ``([h], [w])`` row and column coordinates of the decode pixels
            (:meth:`~hle.core.decode.resolution.DecodeGrid.coordinates`).
        sigma, spatial_sigma: ``[H, W]`` full-resolution maps, read at the seeds as
            ``downsample = factor`` in ``mode`` reduces them (:func:`read_at`).
        factor: ``downsample``; mode: ``downsample_mode``.
    """
    d, _, w = embedding.shape
    rows, cols = index // w, index % w
    row_coord, col_coord = coordinates
    return Seeds(
        index,
        score,
        embedding.view(d, -1)[:, index].transpose(0, 1),
        torch.stack([row_coord[rows], col_coord[cols]], dim=1),
        read_at(sigma, rows, cols, factor, mode).to(embedding.dtype),
        read_at(spatial_sigma, rows, cols, factor, mode).to(embedding.dtype),
    )


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
    stronger seed ``i < j`` has ``Phi(e_i, e_j) > threshold``, with Phi the kernel of
    Eq. (8) centred on seed ``i`` (its embedding, position and sigmas), evaluated in
    float64. The sequential greedy rule is computed as the fixed point of
    ``keep_j = not any_i (keep_i and same_ij)`` over the strictly upper-triangular
    ``[K, K]`` relation (Cluster-NMS): entry ``t`` is final after ``t`` iterations, and
    in practice a handful suffice.

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
    e, xy, s, t = (x.double() for x in (embedding, coords, sigma, spatial_sigma))
    phi = instance_kernel(e, xy, e, s, xy, t)  # [K, K]: row i = seed i as the centre
    same = (phi > threshold).triu(diagonal=1)
    keep = torch.ones(k, dtype=torch.bool, device=embedding.device)
    for _ in range(k):
        new_keep = ~(same & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep
