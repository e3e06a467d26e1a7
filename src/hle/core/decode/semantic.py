"""Semantic stage of the decoder: class of every decode pixel by argmax of psi (Eq. 9).

This module owns the one pass over the embedding that assigns classes: pixel-major chunks
``[n, D] @ [D, C]`` of the logits of Eq. (9) (:func:`hle.core.kernels.gaussian_linear_form`),
their max-softmax in place, the thing flag, stuff thresholding and the per-class sums of
psi that score stuff segments. Classes are ordered stuff first (:func:`stuff_first`), so
the thing flag is one comparison per pixel.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from hle.core.decode.params import DEFAULT_CHUNK
from hle.core.decode.resolution import copy_into
from hle.core.kernels import gaussian_linear_form


class ClassOrder(NamedTuple):
    """Classes reordered stuff first (stable: each kind keeps its class order).

    Attributes:
        perm: ``[C]`` int64, original class of each reordered class.
        num_stuff: number of stuff classes (reordered classes ``0..num_stuff-1``).
    """

    perm: torch.Tensor
    num_stuff: int


def stuff_first(is_thing: torch.Tensor) -> ClassOrder:
    """The :class:`ClassOrder` of ``is_thing`` (``[C]`` bool)."""
    return ClassOrder(torch.argsort(is_thing.to(torch.uint8), stable=True), int((~is_thing).sum()))


class SemanticAssignment(NamedTuple):
    """Result of :func:`semantic_assignment` over the ``N = h * w`` pixels of a map.

    Attributes:
        label: ``[N]`` int64 class (in the stuff-first order), or ``C`` (void) for a
            stuff pixel whose largest psi is below the stuff threshold.
        thing: ``[N]`` bool, the pixel's class is a thing class.
        psi_sum: ``[C + 1]`` float64 (weighted) sum of the largest psi over the
            pixels of each label, void included.
        embedding: ``[D, h, w]`` contiguous embedding: the input itself, or the copy
            made while reading a strided input.
    """

    label: torch.Tensor
    thing: torch.Tensor
    psi_sum: torch.Tensor
    embedding: torch.Tensor


def exp_first_is_safe(class_sigma: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``exp`` of the Eq. (9) logits can be taken without subtracting their maximum.

    Logits of class c lie in ``[-1/sigma_c^2, 0]``, so the best logit of a pixel is at
    least ``-1/sigma_max^2``; its ``exp`` stays far from underflow in ``dtype`` when that
    is above ``0.69 log(tiny)`` (about -60 in float32 and bfloat16, -6.7 in float16).
    """
    limit = -0.69 * math.log(torch.finfo(dtype).tiny)
    return 1.0 / float(class_sigma.max()) ** 2 < limit


def _max_softmax_(
    block: torch.Tensor, top: torch.Tensor, label: torch.Tensor, sums: torch.Tensor, psi: torch.Tensor, exp_first: bool
) -> None:
    """``label = argmax``, ``psi = max softmax`` of the ``[n, C]`` logits ``block`` (overwritten)."""
    if exp_first:
        torch.max(block.exp_(), dim=1, out=(top, label))
        torch.sum(block, dim=1, out=sums)
        torch.div(top, sums, out=psi)
    else:
        torch.max(block, dim=1, out=(top, label))
        torch.sum(block.sub_(top[:, None]).exp_(), dim=1, out=sums)
        torch.reciprocal(sums, out=psi)


def semantic_assignment(
    embedding: torch.Tensor,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    num_stuff: int,
    *,
    stuff_threshold: float = 0.0,
    logits: torch.Tensor | None = None,
    pixel_weight: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> SemanticAssignment:
    """Class ``argmax_k psi_k(e_i)`` of every pixel (Eq. 9), thing flag, stuff threshold, psi sums.

    One pass over pixel-major chunks: Eq. (9) logits in one ``addmm`` per chunk, their
    max-softmax in place, all chunk buffers allocated once and reused. A strided
    ``embedding`` (the block centres of a full map, a channels-last map) is copied a
    few whole rows at a time just before its chunk is read, so it is read once.

    Args:
        embedding: ``[D, h, w]`` unit embeddings, any strides.
        class_means: ``[C, D]`` class means, ordered stuff first (:func:`stuff_first`).
        class_sigma: ``[C]`` class sigmas, same order.
        num_stuff: classes ``0..num_stuff-1`` are stuff, the others things.
        stuff_threshold: a stuff pixel with largest psi below this (or NaN) becomes void.
        logits: optional ``[C, h, w]`` separate-branch logits (same class order) used
            instead of Eq. (9).
        pixel_weight: optional ``[h * w]`` float64 weight of each pixel in ``psi_sum``.
        chunk: pixels per block (memory / speed only).

    Returns:
        :class:`SemanticAssignment`.
    """
    d, h, w = embedding.shape
    num_pixels, num_classes = h * w, class_means.shape[0]
    device, dtype = embedding.device, embedding.dtype
    dense = embedding if embedding.is_contiguous() else torch.empty((d, h, w), dtype=dtype, device=device)
    if dense is not embedding:
        chunk = max(1, chunk // w) * w  # whole rows
    flat = dense.view(d, num_pixels)
    if logits is None:
        weight, bias = gaussian_linear_form(class_means.to(dtype), class_sigma.to(dtype))
        exp_first = exp_first_is_safe(class_sigma, dtype)
    else:
        flat_logits, exp_first = logits.reshape(num_classes, num_pixels), False
    label = torch.empty(num_pixels, dtype=torch.long, device=device)
    thing = torch.empty(num_pixels, dtype=torch.bool, device=device)
    psi_sum = torch.zeros(num_classes + 1, dtype=torch.float64, device=device)
    n_max = min(chunk, num_pixels)
    # Reused buffers: on CPU a fresh large allocation costs a page fault per 4 KiB on
    # first touch, as much as the arithmetic.
    block_buf = torch.empty(n_max, num_classes, dtype=dtype, device=device)
    top_buf, sum_buf, psi_buf = (torch.empty(n_max, dtype=dtype, device=device) for _ in range(3))
    low_buf = torch.empty(n_max, dtype=torch.bool, device=device)
    for start in range(0, num_pixels, chunk):
        stop = min(start + chunk, num_pixels)
        n = stop - start
        block, psi, low = block_buf[:n], psi_buf[:n], low_buf[:n]
        label_c, thing_c = label[start:stop], thing[start:stop]
        if dense is not embedding:
            copy_into(dense[:, start // w : stop // w], embedding[:, start // w : stop // w])
        if logits is None:
            # flat[:, a:b].T is a transposed view: BLAS reads it without a copy.
            torch.addmm(bias, flat[:, start:stop].transpose(0, 1), weight, out=block)
        else:
            block.copy_(flat_logits[:, start:stop].transpose(0, 1))
        _max_softmax_(block, top_buf[:n], label_c, sum_buf[:n], psi, exp_first)
        torch.ge(label_c, num_stuff, out=thing_c)
        # "not >=" rather than "<": a NaN psi counts as below the threshold.
        torch.ge(psi, stuff_threshold, out=low)
        torch.logical_or(low, thing_c, out=low).logical_not_()
        label_c.masked_fill_(low, num_classes)
        # float64 sums: bincount accumulates in the weights' dtype, and float32 sums of
        # thousands of values near 1 drift by ~1e-4.
        weights = psi.double() if pixel_weight is None else psi.double() * pixel_weight[start:stop]
        psi_sum += torch.bincount(label_c, weights=weights, minlength=num_classes + 1)
    return SemanticAssignment(label, thing, psi_sum, dense)
