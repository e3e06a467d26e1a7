"""Reading and writing COCO panoptic id-map PNGs and JSON files.

This module owns the file conventions shared by the evaluator and the writers: a segment id
is stored as RGB with ``id = R + 256 G + 256^2 B`` (``0`` = VOID), a panoptic JSON's PNG
folder defaults to the JSON path without ``.json``, and JSON files are replaced atomically
(temporary file in the same directory + ``os.replace``) so a crash never leaves half a file.
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
    """``[H, W]`` non-negative ids -> ``[H, W, 3]`` uint8 RGB (inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"id2rgb: expected a [H, W] id map, got shape {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(
            f"id2rgb: ids must lie in [0, {MAX_SEGMENT_ID}], got [{ids.min()}, {ids.max()}]"
        )
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = ids // (256 * 256)
    return out


def read_panoptic_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a panoptic PNG as ``[H, W]`` int64 segment ids.

    RGB(A) PNGs use the COCO encoding; palette PNGs are expanded to RGB first; single-channel
    (8/16/32-bit) PNGs are taken as ids directly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    with Image.open(path) as img:
        if img.mode == "P":
            img = img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 3:
        return rgb2id(arr)
    return arr.astype(np.int64)


def write_panoptic_png(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """Write ``[H, W]`` ids as a COCO panoptic RGB PNG."""
    Image.fromarray(id2rgb(ids)).save(path, format="PNG")


def load_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Load a JSON object, with errors that say which file (``what``) is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} JSON not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} JSON {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} JSON {path}: expected an object at top level, got {type(data).__name__}")
    return data


def default_folder(json_path: str | os.PathLike[str]) -> Path:
    """panopticapi's default PNG folder: the JSON path without its ``.json`` suffix."""
    return Path(os.path.splitext(os.fspath(json_path))[0])


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
