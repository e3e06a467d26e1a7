"""The panoptic decoder (Sec. 3.5, Supplementary C): input checks, then the stages in a row.

This module owns :func:`decode_panoptic`, which checks one image's network outputs and
chains the public stages of :mod:`hle.core.decode` (resolution, semantics, seeds,
instances, result), and :func:`decode_batch`, which runs it over a batch.
"""
from __future__ import annotations

import torch

from hle.core.decode.instances import assign_instances
from hle.core.decode.params import DEFAULT_CHUNK, DecoderParams
from hle.core.decode.resolution import decode_grid, decode_maps
from hle.core.decode.result import panoptic_result
from hle.core.decode.seeds import find_seeds, gather_seeds, merge_seeds
from hle.core.decode.semantic import semantic_assignment, stuff_first
from hle.core.kernels import DEFAULT_COORD_SCALE, check_class_parameters
from hle.core.types import HLEOutputs, PanopticResult


def check_inputs(
    outputs: HLEOutputs,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    params: DecoderParams,
    split_embedding: bool,
    chunk: int,
) -> None:
    """Shapes, dtypes and devices of :func:`decode_panoptic`'s arguments.

    Raises:
        ValueError, TypeError: naming the argument, what it must be and what was given.
    """
    if not isinstance(params, DecoderParams):
        raise TypeError(f"decode_panoptic: params must be a DecoderParams, got {type(params).__name__}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"decode_panoptic: chunk must be an integer >= 1, got {chunk!r}")
    emb = outputs.embedding
    if emb.dim() != 3 or not emb.is_floating_point():
        raise ValueError(
            f"decode_panoptic: outputs.embedding must be one image's float [D, H, W] map, got "
            f"{tuple(emb.shape)} {emb.dtype} (decode_batch takes [B, D, H, W])"
        )
    d, h, w = emb.shape
    if h < 1 or w < 1 or d < 1:
        raise ValueError(f"decode_panoptic: outputs.embedding must be non-empty, got {tuple(emb.shape)}")
    for name in ("sigma", "spatial_sigma", "seed"):
        t = getattr(outputs, name)
        if tuple(t.shape) != (1, h, w):
            raise ValueError(
                f"decode_panoptic: outputs.{name} must be [1, {h}, {w}] like the embedding, got {tuple(t.shape)}"
            )
    c = check_class_parameters("decode_panoptic", class_means, class_sigma, is_thing, d)
    if c < 1:
        raise ValueError("decode_panoptic: class_means must hold at least one class, got C=0")
    logits = outputs.semantic_logits
    if logits is not None and tuple(logits.shape) != (c, h, w):
        raise ValueError(f"decode_panoptic: outputs.semantic_logits must be [{c}, {h}, {w}], got {tuple(logits.shape)}")
    if split_embedding and (d < 2 or d % 2):
        raise ValueError(f"decode_panoptic: split_embedding needs an even D >= 2, got D={d}")
    tensors = [t for t in (*outputs, class_means, class_sigma, is_thing) if t is not None]
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"decode_panoptic: all inputs must be on one device, got {sorted(map(str, devices))}")


@torch.no_grad()
def decode_panoptic(
    outputs: HLEOutputs,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    params: DecoderParams = DecoderParams(),
    *,
    stride: float = 1.0,
    output_size: tuple[int, int] | None = None,
    split_embedding: bool = False,
    coord_scale: float = DEFAULT_COORD_SCALE,
    chunk: int = DEFAULT_CHUNK,
) -> PanopticResult:
    """Decode one image's HLE outputs into a panoptic segmentation (Sec. 3.5).

    Stages: (0) reduce the maps by ``params.downsample`` (Supplementary C); (1) class of
    every pixel by argmax of psi (Eq. 9, or of the separate-branch logits), stuff pixels
    with ``max psi < stuff_threshold`` void; (2) seeds = local maxima of the seed map on
    thing pixels above ``seed_threshold``; (3) greedy merge of seeds whose Phi (Eq. 8)
    exceeds ``merge_threshold``; (4) each thing pixel joins the seed of highest Phi if
    above ``mask_threshold`` (else void) and the instance takes its seed's class;
    (5) one segment per stuff class, segments below the minimum areas void, ids and
    ``segments_info`` at output resolution. Coordinates use input-image pixels
    (``stride * downsample`` per decode pixel), so the spatial sigmas keep their meaning.

    Args:
        outputs: one image's maps: ``embedding [D, H, W]`` unit, ``sigma``, ``spatial_sigma``
            ``[1, H, W]`` positive, ``seed [1, H, W]``, optional ``semantic_logits [C, H, W]``.
        class_means: ``[C, D]`` class means (with ``split_embedding`` only the first
            ``D/2`` columns are used); class_sigma: ``[C]``; is_thing: ``[C]`` bool.
        params: the decoder's thresholds (:class:`DecoderParams`).
        stride: input pixels per map pixel (1 for maps at image resolution).
        output_size: ``(H_out, W_out)`` of the id map for maps at an integer ``stride > 1``
            (each map pixel covers a ``stride x stride`` block, the last ones cropped;
            ``ceil(H_out / stride) == H``); ``None``: the maps' size.
        split_embedding: semantics from the first half of the channels, instances from
            the second (:func:`hle.core.kernels.split_views`).
        coord_scale: coordinate units per input pixel.
        chunk: pixels per matmul block (memory / speed only).

    Returns:
        :class:`PanopticResult`: ``panoptic [H_out, W_out]`` int32 ids (instances first by
        descending seed score, then stuff by class; 0 = void), ``segments_info`` dicts
        ``id, category_id, isthing, area, bbox, score`` (areas and boxes in output pixels;
        instance score per ``params.instance_score`` in ``[0, 1]``, stuff score = mean max
        psi over the segment, in ``[1/C, 1]``).
    """
    check_inputs(outputs, class_means, class_sigma, is_thing, params, split_embedding, chunk)
    emb = outputs.embedding
    grid = decode_grid(tuple(emb.shape[1:]), params.downsample, stride=stride, output_size=output_size,
                       coord_scale=coord_scale)
    maps = decode_maps(outputs, grid, params.downsample_mode, split_embedding)
    order = stuff_first(is_thing)
    semantic = semantic_assignment(
        maps.semantic, class_means[order.perm, : maps.semantic.shape[0]], class_sigma[order.perm], order.num_stuff,
        stuff_threshold=params.stuff_threshold, logits=None if maps.logits is None else maps.logits[order.perm],
        pixel_weight=grid.pixel_weight(emb.device), chunk=chunk,
    )
    instance_map = semantic.embedding if maps.instance is None else maps.instance
    coordinates = grid.coordinates(emb.device, emb.dtype)
    index, score = find_seeds(maps.seed, semantic.thing.view(grid.size), threshold=params.seed_threshold,
                              kernel=params.nms_kernel, max_seeds=params.max_instances)
    seeds = gather_seeds(index, score, instance_map, coordinates, outputs.sigma[0], outputs.spatial_sigma[0],
                         factor=params.downsample, mode=params.downsample_mode)
    seeds = seeds.select(merge_seeds(seeds.embedding, seeds.coords, seeds.sigma, seeds.spatial_sigma,
                                     threshold=params.merge_threshold))
    candidates = torch.nonzero(semantic.thing).squeeze(1)
    instance, log_phi = assign_instances(instance_map, candidates, seeds, coordinates,
                                         threshold=params.mask_threshold, chunk=chunk)
    return panoptic_result(semantic, candidates, instance, log_phi, seeds, order, grid, params)


def decode_batch(
    outputs: HLEOutputs,
    class_means: torch.Tensor,
    class_sigma: torch.Tensor,
    is_thing: torch.Tensor,
    params: DecoderParams = DecoderParams(),
    *,
    stride: float = 1.0,
    output_size: tuple[int, int] | None = None,
    split_embedding: bool = False,
) -> list[PanopticResult]:
    """Decode every image of a batch with :func:`decode_panoptic`.

    Args:
        outputs: :class:`HLEOutputs` with ``[B, ...]`` tensors.
        class_means, class_sigma, is_thing, params, stride, output_size, split_embedding:
            as in :func:`decode_panoptic`.

    Returns:
        ``B`` results, in batch order.
    """
    if outputs.embedding.dim() != 4:
        raise ValueError(
            f"decode_batch: outputs.embedding must be [B, D, H, W], got {tuple(outputs.embedding.shape)}"
        )
    return [
        decode_panoptic(
            HLEOutputs(*(None if t is None else t[b] for t in outputs)), class_means, class_sigma, is_thing, params,
            stride=stride, output_size=output_size, split_embedding=split_embedding,
        )
        for b in range(outputs.embedding.shape[0])
    ]
