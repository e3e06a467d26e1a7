"""Per-sample mapper: alignment of image and labels, flip, crop around things, max side, seeding, collate."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader

from datafixtures import write_panoptic_png
from hle.data import Metadata, PanopticDataset, PanopticMapper, collate

MD = Metadata(
    "blocks",
    [
        {"id": 1, "name": "ground", "isthing": 0},
        {"id": 2, "name": "thing", "isthing": 1},
    ],
)
PLAIN = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # image stays in [0, 1]: colours readable


def _blocks_record(tmp: Path, h: int = 48, w: int = 64, block: int = 8) -> tuple[dict, dict[int, np.ndarray]]:
    """An image of constant-colour blocks; each block is one thing segment, colour known per segment."""
    rng = np.random.default_rng(0)
    ids = np.zeros((h, w), np.int64)
    colours: dict[int, np.ndarray] = {}
    image = np.zeros((h, w, 3), np.uint8)
    segments = []
    k = 0
    for y in range(0, h, block):
        for x in range(0, w, block):
            k += 1
            sid = 1000 + k
            ids[y : y + block, x : x + block] = sid
            colours[sid] = rng.integers(0, 256, size=3).astype(np.uint8)
            image[y : y + block, x : x + block] = colours[sid]
            segments.append({"id": sid, "category_id": 2, "iscrowd": 0, "isthing": 1, "area": block * block, "bbox": [x, y, block, block]})
    Image.fromarray(image).save(tmp / "img.png")
    write_panoptic_png(tmp / "pan.png", ids)
    rec = {"file_name": str(tmp / "img.png"), "pan_seg_file_name": str(tmp / "pan.png"), "image_id": "blocks",
           "height": h, "width": w, "segments_info": segments}
    return rec, colours


def test_scale_crop_flip_keep_image_and_labels_aligned(tmp_path):
    rec, colours = _blocks_record(tmp_path)
    mapper = PanopticMapper(MD, train=True, min_scale=0.6, max_scale=1.8, crop_size=(40, 40), flip=True,
                            jitter=False, return_panoptic=True, seed=3, **PLAIN)
    for index in range(12):
        out = mapper(rec, index=index)
        pan = out["panoptic"].numpy()
        img = (out["image"].permute(1, 2, 0).numpy() * 255).round()
        # Pixels whose 3x3 neighbourhood is one segment are away from edges: exact colour there
        # (for scales below 2). Crop borders count as edges: the pixel beyond may differ.
        uniform = (ndimage.maximum_filter(pan, 3) == ndimage.minimum_filter(pan, 3, mode="constant", cval=-1)) & (pan > 0)
        assert uniform.sum() > 100
        expected = np.stack([colours[int(s)] for s in pan[uniform]])
        assert np.abs(img[uniform] - expected).max() <= 1.0
        # Instance ids follow the panoptic map one-to-one.
        inst = out["targets"].instance.numpy()
        assert len({(a, b) for a, b in zip(pan[pan > 0], inst[pan > 0])}) == len(np.unique(pan[pan > 0]))


def test_flipped_sample_equals_flipped_unflipped_sample(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    common = dict(train=True, min_scale=0.7, max_scale=1.4, crop_size=(32, 32), jitter=False, seed=5, return_panoptic=True)
    with_flip, without = PanopticMapper(MD, flip=True, **common), PanopticMapper(MD, flip=False, **common)
    flipped = 0
    for index in range(16):
        a, b = with_flip(rec, index=index), without(rec, index=index)
        if torch.equal(a["panoptic"], b["panoptic"]):
            assert torch.equal(a["image"], b["image"])
            continue
        flipped += 1
        assert torch.equal(a["image"], b["image"].flip(-1))
        assert torch.equal(a["panoptic"], b["panoptic"].flip(-1))
        for name in ("semantic", "thing", "ignore", "crowd"):
            assert torch.equal(getattr(a["targets"], name), getattr(b["targets"], name).flip(-1))
    assert 0 < flipped < 16


def test_crop_around_things_contains_a_thing(tmp_path):
    ids = np.full((96, 96), 7, np.int64)
    ids[80:86, 3:9] = 9  # one small thing far from the centre
    write_panoptic_png(tmp_path / "pan.png", ids)
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(tmp_path / "img.png")
    md = Metadata("one", [{"id": 1, "name": "bg", "isthing": 0}, {"id": 2, "name": "obj", "isthing": 1}])
    rec = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": str(tmp_path / "pan.png"), "image_id": 0,
           "segments_info": [{"id": 7, "category_id": 1, "iscrowd": 0}, {"id": 9, "category_id": 2, "iscrowd": 0}]}
    args = dict(train=True, min_scale=0.9, max_scale=1.1, crop_size=(16, 16), jitter=False)
    around = PanopticMapper(md, crop_around_things=True, thing_crop_prob=1.0, **args)
    uniform = PanopticMapper(md, crop_around_things=False, **args)
    assert all(around(rec, index=i)["targets"].instance.max() == 1 for i in range(20))
    assert sum(int(uniform(rec, index=i)["targets"].instance.max()) for i in range(20)) < 20


def test_max_side_resize_in_evaluation(tmp_path):
    ids = np.random.default_rng(0).integers(1, 4, size=(40, 100))
    write_panoptic_png(tmp_path / "pan.png", ids)
    Image.fromarray(np.zeros((40, 100, 3), np.uint8)).save(tmp_path / "img.png")
    rec = {"file_name": str(tmp_path / "img.png"), "pan_seg_file_name": str(tmp_path / "pan.png"), "image_id": 0,
           "segments_info": [{"id": i, "category_id": 1, "iscrowd": 0} for i in (1, 2, 3)]}
    out = PanopticMapper(MD, train=False, max_side=50)(rec)
    assert out["image"].shape == (3, 20, 50) and out["targets"].semantic.shape == (20, 50)
    assert (out["height"], out["width"]) == (40, 100)  # original size kept for evaluation
    # nearest by pixel centre: output (i, j) <- input (2i + 1, 2j + 1) for an exact factor 2
    assert out["panoptic"].numpy().tolist() == ids[1::2, 1::2].tolist()
    assert sum(s["area"] for s in out["segments_info"]) == 20 * 50
    # Training: the random scale applies to the max-side size (scale 1 -> the same maps).
    train = PanopticMapper(MD, train=True, max_side=50, min_scale=1.0, max_scale=1.0, flip=False, jitter=False,
                           return_panoptic=True)(rec, index=0)
    assert torch.equal(train["panoptic"], out["panoptic"]) and torch.allclose(train["image"], out["image"])
    double = PanopticMapper(MD, train=True, max_side=50, min_scale=2.0, max_scale=2.0, flip=False, jitter=False,
                            return_panoptic=True)(rec, index=0)
    assert double["panoptic"].numpy().tolist() == ids.tolist()  # 2 x (20 x 50) is the original grid


def test_seeding_is_per_sample_and_per_epoch(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    mapper = PanopticMapper(MD, train=True, crop_size=(24, 24), seed=11)
    a, b = mapper(rec, index=4), mapper(rec, index=4)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], mapper(rec, index=5)["image"])
    mapper.set_epoch(1)
    assert not torch.equal(a["image"], mapper(rec, index=4)["image"])
    other = PanopticMapper(MD, train=True, crop_size=(24, 24), seed=11)
    other.set_epoch(1)
    assert torch.equal(mapper(rec, index=4)["image"], other(rec, index=4)["image"])


def test_collate_pads_with_void_and_dataloader(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    (tmp_path / "small").mkdir()
    small, _ = _blocks_record(tmp_path / "small", h=24, w=40)
    ds = PanopticDataset([rec, small], PanopticMapper(MD, train=False))
    images, targets, extras = collate([ds[0], ds[1]], size_divisibility=32)
    assert images.shape == (2, 3, 64, 64) and targets.semantic.shape == (2, 64, 64)
    assert (targets.semantic[1, 24:] == 255).all() and targets.ignore[1, :, 40:].all()
    assert (targets.instance[1, 24:] == 0).all() and not targets.thing[1, 24:].any()
    assert (images[1, :, 24:] == 0).all() and (images[1, :, :, 40:] == 0).all()
    assert extras[0]["image_id"] == "blocks" and "panoptic" in extras[0]
    loader = DataLoader(ds, batch_size=2, collate_fn=partial(collate, size_divisibility=8))
    batch = next(iter(loader))
    assert batch[0].shape == (2, 3, 48, 64)


def test_errors(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    write_panoptic_png(tmp_path / "pan.png", np.zeros((5, 5), np.int64))
    with pytest.raises(ValueError, match="pan.png"):
        PanopticMapper(MD, train=False)(rec)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        PanopticMapper(MD, train=False)(dict(rec, file_name=str(tmp_path / "missing.png")))
    with pytest.raises(ValueError, match="crop_size"):
        PanopticMapper(MD, train=True, crop_size=(0, 4))
    with pytest.raises(ValueError, match="jitter"):
        PanopticMapper(MD, train=True, jitter=1.5)
    with pytest.raises(ValueError, match="min_scale"):
        PanopticMapper(MD, train=True, min_scale=2.0, max_scale=1.0)


def test_jitter_strength_zero_equals_no_jitter(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    args = dict(train=True, crop_size=(24, 24), seed=2)
    none, zero = PanopticMapper(MD, jitter=False, **args), PanopticMapper(MD, jitter=0.0, **args)
    strong = PanopticMapper(MD, jitter=0.5, **args)
    assert torch.equal(none(rec, index=0)["image"], zero(rec, index=0)["image"])
    assert not torch.equal(none(rec, index=0)["image"], strong(rec, index=0)["image"])


def test_same_batches_with_and_without_worker_processes(tmp_path):
    rec, _ = _blocks_record(tmp_path)
    ds = PanopticDataset([rec] * 4, PanopticMapper(MD, train=True, crop_size=(24, 24), seed=7))
    ds.set_epoch(2)
    batches = [
        list(DataLoader(ds, batch_size=2, num_workers=n, collate_fn=collate)) for n in (0, 2)
    ]
    for (img_a, tgt_a, _), (img_b, tgt_b, _) in zip(*batches):
        assert torch.equal(img_a, img_b) and torch.equal(tgt_a.instance, tgt_b.instance)
    assert not torch.equal(batches[0][0][0][0], batches[0][0][0][1])  # samples differ by index
