"""Targets from a hand-built panoptic map, checked against hand-written expected arrays."""
from __future__ import annotations

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from hle.data.metadata import Metadata
from hle.data.targets import panoptic_targets, segments_in_map

I = 255  # noqa: E741  (ignore label, short for the tables below)

EXPECTED_SEMANTIC = [
    [0, 0, 0, 0, I, I, I, I],
    [0, 1, 1, 0, I, I, I, I],
    [0, 1, 1, 1, 1, 0, 0, I],
    [0, 0, 0, 1, 1, 0, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
]
EXPECTED_INSTANCE = [
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 0, 0, 0, 0, 0],
    [0, 1, 1, 2, 2, 0, 0, 0],
    [0, 0, 0, 2, 2, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
]
EXPECTED_CROWD = [
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
]


def _metadata(categories):
    cats = [dict(c, ignore=c["name"] == "unlabeled") for c in categories]
    return Metadata("scene", cats)


def test_targets_match_hand_computed(scene):
    ids, segments, categories = scene
    t = panoptic_targets(torch.from_numpy(ids), segments, _metadata(categories))
    assert t.semantic.tolist() == EXPECTED_SEMANTIC
    assert t.instance.tolist() == EXPECTED_INSTANCE
    assert t.crowd.int().tolist() == EXPECTED_CROWD
    sem = np.array(EXPECTED_SEMANTIC)
    assert t.ignore.numpy().tolist() == (sem == I).tolist()
    assert t.thing.numpy().tolist() == (sem == 1).tolist()  # car pixels, crowd included
    for x in t:
        assert x.shape == (6, 8)
    assert t.semantic.dtype == torch.int64 and t.instance.dtype == torch.int64
    assert t.thing.dtype == t.ignore.dtype == t.crowd.dtype == torch.bool


def test_instance_ids_are_contiguous_over_present_segments(scene):
    ids, segments, categories = scene
    ids = ids.copy()
    ids[ids == 20] = 10  # first car cropped away: the second becomes instance 1
    t = panoptic_targets(torch.from_numpy(ids), segments, _metadata(categories))
    assert sorted(torch.unique(t.instance).tolist()) == [0, 1]
    assert (t.instance == 1).sum().item() == (ids == 21).sum()


def test_all_void_map(scene):
    _, segments, categories = scene
    t = panoptic_targets(torch.zeros(3, 4, dtype=torch.int64), segments, _metadata(categories))
    assert t.ignore.all() and (t.semantic == I).all() and (t.instance == 0).all()


def test_rejects_wrong_rank(scene):
    _, segments, categories = scene
    with pytest.raises(ValueError, match="panoptic must be"):
        panoptic_targets(torch.zeros(1, 3, 4, dtype=torch.int64), segments, _metadata(categories))


def test_segments_in_map_recomputes_area_and_bbox(scene):
    ids, segments, _ = scene
    crop = torch.from_numpy(ids[1:4, 1:5].copy())  # rows 1-3, cols 1-4
    out = {s["id"]: s for s in segments_in_map(crop, segments)}
    assert set(out) == {10, 20, 21, 30}
    assert out[20]["area"] == 4 and out[20]["bbox"] == [0, 0, 2, 2]
    assert out[21]["area"] == 4 and out[21]["bbox"] == [2, 1, 2, 2]
    assert out[30]["area"] == 1 and out[30]["bbox"] == [3, 0, 1, 1]
    assert out[10]["area"] == 3


def test_segment_lookup_against_loop():
    from hle.data.targets import segment_lookup

    pan = torch.tensor([[5, 9, 0], [7, 5, 3]])
    ids = [9, 5, 7]
    expected = [[ids.index(v) if v in ids else -1 for v in row] for row in pan.tolist()]
    assert segment_lookup(pan, ids).tolist() == expected
    assert (segment_lookup(pan, []) == -1).all()


@settings(max_examples=40, deadline=None)
@given(
    ids=hnp.arrays(np.int64, (5, 7), elements=st.integers(0, 6)),
    crowd_flags=st.lists(st.booleans(), min_size=6, max_size=6),
    cats=st.lists(st.sampled_from([1, 3, 9, 42]), min_size=6, max_size=6),
)
def test_target_invariants(ids, crowd_flags, cats):
    # Random maps and segment tables: the flags must agree with each other pixel by pixel.
    from datafixtures import SCENE_CATEGORIES

    segments = [{"id": k + 1, "category_id": c, "iscrowd": int(f)} for k, (c, f) in enumerate(zip(cats, crowd_flags))]
    t = panoptic_targets(torch.from_numpy(ids), segments, _metadata(SCENE_CATEGORIES))
    assert torch.equal(t.ignore, t.semantic == I)
    assert not (t.instance > 0)[t.ignore | t.crowd | ~t.thing].any()
    assert not (t.thing & t.ignore).any() and not (t.crowd & ~t.thing).any()
    assert torch.equal(t.thing, t.semantic == 1)  # car is the only thing class
    # one instance id per non-crowd car segment present, numbered 1..L
    cars = {k + 1 for k, (c, f) in enumerate(zip(cats, crowd_flags)) if c == 3 and not f} & set(np.unique(ids).tolist())
    assert sorted(set(t.instance.unique().tolist()) - {0}) == list(range(1, len(cars) + 1))
