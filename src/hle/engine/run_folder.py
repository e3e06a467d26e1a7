"""The run folder of a training run: which files it owns and how they are never lost.

This module owns the rules for ``--out``: a folder that already holds a run is only
continued (``resume``) or replaced on request (``overwrite``), never silently mixed;
replacing removes every file the trainer writes (checkpoints, metrics, TensorBoard
events, config) and nothing else; resuming drops the metric lines an interrupted run
wrote after its checkpoint. Small text files are written atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "RUN_FILES",
    "RunExistsError",
    "run_files",
    "check_run_folder",
    "clear_run",
    "remove_partial_files",
    "truncate_metrics",
    "write_text_atomic",
]

#: Everything the trainer writes into its run folder (``tb`` is a folder).
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "metrics.jsonl", "config.yaml", "tb")


class RunExistsError(FileExistsError):
    """The run folder already holds a run and neither resume nor overwrite was asked for."""


def run_files(out_dir: str | Path) -> list[str]:
    """The names of :data:`RUN_FILES` present in ``out_dir`` (empty when it does not exist)."""
    out = Path(out_dir)
    return [name for name in RUN_FILES if (out / name).exists()]


def check_run_folder(out_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that would lose or mix work; nothing is changed on disk.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        NotADirectoryError: ``out_dir`` is an existing file.
        RunExistsError: ``out_dir`` holds a run and neither flag is set.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other (--resume continues a run, --overwrite replaces it)")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"run folder {out} is an existing file, not a folder")
    found = run_files(out)
    if found and not resume and not overwrite:
        raise RunExistsError(
            f"{out} already holds a training run ({', '.join(found)}): continue it with --resume "
            "or replace it with --overwrite"
        )


def clear_run(out_dir: str | Path) -> list[str]:
    """Remove every trainer file of ``out_dir`` (and temporary checkpoint files).

    Returns:
        The names removed. Other files in the folder are left alone.
    """
    out = Path(out_dir)
    removed = []
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    remove_partial_files(out)
    return removed


def remove_partial_files(out_dir: str | Path) -> list[str]:
    """Remove temporary checkpoint files a killed save left behind (``*.pt.tmp-*``)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = sorted(out.glob("*.pt.tmp-*"))
    for tmp in found:
        tmp.unlink()
    return [p.name for p in found]


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def truncate_metrics(path: str | Path, last_step: int) -> int:
    """Keep the lines of a ``metrics.jsonl`` whose step is at most ``last_step``.

    A run killed after its checkpoint may have logged evaluations that its resumed
    continuation will log again, and a line cut short by the kill is not JSON.

    Returns:
        The number of lines dropped.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if step <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped
