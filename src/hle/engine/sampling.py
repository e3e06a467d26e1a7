"""Data order that can be resumed exactly, for one process or many.

This module owns the order in which training samples are drawn and the random seed
each sample's augmentation gets. :class:`ResumableSampler` wraps
``torch.utils.data.DistributedSampler`` (per-epoch shuffled permutation, one slice per
process) and can start part-way into an epoch, so a resumed run sees the very batches
the interrupted run would have seen next. :class:`SeededDataset` seeds ``random``,
NumPy and torch from ``(seed, epoch, index)`` before it calls the wrapped dataset,
making augmentations independent of worker processes, batch boundaries and restarts;
the caller's global random state is restored afterwards. A dataset with a
``set_epoch`` method (``hle.data.PanopticDataset``, whose mapper seeds a private
generator by ``(seed, epoch, index)``) is told the epoch of each item. A dataset
smaller than one batch is presented ``repeats`` times per epoch (sampling with
replacement, each copy with its own augmentation seed).
"""
from __future__ import annotations

import itertools
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed", "repeats_for"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` (SplitMix64-style mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    return x & (2**63 - 1)


class ResumableSampler(Sampler):
    """``DistributedSampler`` order with a start position; yields ``(index, epoch)``.

    Args:
        length: number of samples in the dataset.
        num_replicas, rank: the process slice (1 and 0 for a single process).
        seed: shuffling seed (same on every process).
        shuffle: shuffle each epoch.
        drop_last: drop the tail so that every process gets the same count.
    """

    def __init__(
        self,
        length: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if length <= 0:
            raise ValueError(f"ResumableSampler: dataset is empty (length {length})")
        self._inner = DistributedSampler(
            range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select ``epoch`` and skip its first ``start`` samples of this process."""
        self.epoch = int(epoch)
        self.start = int(start)
        self._inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in itertools.islice(iter(self._inner), self.start, None):
            yield (int(index), self.epoch)

    def __len__(self) -> int:
        return max(len(self._inner) - self.start, 0)

    @property
    def samples_per_epoch(self) -> int:
        """Samples this process sees in a whole epoch."""
        return len(self._inner)


def repeats_for(length: int, batch_size: int, num_replicas: int = 1) -> int:
    """How many copies of a ``length``-item dataset make one batch on every process."""
    if length <= 0:
        raise ValueError(f"repeats_for: dataset is empty (length {length})")
    return max(1, -(-batch_size * num_replicas // length))


class SeededDataset(Dataset):
    """Wrap a map-style dataset so item ``(index, epoch)`` is drawn with a fixed seed.

    With ``repeats = r > 1`` the wrapper has ``r * N`` items: item ``k * N + i`` of
    epoch ``e`` is item ``i`` of the wrapped dataset seeded as its epoch ``e * r + k``,
    so every copy gets its own augmentation and the order stays resumable. ``r = 1``
    is the wrapped dataset unchanged.

    Args:
        dataset: the wrapped dataset (``dataset[index]`` -> sample).
        seed: run seed.
        repeats: copies per epoch (see :func:`repeats_for`).
    """

    def __init__(self, dataset: Any, seed: int = 0, repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"SeededDataset: repeats must be >= 1, got {repeats}")
        self.dataset = dataset
        self.seed = int(seed)
        self.repeats = int(repeats)

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            index, epoch = key
        else:
            index, epoch = int(key), 0
        if self.repeats > 1:
            copy, index = divmod(int(index), len(self.dataset))
            epoch = int(epoch) * self.repeats + copy
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        s = sample_seed(self.seed, epoch, index)
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
