"""File-based and streaming panoptic evaluation against cityscapesScripts and pycocotools."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from panoptic_synth import CATEGORIES, cityscapes_pq, write_dataset
from PIL import Image

from hle.core.decode import PANOPTIC_DTYPE
from hle.evaluation import PanopticEvaluator, format_pq_table, pq_compute

REALDATA = Path(__file__).parents[2].parent / "shared" / "realdata" / "coco"


def read_ids(path: Path) -> np.ndarray:
    """Independent PNG decoding for the tests (R + 256 G + 256^2 B)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def assert_same_pq(ours: dict, ref: dict, tol: float = 1e-9) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - ref[group][key]) <= tol, (group, key)
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cid, r in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cid][key] - r[key]) <= tol, (cid, key)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), n_images=8, seed=3)


# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_cityscapesscripts(tmp_path, seed):
    files = write_dataset(tmp_path, n_images=6, seed=seed)
    ours = pq_compute(files["gt_json"], files["pred_json"], workers=1)
    ref = cityscapes_pq(files["gt_json"], files["pred_json"], files["gt_folder"], files["pred_folder"], tmp_path)
    assert_same_pq(ours, ref)
    assert ours["n_images"] == 6
    # the generated data exercises matches, misses and false positives for things and stuff
    for isthing in (0, 1):
        rows = [r for r in ours["per_class"].values() if r["isthing"] == isthing]
        assert all(sum(r[k] for r in rows) > 0 for k in ("tp", "fp", "fn"))
    gt = json.loads(Path(files["gt_json"]).read_text())
    segs = [s for a in gt["annotations"] for s in a["segments_info"]]
    assert any(s["iscrowd"] for s in segs) and any(s["area"] <= 3 for s in segs)
    assert ours["Things"]["n"] == 3 and ours["Stuff"]["n"] == 3  # the unused class is not counted


def test_two_worker_processes_equal_one(synth):
    one = pq_compute(synth["gt_json"], synth["pred_json"], workers=1)
    two = pq_compute(synth["gt_json"], synth["pred_json"], workers=2)
    assert_same_pq(two, one, tol=1e-12)
    for key in ("pq_dagger", "pc", "miou"):
        assert two[key]["All"][key] == pytest.approx(one[key]["All"][key], abs=1e-12)
    assert [two["per_class"][c]["tp"] for c in two["per_class"]] == [one["per_class"][c]["tp"] for c in one["per_class"]]


def test_gt_against_itself(tmp_path):
    files = write_dataset(tmp_path / "single", n_images=5, seed=4, double_crowd=False)
    r = pq_compute(files["gt_json"], files["gt_json"], workers=1)
    for key, sub in (("All", "pq"), ("pq_dagger", None), ("pc", None), ("miou", None)):
        value = r[key][sub] if sub else r[key]["All"][key]
        assert value == 1.0, key
    # With two crowd regions of one class, panopticapi's rule (only the last crowd region of
    # a class excuses a prediction) makes the ground truth imperfect against itself; the
    # official tool agrees.
    files = write_dataset(tmp_path / "double", n_images=5, seed=4, double_crowd=True)
    r = pq_compute(files["gt_json"], files["gt_json"], workers=1)
    ref = cityscapes_pq(files["gt_json"], files["gt_json"], files["gt_folder"], files["gt_folder"], tmp_path)
    assert_same_pq(r, ref)
    assert r["Things"]["pq"] < 1.0 and r["Stuff"]["pq"] == 1.0


# ---------------------------------------------------------------- streaming evaluator


def stream(files, evaluator, images=None):
    gt = json.loads(Path(files["gt_json"]).read_text())
    pred = {a["image_id"]: a for a in json.loads(Path(files["pred_json"]).read_text())["annotations"]}
    for ann in gt["annotations"][images]:
        p = pred[ann["image_id"]]
        # Predictions as the decoder hands them over: torch maps of its id dtype.
        pred_ids = torch.as_tensor(read_ids(Path(files["pred_folder"]) / p["file_name"])).to(PANOPTIC_DTYPE)
        evaluator.process(read_ids(Path(files["gt_folder"]) / ann["file_name"]), ann["segments_info"],
                          pred_ids, p["segments_info"], image_id=ann["image_id"])
    return evaluator


def test_streaming_equals_file_based_and_halves_merge(synth):
    whole = stream(synth, PanopticEvaluator(CATEGORIES), slice(None)).evaluate()
    files = pq_compute(synth["gt_json"], synth["pred_json"], workers=1)
    assert_same_pq(whole, files, tol=1e-12)
    for key in ("pq_dagger", "pc", "miou"):
        for group in ("All", "Things", "Stuff"):
            assert whole[key][group] == pytest.approx(files[key][group], abs=1e-12)

    first = stream(synth, PanopticEvaluator(CATEGORIES), slice(0, 3))
    second = stream(synth, PanopticEvaluator(CATEGORIES), slice(3, None))
    merged = PanopticEvaluator(CATEGORIES).merge(first).merge(second).evaluate()
    assert_same_pq(merged, whole, tol=1e-12)
    # the picklable state route (what torch.distributed.all_gather_object carries)
    via_state = PanopticEvaluator(CATEGORIES).merge_state(first.state()).merge_state(second.state())
    assert_same_pq(via_state.evaluate(), whole, tol=1e-12)
    first.reset()
    assert first.stat.n_images == 0


def test_synchronize_is_a_no_op_without_torch_distributed(synth):
    ev = stream(synth, PanopticEvaluator(CATEGORIES), slice(0, 2))
    before = ev.evaluate()
    ev.synchronize()
    assert ev.evaluate() == before


# ---------------------------------------------------------------- bad files


def corrupt(files, tmp_path, edit_json=None, edit_png=None, image=0):
    root = tmp_path / "bad"
    shutil.copytree(Path(files["gt_json"]).parent, root)
    pred_json = root / "pred.json"
    data = json.loads(pred_json.read_text())
    ann = sorted(data["annotations"], key=lambda a: a["image_id"])[image]
    if edit_json:
        edit_json(data, ann)
    pred_json.write_text(json.dumps(data))
    if edit_png:
        path = root / "pred" / ann["file_name"]
        arr = np.asarray(Image.open(path).convert("RGB")).copy()
        Image.fromarray(edit_png(arr)).save(path)
    return root / "gt.json", pred_json, ann["image_id"]


@pytest.mark.parametrize(
    "edit_json, edit_png, message",
    [
        (lambda d, a: a["segments_info"].pop(), None, r"prediction PNG contains segment ids \[\d+\] that are not in its segments_info"),
        (lambda d, a: a["segments_info"].append({"id": 77, "category_id": 7}), None, r"lists segment ids \[77\] that are not in its PNG"),
        (lambda d, a: a["segments_info"][0].update(category_id=999), None, r"unknown category ids"),
        (lambda d, a: a["segments_info"].append(dict(a["segments_info"][0])), None, r"duplicate segment ids"),
        (None, lambda arr: arr[:-1], r"prediction PNG .* is \d+x\d+ \(WxH\) but the ground truth .* is \d+x\d+"),
        (lambda d, a: d["annotations"].remove(a), None, r"no prediction for ground-truth image 1 \(img000.png\)"),
        (lambda d, a: a.update(file_name="nope.png"), None, r"prediction PNG not found: .*nope.png"),
    ],
)
def test_bad_files_name_the_image_and_problem(synth, tmp_path, edit_json, edit_png, message):
    gt_json, pred_json, image_id = corrupt(synth, tmp_path, edit_json, edit_png)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        pq_compute(gt_json, pred_json, workers=1)
    assert f"image {image_id}" in str(info.value) or f"image {image_id!r}" in str(info.value)


def test_missing_files_and_folders(synth, tmp_path):
    with pytest.raises(FileNotFoundError, match="prediction JSON not found"):
        pq_compute(synth["gt_json"], tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="prediction PNG folder not found"):
        pq_compute(synth["gt_json"], synth["pred_json"], pred_folder=tmp_path / "nowhere")


# ---------------------------------------------------------------- table and CLI


def test_format_table(synth):
    r = pq_compute(synth["gt_json"], synth["pred_json"], workers=1)
    table = format_pq_table(r)
    all_row = next(line for line in table.splitlines() if line.startswith("All "))
    assert f"{100 * r['All']['pq']:5.1f}" in all_row and all_row.rstrip().endswith(str(r["All"]["n"]))
    assert "unused" not in table and "thing24" in table and "PQ†" in table


# ---------------------------------------------------------------- real COCO data


needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real COCO sample not found at {REALDATA}")


@needs_realdata
def test_real_coco_against_itself_and_perturbed(tmp_path):
    gt_json = REALDATA / "panoptic.json"
    gt_folder = REALDATA / "panoptic"
    r = pq_compute(gt_json, gt_json, gt_folder, gt_folder, workers=1, compute_ap=True)
    assert r["All"]["pq"] == 1.0 and r["n_images"] == 3
    assert r["ap"]["ap"] == pytest.approx(1.0)

    # Perturbed copy: shift every map by 3 px, drop one segment per image, relabel one.
    gt = json.loads(gt_json.read_text())
    (tmp_path / "pred").mkdir()
    rng = np.random.default_rng(0)
    anns = []
    for ann in gt["annotations"]:
        ids = np.roll(read_ids(gt_folder / ann["file_name"]), (3, -2), axis=(0, 1))
        segs = [dict(s) for s in ann["segments_info"] if (ids == s["id"]).any()]
        dropped = segs.pop(int(rng.integers(len(segs))))
        ids[ids == dropped["id"]] = 0
        segs[0]["category_id"] = gt["categories"][5]["id"]
        for s in segs:
            s.pop("iscrowd", None)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / "pred" / ann["file_name"])
        anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segs})
    pred_json = tmp_path / "pred.json"
    pred_json.write_text(json.dumps({"annotations": anns}))
    ours = pq_compute(gt_json, pred_json, gt_folder, workers=1)
    ref = cityscapes_pq(gt_json, pred_json, gt_folder, tmp_path / "pred", tmp_path)
    assert_same_pq(ours, ref)
    assert 0.3 < ours["All"]["pq"] < 1.0 and not math.isnan(ours["pc"]["All"]["pc"])


def _rank_main(rank: int, files: dict, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ev = stream(files, PanopticEvaluator(CATEGORIES), slice(0, 3) if rank == 0 else slice(3, None))
        ev.synchronize()
        Path(f"{out}.{rank}").write_text(json.dumps(ev.evaluate()["All"]))
    finally:
        dist.destroy_process_group()


def test_synchronize_merges_two_torch_distributed_ranks(synth, tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    out = str(tmp_path / "all")
    procs = [ctx.Process(target=_rank_main, args=(r, synth, str(tmp_path / "store"), out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    whole = stream(synth, PanopticEvaluator(CATEGORIES), slice(None)).evaluate()["All"]
    for rank in range(2):
        got = json.loads(Path(f"{out}.{rank}").read_text())
        assert got["n"] == whole["n"] and got["pq"] == pytest.approx(whole["pq"], abs=1e-12)
