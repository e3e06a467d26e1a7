"""Tests for hle.core.decode.panoptic: the whole decoder of Sec. 3.5 / Supplementary C.

Each test decodes a synthetic scene with known clusters (``scenes.py``) and checks the
result against the scene that built it, against a reference written from the
definition (the softmax of ``semantic_logits``, ``instance_kernel``, hand-sampled maps),
or against another way of reaching the same decode (downsampling vs sampled maps).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hle.core.decode import DecoderParams, decode_batch, decode_panoptic
from hle.core.kernels import instance_kernel, pixel_coordinates, semantic_logits
from hle.core.types import HLEOutputs

from scenes import (
    BOXES,
    INSTANCE_SIGMA,
    IS_THING,
    LOOSE,
    NUM_CLASSES,
    SPATIAL_SIGMA,
    check_valid_result,
    gt_segments,
    iou,
    make_scene,
    match,
)


def loose(**changes: object) -> DecoderParams:
    return dataclasses.replace(LOOSE, **changes)


def psi_of(embedding: torch.Tensor, scene) -> torch.Tensor:  # noqa: ANN001
    """``[C, N]`` psi of ``[D, N]`` embeddings from the kernel (Eq. 9)."""
    return torch.softmax(semantic_logits(embedding.T, scene.class_means, scene.class_sigma), 0)


def assert_same_decode(got, ref, *, max_pixel_fraction: float = 0.0, area_slack: int = 0) -> None:  # noqa: ANN001
    """Two decodes agree: ids on all but ``max_pixel_fraction`` of the pixels, the same
    segments (class, kind) with areas within ``area_slack`` pixels, scores to 1e-5."""
    differ = float((got.panoptic != ref.panoptic).float().mean())
    assert differ <= max_pixel_fraction, differ
    assert len(got.segments_info) == len(ref.segments_info)
    for g, r in zip(got.segments_info, ref.segments_info, strict=True):
        assert (g["id"], g["category_id"], g["isthing"]) == (r["id"], r["category_id"], r["isthing"])
        assert abs(g["area"] - r["area"]) <= area_slack
        assert g["score"] == pytest.approx(r["score"], rel=1e-5)


def test_recovers_scene_with_touching_instances_exactly() -> None:
    scene = make_scene(BOXES)
    result = scene.decode()
    check_valid_result(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)
    cars = [s for s in result.segments_info if s["category_id"] == 2]
    assert len(cars) == 2  # the touching pair is not merged
    for s in result.segments_info:
        if s["isthing"]:  # instance score is the seed score at the peak
            assert s["score"] == pytest.approx(0.9, abs=0.01)
        else:  # stuff score: mean psi over the segment, from the kernel
            mask = result.panoptic == s["id"]
            assert s["score"] == pytest.approx(float(psi_of(scene.embedding[:, mask], scene)[s["category_id"]].mean()),
                                               rel=1e-5)


def test_many_instances_random_layout() -> None:
    # A 4x5 grid of touching boxes of random thing classes (20 instances).
    gen = torch.Generator().manual_seed(6)
    boxes = [
        (4 + 14 * r, 4 + 18 * c, 18 + 14 * r, 22 + 18 * c, int(torch.randint(2, 5, (1,), generator=gen)))
        for r in range(4) for c in range(5)
    ]
    scene = make_scene(boxes, height=64, width=96, dim=16)
    result = scene.decode()
    check_valid_result(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)


@pytest.mark.parametrize("factor", [1, 2])
def test_mean_phi_instance_score_matches_kernel(factor: int) -> None:
    scene = make_scene(BOXES)
    seeds = scene.decode(loose(downsample=factor))
    mean = scene.decode(loose(downsample=factor, instance_score="mean_phi"))
    both = scene.decode(loose(downsample=factor, instance_score="seed_mean_phi"))
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
            flat[mask].double(), coords[mask].double(), flat[peak][None].double(),
            torch.tensor([INSTANCE_SIGMA], dtype=torch.float64), coords[peak][None].double(),
            torch.tensor([SPATIAL_SIGMA], dtype=torch.float64),
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
    result = scene.decode(DecoderParams(min_thing_area=10, min_stuff_area=5))
    check_valid_result(result, 64, 96)
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
    psi_half = float(psi_of(half[:, None], scene).max())
    result = scene.decode(loose(stuff_threshold=psi_half + 0.05))
    check_valid_result(result, 64, 96)
    assert (result.panoptic[36:60, 60:90] == 0).all()
    assert (result.panoptic[0:3] == 0).all()
    assert (result.panoptic[3:10, :10] > 0).all()
    kept = scene.decode(loose(stuff_threshold=psi_half - 0.05))
    assert (kept.panoptic[0:3, :10] > 0).all()


def test_empty_image_without_things() -> None:
    scene = make_scene([])
    result = scene.decode()
    check_valid_result(result, 64, 96)
    assert [s["category_id"] for s in result.segments_info] == [0, 1]
    assert (result.panoptic > 0).all()
    # Nothing at all: every pixel's max psi (at most 1 / (1 + 4 e^-2) here) is below 1.
    none = scene.decode(loose(stuff_threshold=1.0))
    assert none.segments_info == [] and (none.panoptic == 0).all()


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("mode", ["sample", "avg"])
def test_downsample_recovers_large_instances(factor: int, mode: str) -> None:
    boxes = [(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)]
    scene = make_scene(boxes, height=66, width=98)  # not divisible by 4: cropped border blocks
    result = scene.decode(loose(downsample=factor, downsample_mode=mode))
    check_valid_result(result, 66, 98)
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
    # with separate-branch logits (the ablation), which are sampled the same way:
    # noisy logits whose true class wins by a wide margin (>= 12 - 2 * 4.5), so every
    # decision holds whatever the rounding of either path.
    boxes = [(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)]
    scene = make_scene(boxes, height=64, width=96)
    f = 4
    rows, cols = torch.arange(f // 2, 64, f), torch.arange(f // 2, 96, f)
    logits = None
    if with_logits:
        gen = torch.Generator().manual_seed(5)
        logits = torch.randn(NUM_CLASSES, 64, 96, generator=gen).clamp(-4.5, 4.5)
        logits[scene.semantic, torch.arange(64)[:, None], torch.arange(96)[None, :]] += 12.0

    def sample(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[:, rows][:, :, cols]

    small = decode_panoptic(HLEOutputs(*(sample(t) for t in scene.outputs(logits))), *scene.classes(), LOOSE,
                            stride=float(f))
    result = decode_panoptic(scene.outputs(logits), *scene.classes(), loose(downsample=f))
    assert len(result.segments_info) >= 4
    expected = small.panoptic.repeat_interleave(f, 0).repeat_interleave(f, 1)
    assert torch.equal(result.panoptic, expected)
    for got, ref in zip(result.segments_info, small.segments_info, strict=True):
        assert (got["category_id"], got["isthing"]) == (ref["category_id"], ref["isthing"])
        assert got["area"] == ref["area"] * f * f
        assert got["score"] == pytest.approx(ref["score"], rel=1e-5)


@pytest.mark.parametrize("size", [(64, 96), (66, 98), (63, 95)])
def test_downsampled_stuff_scores_are_area_weighted_psi_means(size: tuple[int, int]) -> None:
    # Noisy embeddings so psi varies from pixel to pixel. Reference: psi at the block
    # centres (softmax of the kernel's logits on the hand-sampled map), upsampled with
    # repeat_interleave and cropped, averaged over each returned stuff segment. When
    # f does not divide the size, the last block row / column covers fewer pixels.
    height, width = size
    boxes = [(12, 6, 40, 46, 2), (42, 20, 62, 60, 3)]
    scene = make_scene(boxes, height=height, width=width)
    gen = torch.Generator().manual_seed(3)
    scene.embedding = F.normalize(scene.embedding + 0.15 * torch.randn(scene.embedding.shape, generator=gen), dim=0)
    for f in (2, 4):
        result = scene.decode(loose(downsample=f))
        check_valid_result(result, height, width)
        rows = (torch.arange(-(-height // f)) * f + f // 2).clamp(max=height - 1)
        cols = (torch.arange(-(-width // f)) * f + f // 2).clamp(max=width - 1)
        centres = scene.embedding[:, rows][:, :, cols]
        psi = psi_of(centres.reshape(centres.shape[0], -1), scene).amax(dim=0).view(len(rows), len(cols))
        psi_full = psi.repeat_interleave(f, 0).repeat_interleave(f, 1)[:height, :width].double()
        stuff = [s for s in result.segments_info if not s["isthing"]]
        assert stuff
        for seg in stuff:
            mask = result.panoptic == seg["id"]
            assert seg["score"] == pytest.approx(float(psi_full[mask].mean()), rel=1e-5)


def native_and_upsampled(scene, height: int, width: int) -> tuple[HLEOutputs, HLEOutputs]:  # noqa: ANN001
    """The scene's stride-4 pixels (as a network's native outputs) and their nearest upsampling."""
    rows, cols = torch.arange(2, 64, 4), torch.arange(2, 96, 4)
    native = HLEOutputs(*(t[:, rows][:, :, cols] for t in scene.outputs()[:4]))
    up = HLEOutputs(*(t.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :height, :width] for t in native[:4]))
    return native, up


@pytest.mark.parametrize("size", [(64, 96), (63, 95), (62, 94)])
def test_output_size_equals_downsampling_the_upsampled_maps(size: tuple[int, int]) -> None:
    # Native stride-4 maps decoded straight to a full-size id map must equal
    # downsample=4 on their nearest upsampling: the block centres are then exactly the
    # native pixels (also in cropped last blocks). The two paths read the same values
    # through different copies and matmul blocks, so they may round differently: the
    # embedding noise (0.02) keeps every decision far from its threshold, and the ids
    # are compared up to a few pixels, areas to within as many blocks.
    height, width = size
    scene = make_scene([(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)], noise=0.02, seed=7)
    native, up = native_and_upsampled(scene, height, width)
    result = decode_panoptic(native, *scene.classes(), LOOSE, stride=4.0, output_size=(height, width))
    expected = decode_panoptic(up, *scene.classes(), loose(downsample=4))
    check_valid_result(result, height, width)
    assert len(result.segments_info) >= 4
    assert_same_decode(result, expected, max_pixel_fraction=1e-3, area_slack=16 * 4)
    for got, ref in zip(result.segments_info, expected.segments_info, strict=True):
        assert got["bbox"] == pytest.approx(ref["bbox"], abs=4)


def test_output_size_composes_with_downsample() -> None:
    # downsample=2 on stride-4 maps = blocks of 8 output pixels: the same as
    # downsample=8 on the nearest-upsampled maps (block centre 8j+4 lies in native
    # pixel 2j+1, the centre downsample=2 samples).
    scene = make_scene([(12, 6, 40, 46, 2), (12, 46, 40, 90, 2), (42, 20, 64, 60, 3)])
    native, up = native_and_upsampled(scene, 64, 96)
    result = decode_panoptic(native, *scene.classes(), loose(downsample=2), stride=4.0, output_size=(64, 96))
    expected = decode_panoptic(up, *scene.classes(), loose(downsample=8))
    check_valid_result(result, 64, 96)
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
            outputs = HLEOutputs(*(t.clone() for t in scene.outputs()[:4]))
            result = decode_panoptic(outputs, *scene.classes(), loose(downsample=4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(result.panoptic, scene.decode(loose(downsample=4)).panoptic)


@pytest.mark.parametrize(
    ("stride", "size", "message"),
    [(2.5, (40, 60), "integer stride"), (4.0, (60, 96), "does not fit"), (4.0, (64, 100), "does not fit"),
     (4.0, (64,), "must be \\(height, width\\)"), (0.0, None, "stride and coord_scale must be > 0")],
)
def test_output_size_errors_name_the_problem(stride: float, size: tuple | None, message: str) -> None:
    scene = make_scene(BOXES, height=16, width=24)
    with pytest.raises(ValueError, match=message):
        scene.decode(stride=stride, output_size=size)


def test_float64_inputs_give_the_same_result() -> None:
    scene = make_scene(BOXES)
    single = scene.decode()
    double = scene.map(torch.Tensor.double).decode()
    assert torch.equal(single.panoptic, double.panoptic)
    assert [s["area"] for s in single.segments_info] == [s["area"] for s in double.segments_info]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("factor", [1, 4])
def test_half_precision_inputs_recover_the_scene(dtype: torch.dtype, factor: int) -> None:
    # AMP inference hands over bf16/fp16 maps; the decoder must take them as they
    # are (bf16 has no NumPy view, so the block-centre copy falls back to torch).
    scene = make_scene(BOXES)
    result = scene.map(lambda t: t.to(dtype)).decode(loose(downsample=factor))
    check_valid_result(result, 64, 96)
    # Clean clusters: the same segmentation as the float32 decode at the same factor.
    assert torch.equal(result.panoptic, scene.decode(loose(downsample=factor)).panoptic)
    if factor == 1:
        match(result, gt_segments(scene), min_iou=1.0)


def test_float16_far_from_every_class_keeps_psi_finite() -> None:
    # Sky pixels far from every class mean (antipodal to road, nearly orthogonal to the
    # rest) with class sigmas 0.15: their best logit is about -20, whose exp underflows
    # in float16 (tiny ~6e-5), so psi must be taken with the row maximum subtracted.
    # Sky still wins by a logit gap of 2.2: psi = 1 / (1 + 3 e^-2.2) ~ 0.75.
    scene = make_scene(BOXES)
    scene.class_sigma = torch.full((NUM_CLASSES,), 0.15)
    far = F.normalize(-scene.class_means[1] + 0.1 * scene.class_means[0], dim=0)
    scene.embedding[:, 0:4, :] = far[:, None, None]
    for dtype in (torch.float16, torch.float32):
        result = scene.map(lambda t: t.to(dtype)).decode()  # noqa: B023
        check_valid_result(result, 64, 96)
        sky = next(s for s in result.segments_info if s["category_id"] == 0)
        assert (result.panoptic[0:4] == sky["id"]).all()
        assert 0.3 < sky["score"] <= 1.0


def test_thread_count_does_not_change_the_result() -> None:
    # The block-centre copy goes through NumPy on one thread and through torch on
    # several, and BLAS may split its matmuls differently: the decisions (clean
    # clusters, wide margins) must agree exactly, the scores to rounding.
    scene = make_scene(BOXES)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([scene.decode(loose(downsample=f)) for f in (1, 2, 4)])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one.panoptic, two.panoptic)
        assert_same_decode(one, two)
        assert [s["bbox"] for s in one.segments_info] == [s["bbox"] for s in two.segments_info]


def test_channels_last_embedding_gives_the_same_result() -> None:
    scene = make_scene(BOXES)
    strided = scene.embedding.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert not strided.is_contiguous()
    outputs = scene.outputs()._replace(embedding=strided)
    for f in (1, 2):
        result = decode_panoptic(outputs, *scene.classes(), loose(downsample=f))
        assert torch.equal(result.panoptic, scene.decode(loose(downsample=f)).panoptic)


def test_degenerate_configurations() -> None:
    scene = make_scene(BOXES)
    # No thing classes at all: every pixel is stuff of its nearest class.
    no_things = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    result = decode_panoptic(scene.outputs(), *scene.classes(no_things), LOOSE)
    check_valid_result(result, 64, 96, is_thing=no_things)
    assert not any(s["isthing"] for s in result.segments_info) and (result.panoptic > 0).all()
    # Only thing classes: sky and road pixels become unclaimed thing pixels (void).
    all_things = torch.ones(NUM_CLASSES, dtype=torch.bool)
    result = decode_panoptic(scene.outputs(), *scene.classes(all_things), LOOSE)
    check_valid_result(result, 64, 96, is_thing=all_things)
    assert sum(s["isthing"] for s in result.segments_info) == len(BOXES)
    # No seeds allowed: every thing pixel is void, stuff is untouched.
    result = scene.decode(loose(max_instances=0))
    check_valid_result(result, 64, 96)
    assert (result.panoptic[scene.instance > 0] == 0).all()
    # A one-row image, and a downsampling factor larger than the image.
    row = make_scene([(0, 10, 1, 30, 2)], height=1, width=96)
    check_valid_result(row.decode(), 1, 96)
    check_valid_result(row.decode(loose(downsample=8)), 1, 96)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("factor", [1, 4])
def test_cuda_equals_cpu(factor: int) -> None:
    scene = make_scene(BOXES)
    cpu = scene.decode(loose(downsample=factor))
    gpu = scene.map(torch.Tensor.cuda)
    result = decode_panoptic(gpu.outputs(), gpu.class_means, gpu.class_sigma, IS_THING.cuda(), loose(downsample=factor))
    assert result.panoptic.is_cuda
    assert torch.equal(result.panoptic.cpu(), cpu.panoptic)
    assert_same_decode(result._replace(panoptic=result.panoptic.cpu()), cpu)


def test_nan_pixels_do_not_crash() -> None:
    # Fault injection: NaN embeddings / seeds must give a valid (if poorer) result.
    scene = make_scene(BOXES)
    scene.embedding[:, 15:18, 15:18] = float("nan")
    scene.embedding[:, 40:44, 0:5] = float("nan")
    scene.seed[0, 50:52, 70:72] = float("nan")
    result = scene.decode()
    check_valid_result(result, 64, 96)
    assert (result.panoptic[40:44, 0:5] == 0).all()  # NaN psi: below any stuff threshold


def test_semantic_logits_path_uses_given_logits() -> None:
    scene = make_scene(BOXES)
    # The separate branch says "road" on the top half and "sky" on the bottom half.
    logits = torch.full((NUM_CLASSES, 64, 96), -5.0)
    logits[1, :32] = 5.0
    logits[0, 32:] = 5.0
    thing = scene.instance > 0
    logits[:, thing] = -5.0
    logits[scene.semantic[thing], thing] = 5.0
    result = decode_panoptic(scene.outputs(logits), *scene.classes(), LOOSE)
    check_valid_result(result, 64, 96)
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
    outputs = scene.outputs()._replace(embedding=embedding)
    result = decode_panoptic(outputs, means, scene.class_sigma, IS_THING, LOOSE, split_embedding=True)
    check_valid_result(result, 64, 96)
    match(result, gt_segments(scene), min_iou=1.0)
    # Instance view is the second half: identical instance halves merge into one.
    flat = embedding.clone()
    flat[10:] = F.normalize(torch.ones(10), dim=0)[:, None, None] / 2**0.5
    merged = decode_panoptic(outputs._replace(embedding=flat), means, scene.class_sigma, IS_THING, LOOSE,
                             split_embedding=True)
    assert sum(s["isthing"] for s in merged.segments_info) < len(BOXES)


def test_coordinates_follow_stride_and_coord_scale() -> None:
    # Same instance embedding on both halves of a wide box, seeds at both ends:
    # whether they merge depends only on their distance in coordinate units.
    scene = make_scene([(10, 2, 30, 94, 2)])
    scene.seed.zero_()
    scene.seed[0, 20, 10] = scene.seed[0, 20, 85] = 0.9
    distance = 75 * 1.0 / 64  # columns apart x default coord scale
    # Phi = exp(-distance^2 / 2) ~ 0.5 at the default scale; stride 0.5 halves the distance.
    assert torch.exp(torch.tensor(-(distance * 0.5) ** 2 / 2)) > 0.5 > torch.exp(torch.tensor(-(distance * 2) ** 2 / 2))
    for stride, coord_scale, instances in ((0.5, 1 / 64, 1), (2.0, 1 / 64, 2), (1.0, 1 / 128, 1), (1.0, 1 / 32, 2)):
        result = scene.decode(stride=stride, coord_scale=coord_scale)
        assert sum(s["isthing"] for s in result.segments_info) == instances


def test_chunk_size_does_not_change_the_decisions() -> None:
    scene = make_scene(BOXES)
    reference = scene.decode(loose(instance_score="mean_phi"))
    for chunk in (13, 96, 1000):
        result = scene.decode(loose(instance_score="mean_phi"), chunk=chunk)
        assert torch.equal(result.panoptic, reference.panoptic)
        assert_same_decode(result, reference)


def test_decode_batch_equals_decoding_each_image() -> None:
    scene = make_scene(BOXES)
    outputs = HLEOutputs(
        embedding=torch.stack([scene.embedding, scene.embedding.flip(-1)]),
        sigma=torch.stack([scene.sigma] * 2),
        spatial_sigma=torch.stack([scene.spatial_sigma] * 2),
        seed=torch.stack([scene.seed, scene.seed.flip(-1)]),
    )
    batch = decode_batch(outputs, *scene.classes(), LOOSE, stride=2.0)
    assert len(batch) == 2
    single = scene.decode(stride=2.0)
    assert torch.equal(batch[0].panoptic, single.panoptic)
    assert batch[0].segments_info == single.segments_info
    flipped = HLEOutputs(scene.embedding.flip(-1), scene.sigma, scene.spatial_sigma, scene.seed.flip(-1))
    assert torch.equal(batch[1].panoptic, decode_panoptic(flipped, *scene.classes(), LOOSE, stride=2.0).panoptic)


def test_decode_batch_passes_per_image_logits_and_output_size() -> None:
    scene = make_scene(BOXES)
    logits = torch.randn(2, NUM_CLASSES, 16, 24, generator=torch.Generator().manual_seed(1))
    native = HLEOutputs(*(torch.stack([t[:, 2::4, 2::4]] * 2) for t in scene.outputs()[:4]), logits)
    batch = decode_batch(native, *scene.classes(), LOOSE, stride=4.0, output_size=(64, 96))
    for b in range(2):
        one = HLEOutputs(*(t[b] for t in native))
        expected = decode_panoptic(one, *scene.classes(), LOOSE, stride=4.0, output_size=(64, 96))
        assert torch.equal(batch[b].panoptic, expected.panoptic) and batch[b].panoptic.shape == (64, 96)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(embedding=torch.zeros(10, 64)), "outputs.embedding must be one image's float"),
        (dict(embedding=torch.zeros(10, 64, 96, dtype=torch.long)), "outputs.embedding must be one image's float"),
        (dict(sigma=torch.ones(1, 64, 95)), "outputs.sigma must be"),
        (dict(seed=torch.ones(64, 96)), "outputs.seed must be"),
        (dict(semantic_logits=torch.zeros(4, 64, 96)), "outputs.semantic_logits must be"),
        (dict(class_means=torch.zeros(5, 9)), "class_means must be"),
        (dict(class_means=torch.zeros(0, 10), class_sigma=torch.ones(0), is_thing=torch.ones(0, dtype=torch.bool)),
         "at least one class"),
        (dict(class_sigma=torch.ones(4)), "class_sigma must be"),
        (dict(is_thing=torch.ones(5)), "is_thing must be"),
        (dict(split_embedding=True, embedding=torch.zeros(9, 64, 96), class_means=torch.zeros(5, 9)), "even D"),
        (dict(chunk=0), "chunk must be"),
        (dict(params=dict(downsample=2)), "params must be a DecoderParams"),
    ],
)
def test_errors_name_the_argument(change: dict, message: str) -> None:
    scene = make_scene(BOXES)
    fields = scene.outputs()._asdict()
    outputs = HLEOutputs(**{k: change.pop(k, v) for k, v in fields.items()})
    classes = [change.pop(k, v) for k, v in zip(("class_means", "class_sigma", "is_thing"), scene.classes())]
    params = change.pop("params", LOOSE)
    with pytest.raises((ValueError, TypeError), match=message):
        decode_panoptic(outputs, *classes, params, **change)


def test_decode_batch_rejects_unbatched() -> None:
    scene = make_scene(BOXES)
    with pytest.raises(ValueError, match="B, D, H, W"):
        decode_batch(scene.outputs(), *scene.classes())
