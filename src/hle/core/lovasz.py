"""Lovász extension of the Jaccard (IoU) loss: binary, hinge and softmax forms.

This module owns the Lovász losses of Berman et al. (CVPR 2018) as used by the paper's
Eq. (3)-(6): the sorted-error gradient of the Jaccard loss (:func:`lovasz_grad`), a batched
core that evaluates many masks at once (:func:`lovasz_rows`, one sort for all rows, no
Python loop over classes or instances), and the familiar wrappers :func:`lovasz_hinge`,
:func:`lovasz_binary` and :func:`lovasz_softmax` with the reference implementation's
``per_image`` / ``ignore`` / ``classes`` semantics. Everything is a pure function of tensors.

The batched core prunes exactly: once every foreground pixel of a row has been passed in
the error-sorted order the intersection is empty, the Jaccard loss stays at 1 and every
later pixel has zero weight. So background pixels whose error is below the smallest
foreground error contribute nothing to the value or the gradient and are dropped before
sorting. For instance masks (small objects, large images) this removes most of the sort.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "lovasz_grad",
    "lovasz_rows",
    "lovasz_binary_rows",
    "lovasz_softmax_rows",
    "lovasz_binary",
    "lovasz_hinge",
    "lovasz_softmax",
]

# Compacting the kept pixels costs a few passes over [M, P]; it only pays off when it
# shrinks the sort substantially.
_COMPACT_FRACTION = 0.5


def lovasz_grad(gt_sorted: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors.

    For labels sorted by decreasing error, entry ``i`` is ``Delta_i`` of Eq. (5):
    ``J(pi_1..pi_i) - J(pi_1..pi_{i-1})`` where ``J = 1 - IoU`` when exactly the first
    ``i`` pixels are mispredicted, and ``J(empty) = 0``. Computed in closed form (a
    foreground step adds ``1 / union``, a background step
    ``intersection / (union_before * union_after)``) instead of differencing cumulative
    Jaccard values, which loses precision for large P in float32.

    Args:
        gt_sorted: ``[..., P]`` binary labels (bool or 0/1 numbers) sorted by decreasing
            error along the last dimension; leading dimensions are independent rows.
        dtype: result dtype (default: the input's if floating point, else float32).

    Returns:
        ``[..., P]`` tensor of weights.
    """
    if gt_sorted.dim() == 0:
        raise ValueError("lovasz_grad: gt_sorted must have at least one dimension, got a scalar")
    if dtype is None:
        dtype = gt_sorted.dtype if gt_sorted.is_floating_point() else torch.float32
    p = gt_sorted.shape[-1]
    if p == 0:
        return gt_sorted.to(dtype)
    # Counts stay exact in float32 up to 2^24 pixels per row; beyond that (or for a
    # float64 result) use float64. Half types could not even count to 4096.
    count_dtype = torch.float64 if dtype == torch.float64 or p >= 2 ** 24 else torch.float32
    fg = gt_sorted.to(count_dtype)
    cum_fg = fg.cumsum(-1)
    gts = cum_fg[..., -1:]
    position = torch.arange(1, p + 1, dtype=count_dtype, device=fg.device)
    inter = gts - cum_fg                                  # ground truth not yet mispredicted
    union = inter + position                              # = gts + background so far
    fg_step = 1.0 / union
    bg_step = inter / ((union - 1.0 + fg) * union)
    # Empty ground truth: the first pixel takes J from 0 to 1 (0 / 0 above), later ones
    # add nothing (inter = 0).
    bg_step[..., 0] = torch.where(gts[..., 0] > 0, bg_step[..., 0], 1.0)
    return torch.where(fg > 0, fg_step, bg_step).to(dtype)


def _as_row_mask(mask: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    if mask.dtype != torch.bool:
        raise TypeError(f"lovasz_rows: {name} must be a bool tensor, got {mask.dtype}")
    if mask.dim() == 1:
        mask = mask[None, :]
    if mask.dim() != 2 or mask.shape[-1] != shape[-1] or mask.shape[0] not in (1, shape[0]):
        raise ValueError(
            f"lovasz_rows: {name} must be [P] or [M, P] with M={shape[0]}, P={shape[1]}, "
            f"got {tuple(mask.shape)}")
    return mask.expand(shape)


def _prune(err: torch.Tensor, fg: torch.Tensor, fg_rows: torch.Tensor,
           fg_cols: torch.Tensor) -> torch.Tensor:
    """``[M, P]`` bool mask of the pixels that can carry a non-zero Lovász weight.

    With foreground in the row, background pixels whose error is below the smallest
    foreground error come after every foreground pixel in the sorted order, where the
    intersection is empty and the weight is 0. Without foreground only the largest
    error matters (the first false positive takes the Jaccard loss from 0 to 1).
    Ties are free to go either way: the extension's value does not depend on them.
    """
    m = err.shape[0]
    # Smallest foreground error per row via the foreground indices (``fg.nonzero()``):
    # work on the (usually few) foreground pixels instead of a masked [M, P] float copy.
    min_fg = err.new_full((m,), torch.finfo(err.dtype).max).scatter_reduce(
        0, fg_rows, err[fg_rows, fg_cols], "amin")
    keep = err > min_fg[:, None]
    keep.logical_or_(fg)
    has_fg = torch.bincount(fg_rows, minlength=m) > 0
    if not bool(has_fg.all()):
        max_err = err.amax(-1, keepdim=True)
        keep = torch.where(has_fg[:, None], keep, (err >= max_err) & (err > 0))
    return keep


class _LovaszRows(torch.autograd.Function):
    """Row-wise Lovász extension whose backward scatters the saved sorted weights.

    The extension is piecewise linear: its gradient w.r.t. the error of the pixel at
    sorted position i is ``Delta_i``. Saving (column, weight) pairs of the sorted pixels
    and scattering them in backward avoids an autograd graph through masking,
    compaction, sort and gather, each of which would cost passes over ``[M, P]``.

    ``values`` are the errors themselves, or with ``on_probas`` foreground probabilities
    whose errors are ``1 - p`` / ``p`` (Eq. 4, gradient sign -1 / +1).
    """

    @staticmethod
    def forward(ctx, values: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor | None,  # type: ignore[override]
                prune: bool, on_probas: bool) -> torch.Tensor:
        m, p = values.shape
        ctx.shape = (m, p)
        if valid is not None:
            fg = fg & valid
        fg_rows, fg_cols = fg.nonzero(as_tuple=True)
        # Eq. (4): 1 - p on foreground, p on background. One new [M, P] tensor changed in
        # place at the (usually few) foreground pixels: fresh [M, P] float allocations
        # dominate the cost at image size.
        errors = values.clone()
        if on_probas:
            errors[fg_rows, fg_cols] = 1.0 - values[fg_rows, fg_cols]
        if valid is not None:
            # Invalid pixels become error-0 background: sorted last, weightless.
            errors.masked_fill_(~valid, 0.0)
        real = valid
        if prune:
            keep = _prune(errors, fg, fg_rows, fg_cols)
            rows, cols = keep.nonzero(as_tuple=True)
            counts = torch.bincount(rows, minlength=m)
            width = int(counts.max())
        if prune and width < _COMPACT_FRACTION * p:
            # nonzero is row-major, so a pixel's slot is its rank inside its row.
            starts = counts.cumsum(0) - counts
            slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
            index = (rows, slot)
            errors = errors.new_zeros(m, width).index_put_(index, errors[rows, cols])
            fg = fg.new_zeros(m, width).index_put_(index, fg[rows, cols])
            cols_c = cols.new_zeros(m, width).index_put_(index, cols)
            real = torch.arange(width, device=errors.device)[None, :] < counts[:, None]
        else:
            cols_c = None
        errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
        fg_sorted = torch.gather(fg, -1, perm)
        grad = lovasz_grad(fg_sorted, errors.dtype)
        loss = (errors_sorted * grad).sum(-1)
        if real is not None:
            # Padding and invalid pixels get no gradient (in the compact layout padding
            # points at column 0 and scatter_add adds its 0 there harmlessly).
            grad = grad * torch.gather(real.expand(errors.shape), -1, perm)
        if on_probas:
            grad = torch.where(fg_sorted, -grad, grad)
        cols_sorted = perm if cols_c is None else torch.gather(cols_c, -1, perm)
        ctx.save_for_backward(cols_sorted, grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):  # type: ignore[override]
        cols_sorted, grad = ctx.saved_tensors
        out = grad.new_zeros(ctx.shape).scatter_add_(-1, cols_sorted, grad * grad_loss[:, None])
        return out, None, None, None, None


def _rows_call(values: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None,
               prune: bool, on_probas: bool, name: str) -> torch.Tensor:
    if values.dim() != 2:
        raise ValueError(f"{name}: {'probas' if on_probas else 'errors'} must be [M, P], "
                         f"got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise TypeError(f"{name}: expected floating point values, got {values.dtype}")
    fg = _as_row_mask(labels, values.shape, "labels")
    if valid is not None:
        valid = _as_row_mask(valid, values.shape, "valid")
    m, p = values.shape
    if m == 0 or p == 0:
        return values.sum(-1) * 0.0
    return _LovaszRows.apply(values, fg, valid, prune, on_probas)


def lovasz_rows(
    errors: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    prune: bool = True,
) -> torch.Tensor:
    """Lovász extension of the Jaccard loss for M masks at once (Eq. 3 on given errors).

    Row ``m`` evaluates ``sum_i xi_{pi_i} Delta_i`` over the valid pixels of that row,
    with one sort for all rows. Invalid pixels (and, when pruning, background pixels
    below the row's smallest foreground error) become error 0, label 0 padding that
    sorts last and changes neither the value nor the gradient.

    Args:
        errors: ``[M, P]`` non-negative errors xi (e.g. ``|t - p|`` or a ReLU'd hinge).
        labels: ``[M, P]`` bool ground-truth masks.
        valid: optional ``[P]`` (shared) or ``[M, P]`` bool mask of pixels taking part.
        prune: drop pixels that provably carry zero weight before sorting (exact).

    Returns:
        ``[M]`` losses; a row with no valid pixel gives 0 with zero gradient. A row with
        no foreground gives its largest error (Jaccard loss 1 for any false positive).
        Differentiable once w.r.t. ``errors`` (the extension is piecewise linear).
    """
    return _rows_call(errors, labels, valid, prune, False, "lovasz_rows")


def lovasz_binary_rows(
    probas: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    prune: bool = True,
) -> torch.Tensor:
    """Binary Lovász loss on probabilities (Eq. 3-5) for M masks at once.

    Args:
        probas: ``[M, P]`` foreground probabilities p in [0, 1].
        labels: ``[M, P]`` bool ground truth t.
        valid: optional ``[P]`` or ``[M, P]`` bool mask of pixels taking part.
        prune: as in :func:`lovasz_rows`.

    Returns:
        ``[M]`` losses with errors ``xi = 1 - p`` on foreground, ``p`` on background (Eq. 4).
    """
    return _rows_call(probas, labels, valid, prune, True, "lovasz_binary_rows")


def _class_list(classes: str | Sequence[int], num_classes: int) -> list[int] | None:
    """Explicit class list, or None for "present"/"all" (every channel)."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of ints, got {classes!r}")
        return None
    out = [int(c) for c in classes]
    if num_classes > 1 and any(c < 0 or c >= num_classes for c in out):
        raise ValueError(f"classes must lie in [0, {num_classes}), got {out}")
    if num_classes == 1 and len(out) != 1:
        raise ValueError(f"classes: a single-channel input needs exactly one class, got {out}")
    return out


def lovasz_softmax_rows(
    probas: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
    classes: str | Sequence[int] = "present",
) -> torch.Tensor:
    """Lovász-softmax (Eq. 6) for G independent groups of pixels, all classes batched.

    Each group (an image, or the whole batch flattened) gives the mean over its selected
    classes of the binary loss of ``p^c`` against ``t^c``. ``classes="present"`` keeps
    the classes that occur among the group's valid pixels; a group with none gives 0.

    Args:
        probas: ``[G, C, P]`` class probabilities.
        labels: ``[G, P]`` integer labels (values outside the valid mask are never read).
        valid: optional ``[G, P]`` bool mask of pixels taking part.
        classes: ``"present"``, ``"all"`` or a list of class ids. With a single channel
            (``C == 1``) a one-element list names the label that channel predicts.

    Returns:
        ``[G]`` losses.
    """
    if probas.dim() != 3:
        raise ValueError(f"lovasz_softmax_rows: probas must be [G, C, P], got {tuple(probas.shape)}")
    g, c, p = probas.shape
    if labels.shape != (g, p):
        raise ValueError(
            f"lovasz_softmax_rows: labels must be [G, P] = {(g, p)}, got {tuple(labels.shape)}")
    if valid is not None and valid.shape != (g, p):
        raise ValueError(
            f"lovasz_softmax_rows: valid must be [G, P] = {(g, p)}, got {tuple(valid.shape)}")
    chosen = _class_list(classes, c)
    if chosen is None:
        class_ids = torch.arange(c, device=probas.device)
        pred = probas
    else:
        class_ids = torch.tensor(chosen, device=probas.device, dtype=torch.int64)
        pred = probas.index_select(1, class_ids if c > 1 else torch.zeros_like(class_ids))
    k = class_ids.numel()
    fg = labels[:, None, :] == class_ids[None, :, None]          # [G, K, P]
    if valid is not None:
        fg &= valid[:, None, :]
        row_valid = valid[:, None, :].expand(g, k, p).reshape(g * k, p)
    else:
        row_valid = None
    fg_rows, pred_rows = fg.reshape(g * k, p), pred.reshape(g * k, p)
    if classes == "present":
        weight = fg_rows.any(-1)
        if bool(weight.all()):
            losses = lovasz_binary_rows(pred_rows, fg_rows, row_valid)
        else:
            # Absent classes are skipped outright rather than sorted and multiplied by 0;
            # the 0 * sum keeps the graph connected when nothing at all is present.
            rows = weight.nonzero(as_tuple=True)[0]
            selected = lovasz_binary_rows(pred_rows[rows], fg_rows[rows],
                                          None if row_valid is None else row_valid[rows])
            losses = (pred.sum() * 0.0).expand(g * k).index_put((rows,), selected)
        weight = weight.to(losses.dtype)
    else:
        losses = lovasz_binary_rows(pred_rows, fg_rows, row_valid)
        weight = torch.ones_like(losses)
    losses, weight = losses.reshape(g, k), weight.reshape(g, k)
    return (losses * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)


def _flatten_binary(
    scores: torch.Tensor, labels: torch.Tensor, ignore: int | None, name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if scores.dim() not in (2, 3):
        raise ValueError(f"{name}: scores must be [B, H, W] or [B, N], got {tuple(scores.shape)}")
    if labels.shape != scores.shape:
        raise ValueError(
            f"{name}: labels must match scores {tuple(scores.shape)}, got {tuple(labels.shape)}")
    flat_scores = scores.reshape(scores.shape[0], -1)
    flat_labels = labels.reshape(labels.shape[0], -1)
    valid = None if ignore is None else flat_labels != ignore
    allowed = (flat_labels == 0) | (flat_labels == 1)
    if valid is not None:
        allowed = allowed | ~valid
    if not bool(allowed.all()):
        raise ValueError(f"{name}: labels must be 0 or 1 (or the ignore value {ignore})")
    return flat_scores, flat_labels == 1, valid


def _binary_reduce(
    values: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor | None, per_image: bool,
    on_probas: bool = False,
) -> torch.Tensor:
    rows = lovasz_binary_rows if on_probas else lovasz_rows
    if per_image:
        return rows(values, fg, valid).mean()
    valid = None if valid is None else valid.reshape(1, -1)
    return rows(values.reshape(1, -1), fg.reshape(1, -1), valid)[0]


def lovasz_hinge(
    logits: torch.Tensor,
    labels: torch.Tensor,
    per_image: bool = True,
    ignore: int | None = None,
) -> torch.Tensor:
    """Binary Lovász hinge loss on real-valued scores (Berman et al., Sec. 3.1).

    Errors are ``max(0, 1 - logit * sign)`` with sign +1 on foreground, -1 on background.

    Args:
        logits: ``[B, H, W]`` or ``[B, N]`` scores (positive means foreground).
        labels: same shape, values 0/1 (or ``ignore``).
        per_image: loss per image then mean over the batch; else one loss over all pixels.
        ignore: label value excluded from the loss.

    Returns:
        Scalar loss.
    """
    scores, fg, valid = _flatten_binary(logits, labels, ignore, "lovasz_hinge")
    signs = fg.to(scores.dtype) * 2.0 - 1.0
    # ReLU before sorting: negative errors carry zero weight wherever they sort.
    errors = torch.relu(1.0 - scores * signs)
    return _binary_reduce(errors, fg, valid, per_image)


def lovasz_binary(
    probas: torch.Tensor,
    labels: torch.Tensor,
    per_image: bool = True,
    ignore: int | None = None,
) -> torch.Tensor:
    """Binary Lovász loss on probabilities, ``LovaszBinary(p, t)`` of Eq. (3)-(5).

    Args:
        probas: ``[B, H, W]`` or ``[B, N]`` foreground probabilities in [0, 1].
        labels: same shape, values 0/1 (or ``ignore``).
        per_image: loss per image then mean over the batch; else one loss over all pixels.
        ignore: label value excluded from the loss.

    Returns:
        Scalar loss.
    """
    scores, fg, valid = _flatten_binary(probas, labels, ignore, "lovasz_binary")
    return _binary_reduce(scores, fg, valid, per_image, on_probas=True)


def lovasz_softmax(
    probas: torch.Tensor,
    labels: torch.Tensor,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    ignore: int | None = None,
) -> torch.Tensor:
    """Multi-class Lovász-softmax loss (Eq. 6), all classes in one batched sort.

    Args:
        probas: ``[B, C, H, W]`` class probabilities (softmax already applied).
        labels: ``[B, H, W]`` integer labels in ``0..C-1`` (or ``ignore``).
        classes: ``"present"`` (classes in the ground truth), ``"all"`` or a list.
        per_image: loss per image then mean over the batch; else over all pixels at once.
            An image with no valid pixel (or no selected class) counts as 0 in the mean.
        ignore: label value excluded from the loss.

    Returns:
        Scalar loss (0 with zero gradient when nothing is selected).
    """
    if probas.dim() != 4:
        raise ValueError(f"lovasz_softmax: probas must be [B, C, H, W], got {tuple(probas.shape)}")
    b, c, h, w = probas.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"lovasz_softmax: labels must be [B, H, W] = {(b, h, w)}, got {tuple(labels.shape)}")
    flat = probas.reshape(b, c, h * w)
    flat_labels = labels.reshape(b, h * w)
    if not per_image:
        flat = flat.transpose(0, 1).reshape(1, c, b * h * w)
        flat_labels = flat_labels.reshape(1, b * h * w)
    valid = None if ignore is None else flat_labels != ignore
    return lovasz_softmax_rows(flat, flat_labels, valid, classes).mean()
