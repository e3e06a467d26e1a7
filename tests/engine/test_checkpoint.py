"""Atomic checkpoints and RNG snapshots (hle/engine/checkpoint.py)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hle.engine import checkpoint as ckpt


def test_round_trip(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 5, "nested": {"a": [1, 2]}}
    path = ckpt.save_checkpoint(state, tmp_path / "sub" / "last.pt")
    back = ckpt.load_checkpoint(path)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 5 and back["nested"] == {"a": [1, 2]}
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "none.pt")


class _Unpicklable:
    def __reduce__(self):  # noqa: ANN204
        raise RuntimeError("simulated crash while serialising")


@pytest.mark.parametrize("where", ["serialise", "fsync", "replace"])
def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    new_state: dict = {"step": 2, "w": torch.zeros(3)}
    if where == "serialise":
        new_state["bad"] = _Unpicklable()
    elif where == "fsync":
        def broken_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device (simulated)")

        monkeypatch.setattr(ckpt.os, "fsync", broken_fsync)
    else:
        def broken_replace(src: str, dst: str) -> None:
            raise OSError("simulated crash before the rename")

        monkeypatch.setattr(ckpt.os, "replace", broken_replace)
    with pytest.raises((RuntimeError, OSError)):
        ckpt.save_checkpoint(new_state, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary files left


def test_rng_snapshot_restores_every_generator() -> None:
    snap = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(snap)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])
