"""Metadata: contiguous train ids, ignore handling, derived views, checks."""
from __future__ import annotations

import pytest
import torch

from hle.data.metadata import Metadata

CATS = [
    {"id": 7, "name": "road", "isthing": 0, "color": [1, 2, 3]},
    {"id": 2, "name": "person", "isthing": 1, "color": [4, 5, 6]},
    {"id": 0, "name": "unlabeled", "isthing": 0, "ignore": True},
    {"id": 40, "name": "car", "isthing": True},
]


def test_train_ids_follow_list_order_and_skip_ignored():
    md = Metadata("toy", CATS)
    assert md.id_to_train_id == {7: 0, 2: 1, 0: 255, 40: 2}
    assert md.train_id_to_id == [7, 2, 40]
    assert md.num_classes == 3
    assert md.is_thing.tolist() == [False, True, True] and md.is_thing.dtype == torch.bool
    assert md.thing_train_ids == [1, 2] and md.stuff_train_ids == [0]
    assert md.class_names == ["road", "person", "car"]
    assert md.colors[:2] == [(1, 2, 3), (4, 5, 6)] and len(md.colors[2]) == 3
    assert md.train_id(12345) == 255  # unknown dataset id -> ignore
    table = md.lookup_table()
    assert table[7] == 0 and table[40] == 2 and table[0] == 255 and table[3] == 255


def test_round_trip_through_dict():
    md = Metadata("toy", CATS)
    again = Metadata.from_dict(md.to_dict())
    assert again.id_to_train_id == md.id_to_train_id and again.class_names == md.class_names


@pytest.mark.parametrize(
    "cats, match",
    [
        ([], "non-empty"),
        ([{"id": 1, "name": "a"}], "lacks keys"),
        ([{"id": 1, "name": "a", "isthing": 0}, {"id": 1, "name": "b", "isthing": 0}], "duplicate"),
        ([{"id": 1, "name": "a", "isthing": 0, "ignore": True}], "ignore"),
    ],
)
def test_rejects_bad_categories(cats, match):
    with pytest.raises(ValueError, match=match):
        Metadata("bad", cats)
