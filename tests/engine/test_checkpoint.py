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


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_checksum_is_stored_verified_and_the_file_stays_a_torch_checkpoint(tmp_path: Path) -> None:
    path = ckpt.save_checkpoint({"w": torch.arange(1000.0), "step": 3}, tmp_path / "last.pt")
    assert ckpt.verify_checkpoint(path) is True
    # plain torch.load reads it (the checksum lives in the zip comment)
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.arange(1000.0))
    # one flipped bit in the tensor data: caught, named
    _flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(ckpt.CorruptCheckpointError, match="last.pt is corrupt"):
        ckpt.load_checkpoint(path)
    # a truncated file: its checksum is gone with its end, and it does not read either
    good = ckpt.save_checkpoint({"w": torch.arange(1000.0)}, tmp_path / "b.pt")
    good.write_bytes(good.read_bytes()[:-500])
    with pytest.raises(ckpt.CorruptCheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(good)


def test_checkpoints_written_before_checksums_still_load(tmp_path: Path) -> None:
    # What save_checkpoint wrote before this change: plain torch.save bytes.
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(4), "step": 9}, path)
    assert ckpt.verify_checkpoint(path) is False
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 9 and torch.equal(state["w"], torch.ones(4))


def test_keep_previous_and_fall_back_to_it_when_the_newest_is_damaged(tmp_path: Path) -> None:
    last = tmp_path / "last.pt"
    warnings: list[str] = []
    assert ckpt.load_latest_checkpoint(last, warnings.append) is None  # nothing yet
    ckpt.save_checkpoint({"step": 1}, last, keep_previous=True)
    assert not ckpt.previous_path(last).exists()
    ckpt.save_checkpoint({"step": 2}, last, keep_previous=True)
    assert ckpt.previous_path(last).name == "last.prev.pt"
    assert ckpt.load_checkpoint(ckpt.previous_path(last))["step"] == 1
    state, used = ckpt.load_latest_checkpoint(last, warnings.append)
    assert state["step"] == 2 and used == last and warnings == []
    _flip_byte(last, last.stat().st_size // 3)
    state, used = ckpt.load_latest_checkpoint(last, warnings.append)
    assert state["step"] == 1 and used.name == "last.prev.pt"
    assert len(warnings) == 1 and "last.pt is corrupt" in warnings[0] and "last.prev.pt" in warnings[0]
    # killed between the two renames: last.pt missing, the previous one is there
    last.unlink()
    state, _ = ckpt.load_latest_checkpoint(last, warnings.append)
    assert state["step"] == 1 and "last.pt is missing" in warnings[-1]
    # both damaged: an error naming both, never a silent fresh start
    ckpt.save_checkpoint({"step": 3}, last)
    _flip_byte(last, last.stat().st_size // 3)
    _flip_byte(ckpt.previous_path(last), ckpt.previous_path(last).stat().st_size // 3)
    with pytest.raises(ckpt.CorruptCheckpointError, match="no readable checkpoint.*last.pt.*last.prev.pt"):
        ckpt.load_latest_checkpoint(last, warnings.append)


def test_load_trained_reads_checkpoints_from_before_typed_configs_and_checksums(tmp_path: Path) -> None:
    # A checkpoint as train() wrote it before this change: plain torch.save, version 1,
    # loss.options and eval.decoder as plain dicts (one with a key that no longer exists).
    from hle.config import config_to_dict, load_config
    from hle.data import synthetic_metadata
    from hle.engine.build import build_model
    from hle.engine.inference import load_trained

    config = load_config("synthetic", ["model.options={backbone_options: {widths: [8, 8, 16, 16]}}"])
    metadata = synthetic_metadata()
    model = build_model(config, metadata.num_classes, pretrained=False)
    old_config = config_to_dict(config)
    old_config["loss"]["options"] = {"gamma": 5.0}
    old_config["eval"]["decoder"] = {"seed_threshold": 0.45, "min_stuff_area": 64, "split_embedding": False}
    path = tmp_path / "old.pt"
    torch.save({"version": 1, "model": model.state_dict(), "step": 12, "config": old_config,
                "metadata": metadata.to_dict()}, path)
    loaded = load_trained(path)
    assert loaded.step == 12
    assert loaded.config.loss.options.gamma == 5.0 and loaded.config.eval.decoder.seed_threshold == 0.45
    assert loaded.config.eval.decoder.min_stuff_area == 64
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))
    # the same state written by today's save_checkpoint (checksummed) loads the same
    new = ckpt.save_checkpoint(torch.load(path, weights_only=False), tmp_path / "new.pt")
    assert ckpt.verify_checkpoint(new) and load_trained(new).config == loaded.config
