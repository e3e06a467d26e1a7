"""Writers: files read back by cityscapesScripts' evaluator give the same PQ as the source."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from panoptic_synth import CATEGORIES, cityscapes_pq, write_dataset
from PIL import Image

from hle.core.decode import PANOPTIC_DTYPE
from hle.core.types import PanopticResult
from hle.evaluation import (
    CITYSCAPES_TRAIN_TO_LABEL_ID,
    CocoPanopticWriter,
    cityscapes_image_id,
    pq_compute,
    write_cityscapes_panoptic,
    write_coco_panoptic,
)

DATASET_IDS = sorted(c["id"] for c in CATEGORIES)  # train id k <-> dataset id DATASET_IDS[k]


def read_ids(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def decoded_results(files, to_train):
    """The prediction files as a decoder would emit them: ids 1..n, train ids, torch maps."""
    pred = json.loads(Path(files["pred_json"]).read_text())
    for ann in sorted(pred["annotations"], key=lambda a: a["image_id"]):
        ids = read_ids(Path(files["pred_folder"]) / ann["file_name"])
        remap = {s["id"]: k + 1 for k, s in enumerate(ann["segments_info"])}
        new = np.zeros_like(ids)
        for old, k in remap.items():
            new[ids == old] = k
        thing = {c["id"]: c["isthing"] for c in CATEGORIES}
        segs = [{"id": remap[s["id"]], "category_id": to_train[s["category_id"]],
                 "isthing": thing[s["category_id"]], "score": s.get("score", 1.0)}
                for s in ann["segments_info"]]
        yield ann, PanopticResult(torch.as_tensor(new).to(PANOPTIC_DTYPE), segs)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth_w"), n_images=5, seed=7)


def assert_same_pq(a, b, tol=1e-9):
    for group in ("All", "Things", "Stuff"):
        assert a[group]["n"] == b[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(a[group][key] - b[group][key]) <= tol
    for cid in b["per_class"]:
        for key in ("pq", "sq", "rq"):
            assert abs(a["per_class"][cid][key] - b["per_class"][cid][key]) <= tol


def test_coco_writer_round_trip_through_cityscapesscripts(synth, tmp_path):
    to_train = {d: k for k, d in enumerate(DATASET_IDS)}
    out_json = tmp_path / "out" / "pred_written.json"
    written: list[str] = []

    def generator():
        for ann, result in decoded_results(synth, to_train):
            # streaming: the previous image's PNG is on disk before the next one is produced
            assert all((tmp_path / "out" / "pred_written" / name).is_file() for name in written)
            assert not out_json.exists()  # JSON only at the end
            written.append(ann["file_name"])
            yield ann["image_id"], result

    names = {a["image_id"]: a["file_name"] for a in json.loads(Path(synth["pred_json"]).read_text())["annotations"]}
    path = write_coco_panoptic(generator(), out_json, category_map=DATASET_IDS, categories=CATEGORIES,
                               file_names=names)
    assert path == out_json and len(written) == 5
    data = json.loads(out_json.read_text())
    seg = data["annotations"][0]["segments_info"][0]
    assert set(seg) >= {"id", "category_id", "iscrowd", "area", "bbox", "score"}
    assert seg["category_id"] in DATASET_IDS and "categories" in data

    reference = cityscapes_pq(synth["gt_json"], synth["pred_json"], synth["gt_folder"], synth["pred_folder"], tmp_path)
    rewritten = cityscapes_pq(synth["gt_json"], out_json, synth["gt_folder"], out_json.with_suffix(""), tmp_path)
    assert_same_pq(rewritten, reference)
    assert_same_pq(pq_compute(synth["gt_json"], out_json, workers=1), reference)


def test_coco_writer_area_bbox_and_errors(tmp_path):
    pan = np.zeros((4, 6), dtype=np.int64)
    pan[1:3, 2:5] = 3
    with CocoPanopticWriter(tmp_path / "p.json", category_map={0: 7, 1: 24}) as w:
        w.add(1, pan, [{"id": 3, "category_id": 1}, {"id": 4, "category_id": 0}])  # id 4 has no pixels
        with pytest.raises(ValueError, match=r"image 2: category id 5 has no entry in category_map"):
            w.add(2, pan, [{"id": 3, "category_id": 5}])
        with pytest.raises(ValueError, match=r"image 3: panoptic map contains ids \[3\] that are not in segments_info"):
            w.add(3, pan, [])
        with pytest.raises(ValueError, match="already written"):
            w.add(1, pan, [{"id": 3, "category_id": 1}])
    ann = json.loads((tmp_path / "p.json").read_text())["annotations"]
    assert len(ann) == 1
    assert ann[0]["segments_info"] == [{"id": 3, "category_id": 24, "iscrowd": 0, "area": 6, "bbox": [2, 1, 3, 2]}]
    np.testing.assert_array_equal(read_ids(tmp_path / "p" / "1.png"), pan)


def test_no_json_when_the_loop_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with CocoPanopticWriter(tmp_path / "p.json") as w:
            w.add(1, np.ones((2, 2), dtype=np.int64), [{"id": 1, "category_id": 0}])
            raise RuntimeError("decoder crashed")
    assert not (tmp_path / "p.json").exists()
    assert not list(tmp_path.glob(".p.json.*"))  # no temporary left behind


def test_cityscapes_writer_is_read_by_cityscapesscripts(synth, tmp_path):
    # Cityscapes-style ground truth: string ids <city>_<seq>_<frame>; the synthetic categories
    # are Cityscapes label ids (road, building, vegetation, person, car, bicycle).
    gt = json.loads(Path(synth["gt_json"]).read_text())
    pred = json.loads(Path(synth["pred_json"]).read_text())
    cs_id = {a["image_id"]: f"frankfurt_000000_{a['image_id']:06d}" for a in gt["annotations"]}
    for a in gt["annotations"] + pred["annotations"]:
        a["image_id"] = cs_id[a["image_id"]]
    gt_json = tmp_path / "cityscapes_panoptic_val.json"
    gt_json.write_text(json.dumps(gt))
    pred_json = tmp_path / "pred_src.json"
    pred_json.write_text(json.dumps(pred))

    to_train = {label: k for k, label in enumerate(CITYSCAPES_TRAIN_TO_LABEL_ID)}
    to_train[40] = 99  # the unused category never occurs
    results = ((f"/data/leftImg8bit/val/frankfurt/{cs_id[ann['image_id']]}_leftImg8bit.png", r)
               for ann, r in decoded_results(synth, to_train))
    out_json = write_cityscapes_panoptic(results, tmp_path / "results" / "cityscapes_panoptic_val.json")

    data = json.loads(out_json.read_text())
    first = data["annotations"][0]
    assert first["image_id"] == "frankfurt_000000_000001"
    assert first["file_name"] == "frankfurt_000000_000001_panoptic.png"
    for s in first["segments_info"]:
        label = s["category_id"]
        assert s["id"] == label or s["id"] // 1000 == label  # instanceIds convention

    reference = cityscapes_pq(gt_json, pred_json, synth["gt_folder"], synth["pred_folder"], tmp_path)
    written = cityscapes_pq(gt_json, out_json, synth["gt_folder"], out_json.with_suffix(""), tmp_path)
    assert_same_pq(written, reference)


def test_cityscapes_image_id():
    assert cityscapes_image_id("a/b/frankfurt_000000_000294_leftImg8bit.png") == "frankfurt_000000_000294"
    assert cityscapes_image_id("lindau_000001_000019_gtFine_panoptic.png") == "lindau_000001_000019"
    assert cityscapes_image_id("munster_000000_000019") == "munster_000000_000019"
