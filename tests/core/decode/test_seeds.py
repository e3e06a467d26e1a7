"""Tests for hle.core.decode.seeds against brute force: max-pool NMS, the sequential greedy merge."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hle.core.decode import Seeds, decode_grid, find_seeds, gather_seeds, merge_seeds
from hle.core.kernels import instance_kernel


def test_find_seeds_equals_maxpool_nms() -> None:
    gen = torch.Generator().manual_seed(3)
    seed = torch.rand(23, 31, generator=gen)  # continuous: no ties
    allowed = torch.rand(23, 31, generator=gen) > 0.3
    for kernel in (1, 3, 5):
        index, score = find_seeds(seed, allowed, threshold=0.4, kernel=kernel)
        masked = seed * allowed
        pooled = F.max_pool2d(masked[None, None], kernel, 1, kernel // 2)[0, 0]
        ref = torch.nonzero(((pooled == masked) & (masked > 0.4)).reshape(-1)).squeeze(1)
        assert set(index.tolist()) == set(ref.tolist())
        assert torch.all(score[:-1] >= score[1:])
        torch.testing.assert_close(score, seed.reshape(-1)[index])
    index, score = find_seeds(seed, allowed, threshold=0.4, kernel=3, max_seeds=4)
    everything = find_seeds(seed, allowed, threshold=0.4, kernel=3)
    assert torch.equal(index, everything[0][:4]) and torch.equal(score, everything[1][:4])


def test_find_seeds_plateau_gives_one_seed() -> None:
    seed = torch.zeros(8, 8)
    seed[2:5, 3:6] = 0.9
    index, _ = find_seeds(seed, torch.ones(8, 8, dtype=torch.bool), threshold=0.5)
    assert index.tolist() == [2 * 8 + 3]


def test_merge_seeds_equals_sequential_greedy() -> None:
    gen = torch.Generator().manual_seed(4)
    k = 40
    # Few directions and nearby positions so that many pairs merge, in chains.
    base = F.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64), dim=1)
    jitter = 0.3 * torch.randn(k, 6, generator=gen, dtype=torch.float64)
    emb = F.normalize(base[torch.randint(0, 5, (k,), generator=gen)] + jitter, dim=1)
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64)
    sig = torch.rand(k, generator=gen, dtype=torch.float64) * 0.3 + 0.2
    ssig = torch.rand(k, generator=gen, dtype=torch.float64) * 0.5 + 0.2
    ref: list[int] = []
    margins = []
    for j in range(k):  # the sequential rule, one pair at a time, from the formula
        merged = False
        for i in ref:
            d = 1.0 - float(emb[i] @ emb[j])
            log_phi = -d / (2 * float(sig[i]) ** 2) - float(((xy[i] - xy[j]) ** 2).sum()) / (2 * float(ssig[i]) ** 2)
            margins.append(abs(math.exp(log_phi) - 0.5))
            merged |= math.exp(log_phi) > 0.5
        if not merged:
            ref.append(j)
    assert min(margins) > 1e-9  # no decision within rounding of the threshold
    for dtype in (torch.float64, torch.float32):  # float32 seeds are merged in float64 too
        keep = merge_seeds(emb.to(dtype), xy.to(dtype), sig.to(dtype), ssig.to(dtype), threshold=0.5)
        assert torch.nonzero(keep).squeeze(1).tolist() == ref
    assert 1 < len(ref) < k  # the case is not trivial
    assert merge_seeds(emb[:0], xy[:0], sig[:0], ssig[:0], threshold=0.5).shape == (0,)


def test_gather_seeds_reads_embedding_coordinates_and_sigmas_at_the_seeds() -> None:
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(3, 4, 6, generator=gen)  # a 4x6 decode grid of 16x24 maps at f = 4
    sigma, spatial = torch.rand(16, 24, generator=gen), torch.rand(16, 24, generator=gen)
    grid = decode_grid((16, 24), 4, stride=2.0, coord_scale=0.5)
    index = torch.tensor([7, 0, 23])
    coordinates = grid.coordinates(torch.device("cpu"), torch.float32)
    seeds = gather_seeds(index, torch.tensor([0.9, 0.8, 0.7]), emb, coordinates, sigma, spatial, factor=4, mode="sample")
    for k, i in enumerate(index.tolist()):
        r, c = divmod(i, 6)
        assert torch.equal(seeds.embedding[k], emb[:, r, c])
        # Decode pixel (r, c) spans input pixels [8r, 8r + 8) x [8c, 8c + 8).
        torch.testing.assert_close(seeds.coords[k], torch.tensor([(8 * r + 3.5) * 0.5, (8 * c + 3.5) * 0.5]))
        assert seeds.sigma[k] == sigma[4 * r + 2, 4 * c + 2] and seeds.spatial_sigma[k] == spatial[4 * r + 2, 4 * c + 2]
    kept = seeds.select(torch.tensor([True, False, True]))
    assert isinstance(kept, Seeds) and kept.index.tolist() == [7, 23] and torch.equal(kept.coords, seeds.coords[[0, 2]])


def test_merge_seeds_decides_in_float64_far_from_the_seeds_centroid() -> None:
    # Seeds 0 and 1 share an embedding, 31 coordinate units from the image's left edge
    # and ~10 from the mean seed position (seed 2 is far left); small spatial sigmas
    # (0.05). log Phi(0, 1) = log 0.5 + m: merged exactly when m > 0. The expanded
    # quadratic of the linear form loses ~2e-3 in float32 there, more than |m|.
    emb = F.normalize(torch.ones(3, 4), dim=1)
    sigma, spatial = torch.full((3,), 0.3), torch.full((3,), 0.05)
    wrong_in_float32 = 0
    for m in (-4e-4, -1e-4, 1e-4, 4e-4):
        delta = math.sqrt(-(math.log(0.5) + m) * 2 * 0.05**2)
        xy = torch.tensor([[0.2, 31.0], [0.2, 31.0 + delta], [0.2, 0.1]])
        keep = merge_seeds(emb, xy, sigma, spatial, threshold=0.5)
        assert keep.tolist() == [True, m < 0, True], m
        wrong_in_float32 += int((float(instance_kernel(emb, xy, emb, sigma, xy, spatial)[0, 1]) > 0.5) != (m > 0))
    assert wrong_in_float32 > 0  # the case exercises the float64 evaluation
