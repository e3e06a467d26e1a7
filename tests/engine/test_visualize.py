"""Pictures of panoptic maps and embeddings (hle/visualize.py), checked against hand values."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hle import visualize as vis


def _unit_embedding(d: int = 5, h: int = 4, w: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(d, h, w, generator=g, dtype=torch.float64), dim=0)


def test_distance_map_equals_the_definition_pixel_by_pixel() -> None:
    e = _unit_embedding()
    target = (2, 3)
    dist = vis.distance_map(e, target)
    for r in range(4):
        for c in range(6):
            expected = 1.0 - float(torch.dot(e[:, r, c], e[:, 2, 3]))
            assert dist[r, c] == pytest.approx(expected, abs=1e-12)
    assert dist[target] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="outside"):
        vis.distance_map(e, (4, 0))


def test_heatmap_marks_the_target_red_and_is_brightest_near_it() -> None:
    e = _unit_embedding()
    img = vis.distance_heatmap(e, (1, 1), marker_radius=0)
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert tuple(img[1, 1]) == (255, 0, 0)


def test_embedding_rgb_first3_is_the_min_max_stretched_dimensions() -> None:
    e = _unit_embedding(d=4)
    rgb = vis.embedding_to_rgb(e, method="first3")
    x = e[:3].numpy()
    lo, hi = x.reshape(3, -1).min(1), x.reshape(3, -1).max(1)
    expected = ((x - lo[:, None, None]) / (hi - lo)[:, None, None] * 255).round().astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(rgb, expected)


def test_embedding_rgb_pca_separates_two_clusters() -> None:
    # Two clusters of unit vectors in D = 8: the first principal component separates them,
    # so the pictures of the two halves differ strongly and each half is uniform.
    a, b = F.normalize(torch.ones(8), dim=0), F.normalize(torch.arange(8.0) - 3.5, dim=0)
    e = torch.cat([a[:, None, None].expand(8, 3, 2), b[:, None, None].expand(8, 3, 2)], dim=2)
    rgb = vis.embedding_to_rgb(e).astype(int)
    left, right = rgb[:, :2].reshape(-1, 3), rgb[:, 2:].reshape(-1, 3)
    assert (left == left[0]).all() and (right == right[0]).all()
    assert np.abs(left[0] - right[0]).max() == 255


def test_colorize_panoptic_and_overlay() -> None:
    pan = np.array([[0, 1, 1], [2, 2, 3]])
    segments = [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 1, "isthing": True},
        {"id": 3, "category_id": 1, "isthing": True},
    ]
    palette = vis.class_palette(2, [[10, 20, 30], [200, 100, 50]])
    img = vis.colorize_panoptic(pan, segments, palette, outline=False)
    assert tuple(img[0, 0]) == (0, 0, 0)  # void is black
    assert tuple(img[0, 1]) == tuple(img[0, 2]) == (10, 20, 30)  # stuff in its class colour
    assert tuple(img[1, 0]) == tuple(img[1, 1])  # one instance, one shade
    assert np.abs(img[1, 0].astype(int) - [200, 100, 50]).max() <= 60  # a shade of its class
    base = np.full((2, 3, 3), 100, dtype=np.uint8)
    mixed = vis.overlay(base, img, alpha=0.5)
    assert tuple(mixed[0, 0]) == (100, 100, 100)  # black = transparent
    assert tuple(mixed[0, 1]) == (55, 60, 65)


def test_files_are_written(tmp_path: Path) -> None:
    img = np.zeros((8, 16, 3), dtype=np.uint8)
    assert vis.save_png(img, tmp_path / "a.png").is_file()
    assert vis.save_panel({"one": img, "two": img}, tmp_path / "panel.png").is_file()
    back = vis.denormalize_image(torch.zeros(3, 2, 2))
    assert tuple(back[0, 0]) == (124, 116, 104)  # ImageNet mean x 255, rounded
