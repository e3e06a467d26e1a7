"""File conventions shared by the datasets, the evaluator, the writers and the engine.

This module owns the COCO panoptic PNG encoding (a segment id per pixel stored as RGB with
``id = R + 256 G + 256^2 B``, ``0`` = VOID), reading images and panoptic PNGs with errors
that name the file, panopticapi's default PNG folder, and atomic JSON writes (temporary
file in the same folder, fsync, ``os.replace``) so an interrupted run never leaves half a
file. One home for these, so the loader and the evaluator can never disagree on a format.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Ids must fit the 24 bits of an RGB PNG.
MAX_SEGMENT_ID = 256**3 - 1


def rgb2id(color: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[H, W]`` int64 ids (``R + 256 G + 256^2 B``)."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] < 3:
        raise ValueError(f"rgb2id: expected [H, W, 3] colours, got shape {color.shape}")
    c = color[..., :3].astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` ids in ``[0, 2^24)`` -> ``[H, W, 3]`` uint8 RGB (inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"id2rgb: expected a [H, W] id map, got shape {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"id2rgb: ids must lie in [0, {MAX_SEGMENT_ID}], got [{ids.min()}, {ids.max()}]")
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // (256 * 256)
    return out


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as ``[H, W, 3]`` uint8 RGB (grey or RGBA converted)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p} (expected an RGB image referenced by the dataset index)")
    try:
        with Image.open(p) as im:
            return np.array(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt files: name the file
        raise OSError(f"cannot read image {p}: {e}") from e


def read_panoptic(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a panoptic PNG as ``[H, W]`` int64 segment ids.

    RGB(A) PNGs use the COCO encoding; palette PNGs are expanded to RGB first; single-channel
    (8/16/32-bit) PNGs are taken as ids directly.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"panoptic PNG not found: {p} (expected an RGB PNG with id = R + 256*G + 256^2*B per pixel)"
        )
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "LA", "PA") else im)
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"cannot read panoptic PNG {p}: {e}") from e
    if arr.ndim == 3:
        return rgb2id(arr)
    return arr.astype(np.int64)


def write_panoptic_png(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """Write ``[H, W]`` ids as a COCO panoptic RGB PNG."""
    Image.fromarray(id2rgb(ids)).save(path, format="PNG")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Load a JSON file; a missing or broken file gives an error naming it and ``what`` it should be."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {p} is not valid JSON: {e}") from None


def default_folder(json_path: str | os.PathLike[str]) -> Path:
    """panopticapi's default PNG folder: the JSON path without its ``.json`` suffix."""
    return Path(os.path.splitext(os.fspath(json_path))[0])


def write_json_atomic(path: str | os.PathLike[str], data: Any, **dump_kwargs: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, **dump_kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
