"""hle: proposal-free panoptic segmentation with Hierarchical Lovász Embeddings.

The top level re-exports the pieces most users reach for; everything else lives in
:mod:`hle.core` (pure tensor functions), :mod:`hle.models`, :mod:`hle.data`,
:mod:`hle.evaluation` and :mod:`hle.engine`.
"""
from __future__ import annotations

from hle.core.decode import DecoderParams, decode_batch, decode_panoptic
from hle.core.hle_loss import HLELossOptions, hle_loss
from hle.core.lovasz import lovasz_binary, lovasz_hinge, lovasz_softmax
from hle.core.thomson import thomson_init
from hle.core.types import HLEOutputs, PanopticResult, PanopticTargets
from hle.evaluation import PanopticEvaluator, pq_compute
from hle.losses import HLELoss
from hle.models import HLENet, flip_inference

__version__ = "0.1.0"

__all__ = [
    "DecoderParams",
    "HLELoss",
    "HLELossOptions",
    "HLENet",
    "HLEOutputs",
    "PanopticEvaluator",
    "PanopticResult",
    "PanopticTargets",
    "decode_batch",
    "decode_panoptic",
    "flip_inference",
    "hle_loss",
    "lovasz_binary",
    "lovasz_hinge",
    "lovasz_softmax",
    "pq_compute",
    "thomson_init",
]
