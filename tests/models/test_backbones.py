"""Tests of hle.models.backbones: feature shapes, dilation, weight loading and its errors."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, ResNet101_Weights

from hle.models import HLENet
from hle.models.backbones import (
    BACKBONES,
    build_backbone,
    imagenet_weights,
    load_backbone_weights,
    read_state_dict,
)

FAST_BACKBONES = ["tiny", "mobilenet_v2", "resnet50"]


@pytest.mark.parametrize("name", FAST_BACKBONES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_feature_shapes_and_strides(name: str, output_stride: int) -> None:
    spec = BACKBONES[name](output_stride=output_stride)
    h, w = 64, 96
    with torch.no_grad():
        feats = spec.body.eval()(torch.zeros(1, 3, h, w))
    assert set(feats) == {"low", "out"} | {key for key, _, _ in spec.mid}
    assert feats["low"].shape == (1, spec.low_channels, h // spec.low_stride, w // spec.low_stride)
    assert feats["out"].shape == (1, spec.out_channels, h // output_stride, w // output_stride)
    # Intermediate skips: coarse to fine, strictly between the low-level and output strides.
    strides = [stride for _, _, stride in spec.mid]
    assert strides == sorted(strides, reverse=True)
    for key, channels, stride in spec.mid:
        assert spec.low_stride < stride <= 8
        assert feats[key].shape == (1, channels, h // stride, w // stride)
    assert (name == "tiny") == bool(spec.mid)


def _stride_dilation_of_3x3(module: nn.Module) -> list[tuple[int, int]]:
    return [
        (m.stride[0], m.dilation[0])
        for m in module.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


# (stride, dilation) of the 3x3 conv of features[0..17], hand-written from MobileNetV2's
# table (strides 2,1,2,1,2,1,1,2,1,1,1,1,1,1,2,1,1,1): the first stride that would exceed the
# output stride becomes 1 and keeps the old dilation; every later 3x3 conv is dilated 2x more.
MNV2_OS16 = [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (2, 1)] + [(1, 1)] * 6 + [
    (1, 1), (1, 2), (1, 2), (1, 2)
]
MNV2_OS8 = [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1)] + [(1, 2)] * 6 + [
    (1, 2), (1, 4), (1, 4), (1, 4)
]


@pytest.mark.parametrize("output_stride, expected", [(8, MNV2_OS8), (16, MNV2_OS16)])
def test_mobilenet_v2_dilation_follows_resnet_convention(
    output_stride: int, expected: list[tuple[int, int]]
) -> None:
    body = build_backbone("mobilenet_v2", output_stride).body
    assert _stride_dilation_of_3x3(body) == expected
    # Padding equals dilation so that every stride-1 conv keeps the map size.
    for m in body.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            assert m.padding == m.dilation


def test_resnet_uses_torchvision_dilation() -> None:
    # Reference: torchvision's own switch on the same architecture.
    ours = _stride_dilation_of_3x3(build_backbone("resnet50", 8).body)
    ref_net = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    ref = _stride_dilation_of_3x3(nn.Sequential(*list(ref_net.children())[:-2]))
    assert ours == ref


def test_unknown_backbone_and_bad_output_stride() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'.*mobilenet_v2"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        build_backbone("resnet50", 32)
    with pytest.raises(ValueError, match="unknown backbone"):
        HLENet("vgg", num_classes=3)


def test_imagenet_enum_selection() -> None:
    assert imagenet_weights("resnet50") is ResNet50_Weights.IMAGENET1K_V2
    assert imagenet_weights("resnet101") is ResNet101_Weights.IMAGENET1K_V2
    assert imagenet_weights("mobilenet_v2") is MobileNet_V2_Weights.IMAGENET1K_V2
    with pytest.raises(ValueError, match="no ImageNet weights for backbone 'tiny'"):
        imagenet_weights("tiny")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        HLENet("tiny", num_classes=3, pretrained_backbone="imagenet")


def test_imagenet_weights_loaded_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    # A full classification state dict (with the fc layer) stands in for the download.
    torch.manual_seed(1)
    source = torchvision.models.resnet50().state_dict()
    asked = []

    def fake_get_state_dict(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        asked.append(self)
        return source

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", fake_get_state_dict)
    model = HLENet("resnet50", num_classes=3, pretrained_backbone="imagenet")
    assert asked == [ResNet50_Weights.IMAGENET1K_V2]
    got = model.backbone.state_dict()
    assert set(got) == {k for k in source if not k.startswith("fc.")}
    for key, value in got.items():
        assert torch.equal(value, source[key]), key


def test_load_full_mobilenet_checkpoint_from_file(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(2)
    classifier = torchvision.models.mobilenet_v2()
    path = tmp_path / "mnv2.pth"
    # Wrapped as a training checkpoint with a DDP prefix, as users' files often are.
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}}, path)
    model = HLENet("mobilenet_v2", num_classes=3, pretrained_backbone=path)
    source = classifier.state_dict()
    got = model.backbone.state_dict()
    assert len(got) > 0
    for key, value in got.items():
        assert torch.equal(value, source[key]), key
    assert not any(k.startswith(("features.18.", "classifier.")) for k in got)


def test_load_backbone_only_state_dict(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(3)
    donor = HLENet("tiny", num_classes=3)
    path = tmp_path / "tiny_backbone.pt"
    torch.save(donor.backbone.state_dict(), path)
    model = HLENet("tiny", num_classes=3, pretrained_backbone=str(path))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, donor.backbone.state_dict()[key]), key
    # A whole HLE network state dict also works: its backbone.* entries are used.
    path_full = tmp_path / "hle.pt"
    torch.save(donor.state_dict(), path_full)
    model = HLENet("tiny", num_classes=5, pretrained_backbone=path_full)
    assert torch.equal(model.backbone.stem[0][0].weight, donor.backbone.stem[0][0].weight)


def test_missing_file_error(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        HLENet("tiny", num_classes=3, pretrained_backbone=path)


def test_not_a_state_dict_error(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pt does not hold a state dict"):
        read_state_dict(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read backbone weights from .*garbage.pt"):
        read_state_dict(garbage)


def test_mismatched_keys_error_names_file_and_keys(tmp_path) -> None:  # noqa: ANN001
    state = HLENet("tiny", num_classes=3).backbone.state_dict()
    state["stage9.weight"] = torch.zeros(1)
    del state["stem.0.0.weight"]
    path = tmp_path / "bad_keys.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        HLENet("tiny", num_classes=3, pretrained_backbone=path)
    message = str(info.value)
    assert "bad_keys.pt" in message
    assert "missing keys [stem.0.0.weight]" in message
    assert "unexpected keys [stage9.weight]" in message


def test_shape_mismatch_error() -> None:
    body = build_backbone("tiny").body
    state = body.state_dict()
    state["stem.0.0.weight"] = torch.zeros(7, 3, 3, 3)
    expected = r"my.ckpt.*stem.0.0.weight: expected \(24, 3, 3, 3\), found \(7, 3, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_backbone_weights(body, state, source="my.ckpt")


def test_wrong_backbone_checkpoint_is_rejected() -> None:
    # A ResNet checkpoint into a MobileNet: every key is wrong; the message stays short.
    state = torchvision.models.resnet50().state_dict()
    parts = build_backbone("mobilenet_v2")
    with pytest.raises(ValueError, match=r"missing keys \[features.*\.\.\.\] \(\d+ keys\)"):
        load_backbone_weights(parts.body, state, ignored_prefixes=parts.ignored_prefixes)


def test_old_checkpoint_without_bn_counters_loads() -> None:
    body = build_backbone("tiny").body
    state = {k: v + 1 if v.is_floating_point() else v for k, v in body.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_backbone_weights(body, state)
    assert math.isclose(float(body.stem[0][1].weight.detach()[0]), 2.0)


def test_backbone_options() -> None:
    parts = build_backbone("tiny", widths=(8, 16, 32, 40))
    assert (parts.low_channels, parts.out_channels) == (8, 40)
    model = HLENet("tiny", num_classes=3, backbone_options={"widths": [8, 16, 32, 40]})
    assert model.backbone.stage4[1][0].out_channels == 40
    with pytest.raises(ValueError, match="backbone 'resnet50': bad options \\['widths'\\]"):
        build_backbone("resnet50", widths=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="widths must be 4 positive ints"):
        build_backbone("tiny", widths=(8, 16))
