"""The HLE network: DeepLabV3+ with per-pixel embedding, sigma, spatial-sigma and seed heads.

This module owns the network of Sec. 3.4 / Fig. 2: a backbone from :mod:`hle.models.backbones`,
torchvision's ASPP, the DeepLabV3+ decoder (ASPP output upsampled to the low-level skip and
fused with it), and one 1x1 head per output. It also owns the persistent class means
``[C, D]`` and class sigmas ``[C]`` of Eq. (9), so they are saved with the network's state
dict, and :func:`param_groups`, which gives those a higher learning rate. ``forward`` returns
raw :class:`~hle.core.types.HLEOutputs`; it computes no loss and does no decoding, and it has
no data-dependent Python control flow, so it traces and exports.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from hle.core.thomson import thomson_init
from hle.core.types import HLEOutputs

from .backbones import build_backbone, load_pretrained

__all__ = ["HLENet", "param_groups", "positive", "inverse_positive"]

#: Default width of the DeepLabV3+ parts, per backbone: (ASPP channels, low-level projection
#: channels, decoder channels). The torchvision backbones use the paper's (256, 48, 256); the
#: tiny demo backbone is sized for a few steps per second on two CPU cores.
DEFAULT_WIDTHS: dict[str, tuple[int, int, int]] = {
    "resnet50": (256, 48, 256),
    "resnet101": (256, 48, 256),
    "mobilenet_v2": (256, 48, 256),
    "tiny": (64, 16, 32),
}


def positive(raw: torch.Tensor, floor: float) -> torch.Tensor:
    """``floor + softplus(raw)``: a smooth positive parametrisation of a sigma.

    The floor keeps ``1 / (2 sigma^2)`` of Eq. (7)-(9) bounded, so a collapsing sigma cannot
    blow up the kernels.
    """
    return floor + F.softplus(raw)


def inverse_positive(value: float, floor: float) -> float:
    """The ``raw`` with ``positive(raw, floor) == value`` (for initialising biases)."""
    if not floor >= 0:
        raise ValueError(f"sigma floor must be >= 0, got {floor}")
    if not value > floor:
        raise ValueError(f"sigma init must exceed its floor {floor}, got {value}")
    y = value - floor
    # log(expm1(y)), written to stay finite for large y.
    return y + math.log(-math.expm1(-y))


def _check_positive_int(name: str, value: int) -> None:
    # numbers.Integral also admits NumPy integers (e.g. a class count read from metadata).
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class HLENet(nn.Module):
    """DeepLabV3+ predicting the per-pixel tuple ``(e_i, sigma_i, sigma_spatial_i, s_i)``.

    ``images [B, 3, H, W]`` (normalised as the backbone expects; the data mapper does that)
    -> backbone -> ASPP on the high-level map -> upsample to the low-level map, concatenate
    with its 1x1 projection -> two 3x3 conv-BN-ReLU -> four 1x1 heads:

    * embedding ``e_i``: ``embedding_dim`` channels, L2-normalised (Sec. 3.4);
    * instance sigma ``sigma_i`` (Eq. 7, 14): ``floor + softplus``;
    * spatial sigma (Eq. 8), in the coordinate units of :mod:`hle.core.kernels`
      (input pixels / 64): ``floor + softplus``;
    * seed ``s_i`` (Eq. 13): sigmoid.

    Optionally a fifth head of plain softmax logits over the classes (the "separate semantic
    branch" ablation). The sigma heads start with zero weights and a bias giving exactly
    their ``*_init`` value, so training starts from the configured margins.

    Training needs more than one image per BatchNorm batch: torchvision's ASPP has a
    BatchNorm after its image-pooling branch, whose map is 1x1, so a single image in train
    mode raises "Expected more than 1 value per channel" (SyncBatchNorm over several
    processes is fine). The layers are plain ``nn.BatchNorm2d``, ready for
    ``nn.SyncBatchNorm.convert_sync_batchnorm``.

    Args:
        backbone: a key of :data:`hle.models.backbones.BACKBONES`.
        num_classes: C, number of contiguous train ids.
        embedding_dim: D (paper: 12 on Cityscapes, 128 on COCO and Vistas).
        output_stride: 8 or 16, the stride of the ASPP input.
        pretrained_backbone: ``None``, ``"imagenet"`` or a path to a backbone checkpoint.
        semantic_branch: add ``HLEOutputs.semantic_logits``.
        thomson_init: initialise the class means by Thomson energy minimisation (Eq. 17),
            else as random unit vectors; both seeded by ``seed``.
        seed: seed of the class-mean initialisation (independent of global RNG state).
        sigma_init, sigma_floor: instance sigma at initialisation and its lower bound.
        spatial_sigma_init, spatial_sigma_floor: same for the spatial sigma.
        class_sigma_init, class_sigma_floor: same for the class sigmas of Eq. (9).
        aspp_rates: ASPP dilation rates; default depends on the backbone and output stride.
        aspp_channels, low_level_channels, decoder_channels: widths of the DeepLabV3+ parts;
            ``None`` takes :data:`DEFAULT_WIDTHS` of the backbone.
        aspp_dropout: dropout after the ASPP projection (torchvision's ASPP hard-codes 0.5).
        backbone_options: extra keyword arguments of the backbone builder, e.g.
            ``{"widths": [16, 32, 64, 128]}`` for ``tiny``.
        decoder_skips: fuse the backbone's intermediate maps (``Backbone.mid``: ``tiny``'s
            stride-8 and stride-4 stages) on the way from the ASPP output down to the
            low-level map, one 1x1 projection + 3x3 conv per scale (a skip connection at
            every scale, as in a UNet), instead of DeepLabV3+'s single jump from the ASPP
            output to the low-level map. Small and thin objects, a pixel or two at the
            output stride, then reach the heads through features that saw them at stride
            4 and 8. Off by default (the paper's DeepLabV3+).

    Attributes:
        class_means: ``[C, D]`` parameter, persistent class means (unit rows at init; the
            kernels re-normalise them).
        decoder_stride: stride of the decoder output, i.e. of ``forward(x, upsample=False)``
            (4 for the torchvision backbones, 2 for ``tiny``). Its maps have size
            ``ceil(H / decoder_stride) x ceil(W / decoder_stride)``.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        num_classes: int,
        embedding_dim: int = 12,
        output_stride: int = 16,
        pretrained_backbone: str | os.PathLike | None = None,
        semantic_branch: bool = False,
        thomson_init: bool = True,
        seed: int = 0,
        sigma_init: float = 0.4,
        sigma_floor: float = 0.05,
        spatial_sigma_init: float = 1.0,
        spatial_sigma_floor: float = 0.05,
        class_sigma_init: float = 0.4,
        class_sigma_floor: float = 0.05,
        aspp_rates: Sequence[int] | None = None,
        aspp_channels: int | None = None,
        low_level_channels: int | None = None,
        decoder_channels: int | None = None,
        aspp_dropout: float = 0.1,
        backbone_options: dict | None = None,
        decoder_skips: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("embedding_dim", embedding_dim)
        if embedding_dim < 2:
            raise ValueError(f"embedding_dim must be >= 2, got {embedding_dim}")
        if not 0.0 <= aspp_dropout < 1.0:
            raise ValueError(f"aspp_dropout must be in [0, 1), got {aspp_dropout}")
        parts = build_backbone(backbone, output_stride, **(backbone_options or {}))
        load_pretrained(parts, backbone, pretrained_backbone)
        widths = DEFAULT_WIDTHS[backbone]
        aspp_ch = widths[0] if aspp_channels is None else aspp_channels
        low_ch = widths[1] if low_level_channels is None else low_level_channels
        dec_ch = widths[2] if decoder_channels is None else decoder_channels
        for name, value in (
            ("aspp_channels", aspp_ch),
            ("low_level_channels", low_ch),
            ("decoder_channels", dec_ch),
        ):
            _check_positive_int(name, value)
        rates = tuple(parts.aspp_rates if aspp_rates is None else aspp_rates)
        if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"aspp_rates must be positive ints, got {aspp_rates!r}")

        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.output_stride = output_stride
        self.decoder_stride = parts.low_stride
        self.sigma_floor = sigma_floor
        self.spatial_sigma_floor = spatial_sigma_floor
        self.class_sigma_floor = class_sigma_floor

        self.backbone = parts.body
        self.aspp = ASPP(parts.out_channels, rates, out_channels=aspp_ch)
        self.aspp.project[-1] = nn.Dropout(aspp_dropout)
        self.low_level = _conv_bn_relu(parts.low_channels, low_ch, 1)
        if decoder_skips and not parts.mid:
            raise ValueError(f"decoder_skips: backbone {backbone!r} offers no intermediate maps (only 'tiny' does)")
        mid = parts.mid if decoder_skips else ()
        self.skip_keys = tuple(key for key, _, _ in mid)
        self.skip_proj = nn.ModuleDict({key: _conv_bn_relu(ch, low_ch, 1) for key, ch, _ in mid})
        fuse_in = [aspp_ch] + [dec_ch] * max(len(mid) - 1, 0)
        self.skip_fuse = nn.ModuleDict(
            {key: _conv_bn_relu(c + low_ch, dec_ch, 3) for (key, _, _), c in zip(mid, fuse_in)}
        )
        # Flat (conv, bn, relu) x 2: the state-dict keys of checkpoints written before
        # decoder_skips existed (decoder.0 / .1 / .3 / .4).
        self.decoder = nn.Sequential(
            *_conv_bn_relu((dec_ch if mid else aspp_ch) + low_ch, dec_ch, 3), *_conv_bn_relu(dec_ch, dec_ch, 3)
        )
        self.embedding_head = nn.Conv2d(dec_ch, self.embedding_dim, 1)
        self.sigma_head = _constant_head(dec_ch, inverse_positive(sigma_init, sigma_floor))
        self.spatial_sigma_head = _constant_head(
            dec_ch, inverse_positive(spatial_sigma_init, spatial_sigma_floor)
        )
        self.seed_head = nn.Conv2d(dec_ch, 1, 1)
        self.semantic_head = nn.Conv2d(dec_ch, self.num_classes, 1) if semantic_branch else None

        means = _init_class_means(self.num_classes, self.embedding_dim, thomson_init, seed)
        self.class_means = nn.Parameter(means)
        self.class_sigma_raw = nn.Parameter(
            torch.full((self.num_classes,), inverse_positive(class_sigma_init, class_sigma_floor))
        )

    def class_sigma(self) -> torch.Tensor:
        """``[C]`` positive class sigmas of Eq. (9): ``floor + softplus(raw)``."""
        return positive(self.class_sigma_raw, self.class_sigma_floor)

    def param_groups(self, lr: float, class_lr_mult: float = 5.0) -> list[dict]:
        """Optimizer groups with faster class parameters; see :func:`param_groups`."""
        return param_groups(self, lr, class_lr_mult)

    def forward(self, images: torch.Tensor, upsample: bool = True) -> HLEOutputs:
        """Predict the per-pixel outputs.

        Args:
            images: ``[B, 3, H, W]`` normalised images, any ``H, W``.
            upsample: return maps at input resolution ``H x W`` (bilinear upsampling of the
                decoder output, embeddings re-normalised after it). ``False`` returns them at
                the decoder stride (``ceil(H / decoder_stride)`` rows), e.g. for a loss
                computed at reduced resolution.

        Returns:
            :class:`HLEOutputs` with ``embedding [B, D, h, w]`` (unit length), ``sigma``,
            ``spatial_sigma`` ``[B, 1, h, w]`` (positive), ``seed [B, 1, h, w]`` in (0, 1),
            ``semantic_logits [B, C, h, w]`` or ``None``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        feats = self.backbone(images)
        x = self.aspp(feats["out"])
        for key in self.skip_keys:  # coarse to fine (decoder_skips)
            skip = self.skip_proj[key](feats[key])
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.skip_fuse[key](torch.cat([x, skip], dim=1))
        low = self.low_level(feats["low"])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.decoder(torch.cat([x, low], dim=1))

        heads = [self.embedding_head, self.sigma_head, self.spatial_sigma_head, self.seed_head]
        if self.semantic_head is not None:
            heads.append(self.semantic_head)
        # Under AMP the heads run in half precision; their few channels are promoted to at
        # least float32 so unit norms, sigma floors and seeds near 0 or 1 stay exact for the
        # loss (float64 stays float64 for gradchecks).
        raw = [h(x) for h in heads]
        raw = [r.to(torch.promote_types(r.dtype, torch.float32)) for r in raw]
        if upsample:
            # Activations are applied after upsampling, so the full-resolution embeddings are
            # exactly unit length and the sigmas exactly above their floors.
            raw = [
                F.interpolate(r, size=images.shape[-2:], mode="bilinear", align_corners=False)
                for r in raw
            ]
        return HLEOutputs(
            embedding=F.normalize(raw[0], dim=1),
            sigma=positive(raw[1], self.sigma_floor),
            spatial_sigma=positive(raw[2], self.spatial_sigma_floor),
            seed=torch.sigmoid(raw[3]),
            semantic_logits=raw[4] if self.semantic_head is not None else None,
        )


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _constant_head(in_channels: int, bias: float) -> nn.Conv2d:
    # Zero weights: the head starts as the constant `bias` everywhere, whatever the features.
    head = nn.Conv2d(in_channels, 1, 1)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, bias)
    return head


def _init_class_means(num_classes: int, dim: int, thomson: bool, seed: int) -> torch.Tensor:
    if thomson:
        return thomson_init(num_classes, dim, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)


def param_groups(model: nn.Module, lr: float, class_lr_mult: float = 5.0) -> list[dict]:
    """Optimizer parameter groups: the network at ``lr``, class means and sigmas faster.

    The class means and class sigmas (Eq. 9) are few parameters that every pixel pulls on;
    a throw-away prototype trained best with about 5x the network's learning rate for them.

    Args:
        model: an :class:`HLENet`, possibly wrapped (DDP's ``module.`` prefix is fine): the
            class group is found by parameter name.
        lr: learning rate of the network.
        class_lr_mult: multiplier for the class group.

    Returns:
        ``[{"name": "network", "params": [...], "lr": lr}, {"name": "class", "params":
        [...], "lr": lr * class_lr_mult, "weight_decay": 0.0}]`` (empty groups dropped),
        ready for ``torch.optim.Adam(param_groups(model, lr))``.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not class_lr_mult > 0:
        raise ValueError(f"class_lr_mult must be > 0, got {class_lr_mult}")
    class_names = ("class_means", "class_sigma_raw")
    network, classes = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (classes if name.split(".")[-1] in class_names else network).append(p)
    groups = [
        {"name": "network", "params": network, "lr": lr},
        # No weight decay on the class group: shrinking means that the kernels re-normalise
        # anyway would only fight the loss.
        {"name": "class", "params": classes, "lr": lr * class_lr_mult, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
