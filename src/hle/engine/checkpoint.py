"""Atomic, checksummed checkpoints and the random-number state to resume a run exactly.

This module owns how a training state reaches the disk: :func:`save_checkpoint` writes
to a temporary file in the target folder, fsyncs it and renames it over the old file
with ``os.replace`` (atomic on POSIX and Windows), so a crash or a full disk during a
save leaves the previous checkpoint intact; with ``keep_previous`` the file it replaces
is kept as ``<name>.prev.pt``. Every file carries the SHA-256 of its ``torch.save``
bytes in the zip archive comment (``hle-sha256:<hex>``), where ``torch.load`` ignores
it, so the files stay plain torch checkpoints; :func:`load_checkpoint` verifies it and
reads files without one (written before checksums) as they are.
:func:`load_latest_checkpoint` falls back to the ``.prev.pt`` file when the newest is
missing or damaged. :func:`capture_rng_state` / :func:`restore_rng_state` cover
Python's ``random``, NumPy, the torch CPU generator and every CUDA generator. What goes
into a checkpoint is decided by the trainer.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "CorruptCheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest_checkpoint",
    "previous_path",
    "verify_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
]


#: Zip end-of-central-directory signature and the archive comment holding the checksum.
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22
_PREFIX = b"hle-sha256:"
_COMMENT_SIZE = len(_PREFIX) + 64


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: checksum mismatch or unreadable."""


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the file it replaced: ``last.pt`` -> ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


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


def _checksummed(data: memoryview) -> list[memoryview | bytes]:
    """``torch.save`` bytes with ``hle-sha256:<hex>`` as the zip comment (pieces to write).

    The digest covers the bytes as ``torch.save`` wrote them (comment length 0). A
    payload that does not end in a comment-less zip directory is returned unchanged.
    """
    if len(data) < _EOCD_SIZE or bytes(data[-_EOCD_SIZE : -_EOCD_SIZE + 4]) != _EOCD or bytes(data[-2:]) != b"\0\0":
        return [data]
    comment = _PREFIX + hashlib.sha256(data).hexdigest().encode("ascii")
    return [data[:-2], len(comment).to_bytes(2, "little"), comment]


def verify_checkpoint(path: str | Path) -> bool:
    """Check the SHA-256 stored in ``path`` against its contents.

    Returns:
        ``True`` when the checksum matches, ``False`` when the file has none (written
        before checksums, or not by :func:`save_checkpoint`).

    Raises:
        CorruptCheckpointError: the file has a checksum and its contents do not match.
    """
    path = Path(path)
    size = path.stat().st_size
    tail_size = _EOCD_SIZE + _COMMENT_SIZE
    if size < tail_size:
        return False
    with open(path, "rb") as handle:
        handle.seek(size - tail_size)
        tail = handle.read()
        if tail[:4] != _EOCD or tail[_EOCD_SIZE - 2 : _EOCD_SIZE] != _COMMENT_SIZE.to_bytes(2, "little"):
            return False
        if not tail[_EOCD_SIZE:].startswith(_PREFIX):
            return False
        stored = tail[_EOCD_SIZE + len(_PREFIX) :].decode("ascii", errors="replace")
        digest = hashlib.sha256()
        handle.seek(0)
        remaining = size - _COMMENT_SIZE - 2
        while remaining > 0:
            chunk = handle.read(min(remaining, 1 << 24))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    digest.update(b"\0\0")
    if digest.hexdigest() != stored:
        raise CorruptCheckpointError(
            f"{path} is corrupt: its contents do not match the SHA-256 stored when it was written"
        )
    return True


def save_checkpoint(state: dict[str, Any], path: str | Path, *, keep_previous: bool = False) -> Path:
    """Write ``state`` with ``torch.save`` atomically and with a checksum to ``path``.

    The object is serialised into memory first, then written (with its SHA-256 as the
    zip comment) to ``<path>.tmp-XXXX`` in the same folder, flushed and fsynced, and
    renamed over ``path``. If anything fails before the rename, the temporary file is
    removed and ``path`` is untouched.

    Args:
        state: picklable mapping (tensors, state dicts, plain data).
        path: destination file; its folder is created if needed.
        keep_previous: first rename an existing ``path`` to :func:`previous_path`, once
            the new file is complete on disk, so a good copy survives if the new one is
            later found damaged.

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
            for piece in _checksummed(buffer.getbuffer()):
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, verify: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or by ``torch.save``).

    ``weights_only=False`` because the state holds RNG states and plain config data;
    only load checkpoints you trust (as with any pickle).

    Args:
        verify: check the stored SHA-256 first (files without one load unverified).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpointError: checksum mismatch, or the file is not a (complete)
            torch checkpoint (a ``ValueError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if verify:
        verify_checkpoint(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        if isinstance(exc, (PermissionError, IsADirectoryError)):
            raise
        # torch's zip reader says OSError(EINVAL) for a truncated file.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint ({first})") from None


def load_latest_checkpoint(
    path: str | Path, warn: Callable[[str], None], map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """``path`` if it is readable, else the previous good copy (:func:`previous_path`).

    Args:
        path: the newest checkpoint (``last.pt``).
        warn: receives a one-line warning when the previous copy is used.

    Returns:
        ``(state, file read)``, or ``None`` when neither file exists.

    Raises:
        CorruptCheckpointError: files exist but none is readable (all reasons named).
    """
    path = Path(path)
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            problems.append(f"{candidate} is missing")
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CorruptCheckpointError as exc:
            problems.append(str(exc))
            continue
        if candidate != path:
            warn(f"warning: {problems[0]}; using the previous checkpoint {candidate} instead")
        return state, candidate
    if all(p.endswith(" is missing") for p in problems):
        return None
    raise CorruptCheckpointError("no readable checkpoint: " + "; ".join(problems))
