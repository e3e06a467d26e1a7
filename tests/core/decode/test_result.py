"""Tests for hle.core.decode.result: segment statistics and the assembled result."""
from __future__ import annotations

import pytest
import torch

from hle.core.decode import (
    PANOPTIC_DTYPE,
    DecoderParams,
    SemanticAssignment,
    Seeds,
    decode_grid,
    panoptic_result,
    segment_stats,
    stuff_first,
    upsample_ids,
)


@pytest.mark.parametrize(("factor", "out"), [(1, (7, 9)), (2, (14, 18)), (3, (13, 25)), (4, (25, 33))])
def test_segment_stats_equal_counting_the_upsampled_map(factor: int, out: tuple[int, int]) -> None:
    h, w, num_labels = -(-out[0] // factor), -(-out[1] // factor), 6
    label = torch.randint(0, num_labels - 1, (h, w), generator=torch.Generator().manual_seed(factor))  # label 5 absent
    before = label.clone()
    area, bbox = segment_stats(label, num_labels, factor, *out)
    assert torch.equal(label, before)  # scratch space restored
    full = upsample_ids(label, factor, *out)
    for k in range(num_labels):
        ys, xs = torch.nonzero(full == k, as_tuple=True)
        assert int(area[k]) == ys.numel()
        if ys.numel():
            x0, y0 = int(xs.min()), int(ys.min())
            assert bbox[k].tolist() == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    assert int(area[num_labels - 1]) == 0


def test_panoptic_result_orders_ids_maps_classes_and_applies_minimum_areas() -> None:
    # Classes: 0 thing, 1 stuff, 2 stuff, 3 thing -> stuff first: (1, 2, 0, 3), void = 4.
    is_thing = torch.tensor([True, False, False, True])
    order = stuff_first(is_thing)
    # 2x4 decode grid at f = 2 -> 4x8 output. Stuff class 1 (reordered 0) on the left
    # column pair, stuff class 2 (reordered 1) one pixel only, things elsewhere.
    label = torch.tensor([[0, 0, 2, 3], [0, 1, 2, 3]]).reshape(-1)
    thing = label >= 2
    psi_sum = torch.tensor([3 * 0.8, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)  # per decode pixel, before scaling
    semantic = SemanticAssignment(label.clone(), thing, psi_sum, torch.zeros(1, 2, 4))
    candidates = torch.nonzero(thing).squeeze(1)                 # pixels 2, 3, 6, 7
    instance = torch.tensor([1, 0, 1, -1])                       # seed 1 takes 2 and 6, seed 0 takes 3
    seeds = Seeds(torch.tensor([3, 2]), torch.tensor([0.9, 0.7]), torch.zeros(2, 1), torch.zeros(2, 2),
                  torch.ones(2), torch.ones(2))
    grid = decode_grid((2, 4), 1, stride=2.0, output_size=(4, 8))
    params = DecoderParams(min_thing_area=5, min_stuff_area=5)
    result = panoptic_result(semantic, candidates, instance, torch.zeros(4), seeds, order, grid, params)
    # Seed 0 (score 0.9) covers 1 decode pixel = 4 output pixels < 5: void. Seed 1: 8 pixels.
    # Stuff class 2 covers 4 output pixels < 5: void. Stuff class 1: 12 pixels.
    info = [(s["id"], s["category_id"], s["isthing"], s["area"], s["bbox"]) for s in result.segments_info]
    assert info == [(1, 0, True, 8, [4, 0, 2, 4]), (2, 1, False, 12, [0, 0, 4, 4])]
    assert [s["score"] for s in result.segments_info] == pytest.approx([0.7, 2.4 * 4 / 12])
    expected = torch.tensor([[2, 2, 1, 0], [2, 0, 1, 0]], dtype=PANOPTIC_DTYPE)
    assert result.panoptic.dtype == PANOPTIC_DTYPE
    assert torch.equal(result.panoptic, expected.repeat_interleave(2, 0).repeat_interleave(2, 1))
