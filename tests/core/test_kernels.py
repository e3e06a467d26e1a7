"""Tests for hle.core.kernels against per-element brute-force definitions (float64)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hle.core.kernels import (
    DEFAULT_COORD_SCALE,
    IGNORE_LABEL,
    check_class_parameters,
    cosine_distance,
    gaussian_log_score,
    instance_kernel,
    normalize_rows,
    pixel_coordinates,
    semantic_logits,
    spatial_log_score,
    split_views,
)

D64 = torch.float64


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen, dtype=D64), dim=1)


def test_constants() -> None:
    assert DEFAULT_COORD_SCALE == 1 / 64
    assert IGNORE_LABEL == 255


@pytest.mark.parametrize("stride", [1.0, 2.0, 4.0])
def test_pixel_coordinates_are_pixel_centres_in_input_pixels(stride: float) -> None:
    h, w, scale = 3, 5, 0.25
    coords = pixel_coordinates(h, w, stride=stride, coord_scale=scale, dtype=D64)
    assert coords.shape == (h * w, 2)
    for r in range(h):
        for c in range(w):
            # Centre of map pixel (r, c) covers input pixels [r*stride, (r+1)*stride).
            expected = ((r * stride + (stride - 1) / 2) * scale, (c * stride + (stride - 1) / 2) * scale)
            got = coords[r * w + c].tolist()
            assert got == pytest.approx(expected, abs=1e-12)


def test_pixel_coordinates_default_scale_and_errors() -> None:
    coords = pixel_coordinates(2, 2)
    assert coords.dtype == torch.float32
    torch.testing.assert_close(coords[3], torch.tensor([1 / 64, 1 / 64]))
    with pytest.raises(ValueError, match="positive"):
        pixel_coordinates(0, 3)


def test_normalize_rows() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=D64)
    out = normalize_rows(x)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8], dtype=D64))
    assert bool(torch.isfinite(out).all())


def test_cosine_distance_loops() -> None:
    emb = _unit(6, 4, 0)
    centres = 3.0 * torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=D64)
    out = cosine_distance(emb, centres)
    assert out.shape == (3, 6)
    for k in range(3):
        mu = centres[k] / math.sqrt(float((centres[k] ** 2).sum()))
        for i in range(6):
            assert abs(float(out[k, i]) - (1 - float((emb[i] * mu).sum()))) < 1e-12


def test_gaussian_log_score_eq7() -> None:
    dist = torch.rand(3, 4, dtype=D64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=D64)
    per_centre = gaussian_log_score(dist, sigma)
    per_pixel = gaussian_log_score(dist, sigma[:, None].expand(3, 4))
    for k in range(3):
        for i in range(4):
            expected = -float(dist[k, i]) / (2 * float(sigma[k]) ** 2)
            assert abs(float(per_centre[k, i]) - expected) < 1e-12
            assert abs(float(per_pixel[k, i]) - expected) < 1e-12


def test_spatial_and_instance_kernel_eq8() -> None:
    gen = torch.Generator().manual_seed(2)
    coords = pixel_coordinates(3, 4, dtype=D64)
    emb = _unit(12, 5, 3)
    means = torch.randn(2, 5, generator=gen, dtype=D64)
    sigma = torch.tensor([0.4, 0.9], dtype=D64)
    centres = torch.rand(2, 2, generator=gen, dtype=D64) * 0.05
    ssig = torch.tensor([0.02, 0.1], dtype=D64)
    spatial = spatial_log_score(coords, centres, ssig)
    phi = instance_kernel(emb, coords, means, sigma, centres, ssig)
    for k in range(2):
        mu = means[k] / means[k].norm()
        for i in range(12):
            sq = float(((coords[i] - centres[k]) ** 2).sum())
            assert abs(float(spatial[k, i]) + sq / (2 * float(ssig[k]) ** 2)) < 1e-12
            d = 1 - float((emb[i] * mu).sum())
            expected = math.exp(-d / (2 * float(sigma[k]) ** 2) - sq / (2 * float(ssig[k]) ** 2))
            assert abs(float(phi[k, i]) - expected) < 1e-12
    assert bool((phi > 0).all() and (phi <= 1).all())


def test_semantic_logits_softmax_is_eq9() -> None:
    emb = _unit(7, 3, 4)
    means = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=D64)
    csig = torch.tensor([0.3, 0.5, 0.7, 1.1], dtype=D64)
    psi = torch.softmax(semantic_logits(emb, means, csig), dim=0)
    for i in range(7):
        p = [math.exp(-(1 - float((emb[i] * means[k] / means[k].norm()).sum())) / (2 * float(csig[k]) ** 2))
             for k in range(4)]
        for k in range(4):
            assert abs(float(psi[k, i]) - p[k] / sum(p)) < 1e-12


def test_split_views() -> None:
    e = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(6), dtype=D64)
    same_sem, same_ins = split_views(e, False)
    assert same_sem is e and same_ins is e
    sem, ins = split_views(e, True)
    assert sem.shape == ins.shape == (2, 3, 3, 3)
    for b in range(2):
        for r in range(3):
            for c in range(3):
                v = e[b, :, r, c]
                torch.testing.assert_close(sem[b, :, r, c], v[:3] / v[:3].norm())
                torch.testing.assert_close(ins[b, :, r, c], v[3:] / v[3:].norm())
    with pytest.raises(ValueError, match="even"):
        split_views(torch.randn(1, 5, 2, 2), True)


def test_kernel_gradcheck() -> None:
    coords = pixel_coordinates(2, 3, dtype=D64)
    gen = torch.Generator().manual_seed(7)
    args = (
        F.normalize(torch.randn(6, 3, generator=gen, dtype=D64), dim=1).requires_grad_(),
        coords,
        torch.randn(2, 3, generator=gen, dtype=D64).requires_grad_(),
        (0.5 + torch.rand(2, generator=gen, dtype=D64)).requires_grad_(),
        (0.02 * torch.rand(2, 2, generator=gen, dtype=D64)).requires_grad_(),
        (0.02 + 0.02 * torch.rand(2, generator=gen, dtype=D64)).requires_grad_(),
    )
    assert torch.autograd.gradcheck(instance_kernel, args)
    assert torch.autograd.gradcheck(semantic_logits, (args[0], args[2], args[3]))


@pytest.mark.parametrize(
    ("means", "sigma", "is_thing", "message"),
    [
        (torch.zeros(3, 5), torch.ones(3), torch.zeros(3, dtype=torch.bool), r"class_means must be \[C, D\] with D=4, got \(3, 5\)"),
        (torch.zeros(3, 4), torch.ones(2), torch.zeros(3, dtype=torch.bool), r"class_sigma must be \[C\] = \(3,\), got \(2,\)"),
        (torch.zeros(3, 4), torch.ones(3), torch.zeros(3), r"is_thing must be a bool \[C\] = \(3,\) tensor, got \(3,\) torch.float32"),
    ],
)
def test_check_class_parameters_names_caller_tensor_and_shapes(means, sigma, is_thing, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="^my_caller: " + message):
        check_class_parameters("my_caller", means, sigma, is_thing, 4)
    assert check_class_parameters("ok", torch.zeros(3, 4), torch.ones(3), torch.zeros(3, dtype=torch.bool), 4) == 3
