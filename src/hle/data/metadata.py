"""Category metadata of a panoptic dataset and its map to contiguous train ids.

Datasets keep their own category ids (COCO 1..200, Cityscapes label ids 7..33,
Vistas 1..65) in records and JSON files; the network, the loss and the decoder
work with contiguous train ids ``0..C-1``. :class:`Metadata` owns that map: the
categories, in list order, become train ids ``0, 1, ...``; categories marked
``ignore`` (unlabeled / not evaluated) and ids not in the list map to
``ignore_label`` (255). It also says which train ids are things.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hle.core.kernels import IGNORE_LABEL

_REQUIRED_KEYS = ("id", "name", "isthing")


def _fallback_color(category_id: int) -> list[int]:
    """A stable, well spread RGB colour for a category that has none."""
    # Multiplicative hashing with distinct odd constants spreads nearby ids apart.
    return [(category_id * 47 + 61) % 256, (category_id * 97 + 23) % 256, (category_id * 151 + 197) % 256]


@dataclass
class Metadata:
    """Categories of a dataset and the dataset-id <-> train-id map.

    Args:
        name: dataset name (``"coco"``, ``"cityscapes"``, ...).
        categories: one dict per category with keys ``id`` (dataset category id),
            ``name``, ``isthing`` (0/1 or bool), optional ``color`` (``[r, g, b]``)
            and optional ``ignore`` (true for unlabeled / not-evaluated classes,
            which map to ``ignore_label``).
        ignore_label: train id used for void / ignored pixels.

    Derived attributes:
        id_to_train_id: ``{dataset id: train id}`` for every listed category
            (ignored ones map to ``ignore_label``).
        train_id_to_id: ``[C]`` list, dataset id of each train id.
        num_classes: ``C``, the number of non-ignored categories.
    """

    name: str
    categories: list[dict[str, Any]]
    ignore_label: int = IGNORE_LABEL
    id_to_train_id: dict[int, int] = field(init=False, repr=False)
    train_id_to_id: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.categories, (list, tuple)) or not self.categories:
            raise ValueError(f"Metadata({self.name!r}): categories must be a non-empty list, got {self.categories!r}")
        cleaned: list[dict[str, Any]] = []
        seen: set[int] = set()
        for i, cat in enumerate(self.categories):
            missing = [k for k in _REQUIRED_KEYS if k not in cat]
            if missing:
                raise ValueError(
                    f"Metadata({self.name!r}): categories[{i}] lacks keys {missing}; "
                    f"expected keys {list(_REQUIRED_KEYS)} (+ optional color, ignore), got {sorted(cat)}"
                )
            cid = int(cat["id"])
            if cid in seen:
                raise ValueError(f"Metadata({self.name!r}): duplicate category id {cid} in categories")
            seen.add(cid)
            c = dict(cat)
            c["id"] = cid
            c["isthing"] = int(bool(c["isthing"]))
            c["color"] = [int(v) for v in c.get("color") or _fallback_color(cid)]
            c["ignore"] = bool(c.get("ignore", False))
            cleaned.append(c)
        self.categories = cleaned
        self.id_to_train_id = {}
        self.train_id_to_id = []
        for c in cleaned:
            if c["ignore"]:
                self.id_to_train_id[c["id"]] = self.ignore_label
            else:
                self.id_to_train_id[c["id"]] = len(self.train_id_to_id)
                self.train_id_to_id.append(c["id"])
        if not self.train_id_to_id:
            raise ValueError(f"Metadata({self.name!r}): every category is marked ignore; need at least one class")
        if len(self.train_id_to_id) >= self.ignore_label:
            raise ValueError(
                f"Metadata({self.name!r}): {len(self.train_id_to_id)} classes collide with ignore_label={self.ignore_label}"
            )
        self._by_id = {c["id"]: c for c in cleaned}

    # ------------------------------------------------------------------ derived
    @property
    def num_classes(self) -> int:
        """Number of train classes ``C``."""
        return len(self.train_id_to_id)

    def _train_categories(self) -> list[dict[str, Any]]:
        return [self._by_id[i] for i in self.train_id_to_id]

    @property
    def is_thing(self) -> torch.Tensor:
        """``[C]`` bool tensor, true for thing classes (a fresh tensor each call)."""
        return torch.tensor([bool(c["isthing"]) for c in self._train_categories()], dtype=torch.bool)

    @property
    def thing_train_ids(self) -> list[int]:
        """Train ids of the thing classes, ascending."""
        return [t for t, c in enumerate(self._train_categories()) if c["isthing"]]

    @property
    def stuff_train_ids(self) -> list[int]:
        """Train ids of the stuff classes, ascending."""
        return [t for t, c in enumerate(self._train_categories()) if not c["isthing"]]

    @property
    def class_names(self) -> list[str]:
        """``[C]`` class names in train-id order."""
        return [str(c["name"]) for c in self._train_categories()]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """``[C]`` RGB colours in train-id order."""
        return [tuple(c["color"]) for c in self._train_categories()]  # type: ignore[misc]

    def category(self, category_id: int) -> dict[str, Any]:
        """The category dict of a dataset id (``KeyError`` naming the id when absent)."""
        try:
            return self._by_id[int(category_id)]
        except KeyError:
            raise KeyError(f"{self.name}: unknown category id {category_id}") from None

    def train_id(self, category_id: int) -> int:
        """Train id of a dataset category id; unknown ids give ``ignore_label``."""
        return self.id_to_train_id.get(int(category_id), self.ignore_label)

    def lookup_table(self, max_id: int | None = None) -> torch.Tensor:
        """Dense ``[max_id + 1]`` int64 table dataset id -> train id (ignore elsewhere)."""
        top = max(self._by_id) if max_id is None else int(max_id)
        table = torch.full((top + 1,), self.ignore_label, dtype=torch.int64)
        for cid, tid in self.id_to_train_id.items():
            if 0 <= cid <= top:
                table[cid] = tid
        return table

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for checkpoints and prediction folders)."""
        return {"name": self.name, "categories": [dict(c) for c in self.categories], "ignore_label": self.ignore_label}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Metadata":
        """Inverse of :meth:`to_dict`."""
        return cls(name=data["name"], categories=list(data["categories"]), ignore_label=int(data.get("ignore_label", IGNORE_LABEL)))
