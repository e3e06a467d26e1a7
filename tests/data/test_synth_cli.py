"""`hle synth` pieces: argument parsing and the runner (hle/data/cli.py)."""
from __future__ import annotations

import argparse

from hle.data.cli import add_synth_arguments, run_synth


def test_synth_cli_generates(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser(prog="hle synth"))
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--num", "3", "--num-val", "1", "--height", "64", "--width", "64", "--seed", "2"])
    assert run_synth(args) == 0
    assert len(list((tmp_path / "d" / "train" / "images").glob("*.png"))) == 3
    assert (tmp_path / "d" / "val" / "panoptic_val.json").is_file()


def test_synth_cli_rejects_bad_values(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser(prog="hle synth"))
    assert run_synth(parser.parse_args(["--out", str(tmp_path), "--num", "2", "--height", "8"])) == 2
    assert "--height must be >= 32" in capsys.readouterr().err


def test_synth_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    parser = add_synth_arguments(argparse.ArgumentParser(prog="hle synth"))
    assert run_synth(parser.parse_args(["--out", str(blocker / "sub"), "--num", "1"])) == 1
    assert "cannot write" in capsys.readouterr().err
