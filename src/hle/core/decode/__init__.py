"""Panoptic decoding of HLE network outputs (Sec. 3.5 and Supplementary C).

The decoder is a chain of public stages, each a pure tensor function that runs on the
device of its inputs and is tested on its own; :func:`decode_panoptic` checks its inputs
and chains them:

- :mod:`~hle.core.decode.params`: :class:`DecoderParams`, the decoder's knobs (validated);
- :mod:`~hle.core.decode.resolution`: maps -> decode grid -> output size (Supplementary C);
- :mod:`~hle.core.decode.semantic`: class per pixel by argmax of psi (Eq. 9), stuff threshold;
- :mod:`~hle.core.decode.seeds`: seed NMS, seed properties, greedy merging with Phi (Eq. 8);
- :mod:`~hle.core.decode.instances`: each thing pixel joins the seed of highest Phi;
- :mod:`~hle.core.decode.result`: areas, boxes, scores, ids and ``segments_info``;
- :mod:`~hle.core.decode.panoptic`: :func:`decode_panoptic` and :func:`decode_batch`.
"""
from __future__ import annotations

from hle.core.decode.instances import assign_instances
from hle.core.decode.panoptic import decode_batch, decode_panoptic
from hle.core.decode.params import DEFAULT_CHUNK, DOWNSAMPLE_MODES, INSTANCE_SCORES, DecoderParams
from hle.core.decode.resolution import DecodeGrid, DecodeMaps, decode_grid, decode_maps, downsample_maps, upsample_ids
from hle.core.decode.result import PANOPTIC_DTYPE, panoptic_result, segment_stats
from hle.core.decode.seeds import Seeds, find_seeds, gather_seeds, merge_seeds
from hle.core.decode.semantic import ClassOrder, SemanticAssignment, semantic_assignment, stuff_first

__all__ = [
    "DEFAULT_CHUNK",
    "DOWNSAMPLE_MODES",
    "INSTANCE_SCORES",
    "PANOPTIC_DTYPE",
    "ClassOrder",
    "DecodeGrid",
    "DecodeMaps",
    "DecoderParams",
    "SemanticAssignment",
    "Seeds",
    "assign_instances",
    "decode_batch",
    "decode_grid",
    "decode_maps",
    "decode_panoptic",
    "downsample_maps",
    "find_seeds",
    "gather_seeds",
    "merge_seeds",
    "panoptic_result",
    "segment_stats",
    "semantic_assignment",
    "stuff_first",
    "upsample_ids",
]
