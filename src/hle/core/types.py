"""Small typed containers passed between the model, the loss and the decoder.

The network returns :class:`HLEOutputs` (raw tensors, no loss, no decoding); the
per-sample mapper produces :class:`PanopticTargets`; the decoder returns a
:class:`PanopticResult`. NamedTuples keep them traceable by TorchScript/ONNX export.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class HLEOutputs(NamedTuple):
    """Raw per-pixel network outputs (Sec. 3.4, Fig. 2).

    Attributes:
        embedding: ``[B, D, H, W]`` unit-length embeddings e_i.
        sigma: ``[B, 1, H, W]`` positive instance sigma_i.
        spatial_sigma: ``[B, 1, H, W]`` positive spatial sigma (Eq. 8).
        seed: ``[B, 1, H, W]`` seed score s_i in (0, 1) (sigmoid applied).
        semantic_logits: ``[B, C, H, W]`` only for the "separate softmax semantic
            branch" ablation, else ``None``.
    """

    embedding: torch.Tensor
    sigma: torch.Tensor
    spatial_sigma: torch.Tensor
    seed: torch.Tensor
    semantic_logits: Optional[torch.Tensor] = None


class PanopticTargets(NamedTuple):
    """Training targets for a batch, all ``[B, H, W]``.

    Attributes:
        semantic: int64 contiguous train ids ``0..C-1``; ``IGNORE_LABEL`` (255) on void.
        instance: int64 instance index, unique per image, ``0`` = no instance
            (stuff, void or crowd), ``1..L`` for thing instances.
        thing: bool, pixel of a thing class (crowd thing regions included).
        ignore: bool, void pixels: excluded from every loss term.
        crowd: bool, crowd regions: take part in the semantic terms, in no instance term.
    """

    semantic: torch.Tensor
    instance: torch.Tensor
    thing: torch.Tensor
    ignore: torch.Tensor
    crowd: torch.Tensor


class PanopticResult(NamedTuple):
    """Decoded panoptic segmentation of one image (COCO panoptic convention).

    Attributes:
        panoptic: ``[H, W]`` int32 segment ids (as detectron2's ``panoptic_seg``), ``0`` = void / unassigned.
        segments_info: one dict per segment with keys ``id, category_id`` (contiguous
            train id), ``isthing, area, bbox`` (``[x, y, w, h]``) and ``score``.
    """

    panoptic: torch.Tensor
    segments_info: list
