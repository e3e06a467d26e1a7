"""Fixtures of the data tests (helpers live in ``datafixtures``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datafixtures import SCENE, SCENE_CATEGORIES, scene_segments, write_coco_layout


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco_layout(tmp_path / "coco")


@pytest.fixture
def scene() -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    return SCENE.copy(), scene_segments(), [dict(c) for c in SCENE_CATEGORIES]
