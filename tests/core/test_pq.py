"""Tests of hle.core.pq: hand-computed cases, a brute-force reference, merging, errors."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hle.core.pq import PQStat, pq_image_stats, summarize_pq, targets_to_panoptic

CATS = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]


def seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


# ---------------------------------------------------------------- hand-computed cases


def tiny_case():
    # gt: thing 1 (4 px), stuff 2 (4 px), crowd thing 3 (2 px), VOID (2 px)
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3]])
    pred = np.array([[5, 5, 5, 6], [5, 5, 6, 6], [7, 7, 6, 6]])
    gs = [seg(1, 1), seg(2, 2), seg(3, 1, crowd=1)]
    ps = [seg(5, 1), seg(6, 2), seg(7, 1)]
    return gt, gs, pred, ps


def test_tiny_case_counts_by_hand():
    s = pq_image_stats(*tiny_case(), [1, 2])
    # pred 5 vs gt 1: inter 4, union 5 + 4 - 4 = 5 -> IoU 0.8 > 0.5: TP.
    # pred 6 vs gt 2: inter 3, union 5 + 4 - 3 = 6 -> IoU 0.5, not > 0.5: gt 2 FN, pred 6 FP.
    # pred 7 lies entirely on VOID: ignored.
    assert s.tp.tolist() == [1, 0] and s.fp.tolist() == [0, 1] and s.fn.tolist() == [0, 1]
    assert s.iou.tolist() == pytest.approx([0.8, 0.0], abs=1e-15)
    # Parsing covering: gt 1 (|R| = 4, best IoU 0.8), gt 2 (|R| = 4, best IoU 0.5); crowd left out.
    assert s.pc_iou.tolist() == pytest.approx([3.2, 2.0]) and s.pc_area.tolist() == [4, 4]
    # Confusion rows gt class 1 / 2, columns pred 1 / 2 / VOID over non-VOID gt pixels:
    # class 1 = gt 1 (4 px -> pred 1) + crowd 3 (2 px -> pred 6, class 2); class 2 = 1 px -> 1, 3 px -> 2.
    assert s.confusion.tolist() == [[4, 2, 0], [1, 3, 0]]

    r = summarize_pq(s, CATS)
    assert r["Things"] == {"pq": pytest.approx(0.8), "sq": pytest.approx(0.8), "rq": 1.0, "n": 1}
    # stuff: PQ = 0 / (0 + 0.5 + 0.5)
    assert r["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    assert r["All"]["pq"] == pytest.approx(0.4) and r["All"]["rq"] == pytest.approx(0.5)
    # semantic IoU: class 1 = 4 / (6 + 5 - 4) = 4/7, class 2 = 3 / (4 + 5 - 3) = 0.5
    assert r["per_class"][1]["iou"] == pytest.approx(4 / 7)
    assert r["per_class"][2]["iou"] == pytest.approx(0.5)
    assert r["miou"]["All"]["miou"] == pytest.approx((4 / 7 + 0.5) / 2)
    # PQ†: things keep PQ (0.8), stuff uses IoU with threshold 0 = semantic IoU (0.5)
    assert r["pq_dagger"]["All"]["pq_dagger"] == pytest.approx((0.8 + 0.5) / 2)
    assert r["pq_dagger"]["Stuff"]["pq_dagger"] == pytest.approx(0.5)
    assert r["pc"]["All"]["pc"] == pytest.approx((0.8 + 0.5) / 2)


def test_union_leaves_out_prediction_on_void():
    # pred covers gt (4 px) and 4 VOID px: IoU = 4 / (8 + 4 - 4 - 4) = 1.
    gt = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
    pred = np.ones_like(gt) * 9
    s = pq_image_stats(gt, [seg(1, 1)], pred, [seg(9, 1)], [1, 2])
    assert s.tp.tolist() == [1, 0] and s.iou[0] == 1.0 and s.fp.sum() == 0


def test_unmatched_prediction_on_void_and_crowd_rule():
    # gt: crowd of class 1 on the left (6 px), VOID (2 px) in the middle column, stuff 2 right.
    gt = np.array([[3, 3, 3, 0, 2, 2], [3, 3, 3, 0, 2, 2]])
    gs = [seg(3, 1, crowd=1), seg(2, 2)]

    def fp_of(pred_map, pred_cat):
        ps = [seg(9, pred_cat), seg(8, 2)]
        return pq_image_stats(gt, gs, pred_map, ps, [1, 2]).fp.tolist()

    # pred 9: 3 px on the class-1 crowd + 1 px on stuff: 3/4 > 0.5 -> ignored.
    # pred 8 matches the stuff (IoU 3/4), so nothing else is a false positive.
    p = np.array([[0, 9, 9, 0, 8, 8], [0, 0, 9, 0, 9, 8]])
    assert fp_of(p, 1) == [0, 0]
    # the same prediction labelled class 2: a crowd of another class does not excuse it
    assert fp_of(p, 2) == [0, 1]
    # exactly half on crowd + VOID (2 of 4 px) is not "more than half" -> FP
    p = np.array([[0, 0, 9, 9, 9, 8], [0, 0, 0, 0, 9, 8]])
    assert fp_of(p, 1)[0] == 1


def test_last_crowd_segment_of_a_class_is_the_crowd_region():
    # panopticapi keeps only the last crowd segment of each category: a prediction lying on
    # the first one is a false positive, on the last one it is ignored.
    gt = np.array([[3, 3, 0, 4, 4]])
    gs = [seg(3, 1, crowd=1), seg(4, 1, crowd=1)]
    on_first = np.array([[9, 9, 0, 0, 0]])
    on_last = np.array([[0, 0, 0, 9, 9]])
    assert pq_image_stats(gt, gs, on_first, [seg(9, 1)], [1]).fp.tolist() == [1]
    assert pq_image_stats(gt, gs, on_last, [seg(9, 1)], [1]).fp.tolist() == [0]


def test_iou_exactly_half_does_not_match_and_empty_is_zero():
    gt = np.array([[1, 1]])
    pred = np.array([[5, 6]])
    s = pq_image_stats(gt, [seg(1, 1)], pred, [seg(5, 1), seg(6, 1)], [1, 2])
    assert (s.tp.tolist(), s.fp.tolist(), s.fn.tolist()) == ([0, 0], [2, 0], [1, 0])
    empty = pq_image_stats(np.zeros((2, 2), int), [], np.zeros((2, 2), int), [], [1, 2])
    r = summarize_pq(empty, CATS)
    assert r["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert r["miou"]["All"]["n"] == 0 and r["pc"]["All"]["n"] == 0


def test_accepts_torch_tensors():
    gt, gs, pred, ps = tiny_case()
    a = pq_image_stats(torch.as_tensor(gt), gs, torch.as_tensor(pred), ps, [1, 2])
    assert a == pq_image_stats(gt, gs, pred, ps, [1, 2])


# ---------------------------------------------------------------- brute-force reference


def brute_force(gt, gs, pred, ps, cat_ids):
    """Straight from the definitions, one mask per segment, no shared code with hle."""
    gcat = {s["id"]: s["category_id"] for s in gs}
    gcrowd = {s["id"]: bool(s.get("iscrowd", 0)) for s in gs}
    pcat = {s["id"]: s["category_id"] for s in ps}
    tp = {c: 0 for c in cat_ids}
    fp, fn = dict(tp), dict(tp)
    iou_sum = {c: 0.0 for c in cat_ids}
    pc_num, pc_den = dict(iou_sum), {c: 0 for c in cat_ids}
    void = gt == 0

    def iou(g, p):
        gm, pm = gt == g, pred == p
        inter = int((gm & pm).sum())
        return inter / (int(gm.sum()) + int(pm.sum()) - inter - int((pm & void).sum()))

    matched_g, matched_p = set(), set()
    for g in gcat:
        best = 0.0
        for p in pcat:
            if gcat[g] != pcat[p] or gcrowd[g]:
                continue
            v = iou(g, p)
            best = max(best, v)
            if v > 0.5:
                tp[gcat[g]] += 1
                iou_sum[gcat[g]] += v
                matched_g.add(g)
                matched_p.add(p)
        if not gcrowd[g]:
            pc_num[gcat[g]] += int((gt == g).sum()) * best
            pc_den[gcat[g]] += int((gt == g).sum())
            if g not in matched_g:
                fn[gcat[g]] += 1
    last_crowd = {gcat[g]: g for g in gcat if gcrowd[g]}
    for p in pcat:
        if p in matched_p:
            continue
        pm = pred == p
        ign = int((pm & void).sum())
        if pcat[p] in last_crowd:
            ign += int((pm & (gt == last_crowd[pcat[p]])).sum())
        if ign / pm.sum() <= 0.5:
            fp[pcat[p]] += 1
    conf = np.zeros((len(cat_ids), len(cat_ids) + 1), dtype=np.int64)
    idx = {c: k for k, c in enumerate(cat_ids)}
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            if gt[y, x] == 0:
                continue
            col = idx[pcat[pred[y, x]]] if pred[y, x] else len(cat_ids)
            conf[idx[gcat[gt[y, x]]], col] += 1
    return tp, fp, fn, iou_sum, pc_num, pc_den, conf


def random_case(rng, h=9, w=11):
    gt = rng.integers(0, 6, size=(h, w))
    gt[rng.random((h, w)) < 0.3] = gt[0, 0]  # larger blobs so that matches happen
    pred = np.where(rng.random((h, w)) < 0.8, gt * 7 % 11, rng.integers(0, 11, size=(h, w)))
    gs = [seg(int(i), int(rng.choice([1, 2, 3])), int(rng.random() < 0.2)) for i in np.unique(gt) if i]
    ps = [seg(int(i), int(rng.choice([1, 2, 3]))) for i in np.unique(pred) if i]
    return gt, gs, pred, ps


@pytest.mark.parametrize("seed", range(25))
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    gt, gs, pred, ps = random_case(rng)
    s = pq_image_stats(gt, gs, pred, ps, [1, 2, 3])
    tp, fp, fn, iou_sum, pc_num, pc_den, conf = brute_force(gt, gs, pred, ps, [1, 2, 3])
    assert s.tp.tolist() == list(tp.values())
    assert s.fp.tolist() == list(fp.values())
    assert s.fn.tolist() == list(fn.values())
    np.testing.assert_allclose(s.iou, list(iou_sum.values()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.pc_iou, list(pc_num.values()), rtol=0, atol=1e-12)
    assert s.pc_area.tolist() == list(pc_den.values())
    np.testing.assert_array_equal(s.confusion, conf)


# ---------------------------------------------------------------- merging


def test_merge_add_pickle_and_dict_round_trip():
    rng = np.random.default_rng(0)
    stats = [pq_image_stats(*random_case(rng), [1, 2, 3]) for _ in range(4)]
    total = PQStat([1, 2, 3])
    for s in stats:
        total += s
    assert total.n_images == 4
    assert total.tp.tolist() == np.sum([s.tp for s in stats], axis=0).tolist()
    np.testing.assert_array_equal(total.confusion, np.sum([s.confusion for s in stats], axis=0))
    halves = (stats[0] + stats[1]) + (stats[2] + stats[3])
    assert halves.tp.tolist() == total.tp.tolist()
    np.testing.assert_allclose(halves.iou, total.iou, atol=1e-12)
    assert pickle.loads(pickle.dumps(total)) == total
    assert PQStat.from_dict(total.to_dict()) == total
    with pytest.raises(ValueError, match="category ids differ"):
        total += PQStat([1, 2])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda gt, gs, pr, ps: (gt, gs, pr, ps[:-1]), r"prediction PNG contains segment ids \[7\]"),
        (lambda gt, gs, pr, ps: (gt, gs, pr, ps + [seg(99, 1)]), r"lists segment ids \[99\] that are not in its PNG"),
        (lambda gt, gs, pr, ps: (gt, gs, pr, ps[:-1] + [seg(7, 5)]), r"unknown category ids .*\{7: 5\}"),
        (lambda gt, gs, pr, ps: (gt, gs, pr, ps + [seg(5, 1)]), r"duplicate segment ids \[5\]"),
        (lambda gt, gs, pr, ps: (gt, gs, pr[:, :3], ps), r"prediction size 3x3 .* ground truth size 4x3"),
        (lambda gt, gs, pr, ps: (gt, gs[1:], pr, ps), r"ground-truth PNG contains segment ids \[1\]"),
        (lambda gt, gs, pr, ps: (gt, gs, pr, ps + [seg(0, 1)]), r"reserved for VOID"),
    ],
)
def test_errors_name_image_and_problem(change, message):
    args = change(*tiny_case())
    with pytest.raises(ValueError, match=r"image 'img7': .*" + message):
        pq_image_stats(*args, [1, 2], image_id="img7")


def test_targets_to_panoptic_by_hand():
    sem = np.array([[0, 0, 1, 1], [0, 255, 1, 1], [2, 2, 2, 1]])
    ins = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 0, 0]])
    crowd = np.zeros_like(sem, dtype=bool)
    crowd[2, 3] = True
    pan, segs = targets_to_panoptic(torch.as_tensor(sem), ins, crowd)
    by_id = {s["id"]: s for s in segs}
    # stuff 0 (3 px), thing 1 instances 1 and 2, crowd of class 1, stuff 2; void stays 0
    assert pan[1, 1] == 0
    groups = {(by_id[i]["category_id"], by_id[i]["iscrowd"], tuple(np.argwhere(pan == i).ravel()))
              for i in by_id}
    assert groups == {
        (0, 0, (0, 0, 0, 1, 1, 0)),
        (1, 0, (0, 2, 0, 3)),
        (1, 0, (1, 2, 1, 3)),
        (1, 1, (2, 3)),
        (2, 0, (2, 0, 2, 1, 2, 2)),
    }
