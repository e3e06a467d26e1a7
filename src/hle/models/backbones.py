"""Feature backbones for the HLE network and the loading of their weights.

This module owns the encoders the DeepLabV3+ network of :mod:`hle.models.deeplab` sits on:
ResNet-50, ResNet-101 and MobileNetV2 built from torchvision's own model definitions (with
strides traded for dilation to reach output stride 8 or 16), and a light ``tiny`` encoder for
CPU demos. Every backbone maps ``[B, 3, H, W]`` images to a dict with a high-level ``"out"``
map (at the output stride) and a low-level ``"low"`` map for the decoder's skip connection
(``tiny`` also returns its stride-8 and stride-4 maps for a decoder with a skip at every scale).
It also owns putting ImageNet or local-checkpoint weights into a backbone, with errors that
name the file and the offending keys. The name -> builder table is the plain dict
:data:`BACKBONES`.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models import (
    MobileNet_V2_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
)
from torchvision.models._api import WeightsEnum
from torchvision.models._utils import IntermediateLayerGetter

__all__ = [
    "BACKBONES",
    "Backbone",
    "TinyBackbone",
    "build_backbone",
    "imagenet_weights",
    "load_backbone_weights",
    "read_state_dict",
]

#: ImageNet weights torchvision offers for each backbone (the best top-1 of each family).
IMAGENET_WEIGHTS: dict[str, WeightsEnum] = {
    "resnet50": ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": ResNet101_Weights.IMAGENET1K_V2,
    "mobilenet_v2": MobileNet_V2_Weights.IMAGENET1K_V2,
}


@dataclass
class Backbone:
    """A built encoder and what the decoder needs to know about it.

    Attributes:
        body: module mapping ``[B, 3, H, W]`` to ``{"low": [B, low_channels, H/low_stride,
            W/low_stride], "out": [B, out_channels, H/output_stride, W/output_stride]}``
            (sizes rounded up for sizes that are not multiples of the stride). Its state-dict
            keys are those of the torchvision classification model it comes from, minus the
            classifier, so classification checkpoints load into it.
        low_channels: channels of the low-level map.
        out_channels: channels of the high-level map.
        low_stride: stride of the low-level map (the decoder's output stride).
        ignored_prefixes: state-dict key prefixes of the source classification model that the
            backbone does not use (classifier, last 1x1 conv); dropped when loading weights.
        aspp_rates: default ASPP dilation rates for the chosen output stride.
        mid: intermediate maps the body also returns, for a decoder with skip connections
            at every scale: ``(key, channels, stride)`` ordered from coarse to fine, strides
            between ``low_stride`` and the output stride. Empty when the body has none.
    """

    body: nn.Module
    low_channels: int
    out_channels: int
    low_stride: int
    ignored_prefixes: tuple[str, ...]
    aspp_rates: tuple[int, ...]
    mid: tuple[tuple[str, int, int], ...] = ()


def _deeplab_rates(output_stride: int) -> tuple[int, ...]:
    # DeepLabV3's rates: (6, 12, 18) at output stride 16, doubled at 8 so the field of view in
    # input pixels stays the same.
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")


def _resnet(factory: Callable[..., torchvision.models.ResNet], output_stride: int) -> Backbone:
    _check_output_stride(output_stride)
    # torchvision's own switch: layer4 (and layer3 at OS 8) keep their resolution and dilate.
    dilate = [False, output_stride == 8, True]
    net = factory(weights=None, replace_stride_with_dilation=dilate)
    body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "out"})
    return Backbone(
        body=body,
        low_channels=256,
        out_channels=2048,
        low_stride=4,
        ignored_prefixes=("fc.",),
        aspp_rates=_deeplab_rates(output_stride),
    )


def resnet50_backbone(output_stride: int = 16) -> Backbone:
    """torchvision ResNet-50; low level = ``layer1`` (256 ch, stride 4), out = ``layer4``."""
    return _resnet(torchvision.models.resnet50, output_stride)


def resnet101_backbone(output_stride: int = 16) -> Backbone:
    """torchvision ResNet-101; low level = ``layer1`` (256 ch, stride 4), out = ``layer4``."""
    return _resnet(torchvision.models.resnet101, output_stride)


def _dilate_strided_convs(features: nn.Sequential, output_stride: int) -> None:
    """Trade the strides of ``features`` beyond ``output_stride`` for dilation, in place.

    torchvision's MobileNetV2 has no ``replace_stride_with_dilation`` switch, so this does
    the same thing on its blocks: each block has exactly one 3x3 convolution (the stem conv
    or the depthwise conv). A strided 3x3 conv that would push the stride past
    ``output_stride`` gets stride 1 and keeps the previous dilation; all 3x3 convs after it
    use the doubled dilation (the convention of torchvision's ResNet).
    """
    stride, dilation = 1, 1
    for block in features:
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
                continue
            if conv.stride == (2, 2) and stride * 2 <= output_stride:
                stride *= 2
                continue
            if conv.stride == (2, 2):
                conv.stride = (1, 1)
                conv.dilation = conv.padding = (dilation, dilation)
                dilation *= 2
            else:
                conv.dilation = conv.padding = (dilation, dilation)


class _FeaturesBody(nn.Module):
    """Holds an intermediate-layer getter under ``features`` so that state-dict keys read
    ``features.N...`` exactly like torchvision's MobileNetV2."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.features(x)


def mobilenet_v2_backbone(output_stride: int = 16) -> Backbone:
    """torchvision MobileNetV2; low level = ``features[3]`` (24 ch, stride 4), out =
    ``features[17]`` (320 ch). The final 1x1 conv to 1280 channels (``features[18]``) is
    dropped, as in the DeepLabV3+ MobileNetV2 model."""
    _check_output_stride(output_stride)
    net = torchvision.models.mobilenet_v2(weights=None)
    _dilate_strided_convs(net.features, output_stride)
    getter = IntermediateLayerGetter(net.features, return_layers={"3": "low", "17": "out"})
    return Backbone(
        body=_FeaturesBody(getter),
        low_channels=24,
        out_channels=320,
        low_stride=4,
        ignored_prefixes=("classifier.", "features.18."),
        aspp_rates=_deeplab_rates(output_stride),
    )


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """A small plain-conv encoder for CPU demos (not a torchvision model).

    Four stages of two 3x3 conv-BN-ReLU each; the first conv of a stage halves the
    resolution. The low-level map is the stem output at stride 2, so a DeepLabV3+ decoder on
    it predicts at stride 2 and thin objects (poles, a few pixels wide) survive. At output
    stride 8 the last stage keeps its resolution and dilates instead.

    Args:
        widths: channels of the four stages.
        output_stride: 8 or 16.
    """

    def __init__(self, widths: Sequence[int] = (24, 48, 96, 160), output_stride: int = 16) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"TinyBackbone: widths must be 4 positive ints, got {tuple(widths)}")
        w1, w2, w3, w4 = (int(w) for w in widths)
        last_stride, last_dilation = (2, 1) if output_stride == 16 else (1, 2)
        self.stem = nn.Sequential(_conv_bn_relu(3, w1, stride=2), _conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(_conv_bn_relu(w1, w2, stride=2), _conv_bn_relu(w2, w2))
        self.stage3 = nn.Sequential(_conv_bn_relu(w2, w3, stride=2), _conv_bn_relu(w3, w3))
        self.stage4 = nn.Sequential(
            _conv_bn_relu(w3, w4, stride=last_stride),
            _conv_bn_relu(w4, w4, dilation=last_dilation),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stem(x)
        s4 = self.stage2(low)
        s8 = self.stage3(s4)
        return {"low": low, "s4": s4, "s8": s8, "out": self.stage4(s8)}


def tiny_backbone(output_stride: int = 16, widths: Sequence[int] = (24, 48, 96, 160)) -> Backbone:
    """The :class:`TinyBackbone`; low level = stem (stride 2), out = last stage; the
    stride-8 and stride-4 stages are offered as ``mid`` skips."""
    body = TinyBackbone(widths, output_stride)
    # The feature map at OS 16 of a 128x256 demo image is only 8x16, so the rates are small.
    rates = (2, 4, 6) if output_stride == 16 else (4, 8, 12)
    return Backbone(
        body=body,
        low_channels=int(widths[0]),
        out_channels=int(widths[3]),
        low_stride=2,
        ignored_prefixes=(),
        aspp_rates=rates,
        mid=(("s8", int(widths[2]), 8), ("s4", int(widths[1]), 4)),
    )


#: Backbone name -> builder ``(output_stride) -> Backbone``.
BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet50": resnet50_backbone,
    "resnet101": resnet101_backbone,
    "mobilenet_v2": mobilenet_v2_backbone,
    "tiny": tiny_backbone,
}


def build_backbone(name: str, output_stride: int = 16, **options: object) -> Backbone:
    """Build the backbone called ``name`` (a key of :data:`BACKBONES`), without weights.

    ``options`` go to the builder (only ``tiny`` takes any: ``widths``).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    builder = BACKBONES[name]
    try:
        inspect.signature(builder).bind(output_stride=output_stride, **options)
    except TypeError as exc:
        raise ValueError(f"backbone {name!r}: bad options {sorted(options)}: {exc}") from None
    return builder(output_stride=output_stride, **options)


def imagenet_weights(name: str) -> WeightsEnum:
    """The torchvision ImageNet weight enum used for backbone ``name``."""
    if name not in IMAGENET_WEIGHTS:
        raise ValueError(
            f"no ImageNet weights for backbone {name!r}; available for {sorted(IMAGENET_WEIGHTS)}"
        )
    return IMAGENET_WEIGHTS[name]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``torch.save`` file (tensors only, no pickled code).

    Accepts a bare state dict or a checkpoint dict that holds one under ``"state_dict"`` or
    ``"model"``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"cannot read backbone weights from {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of name -> tensor)")
    return dict(obj)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _short(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} keys)"


def load_backbone_weights(
    body: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    ignored_prefixes: Sequence[str] = (),
    source: str = "state dict",
) -> None:
    """Copy weights into a backbone body, strictly.

    Accepted layouts: the backbone's own state dict; a full torchvision classification model
    state dict (its classifier keys, those starting with ``ignored_prefixes``, are dropped);
    either with a DDP ``module.`` prefix; or a whole HLE network state dict, whose
    ``backbone.`` entries are used.

    Args:
        body: the backbone module (``Backbone.body``).
        state_dict: name -> tensor.
        ignored_prefixes: key prefixes to drop silently.
        source: where the weights come from (a file name), used in error messages.

    Raises:
        ValueError: naming ``source`` and the missing, unexpected or mis-shaped keys.
    """
    state = _strip_prefix(dict(state_dict), "module.")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignored_prefixes))}
    own = body.state_dict()
    # Checkpoints written before PyTorch 0.4.1 have no BN step counters; they carry no weights.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
        for k in own
        if k in state and own[k].shape != state[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_short(shapes, limit=4)}")
    if problems:
        raise ValueError(f"backbone weights from {source} do not fit: " + "; ".join(problems))
    body.load_state_dict(state, strict=False)


def load_pretrained(backbone: Backbone, name: str, pretrained: str | os.PathLike | None) -> None:
    """Put weights into ``backbone`` (built by ``build_backbone(name)``).

    Args:
        pretrained: ``None`` (keep the random init), ``"imagenet"`` (torchvision's ImageNet
            weights of :func:`imagenet_weights`, downloaded by torchvision when not cached),
            or a path to a ``torch.save`` file (see :func:`load_backbone_weights`).
    """
    if pretrained is None:
        return
    if isinstance(pretrained, str) and pretrained == "imagenet":
        weights = imagenet_weights(name)
        state = weights.get_state_dict(progress=True, check_hash=True)
        source = f"torchvision {type(weights).__name__}.{weights.name}"
    else:
        state = read_state_dict(pretrained)
        source = os.fspath(pretrained)
    load_backbone_weights(
        backbone.body, state, ignored_prefixes=backbone.ignored_prefixes, source=source
    )
