"""COCO panoptic PNG encoding, PNG flavours, file errors and atomic JSON writes (hle.io)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hle.io import default_folder, id2rgb, read_image, read_json, read_panoptic, rgb2id, write_json_atomic


def test_id_colour_encoding_by_hand_and_round_trip(tmp_path):
    # id = R + 256 G + 256^2 B (panopticapi): 1 -> (1, 0, 0), 256 -> (0, 1, 0), 65536 -> (0, 0, 1)
    ids = np.array([[0, 1, 256], [65536, 256**3 - 1, 70000]])
    rgb = id2rgb(ids)
    assert rgb[0, 1].tolist() == [1, 0, 0] and rgb[0, 2].tolist() == [0, 1, 0]
    assert rgb[1, 0].tolist() == [0, 0, 1] and rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[1, 2].tolist() == [70000 % 256, 70000 // 256 % 256, 1]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_panoptic(tmp_path / "a.png"), ids)
    with pytest.raises(ValueError, match="ids must lie in"):
        id2rgb(np.array([[256**3]]))


def test_single_channel_and_palette_pngs(tmp_path):
    ids = np.array([[0, 3], [300, 7]], dtype=np.uint16)
    Image.fromarray(ids).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_panoptic(tmp_path / "g.png"), ids)
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 5, 1, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert read_panoptic(tmp_path / "p.png").tolist() == [[0, 5 + 256]]


def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(OSError, match="bad.png"):
        read_image(bad)
    with pytest.raises(OSError, match="bad.png"):
        read_panoptic(bad)
    with pytest.raises(FileNotFoundError, match="panoptic PNG not found: .*nope.png"):
        read_panoptic(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="index JSON .*broken.json is not valid JSON"):
        read_json(tmp_path / "broken.json", "index JSON")
    with pytest.raises(FileNotFoundError, match="index JSON not found: .*none.json"):
        read_json(tmp_path / "none.json", "index JSON")


def test_atomic_json_and_default_folder(tmp_path):
    write_json_atomic(tmp_path / "sub" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "sub" / "x.json", {"a": object()})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1}  # old file intact
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]
    assert default_folder("/d/panoptic_val.json").as_posix() == "/d/panoptic_val"
