"""File-based and streaming panoptic evaluation (PQ, PQ†, PC, mIoU, mask AP).

This module owns the evaluation shells around :mod:`hle.core.pq`: :func:`pq_compute` reads
COCO panoptic ground truth and predictions (JSON + PNG, panopticapi's conventions and result
layout) and spreads the images over worker processes whose :class:`~hle.core.pq.PQStat`
merge; :class:`PanopticEvaluator` takes decoded results one image at a time
(``reset / process / evaluate``), merges across processes (``merge``, ``synchronize`` for
``torch.distributed``); :func:`format_pq_table` prints results like panopticapi.
"""
from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hle.core.pq import PQStat, category_table, pq_image_stats, summarize_pq
from hle.evaluation.ap import AP_KEYS, MaskAPAccumulator
from hle.io import default_folder, read_json, read_panoptic



def categories_from_is_thing(
    is_thing: Sequence[bool], names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """COCO-style categories for contiguous train ids ``0..C-1`` (decoder output space).

    Args:
        is_thing: ``[C]`` booleans (list, numpy or torch).
        names: optional ``[C]`` class names.
    """
    flags = [bool(x) for x in (is_thing.tolist() if hasattr(is_thing, "tolist") else is_thing)]
    if names is not None and len(names) != len(flags):
        raise ValueError(f"names: expected {len(flags)} names, got {len(names)}")
    return [
        {"id": i, "name": names[i] if names is not None else str(i), "isthing": int(t)}
        for i, t in enumerate(flags)
    ]


def _load(data: Any, what: str) -> tuple[dict[str, Any], Path | None]:
    if isinstance(data, Mapping):
        return dict(data), None
    loaded = read_json(data, f"{what} JSON")
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} JSON {data}: expected an object at top level, got {type(loaded).__name__}")
    return loaded, Path(data)


def match_annotations(
    gt: Mapping[str, Any], pred: Mapping[str, Any]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair every ground-truth annotation with the prediction of the same ``image_id``.

    Predictions of images absent from the ground truth are ignored (as in panopticapi).

    Raises:
        ValueError: a ground-truth image has no prediction, or an image id repeats.
    """
    for name, data in (("ground truth", gt), ("prediction", pred)):
        if not isinstance(data.get("annotations"), list):
            raise ValueError(f"{name} JSON has no 'annotations' list")
    preds: dict[Any, dict[str, Any]] = {}
    for ann in pred["annotations"]:
        if ann.get("image_id") in preds:
            raise ValueError(f"prediction JSON has two annotations for image {ann.get('image_id')!r}")
        preds[ann.get("image_id")] = ann
    pairs, seen = [], set()
    for ann in gt["annotations"]:
        image_id = ann.get("image_id")
        if image_id in seen:
            raise ValueError(f"ground truth JSON has two annotations for image {image_id!r}")
        seen.add(image_id)
        if image_id not in preds:
            raise ValueError(
                f"no prediction for ground-truth image {image_id!r} ({ann.get('file_name')})"
            )
        pairs.append((ann, preds[image_id]))
    return pairs


def _evaluate_pairs(
    pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    gt_folder: str,
    pred_folder: str,
    category_ids: tuple[int, ...],
    thing_ids: tuple[int, ...] | None,
) -> tuple[PQStat, MaskAPAccumulator | None]:
    """Worker body: statistics of a chunk of images (top-level so that it pickles)."""
    stat = PQStat(category_ids)
    ap = MaskAPAccumulator(thing_ids) if thing_ids is not None else None
    for gt_ann, pred_ann in pairs:
        image_id = gt_ann.get("image_id")
        paths = []
        for side, ann, folder in (("ground-truth", gt_ann, gt_folder), ("prediction", pred_ann, pred_folder)):
            if "file_name" not in ann:
                raise ValueError(f"image {image_id!r}: {side} annotation has no 'file_name'")
            path = Path(folder) / ann["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"image {image_id!r}: {side} PNG not found: {path}")
            paths.append(path)
        gt_pan = read_panoptic(paths[0])
        pred_pan = read_panoptic(paths[1])
        if gt_pan.shape != pred_pan.shape:
            raise ValueError(
                f"image {image_id!r}: prediction PNG {paths[1]} is {pred_pan.shape[1]}x"
                f"{pred_pan.shape[0]} (WxH) but the ground truth {paths[0]} is "
                f"{gt_pan.shape[1]}x{gt_pan.shape[0]}"
            )
        gt_segs = gt_ann.get("segments_info", [])
        pred_segs = pred_ann.get("segments_info", [])
        stat += pq_image_stats(gt_pan, gt_segs, pred_pan, pred_segs, stat, image_id=image_id)
        if ap is not None:
            ap.add(gt_pan, gt_segs, pred_pan, pred_segs)
    return stat, ap


def _evaluate_chunk(args: tuple[Any, ...]) -> tuple[PQStat, MaskAPAccumulator | None]:
    return _evaluate_pairs(*args)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _mp_context() -> Any:
    # fork starts workers in milliseconds and needs no __main__ guard in user scripts
    # (panopticapi relies on it too); the workers only touch numpy and PIL.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _run(
    gt_json: Any,
    pred_json: Any,
    gt_folder: Any,
    pred_folder: Any,
    workers: int | None,
    with_ap: bool,
) -> tuple[PQStat, MaskAPAccumulator | None, dict[int, dict[str, Any]]]:
    gt, gt_path = _load(gt_json, "ground-truth")
    pred, pred_path = _load(pred_json, "prediction")
    for name, folder, path in (("gt_folder", gt_folder, gt_path), ("pred_folder", pred_folder, pred_path)):
        if folder is None and path is None:
            raise ValueError(f"{name} is required when the JSON is passed as a dict")
    gt_dir = Path(gt_folder) if gt_folder is not None else default_folder(gt_path)  # type: ignore[arg-type]
    pred_dir = Path(pred_folder) if pred_folder is not None else default_folder(pred_path)  # type: ignore[arg-type]
    for what, d in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} PNG folder not found: {d}")
    if not gt.get("categories"):
        raise ValueError("ground-truth JSON has no 'categories'")
    table = category_table(gt["categories"])
    category_ids = tuple(sorted(table))
    thing_ids = tuple(c for c in category_ids if table[c]["isthing"]) if with_ap else None
    pairs = match_annotations(gt, pred)

    n_workers = _default_workers() if workers is None else int(workers)
    if n_workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    n_workers = min(n_workers, max(1, len(pairs)))
    stat = PQStat(category_ids)
    ap = MaskAPAccumulator(thing_ids) if thing_ids is not None else None
    if n_workers == 1:
        chunk_results = [_evaluate_pairs(pairs, str(gt_dir), str(pred_dir), category_ids, thing_ids)]
    else:
        # A few chunks per worker balance uneven image sizes; each returns one small PQStat.
        n_chunks = min(len(pairs), 4 * n_workers)
        bounds = np.linspace(0, len(pairs), n_chunks + 1).astype(int)
        jobs = [
            (pairs[a:b], str(gt_dir), str(pred_dir), category_ids, thing_ids)
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a
        ]
        with _mp_context().Pool(processes=n_workers) as pool:
            chunk_results = list(pool.imap(_evaluate_chunk, jobs))
    for s, a in chunk_results:
        stat += s
        if ap is not None and a is not None:
            ap += a
    return stat, ap, table


def pq_compute(
    gt_json: str | os.PathLike[str] | Mapping[str, Any],
    pred_json: str | os.PathLike[str] | Mapping[str, Any],
    gt_folder: str | os.PathLike[str] | None = None,
    pred_folder: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    compute_ap: bool = False,
) -> dict[str, Any]:
    """Panoptic quality of COCO panoptic predictions against ground truth (Supplementary A).

    File conventions are panopticapi's: each JSON has ``annotations`` with ``image_id``,
    ``file_name`` (a PNG in the folder) and ``segments_info``; ids are
    ``R + 256 G + 256^2 B``, 0 = VOID; categories come from the ground-truth JSON; folders
    default to the JSON path without ``.json``. Ground-truth areas are counted from the PNGs
    (panopticapi reads them from the JSON; both agree on well-formed files). Stricter than
    panopticapi, a ground-truth segment listed in the JSON but absent from its PNG is an error
    (panopticapi would count it as a false negative), as are unknown ground-truth categories.

    Args:
        gt_json, pred_json: paths to the JSON files (or already loaded dicts, then the
            folder is required).
        gt_folder, pred_folder: PNG folders.
        workers: processes to use; ``None`` = all available cores, 1 = in this process.
        compute_ap: also compute COCO mask AP of the thing classes (adds key ``"ap"``).

    Returns:
        :func:`hle.core.pq.summarize_pq`'s dict: ``All``/``Things``/``Stuff`` with
        ``pq, sq, rq, n``, ``per_class``, ``pq_dagger``, ``pc``, ``miou``, ``n_images``
        (and ``ap`` if asked), values in ``[0, 1]``.

    Raises:
        FileNotFoundError: a JSON, folder or PNG is missing (the message names it).
        ValueError: a prediction is missing for a ground-truth image, or a file is
            inconsistent (ids in PNG vs JSON, unknown category, duplicate ids, size
            mismatch); the message names the image and the problem.
    """
    stat, ap, table = _run(gt_json, pred_json, gt_folder, pred_folder, workers, compute_ap)
    results = summarize_pq(stat, list(table.values()))
    if ap is not None:
        results["ap"] = ap.evaluate()
    return results


def instance_ap(
    gt_json: str | os.PathLike[str] | Mapping[str, Any],
    pred_json: str | os.PathLike[str] | Mapping[str, Any],
    gt_folder: str | os.PathLike[str] | None = None,
    pred_folder: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
) -> dict[str, float]:
    """COCO mask AP (Supplementary Eq. C) of the thing segments of panoptic predictions.

    Thing segments become RLE masks; ground-truth crowd segments keep ``iscrowd=1`` (ignored
    by COCOeval); prediction scores come from ``segments_info[i]["score"]`` if present, else
    1.0. Same file conventions and errors as :func:`pq_compute`.

    Returns:
        ``{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}`` in ``[0, 1]``.
    """
    _, ap, _ = _run(gt_json, pred_json, gt_folder, pred_folder, workers, True)
    assert ap is not None
    return ap.evaluate()


class PanopticEvaluator:
    """Streaming panoptic evaluator: ``reset / process / evaluate`` with mergeable statistics.

    Ground truth and predictions must use the same category id space as ``categories``
    (e.g. contiguous train ids built with :func:`categories_from_is_thing`, or dataset ids).

    Args:
        categories: COCO categories (list of dicts with ``id``, ``isthing``, optional
            ``name``) or a mapping id -> dict.
        compute_ap: also collect thing masks for COCO mask AP (costs RLE encoding per image).

    Example:
        >>> ev = PanopticEvaluator(categories_from_is_thing([False, True]))
        >>> for gt_pan, gt_segs, result in data:            # doctest: +SKIP
        ...     ev.process(gt_pan, gt_segs, result.panoptic, result.segments_info)
        >>> ev.synchronize(); results = ev.evaluate()        # doctest: +SKIP
    """

    def __init__(self, categories: Any, *, compute_ap: bool = False) -> None:
        self.categories = category_table(categories)
        if not self.categories:
            raise ValueError("categories: expected at least one category, got none")
        self.compute_ap = bool(compute_ap)
        self.reset()

    @property
    def category_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.categories))

    def reset(self) -> None:
        """Forget all processed images."""
        self.stat = PQStat(self.category_ids)
        things = [c for c in self.category_ids if self.categories[c]["isthing"]]
        self.ap = MaskAPAccumulator(things) if self.compute_ap else None

    def process(
        self,
        gt_pan: Any,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_pan: Any,
        pred_segments: Sequence[Mapping[str, Any]],
        *,
        image_id: Any = None,
    ) -> PQStat:
        """Accumulate one image.

        Args:
            gt_pan: ``[H, W]`` integer gt segment ids (numpy or torch), 0 = VOID.
            gt_segments: gt ``segments_info`` (``id, category_id``, optional ``iscrowd``).
            pred_pan: ``[H, W]`` predicted ids, e.g. ``PanopticResult.panoptic``.
            pred_segments: predicted ``segments_info`` (``score`` used for AP if present).
            image_id: names the image in error messages.

        Returns:
            This image's own :class:`PQStat` (already added to the running total).
        """
        stat = pq_image_stats(gt_pan, gt_segments, pred_pan, pred_segments, self.stat, image_id=image_id)
        self.stat += stat
        if self.ap is not None:
            self.ap.add(gt_pan, gt_segments, pred_pan, pred_segments)
        return stat

    def merge(self, other: PanopticEvaluator) -> PanopticEvaluator:
        """Add another evaluator's statistics (same categories) into this one."""
        if not isinstance(other, PanopticEvaluator):
            raise TypeError(f"merge: expected a PanopticEvaluator, got {type(other).__name__}")
        self.stat += other.stat
        if self.ap is not None:
            if other.ap is None:
                raise ValueError("merge: this evaluator computes AP but the other does not")
            self.ap += other.ap
        return self

    def state(self) -> dict[str, Any]:
        """Picklable state (for ``all_gather_object`` or saving); see :meth:`merge_state`."""
        return {"stat": self.stat.to_dict(), "ap_images": self.ap.images if self.ap is not None else None}

    def merge_state(self, state: Mapping[str, Any]) -> PanopticEvaluator:
        """Add a :meth:`state` produced elsewhere (another process) into this evaluator."""
        self.stat += PQStat.from_dict(state["stat"])
        if self.ap is not None and state.get("ap_images") is not None:
            self.ap.images.extend(state["ap_images"])
        return self

    def synchronize(self) -> None:
        """Merge the statistics of all ``torch.distributed`` ranks into every rank.

        A no-op when ``torch.distributed`` is unavailable or not initialised (single process).
        """
        merged = all_gather_states(self.state())
        if merged is None:
            return
        self.reset()
        for s in merged:
            self.merge_state(s)

    def evaluate(self) -> dict[str, Any]:
        """Results of everything processed so far (layout of :func:`pq_compute`)."""
        results = summarize_pq(self.stat, list(self.categories.values()))
        if self.ap is not None:
            results["ap"] = self.ap.evaluate()
        return results


def all_gather_states(state: Any) -> list[Any] | None:
    """``torch.distributed.all_gather_object`` of one picklable object, or ``None``.

    Returns ``None`` (nothing to merge) when torch.distributed is unavailable, not initialised
    or has a single rank; otherwise the list of every rank's object, in rank order.
    """
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def _pct(x: float) -> str:
    return "  nan" if isinstance(x, float) and math.isnan(x) else f"{100 * x:5.1f}"


def format_pq_table(results: Mapping[str, Any]) -> str:
    """Text table of :func:`pq_compute` results in panopticapi's layout (percentages).

    One row per category that occurs (PQ, SQ, RQ, plus PQ†, PC and IoU), then the All / Things / Stuff
    summary with the number of classes, then PQ†, PC, mIoU (and mask AP when present).
    """
    lines = []
    per_class = results.get("per_class", {})
    lines.append(f"{'Category':20s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}  {'PQ†':>5s}  {'PC':>5s}  {'IoU':>5s}")
    for cid in sorted(per_class, key=lambda c: int(c)):
        r = per_class[cid]
        if not (r["tp"] or r["fp"] or r["fn"] or r.get("iou") or r.get("pc")):
            continue  # a class that occurs nowhere would only add a row of zeros
        name = str(r.get("name", cid))[:20]
        lines.append(
            f"{name:20s}| {_pct(r['pq'])}  {_pct(r['sq'])}  {_pct(r['rq'])}  "
            f"{_pct(r.get('pq_dagger', math.nan))}  {_pct(r.get('pc', math.nan))}  {_pct(r.get('iou', math.nan))}"
        )
    lines.append("-" * 62)
    lines.append(f"{'':20s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s}  {'N':>5s}")
    for group in ("All", "Things", "Stuff"):
        r = results[group]
        lines.append(f"{group:20s}| {_pct(r['pq'])}  {_pct(r['sq'])}  {_pct(r['rq'])}  {r['n']:5d}")
    extra = [("PQ†", "pq_dagger"), ("PC", "pc"), ("mIoU", "miou")]
    if any(key in results for _, key in extra):
        lines.append("-" * 62)
        lines.append(f"{'':20s}| {'All':>5s}  {'Th':>5s}  {'St':>5s}")
        for label, key in extra:
            if key in results:
                r = results[key]
                lines.append(
                    f"{label:20s}| {_pct(r['All'][key])}  {_pct(r['Things'][key])}  {_pct(r['Stuff'][key])}"
                )
    if "ap" in results:
        ap = results["ap"]
        lines.append("-" * 62)
        lines.append("mask AP             | " + "  ".join(f"{k}={_pct(ap[k]).strip()}" for k in AP_KEYS))
    if "n_images" in results:
        lines.append(f"images: {results['n_images']}")
    return "\n".join(lines)


__all__ = [
    "PanopticEvaluator",
    "all_gather_states",
    "categories_from_is_thing",
    "format_pq_table",
    "instance_ap",
    "match_annotations",
    "pq_compute",
]
