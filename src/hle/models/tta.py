"""Test-time augmentation of the HLE network: horizontal flip (Sec. 4.2, "test-time flip").

This module owns combining the outputs of an image and of its mirror image. Per-pixel
outputs of the mirrored image are flipped back and averaged with the direct ones; the
averaged embeddings are re-normalised to unit length (a mean of unit vectors is shorter).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hle.core.types import HLEOutputs

__all__ = ["flip_inference", "merge_flipped"]


def merge_flipped(direct: HLEOutputs, flipped: HLEOutputs) -> HLEOutputs:
    """Average ``direct`` with ``flipped`` (the outputs of the mirrored image), mirrored back.

    Embeddings: mean then L2 normalisation; sigmas and seed probabilities: mean; semantic
    logits (if any): mean of the logits.

    Args:
        direct: outputs for ``images`` (all maps ``[B, *, h, w]``).
        flipped: outputs for ``images.flip(-1)``, same shapes.
    """
    if direct.embedding.shape != flipped.embedding.shape:
        raise ValueError(
            "merge_flipped: direct and flipped outputs must have the same shape, got "
            f"{tuple(direct.embedding.shape)} and {tuple(flipped.embedding.shape)}"
        )
    if (direct.semantic_logits is None) != (flipped.semantic_logits is None):
        raise ValueError("merge_flipped: semantic_logits present in only one of the outputs")

    def mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * (a + b.flip(-1))

    logits = None
    if direct.semantic_logits is not None:
        logits = mean(direct.semantic_logits, flipped.semantic_logits)
    return HLEOutputs(
        embedding=F.normalize(mean(direct.embedding, flipped.embedding), dim=1),
        sigma=mean(direct.sigma, flipped.sigma),
        spatial_sigma=mean(direct.spatial_sigma, flipped.spatial_sigma),
        seed=mean(direct.seed, flipped.seed),
        semantic_logits=logits,
    )


def flip_inference(
    model: Callable[..., HLEOutputs], images: torch.Tensor, **forward_kwargs: object
) -> HLEOutputs:
    """Run ``model`` on ``images`` and on their horizontal mirror, and merge the two.

    Both go through the model as one batch of ``2B`` (one pass, BatchNorm in eval mode sees
    the same statistics). ``forward_kwargs`` (e.g. ``upsample=False``) are passed on.

    Args:
        model: callable ``[B, 3, H, W] -> HLEOutputs``, e.g. an :class:`~hle.models.HLENet`
            in eval mode.
        images: ``[B, 3, H, W]``.

    Returns:
        :class:`HLEOutputs` with the shapes ``model`` returns for ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"flip_inference: images must be [B, 3, H, W], got {tuple(images.shape)}")
    batch = images.shape[0]
    out = model(torch.cat([images, images.flip(-1)], dim=0), **forward_kwargs)
    direct = HLEOutputs(*(None if t is None else t[:batch] for t in out))
    flipped = HLEOutputs(*(None if t is None else t[batch:] for t in out))
    return merge_flipped(direct, flipped)
