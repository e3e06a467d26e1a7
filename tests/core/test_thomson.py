"""Tests for hle.core.thomson: Thomson initialisation of class means (Eq. 17)."""
from __future__ import annotations

import itertools

import pytest
import torch

from hle.core.thomson import thomson_energy, thomson_init


def _min_pairwise_distance(points: torch.Tensor) -> float:
    k = points.shape[0]
    dist = 1.0 - points @ points.T
    return float(dist[~torch.eye(k, dtype=torch.bool)].min())


def _random_unit(k: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("k,d", [(19, 12), (133, 128), (8, 3)])
def test_shape_dtype_unit_rows(k: int, d: int) -> None:
    means = thomson_init(k, d)
    assert means.shape == (k, d)
    assert means.dtype == torch.float32
    torch.testing.assert_close(means.norm(dim=1), torch.ones(k), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k,d", [(19, 12), (133, 128), (30, 3)])
def test_min_distance_and_energy_beat_random_init(k: int, d: int) -> None:
    means = thomson_init(k, d, seed=0, dtype=torch.float64)
    for seed in range(5):
        rand = _random_unit(k, d, seed=100 + seed)
        assert _min_pairwise_distance(means) > _min_pairwise_distance(rand)
        assert thomson_energy(means) < thomson_energy(rand)


@pytest.mark.parametrize("k,d", [(4, 3), (3, 2), (13, 12)])
def test_reaches_regular_simplex_when_possible(k: int, d: int) -> None:
    # For K <= D + 1 the minimiser is a regular simplex: every pair has
    # mu_i^T mu_j = -1 / (K - 1), i.e. d_cos = 1 + 1 / (K - 1) (hand-derived optimum).
    means = thomson_init(k, d, dtype=torch.float64)
    dist = 1.0 - means @ means.T
    off = ~torch.eye(k, dtype=torch.bool)
    expected = 1.0 + 1.0 / (k - 1)
    torch.testing.assert_close(dist[off], torch.full((k * (k - 1),), expected, dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_deterministic_for_seed_and_independent_of_global_rng() -> None:
    a = thomson_init(19, 12, seed=3)
    torch.manual_seed(1234)
    torch.randn(10)
    b = thomson_init(19, 12, seed=3)
    c = thomson_init(19, 12, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_energy_matches_pairwise_loop() -> None:
    points = _random_unit(5, 4, seed=0)
    expected = sum(1.0 / (1.0 - float(points[i] @ points[j]))
                   for i, j in itertools.permutations(range(5), 2))
    assert abs(float(thomson_energy(points)) - expected) < 1e-9


def test_single_point_and_zero_steps() -> None:
    one = thomson_init(1, 5)
    assert one.shape == (1, 5)
    torch.testing.assert_close(one.norm(dim=1), torch.ones(1))
    start = thomson_init(6, 4, steps=0)
    torch.testing.assert_close(start.norm(dim=1), torch.ones(6))


@pytest.mark.parametrize("kwargs,word", [
    (dict(num_points=0, dim=3), "num_points"),
    (dict(num_points=3, dim=1), "dim"),
    (dict(num_points=3, dim=3, steps=-1), "steps"),
    (dict(num_points=3, dim=3, lr=0.0), "lr"),
])
def test_invalid_arguments(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        thomson_init(**kwargs)
