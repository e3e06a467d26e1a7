"""Tests for hle.core.decode: the panoptic decoder of Sec. 3.5 / Supplementary C.

Synthetic scenes are built with KNOWN clusters: class means are basis vectors of
the sphere, every instance is its class mean plus an offset along a private
direction, seeds peak at instance centres. The decoder must give back the scene
that built them; each step is also checked against a brute-force reference
written from the definition (max-pool NMS, sequential greedy merge, dense
``instance_kernel``, softmax of ``semantic_logits``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from hle.core.decode import (
    DecoderParams,
    assign_instances,
    decode_batch,
    decode_panoptic,
    find_seeds,
    merge_seeds,
    semantic_assignment,
    semantic_linear_form,
)
from hle.core.kernels import instance_kernel, pixel_coordinates, semantic_logits
from hle.core.types import HLEOutputs

# Classes: 0 sky, 1 road (stuff); 2 car, 3 person, 4 bike (things).
NUM_CLASSES = 5
IS_THING = torch.tensor([False, False, True, True, True])
INSTANCE_SIGMA = 0.2
SPATIAL_SIGMA = 1.0


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

    def inputs(self) -> tuple[torch.Tensor, ...]:
        return (
            self.embedding, self.sigma, self.spatial_sigma, self.seed,
            self.class_means, self.class_sigma, IS_THING,
        )


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


# Two touching cars (shared border at x = 30), a person, a bike.
BOXES = [(10, 10, 30, 30, 2), (10, 30, 30, 50, 2), (36, 60, 60, 90, 3), (4, 66, 22, 90, 4)]
LOOSE = dict(min_thing_area=1, min_stuff_area=1)


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


def check_segments_info(result, height: int, width: int, is_thing: torch.Tensor = IS_THING) -> None:
    """Ids 1..S, and area / bbox recomputed by brute force from the returned map."""
    pan = result.panoptic
    assert pan.shape == (height, width) and pan.dtype == torch.int32
    ids = [s["id"] for s in result.segments_info]
    assert ids == list(range(1, len(ids) + 1))
    assert set(pan.unique().tolist()) <= set(ids) | {0}
    for s in result.segments_info:
        assert set(s) == {"id", "category_id", "isthing", "area", "bbox", "score"}
        ys, xs = torch.nonzero(pan == s["id"], as_tuple=True)
        assert s["area"] == ys.numel() > 0
        x0, y0 = int(xs.min()), int(ys.min())
        assert s["bbox"] == [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
        assert s["isthing"] == bool(is_thing[s["category_id"]])


def match(result, segments, min_iou: float) -> None:
    """Every ground-truth segment has one predicted segment of the same class/kind."""
    assert len(result.segments_info) == len(segments)
    for mask, cls, thing in segments:
        best = max(result.segments_info, key=lambda s: iou(result.panoptic == s["id"], mask))
        assert iou(result.panoptic == best["id"], mask) >= min_iou
        assert (best["category_id"], best["isthing"]) == (cls, thing)


# --------------------------------------------------------------------------- semantics


def test_semantic_linear_form_matches_kernel_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    means = torch.randn(7, 6, generator=gen, dtype=torch.float64) * 3  # not unit: normalised inside
    sig = torch.rand(7, generator=gen, dtype=torch.float64) + 0.2
    e = F.normalize(torch.randn(50, 6, generator=gen, dtype=torch.float64), dim=1)
    weight, bias = semantic_linear_form(means, sig)
    assert weight.shape == (6, 7) and bias.shape == (7,)
    torch.testing.assert_close(e @ weight + bias, semantic_logits(e, means, sig).T)


def test_semantic_assignment_matches_softmax_of_kernel() -> None:
    gen = torch.Generator().manual_seed(2)
    means = torch.randn(19, 12, generator=gen, dtype=torch.float64)
    sig = torch.rand(19, generator=gen, dtype=torch.float64) + 0.3
    emb = F.normalize(torch.randn(12, 9, 11, generator=gen, dtype=torch.float64), dim=0)
    labels, psi = semantic_assignment(emb, means, sig, chunk=17)  # chunks not dividing N
    ref = torch.softmax(semantic_logits(emb.reshape(12, -1).T, means, sig), dim=0)  # [C, N]
    assert labels.shape == (9, 11) and psi.shape == (9, 11)
    assert torch.equal(labels.reshape(-1), ref.argmax(dim=0))
    torch.testing.assert_close(psi.reshape(-1), ref.max(dim=0).values)


# --------------------------------------------------------------------------- steps


def test_find_seeds_equals_maxpool_nms() -> None:
    gen = torch.Generator().manual_seed(3)
    seed = torch.rand(23, 31, generator=gen)  # continuous: no ties
    allowed = torch.rand(23, 31, generator=gen) > 0.3
    for kernel in (1, 3, 5):
        index, score = find_seeds(seed, allowed, threshold=0.4, kernel=kernel, max_seeds=10_000)
        masked = seed * allowed
        pooled = F.max_pool2d(masked[None, None], kernel, 1, kernel // 2)[0, 0]
        ref = torch.nonzero(((pooled == masked) & (masked > 0.4)).reshape(-1)).squeeze(1)
        assert set(index.tolist()) == set(ref.tolist())
        assert torch.all(score[:-1] >= score[1:])
        torch.testing.assert_close(score, seed.reshape(-1)[index])
    index, _ = find_seeds(seed, allowed, threshold=0.4, kernel=3, max_seeds=4)
    assert index.numel() == 4


def test_find_seeds_plateau_gives_one_seed() -> None:
    seed = torch.zeros(8, 8)
    seed[2:5, 3:6] = 0.9
    index, _ = find_seeds(seed, torch.ones(8, 8, dtype=torch.bool), threshold=0.5)
    assert index.tolist() == [2 * 8 + 3]


def test_merge_seeds_equals_sequential_greedy() -> None:
    gen = torch.Generator().manual_seed(4)
    k = 40
    # Few directions and nearby positions so that many pairs merge, in chains.
    base = F.normalize(torch.randn(5, 6, generator=gen, dtype=torch.float64), dim=1)
    jitter = 0.3 * torch.randn(k, 6, generator=gen, dtype=torch.float64)
    emb = F.normalize(base[torch.randint(0, 5, (k,), generator=gen)] + jitter, dim=1)
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64)
    sig = torch.rand(k, generator=gen, dtype=torch.float64) * 0.3 + 0.2
    ssig = torch.rand(k, generator=gen, dtype=torch.float64) * 0.5 + 0.2
    keep = merge_seeds(emb, xy, sig, ssig, threshold=0.5)
    ref: list[int] = []
    for j in range(k):  # the sequential rule, one pair at a time, from the formula
        merged = False
        for i in ref:
            d = 1.0 - float(emb[i] @ emb[j])
            log_phi = -d / (2 * float(sig[i]) ** 2) - float(((xy[i] - xy[j]) ** 2).sum()) / (2 * float(ssig[i]) ** 2)
            merged |= math.exp(log_phi) > 0.5
        if not merged:
            ref.append(j)
    assert torch.nonzero(keep).squeeze(1).tolist() == ref
    assert 1 < len(ref) < k  # the case is not trivial


def test_assign_instances_equals_dense_kernel() -> None:
    gen = torch.Generator().manual_seed(5)
    n, k, d = 300, 7, 8
    emb = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20
    s_emb = emb[:k] + 0.1
    s_xy = xy[:k]
    s_sig = torch.rand(k, dtype=torch.float64, generator=gen) + 0.5
    s_ssig = torch.rand(k, dtype=torch.float64, generator=gen) * 5 + 3
    inst, best = assign_instances(emb, xy, s_emb, s_xy, s_sig, s_ssig, threshold=0.3, chunk=64)
    phi = instance_kernel(emb, xy, s_emb, s_sig, s_xy, s_ssig)  # [K, N]
    ref_best, ref_arg = phi.max(dim=0)
    torch.testing.assert_close(best, ref_best)
    assert torch.equal(inst, torch.where(ref_best > 0.3, ref_arg, -1))
    assert 0 < int((inst >= 0).sum()) < n


# --------------------------------------------------------------------------- decoder


def test_recovers_scene_with_touching_instances_exactly() -> None:
    scene = make_scene(BOXES)
    result = decode_panoptic(*scene.inputs(), **LOOSE)
    check_segments_info(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)
    cars = [s for s in result.segments_info if s["category_id"] == 2]
    assert len(cars) == 2  # the touching pair is not merged
    for s in result.segments_info:
        if s["isthing"]:  # instance score is the seed score at the peak
            assert s["score"] == pytest.approx(0.9, abs=0.01)
        else:  # stuff score: mean psi over the segment, from the kernel
            mask = result.panoptic == s["id"]
            psi = torch.softmax(semantic_logits(scene.embedding[:, mask].T, scene.class_means, scene.class_sigma), 0)
            assert s["score"] == pytest.approx(float(psi[s["category_id"]].mean()), rel=1e-5)


def test_many_instances_random_layout() -> None:
    # A 4x5 grid of touching boxes of random thing classes (20 instances).
    gen = torch.Generator().manual_seed(6)
    boxes = [
        (4 + 14 * r, 4 + 18 * c, 18 + 14 * r, 22 + 18 * c, int(torch.randint(2, 5, (1,), generator=gen)))
        for r in range(4) for c in range(5)
    ]
    scene = make_scene(boxes, height=64, width=96, dim=16)
    result = decode_panoptic(*scene.inputs(), **LOOSE)
    check_segments_info(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)


@pytest.mark.parametrize("factor", [1, 2])
def test_mean_phi_instance_score_matches_kernel(factor: int) -> None:
    scene = make_scene(BOXES)
    seeds = decode_panoptic(*scene.inputs(), downsample=factor, **LOOSE)
    mean = decode_panoptic(*scene.inputs(), downsample=factor, instance_score="mean_phi", **LOOSE)
    both = decode_panoptic(*scene.inputs(), downsample=factor, instance_score="seed_mean_phi", **LOOSE)
    assert torch.equal(seeds.panoptic, mean.panoptic)
    coords = pixel_coordinates(64, 96)
    flat = scene.embedding.reshape(scene.embedding.shape[0], -1).T
    for s_seed, s_mean, s_both in zip(seeds.segments_info, mean.segments_info, both.segments_info, strict=True):
        if not s_seed["isthing"]:
            assert s_mean["score"] == s_seed["score"]
            continue
        # Reference: Phi of the seed (the seed-map peak inside the mask) against every
        # full-resolution pixel of the returned mask, straight from instance_kernel.
        mask = (mean.panoptic == s_mean["id"]).reshape(-1)
        peak = torch.where(mask, scene.seed.reshape(-1), -1.0).argmax()
        if factor > 1:  # the decoder saw the block centre holding the peak
            r, c = int(peak) // 96 // factor * factor + factor // 2, int(peak) % 96 // factor * factor + factor // 2
            peak = torch.tensor(r * 96 + c)
        phi = instance_kernel(
            flat[mask], coords[mask], flat[peak][None], torch.tensor([INSTANCE_SIGMA]),
            coords[peak][None], torch.tensor([SPATIAL_SIGMA]),
        )
        if factor == 1:
            assert s_mean["score"] == pytest.approx(float(phi.mean()), rel=1e-4)
        else:  # decoded on block centres: close to, not equal to, the full-resolution mean
            assert s_mean["score"] == pytest.approx(float(phi.mean()), abs=0.02)
        assert s_both["score"] == pytest.approx(s_seed["score"] * s_mean["score"], rel=1e-5)


def test_minimum_areas_make_void() -> None:
    boxes = BOXES + [(50, 4, 53, 7, 3)]  # a 3x3 person
    scene = make_scene(boxes)
    # Stuff segments are one per class: make the sky a 4-pixel patch in the road.
    background = scene.instance == 0
    scene.semantic[background] = 1
    scene.semantic[0:2, 0:2] = 0
    scene.embedding[:, background] = scene.class_means[1][:, None]
    scene.embedding[:, 0:2, 0:2] = scene.class_means[0][:, None, None]
    result = decode_panoptic(*scene.inputs(), min_thing_area=10, min_stuff_area=5)
    check_segments_info(result, 64, 96)
    assert (result.panoptic[50:53, 4:7] == 0).all()
    assert (result.panoptic[0:2, 0:2] == 0).all()
    assert len(result.segments_info) == len(BOXES) + 1
    assert [s["category_id"] for s in result.segments_info if not s["isthing"]] == [1]
    assert all(s["area"] >= 10 for s in result.segments_info)


def test_unclaimed_thing_pixels_and_low_psi_stuff_are_void() -> None:
    scene = make_scene(BOXES)
    scene.seed[0, 36:60, 60:90] = 0.0  # the person loses its seed
    # Sky pixels halfway between sky and road: their max psi, from the kernel, is
    # far below the psi of the clean sky pixels.
    half = F.normalize(scene.class_means[0] + scene.class_means[1], dim=0)
    scene.embedding[:, 0:3, :] = half[:, None, None]
    psi_half = float(torch.softmax(semantic_logits(half[None], scene.class_means, scene.class_sigma), 0).max())
    result = decode_panoptic(*scene.inputs(), stuff_threshold=psi_half + 0.05, **LOOSE)
    check_segments_info(result, 64, 96)
    assert (result.panoptic[36:60, 60:90] == 0).all()
    assert (result.panoptic[0:3] == 0).all()
    assert (result.panoptic[3:10, :10] > 0).all()
    kept = decode_panoptic(*scene.inputs(), stuff_threshold=psi_half - 0.05, **LOOSE)
    assert (kept.panoptic[0:3, :10] > 0).all()


def test_empty_image_without_things() -> None:
    scene = make_scene([])
    result = decode_panoptic(*scene.inputs(), **LOOSE)
    check_segments_info(result, 64, 96)
    assert [s["category_id"] for s in result.segments_info] == [0, 1]
    assert (result.panoptic > 0).all()
    # Nothing at all: every pixel below the stuff threshold.
    none = decode_panoptic(*scene.inputs(), stuff_threshold=1.01, **LOOSE)
    assert none.segments_info == [] and (none.panoptic == 0).all()


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("mode", ["sample", "avg"])
def test_downsample_recovers_large_instances(factor: int, mode: str) -> None:
    boxes = [(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)]
    scene = make_scene(boxes, height=66, width=98)  # not divisible by 4: cropped border blocks
    result = decode_panoptic(*scene.inputs(), downsample=factor, downsample_mode=mode, **LOOSE)
    check_segments_info(result, 66, 98)
    # Block quantisation moves each border by up to f/2 pixels.
    match(result, gt_segments(scene), min_iou=0.75)
    if mode == "sample":
        # Exact reference: the ground truth read at the block centres, upsampled.
        rows = (torch.arange(-(-66 // factor)) * factor + factor // 2).clamp(max=65)
        cols = (torch.arange(-(-98 // factor)) * factor + factor // 2).clamp(max=97)
        inst = scene.instance[rows][:, cols].repeat_interleave(factor, 0).repeat_interleave(factor, 1)[:66, :98]
        for i in range(1, len(boxes) + 1):
            best = max(iou(result.panoptic == s["id"], inst == i) for s in result.segments_info)
            assert best == 1.0


@pytest.mark.parametrize("with_logits", [False, True], ids=["embedding", "semantic_logits"])
def test_downsample_equals_decoding_the_sampled_maps(with_logits: bool) -> None:
    # Reference: sample the block centres by hand, decode them at stride f, and
    # upsample the ids with repeat_interleave. Same ids, classes and scores. Also
    # with separate-branch logits (the ablation), which are sampled the same way.
    boxes = [(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)]
    scene = make_scene(boxes, height=64, width=96)
    f = 4
    rows, cols = torch.arange(f // 2, 64, f), torch.arange(f // 2, 96, f)
    logits = None
    if with_logits:
        gen = torch.Generator().manual_seed(5)
        logits = torch.randn(NUM_CLASSES, 64, 96, generator=gen)
        logits[scene.semantic, torch.arange(64)[:, None], torch.arange(96)[None, :]] += 6.0

    def sample(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[:, rows][:, :, cols]

    small = decode_panoptic(
        sample(scene.embedding), sample(scene.sigma), sample(scene.spatial_sigma), sample(scene.seed),
        scene.class_means, scene.class_sigma, IS_THING, semantic_logits=sample(logits), stride=float(f), **LOOSE,
    )
    result = decode_panoptic(*scene.inputs(), semantic_logits=logits, downsample=f, **LOOSE)
    assert len(result.segments_info) >= 4
    expected = small.panoptic.repeat_interleave(f, 0).repeat_interleave(f, 1)
    assert torch.equal(result.panoptic, expected)
    for got, ref in zip(result.segments_info, small.segments_info, strict=True):
        assert (got["category_id"], got["isthing"], got["area"]) == (ref["category_id"], ref["isthing"], ref["area"] * f * f)
        assert got["score"] == pytest.approx(ref["score"], rel=1e-6)


@pytest.mark.parametrize("size", [(64, 96), (66, 98), (63, 95)])
def test_downsampled_stuff_scores_are_area_weighted_psi_means(size: tuple[int, int]) -> None:
    # Noisy embeddings so psi varies from pixel to pixel. Reference: psi at the
    # block centres (semantic_assignment on the hand-sampled map), upsampled with
    # repeat_interleave and cropped, averaged over each returned stuff segment. When
    # f does not divide the size, the last block row / column covers fewer pixels.
    height, width = size
    boxes = [(12, 6, 40, 46, 2), (42, 20, 62, 60, 3)]
    scene = make_scene(boxes, height=height, width=width)
    gen = torch.Generator().manual_seed(3)
    scene.embedding = F.normalize(scene.embedding + 0.15 * torch.randn(scene.embedding.shape, generator=gen), dim=0)
    for f in (2, 4):
        result = decode_panoptic(*scene.inputs(), downsample=f, **LOOSE)
        check_segments_info(result, height, width)
        rows = (torch.arange(-(-height // f)) * f + f // 2).clamp(max=height - 1)
        cols = (torch.arange(-(-width // f)) * f + f // 2).clamp(max=width - 1)
        _, psi = semantic_assignment(scene.embedding[:, rows][:, :, cols], scene.class_means, scene.class_sigma)
        psi_full = psi.repeat_interleave(f, 0).repeat_interleave(f, 1)[:height, :width].double()
        stuff = [s for s in result.segments_info if not s["isthing"]]
        assert stuff
        for seg in stuff:
            mask = result.panoptic == seg["id"]
            assert seg["score"] == pytest.approx(float(psi_full[mask].mean()), rel=1e-5)


@pytest.mark.parametrize("size", [(64, 96), (63, 95), (62, 94)])
def test_output_size_equals_downsampling_the_upsampled_maps(size: tuple[int, int]) -> None:
    # Native stride-4 maps decoded straight to a full-size id map must equal
    # downsample=4 on their nearest upsampling: the block centres are then exactly
    # the native pixels (also in cropped last blocks), so ids, areas, boxes and
    # scores must all agree.
    height, width = size
    scene = make_scene([(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)])
    gen = torch.Generator().manual_seed(7)
    scene.embedding = F.normalize(scene.embedding + 0.1 * torch.randn(scene.embedding.shape, generator=gen), dim=0)
    rows, cols = torch.arange(2, 64, 4), torch.arange(2, 96, 4)
    native = [t[:, rows][:, :, cols] if t.dim() == 3 else t for t in scene.inputs()]

    def up(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :height, :width] if t.dim() == 3 else t

    result = decode_panoptic(*native, stride=4.0, output_size=(height, width), **LOOSE)
    expected = decode_panoptic(*(up(t) for t in native), downsample=4, **LOOSE)
    check_segments_info(result, height, width)
    assert len(result.segments_info) >= 4
    assert torch.equal(result.panoptic, expected.panoptic)
    for got, ref in zip(result.segments_info, expected.segments_info, strict=True):
        assert {k: v for k, v in got.items() if k != "score"} == {k: v for k, v in ref.items() if k != "score"}
        assert got["score"] == pytest.approx(ref["score"], rel=1e-6)


def test_output_size_composes_with_downsample() -> None:
    # downsample=2 on stride-4 maps = blocks of 8 output pixels: the same as
    # downsample=8 on the nearest-upsampled maps (block centre 8j+4 lies in native
    # pixel 2j+1, the centre downsample=2 samples).
    scene = make_scene([(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)])
    rows, cols = torch.arange(2, 64, 4), torch.arange(2, 96, 4)
    native = [t[:, rows][:, :, cols] if t.dim() == 3 else t for t in scene.inputs()]
    up = [t.repeat_interleave(4, 1).repeat_interleave(4, 2) if t.dim() == 3 else t for t in native]
    result = decode_panoptic(*native, stride=4.0, output_size=(64, 96), downsample=2, **LOOSE)
    expected = decode_panoptic(*up, downsample=8, **LOOSE)
    check_segments_info(result, 64, 96)
    assert torch.equal(result.panoptic, expected.panoptic)
    assert [s["area"] for s in result.segments_info] == [s["area"] for s in expected.segments_info]


def test_inference_mode_tensors_decode() -> None:
    # Outputs made under torch.inference_mode (the usual serving setting) go through
    # the NumPy block-centre copy on one thread too.
    scene = make_scene(BOXES)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            inputs = [t.clone() for t in scene.inputs()]
            result = decode_panoptic(*inputs, downsample=4, **LOOSE)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(result.panoptic, decode_panoptic(*scene.inputs(), downsample=4, **LOOSE).panoptic)


@pytest.mark.parametrize(
    ("stride", "size", "message"),
    [(2.5, (40, 60), "integer stride"), (4.0, (60, 96), "does not fit"), (4.0, (64, 100), "does not fit"),
     (4.0, (64,), "must be \\(height, width\\)")],
)
def test_output_size_errors_name_the_problem(stride: float, size: tuple, message: str) -> None:
    scene = make_scene(BOXES, height=16, width=24)
    with pytest.raises(ValueError, match=message):
        decode_panoptic(*scene.inputs(), stride=stride, output_size=size, **LOOSE)


def test_float64_inputs_give_the_same_result() -> None:
    scene = make_scene(BOXES)
    single = decode_panoptic(*scene.inputs(), **LOOSE)
    double = decode_panoptic(*(t.double() if t.is_floating_point() else t for t in scene.inputs()), **LOOSE)
    assert torch.equal(single.panoptic, double.panoptic)
    assert [s["area"] for s in single.segments_info] == [s["area"] for s in double.segments_info]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("factor", [1, 4])
def test_half_precision_inputs_recover_the_scene(dtype: torch.dtype, factor: int) -> None:
    # AMP inference hands over bf16/fp16 maps; the decoder must take them as they
    # are (bf16 has no NumPy view, so the block-centre copy falls back to torch).
    scene = make_scene(BOXES)
    result = decode_panoptic(
        *(t.to(dtype) if t.is_floating_point() else t for t in scene.inputs()), downsample=factor, **LOOSE
    )
    check_segments_info(result, 64, 96)
    # Clean clusters: the same segmentation as the float32 decode at the same factor.
    assert torch.equal(result.panoptic, decode_panoptic(*scene.inputs(), downsample=factor, **LOOSE).panoptic)
    if factor == 1:
        match(result, gt_segments(scene), min_iou=1.0)


def test_thread_count_does_not_change_the_result() -> None:
    # The block-centre copy goes through NumPy on one thread and through torch on
    # several: both must give the same decode.
    scene = make_scene(BOXES)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([decode_panoptic(*scene.inputs(), downsample=f, **LOOSE) for f in (2, 4)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one.panoptic, two.panoptic)
        assert one.segments_info == two.segments_info


def test_channels_last_embedding_gives_the_same_result() -> None:
    scene = make_scene(BOXES)
    strided = scene.embedding.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert not strided.is_contiguous()
    inputs = list(scene.inputs())
    reference = decode_panoptic(*inputs, **LOOSE)
    inputs[0] = strided
    for f in (1, 2):
        result = decode_panoptic(*inputs, downsample=f, **LOOSE)
        expected = reference if f == 1 else decode_panoptic(*scene.inputs(), downsample=f, **LOOSE)
        assert torch.equal(result.panoptic, expected.panoptic)


def test_degenerate_configurations() -> None:
    scene = make_scene(BOXES)
    # No thing classes at all: every pixel is stuff of its nearest class.
    result = decode_panoptic(*scene.inputs()[:-1], torch.zeros(NUM_CLASSES, dtype=torch.bool), **LOOSE)
    check_segments_info(result, 64, 96, is_thing=torch.zeros(NUM_CLASSES, dtype=torch.bool))
    assert not any(s["isthing"] for s in result.segments_info) and (result.panoptic > 0).all()
    # Only thing classes: sky and road pixels become unclaimed thing pixels (void).
    all_things = torch.ones(NUM_CLASSES, dtype=torch.bool)
    result = decode_panoptic(*scene.inputs()[:-1], all_things, **LOOSE)
    check_segments_info(result, 64, 96, is_thing=all_things)
    assert sum(s["isthing"] for s in result.segments_info) == len(BOXES)
    # No seeds allowed: every thing pixel is void, stuff is untouched.
    result = decode_panoptic(*scene.inputs(), max_instances=0, **LOOSE)
    check_segments_info(result, 64, 96)
    assert (result.panoptic[scene.instance > 0] == 0).all()
    # A one-row image, and a downsampling factor larger than the image.
    row = make_scene([(0, 10, 1, 30, 2)], height=1, width=96)
    check_segments_info(decode_panoptic(*row.inputs(), **LOOSE), 1, 96)
    check_segments_info(decode_panoptic(*row.inputs(), downsample=8, **LOOSE), 1, 96)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("factor", [1, 4])
def test_cuda_equals_cpu(factor: int) -> None:
    scene = make_scene(BOXES)
    cpu = decode_panoptic(*scene.inputs(), downsample=factor, **LOOSE)
    gpu = decode_panoptic(*(t.cuda() for t in scene.inputs()), downsample=factor, **LOOSE)
    assert gpu.panoptic.is_cuda
    assert torch.equal(gpu.panoptic.cpu(), cpu.panoptic)
    assert [(s["category_id"], s["area"], s["bbox"]) for s in gpu.segments_info] == [
        (s["category_id"], s["area"], s["bbox"]) for s in cpu.segments_info
    ]


def test_nan_pixels_do_not_crash() -> None:
    # Fault injection: NaN embeddings / seeds must give a valid (if poorer) result.
    scene = make_scene(BOXES)
    scene.embedding[:, 15:18, 15:18] = float("nan")
    scene.embedding[:, 40:44, 0:5] = float("nan")
    scene.seed[0, 50:52, 70:72] = float("nan")
    result = decode_panoptic(*scene.inputs(), **LOOSE)
    check_segments_info(result, 64, 96)
    assert all(0 <= s["category_id"] < NUM_CLASSES for s in result.segments_info)


def test_semantic_logits_path_uses_given_logits() -> None:
    scene = make_scene(BOXES)
    # The separate branch says "road" on the top half and "sky" on the bottom half.
    logits = torch.full((NUM_CLASSES, 64, 96), -5.0)
    logits[1, :32] = 5.0
    logits[0, 32:] = 5.0
    thing = scene.instance > 0
    logits[:, thing] = -5.0
    logits[scene.semantic[thing], thing] = 5.0
    result = decode_panoptic(*scene.inputs(), semantic_logits=logits, **LOOSE)
    check_segments_info(result, 64, 96)
    swapped = scene.semantic.clone()
    swapped[(scene.semantic == 0)] = 1
    swapped[(scene.semantic == 1) & (torch.arange(64)[:, None] >= 32)] = 0
    scene.semantic = swapped
    match(result, gt_segments(scene), min_iou=1.0)
    stuff = {s["category_id"]: s for s in result.segments_info if not s["isthing"]}
    psi = torch.softmax(torch.tensor([5.0] + [-5.0] * 4), 0)[0]
    assert stuff[1]["score"] == pytest.approx(float(psi), rel=1e-5)


def test_split_embedding_path() -> None:
    # First half: the class mean of each pixel (semantics only); second half: the
    # scene's instance embeddings. Each view is re-normalised by split_views.
    scene = make_scene(BOXES)
    sem = scene.class_means[scene.semantic].permute(2, 0, 1)
    embedding = torch.cat([sem, scene.embedding], dim=0) / 2**0.5
    means = torch.cat([scene.class_means, torch.zeros_like(scene.class_means)], dim=1)
    result = decode_panoptic(
        embedding, scene.sigma, scene.spatial_sigma, scene.seed, means, scene.class_sigma, IS_THING,
        split_embedding=True, **LOOSE,
    )
    check_segments_info(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)
    # Instance view is the second half: identical instance halves merge into one.
    flat = embedding.clone()
    flat[10:] = F.normalize(torch.ones(10), dim=0)[:, None, None] / 2**0.5
    merged = decode_panoptic(
        flat, scene.sigma, scene.spatial_sigma, scene.seed, means, scene.class_sigma, IS_THING,
        split_embedding=True, **LOOSE,
    )
    assert sum(s["isthing"] for s in merged.segments_info) < len(BOXES)


def test_coordinates_follow_stride_and_coord_scale() -> None:
    # Same instance embedding on both halves of a wide box, seeds at both ends:
    # whether they merge depends only on their distance in coordinate units.
    scene = make_scene([(10, 2, 30, 94, 2)])
    scene.seed.zero_()
    scene.seed[0, 20, 10] = scene.seed[0, 20, 85] = 0.9
    distance = 75 * 1.0 / 64  # columns apart x default coord scale
    # Phi = exp(-distance^2 / 2) ~ 0.5 at the default scale; stride 0.5 halves the distance.
    merged = decode_panoptic(*scene.inputs(), stride=0.5, **LOOSE)
    split = decode_panoptic(*scene.inputs(), stride=2.0, **LOOSE)
    assert torch.exp(torch.tensor(-(distance * 0.5) ** 2 / 2)) > 0.5 > torch.exp(torch.tensor(-(distance * 2) ** 2 / 2))
    assert sum(s["isthing"] for s in merged.segments_info) == 1
    assert sum(s["isthing"] for s in split.segments_info) == 2


def test_params_dataclass_and_batch() -> None:
    scene = make_scene(BOXES)
    params = DecoderParams(min_thing_area=1, min_stuff_area=1)
    with pytest.raises(dataclasses_frozen_error()):
        params.seed_threshold = 0.1  # type: ignore[misc]
    single = decode_panoptic(*scene.inputs(), **params.as_kwargs())
    outputs = HLEOutputs(
        embedding=torch.stack([scene.embedding, scene.embedding.flip(-1)]),
        sigma=torch.stack([scene.sigma] * 2),
        spatial_sigma=torch.stack([scene.spatial_sigma] * 2),
        seed=torch.stack([scene.seed, scene.seed.flip(-1)]),
    )
    batch = decode_batch(outputs, scene.class_means, scene.class_sigma, IS_THING, **params.as_kwargs())
    assert len(batch) == 2
    assert torch.equal(batch[0].panoptic, single.panoptic)
    assert batch[0].segments_info == single.segments_info
    flipped = decode_panoptic(
        scene.embedding.flip(-1), scene.sigma, scene.spatial_sigma, scene.seed.flip(-1),
        scene.class_means, scene.class_sigma, IS_THING, **params.as_kwargs(),
    )
    assert torch.equal(batch[1].panoptic, flipped.panoptic)


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_pixel_coordinates_agree_with_decoder_grid() -> None:
    # The decoder reads per-axis coordinates from pixel_coordinates; their outer
    # product must be the full grid.
    grid = pixel_coordinates(5, 7, stride=4.0)
    rows = pixel_coordinates(5, 1, stride=4.0)[:, 0]
    cols = pixel_coordinates(1, 7, stride=4.0)[:, 1]
    torch.testing.assert_close(grid, torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(embedding=torch.zeros(10, 64)), "embedding must be"),
        (dict(sigma=torch.ones(1, 64, 95)), "sigma must be"),
        (dict(seed=torch.ones(64, 96)), "seed must be"),
        (dict(class_means=torch.zeros(5, 9)), "class_means must be"),
        (dict(class_sigma=torch.ones(4)), "class_sigma must be"),
        (dict(is_thing=torch.ones(5)), "is_thing must be"),
        (dict(semantic_logits=torch.zeros(4, 64, 96)), "semantic_logits must be"),
        (dict(downsample=0), "downsample must be"),
        (dict(downsample_mode="bilinear"), "downsample_mode must be"),
        (dict(nms_kernel=2), "nms_kernel must be"),
        (dict(instance_score="area"), "instance_score must be"),
        (dict(split_embedding=True, embedding=torch.zeros(9, 64, 96), class_means=torch.zeros(5, 9)), "even D"),
    ],
)
def test_errors_name_the_argument(change: dict, message: str) -> None:
    scene = make_scene(BOXES)
    args = dict(
        embedding=scene.embedding, sigma=scene.sigma, spatial_sigma=scene.spatial_sigma, seed=scene.seed,
        class_means=scene.class_means, class_sigma=scene.class_sigma, is_thing=IS_THING,
    )
    args.update(change)
    names = ("embedding", "sigma", "spatial_sigma", "seed", "class_means", "class_sigma", "is_thing")
    positional = [args.pop(k) for k in names]
    with pytest.raises(ValueError, match=message):
        decode_panoptic(*positional, **args)


def test_decode_batch_rejects_unbatched() -> None:
    scene = make_scene(BOXES)
    with pytest.raises(ValueError, match="B, D, H, W"):
        decode_batch(
            HLEOutputs(scene.embedding, scene.sigma, scene.spatial_sigma, scene.seed),
            scene.class_means, scene.class_sigma, IS_THING,
        )
