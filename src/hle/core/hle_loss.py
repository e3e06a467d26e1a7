"""The Hierarchical Lovász Embedding loss (Eq. 7-17) and its Table 6 ablation variants.

This module owns the training objective as pure functions of tensors: the semantic term
over the nearest-class-mean softmax psi (Eq. 9, 12), the VQ-VAE-style update of the
persistent class means (Eq. 15), the instance term over the spatial instance kernel phi
(Eq. 8, 10, 11), the instance-variance (Eq. 14) and seed (Eq. 13) regressions, and the
switches of the paper's ablation (associative-embedding loss, cross-entropy, a separate
semantic branch, a split embedding space, VQ-VAE means on/off) sharing that code. Kernels
come from :mod:`hle.core.kernels` and Lovász losses from :mod:`hle.core.lovasz`; all
instances of a batch go through one kernel per image and one batched Lovász call.

Pixel roles: void pixels (``targets.ignore``) take part in nothing; crowd pixels take part
in the semantic terms (``seg``, ``seg_mean``) only; stuff pixels are negatives of every
instance and regress their seed to 0; thing pixels without an instance id (and not crowd)
are negatives of every instance but have no seed target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hle.core.kernels import (
    DEFAULT_COORD_SCALE,
    check_class_parameters,
    grid_instance_log_kernel,
    normalize_rows,
    pixel_coordinates,
    semantic_logits,
    split_views,
)
from hle.core.lovasz import lovasz_binary_rows, lovasz_softmax_rows
from hle.core.types import HLEOutputs, PanopticTargets

__all__ = ["HLELossOptions", "hle_loss", "binary_cross_entropy_from_log", "LOSS_TERMS"]

#: Names of the scalar terms returned by :func:`hle_loss`, ``total`` excluded.
LOSS_TERMS = ("seg", "seg_mean", "ins", "ins_var", "seed")

EmbeddingLoss = Literal["lovasz", "cross_entropy", "associative"]


@dataclass(frozen=True)
class HLELossOptions:
    """Switches and weights of :func:`hle_loss`; the defaults are the paper's model.

    Attributes:
        embedding_loss: how ``seg`` and ``ins`` are computed from the embeddings:
            ``"lovasz"`` (Eq. 11-12), ``"cross_entropy"`` (cross-entropy on psi, binary
            cross-entropy on phi) or ``"associative"`` (Eq. 1-2 made hierarchical with one
            hinge pair for instances and one for semantic classes).
        semantic_branch: take ``seg`` as cross-entropy on ``outputs.semantic_logits``
            (a separate softmax branch); instances still use the embeddings and the
            class means get no loss (``seg_mean`` is 0).
        split_embedding: semantic terms see the first half of the channels, instance
            terms the second half (:func:`hle.core.kernels.split_views`); only the first
            ``D/2`` columns of the class means are used.
        vq_means: add the VQ-VAE-style class-mean term of Eq. (15).
        seg_per_image: Lovász-softmax per image then averaged (else over the whole batch).
        gamma: weight of the instance-variance term, Eq. (14).
        coord_scale: coordinate units per input pixel (see ``pixel_coordinates``).
        stride: input pixels per map pixel, when the loss runs on a downsampled map.
        ae_instance_margins: ``(delta_pull, delta_push)`` of the instance hinge pair
            (L1 distances, associative variant only).
        ae_semantic_margins: ``(delta_pull, delta_push)`` of the semantic hinge pair;
            larger than the instance pair so that instances nest inside classes.
        seg_weight, seg_mean_weight, ins_weight, seed_weight: weights in ``total``
            (Eq. 16 uses 1 for all; ``ins_var`` is weighted by ``gamma``).
    """

    embedding_loss: EmbeddingLoss = "lovasz"
    semantic_branch: bool = False
    split_embedding: bool = False
    vq_means: bool = True
    seg_per_image: bool = False
    gamma: float = 10.0
    coord_scale: float = DEFAULT_COORD_SCALE
    stride: float = 1.0
    ae_instance_margins: tuple[float, float] = (0.5, 1.5)
    ae_semantic_margins: tuple[float, float] = (1.5, 4.0)
    seg_weight: float = 1.0
    seg_mean_weight: float = 1.0
    ins_weight: float = 1.0
    seed_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.embedding_loss not in ("lovasz", "cross_entropy", "associative"):
            raise ValueError(
                "HLELossOptions.embedding_loss must be 'lovasz', 'cross_entropy' or "
                f"'associative', got {self.embedding_loss!r}")
        if not self.stride > 0:
            raise ValueError(f"HLELossOptions.stride must be > 0, got {self.stride}")
        if not self.coord_scale > 0:
            raise ValueError(f"HLELossOptions.coord_scale must be > 0, got {self.coord_scale}")
        for name in ("ae_instance_margins", "ae_semantic_margins"):
            margins = getattr(self, name)
            if len(margins) != 2 or not 0 <= margins[0] <= margins[1]:
                raise ValueError(
                    f"HLELossOptions.{name} must be (pull, push) with 0 <= pull <= push, got {margins}")
            # YAML gives lists; keep the frozen dataclass hashable.
            object.__setattr__(self, name, (float(margins[0]), float(margins[1])))
        for name in ("gamma", "seg_weight", "seg_mean_weight", "ins_weight", "seed_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"HLELossOptions.{name} must be >= 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- checks
def _check_inputs(
    outputs: HLEOutputs,
    targets: PanopticTargets,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    options: HLELossOptions,
) -> None:
    emb = outputs.embedding
    if emb.dim() != 4 or not emb.is_floating_point():
        raise ValueError(
            f"hle_loss: outputs.embedding must be a float [B, D, H, W] tensor, got "
            f"{tuple(emb.shape)} {emb.dtype}")
    b, d, h, w = emb.shape
    for name in ("sigma", "spatial_sigma", "seed"):
        t = getattr(outputs, name)
        if tuple(t.shape) != (b, 1, h, w):
            raise ValueError(f"hle_loss: outputs.{name} must be [B, 1, H, W] = {(b, 1, h, w)}, "
                             f"got {tuple(t.shape)}")
    for name in ("semantic", "instance", "thing", "ignore", "crowd"):
        t = getattr(targets, name)
        if tuple(t.shape) != (b, h, w):
            raise ValueError(f"hle_loss: targets.{name} must be [B, H, W] = {(b, h, w)}, "
                             f"got {tuple(t.shape)}")
    for name in ("semantic", "instance"):
        t = getattr(targets, name)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"hle_loss: targets.{name} must be an integer tensor, got {t.dtype}")
    for name in ("thing", "ignore", "crowd"):
        if getattr(targets, name).dtype != torch.bool:
            raise TypeError(f"hle_loss: targets.{name} must be bool, got {getattr(targets, name).dtype}")
    c = check_class_parameters("hle_loss", class_means, class_sigma, is_thing, d)
    if options.split_embedding and d % 2:
        raise ValueError(f"hle_loss: split_embedding needs an even embedding dimension, got D={d}")
    if options.semantic_branch:
        logits = outputs.semantic_logits
        if logits is None:
            raise ValueError("hle_loss: outputs.semantic_logits is required with semantic_branch=True")
        if tuple(logits.shape) != (b, c, h, w):
            raise ValueError(f"hle_loss: outputs.semantic_logits must be [B, C, H, W] = "
                             f"{(b, c, h, w)}, got {tuple(logits.shape)}")
    labels = targets.semantic[~targets.ignore]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"hle_loss: targets.semantic must lie in [0, {c}) on non-ignored pixels, "
                         f"found [{int(labels.min())}, {int(labels.max())}]")


# ----------------------------------------------------------------------------- helpers
def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to the graph of ``tensors``: backward gives zero gradients."""
    return sum((t.sum() * 0.0 for t in tensors if t.requires_grad),
               start=tensors[0].new_zeros(()))


def _group_means(values: torch.Tensor, group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-group means: ``values`` ``[n, F]`` (or ``[n]``), ``group`` ``[n]`` in ``0..G-1``."""
    shape = (counts.numel(),) + tuple(values.shape[1:])
    sums = values.new_zeros(shape).index_add(0, group, values)
    scale = counts.to(values.dtype).clamp_min(1)
    return sums / (scale if values.dim() == 1 else scale[:, None])


def _associative(
    emb: torch.Tensor, group: torch.Tensor, counts: torch.Tensor, margins: tuple[float, float]
) -> torch.Tensor:
    """Associative-embedding pull + push (Eq. 1-2) over G groups of one image.

    Args:
        emb: ``[n, D]`` embeddings of the pixels taking part.
        group: ``[n]`` group index of each pixel in ``0..G-1``.
        counts: ``[G]`` pixels per group (all > 0).
        margins: ``(delta_pull, delta_push)`` on L1 distances.
    """
    pull_margin, push_margin = margins
    means = _group_means(emb, group, counts)                           # [G, D]
    pull = torch.relu((means[group] - emb).abs().sum(-1) - pull_margin).pow(2)
    pull = (_group_means(pull, group, counts)).mean()                 # Eq. (1)
    g = counts.numel()
    if g < 2:
        return pull
    dist = (means[:, None, :] - means[None, :, :]).abs().sum(-1)      # [G, G]
    off = ~torch.eye(g, dtype=torch.bool, device=emb.device)
    push = torch.relu(push_margin - dist[off]).pow(2).sum() / (g * (g - 1))   # Eq. (2)
    return pull + push


def binary_cross_entropy_from_log(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Elementwise binary cross-entropy of ``p = exp(log_p)`` against 0/1 ``target``.

    ``-t log p - (1 - t) log(1 - p)`` computed from the exponent: ``log p`` is used as
    it is (exact where ``p`` underflows) and ``log(1 - p) = log(-expm1(log p))`` (exact
    where ``1 - p`` rounds to 0 or 1). Both logs are clamped at ``-100`` as in
    ``torch.nn.functional.binary_cross_entropy``, and ``log_p`` above 0 (not a
    probability) is read as 0, so the result is finite for any input.

    Args:
        log_p: ``[...]`` log probabilities (``<= 0``).
        target: ``[...]`` targets in ``{0, 1}`` (float).

    Returns:
        ``[...]`` losses ``>= 0``.
    """
    log_p = log_p.clamp(max=0.0)
    # clamp_min before the log: at p = 1 the argument is 0, and log's gradient there
    # would be 0 / 0 = NaN behind the -100 clamp.
    log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny))
    return -(target * log_p.clamp_min(-100.0) + (1.0 - target) * log_not_p.clamp_min(-100.0))


# ----------------------------------------------------------------------------- terms
def _semantic_terms(
    sem: torch.Tensor,
    sem_cm: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    means: torch.Tensor,
    class_sigma: torch.Tensor,
    branch_logits: torch.Tensor | None,
    options: HLELossOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seg`` (Eq. 12 or its ablations) and ``seg_mean`` (Eq. 15).

    Args:
        sem: ``[B, N, Ds]`` semantic view of the unit embeddings.
        sem_cm: the same, channel-major ``[Ds, B*N]`` (a view when B = 1), the layout
            the class-mean matmul and the class sums want.
        labels: ``[B, N]`` train ids (read only where ``valid``).
        valid: ``[B, N]`` bool, non-void pixels (crowd included).
        means: ``[C, Ds]`` persistent class means (columns already selected).
        class_sigma: ``[C]`` class sigmas.
        branch_logits: ``[B, C, N]`` separate-branch logits, or None.
    """
    b, n, ds = sem.shape
    c = means.shape[0]
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    count = valid.sum()

    if branch_logits is not None:
        ce = F.cross_entropy(branch_logits, safe_labels, reduction="none")
        seg = (ce * valid).sum() / count.clamp_min(1)
    elif options.embedding_loss == "associative":
        per_image = []
        for i in range(b):
            cls = labels[i][valid[i]]
            if cls.numel() == 0:
                continue
            ids, group, counts = torch.unique(cls, return_inverse=True, return_counts=True)
            per_image.append(_associative(sem[i][valid[i]], group, counts, options.ae_semantic_margins))
        seg = torch.stack(per_image).mean() if per_image else _zero(sem)
    else:
        logits = semantic_logits(sem_cm.T, means, class_sigma)                # [C, B*N], Eq. (9)
        if options.embedding_loss == "cross_entropy":
            ce = F.cross_entropy(logits.T, safe_labels.reshape(-1), reduction="none")
            seg = (ce * valid.reshape(-1)).sum() / count.clamp_min(1)
        elif options.seg_per_image:
            probas = torch.softmax(logits.view(c, b, n).transpose(0, 1), dim=1)   # [B, C, N]
            seg = lovasz_softmax_rows(probas, labels, valid).mean()
        else:
            probas = torch.softmax(logits, dim=0)[None]                           # [1, C, B*N]
            seg = lovasz_softmax_rows(probas, labels.reshape(1, b * n), valid.reshape(1, b * n))[0]

    if not options.vq_means or branch_logits is not None:
        return seg, _zero(means)
    # Eq. (15): move each present class mean towards sg[batch mean of its pixels]. The
    # target is re-normalised because only directions matter (means are normalised in
    # every kernel) and it keeps the persistent means near the unit sphere.
    # Void pixels go to an extra slot c, which is dropped.
    slot = torch.where(valid, labels, c).reshape(-1)
    counts = torch.bincount(slot, minlength=c + 1)[:c]
    present = counts > 0
    if not bool(present.any()):
        return seg, _zero(means)
    sums = sem_cm.new_zeros(ds, c + 1).index_add_(1, slot, sem_cm.detach())[:, :c].T   # [C, Ds]
    batch_means = normalize_rows(sums[present])
    seg_mean = (means[present] - batch_means).pow(2).sum(-1).mean()
    return seg, seg_mean


def _instance_terms(
    ins: torch.Tensor,
    sigma: torch.Tensor,
    spatial_sigma: torch.Tensor,
    seed: torch.Tensor,
    instance: torch.Tensor,
    valid: torch.Tensor,
    stuff: torch.Tensor,
    coords: torch.Tensor,
    grid: tuple[torch.Tensor, torch.Tensor],
    options: HLELossOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ins`` (Eq. 11 or its ablations), ``ins_var`` (Eq. 14) and ``seed`` (Eq. 13).

    Args:
        ins: ``[B, N, Di]`` instance view of the unit embeddings.
        sigma, spatial_sigma, seed: ``[B, N]`` per-pixel predictions.
        instance: ``[B, N]`` instance ids (0 = none).
        valid: ``[B, N]`` bool, pixels taking part in instance terms (not void, not crowd).
        stuff: ``[B, N]`` bool, valid stuff pixels (seed target 0).
        coords: ``[N, 2]`` pixel coordinates; grid: their ``[H]`` rows and ``[W]`` columns.
    """
    b, n, _ = ins.shape
    rows_score, rows_label, rows_image = [], [], []
    ae_losses = []
    var_sq, var_count = [], 0
    seed_sq = [(seed * seed * stuff).sum()]
    seed_count = int(stuff.sum())
    for i in range(b):
        in_instance = valid[i] & (instance[i] > 0)
        pix = in_instance.nonzero(as_tuple=True)[0]
        if pix.numel() == 0:
            continue
        ids, group, counts = torch.unique(instance[i][pix], return_inverse=True, return_counts=True)
        emb = ins[i]
        if options.embedding_loss == "associative":
            ae_losses.append(_associative(emb[pix], group, counts, options.ae_instance_margins))
        # Eq. (10) and docs/design.md: instance mean, sigma, spatial sigma and centre are
        # means over the instance's pixels; gradients flow through all of them.
        mean = _group_means(emb[pix], group, counts)
        inst_sigma = _group_means(sigma[i][pix], group, counts)
        inst_spatial = _group_means(spatial_sigma[i][pix], group, counts)
        centre = _group_means(coords[pix], group, counts)
        log_phi = grid_instance_log_kernel(emb, *grid, mean, inst_sigma, centre, inst_spatial)  # Eq. (8)
        phi = log_phi.exp()                                                                   # [K, N]
        # Row scores: log phi for the cross-entropy variant (exact BCE near 0 and 1), else phi.
        rows_score.append(log_phi if options.embedding_loss == "cross_entropy" else phi)
        rows_label.append(instance[i][None, :] == ids[:, None])
        rows_image.append(torch.full((ids.numel(),), i, dtype=torch.long, device=ins.device))
        # Eq. (14): per-pixel sigma towards sg[instance mean sigma].
        var_sq.append((sigma[i][pix] - inst_sigma.detach()[group]).pow(2).sum())
        var_count += pix.numel()
        # Eq. (13): seed towards sg[phi of the pixel's own instance].
        own_phi = phi.detach()[group, pix]
        seed_sq.append((seed[i][pix] - own_phi).pow(2).sum())
        seed_count += pix.numel()

    seed_loss = torch.stack(seed_sq).sum() / max(seed_count, 1)
    if not rows_score:
        zero = _zero(ins, sigma, spatial_sigma)
        return zero, zero, seed_loss
    ins_var = options.gamma * torch.stack(var_sq).sum() / var_count

    if options.embedding_loss == "associative":
        return torch.stack(ae_losses).mean(), ins_var, seed_loss
    if len(rows_score) == 1:                         # one image: no copies
        score, labels = rows_score[0], rows_label[0]  # [M, N]
        row_valid = valid[int(rows_image[0][0])]     # [N], shared by the rows
    else:
        score, labels = torch.cat(rows_score), torch.cat(rows_label)
        row_valid = valid[torch.cat(rows_image)]     # [M, N]
    if options.embedding_loss == "cross_entropy":
        bce = binary_cross_entropy_from_log(score, labels.to(score.dtype))
        row_valid = row_valid.expand_as(bce)
        per_row = (bce * row_valid).sum(-1) / row_valid.sum(-1).clamp_min(1)
        return per_row.mean(), ins_var, seed_loss
    return lovasz_binary_rows(score, labels, row_valid).mean(), ins_var, seed_loss


def hle_loss(
    outputs: HLEOutputs,
    targets: PanopticTargets,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    options: HLELossOptions = HLELossOptions(),
) -> dict[str, torch.Tensor]:
    """Hierarchical Lovász Embedding loss, Eq. (16), with every term returned by name.

    Args:
        outputs: network outputs; ``embedding`` ``[B, D, H, W]`` unit length, ``sigma``,
            ``spatial_sigma`` ``[B, 1, H, W]`` positive, ``seed`` ``[B, 1, H, W]`` in (0, 1),
            ``semantic_logits`` ``[B, C, H, W]`` (only with ``semantic_branch``).
        targets: ``[B, H, W]`` targets at the resolution of ``outputs`` (subsample them
            and set ``options.stride`` when the loss runs on a downsampled map).
        class_means: ``[C, D]`` persistent class means mu_hat_k (normalised in the kernels).
        class_sigma: ``[C]`` positive class sigmas sigma_k (learned by backprop).
        is_thing: ``[C]`` bool, thing classes; pixels of the other (stuff) classes regress
            their seed to 0. Stuff is decided from ``semantic`` through ``is_thing``;
            ``targets.thing`` is not read.
        options: variant switches and weights.

    Returns:
        Scalars ``seg`` (Eq. 12), ``seg_mean`` (Eq. 15), ``ins`` (Eq. 11), ``ins_var``
        (Eq. 14, times gamma), ``seed`` (Eq. 13) and their weighted sum ``total``.
        Terms without any pixel to act on are 0 with zero gradients. ``seg`` and ``ins``
        are averaged over classes / instances, ``ins_var`` over instance pixels and
        ``seed`` over instance and stuff pixels.
    """
    _check_inputs(outputs, targets, class_means, class_sigma, is_thing, options)
    b, d, h, w = outputs.embedding.shape
    n = h * w
    sem_view, ins_view = split_views(outputs.embedding, options.split_embedding, dim=1)
    sem = sem_view.flatten(2).transpose(1, 2)       # [B, N, Ds]
    sem_cm = sem_view.transpose(0, 1).reshape(sem.shape[-1], b * n)   # [Ds, B*N]
    ins = ins_view.flatten(2).transpose(1, 2)       # [B, N, Di]
    means = class_means[:, : sem.shape[-1]]

    semantic = targets.semantic.reshape(b, n).long()
    valid_sem = ~targets.ignore.reshape(b, n)
    valid_ins = valid_sem & ~targets.crowd.reshape(b, n)
    stuff = valid_ins & ~is_thing.to(semantic.device)[torch.where(valid_sem, semantic, 0)]

    branch = None
    if options.semantic_branch:
        branch = outputs.semantic_logits.reshape(b, -1, n)
    seg, seg_mean = _semantic_terms(sem, sem_cm, semantic, valid_sem, means, class_sigma, branch, options)

    coords = pixel_coordinates(h, w, stride=options.stride, coord_scale=options.coord_scale,
                               device=outputs.embedding.device, dtype=outputs.embedding.dtype)
    grid = (coords.view(h, w, 2)[:, 0, 0], coords.view(h, w, 2)[0, :, 1])
    ins_loss, ins_var, seed = _instance_terms(
        ins, outputs.sigma.reshape(b, n), outputs.spatial_sigma.reshape(b, n),
        outputs.seed.reshape(b, n), targets.instance.reshape(b, n).long(), valid_ins, stuff,
        coords, grid, options)

    terms = {"seg": seg, "seg_mean": seg_mean, "ins": ins_loss, "ins_var": ins_var, "seed": seed}
    terms["total"] = (options.seg_weight * seg + options.seg_mean_weight * seg_mean
                      + options.ins_weight * ins_loss + ins_var + options.seed_weight * seed)
    return terms
