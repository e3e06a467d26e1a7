"""Turning config sections into the library's objects (the only config-aware glue).

This module owns the mapping from :mod:`hle.config` sections to constructor keyword
arguments: the network (:class:`hle.models.HLENet`), the datasets (loader index +
:class:`hle.data.PanopticMapper`), the loss options and the decoder arguments. Library
code below it never sees a config object (STYLE: "config lives at the edge").
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from hle.config import Config, ConfigError
from hle.core.decode import DecoderParams
from hle.core.hle_loss import HLELossOptions

__all__ = [
    "build_model",
    "load_records",
    "build_mapper",
    "build_loss_options",
    "loss_stride",
    "decoder_params",
    "decoder_split_embedding",
]


def build_model(config: Config, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """The HLE network of ``config.model`` for ``num_classes`` classes.

    Args:
        config: run configuration.
        num_classes: C (from the dataset metadata).
        pretrained: load ``config.model.pretrained`` backbone weights; ``False`` when the
            weights come from a checkpoint anyway (evaluation, prediction, resume).
    """
    from hle.models import HLENet

    m = config.model
    kwargs: dict[str, Any] = dict(m.options)
    # The "separate softmax branch" ablation needs the extra head on the network.
    if config.loss.options.semantic_branch:
        kwargs.setdefault("semantic_branch", True)
    try:
        return HLENet(
            m.backbone,
            num_classes=num_classes,
            embedding_dim=m.embedding_dim,
            output_stride=m.output_stride,
            pretrained_backbone=m.pretrained if pretrained else None,
            thomson_init=m.thomson_init,
            seed=config.train.seed,
            **kwargs,
        )
    except TypeError as exc:
        raise ConfigError(f"model.options: {exc}") from None


def load_records(name: str, root: str, split: str) -> tuple[list[dict], Any]:
    """``(records, metadata)`` of dataset ``name`` at ``root`` for ``split``.

    Raises:
        ConfigError: unknown dataset name (naming the known ones).
    """
    from hle import data as hdata

    registry = getattr(hdata, "DATASETS", None)
    if registry is not None and name not in registry:
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(sorted(registry))})")
    return hdata.load_dataset(name, root, split)


def build_mapper(config: Config, metadata: Any, *, train: bool) -> Any:
    """The per-sample mapper for training (random transforms) or evaluation."""
    from hle.data import PanopticMapper

    d = config.data
    kwargs: dict[str, Any] = dict(
        train=train,
        max_side=d.max_side,
        seed=config.train.seed,
    )
    if train:
        kwargs.update(
            min_scale=d.min_scale,
            max_scale=d.max_scale,
            crop_size=tuple(d.crop_size) if d.crop_size else None,
            crop_around_things=d.crop_around_things,
            flip=d.flip,
            jitter=d.jitter,
        )
    kwargs.update(d.options)
    try:
        return PanopticMapper(metadata, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"data.options: {exc}") from None


def loss_stride(config: Config, model: nn.Module) -> int:
    """Resolution divisor of the loss: 1 at full resolution, else the decoder stride."""
    if config.model.upsample:
        return 1
    return int(getattr(model, "decoder_stride", 1))


def build_loss_options(config: Config, stride: int) -> HLELossOptions:
    """``config.loss.options`` (checked when the config was built) at the loss ``stride``."""
    return dataclasses.replace(config.loss.options, stride=float(stride))


def decoder_params(config: Config) -> DecoderParams:
    """The decoder's thresholds: ``config.eval.decoder`` (typed and checked when the config was built)."""
    return config.eval.decoder


def decoder_split_embedding(config: Config) -> bool:
    """Whether to decode the split-embedding ablation: a network decodes the way it was
    trained, so this follows ``loss.options.split_embedding``."""
    return bool(config.loss.options.split_embedding)
