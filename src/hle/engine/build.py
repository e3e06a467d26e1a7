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
    if config.loss.options.get("semantic_branch"):
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


def build_loss_options(config: Config, stride: int) -> Any:
    """``HLELossOptions`` from ``config.loss.options`` (+ the coordinate stride)."""
    from hle.core.hle_loss import HLELossOptions

    opts = dict(config.loss.options)
    names = {f.name for f in dataclasses.fields(HLELossOptions)} if dataclasses.is_dataclass(HLELossOptions) else set()
    unknown = sorted(set(opts) - names) if names else []
    if unknown:
        raise ConfigError(
            f"unknown loss option(s) {', '.join('loss.options.' + u for u in unknown)} "
            f"(valid: {', '.join(sorted(names))})"
        )
    if "stride" in names:
        opts["stride"] = stride
    return HLELossOptions(**opts)


def decoder_params(config: Config) -> DecoderParams:
    """The decoder's thresholds (:class:`DecoderParams`) from ``config.eval.decoder``.

    Raises:
        ConfigError: an unknown key or a bad value in ``eval.decoder``, named.
    """
    section = config.eval.decoder
    if isinstance(section, DecoderParams):
        return section
    values = {k: v for k, v in dict(section).items() if k != "split_embedding"}
    try:
        return DecoderParams(**values)
    except TypeError as exc:
        valid = ", ".join(f.name for f in dataclasses.fields(DecoderParams))
        raise ConfigError(f"eval.decoder: {exc} (valid: {valid}, split_embedding)") from None
    except ValueError as exc:
        raise ConfigError(f"eval.decoder: {exc}") from None


def decoder_split_embedding(config: Config) -> bool:
    """Whether to decode the split-embedding ablation.

    It must decode the way it was trained, so this follows ``loss.options`` unless
    ``eval.decoder.split_embedding`` is set.
    """
    section = config.eval.decoder
    if not isinstance(section, DecoderParams) and "split_embedding" in section:
        return bool(section["split_embedding"])
    return bool(config.loss.options.get("split_embedding", False))
