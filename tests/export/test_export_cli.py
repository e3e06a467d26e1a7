"""hle/export/cli.py: ``hle export``, ``hle predict --onnx`` and ``hle explore`` from the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hle.cli import main
from hle.io import read_panoptic

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("command", ["export", "explore"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith(f"usage: hle {command}")


@pytest.mark.slow
def test_export_writes_a_checked_onnx_file(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    out = tmp_path / "sub" / "model.onnx"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "onnxruntime vs PyTorch max |difference| embedding" in text
    onnx.checker.check_model(onnx.load(str(out)))
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary or external-data files left


def test_predict_onnx_writes_what_the_checkpoint_writes(checkpoint: Path, exported: Path, synth: Path, tmp_path: Path) -> None:
    images = synth / "val" / "images"
    assert main(["predict", "--onnx", str(exported), str(images), "--out", str(tmp_path / "onnx")]) == 0
    assert main(["predict", str(checkpoint), str(images), "--native-resolution", "--out", str(tmp_path / "torch")]) == 0
    written = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "torch").iterdir()) and len(written) == 9
    for name in (n for n in written if n.endswith(".json")):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("onnx", "torch"))
        assert [dict(s, score=0) for s in a["segments_info"]] == [dict(s, score=0) for s in b["segments_info"]]
        assert [s["score"] for s in a["segments_info"]] == pytest.approx([s["score"] for s in b["segments_info"]], abs=1e-5)
        stem = name[: -len(".json")]
        assert np.array_equal(read_panoptic(tmp_path / "onnx" / f"{stem}.png"), read_panoptic(tmp_path / "torch" / f"{stem}.png"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--full-resolution"], "drop --full-resolution"), (["--device", "cuda"], "drop --device cuda")],
)
def test_predict_onnx_refuses_what_the_graph_cannot_do(
    exported: Path, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    code = main(["predict", "--onnx", str(exported), str(synth / "val" / "images"), "--out", str(tmp_path), *flags])
    assert code == 2 and message in capsys.readouterr().err


def test_predict_onnx_names_a_foreign_file(synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "random.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    code = main(["predict", "--onnx", str(bad), str(synth / "val" / "images"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hle predict: error: ") and "random.onnx is not a readable ONNX model" in err


def test_predict_without_images_is_an_error(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "no IMAGES given" in capsys.readouterr().err


def test_export_names_the_missing_extra(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'hle[export]'" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_export_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["checkpoint", "exported"])
def test_explore_writes_one_page_from_a_checkpoint_or_an_onnx_file(
    source: str, request: pytest.FixtureRequest, synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = request.getfixturevalue(source)
    out = tmp_path / "page.html"
    assert main(["explore", str(model), str(synth / "val" / "images" / "000000.png"), "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and '"name":"000000.png"' in html
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
