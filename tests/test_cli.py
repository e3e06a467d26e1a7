"""The ``hle`` command line (hle/cli.py): help, one-line errors, train/evaluate/predict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hle.cli import main

SUBCOMMANDS = ["train", "evaluate", "predict", "demo", "synth", "pq"]


@pytest.mark.parametrize("command", [[], *([c] for c in SUBCOMMANDS)])
def test_help_is_complete(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hle")
    for word in (SUBCOMMANDS if not command else []):
        assert word in text


@pytest.mark.slow
def test_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("hle")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "hle.cli"]
    done = subprocess.run([*cmd, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "KEY=VALUE" in done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic dataset and a 2-step checkpoint trained through ``hle train``."""
    from hle.data import generate_synthetic

    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    generate_synthetic(data, 4, 2, height=64, width=96, seed=5, progress=False)
    run = root / "run"
    code = main([
        "train", "synthetic", f"data.root={data}", "data.crop_size=[64,96]", "data.num_workers=0",
        "model.options={backbone_options: {widths: [8, 8, 16, 16]}}", "train.batch_size=2",
        "train.steps=2", "train.checkpoint_every=0", "train.device=cpu", "eval.flip=false",
        "--out", str(run), "--no-progress",
    ])
    assert code == 0
    return {"data": data, "run": run, "checkpoint": run / "last.pt"}


def _check_coco_panoptic(json_path: Path, png_folder: Path, category_ids: set[int]) -> None:
    index = json.loads(json_path.read_text())
    assert {"images", "annotations", "categories"} <= set(index) and index["annotations"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in index["images"]}
    for ann in index["annotations"]:
        rgb = np.asarray(Image.open(png_folder / ann["file_name"]).convert("RGB")).astype(np.int64)
        assert rgb.shape[:2] == sizes[ann["image_id"]] == (64, 96)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        listed = {s["id"] for s in ann["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == listed  # every id in the PNG is described
        for s in ann["segments_info"]:
            assert s["category_id"] in category_ids and s["area"] == int((ids == s["id"]).sum())


@pytest.mark.parametrize(
    ("flags", "resize"),
    [([], []), ([], ["data.max_side=64"]), (["--native-resolution"], ["data.max_side=64"])],
    ids=["original_size", "max_side", "max_side_native_resolution"],
)
def test_evaluate_prints_pq_and_writes_coco_panoptic(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], resize: list[str]
) -> None:
    # With a max side (64 < 96) the network sees a smaller image (43x64, not a multiple
    # of the stride 4); predictions and PQ must still be at the dataset's original
    # resolution, also when the network's stride-4 outputs are decoded directly.
    out = tmp_path / "eval"
    code = main(["evaluate", str(trained["checkpoint"]), "--data", "synthetic", "--root", str(trained["data"]),
                 "--out", str(out), "--no-flip", *flags, "eval.decoder.min_stuff_area=8", *resize])
    assert code == 0
    text = capsys.readouterr().out
    assert "Things" in text and "Stuff" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(0.0 <= metrics[k] <= 100.0 for k in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"))
    assert metrics["decoder"]["min_stuff_area"] == 8
    assert metrics["native_resolution"] is bool(flags)
    _check_coco_panoptic(out / "panoptic_val.json", out / "panoptic_val", set(range(1, 10)))
    # the written files evaluate with the official-format pq_compute to the same PQ
    from hle.evaluation import pq_compute

    again = pq_compute(trained["data"] / "val" / "panoptic_val.json", out / "panoptic_val.json",
                       gt_folder=trained["data"] / "val" / "panoptic", pred_folder=out / "panoptic_val")
    assert 100.0 * again["All"]["pq"] == pytest.approx(metrics["PQ"], abs=1e-9)


@pytest.mark.parametrize("flags", [[], ["--native-resolution"]], ids=["full_resolution", "native_resolution"])
def test_predict_accepts_files_folders_and_globs(trained: dict[str, Path], tmp_path: Path, flags: list[str]) -> None:
    images = trained["data"] / "val" / "images"
    out = tmp_path / "pred"
    code = main(["predict", str(trained["checkpoint"]), str(images), str(images / "*.png"), "--out", str(out), *flags])
    assert code == 0
    names = sorted(p.name for p in images.iterdir())
    for name in names:
        stem = Path(name).stem
        meta = json.loads((out / f"{stem}.json").read_text())
        rgb = np.asarray(Image.open(out / f"{stem}.png").convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        assert ids.shape == (meta["height"], meta["width"]) == (64, 96)
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in meta["segments_info"]}
        assert Image.open(out / f"{stem}_overlay.png").size == (96, 64)
    # the second argument (a glob over the same files) got de-duplicated names
    assert len(list(out.glob("*_overlay.png"))) == 2 * len(names)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "no_such_config"], "unknown config 'no_such_config'"),
        (["train", "synthetic", "train.stepz=3"], "unknown config key 'train.stepz'"),
        (["train", "synthetic", "train.steps=many"], "train.steps: expected int"),
        (["evaluate", "missing.pt", "--data", "synthetic", "--root", "."], "checkpoint not found: missing.pt"),
        (["predict", "missing.pt", "nothing_here.png", "--out", "x"], "image not found: nothing_here.png"),
        (["demo", "--minutes", "0"], "--minutes must be > 0"),
        (["evaluate", "pyproject.toml", "--data", "synthetic", "--root", "."], "is not a readable checkpoint"),
        (["train", "synthetic", "data.root=/no/such/folder"], "not found"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_dataset_is_one_line(trained: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained["checkpoint"]), "--data", "kitti", "--root", str(trained["data"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown dataset 'kitti'" in err and len(err.splitlines()) == 1
