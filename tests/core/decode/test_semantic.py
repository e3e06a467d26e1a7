"""Tests for hle.core.decode.semantic against the softmax of the kernel's Eq. (9) logits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hle.core.decode import semantic_assignment, stuff_first
from hle.core.decode.semantic import exp_first_is_safe
from hle.core.kernels import semantic_logits

D64 = torch.float64


def reference(emb: torch.Tensor, means: torch.Tensor, sigma: torch.Tensor, num_stuff: int, threshold: float,
              weight: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> tuple:
    """Label (void = C), thing flag, (weighted) psi sums and top-2 logit margin, from the
    dense softmax of ``kernels.semantic_logits`` (or of the given logits)."""
    c = means.shape[0]
    if logits is None:
        flat = semantic_logits(emb.reshape(emb.shape[0], -1).T, means, sigma)
    else:
        flat = logits.reshape(c, -1)
    psi = torch.softmax(flat, dim=0)
    best, label = psi.max(dim=0)
    thing = label >= num_stuff
    label = torch.where(thing | (best >= threshold), label, c)
    top2 = flat.topk(2, dim=0).values
    sums = torch.bincount(label, weights=best * (1 if weight is None else weight), minlength=c + 1)
    return label, thing, sums, top2[0] - top2[1], best


@pytest.mark.parametrize("sigma_scale", [0.3, 0.02], ids=["exp-first", "max-subtracted"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_semantic_assignment_equals_softmax_of_kernel_logits(sigma_scale: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    c, d, h, w, num_stuff = 7, 6, 9, 11, 3
    means = torch.randn(c, d, generator=gen, dtype=D64)
    sigma = sigma_scale * (1 + torch.rand(c, generator=gen, dtype=D64))
    assert exp_first_is_safe(sigma, dtype) == (sigma_scale == 0.3)
    emb = F.normalize(torch.randn(d, h, w, generator=gen, dtype=D64), dim=0).to(dtype)
    # A threshold that voids part of the stuff pixels (small sigmas: psi is near 1
    # except near ties, and the median would sit on values that round to 1).
    _, thing, _, _, best = reference(emb.double(), means, sigma, num_stuff, 0.0)
    threshold = min(float(best[~thing].median()), 0.9)
    out = semantic_assignment(emb, means.to(dtype), sigma.to(dtype), num_stuff, stuff_threshold=threshold, chunk=17)
    label, thing, sums, margin, best = reference(emb.double(), means, sigma, num_stuff, threshold)
    # Pixels whose decision is within rounding of a tie or of the threshold may go either way.
    tol = 1e-9 if dtype == D64 else 1e-4
    clear = (margin > tol) & ((best - threshold).abs() > tol)
    assert clear.float().mean() > 0.8 and (label == c).any() and thing.any() and (label < num_stuff).any()
    assert torch.equal(out.label[clear], label[clear])
    assert torch.equal(out.thing[clear], thing[clear])
    torch.testing.assert_close(out.psi_sum, sums, rtol=tol * 10, atol=tol * 100)
    assert out.embedding is emb  # contiguous input: no copy


@pytest.mark.parametrize("layout", ["block-centres", "channels-last"])
def test_strided_embedding_is_copied_and_assigned_alike(layout: str) -> None:
    gen = torch.Generator().manual_seed(3)
    means = torch.randn(5, 4, generator=gen)
    sigma = 0.3 + torch.rand(5, generator=gen)
    full = F.normalize(torch.randn(4, 36, 52, generator=gen), dim=0)
    strided = full[:, 2::4, 2::4] if layout == "block-centres" else full.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert not strided.is_contiguous()
    dense = strided.contiguous()
    for chunk in (11, 60, 32768):  # fewer pixels than a row, about a row, everything
        got = semantic_assignment(strided, means, sigma, 2, stuff_threshold=0.3, chunk=chunk)
        want = semantic_assignment(dense, means, sigma, 2, stuff_threshold=0.3, chunk=chunk)
        assert got.embedding.is_contiguous() and torch.equal(got.embedding, dense)
        assert want.embedding is dense
        _, _, sums, margin, _ = reference(dense, means, sigma, 2, 0.3)
        clear = margin > 1e-4
        assert torch.equal(got.label[clear], want.label[clear])
        torch.testing.assert_close(got.psi_sum, sums.double(), rtol=1e-5, atol=1e-3)


def test_given_logits_replace_eq9_and_pixels_are_weighted() -> None:
    gen = torch.Generator().manual_seed(4)
    c, h, w = 4, 5, 7
    logits = 3 * torch.randn(c, h, w, generator=gen, dtype=D64)
    weight = torch.randint(1, 5, (h * w,), generator=gen).double()
    emb = F.normalize(torch.randn(3, h, w, generator=gen, dtype=D64), dim=0)
    means, sigma = torch.randn(c, 3, generator=gen, dtype=D64), torch.ones(c, dtype=D64)
    out = semantic_assignment(emb, means, sigma, 2, stuff_threshold=0.6, logits=logits, pixel_weight=weight, chunk=8)
    label, thing, sums, _, _ = reference(emb, means, sigma, 2, 0.6, weight=weight, logits=logits)
    assert torch.equal(out.label, label) and torch.equal(out.thing, thing)
    torch.testing.assert_close(out.psi_sum, sums, rtol=1e-12, atol=1e-12)


def test_nan_pixels_are_void_stuff_or_unscored() -> None:
    emb = F.normalize(torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(5)), dim=0)
    emb[:, 1, 1] = float("nan")
    out = semantic_assignment(emb, torch.eye(3), torch.ones(3), 3, stuff_threshold=0.0)
    assert int(out.label[1 * 4 + 1]) == 3  # void
    assert torch.isfinite(out.psi_sum[:3]).all()


def test_stuff_first_is_a_stable_order() -> None:
    order = stuff_first(torch.tensor([True, False, True, False, False]))
    assert order.perm.tolist() == [1, 3, 4, 0, 2] and order.num_stuff == 3
