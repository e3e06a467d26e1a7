"""Index loaders on tiny datasets written by the tests in each official layout, plus real COCO data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datafixtures import SCENE, SCENE_CATEGORIES, bbox, scene_segments, write_coco_layout, write_image, write_panoptic_png
from hle.data import DATASETS, PanopticMapper, load_coco_panoptic, load_dataset
from hle.data.datasets import CITYSCAPES_CLASSES, cityscapes_panoptic, coco_panoptic, custom_panoptic, vistas_panoptic

REAL_COCO = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "coco"
RECORD_KEYS = {"file_name", "image_id", "pan_seg_file_name", "height", "width", "segments_info"}
SEGMENT_KEYS = {"id", "category_id", "iscrowd", "isthing", "area", "bbox"}


def _check_records(records):
    for rec in records:
        assert set(rec) >= RECORD_KEYS
        assert Path(rec["file_name"]).is_file() and Path(rec["pan_seg_file_name"]).is_file()
        for s in rec["segments_info"]:
            assert set(s) >= SEGMENT_KEYS


# ----------------------------------------------------------------------------- COCO
def test_coco_standard_layout(coco_root):
    records, md = coco_panoptic(coco_root, "val")
    _check_records(records)
    assert len(records) == 2 and records[0]["image_id"] == 1
    assert (records[0]["height"], records[0]["width"]) == SCENE.shape
    segs = {s["id"]: s for s in records[0]["segments_info"]}
    assert segs[22]["iscrowd"] == 1 and segs[22]["isthing"] == 1  # crowd kept as crowd
    assert segs[20]["isthing"] == 1 and segs[10]["isthing"] == 0
    assert md.id_to_train_id == {1: 0, 3: 1, 9: 255}  # "unlabeled" category -> ignore
    assert md.num_classes == 2


def test_custom_layout_through_dict_and_load_dataset(tmp_path):
    root = tmp_path / "mine"
    d = root / "train"
    write_image(d / "images" / "a.png", *SCENE.shape)
    write_panoptic_png(d / "panoptic" / "a.png", SCENE)
    index = {
        "images": [{"id": "a", "file_name": "a.png"}],  # no height/width: read from the image header
        "annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": scene_segments()}],
        "categories": [{"id": 1, "name": "road", "isthing": 0}, {"id": 3, "name": "car", "isthing": 1}],
    }
    (d / "panoptic_train.json").write_text(json.dumps(index))
    records, md = load_dataset("custom", root, "train")
    _check_records(records)
    assert (records[0]["height"], records[0]["width"]) == SCENE.shape
    assert md.train_id(9) == 255  # category absent from the list -> ignore
    assert set(DATASETS) == {"coco", "cityscapes", "vistas", "custom", "synthetic"}
    assert custom_panoptic(root, "train")[0] == records


def test_custom_flat_layout_serves_every_split(tmp_path):
    # images/, panoptic/, panoptic.json at the root (as COCO's sample data ships): one set
    # of images for every split name; a split folder, when present, still wins.
    root = tmp_path / "flat"
    write_image(root / "images" / "a.png", *SCENE.shape)
    write_panoptic_png(root / "panoptic" / "a_pan.png", SCENE)
    index = {
        "images": [{"id": 7, "file_name": "a.png"}],
        "annotations": [{"image_id": 7, "file_name": "a_pan.png", "segments_info": scene_segments()}],
        "categories": SCENE_CATEGORIES,
    }
    (root / "panoptic.json").write_text(json.dumps(index))
    train, md = load_dataset("custom", root, "train")
    val, _ = load_dataset("custom", root, "val")
    _check_records(train)
    assert train == val and train[0]["pan_seg_file_name"].endswith("a_pan.png") and md.num_classes == 2
    with pytest.raises(FileNotFoundError, match="flat layout"):
        load_dataset("custom", tmp_path / "empty", "train")


def test_missing_files_name_the_path(tmp_path):
    root = write_coco_layout(tmp_path / "coco")
    png = root / "annotations" / "panoptic_val2017" / "000000000001.png"
    png.unlink()
    with pytest.raises(FileNotFoundError, match=str(png)):
        coco_panoptic(root, "val")
    with pytest.raises(FileNotFoundError, match="train2017"):
        coco_panoptic(root, "train")
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_coco_panoptic(tmp_path / "nope", root / "annotations" / "panoptic_val2017.json", root)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", root, "val")


# ----------------------------------------------------------------------- Cityscapes
def _write_cityscapes(root: Path) -> np.ndarray:
    """leftImg8bit + gtFine instanceIds, then cityscapesScripts' own createPanopticImgs."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    inst = np.array(
        [
            [23, 23, 23, 23, 23, 23, 0, 0],
            [11, 11, 24000, 24000, 24001, 11, 9, 9],
            [11, 26000, 26000, 24000, 24001, 26, 26, 29001],
            [7, 26000, 26000, 7, 7, 26, 26, 7],
            [7, 7, 7, 7, 7, 7, 7, 7],
        ],
        dtype=np.uint16,
    )
    name = "frankfurt_000000_000294"
    write_image(root / "leftImg8bit" / "val" / "frankfurt" / f"{name}_leftImg8bit.png", *inst.shape)
    gt = root / "gtFine" / "val" / "frankfurt"
    gt.mkdir(parents=True)
    Image.fromarray(inst).save(gt / f"{name}_gtFine_instanceIds.png")
    convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(root / "gtFine"), setNames=["val"])
    return inst.astype(np.int64)


def test_cityscapes_table_matches_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    reference = sorted((l.trainId, l.name, l.id, l.hasInstances, tuple(l.color)) for l in labels if not l.ignoreInEval)
    ours = [(t, n, lid, th, col) for t, (n, lid, th, col) in enumerate(CITYSCAPES_CLASSES)]
    assert ours == reference
    assert sum(th for _, _, th, _ in CITYSCAPES_CLASSES) == 8


def test_cityscapes_createPanopticImgs_layout(tmp_path, capsys):
    from cityscapesscripts.helpers.labels import id2label

    inst = _write_cityscapes(tmp_path / "cs")
    records, md = cityscapes_panoptic(tmp_path / "cs", "val")
    _check_records(records)
    assert md.num_classes == 19 and len(md.thing_train_ids) == 8
    rec = records[0]
    assert rec["image_id"] == "frankfurt_000000_000294"
    crowd = [s for s in rec["segments_info"] if s["iscrowd"]]
    assert [s["category_id"] for s in crowd] == [26]  # the car group (id 26 < 1000) stays crowd

    # Targets against the Cityscapes label table: trainId per pixel, 255 where ignoreInEval.
    out = PanopticMapper(md, train=False, mean=(0, 0, 0), std=(1, 1, 1))(rec)
    t = out["targets"]
    label_id = np.where(inst >= 1000, inst // 1000, inst)
    expected = np.vectorize(lambda i: id2label[int(i)].trainId)(label_id)
    expected[expected < 0] = 255
    assert t.semantic.numpy().tolist() == expected.tolist()
    assert t.crowd.numpy().tolist() == (inst == 26).tolist()
    # Instance ids: one per non-crowd evaluated thing instance, a bijection with instanceIds values.
    things = (inst >= 1000) & (expected != 255)
    assert ((t.instance.numpy() > 0) == things).all()
    pairs = {(int(a), int(b)) for a, b in zip(inst[things], t.instance.numpy()[things])}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 3


# --------------------------------------------------------------------------- Vistas
def _vistas_fixture(root: Path, version: str) -> np.ndarray:
    road_name, person_name = "construction--flat--road", "human--person"
    labels = [
        {"name": road_name, "readable": "Road", "instances": False, "evaluate": True, "color": [128, 64, 128]},
        {"name": person_name, "readable": "Person", "instances": True, "evaluate": True, "color": [220, 20, 60]},
        {"name": "void--ego-vehicle", "readable": "Ego Vehicle", "instances": False, "evaluate": False, "color": [0, 0, 0]},
    ]
    ids = np.array([[1, 1, 5, 5], [1, 7, 7, 5], [1, 7, 8, 0], [9, 9, 9, 9]], dtype=np.int64)
    segs = [
        {"id": 1, "category_id": 1, "iscrowd": 0},
        {"id": 5, "category_id": 2, "iscrowd": 0},
        {"id": 7, "category_id": 2, "iscrowd": 1},
        {"id": 8, "category_id": 3, "iscrowd": 0},
        {"id": 9, "category_id": 4, "iscrowd": 0},
    ]
    for s in segs:
        s.update(area=int((ids == s["id"]).sum()), bbox=bbox(ids, s["id"]))
    if version == "1.2":
        # v1.2 panoptic JSONs keep the readable name in "name", the full name in "supercategory".
        cats = [
            {"id": 1, "name": "Road", "supercategory": road_name, "isthing": 0, "color": [128, 64, 128]},
            # no "isthing": taken from the config's "instances" flag
            {"id": 2, "name": "Person", "supercategory": person_name, "color": [220, 20, 60]},
            # matched to the config through the readable name only ("Ego_Vehicle" ~ "Ego Vehicle")
            {"id": 3, "name": "Ego_Vehicle", "supercategory": "void--ego-vehicle-x", "isthing": 0, "color": [0, 0, 0]},
            {"id": 4, "name": "Unlabeled", "supercategory": "void--unlabeled", "isthing": 0, "color": [0, 0, 0]},
        ]
        split, pan_dir, js, cfg = "training", root / "training" / "panoptic", "panoptic_2018.json", "config.json"
    else:
        cats = [
            {"id": 1, "name": road_name, "supercategory": "construction--flat", "isthing": 0, "color": [128, 64, 128]},
            {"id": 2, "name": person_name, "supercategory": "human", "isthing": 1, "color": [220, 20, 60]},
            {"id": 3, "name": "void--ego-vehicle", "supercategory": "void", "isthing": 0, "color": [0, 0, 0]},
            {"id": 4, "name": "void--unlabeled", "supercategory": "void", "isthing": 0, "color": [0, 0, 0]},
        ]
        split, pan_dir, js, cfg = "validation", root / "validation" / "v2.0" / "panoptic", "panoptic_2020.json", "config_v2.0.json"
    key = "-0a1b2c3d4e5f6g"
    write_image(root / split / "images" / f"{key}.jpg", *ids.shape)
    write_panoptic_png(pan_dir / f"{key}.png", ids)
    index = {
        "images": [{"id": key, "file_name": f"{key}.jpg", "height": 4, "width": 4}],
        "annotations": [{"image_id": key, "file_name": f"{key}.png", "segments_info": segs}],
        "categories": cats,
    }
    (pan_dir / js).write_text(json.dumps(index))
    (root / cfg).write_text(json.dumps({"labels": labels, "version": version}))
    return ids


@pytest.mark.parametrize("version, split", [("1.2", "train"), ("2.0", "val")])
def test_vistas_layouts(tmp_path, version, split):
    ids = _vistas_fixture(tmp_path / "vistas", version)
    records, md = vistas_panoptic(tmp_path / "vistas", split)
    _check_records(records)
    assert md.num_classes == 2 and md.thing_train_ids == [1]
    assert md.train_id(3) == 255 and md.train_id(4) == 255  # evaluate=false and unlabeled -> ignore
    out = PanopticMapper(md, train=False)(records[0])
    t = out["targets"]
    expected = np.select([ids == 1, (ids == 5) | (ids == 7)], [0, 1], 255)
    assert t.semantic.numpy().tolist() == expected.tolist()
    assert t.crowd.numpy().tolist() == (ids == 7).tolist()
    assert t.instance.numpy().tolist() == (ids == 5).astype(int).tolist()
    with pytest.raises(FileNotFoundError, match="panoptic_20"):
        vistas_panoptic(tmp_path / "vistas", "val" if split == "train" else "train")


def test_vistas_explicit_version_missing(tmp_path):
    _vistas_fixture(tmp_path / "v", "1.2")
    with pytest.raises(FileNotFoundError, match="panoptic_2020.json"):
        vistas_panoptic(tmp_path / "v", "train", version="2.0")
    with pytest.raises(ValueError, match="split must be"):
        vistas_panoptic(tmp_path / "v", "test")


# ------------------------------------------------------------------------ real data
@pytest.mark.skipif(not REAL_COCO.is_dir(), reason=f"real COCO sample not present at {REAL_COCO}")
def test_real_coco_sample():
    records, md = load_coco_panoptic(REAL_COCO / "images", REAL_COCO / "panoptic.json", REAL_COCO / "panoptic")
    _check_records(records)
    assert md.num_classes == 133 and len(md.thing_train_ids) == 80
    assert sum(s["iscrowd"] for r in records for s in r["segments_info"]) == 3
    evaluator = PanopticMapper(md, train=False, max_side=640)
    trainer = PanopticMapper(md, train=True, crop_size=(512, 512), max_side=640, seed=1)
    for i, rec in enumerate(records):
        out = evaluator(rec)
        assert out["image"].shape[1:] == (rec["height"], rec["width"])
        # Areas of the decoded PNG equal panopticapi's areas stored in the JSON.
        areas = {s["id"]: s["area"] for s in out["segments_info"]}
        assert areas == {s["id"]: s["area"] for s in rec["segments_info"]}
        t = out["targets"]
        n_crowd = sum(s["iscrowd"] for s in rec["segments_info"])
        assert bool(t.crowd.any()) == (n_crowd > 0)
        n_inst = sum(1 for s in rec["segments_info"] if s["isthing"] and not s["iscrowd"])
        assert int(t.instance.max()) == n_inst
        tr = trainer(rec, index=i)
        assert tr["image"].shape == (3, 512, 512) and tr["targets"].semantic.shape == (512, 512)
        assert torch.isfinite(tr["image"]).all()
