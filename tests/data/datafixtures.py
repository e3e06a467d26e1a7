"""Helpers that write tiny datasets in the official on-disk layouts for the data tests.

A plain module with a unique name (not ``conftest``): other test folders have their own
``conftest.py`` and ``from conftest import ...`` would pick whichever was imported first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_panoptic_png(path: Path, ids: np.ndarray) -> None:
    """Encode ids as COCO panoptic RGB (written independently of hle.io)."""
    ids = np.asarray(ids, dtype=np.int64)
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def write_image(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)  # format from the suffix (.png lossless, .jpg lossy)
    return arr


def bbox(ids: np.ndarray, sid: int) -> list[int]:
    ys, xs = np.nonzero(ids == sid)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


#: A 6x8 hand-built scene: stuff "road" (id 1, segment 10), two cars (cat 3: segments 20, 21),
#: a crowd of cars (segment 22), a segment of an unlabeled category (cat 9, segment 30),
#: a segment not listed in segments_info (99) and void (0).
SCENE = np.array(
    [
        [10, 10, 10, 10, 30, 30, 0, 0],
        [10, 20, 20, 10, 30, 30, 0, 99],
        [10, 20, 20, 21, 21, 10, 10, 99],
        [10, 10, 10, 21, 21, 10, 22, 22],
        [10, 10, 10, 10, 10, 10, 22, 22],
        [10, 10, 10, 10, 10, 10, 10, 10],
    ],
    dtype=np.int64,
)
SCENE_CATEGORIES = [
    {"id": 1, "name": "road", "isthing": 0, "color": [128, 64, 128]},
    {"id": 3, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 9, "name": "unlabeled", "isthing": 0, "color": [0, 0, 0]},
]


def scene_segments() -> list[dict[str, Any]]:
    segs = []
    for sid, cat, crowd in ((10, 1, 0), (20, 3, 0), (21, 3, 0), (22, 3, 1), (30, 9, 0)):
        segs.append({"id": sid, "category_id": cat, "iscrowd": crowd, "area": int((SCENE == sid).sum()), "bbox": bbox(SCENE, sid)})
    return segs


def write_coco_layout(root: Path, split: str = "val", n: int = 2) -> Path:
    """root/{split}2017/*.jpg, root/annotations/panoptic_{split}2017.json + PNG folder."""
    images, anns = [], []
    for i in range(n):
        name = f"{i:012d}"
        write_image(root / f"{split}2017" / f"{name}.jpg", *SCENE.shape, seed=i)
        write_panoptic_png(root / "annotations" / f"panoptic_{split}2017" / f"{name}.png", SCENE)
        images.append({"id": i + 1, "file_name": f"{name}.jpg", "height": SCENE.shape[0], "width": SCENE.shape[1]})
        anns.append({"image_id": i + 1, "file_name": f"{name}.png", "segments_info": scene_segments()})
    js = root / "annotations" / f"panoptic_{split}2017.json"
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": SCENE_CATEGORIES}))
    return root
