"""Synthetic decoder inputs with KNOWN clusters, and checks of a decoded result.

Class means are basis vectors of the sphere, every instance is its class mean plus an
offset along a private direction, seeds peak at instance centres. The decoder must give
back the scene that built them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hle.core.decode import PANOPTIC_DTYPE, DecoderParams, decode_panoptic
from hle.core.types import HLEOutputs, PanopticResult

# Classes: 0 sky, 1 road (stuff); 2 car, 3 person, 4 bike (things).
NUM_CLASSES = 5
IS_THING = torch.tensor([False, False, True, True, True])
INSTANCE_SIGMA = 0.2
SPATIAL_SIGMA = 1.0

# Two touching cars (shared border at x = 30), a person, a bike.
BOXES = [(10, 10, 30, 30, 2), (10, 30, 30, 50, 2), (36, 60, 60, 90, 3), (4, 66, 22, 90, 4)]
#: No minimum areas: every decoded segment is kept.
LOOSE = DecoderParams(min_thing_area=1, min_stuff_area=1)


@dataclass
class Scene:
    """Network-like outputs and the ground truth they were built from."""

    embedding: torch.Tensor  # [D, H, W]
    sigma: torch.Tensor  # [1, H, W]
    spatial_sigma: torch.Tensor  # [1, H, W]
    seed: torch.Tensor  # [1, H, W]
    class_means: torch.Tensor  # [C, D]
    class_sigma: torch.Tensor  # [C]
    semantic: torch.Tensor  # [H, W] ground-truth class
    instance: torch.Tensor  # [H, W] ground-truth instance 1..L, 0 = none

    def outputs(self, semantic_logits: torch.Tensor | None = None) -> HLEOutputs:
        return HLEOutputs(self.embedding, self.sigma, self.spatial_sigma, self.seed, semantic_logits)

    def classes(self, is_thing: torch.Tensor = IS_THING) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.class_means, self.class_sigma, is_thing

    def decode(self, params: DecoderParams = LOOSE, **kwargs: object) -> PanopticResult:
        """``decode_panoptic`` of the scene (``kwargs``: its keyword arguments)."""
        return decode_panoptic(self.outputs(), *self.classes(), params, **kwargs)

    def map(self, fn) -> Scene:  # noqa: ANN001
        """The scene with ``fn`` applied to its float maps and class tensors."""
        return Scene(*(fn(t) for t in (self.embedding, self.sigma, self.spatial_sigma, self.seed,
                                       self.class_means, self.class_sigma)), self.semantic, self.instance)


def make_scene(
    boxes: list[tuple[int, int, int, int, int]],
    height: int = 64,
    width: int = 96,
    *,
    dim: int = 10,
    noise: float = 0.01,
    seed: int = 0,
) -> Scene:
    """Top half sky, bottom half road, one instance per box ``(y0, x0, y1, x1, class)``.

    Instance ``i`` has embedding ``normalize(mu_class + 0.5 u_i)`` with ``u_i`` a unit
    vector orthogonal to every class mean and to the other offsets (dims C..D-1,
    sign alternating), so same-class instances are at cosine distance 0.2 and
    Phi between them is ``exp(-0.2 / 0.08) < 0.1``. Later boxes paint over earlier ones.
    """
    gen = torch.Generator().manual_seed(seed)
    means = torch.eye(dim)[:NUM_CLASSES]
    semantic = torch.zeros(height, width, dtype=torch.long)
    semantic[height // 2 :] = 1
    instance = torch.zeros(height, width, dtype=torch.long)
    embedding = means[semantic].permute(2, 0, 1).clone()
    seed_map = torch.zeros(1, height, width)
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    free_dims = dim - NUM_CLASSES
    for i, (y0, x0, y1, x1, cls) in enumerate(boxes):
        offset = torch.zeros(dim)
        offset[NUM_CLASSES + i % free_dims] = 0.5 if (i // free_dims) % 2 == 0 else -0.5
        embedding[:, y0:y1, x0:x1] = F.normalize(means[cls] + offset, dim=0)[:, None, None]
        semantic[y0:y1, x0:x1] = cls
        instance[y0:y1, x0:x1] = i + 1
    for i, (y0, x0, y1, x1, _) in enumerate(boxes):
        cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
        bump = 0.9 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 10.0**2))
        inside = instance == i + 1
        seed_map[0][inside] = bump[inside]
    embedding = F.normalize(embedding + noise * torch.randn(embedding.shape, generator=gen), dim=0)
    return Scene(
        embedding=embedding,
        sigma=torch.full((1, height, width), INSTANCE_SIGMA),
        spatial_sigma=torch.full((1, height, width), SPATIAL_SIGMA),
        seed=seed_map,
        class_means=means,
        class_sigma=torch.full((NUM_CLASSES,), 0.5),
        semantic=semantic,
        instance=instance,
    )


def gt_segments(scene: Scene) -> list[tuple[torch.Tensor, int, bool]]:
    """Ground-truth segments as (mask, class, isthing): stuff by class, things by instance."""
    segments = []
    for cls in range(NUM_CLASSES):
        if not IS_THING[cls]:
            mask = (scene.semantic == cls) & (scene.instance == 0)
            if mask.any():
                segments.append((mask, cls, False))
    for i in range(1, int(scene.instance.max()) + 1):
        mask = scene.instance == i
        if mask.any():
            segments.append((mask, int(scene.semantic[mask][0]), True))
    return segments


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def check_valid_result(result: PanopticResult, height: int, width: int, is_thing: torch.Tensor = IS_THING) -> None:
    """A valid panoptic map, checked by brute force from the returned id map.

    Every pixel holds one segment id or 0; ids are ``1..S`` in order, each present in
    the map; areas and boxes are the pixel counts and the true boxes; categories are
    valid train ids with ``isthing`` as ``is_thing`` says; stuff scores (mean max psi)
    lie in ``[1/C, 1]``, instance scores in ``[0, 1]`` (seed scores and Phi means are
    probabilities); no class has two stuff segments.
    """
    pan = result.panoptic
    assert pan.shape == (height, width) and pan.dtype == PANOPTIC_DTYPE
    ids = [s["id"] for s in result.segments_info]
    assert ids == list(range(1, len(ids) + 1))
    present = set(pan.unique().tolist())
    assert present <= set(ids) | {0} and set(ids) <= present
    counts = torch.bincount(pan.reshape(-1).long(), minlength=len(ids) + 1)
    stuff_classes = [s["category_id"] for s in result.segments_info if not s["isthing"]]
    assert len(stuff_classes) == len(set(stuff_classes))
    for s in result.segments_info:
        assert set(s) == {"id", "category_id", "isthing", "area", "bbox", "score"}
        assert isinstance(s["category_id"], int) and 0 <= s["category_id"] < is_thing.numel()
        assert s["isthing"] == bool(is_thing[s["category_id"]])
        ys, xs = torch.nonzero(pan == s["id"], as_tuple=True)
        assert s["area"] == int(counts[s["id"]]) == ys.numel() > 0
        x0, y0 = int(xs.min()), int(ys.min())
        assert s["bbox"] == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        low = 0.0 if s["isthing"] else 1.0 / is_thing.numel()
        assert low - 1e-6 <= s["score"] <= 1.0 + 1e-6, s


def match(result: PanopticResult, segments: list[tuple[torch.Tensor, int, bool]], min_iou: float) -> None:
    """Every ground-truth segment has one predicted segment of the same class/kind."""
    assert len(result.segments_info) == len(segments)
    for mask, cls, thing in segments:
        best = max(result.segments_info, key=lambda s: iou(result.panoptic == s["id"], mask))
        assert iou(result.panoptic == best["id"], mask) >= min_iou
        assert (best["category_id"], best["isthing"]) == (cls, thing)
