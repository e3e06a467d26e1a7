"""Atomic checkpoints and the random-number state needed to resume a run exactly.

This module owns how a training state reaches the disk: :func:`save_checkpoint` writes
to a temporary file in the target folder, fsyncs it and renames it over the old file
with ``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk during a
save leaves the previous checkpoint intact. :func:`capture_rng_state` /
:func:`restore_rng_state` cover Python's ``random``, NumPy, the torch CPU generator and
every CUDA generator. What goes into a checkpoint is decided by the trainer.
"""
from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of every global random generator a training step may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot from :func:`capture_rng_state` (CUDA part only if present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is flushed; not possible on
    # every platform (Windows), where os.replace is still atomic.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically to ``path``.

    The object is serialised into memory first, then written to ``<path>.tmp-XXXX`` in
    the same folder, flushed and fsynced, and renamed over ``path``. If anything fails
    before the rename, the temporary file is removed and ``path`` is untouched.

    Args:
        state: picklable mapping (tensors, state dicts, plain data).
        path: destination file; its folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=False`` because the state holds RNG states and plain config data;
    only load checkpoints you trust (as with any pickle).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a (complete) torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({first})") from None
