"""COCO mask AP of panoptic predictions (pycocotools), hand cases and ground truth as prediction."""
from __future__ import annotations

import numpy as np
import pytest
from panoptic_synth import write_dataset

from hle.evaluation import MaskAPAccumulator, instance_ap


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth_ap"), n_images=6, seed=3)


def test_mask_ap_hand_cases():
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[2:10, 2:10] = 1
    gt_segs = [{"id": 1, "category_id": 24, "iscrowd": 0}]
    exact = gt.copy()
    spurious = gt.copy()
    spurious[12:18, 12:18] = 2

    def ap(pred, segs):
        acc = MaskAPAccumulator([24, 26])
        acc.add(gt, gt_segs, pred, segs)
        return acc.evaluate()["ap"]

    assert ap(exact, [{"id": 1, "category_id": 24}]) == pytest.approx(1.0)
    # a false positive ranked below the true positive leaves precision 1 up to recall 1
    assert ap(spurious, [{"id": 1, "category_id": 24, "score": 0.9},
                         {"id": 2, "category_id": 24, "score": 0.1}]) == pytest.approx(1.0)
    # ranked above it, precision at recall 1 is 1/2 at every IoU threshold -> AP = 0.5
    assert ap(spurious, [{"id": 1, "category_id": 24, "score": 0.1},
                         {"id": 2, "category_id": 24, "score": 0.9}]) == pytest.approx(0.5)
    assert ap(np.zeros_like(gt), []) == 0.0


def test_instance_ap_of_ground_truth_is_one(synth):
    r = instance_ap(synth["gt_json"], synth["gt_json"], workers=1)
    assert r["ap"] == pytest.approx(1.0) and r["ap50"] == pytest.approx(1.0)
    noisy = instance_ap(synth["gt_json"], synth["pred_json"], workers=1)
    assert 0.0 <= noisy["ap"] < 1.0
