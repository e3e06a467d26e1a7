"""Per-image panoptic statistics and their summary (PQ, PQ†, Parsing Covering, mIoU).

This module owns the arithmetic of panoptic evaluation (Supplementary A, Eqs. A-B): given a
ground-truth and a predicted id map plus their ``segments_info`` it produces a
:class:`PQStat` — per-category sums that add (``+=``) across images, workers and
processes — and :func:`summarize_pq` turns accumulated sums into the panopticapi result
layout (:func:`targets_to_panoptic` builds a ground-truth id map from per-pixel targets).
Semantics follow panopticapi / cityscapesScripts exactly: id ``0`` is VOID, crowd
ground-truth segments are never matched, a pair matches when IoU > 0.5, the IoU union leaves
out the predicted pixels lying on VOID, and an unmatched prediction is a false positive only
if at most half of it lies on VOID or on the crowd region of its own class. Everything is
vectorised over the unique (gt id, pred id) pairs of one ``np.unique`` call; no file I/O.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

#: Segment id of unlabelled pixels in COCO panoptic id maps.
VOID = 0

_STAT_ARRAYS = ("tp", "fp", "fn", "iou", "pc_iou", "pc_area", "confusion")


def to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays, torch tensors (any device) and nested lists."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class PQStat:
    """Mergeable per-category accumulators of panoptic evaluation.

    All arrays are indexed by the position of a category in :attr:`category_ids`
    (sorted dataset category ids). Two stats over the same categories add with ``+``,
    ``+=`` or :meth:`merge`; they pickle, and :meth:`to_dict` / :meth:`from_dict` give a
    JSON-able form (e.g. for ``torch.distributed.all_gather_object``).

    Attributes:
        category_ids: ``[K]`` sorted category ids.
        tp, fp, fn: ``[K]`` int64 matched / unmatched-prediction / unmatched-gt counts (Eq. A).
        iou: ``[K]`` float64 sum of IoU over matched pairs (Eq. A numerator).
        pc_iou: ``[K]`` float64 sum over gt regions of ``|R| * max_R' IoU(R', R)`` (Eq. B).
        pc_area: ``[K]`` int64 sum over gt regions of ``|R|`` (Eq. B denominator).
        confusion: ``[K, K + 1]`` int64 pixel counts, rows = gt class, columns = predicted
            class, last column = predicted VOID. Gt VOID pixels are not counted.
        n_images: number of images accumulated.
    """

    def __init__(self, category_ids: Iterable[int]) -> None:
        ids = np.asarray(sorted(int(c) for c in category_ids), dtype=np.int64)
        if ids.size == 0:
            raise ValueError("PQStat: expected at least one category id, got none")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"PQStat: category ids must be unique, got {ids.tolist()}")
        self.category_ids: tuple[int, ...] = tuple(int(c) for c in ids)
        k = ids.size
        self.tp = np.zeros(k, dtype=np.int64)
        self.fp = np.zeros(k, dtype=np.int64)
        self.fn = np.zeros(k, dtype=np.int64)
        self.iou = np.zeros(k, dtype=np.float64)
        self.pc_iou = np.zeros(k, dtype=np.float64)
        self.pc_area = np.zeros(k, dtype=np.int64)
        self.confusion = np.zeros((k, k + 1), dtype=np.int64)
        self.n_images = 0

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    def category_index(self, ids: np.ndarray) -> np.ndarray:
        """Positions of dataset category ids in :attr:`category_ids`, ``-1`` if unknown."""
        table = np.asarray(self.category_ids, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(table, ids), 0, table.size - 1)
        return np.where(table[pos] == ids, pos, -1)

    def merge(self, other: PQStat) -> PQStat:
        """Add ``other`` into ``self`` (in place) and return ``self``."""
        if not isinstance(other, PQStat):
            raise TypeError(f"PQStat.merge: expected a PQStat, got {type(other).__name__}")
        if other.category_ids != self.category_ids:
            raise ValueError(
                "PQStat.merge: category ids differ: "
                f"{list(self.category_ids)} vs {list(other.category_ids)}"
            )
        for name in _STAT_ARRAYS:
            getattr(self, name).__iadd__(getattr(other, name))
        self.n_images += other.n_images
        return self

    def __iadd__(self, other: PQStat) -> PQStat:
        return self.merge(other)

    def __add__(self, other: PQStat) -> PQStat:
        return self.copy().merge(other)

    def copy(self) -> PQStat:
        out = PQStat(self.category_ids)
        return out.merge(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-able) form; inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"category_ids": list(self.category_ids), "n_images": self.n_images}
        for name in _STAT_ARRAYS:
            out[name] = getattr(self, name).tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PQStat:
        stat = cls(data["category_ids"])
        for name in _STAT_ARRAYS:
            ref = getattr(stat, name)
            arr = np.asarray(data[name], dtype=ref.dtype)
            if arr.shape != ref.shape:
                raise ValueError(
                    f"PQStat.from_dict: '{name}' expected shape {ref.shape}, got {arr.shape}"
                )
            setattr(stat, name, arr)
        stat.n_images = int(data.get("n_images", 0))
        return stat

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PQStat):
            return NotImplemented
        return (
            self.category_ids == other.category_ids
            and self.n_images == other.n_images
            and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _STAT_ARRAYS)
        )

    def __repr__(self) -> str:
        return (
            f"PQStat(categories={self.num_categories}, images={self.n_images}, "
            f"tp={int(self.tp.sum())}, fp={int(self.fp.sum())}, fn={int(self.fn.sum())})"
        )


def _where(image_id: Any) -> str:
    return f"image {image_id!r}: " if image_id is not None else ""


def _segment_table(
    segments: Sequence[Mapping[str, Any]], side: str, image_id: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, category_ids, iscrowd)`` arrays of one ``segments_info`` list, checked."""
    n = len(segments)
    try:
        ids = np.fromiter((int(s["id"]) for s in segments), dtype=np.int64, count=n)
        cats = np.fromiter((int(s["category_id"]) for s in segments), dtype=np.int64, count=n)
    except KeyError as err:
        raise ValueError(
            f"{_where(image_id)}{side} segments_info entry lacks key {err.args[0]!r} "
            "(expected 'id' and 'category_id')"
        ) from None
    crowd = np.fromiter((bool(s.get("iscrowd", 0)) for s in segments), dtype=bool, count=n)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{_where(image_id)}{side} segments_info has duplicate segment ids "
            f"{uniq[counts > 1].tolist()}"
        )
    if (ids == VOID).any():
        raise ValueError(
            f"{_where(image_id)}{side} segments_info uses segment id {VOID}, which is reserved for VOID"
        )
    return ids, cats, crowd


def _lookup(sorted_ids: np.ndarray, order: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row of each queried id in the (unsorted) table, ``-1`` when absent."""
    if sorted_ids.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, query), 0, sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == query, order[pos], -1)


def pq_image_stats(
    gt_pan: Any,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_pan: Any,
    pred_segments: Sequence[Mapping[str, Any]],
    category_ids: Iterable[int] | PQStat,
    *,
    image_id: Any = None,
) -> PQStat:
    """Panoptic statistics of one image (Supplementary Eqs. A and B, plus the confusion matrix).

    Args:
        gt_pan: ``[H, W]`` integer ground-truth segment ids (numpy or torch), ``0`` = VOID.
        gt_segments: ``segments_info`` of the ground truth: dicts with ``id``,
            ``category_id`` and optionally ``iscrowd``.
        pred_pan: ``[H, W]`` integer predicted segment ids, ``0`` = VOID.
        pred_segments: ``segments_info`` of the prediction (``iscrowd`` is ignored).
        category_ids: the dataset's category ids, or a :class:`PQStat` whose categories to use.
        image_id: only used to name the image in error messages.

    Returns:
        A :class:`PQStat` with ``n_images == 1``:

        * PQ (Eq. A): a non-crowd gt segment and a prediction of the same category match
          when ``IoU > 0.5`` where ``union = |p| + |g| - |p ∩ g| - |p ∩ VOID|``. Unmatched
          non-crowd gt segments are FN. An unmatched prediction is FP unless more than half of
          its pixels lie on gt VOID or on the crowd segment of its category (as in
          panopticapi, the *last* crowd segment of that category in ``gt_segments``).
        * Parsing Covering (Eq. B): for every non-crowd gt region R of class c,
          ``pc_iou[c] += |R| * max IoU(R', R)`` over predictions R' of class c (same IoU as
          above, 0 when none overlaps) and ``pc_area[c] += |R|``. Crowd regions are left out
          like VOID; areas are not normalised by image size (Eq. B as printed, which differs
          from DeeperLab's default ``normalize_by_image_size=True``).
        * ``confusion``: pixel counts of (gt class, predicted class or VOID) over the pixels
          whose gt is not VOID (crowd pixels count as their class), for mIoU and PQ†.

    Raises:
        ValueError: mismatched shapes, an id present in a map but not in its
            ``segments_info`` or the reverse, duplicate ids, or an unknown category id; the
            message names the image (``image_id``) and the offending ids.
    """
    stat = PQStat(category_ids.category_ids if isinstance(category_ids, PQStat) else category_ids)
    where = _where(image_id)
    gt = to_numpy(gt_pan)
    pred = to_numpy(pred_pan)
    if gt.ndim != 2 or pred.ndim != 2:
        raise ValueError(
            f"{where}expected 2-D [H, W] id maps, got gt_pan {tuple(gt.shape)} and "
            f"pred_pan {tuple(pred.shape)}"
        )
    if gt.shape != pred.shape:
        raise ValueError(
            f"{where}prediction size {pred.shape[1]}x{pred.shape[0]} (WxH) differs from the "
            f"ground truth size {gt.shape[1]}x{gt.shape[0]}"
        )
    for name, arr in (("gt_pan", gt), ("pred_pan", pred)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"{where}{name} must hold integer ids, got dtype {arr.dtype}")
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    if gt.size and (gt.min() < 0 or pred.min() < 0):
        raise ValueError(f"{where}segment ids must be >= 0")

    g_ids, g_cats, g_crowd = _segment_table(gt_segments, "ground-truth", image_id)
    p_ids, p_cats, _ = _segment_table(pred_segments, "prediction", image_id)
    g_ci = stat.category_index(g_cats)
    p_ci = stat.category_index(p_cats)
    for side, ids, cats, ci in (("ground-truth", g_ids, g_cats, g_ci), ("prediction", p_ids, p_cats, p_ci)):
        if (ci < 0).any():
            bad = {int(i): int(c) for i, c in zip(ids[ci < 0], cats[ci < 0])}
            raise ValueError(
                f"{where}{side} segments have unknown category ids (segment id: category id) {bad}; "
                f"known categories: {list(stat.category_ids)}"
            )
    n_g, n_p = g_ids.size, p_ids.size

    # One np.unique over all pixels gives every non-empty (gt segment, pred segment) intersection.
    offset = int(pred.max(initial=0)) + 1
    codes, inter = np.unique(gt * offset + pred, return_counts=True)
    pair_g_id, pair_p_id = codes // offset, codes % offset

    # Table rows of every pair; VOID (and only VOID) maps to the extra row n_g / n_p.
    g_order = np.argsort(g_ids, kind="stable")
    p_order = np.argsort(p_ids, kind="stable")
    gi = _lookup(g_ids[g_order], g_order, pair_g_id)
    pi = _lookup(p_ids[p_order], p_order, pair_p_id)
    for side, idx, pair_ids, table_ids in (
        ("ground-truth", gi, pair_g_id, g_ids),
        ("prediction", pi, pair_p_id, p_ids),
    ):
        missing = np.unique(pair_ids[(idx < 0) & (pair_ids != VOID)])
        if missing.size:
            raise ValueError(
                f"{where}{side} PNG contains segment ids {missing.tolist()} that are not in "
                "its segments_info"
            )
        present = np.zeros(table_ids.size, dtype=bool)
        present[idx[idx >= 0]] = True
        if not present.all():
            raise ValueError(
                f"{where}{side} segments_info lists segment ids {table_ids[~present].tolist()} "
                "that are not in its PNG"
            )
    gi = np.where(gi < 0, n_g, gi)
    pi = np.where(pi < 0, n_p, pi)

    g_area = np.zeros(n_g + 1, dtype=np.int64)
    p_area = np.zeros(n_p + 1, dtype=np.int64)
    np.add.at(g_area, gi, inter)
    np.add.at(p_area, pi, inter)
    on_void = gi == n_g
    p_void = np.zeros(n_p + 1, dtype=np.int64)
    np.add.at(p_void, pi[on_void], inter[on_void])

    # Candidate pairs: real segments of the same category, gt not crowd.
    g_cat_pair = np.append(g_ci, -1)[gi]
    p_cat_pair = np.append(p_ci, -2)[pi]
    g_crowd_pair = np.append(g_crowd, True)[gi]
    cand = (gi < n_g) & (pi < n_p) & ~g_crowd_pair & (g_cat_pair == p_cat_pair)
    c_gi, c_pi, c_inter = gi[cand], pi[cand], inter[cand]
    union = p_area[c_pi] + g_area[c_gi] - c_inter - p_void[c_pi]
    iou = c_inter / union
    match = iou > 0.5

    k = stat.num_categories
    g_matched = np.zeros(n_g, dtype=bool)
    p_matched = np.zeros(n_p, dtype=bool)
    g_matched[c_gi[match]] = True
    p_matched[c_pi[match]] = True
    m_cat = g_ci[c_gi[match]]
    stat.tp += np.bincount(m_cat, minlength=k)
    np.add.at(stat.iou, m_cat, iou[match])
    fn_mask = ~g_matched & ~g_crowd
    stat.fn += np.bincount(g_ci[fn_mask], minlength=k)

    # Crowd region per category: panopticapi keeps the last crowd segment of each category.
    crowd_row = np.full(k, -1, dtype=np.int64)
    crowd_rows = np.flatnonzero(g_crowd)
    crowd_row[g_ci[crowd_rows]] = crowd_rows  # fancy assignment keeps the last duplicate
    p_crowd = np.zeros(n_p + 1, dtype=np.int64)
    if crowd_rows.size:
        on_crowd = (gi < n_g) & (pi < n_p) & (crowd_row[np.append(p_ci, 0)[pi]] == gi)
        np.add.at(p_crowd, pi[on_crowd], inter[on_crowd])
    ignored = (p_void[:n_p] + p_crowd[:n_p]) / np.maximum(p_area[:n_p], 1) > 0.5
    fp_mask = ~p_matched & ~ignored
    stat.fp += np.bincount(p_ci[fp_mask], minlength=k)

    # Parsing covering (Eq. B): best same-class IoU of every non-crowd gt region.
    best = np.zeros(n_g, dtype=np.float64)
    np.maximum.at(best, c_gi, iou)
    regions = ~g_crowd
    np.add.at(stat.pc_iou, g_ci[regions], g_area[:n_g][regions] * best[regions])
    np.add.at(stat.pc_area, g_ci[regions], g_area[:n_g][regions])

    # Semantic confusion over non-VOID gt pixels; predicted VOID is the last column.
    labelled = gi < n_g
    rows = g_ci[gi[labelled]]
    cols = np.append(p_ci, k)[pi[labelled]]
    np.add.at(stat.confusion, (rows, cols), inter[labelled])
    stat.n_images = 1
    return stat


def targets_to_panoptic(
    semantic: Any,
    instance: Any,
    crowd: Any = None,
    *,
    ignore_label: int = 255,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Ground-truth id map + ``segments_info`` from per-pixel targets (for the streaming evaluator).

    One segment per stuff class (pixels with ``instance == 0``), one per thing instance
    (``instance > 0``), and one ``iscrowd`` segment per class for crowd pixels; ignored
    pixels become VOID. Category ids are the semantic (train) ids; ids start at 1.

    Args:
        semantic: ``[H, W]`` integer class ids, ``ignore_label`` on void.
        instance: ``[H, W]`` integer instance index, 0 = none (stuff, void or crowd).
        crowd: optional ``[H, W]`` bool crowd mask.
        ignore_label: semantic label of void pixels.

    Returns:
        ``(panoptic [H, W] int64, segments_info)`` with ``id, category_id, iscrowd`` per segment.
    """
    sem = to_numpy(semantic).astype(np.int64)
    ins = to_numpy(instance).astype(np.int64)
    if sem.ndim != 2 or sem.shape != ins.shape:
        raise ValueError(
            f"targets_to_panoptic: expected semantic and instance of the same [H, W] shape, "
            f"got {tuple(sem.shape)} and {tuple(ins.shape)}"
        )
    is_crowd = np.zeros(sem.shape, dtype=bool) if crowd is None else to_numpy(crowd).astype(bool)
    if is_crowd.shape != sem.shape:
        raise ValueError(f"targets_to_panoptic: crowd must be {tuple(sem.shape)}, got {tuple(is_crowd.shape)}")
    valid = sem != ignore_label
    ins = np.where(is_crowd, 0, ins)
    # key = (class, crowd flag, instance): one segment per distinct key among valid pixels
    n_ins = int(ins.max(initial=0)) + 1
    key = (sem * 2 + is_crowd) * n_ins + ins
    keys, inverse = np.unique(key[valid], return_inverse=True)
    pan = np.zeros(sem.shape, dtype=np.int64)
    pan[valid] = inverse.ravel() + 1
    segments = [
        {"id": k + 1, "category_id": int(kk // n_ins // 2), "iscrowd": int(kk // n_ins % 2)}
        for k, kk in enumerate(keys.tolist())
    ]
    return pan, segments


def category_table(categories: Any) -> dict[int, dict[str, Any]]:
    """Normalise COCO ``categories`` (list of dicts or id -> dict mapping) to id -> dict."""
    if isinstance(categories, Mapping):
        items = [dict(v, id=int(k)) for k, v in categories.items()]
    else:
        items = [dict(c) for c in categories]
    table: dict[int, dict[str, Any]] = {}
    for c in items:
        if "id" not in c or "isthing" not in c:
            raise ValueError(f"categories: every entry needs 'id' and 'isthing', got {c}")
        table[int(c["id"])] = c
    return table


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def summarize_pq(stat: PQStat, categories: Any) -> dict[str, Any]:
    """Turn accumulated statistics into panopticapi's result layout plus PQ†, PC and mIoU.

    Args:
        stat: accumulated :class:`PQStat`.
        categories: COCO ``categories`` (list of dicts with ``id``, ``isthing`` and
            optionally ``name``), or a mapping id -> such dict. Averages run over these
            categories; any must be among ``stat.category_ids``.

    Returns:
        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {id: {...}},
        "pq_dagger": {...}, "pc": {...}, "miou": {...}, "n_images": int}`` with values in
        ``[0, 1]``:

        * PQ/SQ/RQ per class as in Eq. (A); a class enters the average (and ``n``) when
          ``tp + fp + fn > 0``, exactly like panopticapi (classes without any segment get
          0 in ``per_class``). An empty average is 0 with ``n = 0``.
        * ``pq_dagger`` (PQ†, Porzi et al. 2019, Supplementary A): thing classes keep
          ``PQ_c``; for a stuff class the 0.5 IoU threshold is dropped and, as in Porzi et
          al.'s definition, the class is scored by its IoU accumulated over the whole
          dataset: ``IoU_c = TP_px / (TP_px + FP_px + FN_px)`` from the pixel confusion
          matrix (gt VOID pixels ignored, predicted VOID counts as a miss). This is *not*
          per-image PQ with threshold 0 (which would average per-image IoUs and count
          non-overlapping stuff as FP + FN). A thing class enters the average as in PQ, a
          stuff class when it occurs in gt or prediction.
        * ``pc`` (Parsing Covering, Eq. B): per class ``pc_iou / pc_area``, averaged over the
          classes with gt area (DeeperLab's convention).
        * ``miou``: per class semantic IoU from the confusion matrix, averaged over the
          classes present in gt or prediction.

        ``per_class[id]`` holds ``name, isthing, pq, sq, rq, tp, fp, fn, pq_dagger, pc, iou``.
    """
    table = category_table(categories)
    idx = stat.category_index(np.asarray(sorted(table), dtype=np.int64))
    if (idx < 0).any():
        raise ValueError(
            f"summarize_pq: categories {np.asarray(sorted(table))[idx < 0].tolist()} are not in "
            f"the statistics' categories {list(stat.category_ids)}"
        )
    tp, fp, fn = stat.tp.astype(np.float64), stat.fp.astype(np.float64), stat.fn.astype(np.float64)
    denom = tp + 0.5 * fp + 0.5 * fn
    pq = _safe_div(stat.iou, denom)
    sq = _safe_div(stat.iou, tp)
    rq = _safe_div(tp, denom)
    k = stat.num_categories
    diag = np.diag(stat.confusion[:, :k]).astype(np.float64)
    sem_union = stat.confusion.sum(1) + stat.confusion[:, :k].sum(0) - diag
    sem_iou = _safe_div(diag, sem_union)
    pc = _safe_div(stat.pc_iou, stat.pc_area)

    ids = sorted(table)
    pos = dict(zip(ids, idx.tolist()))
    is_thing = {c: bool(table[c]["isthing"]) for c in ids}
    pq_dagger = {c: (pq[pos[c]] if is_thing[c] else sem_iou[pos[c]]) for c in ids}
    counted_pq = {c: denom[pos[c]] > 0 for c in ids}
    counted_sem = {c: sem_union[pos[c]] > 0 for c in ids}
    counted_dagger = {c: counted_pq[c] if is_thing[c] else counted_sem[c] for c in ids}
    counted_pc = {c: stat.pc_area[pos[c]] > 0 for c in ids}

    def average(values: Any, counted: dict[int, bool], key: str) -> dict[str, dict[str, Any]]:
        out = {}
        for group, want in (("All", None), ("Things", True), ("Stuff", False)):
            sel = [c for c in ids if counted[c] and (want is None or is_thing[c] == want)]
            out[group] = {key: float(np.mean([values(c) for c in sel])) if sel else 0.0, "n": len(sel)}
        return out

    results: dict[str, Any] = {}
    for group, want in (("All", None), ("Things", True), ("Stuff", False)):
        sel = [c for c in ids if counted_pq[c] and (want is None or is_thing[c] == want)]
        n = len(sel)
        results[group] = {
            "pq": float(sum(pq[pos[c]] for c in sel) / n) if n else 0.0,
            "sq": float(sum(sq[pos[c]] for c in sel) / n) if n else 0.0,
            "rq": float(sum(rq[pos[c]] for c in sel) / n) if n else 0.0,
            "n": n,
        }
    results["per_class"] = {
        c: {
            "name": str(table[c].get("name", c)),
            "isthing": int(is_thing[c]),
            "pq": float(pq[pos[c]]),
            "sq": float(sq[pos[c]]),
            "rq": float(rq[pos[c]]),
            "tp": int(stat.tp[pos[c]]),
            "fp": int(stat.fp[pos[c]]),
            "fn": int(stat.fn[pos[c]]),
            "pq_dagger": float(pq_dagger[c]),
            "pc": float(pc[pos[c]]),
            "iou": float(sem_iou[pos[c]]),
        }
        for c in ids
    }
    results["pq_dagger"] = average(lambda c: pq_dagger[c], counted_dagger, "pq_dagger")
    results["pc"] = average(lambda c: pc[pos[c]], counted_pc, "pc")
    results["miou"] = average(lambda c: sem_iou[pos[c]], counted_sem, "miou")
    results["n_images"] = stat.n_images
    return results
