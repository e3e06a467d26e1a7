"""Reading and writing COCO-panoptic PNGs and images.

The COCO panoptic format stores a segment id per pixel as RGB with
``id = R + 256 * G + 256**2 * B`` (``0`` = void). This module owns that encoding
and the file reads of the per-sample mapper, with errors that name the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode a panoptic PNG array.

    Args:
        rgb: ``[H, W, 3]`` uint8 array.

    Returns:
        ``[H, W]`` int64 segment ids.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb_to_id: expected an [H, W, 3] array, got shape {tuple(rgb.shape)}")
    rgb = rgb[..., :3].astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode ``[H, W]`` integer segment ids (``0 <= id < 2**24``) as ``[H, W, 3]`` uint8."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"id_to_rgb: expected an [H, W] array, got shape {tuple(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= 2**24):
        raise ValueError(f"id_to_rgb: ids must lie in [0, 2**24), got range [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


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
    """Read a COCO-panoptic PNG as ``[H, W]`` int64 segment ids."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"panoptic PNG not found: {p} (expected an RGB PNG with id = R + 256*G + 256^2*B per pixel)"
        )
    try:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise OSError(f"cannot read panoptic PNG {p}: {e}") from e
    return rgb_to_id(rgb)


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """Load a JSON file; a missing or broken file gives an error naming it and ``what`` it should be."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {p} ({e})") from None


def write_json_atomic(path: str | os.PathLike[str], data: Any, **dump_kwargs: Any) -> None:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, **dump_kwargs)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def segment_area_bbox(ids: np.ndarray, segment_id: int) -> tuple[int, list[int]]:
    """Area and COCO ``[x, y, w, h]`` bbox of one segment of an ``[H, W]`` id map (0 area -> zero bbox)."""
    mask = ids == segment_id
    area = int(mask.sum())
    if area == 0:
        return 0, [0, 0, 0, 0]
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return area, [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
