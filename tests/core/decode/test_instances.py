"""Tests for hle.core.decode.instances against the dense kernel of Eq. (8)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hle.core.decode import Seeds, assign_instances
from hle.core.kernels import axis_coordinates, instance_kernel

D64 = torch.float64


def case(dtype: torch.dtype = D64, k: int = 7) -> tuple:
    """A random 15x20 map, 200 random candidate pixels and K seeds near some of them."""
    gen = torch.Generator().manual_seed(5)
    d, h, w = 8, 15, 20
    emb = F.normalize(torch.randn(d, h, w, generator=gen, dtype=D64), dim=0)
    rows, cols = axis_coordinates(h, coord_scale=1.0, dtype=D64), axis_coordinates(w, coord_scale=1.0, dtype=D64)
    candidates = torch.randperm(h * w, generator=gen)[:200]
    at = candidates[:k]
    seeds = Seeds(
        index=at,
        score=torch.linspace(0.9, 0.5, k, dtype=D64),
        embedding=F.normalize(emb.view(d, -1)[:, at].T + 0.1, dim=1),
        coords=torch.stack([rows[at // w], cols[at % w]], dim=1),
        sigma=torch.rand(k, dtype=D64, generator=gen) + 0.5,
        spatial_sigma=torch.rand(k, dtype=D64, generator=gen) * 5 + 3,
    )
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return cast(emb), candidates, Seeds(*(cast(t) for t in seeds)), (cast(rows), cast(cols))


@pytest.mark.parametrize("dtype", [D64, torch.float32])
def test_assign_instances_equals_dense_kernel(dtype: torch.dtype) -> None:
    emb, candidates, seeds, (rows, cols) = case(dtype)
    w = cols.numel()
    inst, log_phi = assign_instances(emb, candidates, seeds, (rows, cols), threshold=0.3, chunk=64)
    # Reference in float64: the dense kernel over the gathered candidates.
    e = emb.double().view(emb.shape[0], -1)[:, candidates].T
    xy = torch.stack([rows.double()[candidates // w], cols.double()[candidates % w]], dim=1)
    phi = instance_kernel(e, xy, seeds.embedding.double(), seeds.sigma.double(), seeds.coords.double(),
                          seeds.spatial_sigma.double())                                      # [K, N]
    top = phi.topk(2, dim=0).values
    ref_best, ref_arg = phi.max(dim=0)
    expected = torch.where(ref_best > 0.3, ref_arg, -1)
    tol = 1e-9 if dtype == D64 else 1e-4
    torch.testing.assert_close(log_phi.double().exp(), ref_best, rtol=tol, atol=tol)
    # Pixels within rounding of a tie between two seeds or of the threshold may go either way.
    clear = (top[0] - top[1] > tol) & ((ref_best - 0.3).abs() > tol)
    assert clear.float().mean() > 0.95
    assert torch.equal(inst[clear], expected[clear])
    assert 0 < int((expected >= 0).sum()) < candidates.numel() and len(set(expected.tolist())) > 3
    assert float(log_phi.max()) <= 0.0


def test_chunks_do_not_change_the_assignment() -> None:
    emb, candidates, seeds, coords = case()
    reference = assign_instances(emb, candidates, seeds, coords, threshold=0.3)
    for chunk in (1, 3, 64, 199, 10_000):
        inst, log_phi = assign_instances(emb, candidates, seeds, coords, threshold=0.3, chunk=chunk)
        torch.testing.assert_close(log_phi, reference[1], rtol=1e-12, atol=1e-12)
        assert torch.equal(inst, reference[0])


def test_no_seeds_or_no_candidates() -> None:
    emb, candidates, seeds, coords = case()
    no_seeds = seeds.select(torch.zeros(7, dtype=torch.bool))
    inst, log_phi = assign_instances(emb, candidates, no_seeds, coords, threshold=0.5)
    assert (inst == -1).all() and (log_phi == -math.inf).all() and inst.shape == candidates.shape
    inst, log_phi = assign_instances(emb, candidates[:0], seeds, coords, threshold=0.5)
    assert inst.shape == log_phi.shape == (0,)


def test_threshold_zero_claims_every_pixel_and_nan_claims_none() -> None:
    emb, candidates, seeds, coords = case()
    emb[:, 0, :] = float("nan")
    inst, _ = assign_instances(emb, candidates, seeds, coords, threshold=0.0)
    nan_row = candidates < emb.shape[2]
    assert nan_row.any() and (inst[nan_row] == -1).all() and (inst[~nan_row] >= 0).all()
