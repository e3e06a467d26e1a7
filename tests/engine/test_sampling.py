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
