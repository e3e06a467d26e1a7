"""PNG id encoding, PNG flavours and atomic JSON writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hle.evaluation.io import atomic_write_json, default_folder, id2rgb, read_panoptic_png, rgb2id


def test_id_colour_encoding_by_hand_and_round_trip(tmp_path):
    # id = R + 256 G + 256^2 B (panopticapi): 1 -> (1, 0, 0), 256 -> (0, 1, 0), 65536 -> (0, 0, 1)
    ids = np.array([[0, 1, 256], [65536, 256**3 - 1, 70000]])
    rgb = id2rgb(ids)
    assert rgb[0, 1].tolist() == [1, 0, 0] and rgb[0, 2].tolist() == [0, 1, 0]
    assert rgb[1, 0].tolist() == [0, 0, 1] and rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[1, 2].tolist() == [70000 % 256, 70000 // 256 % 256, 1]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), ids)
    with pytest.raises(ValueError, match="ids must lie in"):
        id2rgb(np.array([[256**3]]))


def test_single_channel_and_palette_pngs(tmp_path):
    ids = np.array([[0, 3], [300, 7]], dtype=np.uint16)
    Image.fromarray(ids).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "g.png"), ids)
    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 5, 1, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert read_panoptic_png(tmp_path / "p.png").tolist() == [[0, 5 + 256]]
    with pytest.raises(FileNotFoundError, match="panoptic PNG not found"):
        read_panoptic_png(tmp_path / "none.png")


def test_atomic_json_and_default_folder(tmp_path):
    atomic_write_json(tmp_path / "sub" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "sub" / "x.json", {"a": object()})
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1}  # old file intact
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]
    assert default_folder("/d/panoptic_val.json").as_posix() == "/d/panoptic_val"
