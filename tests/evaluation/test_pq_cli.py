"""The ``hle pq`` argument definitions and runner."""
from __future__ import annotations

import argparse
import json

import pytest
from panoptic_synth import write_dataset

from hle.evaluation import format_pq_table, pq_compute
from hle.evaluation.cli import add_pq_arguments, run_pq


def test_pq_command_prints_table_or_json(tmp_path, capsys):
    files = write_dataset(tmp_path, n_images=4, seed=5)
    r = pq_compute(files["gt_json"], files["pred_json"], workers=1)
    parser = argparse.ArgumentParser()
    add_pq_arguments(parser)
    args = parser.parse_args([str(files["gt_json"]), str(files["pred_json"]), "--json", "--workers", "1"])
    assert run_pq(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["All"]["pq"] == pytest.approx(r["All"]["pq"], abs=1e-12)
    assert set(printed) >= {"All", "Things", "Stuff", "per_class", "pq_dagger", "pc", "miou"}
    args = parser.parse_args([str(files["gt_json"]), str(files["pred_json"]), "--workers", "1",
                              "--gt-folder", str(files["gt_folder"]), "--pred-folder", str(files["pred_folder"])])
    assert run_pq(args) == 0
    assert capsys.readouterr().out.strip() == format_pq_table(r)


def test_pq_command_user_errors_are_one_line(tmp_path):
    files = write_dataset(tmp_path, n_images=2, seed=5)
    parser = argparse.ArgumentParser()
    add_pq_arguments(parser)
    with pytest.raises(FileNotFoundError, match=r"^prediction JSON not found: \S+$"):
        run_pq(parser.parse_args([str(files["gt_json"]), str(tmp_path / "nope.json")]))
    with pytest.raises(ValueError, match="--workers: expected a positive number, got 0"):
        run_pq(parser.parse_args([str(files["gt_json"]), str(files["pred_json"]), "--workers", "0"]))
