"""``hle demo`` end to end on a handful of images (hle/engine/demo.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from hle.data.synthetic import SYNTHETIC_CATEGORIES
from hle.engine.demo import run_demo


@pytest.mark.slow
def test_demo_writes_test_metrics_figures_and_reruns_without_retraining(tmp_path: Path) -> None:
    small = [
        "data.num_workers=0", "model.options={backbone_options: {widths: [8, 8, 16, 16]}}",
        "train.batch_size=2", "train.eval_every=1", "train.device=cpu", "eval.flip=false",
    ]
    out = tmp_path / "demo"
    metrics = run_demo(out, steps=2, overrides=small, progress=False, num_train=4, num_val=2, num_test=3)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["split"] == "test" and on_disk["n_images"] == 3  # reported on test, not val
    assert set(on_disk["per_class_pq"]) == {c["name"] for c in SYNTHETIC_CATEGORIES}
    assert on_disk["steps"] == metrics["steps"] == 2 and on_disk["total_minutes"] > 0
    assert [r["step"] for r in on_disk["val_curve"]] == [1, 2]  # the curve: one val evaluation per step
    for name in ("input", "prediction", "ground_truth", "embedding_rgb", "distance_heatmap", "overview", "pq_vs_steps"):
        path = out / "figures" / f"{name}.png"
        assert path.is_file() and Image.open(path).size[0] > 0
    assert Image.open(out / "figures" / "input.png").size == (256, 128)  # the demo's image size
    # a second run finds the finished checkpoint: no further steps, same data, same result
    again = run_demo(out, steps=2, overrides=small, progress=False, num_train=4, num_val=2, num_test=3)
    assert again["steps"] == 2 and again["PQ"] == pytest.approx(metrics["PQ"])


def test_cpu_plan_uses_both_cores_only_when_they_are_free() -> None:
    from hle.engine.demo import cpu_plan

    assert cpu_plan(2, 0.1) == ["train.threads=2", "data.num_workers=0"]
    assert cpu_plan(2, 0.6) == ["train.threads=1", "data.num_workers=1"]
    assert cpu_plan(2, 3.0) == ["train.threads=1", "data.num_workers=1"]
    assert cpu_plan(16, 9.0) == ["train.threads=8", "data.num_workers=2"]


def test_busy_cores_is_a_core_count_or_unknown() -> None:
    from hle.engine.demo import busy_cores

    import os

    busy = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9
