"""Seeded synthetic COCO panoptic ground truth / prediction pairs for evaluation tests.

Ground truth: one segment per stuff class in bands, thing rectangles on top (some crowd,
sometimes two crowd regions of one class), VOID blobs and 1-3 pixel tiny segments.
Predictions: the ground truth rolled by a pixel or two, with boundary noise, dropped
(missing) segments, split segments, wrong classes, spurious segments (some on VOID or on
crowd regions), VOID holes and shuffled 24-bit ids (so all three PNG channels are used).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STUFF = (7, 11, 21)
THINGS = (24, 26, 33)
UNUSED = 40  # a stuff category that never occurs anywhere

CATEGORIES = (
    [{"id": c, "name": f"stuff{c}", "isthing": 0} for c in STUFF]
    + [{"id": c, "name": f"thing{c}", "isthing": 1} for c in THINGS]
    + [{"id": UNUSED, "name": "unused", "isthing": 0}]
)


def id2rgb(ids: np.ndarray) -> np.ndarray:
    # Written independently of hle.io so the tests do not trust the code under test.
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def _segments(pan: np.ndarray, cat_of: dict[int, int], crowd: set[int], rng: np.random.Generator,
              scores: bool) -> list[dict[str, Any]]:
    out = []
    for i in np.unique(pan):
        if i == 0:
            continue
        ys, xs = np.nonzero(pan == i)
        seg = {"id": int(i), "category_id": int(cat_of[int(i)]), "iscrowd": int(int(i) in crowd),
               "area": int(ys.size),
               "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]}
        if scores:
            seg["score"] = float(rng.uniform(0.05, 1.0))
        out.append(seg)
    rng.shuffle(out)  # JSON order must not matter (except panopticapi's last-crowd rule)
    return out


def make_gt(rng: np.random.Generator, h: int, w: int, double_crowd: bool = True) -> tuple[np.ndarray, dict[int, int], set[int]]:
    """One ground-truth image: ``(ids [H, W], id -> category, crowd ids)`` with small ids."""
    pan = np.zeros((h, w), dtype=np.int64)
    cat_of: dict[int, int] = {}
    crowd: set[int] = set()
    cuts = np.sort(rng.choice(np.arange(3, h - 3), size=2, replace=False))
    for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, h])):
        sid = k + 1
        pan[a:b] = sid
        cat_of[sid] = STUFF[k]
    next_id = 10
    for _ in range(rng.integers(4, 9)):
        hh, ww = rng.integers(3, h // 2), rng.integers(3, w // 2)
        y, x = rng.integers(0, h - hh), rng.integers(0, w - ww)
        pan[y:y + hh, x:x + ww] = next_id
        cat_of[next_id] = int(rng.choice(THINGS))
        if rng.random() < 0.2:
            crowd.add(next_id)
        next_id += 1
    if double_crowd and rng.random() < 0.5:  # two crowd regions of one class: panopticapi keeps the last
        c = int(rng.choice(THINGS))
        for _ in range(2):
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
            pan[y:y + 5, x:x + 5] = next_id
            cat_of[next_id], next_id = c, next_id + 1
            crowd.add(next_id - 1)
    for _ in range(rng.integers(1, 4)):  # tiny segments
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        pan[y:y + rng.integers(1, 3), x:x + 1] = next_id
        cat_of[next_id], next_id = int(rng.choice(THINGS)), next_id + 1
    for _ in range(rng.integers(0, 3)):  # void blobs
        y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
        pan[y:y + rng.integers(2, 6), x:x + rng.integers(2, 6)] = 0
    present = set(np.unique(pan).tolist())
    return pan, {k: v for k, v in cat_of.items() if k in present}, crowd & present


def make_pred(rng: np.random.Generator, gt: np.ndarray, gt_cat: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
    """A corrupted copy of a ground-truth id map: ``(ids [H, W], id -> category)``."""
    h, w = gt.shape
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    noise = rng.random(gt.shape) < 0.05
    pred[noise] = np.roll(pred, 1, axis=1)[noise]
    cat = {k: v for k, v in gt_cat.items()}
    cat[0] = 0
    ids = [i for i in np.unique(pred) if i]
    for i in ids:
        r = rng.random()
        if r < 0.1:  # missing: swallowed by void
            pred[pred == i] = 0
        elif r < 0.2:  # split in two along a column
            ys, xs = np.nonzero(pred == i)
            cut = int(np.median(xs))
            new = max(cat) + 1
            pred[(pred == i) & (np.arange(w)[None, :] >= cut)] = new
            cat[new] = cat[i]
        elif r < 0.3:  # wrong class
            cat[i] = int(rng.choice([c for c in STUFF + THINGS if c != cat[i]]))
    for _ in range(rng.integers(1, 4)):  # spurious segments, sometimes on void / crowd
        hh, ww = rng.integers(1, 6), rng.integers(1, 6)
        y, x = rng.integers(0, h - hh), rng.integers(0, w - ww)
        new = max(cat) + 1
        pred[y:y + hh, x:x + ww] = new
        cat[new] = int(rng.choice(STUFF + THINGS))
    if rng.random() < 0.5:  # void hole
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        pred[y:y + 4, x:x + 4] = 0
    present = [i for i in np.unique(pred) if i]
    # Shuffle to large random 24-bit ids so the G and B channels carry information.
    new_ids = rng.choice(np.arange(1, 256**3), size=len(present), replace=False)
    remap = np.zeros(int(pred.max()) + 1, dtype=np.int64)
    remap[present] = new_ids
    return remap[pred], {int(n): cat[int(o)] for o, n in zip(present, new_ids)}


def write_dataset(root: Path, n_images: int = 6, seed: int = 0, size: tuple[int, int] = (24, 32),
                  scores: bool = True, double_crowd: bool = True) -> dict[str, Path]:
    """Write ``gt.json`` + ``gt/`` and ``pred.json`` + ``pred/`` under ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    (root / "pred").mkdir(exist_ok=True)
    gt_anns, pred_anns, images = [], [], []
    for n in range(n_images):
        h, w = int(size[0] + rng.integers(0, 8)), int(size[1] + rng.integers(0, 8))
        gt, gt_cat, crowd = make_gt(rng, h, w, double_crowd)
        pred, pred_cat = make_pred(rng, gt, gt_cat)
        name = f"img{n:03d}.png"
        Image.fromarray(id2rgb(gt)).save(root / "gt" / name)
        Image.fromarray(id2rgb(pred)).save(root / "pred" / name)
        images.append({"id": n + 1, "file_name": name.replace(".png", ".jpg"), "height": h, "width": w})
        gt_anns.append({"image_id": n + 1, "file_name": name,
                        "segments_info": _segments(gt, gt_cat, crowd, rng, scores=False)})
        pred_anns.append({"image_id": n + 1, "file_name": name,
                          "segments_info": _segments(pred, pred_cat, set(), rng, scores=scores)})
    for seg_list in (a["segments_info"] for a in pred_anns):
        for s in seg_list:
            s.pop("iscrowd")
    with open(root / "gt.json", "w") as f:
        json.dump({"images": images, "annotations": gt_anns, "categories": CATEGORIES}, f)
    with open(root / "pred.json", "w") as f:
        json.dump({"annotations": pred_anns[::-1]}, f)  # order must not matter either
    return {"gt_json": root / "gt.json", "gt_folder": root / "gt",
            "pred_json": root / "pred.json", "pred_folder": root / "pred"}


def cityscapes_pq(gt_json: Path, pred_json: Path, gt_folder: Path, pred_folder: Path,
                  tmp: Path) -> dict[str, Any]:
    """cityscapesScripts' panoptic evaluation of the files, its printout swallowed."""
    import contextlib
    import io

    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs

    with contextlib.redirect_stdout(io.StringIO()):
        return cs.evaluatePanoptic(str(gt_json), str(gt_folder), str(pred_json), str(pred_folder),
                                   str(tmp / "cs_results.json"))
