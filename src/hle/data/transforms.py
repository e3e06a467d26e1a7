"""Joint geometric and photometric transforms of an image and its panoptic map.

Plain functions over tensors: the image is ``[3, H, W]`` float, the label map a
``[H, W]`` int64 segment-id map. Geometry (resize, crop, flip) is applied to both
with the same parameters, bilinear for the image and nearest for labels, using the
same pixel-centre convention so image and labels stay aligned. Randomness comes
only from the ``numpy.random.Generator`` passed in, so a caller that seeds it per
sample reproduces the augmentation exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

#: ImageNet statistics (RGB, 0-1 scale), the usual normalisation for pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def max_side_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Size after shrinking so the longer side is at most ``max_side`` (never enlarges)."""
    if max_side <= 0:
        raise ValueError(f"max_side_size: max_side must be positive, got {max_side}")
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_labels(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of an integer ``[H, W]`` map (pixel centres, like bilinear with align_corners=False).

    Returns:
        ``[height, width]`` map of the same dtype; every value comes from the input.
    """
    h, w = labels.shape[-2:]
    if (h, w) == (height, width):
        return labels
    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * (h / height)).floor().long().clamp_(0, h - 1)
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * (w / width)).floor().long().clamp_(0, w - 1)
    return labels[..., rows[:, None], cols[None, :]]


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of a float ``[3, H, W]`` image (antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    shrink = height < image.shape[-2] or width < image.shape[-1]
    out = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0]


def resize_pair(
    image: torch.Tensor, labels: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize ``[3, H, W]`` image and ``[H, W]`` labels to ``height x width`` together."""
    return resize_image(image, height, width), resize_labels(labels, height, width)


def _source_positions(start: int, count: int, in_size: int, out_size: int) -> torch.Tensor:
    """Source coordinates of output pixels ``start .. start+count-1`` of a resize ``in_size -> out_size``.

    Pixel-centre convention of ``F.interpolate(..., align_corners=False)``:
    ``src = (dst + 0.5) * in / out - 0.5``.
    """
    dst = torch.arange(start, start + count, dtype=torch.float64)
    return (dst + 0.5) * (in_size / out_size) - 0.5


def _bilinear_at(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``[C, H, W]`` at the grid ``rows x cols`` of source positions -> ``[C, n_rows, n_cols]``.

    ``grid_sample`` with border padding clamps positions into the image exactly as
    ``F.interpolate`` does at the edges (up to float32 rounding of the positions).
    """
    h, w = image.shape[-2:]
    gy = ((2.0 * rows + 1.0) / h - 1.0).to(image.dtype)
    gx = ((2.0 * cols + 1.0) / w - 1.0).to(image.dtype)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # [1, n_rows, n_cols, (x, y)]
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def resize_crop_pair(
    image: torch.Tensor,
    labels: torch.Tensor,
    height: int,
    width: int,
    top: int,
    left: int,
    crop_h: int,
    crop_w: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``crop_pair(*resize_pair(image, labels, height, width), top, left, crop_h, crop_w)`` without the big image.

    When enlarging (the expensive case: a 2x Cityscapes image is 2048x4096), only the
    pixels of the crop window are interpolated, at the very sample positions a full
    resize would use, so the result equals resize-then-crop. When shrinking along
    either side, the full (smaller, antialiased) resize is done and then cropped.

    Args:
        image: ``[3, H, W]`` float image.
        labels: ``[H, W]`` int64 map.
        height, width: size of the (virtual) resized image.
        top, left, crop_h, crop_w: the crop window in resized coordinates (may extend outside: padded).

    Returns:
        ``(image [3, crop_h, crop_w], labels [crop_h, crop_w], valid [crop_h, crop_w] bool)`` as :func:`crop_pair`.
    """
    h, w = labels.shape
    if height < h or width < w:
        return crop_pair(*resize_pair(image, labels, height, width), top, left, crop_h, crop_w)
    out_img = image.new_zeros((image.shape[0], crop_h, crop_w))
    out_lab = labels.new_zeros((crop_h, crop_w))
    valid = torch.zeros((crop_h, crop_w), dtype=torch.bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + crop_h, height), min(left + crop_w, width)
    if y1 <= y0 or x1 <= x0:
        return out_img, out_lab, valid
    rows = _source_positions(y0, y1 - y0, h, height)
    cols = _source_positions(x0, x1 - x0, w, width)
    patch = _bilinear_at(image, rows, cols)
    # Nearest for labels: the input pixel containing the output pixel's centre (as resize_labels).
    r = (rows + 0.5).floor().long().clamp_(0, h - 1)
    c = (cols + 0.5).floor().long().clamp_(0, w - 1)
    out_img[:, y0 - top : y1 - top, x0 - left : x1 - left] = patch
    out_lab[y0 - top : y1 - top, x0 - left : x1 - left] = labels[r[:, None], c[None, :]]
    valid[y0 - top : y1 - top, x0 - left : x1 - left] = True
    return out_img, out_lab, valid


def choose_crop(
    height: int,
    width: int,
    crop_h: int,
    crop_w: int,
    rng: np.random.Generator,
    center: tuple[float, float] | None = None,
) -> tuple[int, int]:
    """Top-left corner of a ``crop_h x crop_w`` window on a ``height x width`` image.

    Uniform over valid positions, or centred on ``center`` (row, col) and clamped
    inside the image. When the crop is larger than the image along a side, the
    corner is ``<= 0`` there (the crop pads; the image sits at a random offset).
    """
    def axis(size: int, crop: int, c: float | None) -> int:
        lo, hi = min(0, size - crop), max(0, size - crop)
        if c is None:
            return int(rng.integers(lo, hi + 1))
        return int(min(max(round(c - crop / 2), lo), hi))

    return (
        axis(height, crop_h, None if center is None else center[0]),
        axis(width, crop_w, None if center is None else center[1]),
    )


def crop_pair(
    image: torch.Tensor, labels: torch.Tensor, top: int, left: int, crop_h: int, crop_w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop ``[3, H, W]`` image and ``[H, W]`` labels to ``crop_h x crop_w`` at (top, left), padding outside.

    Returns:
        ``(image [3, crop_h, crop_w], labels [crop_h, crop_w], valid [crop_h, crop_w] bool)``;
        padded pixels are 0 in the image, 0 (void) in the labels and false in ``valid``.
    """
    h, w = labels.shape
    out_img = image.new_zeros((image.shape[0], crop_h, crop_w))
    out_lab = labels.new_zeros((crop_h, crop_w))
    valid = torch.zeros((crop_h, crop_w), dtype=torch.bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + crop_h, h), min(left + crop_w, w)
    if y1 > y0 and x1 > x0:
        out_img[:, y0 - top : y1 - top, x0 - left : x1 - left] = image[:, y0:y1, x0:x1]
        out_lab[y0 - top : y1 - top, x0 - left : x1 - left] = labels[y0:y1, x0:x1]
        valid[y0 - top : y1 - top, x0 - left : x1 - left] = True
    return out_img, out_lab, valid


def hflip_pair(image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror ``[..., H, W]`` image and labels left-right."""
    return image.flip(-1), labels.flip(-1)


def color_jitter(
    image: torch.Tensor,
    rng: np.random.Generator,
    *,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
) -> torch.Tensor:
    """Random brightness, contrast and saturation, in random order.

    Args:
        image: ``[3, H, W]`` float RGB in ``[0, 1]``.
        rng: source of the factors (each uniform in ``[1 - s, 1 + s]``).

    Returns:
        ``[3, H, W]`` jittered image clipped to ``[0, 1]``.
    """
    factors = {
        "brightness": rng.uniform(1 - brightness, 1 + brightness),
        "contrast": rng.uniform(1 - contrast, 1 + contrast),
        "saturation": rng.uniform(1 - saturation, 1 + saturation),
    }
    out = image
    for op in rng.permutation(list(factors)):
        f = float(factors[op])
        if op == "brightness":
            out = out * f
        else:
            grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2])[None]
            ref = grey.mean() if op == "contrast" else grey
            out = ref + f * (out - ref)
        out = out.clamp(0.0, 1.0)
    return out


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(image - mean) / std`` per channel of a ``[3, H, W]`` float image in ``[0, 1]``."""
    m = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``round(size * scale)``, at least one pixel."""
    return max(1, int(math.floor(height * scale + 0.5))), max(1, int(math.floor(width * scale + 0.5)))
