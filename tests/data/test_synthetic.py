"""Synthetic dataset: determinism, resumability, scene statistics, and loading through the COCO loader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import hle.data.synthetic as synth
from hle.data import PanopticMapper, collate, load_coco_panoptic, load_dataset
from hle.data.synthetic import generate_synthetic

NUM_TRAIN, NUM_VAL, NUM_TEST = 16, 4, 3


def _decode(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_synthetic(root, NUM_TRAIN, NUM_VAL, NUM_TEST, seed=0, progress=False)
    return root


def test_layout_and_coco_loader(dataset):
    for split, n in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        d = dataset / split
        records, md = load_coco_panoptic(d / "images", d / f"panoptic_{split}.json", d / "panoptic", name="synthetic")
        assert len(records) == n
        assert (records[0]["height"], records[0]["width"]) == (128, 256)
    records, md = load_dataset("synthetic", dataset, "train")
    assert md.name == "synthetic" and md.num_classes == 9
    assert len(md.stuff_train_ids) == 6 and len(md.thing_train_ids) == 3
    assert json.loads((dataset / "categories.json").read_text()) == json.loads(
        (dataset / "train" / "panoptic_train.json").read_text())["categories"]
    mapper = PanopticMapper(md, train=True, crop_size=(96, 160), seed=0)
    images, targets, _ = collate([mapper(r, index=i) for i, r in enumerate(records[:4])])
    assert images.shape == (4, 3, 96, 160) and targets.instance.shape == (4, 96, 160)


def test_same_seed_gives_identical_bytes(dataset, tmp_path):
    again = tmp_path / "again"
    generate_synthetic(again, NUM_TRAIN, NUM_VAL, NUM_TEST, seed=0, progress=False)
    assert _files(again) == _files(dataset)
    other = tmp_path / "other"
    generate_synthetic(other, 2, 0, seed=1, progress=False)
    assert (other / "train/images/000000.png").read_bytes() != (dataset / "train/images/000000.png").read_bytes()


def test_resume_skips_existing_and_recovers_from_interruption(dataset, tmp_path, monkeypatch):
    root = tmp_path / "resume"
    calls = {"n": 0}
    real = synth.render_scene

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # simulated interruption in the middle of the train split
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(root, NUM_TRAIN, NUM_VAL, NUM_TEST, seed=0, progress=False)
    assert not (root / "train" / "panoptic_train.json").exists()  # no index pointing at missing files
    assert not list(root.rglob(".*tmp*"))
    monkeypatch.setattr(synth, "render_scene", real)
    generate_synthetic(root, NUM_TRAIN, NUM_VAL, NUM_TEST, seed=0, progress=False)
    assert _files(root) == _files(dataset)
    # A complete dataset is not regenerated: nothing is rendered on a second run.
    monkeypatch.setattr(synth, "render_scene", lambda *a, **k: pytest.fail("re-rendered an existing image"))
    generate_synthetic(root, NUM_TRAIN, NUM_VAL, NUM_TEST, seed=0, progress=False)
    assert _files(root) == _files(dataset)


def test_scene_statistics(dataset):
    index = json.loads((dataset / "train" / "panoptic_train.json").read_text())
    cats = {c["id"]: c for c in index["categories"]}
    assert sum(1 for c in cats.values() if c["isthing"]) == 3 and sum(1 for c in cats.values() if not c["isthing"]) == 6
    stuff_seen, thing_seen, touching_images = set(), set(), 0
    colours: dict[int, list[np.ndarray]] = {}
    heights: dict[int, list[int]] = {}
    for ann in index["annotations"]:
        ids = _decode(dataset / "train" / "panoptic" / ann["file_name"])
        image = np.asarray(Image.open(dataset / "train" / "images" / ann["file_name"]).convert("RGB")).astype(float)
        segs = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segs)
        things = [s for s in segs.values() if cats[s["category_id"]]["isthing"]]
        assert 6 <= len(things) <= 15, f"{ann['file_name']}: {len(things)} things"
        stuff_seen |= {s["category_id"] for s in segs.values() if not cats[s["category_id"]]["isthing"]}
        thing_seen |= {s["category_id"] for s in things}
        for s in segs.values():
            m = ids == s["id"]
            assert s["area"] == m.sum()
        for s in things:
            comp, n = ndimage.label(ids == s["id"])
            assert np.bincount(comp.ravel())[1:].min() >= 12, "a visible thing fragment under 12 px is not void"
            heights.setdefault(s["category_id"], []).append(s["bbox"][3])
            colours.setdefault(s["category_id"], []).append(image[ids == s["id"]].mean(0))
        # Same-class things touching: 4-neighbours with different segment ids of one thing class.
        cat_of = np.zeros(ids.max() + 1, np.int64)
        for s in things:
            cat_of[s["id"]] = s["category_id"]
        pairs = [(ids[:, 1:], ids[:, :-1]), (ids[1:], ids[:-1])]
        touching = any(((a != b) & (cat_of[a] > 0) & (cat_of[a] == cat_of[b])).any() for a, b in pairs)
        touching_images += touching
    assert len(stuff_seen) >= 5 and len(thing_seen) >= 3
    assert touching_images > 0.5 * len(index["annotations"])
    # Colour is a cue, not a rule: every thing class still spans a wide range of colours.
    for cid, cs in colours.items():
        assert np.stack(cs).std(axis=0).min() > 30, f"class {cid} colours are too uniform"
    # Small things: every class has instances 20 px tall or less, and the largest are big.
    for cid, hs in heights.items():
        assert min(hs) <= 20 and max(hs) >= 30, f"class {cid} heights {sorted(hs)}"


def test_splits_are_independent_streams(dataset):
    # val and test are drawn from their own random streams: image i differs between them.
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL), ("test", NUM_TEST)):
        assert len(list((dataset / split / "images").iterdir())) == count
    first = {split: (dataset / split / "images" / "000000.png").read_bytes() for split in ("train", "val", "test")}
    assert len(set(first.values())) == 3
    records, _ = load_dataset("synthetic", dataset, "test")
    assert len(records) == NUM_TEST


def test_custom_size_and_argument_checks(tmp_path):
    generate_synthetic(tmp_path / "small", 2, 1, height=64, width=96, seed=3, progress=False)
    assert Image.open(tmp_path / "small" / "val" / "images" / "000000.png").size == (96, 64)
    with pytest.raises(ValueError, match="height and width"):
        generate_synthetic(tmp_path / "bad", 1, 1, height=8, progress=False)
    with pytest.raises(FileNotFoundError, match="hle synth --out"):
        load_dataset("synthetic", tmp_path / "absent", "train")
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic(tmp_path / "bad", -1, 1, progress=False)
