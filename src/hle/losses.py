"""``nn.Module`` shell around the pure HLE loss of :mod:`hle.core.hle_loss`.

This module owns only the packaging for training code that wants a module: the thing
flags live in a buffer (so they follow ``.to(device)``) and the options are kept as given.
All computation is :func:`hle.core.hle_loss.hle_loss`; the class means and sigmas belong
to the model and are passed in on every call.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hle.core.hle_loss import HLELossOptions, hle_loss
from hle.core.types import HLEOutputs, PanopticTargets

__all__ = ["HLELoss", "HLELossOptions"]


class HLELoss(nn.Module):
    """Hierarchical Lovász Embedding loss (Eq. 16) as a module.

    Args:
        is_thing: ``[C]`` bool (or a sequence of bools), which train ids are thing classes.
        options: variant switches and weights (default: the paper's model).
    """

    is_thing: torch.Tensor

    def __init__(
        self, is_thing: torch.Tensor | Sequence[bool], options: HLELossOptions = HLELossOptions()
    ) -> None:
        super().__init__()
        flags = torch.as_tensor(is_thing, dtype=torch.bool)
        if flags.dim() != 1 or flags.numel() == 0:
            raise ValueError(f"HLELoss: is_thing must be a non-empty [C] vector, got shape {tuple(flags.shape)}")
        if not isinstance(options, HLELossOptions):
            raise TypeError(f"HLELoss: options must be HLELossOptions, got {type(options).__name__}")
        self.register_buffer("is_thing", flags.clone(), persistent=False)
        self.options = options

    def forward(
        self,
        outputs: HLEOutputs,
        targets: PanopticTargets,
        class_means: torch.Tensor,
        class_sigma: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """See :func:`hle.core.hle_loss.hle_loss`; returns the same dict of scalars."""
        return hle_loss(outputs, targets, class_means, class_sigma, self.is_thing, self.options)

    def extra_repr(self) -> str:
        return f"num_classes={self.is_thing.numel()}, options={self.options}"
