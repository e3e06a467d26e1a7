"""Joint transforms against brute-force references written from their definitions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hle.data.transforms import (
    choose_crop,
    color_jitter,
    crop_pair,
    hflip_pair,
    max_side_size,
    normalize,
    resize_crop_pair,
    resize_labels,
    resize_pair,
)


def _nearest_reference(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Output pixel (i, j) takes the input pixel containing its centre, by loops."""
    h, w = labels.shape
    out = np.zeros((height, width), labels.dtype)
    for i in range(height):
        for j in range(width):
            y = min(int(np.floor((i + 0.5) * h / height)), h - 1)
            x = min(int(np.floor((j + 0.5) * w / width)), w - 1)
            out[i, j] = labels[y, x]
    return out


@pytest.mark.parametrize("size", [(7, 13), (20, 9), (5, 5), (31, 40)])
def test_resize_labels_is_nearest_by_pixel_centre(size):
    labels = np.random.default_rng(0).integers(0, 2**24, size=(11, 17))
    out = resize_labels(torch.from_numpy(labels), *size)
    assert out.dtype == torch.int64
    assert out.numpy().tolist() == _nearest_reference(labels, *size).tolist()


def test_resize_pair_integer_upscale_keeps_alignment():
    # Bilinear with align_corners=False and nearest share pixel centres: on a 2x upscale of
    # a constant-patch image, pixels inside a patch carry that patch's colour and label.
    labels = torch.tensor([[1, 2], [3, 4]])
    image = labels[None].float().repeat(3, 1, 1) * 10
    img, lab = resize_pair(image, labels, 8, 8)
    interior = torch.zeros(8, 8, dtype=torch.bool)
    interior[[0, 1, 6, 7]] = True  # sample points (i + 0.5) / 4 - 0.5 fall on one input pixel
    interior = interior & interior.T
    assert torch.allclose(img[0][interior], lab[interior].float() * 10)


def test_max_side_size():
    assert max_side_size(100, 300, 150) == (50, 150)
    assert max_side_size(480, 640, 640) == (480, 640)
    assert max_side_size(50, 60, 640) == (50, 60)  # never enlarges
    with pytest.raises(ValueError, match="max_side"):
        max_side_size(10, 10, 0)


def test_choose_crop_bounds_and_centre():
    rng = np.random.default_rng(0)
    for _ in range(50):
        top, left = choose_crop(30, 40, 10, 15, rng)
        assert 0 <= top <= 20 and 0 <= left <= 25
    assert choose_crop(30, 40, 10, 10, rng, center=(15.0, 20.0)) == (10, 15)
    assert choose_crop(30, 40, 10, 10, rng, center=(0.0, 39.0)) == (0, 30)  # clamped inside
    top, left = choose_crop(5, 5, 10, 10, rng)  # crop larger than the image: pads
    assert -5 <= top <= 0 and -5 <= left <= 0


def test_crop_pair_pads_with_void():
    labels = torch.arange(12).view(3, 4) + 1
    image = labels[None].float().repeat(3, 1, 1)
    img, lab, valid = crop_pair(image, labels, -1, 2, 3, 4)
    assert lab.tolist() == [[0, 0, 0, 0], [3, 4, 0, 0], [7, 8, 0, 0]]
    assert valid.tolist() == [[False] * 4, [True, True, False, False], [True, True, False, False]]
    assert torch.equal(img[1], lab.float())


def test_hflip_pair():
    labels = torch.tensor([[1, 2, 3]])
    img, lab = hflip_pair(labels[None].float(), labels)
    assert lab.tolist() == [[3, 2, 1]] and img[0].tolist() == [[3.0, 2.0, 1.0]]


def test_color_jitter_stays_in_range_and_is_seeded():
    image = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    a = color_jitter(image, np.random.default_rng(3))
    b = color_jitter(image, np.random.default_rng(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, image)
    grey = torch.full((3, 4, 4), 0.5)
    # Contrast and saturation leave a uniform grey image unchanged; brightness scales it.
    out = color_jitter(grey, np.random.default_rng(1), brightness=0.0)
    assert torch.allclose(out, grey, atol=1e-6)


def test_normalize():
    out = normalize(torch.ones(3, 2, 2) * 0.5, (0.5, 0.25, 0.0), (1.0, 0.5, 2.0))
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.0, 0.5, 0.25]))


@pytest.mark.parametrize(
    "size, window",
    [
        ((25, 40), (3, 5, 10, 12)),  # enlarge, window inside
        ((33, 51), (-4, 40, 20, 20)),  # enlarge, window sticks out (padding)
        ((11, 17), (0, 0, 11, 17)),  # same size
        ((8, 30), (-2, 3, 12, 9)),  # shrink one side: falls back to full resize
    ],
)
def test_resize_crop_pair_equals_resize_then_crop(size, window):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 11, 17, generator=gen)
    labels = torch.randint(0, 50, (11, 17), generator=gen)
    img_a, lab_a, valid_a = resize_crop_pair(image, labels, *size, *window)
    img_b, lab_b, valid_b = crop_pair(*resize_pair(image, labels, *size), *window)
    assert torch.equal(lab_a, lab_b) and torch.equal(valid_a, valid_b)
    assert torch.allclose(img_a, img_b, atol=1e-4)  # float32 sample positions in grid_sample
