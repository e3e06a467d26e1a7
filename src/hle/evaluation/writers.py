"""Writers of panoptic predictions in COCO panoptic and Cityscapes panoptic result format.

This module owns turning decoded :class:`~hle.core.types.PanopticResult` s (contiguous train
ids, segment ids from 1) into files the official tools read: one RGB PNG per image
(``id = R + 256 G + 256^2 B``) written as soon as the image arrives, and a JSON with one
annotation per image (``image_id, file_name, segments_info``) written once at the end,
atomically (temporary file + ``os.replace``). Train ids are mapped to dataset category ids
by a given mapping; area and bbox are recomputed from the id map so the files are always
self-consistent.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hle.core.pq import VOID, to_numpy
from hle.io import MAX_SEGMENT_ID, default_folder, write_json_atomic, write_panoptic_png

#: Cityscapes label id of each of the 19 train ids (cityscapesScripts ``helpers/labels.py``);
#: the panoptic benchmark expects label ids, not train ids.
CITYSCAPES_TRAIN_TO_LABEL_ID: tuple[int, ...] = (
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
)
#: Cityscapes label ids of the thing classes (``hasInstances`` and evaluated).
CITYSCAPES_THING_LABEL_IDS: frozenset[int] = frozenset({24, 25, 26, 27, 28, 31, 32, 33})


def _unpack(item: Any) -> tuple[Any, Any, Sequence[Mapping[str, Any]]]:
    """``(image_id, panoptic, segments_info)`` from ``(id, PanopticResult)`` or a 3-tuple."""
    if len(item) == 3:
        return item[0], item[1], item[2]
    image_id, result = item
    if hasattr(result, "panoptic") and hasattr(result, "segments_info"):
        return image_id, result.panoptic, result.segments_info
    panoptic, segments = result
    return image_id, panoptic, segments


def _segment_geometry(pan: np.ndarray) -> dict[int, tuple[int, list[int]]]:
    """Area and ``[x, y, w, h]`` bbox of every non-VOID id of ``[H, W]`` ``pan``, vectorised."""
    h, w = pan.shape
    if pan.size == 0:
        return {}
    if int(pan.max()) < 4 * pan.size:
        # Decoder ids are small: a bincount table is O(H W), no sort.
        counts = np.bincount(pan.ravel())
        ids = np.flatnonzero(counts)
        areas = counts[ids]
        remap = np.zeros(counts.size, dtype=np.int64)
        remap[ids] = np.arange(ids.size)
        inverse = remap[pan]
    else:
        ids = np.unique(pan)
        inverse = np.searchsorted(ids, pan)
        areas = np.bincount(inverse.ravel(), minlength=ids.size)
    # Which rows / columns each id occupies: [n_ids, W] and [n_ids, H] occupancy tables.
    in_col = np.zeros((ids.size, w), dtype=bool)
    in_row = np.zeros((ids.size, h), dtype=bool)
    in_col[inverse, np.arange(w)[None, :]] = True
    in_row[inverse, np.arange(h)[:, None]] = True
    x0 = in_col.argmax(1)
    x1 = w - 1 - in_col[:, ::-1].argmax(1)
    y0 = in_row.argmax(1)
    y1 = h - 1 - in_row[:, ::-1].argmax(1)
    return {
        int(i): (int(a), [int(x0[k]), int(y0[k]), int(x1[k] - x0[k] + 1), int(y1[k] - y0[k] + 1)])
        for k, (i, a) in enumerate(zip(ids, areas)) if i != VOID
    }


class CocoPanopticWriter:
    """Stream panoptic predictions to COCO panoptic PNG + JSON, one image at a time.

    Args:
        out_json: path of the JSON to write (at :meth:`close`).
        out_folder: PNG folder; default ``out_json`` without ``.json`` (panopticapi's default).
        category_map: train id -> dataset category id, as a mapping or a sequence indexed by
            train id; ``None`` keeps ids unchanged.
        categories: optional COCO ``categories`` list copied into the JSON.

    Use as a context manager, or call :meth:`close`. When the ``with`` block raises, no
    JSON is written (the PNGs written so far stay).
    """

    def __init__(
        self,
        out_json: str | os.PathLike[str],
        out_folder: str | os.PathLike[str] | None = None,
        *,
        category_map: Mapping[int, int] | Sequence[int] | None = None,
        categories: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.out_json = Path(out_json)
        self.out_folder = Path(out_folder) if out_folder is not None else default_folder(self.out_json)
        if self.out_folder.resolve() == self.out_json.resolve():
            raise ValueError(f"out_folder: must differ from out_json, got {self.out_folder}")
        if category_map is not None and not isinstance(category_map, Mapping):
            category_map = {i: int(c) for i, c in enumerate(category_map)}
        self.category_map = None if category_map is None else {int(k): int(v) for k, v in category_map.items()}
        self.categories = [dict(c) for c in categories] if categories is not None else None
        self.annotations: list[dict[str, Any]] = []
        self.images: list[dict[str, Any]] = []
        self._file_names: set[str] = set()
        self._closed = False
        self.out_folder.mkdir(parents=True, exist_ok=True)

    def _map_category(self, image_id: Any, cat: int) -> int:
        if self.category_map is None:
            return cat
        if cat not in self.category_map:
            raise ValueError(
                f"image {image_id!r}: category id {cat} has no entry in category_map "
                f"(known: {sorted(self.category_map)})"
            )
        return self.category_map[cat]

    def _segments(
        self, image_id: Any, pan: np.ndarray, segments: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Hook for subclasses: final id map and ``segments_info`` in dataset categories."""
        geometry = _segment_geometry(pan)
        listed = {int(s["id"]) for s in segments}
        if len(listed) != len(segments):
            raise ValueError(f"image {image_id!r}: segments_info has duplicate segment ids")
        unlisted = sorted(set(geometry) - listed)
        if unlisted:
            raise ValueError(
                f"image {image_id!r}: panoptic map contains ids {unlisted} that are not in segments_info"
            )
        out = []
        for s in segments:
            sid = int(s["id"])
            if sid not in geometry:
                continue  # a segment that lost all its pixels cannot be written consistently
            area, bbox = geometry[sid]
            seg = {"id": sid, "category_id": self._map_category(image_id, int(s["category_id"])),
                   "iscrowd": 0, "area": area, "bbox": bbox}
            if "isthing" in s:
                seg["isthing"] = int(bool(s["isthing"]))
            if "score" in s:
                seg["score"] = float(s["score"])
            out.append(seg)
        return pan, out

    def add(
        self,
        image_id: Any,
        panoptic: Any,
        segments_info: Sequence[Mapping[str, Any]],
        *,
        file_name: str | None = None,
    ) -> Path:
        """Write one image's PNG now and remember its annotation.

        Args:
            image_id: the dataset's image id (int or str), copied into the JSON.
            panoptic: ``[H, W]`` integer segment ids (numpy or torch), 0 = VOID.
            segments_info: dicts with ``id`` and ``category_id`` (train id), optionally
                ``isthing`` and ``score``.
            file_name: PNG file name; default ``"<image_id>.png"``.

        Returns:
            Path of the written PNG.
        """
        if self._closed:
            raise RuntimeError("CocoPanopticWriter.add: the writer is already closed")
        pan = to_numpy(panoptic)
        if pan.ndim != 2 or not np.issubdtype(pan.dtype, np.integer):
            raise ValueError(
                f"image {image_id!r}: panoptic must be a [H, W] integer map, got shape "
                f"{tuple(pan.shape)} dtype {pan.dtype}"
            )
        if pan.size and (pan.min() < 0 or pan.max() > MAX_SEGMENT_ID):
            raise ValueError(f"image {image_id!r}: segment ids must lie in [0, {MAX_SEGMENT_ID}]")
        pan, segments = self._segments(image_id, pan.astype(np.int64), segments_info)
        name = file_name if file_name is not None else f"{image_id}.png"
        if Path(name).name != name or not name.endswith(".png"):
            raise ValueError(f"image {image_id!r}: file_name must be a bare '*.png' name, got {name!r}")
        if name in self._file_names:
            raise ValueError(f"image {image_id!r}: file name {name!r} was already written")
        self._file_names.add(name)
        path = self.out_folder / name
        write_panoptic_png(path, pan)
        self.annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
        self.images.append({"id": image_id, "file_name": name, "height": int(pan.shape[0]),
                            "width": int(pan.shape[1])})
        return path

    def close(self) -> Path:
        """Write the JSON atomically and return its path (idempotent)."""
        if not self._closed:
            data: dict[str, Any] = {"images": self.images, "annotations": self.annotations}
            if self.categories is not None:
                data["categories"] = self.categories
            write_json_atomic(self.out_json, data)
            self._closed = True
        return self.out_json

    def __enter__(self) -> CocoPanopticWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()


def write_coco_panoptic(
    predictions: Iterable[Any],
    out_json: str | os.PathLike[str],
    out_folder: str | os.PathLike[str] | None = None,
    *,
    category_map: Mapping[int, int] | Sequence[int] | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    file_names: Mapping[Any, str] | None = None,
) -> Path:
    """Write predictions to COCO panoptic format, consuming ``predictions`` lazily.

    Args:
        predictions: iterable of ``(image_id, PanopticResult)``,
            ``(image_id, (panoptic, segments_info))`` or ``(image_id, panoptic, segments_info)``;
            a generator is consumed one image at a time.
        out_json, out_folder, category_map, categories: see :class:`CocoPanopticWriter`.
        file_names: optional image_id -> PNG name (e.g. the ground truth's names).

    Returns:
        Path of the JSON.
    """
    with CocoPanopticWriter(out_json, out_folder, category_map=category_map, categories=categories) as w:
        for item in predictions:
            image_id, pan, segs = _unpack(item)
            w.add(image_id, pan, segs, file_name=None if file_names is None else file_names.get(image_id))
    return w.out_json


_CS_SUFFIX = re.compile(r"(_leftImg8bit|_gtFine_\w+|_panoptic)?\.(png|jpg|json)$")


def cityscapes_image_id(name: str | os.PathLike[str]) -> str:
    """Cityscapes image id ``<city>_<seq>_<frame>`` of a file name or path.

    ``".../frankfurt_000000_000294_leftImg8bit.png"`` -> ``"frankfurt_000000_000294"``.
    """
    base = Path(name).name
    return _CS_SUFFIX.sub("", base)


class CityscapesPanopticWriter(CocoPanopticWriter):
    """Stream predictions to Cityscapes' panoptic result format.

    This is the COCO panoptic format that cityscapesScripts'
    ``evalPanopticSemanticLabeling`` reads, with Cityscapes conventions: ``image_id`` is
    ``<city>_<seq>_<frame>`` (file names are reduced with :func:`cityscapes_image_id`),
    category ids are Cityscapes label ids (default mapping from the 19 train ids), PNGs are
    ``<image_id>_panoptic.png``, and segment ids follow ``instanceIds``: a stuff segment is
    its label id, a thing segment (or a repeated stuff segment of the same class)
    ``label_id * 1000 + k``.
    """

    def __init__(
        self,
        out_json: str | os.PathLike[str],
        out_folder: str | os.PathLike[str] | None = None,
        *,
        category_map: Mapping[int, int] | Sequence[int] | None = CITYSCAPES_TRAIN_TO_LABEL_ID,
        categories: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(out_json, out_folder, category_map=category_map, categories=categories)

    def _segments(
        self, image_id: Any, pan: np.ndarray, segments: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        pan, segs = super()._segments(image_id, pan, segments)
        old_ids = np.asarray([s["id"] for s in segs], dtype=np.int64)
        new_ids = []
        used: set[int] = set()
        counters: dict[int, int] = {}
        for s in segs:
            label = s["category_id"]
            thing = bool(s["isthing"]) if "isthing" in s else label in CITYSCAPES_THING_LABEL_IDS
            if not thing and label not in used:
                new = label
            else:
                counters[label] = counters.get(label, 0) + 1
                if counters[label] > 1000:
                    raise ValueError(
                        f"image {image_id!r}: more than 1000 segments of label {label} do not fit "
                        "Cityscapes' label_id * 1000 + k ids"
                    )
                new = label * 1000 + counters[label] - 1
            used.add(new)
            new_ids.append(new)
            s["id"] = new
        if not segs:
            return np.zeros_like(pan), segs
        # Relabel the map through a sorted lookup (old ids can be large and sparse).
        order = np.argsort(old_ids)
        flat = pan.ravel()
        pos = np.clip(np.searchsorted(old_ids[order], flat), 0, len(old_ids) - 1)
        hit = old_ids[order][pos] == flat
        out = np.where(hit, np.asarray(new_ids, dtype=np.int64)[order][pos], VOID)
        return out.reshape(pan.shape), segs

    def add(
        self,
        image_id: Any,
        panoptic: Any,
        segments_info: Sequence[Mapping[str, Any]],
        *,
        file_name: str | None = None,
    ) -> Path:
        cs_id = cityscapes_image_id(str(image_id))
        return super().add(cs_id, panoptic, segments_info,
                           file_name=file_name if file_name is not None else f"{cs_id}_panoptic.png")


def write_cityscapes_panoptic(
    predictions: Iterable[Any],
    out_json: str | os.PathLike[str],
    out_folder: str | os.PathLike[str] | None = None,
    *,
    category_map: Mapping[int, int] | Sequence[int] | None = CITYSCAPES_TRAIN_TO_LABEL_ID,
    categories: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write predictions in Cityscapes' panoptic result format (see :class:`CityscapesPanopticWriter`).

    Args:
        predictions: as in :func:`write_coco_panoptic`; image ids may be Cityscapes file
            names or ids.
        category_map: train id -> Cityscapes label id (default: the standard 19 classes).

    Returns:
        Path of the JSON.
    """
    with CityscapesPanopticWriter(out_json, out_folder, category_map=category_map, categories=categories) as w:
        for item in predictions:
            image_id, pan, segs = _unpack(item)
            w.add(image_id, pan, segs)
    return w.out_json
