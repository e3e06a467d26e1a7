"""Resumable data order and per-sample seeds (hle/engine/sampling.py)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from hle.engine.sampling import ResumableSampler, SeededDataset


def test_order_matches_distributed_sampler_and_resumes_mid_epoch() -> None:
    for rank in (0, 1):
        s = ResumableSampler(11, num_replicas=2, rank=rank, seed=4)
        ref = DistributedSampler(range(11), num_replicas=2, rank=rank, seed=4, shuffle=True)
        for epoch in (0, 3):
            s.set_epoch(epoch)
            ref.set_epoch(epoch)
            full = list(s)
            assert [i for i, _ in full] == list(ref) and all(e == epoch for _, e in full)
            s.set_epoch(epoch, start=4)
            assert list(s) == full[4:] and len(s) == len(full) - 4


class _Draws:
    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_items_get_fixed_seeds_and_leave_global_state_alone() -> None:
    ds = SeededDataset(_Draws(), seed=1)
    a = ds[(2, 0)]
    torch.manual_seed(123)
    expected_next = torch.rand(()).item()
    torch.manual_seed(123)
    b, c = ds[(3, 0)], ds[(2, 0)]
    assert a == c and a != b  # same (index, epoch) -> same draws, whatever came before
    assert ds[(2, 1)] != a  # another epoch -> other draws
    assert torch.rand(()).item() == expected_next  # caller's RNG untouched


class _Recorder:
    """Returns what the per-sample seeding gave it: (index, epoch seen, a draw)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, int, float]:
        return index, self.epoch, float(torch.rand(()))


def test_a_dataset_smaller_than_a_batch_is_repeated_with_distinct_augmentation() -> None:
    from hle.engine.sampling import repeats_for

    assert repeats_for(1, 4) == 4 and repeats_for(3, 4) == 2 and repeats_for(8, 4) == 1 and repeats_for(3, 2, num_replicas=2) == 2
    ds = SeededDataset(_Recorder(1), seed=0, repeats=4)
    assert len(ds) == 4
    items = [ds[(k, 2)] for k in range(4)]
    # every copy is image 0, seen as its own epoch (2 * 4 + copy): different draws
    assert [i for i, _, _ in items] == [0, 0, 0, 0]
    assert [e for _, e, _ in items] == [8, 9, 10, 11]
    assert len({d for _, _, d in items}) == 4
    assert ds[(1, 2)] == items[1]  # and the same again on a resume
    # one copy is the plain dataset: repeats=1 changes nothing
    plain, one = SeededDataset(_Recorder(3), seed=5), SeededDataset(_Recorder(3), seed=5, repeats=1)
    assert [plain[(i, 1)] for i in range(3)] == [one[(i, 1)] for i in range(3)]
