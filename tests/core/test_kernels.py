"""Tests for hle.core.kernels against per-element brute-force definitions (float64)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hle.core.kernels import (
    DEFAULT_COORD_SCALE,
    IGNORE_LABEL,
    axis_coordinates,
    check_class_parameters,
    cosine_distance,
    gaussian_linear_form,
    grid_instance_log_kernel,
    instance_kernel,
    instance_linear_form,
    instance_log_kernel,
    normalize_rows,
    pixel_coordinates,
    semantic_logits,
    spatial_features,
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


def test_gaussian_linear_form_is_eq7() -> None:
    emb = _unit(6, 4, 8)
    means = 3.0 * torch.randn(3, 4, generator=torch.Generator().manual_seed(9), dtype=D64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=D64)
    weight, bias = gaussian_linear_form(means, sigma)
    assert weight.shape == (4, 3) and bias.shape == (3,) and weight.is_contiguous()
    log_p = emb @ weight + bias
    for k in range(3):
        mu = means[k] / means[k].norm()
        for i in range(6):
            expected = -(1 - float((emb[i] * mu).sum())) / (2 * float(sigma[k]) ** 2)
            assert abs(float(log_p[i, k]) - expected) < 1e-12


def eq8_reference(emb, coords, means, sigma, centres, ssig) -> torch.Tensor:  # noqa: ANN001
    """log phi of Eq. (8), one (instance, pixel) pair at a time, from the definition."""
    out = torch.empty(means.shape[0], emb.shape[0], dtype=D64)
    for k in range(means.shape[0]):
        mu = means[k] / means[k].norm()
        for i in range(emb.shape[0]):
            d = 1 - float((emb[i] * mu).sum())
            sq = float(((coords[i] - centres[k]) ** 2).sum())
            out[k, i] = -d / (2 * float(sigma[k]) ** 2) - sq / (2 * float(ssig[k]) ** 2)
    return out


def eq8_case(seed: int, h: int = 3, w: int = 4, k: int = 2, d: int = 5, stride: float = 1.0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    coords = pixel_coordinates(h, w, stride=stride, dtype=D64)
    emb = _unit(h * w, d, seed + 1)
    means = torch.randn(k, d, generator=gen, dtype=D64)
    sigma = 0.3 + torch.rand(k, generator=gen, dtype=D64)
    centres = torch.rand(k, 2, generator=gen, dtype=D64) * 0.05 * max(h, w) * stride
    ssig = 0.02 + 0.1 * torch.rand(k, generator=gen, dtype=D64)
    return emb, coords, means, sigma, centres, ssig


def test_instance_kernel_is_eq8() -> None:
    emb, coords, means, sigma, centres, ssig = eq8_case(2)
    expected = eq8_reference(emb, coords, means, sigma, centres, ssig)
    torch.testing.assert_close(instance_log_kernel(emb, coords, means, sigma, centres, ssig), expected,
                               atol=1e-12, rtol=1e-12)
    phi = instance_kernel(emb, coords, means, sigma, centres, ssig)
    torch.testing.assert_close(phi, expected.exp(), atol=1e-12, rtol=1e-12)
    assert bool((phi > 0).all() and (phi <= 1).all())


def test_instance_linear_form_does_not_depend_on_the_origin() -> None:
    emb, coords, means, sigma, centres, ssig = eq8_case(3)
    expected = eq8_reference(emb, coords, means, sigma, centres, ssig)
    for origin in (torch.zeros(2, dtype=D64), torch.tensor([3.0, -2.0], dtype=D64), centres[1]):
        weight = instance_linear_form(means, sigma, centres, ssig, origin)
        assert weight.shape == (5 + 4, 2)
        features = torch.cat([emb, spatial_features(coords, origin)], dim=1)
        torch.testing.assert_close((features @ weight).T, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("stride", [1.0, 2.0])
def test_grid_kernel_equals_dense_kernel(stride: float) -> None:
    emb, coords, means, sigma, centres, ssig = eq8_case(4, h=5, w=7, k=3, d=4, stride=stride)
    grid = coords.view(5, 7, 2)
    got = grid_instance_log_kernel(emb, grid[:, 0, 0], grid[0, :, 1], means, sigma, centres, ssig)
    torch.testing.assert_close(got, instance_log_kernel(emb, coords, means, sigma, centres, ssig),
                               atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got, eq8_reference(emb, coords, means, sigma, centres, ssig), atol=1e-12, rtol=1e-10)


def test_grid_kernel_keeps_float32_precision_far_from_the_centres() -> None:
    # Small spatial sigmas (the network's floor, 0.05) and centres at opposite ends of a
    # 2048-pixel-wide map: expanding |x - c|^2 in float32 would lose ~1e-2 in log phi
    # near each centre. Reference: the definition in float64.
    gen = torch.Generator().manual_seed(5)
    h, w, d = 4, 2048, 6
    rows, cols = axis_coordinates(h), axis_coordinates(w)
    coords = pixel_coordinates(h, w, dtype=D64)
    emb = F.normalize(torch.randn(h * w, d, generator=gen, dtype=D64), dim=1)
    centres = torch.tensor([[0.02, 0.1], [0.03, 31.9]], dtype=D64)
    means = emb[[5, h * w - 7]]
    sigma = torch.tensor([0.3, 0.4], dtype=D64)
    ssig = torch.tensor([0.05, 0.05], dtype=D64)
    expected = eq8_reference(emb, coords, means, sigma, centres, ssig)
    got = grid_instance_log_kernel(emb.float(), rows, cols, means.float(), sigma.float(), centres.float(), ssig.float())
    near = expected > -20  # where phi is not negligible
    assert int(near.sum()) > 20
    torch.testing.assert_close(got.double()[near], expected[near], atol=2e-4, rtol=1e-5)


def test_semantic_logits_are_eq9() -> None:
    emb = _unit(7, 3, 4)
    means = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=D64)
    csig = torch.tensor([0.3, 0.5, 0.7, 1.1], dtype=D64)
    logits = semantic_logits(emb, means, csig)
    assert logits.shape == (4, 7)
    psi = torch.softmax(logits, dim=0)
    for i in range(7):
        log_p = [-(1 - float((emb[i] * means[k] / means[k].norm()).sum())) / (2 * float(csig[k]) ** 2)
                 for k in range(4)]
        p = [math.exp(v) for v in log_p]
        for k in range(4):
            assert abs(float(logits[k, i]) - log_p[k]) < 1e-12
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
    grid = coords.view(2, 3, 2)
    assert torch.autograd.gradcheck(
        lambda e, m, s, c, t: grid_instance_log_kernel(e, grid[:, 0, 0], grid[0, :, 1], m, s, c, t),
        (args[0], *args[2:]),
    )


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
