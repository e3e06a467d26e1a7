"""Helpers of the export tests (fixtures live in ``conftest.py``)."""
from __future__ import annotations

import torch
from torch import nn


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    A fresh network's BatchNorms are identities in eval mode (mean 0, variance 1,
    weight 1, bias 0); an exporter or runtime that folded them wrongly would go
    unnoticed on such a network.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
