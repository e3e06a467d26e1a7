"""Per-sample mapper, torch ``Dataset`` wrapper and batch collation.

:class:`PanopticMapper` turns one record into tensors: it reads the image and the
panoptic PNG, applies the joint transforms of :mod:`hle.data.transforms`
(max-side resize, random scale, crop with the paper's "crop around thing
classes" (Sec. 4.2), flip, photometric jitter, normalisation) and builds
:class:`~hle.core.types.PanopticTargets` with :func:`hle.data.targets.panoptic_targets`.
Randomness is a fresh generator per sample seeded by ``(seed, epoch, index)``, so
the same sample of the same epoch gets the same augmentation in any worker, in
any order, after a resume.
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hle.core.kernels import IGNORE_LABEL
from hle.core.types import PanopticTargets
from hle.data.metadata import Metadata
from hle.io import read_image, read_panoptic
from hle.data.targets import panoptic_targets, segment_lookup, segments_in_map
from hle.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    choose_crop,
    color_jitter,
    hflip_pair,
    max_side_size,
    normalize,
    resize_crop_pair,
    resize_pair,
    scaled_size,
)


class PanopticMapper:
    """Record -> ``dict(image, targets, ...)`` for training or evaluation.

    Args:
        metadata: categories of the dataset (dataset id -> train id, things).
        train: apply the random transforms (scale, crop, flip, jitter); when false
            only the max-side resize and normalisation run.
        min_scale, max_scale: random scale factor range (uniform).
        crop_size: ``(h, w)`` training crop (padded with void when the scaled image
            is smaller), or ``None`` for no crop.
        crop_around_things: centre the crop on a random pixel of a random non-crowd
            thing instance with probability ``thing_crop_prob`` (paper, Sec. 4.2).
        thing_crop_prob: that probability.
        flip: random horizontal flip with probability 0.5.
        jitter: random brightness / contrast / saturation: ``True`` for strength 0.3,
            a float for another strength (each factor uniform in ``[1 - s, 1 + s]``),
            ``False`` / ``0`` for none.
        max_side: shrink so the longer side is at most this before anything else
            (COCO 640, Vistas 2048 in the paper); ``None`` keeps the size.
        mean, std: RGB normalisation on the 0-1 scale.
        seed: base seed of the per-sample generators.
        return_panoptic: add the transformed id map and its ``segments_info`` to the
            output (default: when ``train`` is false, for evaluation).
    """

    def __init__(
        self,
        metadata: Metadata,
        *,
        train: bool,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        crop_size: tuple[int, int] | None = None,
        crop_around_things: bool = True,
        thing_crop_prob: float = 0.5,
        flip: bool = True,
        jitter: bool | float = True,
        max_side: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        return_panoptic: bool | None = None,
    ) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"PanopticMapper: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if crop_size is not None:
            if len(crop_size) != 2 or min(crop_size) <= 0:
                raise ValueError(f"PanopticMapper: crop_size must be (h, w) positive or None, got {crop_size!r}")
            crop_size = (int(crop_size[0]), int(crop_size[1]))
        if max_side is not None and max_side <= 0:
            raise ValueError(f"PanopticMapper: max_side must be positive or None, got {max_side}")
        if not 0.0 <= thing_crop_prob <= 1.0:
            raise ValueError(f"PanopticMapper: thing_crop_prob must be in [0, 1], got {thing_crop_prob}")
        strength = 0.3 if jitter is True else float(jitter)
        if not 0.0 <= strength < 1.0:
            raise ValueError(f"PanopticMapper: jitter must be a bool or a strength in [0, 1), got {jitter!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"PanopticMapper: mean/std must be 3 values (std > 0), got {mean!r}, {std!r}")
        self.metadata = metadata
        self.train = train
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.crop_size = crop_size
        self.crop_around_things = crop_around_things
        self.thing_crop_prob = float(thing_crop_prob)
        self.flip = flip
        self.jitter = strength
        self.max_side = max_side
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.epoch = 0
        self.return_panoptic = (not train) if return_panoptic is None else return_panoptic

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch part of the per-sample seed (call before each epoch)."""
        self.epoch = int(epoch)

    def rng(self, record: dict[str, Any], index: int | None) -> np.random.Generator:
        """The generator of one sample: seeded by ``(seed, epoch, index)``.

        Without an index the image id stands in (a stable CRC32, not Python's salted hash).
        """
        key = int(index) if index is not None else (1 << 40) + zlib.crc32(str(record["image_id"]).encode())
        return np.random.default_rng([self.seed, self.epoch, key])

    def _thing_center(self, panoptic: torch.Tensor, segments: Sequence[dict[str, Any]], rng: np.random.Generator) -> tuple[float, float] | None:
        thing_classes = set(self.metadata.thing_train_ids)
        thing_ids = [
            int(s["id"])
            for s in segments
            if not s.get("iscrowd", 0) and self.metadata.train_id(s["category_id"]) in thing_classes
        ]
        if not thing_ids:
            return None
        row = segment_lookup(panoptic, thing_ids)
        counts = torch.bincount(row.reshape(-1) + 1, minlength=len(thing_ids) + 1)[1:]
        candidates = torch.nonzero(counts).flatten().tolist()
        if not candidates:
            return None
        k = candidates[int(rng.integers(len(candidates)))]  # a random instance, whatever its size
        pixels = torch.nonzero(row == k)
        r, c = pixels[int(rng.integers(len(pixels)))].tolist()
        return float(r), float(c)

    def __call__(self, record: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """Map one record.

        Args:
            record: a panoptic record (``file_name, pan_seg_file_name, segments_info, image_id``).
            index: the record's position in its dataset (seeds the augmentation).

        Returns:
            dict with ``image`` ``[3, H, W]`` float32 normalised, ``targets``
            (:class:`PanopticTargets`, each ``[H, W]``), ``image_id``, ``file_name``,
            ``height``/``width`` (of the original image), and with ``return_panoptic``
            also ``panoptic`` (``[H, W]`` int64 transformed id map) and
            ``segments_info`` (segments present in it, area/bbox recomputed).
        """
        rng = self.rng(record, index)
        image_np = read_image(record["file_name"])
        pan = torch.from_numpy(read_panoptic(record["pan_seg_file_name"]))
        if image_np.shape[:2] != tuple(pan.shape):
            raise ValueError(
                f"image {record['file_name']} is {image_np.shape[0]}x{image_np.shape[1]} but panoptic PNG "
                f"{record['pan_seg_file_name']} is {pan.shape[0]}x{pan.shape[1]}; expected the same size"
            )
        image = torch.from_numpy(np.ascontiguousarray(image_np)).permute(2, 0, 1).float().div_(255.0)
        segments = record["segments_info"]
        h, w = pan.shape
        # The max-side size is the reference the random scale applies to; both are folded
        # into one resize so the image is interpolated once.
        base_h, base_w = max_side_size(h, w, self.max_side) if self.max_side is not None else (h, w)
        valid: torch.Tensor | None = None
        if not self.train:
            image, pan = resize_pair(image, pan, base_h, base_w)
        else:
            scale = rng.uniform(self.min_scale, self.max_scale)
            src_h, src_w = h, w
            out_h, out_w = scaled_size(base_h, base_w, scale)
            if self.crop_size is None:
                image, pan = resize_pair(image, pan, out_h, out_w)
            else:
                center = None
                if self.crop_around_things and rng.random() < self.thing_crop_prob:
                    center = self._thing_center(pan, segments, rng)
                    if center is not None:  # source pixel -> its centre in the scaled image
                        center = ((center[0] + 0.5) * out_h / src_h - 0.5, (center[1] + 0.5) * out_w / src_w - 0.5)
                top, left = choose_crop(out_h, out_w, *self.crop_size, rng, center=center)
                # Scale and crop in one step: an enlarged full image is never built.
                image, pan, valid = resize_crop_pair(image, pan, out_h, out_w, top, left, *self.crop_size)
            if self.flip and rng.random() < 0.5:
                image, pan = hflip_pair(image, pan)
                if valid is not None:
                    valid = valid.flip(-1)
            if self.jitter > 0:
                image = color_jitter(image, rng, brightness=self.jitter, contrast=self.jitter, saturation=self.jitter)
        image = normalize(image, self.mean, self.std)
        if valid is not None:
            image = image * valid  # padding becomes the mean colour (0 after normalisation)
        out: dict[str, Any] = {
            "image": image.contiguous(),
            "targets": panoptic_targets(pan, segments, self.metadata),
            "image_id": record["image_id"],
            "file_name": record["file_name"],
            "height": int(h),
            "width": int(w),
        }
        if self.return_panoptic:
            out["panoptic"] = pan
            out["segments_info"] = segments_in_map(pan, segments)
        return out


class PanopticDataset(Dataset):
    """A list of records mapped on access: ``dataset[i] == mapper(records[i], index=i)``.

    Call :meth:`set_epoch` before each epoch (and use non-persistent DataLoader
    workers, which copy the dataset at every epoch) so augmentation changes per
    epoch yet is reproducible.
    """

    def __init__(self, records: Sequence[dict[str, Any]], mapper: PanopticMapper) -> None:
        self.records = list(records)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.mapper(self.records[index], index=index)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the mapper's per-sample seeds."""
        self.mapper.set_epoch(epoch)


def collate(
    batch: Sequence[dict[str, Any]], size_divisibility: int = 1
) -> tuple[torch.Tensor, PanopticTargets, list[dict[str, Any]]]:
    """Stack mapped samples, padding to a common size.

    Args:
        batch: outputs of :class:`PanopticMapper`.
        size_divisibility: pad height and width up to a multiple of this (use
            ``functools.partial`` to set it for a DataLoader).

    Returns:
        ``(images [B, 3, H, W], PanopticTargets [B, H, W], extras)``; padding is 0
        in the images and void (semantic 255, ignore true) in the targets; ``extras``
        holds every other key of each sample.
    """
    if not batch:
        raise ValueError("collate: got an empty batch")
    if size_divisibility < 1:
        raise ValueError(f"collate: size_divisibility must be >= 1, got {size_divisibility}")
    hmax = max(int(s["image"].shape[-2]) for s in batch)
    wmax = max(int(s["image"].shape[-1]) for s in batch)
    hmax = -(-hmax // size_divisibility) * size_divisibility
    wmax = -(-wmax // size_divisibility) * size_divisibility

    def pad(x: torch.Tensor, value: float | bool) -> torch.Tensor:
        ph, pw = hmax - x.shape[-2], wmax - x.shape[-1]
        if ph == 0 and pw == 0:
            return x
        if x.dtype == torch.bool:
            return F.pad(x.to(torch.uint8), (0, pw, 0, ph), value=int(value)).bool()
        return F.pad(x, (0, pw, 0, ph), value=value)

    images = torch.stack([pad(s["image"], 0.0) for s in batch])
    fills = {"semantic": IGNORE_LABEL, "instance": 0, "thing": False, "ignore": True, "crowd": False}
    fields = {
        name: torch.stack([pad(getattr(s["targets"], name), fills[name]) for s in batch])
        for name in PanopticTargets._fields
    }
    extras = [{k: v for k, v in s.items() if k not in ("image", "targets")} for s in batch]
    return images, PanopticTargets(**fields), extras
