"""Tests of hle.models.tta: flip test-time augmentation against hand-built outputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hle.core.types import HLEOutputs
from hle.models import HLENet, flip_inference, merge_flipped


class KnownModel(nn.Module):
    """Outputs are simple functions of the input pixels, so the expected TTA result can be
    written down per pixel: embedding = normalise(first D channels), sigma = 1 + x0^2,
    spatial sigma = 2 + x1^2, seed = sigmoid(x2), logits = x[:, :2] * 3."""

    def forward(self, x: torch.Tensor, upsample: bool = True) -> HLEOutputs:
        return HLEOutputs(
            embedding=F.normalize(x, dim=1),
            sigma=1 + x[:, :1] ** 2,
            spatial_sigma=2 + x[:, 1:2] ** 2,
            seed=torch.sigmoid(x[:, 2:3]),
            semantic_logits=x[:, :2] * 3,
        )


def test_flip_inference_against_per_pixel_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    out = flip_inference(KnownModel(), x)
    # A per-pixel model commutes with mirroring: the flipped-back output of the mirrored
    # image is the plain output again, so their average (re-normalised) is the plain output.
    ref = KnownModel()(x)
    for a, b in zip(out, ref):
        assert torch.allclose(a, b)


class ColumnModel(nn.Module):
    """A model that is not flip-equivariant: outputs depend on the absolute column index."""

    def forward(self, x: torch.Tensor) -> HLEOutputs:
        b, _, h, w = x.shape
        col = torch.arange(w, dtype=x.dtype).expand(b, 1, h, w)
        emb = torch.cat([torch.ones_like(col), col], dim=1)  # direction depends on column
        emb = emb / emb.norm(dim=1, keepdim=True)
        return HLEOutputs(emb, 1 + col, 2 + col, 1 / (2 + col), None)


def test_flip_inference_hand_computed_column_model() -> None:
    w = 4
    x = torch.zeros(1, 3, 2, w, dtype=torch.float64)
    out = flip_inference(ColumnModel(), x)
    for c in range(w):
        m = w - 1 - c  # the mirrored column
        e1 = torch.tensor([1.0, c], dtype=torch.float64) / (1 + c * c) ** 0.5
        e2 = torch.tensor([1.0, m], dtype=torch.float64) / (1 + m * m) ** 0.5
        e = (e1 + e2) / (e1 + e2).norm()
        assert torch.allclose(out.embedding[0, :, 0, c], e)
        assert math.isclose(float(out.sigma[0, 0, 1, c]), 1 + (c + m) / 2)
        assert math.isclose(float(out.spatial_sigma[0, 0, 1, c]), 2 + (c + m) / 2)
        assert math.isclose(float(out.seed[0, 0, 0, c]), (1 / (2 + c) + 1 / (2 + m)) / 2)
    assert out.semantic_logits is None


def test_flip_inference_equivariance_with_real_network() -> None:
    torch.manual_seed(0)
    model = HLENet("tiny", num_classes=3, embedding_dim=4, semantic_branch=True).eval()
    x = torch.randn(2, 3, 33, 50)
    with torch.no_grad():
        a = flip_inference(model, x.flip(-1))
        b = flip_inference(model, x)
        low = flip_inference(model, x, upsample=False)
    for ta, tb in zip(a, b):
        assert torch.allclose(ta, tb.flip(-1), atol=1e-5)
    assert torch.allclose(b.embedding.norm(dim=1), torch.ones(2, 33, 50), atol=1e-5)
    assert b.semantic_logits.shape == (2, 3, 33, 50)
    assert low.embedding.shape == (2, 4, 17, 25)


def test_merge_flipped_errors() -> None:
    a = ColumnModel()(torch.zeros(1, 3, 2, 4))
    b = ColumnModel()(torch.zeros(1, 3, 2, 5))
    with pytest.raises(ValueError, match=r"same shape, got \(1, 2, 2, 4\) and \(1, 2, 2, 5\)"):
        merge_flipped(a, b)
    with pytest.raises(ValueError, match="semantic_logits present in only one"):
        merge_flipped(a, a._replace(semantic_logits=torch.zeros(1, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\], got \(3, 2, 4\)"):
        flip_inference(ColumnModel(), torch.zeros(3, 2, 4))
