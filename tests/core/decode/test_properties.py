"""Property tests of the decoder (hypothesis): whatever the shapes, classes, instance layouts,
dtypes and resolutions, ``decode_panoptic`` returns a valid panoptic map, never crashes
and never scores NaN (``scenes.check_valid_result`` checks the map by brute force)."""
from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from hle.core.decode import DOWNSAMPLE_MODES, INSTANCE_SCORES, DecoderParams, decode_batch, decode_panoptic
from hle.core.types import HLEOutputs

from scenes import check_valid_result

LAYOUTS = ("none", "one_pixel", "all_one_instance", "blobs", "noise")
probability = st.floats(0.0, 1.0)


@st.composite
def resolutions(draw: st.DrawFn) -> tuple[int, int, float, tuple[int, int] | None]:
    """``(H, W, stride, output_size)``: maps at image resolution, at a fractional
    stride, or at an integer stride with an output size that crops the last block."""
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    kind = draw(st.sampled_from(["image", "stride", "output_size"]))
    if kind == "image":
        return h, w, 1.0, None
    if kind == "stride":
        return h, w, draw(st.sampled_from([0.5, 2.0, 2.5])), None
    s = draw(st.sampled_from([2, 4]))
    return h, w, float(s), (draw(st.integers((h - 1) * s + 1, h * s)), draw(st.integers((w - 1) * s + 1, w * s)))


def params_strategy() -> st.SearchStrategy[DecoderParams]:
    return st.builds(
        DecoderParams,
        seed_threshold=probability, merge_threshold=probability, mask_threshold=probability,
        stuff_threshold=probability, min_thing_area=st.integers(0, 20), min_stuff_area=st.integers(0, 40),
        nms_kernel=st.sampled_from([1, 3, 5]), max_instances=st.integers(0, 8), downsample=st.integers(1, 4),
        downsample_mode=st.sampled_from(DOWNSAMPLE_MODES), instance_score=st.sampled_from(INSTANCE_SCORES),
    )


def make_outputs(layout: str, c: int, d: int, h: int, w: int, with_logits: bool, seed: int) -> tuple:
    """Maps with an instance layout: none (no seed above 0), one pixel, one instance over
    the whole image, a few square blobs, or pure noise; class means random."""
    gen = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, d, generator=gen, dtype=torch.float64), dim=1)
    cls = torch.randint(0, c, (h, w), generator=gen)
    emb = means[cls].permute(2, 0, 1) + 0.05 * torch.randn(d, h, w, generator=gen, dtype=torch.float64)
    seed_map = torch.zeros(1, h, w, dtype=torch.float64)
    if layout == "one_pixel":
        r, q = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
        seed_map[0, r, q] = 0.95
    elif layout == "all_one_instance":
        emb = means[int(cls[0, 0])][:, None, None].expand(d, h, w).clone()
        seed_map[0] = torch.rand(h, w, generator=gen, dtype=torch.float64) * 0.5 + 0.4
    elif layout == "blobs":
        for _ in range(3):
            r0, q0 = int(torch.randint(0, h, (1,), generator=gen)), int(torch.randint(0, w, (1,), generator=gen))
            blob = F.normalize(torch.randn(d, 1, 1, generator=gen, dtype=torch.float64), dim=0)
            emb[:, r0 : r0 + 4, q0 : q0 + 4] = blob
            seed_map[0, r0 : r0 + 4, q0 : q0 + 4] = 0.9
    elif layout == "noise":
        emb = torch.randn(d, h, w, generator=gen, dtype=torch.float64)
        seed_map = torch.rand(1, h, w, generator=gen, dtype=torch.float64)
    def positive(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(1, h, w, generator=gen, dtype=torch.float64)

    logits = 3 * torch.randn(c, h, w, generator=gen, dtype=torch.float64) if with_logits else None
    outputs = HLEOutputs(F.normalize(emb, dim=0), positive(0.05, 1.0), positive(0.05, 2.0), seed_map, logits)
    class_sigma = 0.05 + torch.rand(c, generator=gen, dtype=torch.float64)
    return outputs, means, class_sigma


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    c=st.integers(1, 6),
    half_d=st.integers(1, 4),
    resolution=resolutions(),
    params=params_strategy(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    split=st.booleans(),
    with_logits=st.booleans(),
    thing_bits=st.integers(0, 63),
    seed=st.integers(0, 2**16),
)
def test_decode_always_gives_a_valid_panoptic_map(
    layout: str, c: int, half_d: int, resolution: tuple, params: DecoderParams, dtype: torch.dtype,
    split: bool, with_logits: bool, thing_bits: int, seed: int,
) -> None:
    h, w, stride, output_size = resolution
    is_thing = torch.tensor([bool(thing_bits >> i & 1) for i in range(c)])
    outputs, means, class_sigma = make_outputs(layout, c, 2 * half_d, h, w, with_logits, seed)
    cast = HLEOutputs(*(None if t is None else t.to(dtype) for t in outputs))
    result = decode_panoptic(cast, means.to(dtype), class_sigma.to(dtype), is_thing, params, stride=stride,
                             output_size=output_size, split_embedding=split)
    check_valid_result(result, *(output_size or (h, w)), is_thing=is_thing)
    # The batch entry point decodes each image the same way.
    batched = HLEOutputs(*(None if t is None else t[None] for t in cast))
    again = decode_batch(batched, means.to(dtype), class_sigma.to(dtype), is_thing, params, stride=stride,
                         output_size=output_size, split_embedding=split)[0]
    assert torch.equal(again.panoptic, result.panoptic) and again.segments_info == result.segments_info
