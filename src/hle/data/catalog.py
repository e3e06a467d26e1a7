"""Dataset name -> index loader, as a plain dict (no registry, no import side effects).

Every loader has the signature ``loader(root, split) -> (records, Metadata)``; the
CLI and the configs pick one by name through :data:`DATASETS` / :func:`load_dataset`.
"""
from __future__ import annotations

import os
from typing import Callable

from hle.data.datasets import Record, cityscapes_panoptic, coco_panoptic, custom_panoptic, vistas_panoptic
from hle.data.metadata import Metadata
from hle.data.synthetic import synthetic

Loader = Callable[[str | os.PathLike[str], str], tuple[list[Record], Metadata]]

#: name -> ``loader(root, split)``.
DATASETS: dict[str, Loader] = {
    "coco": coco_panoptic,
    "cityscapes": cityscapes_panoptic,
    "vistas": vistas_panoptic,
    "custom": custom_panoptic,
    "synthetic": synthetic,
}


def load_dataset(name: str, root: str | os.PathLike[str], split: str) -> tuple[list[Record], Metadata]:
    """Load the index of dataset ``name`` (a key of :data:`DATASETS`) at ``root`` for ``split``."""
    if name not in DATASETS:
        raise ValueError(f"load_dataset: unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](root, split)
