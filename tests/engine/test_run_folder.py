"""Run-folder rules: refuse, replace, resume (hle/engine/run_folder.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hle.engine import run_folder as rf


def _fake_run(out: Path) -> None:
    (out / "tb").mkdir(parents=True)
    (out / "tb" / "events.1").write_text("old")
    for name in ("last.pt", "last.prev.pt", "best.pt", "config.yaml"):
        (out / name).write_text(name)
    (out / "metrics.jsonl").write_text('{"step": 2, "PQ": 1}\n{"step": 4, "PQ": 2}\n')
    (out / "last.pt.tmp-abc").write_text("partial")
    (out / "notes.txt").write_text("mine")


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path: Path) -> None:
    rf.check_run_folder(tmp_path / "new", resume=False, overwrite=False)  # nothing there: fine
    (tmp_path / "empty").mkdir()
    rf.check_run_folder(tmp_path / "empty", resume=False, overwrite=False)
    _fake_run(tmp_path / "run")
    with pytest.raises(rf.RunExistsError, match="already holds a training run .last.pt.*--resume.*--overwrite"):
        rf.check_run_folder(tmp_path / "run", resume=False, overwrite=False)
    rf.check_run_folder(tmp_path / "run", resume=True, overwrite=False)
    rf.check_run_folder(tmp_path / "run", resume=False, overwrite=True)
    with pytest.raises(ValueError, match="exclude each other"):
        rf.check_run_folder(tmp_path / "run", resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is an existing file"):
        rf.check_run_folder(tmp_path / "file", resume=False, overwrite=False)


def test_clear_run_removes_the_trainer_files_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _fake_run(out)
    removed = rf.clear_run(out)
    assert set(removed) == set(rf.RUN_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert rf.run_files(out) == []


def test_truncate_metrics_keeps_lines_up_to_the_checkpoint_and_drops_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "PQ": 1}\n{"step": 4, "PQ": 2}\n{"step": 6, "PQ": 3}\n{"step": 8, "P')
    assert rf.truncate_metrics(path, 4) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
    assert rf.truncate_metrics(path, 4) == 0  # nothing to drop: untouched
    assert rf.truncate_metrics(tmp_path / "none.jsonl", 4) == 0
