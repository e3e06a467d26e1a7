"""Inference: checkpoint -> model, images -> outputs -> panoptic results -> PQ / files.

This module owns the inference path of the engine: loading a trained model from a
checkpoint, running it (optionally with test-time flip, Sec. 4.2), decoding with
:func:`hle.core.decode.decode_batch`, mapping decoded train ids back to the dataset's
category ids, and evaluating a list of records with the mergeable PQ statistics of
:mod:`hle.core.pq` (one shard per process under DDP, merged at the end). Network
outputs, decoding and evaluation stay separate calls so each can be cached or swapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from hle.core.decode import DecoderParams, decode_batch
from hle.core.types import HLEOutputs, PanopticResult

__all__ = [
    "LoadedModel",
    "load_trained",
    "run_model",
    "decode_outputs",
    "to_dataset_ids",
    "evaluate_records",
    "EvalOutput",
    "summarize_metrics",
    "preview_panel",
    "CachedSample",
    "resize_ids",
    "original_ground_truth",
    "cache_outputs",
    "evaluate_cached",
]


@dataclass
class EvalOutput:
    """Result of :func:`evaluate_records`.

    Attributes:
        metrics: flat 0-100 metrics (:func:`summarize_metrics`).
        summary: the evaluator's full result (panopticapi layout, 0-1), for
            :func:`hle.evaluation.format_pq_table`.
        previews: input | prediction | ground-truth panels, ``[H, 3W, 3]`` uint8.
    """

    metrics: dict[str, Any]
    summary: dict[str, Any]
    previews: list[np.ndarray] = field(default_factory=list)


@dataclass
class LoadedModel:
    """A trained network (eval mode) with its run config, dataset metadata and step."""

    model: nn.Module
    config: Any
    metadata: Any
    step: int


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model of a checkpoint written by :func:`hle.engine.trainer.train`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not an hle checkpoint.
    """
    from hle.config import config_from_dict
    from hle.data.metadata import Metadata
    from hle.engine.build import build_model
    from hle.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state or "config" not in state or not state.get("metadata"):
        raise ValueError(f"{path} is not an hle training checkpoint (expected keys model, config, metadata)")
    try:
        config = config_from_dict(state["config"], strict=False)
    except ValueError as exc:
        raise ValueError(f"{path}: the config stored in the checkpoint is not valid for this version ({exc})") from None
    metadata = Metadata.from_dict(state["metadata"])
    model = build_model(config, metadata.num_classes, pretrained=False)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedModel(model, config, metadata, int(state.get("step", 0)))


@torch.no_grad()
def run_model(model: nn.Module, images: torch.Tensor, *, flip: bool = False, upsample: bool = True) -> HLEOutputs:
    """Network outputs at input resolution (or at the decoder stride), with optional test-time flip.

    Args:
        model: an :class:`hle.models.HLENet` in eval mode.
        images: ``[B, 3, H, W]`` normalised images.
        flip: test-time horizontal flip.
        upsample: outputs at image resolution; ``False`` keeps the decoder stride
            (decode them with ``decode_outputs(..., image_size=(H, W))``).
    """
    from hle.models import flip_inference

    if flip:
        return flip_inference(model, images, upsample=upsample)
    return model(images, upsample=upsample)


@torch.no_grad()
def decode_outputs(
    model: nn.Module,
    outputs: HLEOutputs,
    is_thing: torch.Tensor,
    params: DecoderParams | None = None,
    *,
    split_embedding: bool = False,
    image_size: Sequence[int] | None = None,
) -> list[PanopticResult]:
    """Decode a batch of outputs with the model's class means and sigmas (Sec. 3.5).

    The class means and sigmas are moved to the outputs' device (the model stays where
    it is), and the outputs are decoded in float32.

    Args:
        model: the network whose ``class_means`` / ``class_sigma()`` decode the outputs.
        outputs: ``[B, ...]`` network outputs.
        is_thing: ``[C]`` bool.
        params: the decoder's thresholds (``None``: the defaults of :class:`DecoderParams`).
        split_embedding: decode the split-embedding ablation as it was trained.
        image_size: ``(H, W)`` of the network input. When the outputs are smaller
            (``run_model(..., upsample=False)``), they are decoded at the model's
            ``decoder_stride`` and the id maps expanded to ``(H, W)``
            (``decode_panoptic(stride=..., output_size=...)``).
    """
    height, width = outputs.embedding.shape[-2:]
    stride, output_size = 1.0, None
    if image_size is not None and tuple(image_size) != (height, width):
        stride = float(int(getattr(model, "decoder_stride", 0)) or -(-int(image_size[0]) // height))
        output_size = (int(image_size[0]), int(image_size[1]))
    device = outputs.embedding.device
    return decode_batch(
        HLEOutputs(*(None if t is None else t.float() for t in outputs)),
        model.class_means.detach().float().to(device),
        model.class_sigma().detach().float().to(device),
        is_thing.to(device),
        DecoderParams() if params is None else params,
        stride=stride,
        output_size=output_size,
        split_embedding=split_embedding,
    )


def to_dataset_ids(result: PanopticResult, metadata: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``(panoptic [H, W] int64, segments_info)`` with dataset category ids.

    The decoder speaks contiguous train ids; files and evaluation use the dataset's.
    """
    pan = result.panoptic.detach().cpu().numpy().astype(np.int64)
    segments = []
    for seg in result.segments_info:
        s = dict(seg)
        s["category_id"] = int(metadata.train_id_to_id[int(seg["category_id"])])
        s["isthing"] = int(bool(s.get("isthing", False)))
        s["iscrowd"] = 0
        for key in ("area", "id"):
            if key in s:
                s[key] = int(s[key])
        if "bbox" in s:
            s["bbox"] = [int(v) for v in s["bbox"]]
        if "score" in s:
            s["score"] = float(s["score"])
        segments.append(s)
    return pan, segments


def resize_ids(ids: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a ``[h, w]`` id map to ``[height, width]``."""
    if ids.shape == (height, width):
        return ids
    t = torch.from_numpy(np.ascontiguousarray(ids)).double()[None, None]
    return torch.nn.functional.interpolate(t, size=(height, width), mode="nearest")[0, 0].long().numpy()


def original_ground_truth(record: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The record's panoptic id map as stored on disk, and its ``segments_info``."""
    from hle.io import read_panoptic

    return read_panoptic(record["pan_seg_file_name"]).astype(np.int64), list(record["segments_info"])


def summarize_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """Flatten a panopticapi-style summary into the engine's 0-100 metric keys.

    Keys: ``PQ, SQ, RQ`` (all classes), ``PQ_th, SQ_th, RQ_th``, ``PQ_st, SQ_st,
    RQ_st``, ``mIoU``, ``PQ_dagger``, ``PC`` (when present) and ``n_images``.
    """
    out: dict[str, Any] = {}
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        g = summary.get(group, {})
        for key in ("pq", "sq", "rq"):
            if key in g:
                out[key.upper() + suffix] = 100.0 * float(g[key])
    for src, dst in (("miou", "mIoU"), ("pq_dagger", "PQ_dagger"), ("pc", "PC")):
        # Layout of hle.core.pq.summarize_pq: summary[metric]["All"][metric].
        group = summary.get(src, {}).get("All", {})
        if src in group:
            out[dst] = 100.0 * float(group[src])
    if "n_images" in summary:
        out["n_images"] = int(summary["n_images"])
    return out


def preview_panel(image: torch.Tensor, pred: tuple[np.ndarray, list], gt: tuple[np.ndarray, list], metadata: Any) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: input | prediction | ground truth, for TensorBoard."""
    from hle.visualize import class_palette, colorize_panoptic, denormalize_image

    palette = class_palette(len(metadata.categories), [c["color"] for c in metadata.categories])
    index = {c["id"]: i for i, c in enumerate(metadata.categories)}

    def paint(pan: np.ndarray, segments: list) -> np.ndarray:
        segs = [dict(s, category_id=index.get(int(s["category_id"]), 0), isthing=bool(s.get("isthing", metadata.category(int(s["category_id"]))["isthing"]))) for s in segments]
        return colorize_panoptic(pan, segs, palette)

    return np.concatenate([denormalize_image(image), paint(*pred), paint(*gt)], axis=1)


def _predict_sample(
    model: nn.Module,
    sample: dict[str, Any],
    record: dict[str, Any],
    metadata: Any,
    *,
    flip: bool,
    native: bool,
    decoder_params: DecoderParams | None,
    split_embedding: bool,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]:
    """``(pan, segments, gt_pan, gt_segments)`` of one mapped sample, in dataset ids."""
    image = sample["image"][None].to(next(model.parameters()).device)
    outputs = run_model(model, image, flip=flip, upsample=not native)
    result = decode_outputs(
        model, outputs, metadata.is_thing, decoder_params, split_embedding=split_embedding, image_size=image.shape[-2:]
    )[0]
    pan, segments = to_dataset_ids(result, metadata)
    gt_pan, gt_segments = sample["panoptic"].numpy(), sample["segments_info"]
    if gt_pan.shape != (sample["height"], sample["width"]):
        # Input resized by max side (COCO 640, Vistas 2048): evaluate at the original
        # resolution against the original ground truth, like the official tools.
        pan = resize_ids(pan, sample["height"], sample["width"])
        gt_pan, gt_segments = original_ground_truth(record)
    return pan, segments, gt_pan, gt_segments


@torch.no_grad()
def evaluate_records(
    model: nn.Module,
    records: Sequence[dict[str, Any]],
    metadata: Any,
    mapper: Callable[..., dict[str, Any]],
    *,
    flip: bool = False,
    decoder_params: DecoderParams | None = None,
    split_embedding: bool = False,
    native: bool = False,
    info: Any = None,
    num_previews: int = 0,
    on_prediction: Callable[[dict[str, Any], np.ndarray, list[dict[str, Any]]], None] | None = None,
    progress: bool = False,
) -> EvalOutput:
    """PQ and friends of ``model`` on ``records`` (one image at a time).

    Each record is mapped for evaluation (max-side resize, normalisation), run through
    the model (test-time flip if asked), decoded, mapped to dataset ids and compared
    with the (equally resized) ground truth. Under DDP every process takes every
    ``world_size``-th record and the statistics are summed across processes.

    Args:
        model: network in eval mode.
        records: panoptic records of the split.
        metadata: the dataset's :class:`hle.data.Metadata`.
        mapper: an evaluation :class:`hle.data.PanopticMapper` (``return_panoptic``).
        flip: test-time flip.
        decoder_params: the decoder's thresholds (``None``: the defaults).
        split_embedding: decode the split-embedding ablation as it was trained.
        native: decode the outputs at the network's decoder stride
            (``eval.native_resolution``) instead of upsampling them first.
        info: :class:`hle.engine.distributed.DistInfo` or ``None`` (single process).
        num_previews: return this many input | prediction | ground-truth panels.
        on_prediction: called as ``(record, panoptic, segments_info)`` per image
            (dataset category ids), e.g. to write COCO panoptic files.
        progress: tqdm bar.

    Returns:
        :class:`EvalOutput`: metrics on a 0-100 scale (see :func:`summarize_metrics`)
        plus ``per_class``, the evaluator's summary, previews.
    """
    from hle.evaluation import PanopticEvaluator

    was_training = model.training
    model.eval()
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    categories = [c for c in metadata.categories if not c.get("ignore", False)]
    evaluator = PanopticEvaluator(categories)
    previews: list[np.ndarray] = []
    mine = list(range(rank, len(records), world))
    iterator: Any = mine
    if progress:
        from tqdm import tqdm

        iterator = tqdm(mine, desc="evaluate", leave=False)
    for i in iterator:
        sample = mapper(records[i], index=i)
        pan, segments, gt_pan, gt_segments = _predict_sample(
            model, sample, records[i], metadata, flip=flip, native=native, decoder_params=decoder_params,
            split_embedding=split_embedding,
        )
        evaluator.process(gt_pan, gt_segments, pan, segments, image_id=records[i].get("image_id"))
        if on_prediction is not None:
            on_prediction(records[i], pan, segments)
        if len(previews) < num_previews:
            previews.append(preview_panel(sample["image"], (pan, segments), (gt_pan, gt_segments), metadata))
    if world > 1:
        evaluator.synchronize()
    if was_training:
        model.train()
    summary = evaluator.evaluate()
    metrics = summarize_metrics(summary)
    metrics["per_class"] = {
        str(k): {kk: (100.0 * vv if kk in ("pq", "sq", "rq", "iou", "pq_dagger", "pc") else vv) for kk, vv in v.items()}
        for k, v in summary.get("per_class", {}).items()
    }
    return EvalOutput(metrics, summary, previews)


@dataclass
class CachedSample:
    """Network outputs of one image kept for repeated decoding (threshold searches)."""

    record: dict[str, Any]
    outputs: HLEOutputs
    gt_pan: np.ndarray
    gt_segments: list[dict[str, Any]]
    image_size: tuple[int, int] | None = None


@torch.no_grad()
def cache_outputs(
    model: nn.Module,
    records: Sequence[dict[str, Any]],
    mapper: Callable[..., dict[str, Any]],
    *,
    flip: bool = False,
    native: bool = False,
) -> list[CachedSample]:
    """Run the network once per record and keep outputs + ground truth on the CPU.

    Decoder thresholds can then be searched (grid, Optuna) with :func:`evaluate_cached`
    without re-running the network. ``native`` keeps the outputs at the decoder
    stride: 16x less memory per image at stride 4.
    """
    model.eval()
    device = next(model.parameters()).device
    cached = []
    for i, record in enumerate(records):
        sample = mapper(record, index=i)
        out = run_model(model, sample["image"][None].to(device), flip=flip, upsample=not native)
        gt_pan, gt_segments = sample["panoptic"].numpy(), sample["segments_info"]
        if gt_pan.shape != (sample["height"], sample["width"]):
            gt_pan, gt_segments = original_ground_truth(record)
        outputs = HLEOutputs(*(None if t is None else t.cpu() for t in out))
        cached.append(CachedSample(record, outputs, gt_pan, gt_segments, tuple(sample["image"].shape[-2:])))
    return cached


def evaluate_cached(
    model: nn.Module,
    cached: Sequence[CachedSample],
    metadata: Any,
    decoder_params: DecoderParams | None = None,
    *,
    split_embedding: bool = False,
) -> dict[str, Any]:
    """Metrics (0-100, as :func:`summarize_metrics`) of decoding ``cached`` outputs.

    The outputs are decoded where they are cached (the CPU); ``model`` only lends its
    class means and sigmas and is not moved.
    """
    from hle.evaluation import PanopticEvaluator

    evaluator = PanopticEvaluator([c for c in metadata.categories if not c.get("ignore", False)])
    for item in cached:
        result = decode_outputs(
            model, item.outputs, metadata.is_thing, decoder_params, split_embedding=split_embedding,
            image_size=item.image_size,
        )[0]
        pan, segments = to_dataset_ids(result, metadata)
        pan = resize_ids(pan, *item.gt_pan.shape)
        evaluator.process(item.gt_pan, item.gt_segments, pan, segments)
    return summarize_metrics(evaluator.evaluate())
