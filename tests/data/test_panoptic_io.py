"""COCO panoptic RGB <-> id encoding and file reading errors."""
from __future__ import annotations

import numpy as np
import pytest

from hle.data.panoptic_io import id_to_rgb, read_image, read_panoptic, rgb_to_id, segment_area_bbox


def test_encoding_matches_the_coco_definition():
    ids = np.array([[0, 1, 255], [256, 65536, 2**24 - 1]])
    rgb = id_to_rgb(ids)
    # id = R + 256 G + 256^2 B, written out by hand
    assert rgb[0, 2].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [0, 1, 0]
    assert rgb[1, 1].tolist() == [0, 0, 1] and rgb[1, 2].tolist() == [255, 255, 255]
    assert rgb_to_id(rgb).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="2\\*\\*24"):
        id_to_rgb(np.array([[2**24]]))


def test_area_bbox():
    ids = np.zeros((5, 6), np.int64)
    ids[1:3, 2:5] = 7
    assert segment_area_bbox(ids, 7) == (6, [2, 1, 3, 2])
    assert segment_area_bbox(ids, 9) == (0, [0, 0, 0, 0])


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(OSError, match="bad.png"):
        read_image(bad)
    with pytest.raises(OSError, match="bad.png"):
        read_panoptic(bad)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_panoptic(tmp_path / "nope.png")
