"""Tests for hle.core.decode.resolution: maps -> decode grid -> output size (Supplementary C)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hle.core.decode import decode_grid, decode_maps, downsample_maps, upsample_ids
from hle.core.decode.resolution import block_centres, copy_into, read_at
from hle.core.types import HLEOutputs

SIZES = [(8, 12), (9, 13), (7, 10), (1, 5), (3, 3)]


def centre_index(size: int, f: int) -> torch.Tensor:
    """Map pixel sampled for each block: its centre, or the last pixel of a cropped block."""
    return torch.tensor([min(j * f + f // 2, size - 1) for j in range(-(-size // f))])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_downsample_sample_takes_block_centres(size: tuple[int, int], f: int) -> None:
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    got = downsample_maps(x, f, "sample")
    rows, cols = centre_index(size[0], f), centre_index(size[1], f)
    assert torch.equal(got, x[:, rows][:, :, cols])
    view = block_centres(x, f)
    fits = all(j * f + f // 2 < n for n in size for j in [-(-n // f) - 1])
    assert (view is not None) == fits
    if fits:
        assert torch.equal(view, got) and view.data_ptr() == x[:, f // 2, f // 2].data_ptr()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("f", [2, 3])
def test_downsample_avg_averages_in_map_pixels(size: tuple[int, int], f: int) -> None:
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = downsample_maps(x, f, "avg")
    for i in range(-(-size[0] // f)):
        for j in range(-(-size[1] // f)):
            block = x[:, i * f : (i + 1) * f, j * f : (j + 1) * f]
            torch.testing.assert_close(got[:, i, j], block.mean(dim=(1, 2)))


@pytest.mark.parametrize("mode", ["sample", "avg"])
def test_read_at_equals_reading_the_downsampled_map(mode: str) -> None:
    x = torch.rand(9, 14, generator=torch.Generator().manual_seed(2))
    rows, cols = torch.tensor([0, 2, 2, 1]), torch.tensor([4, 0, 3, 1])
    for f in (1, 2, 3, 4):
        small = downsample_maps(x[None], f, mode)[0]
        r, c = rows.clamp(max=small.shape[0] - 1), cols.clamp(max=small.shape[1] - 1)
        assert torch.equal(read_at(x, r, c, f, mode), small[r, c])


@pytest.mark.parametrize("out", [(8, 12), (7, 10), (5, 9)])
def test_upsample_ids_is_nearest_and_cropped(out: tuple[int, int]) -> None:
    ids = torch.arange(-(-out[0] // 4) * -(-out[1] // 4), dtype=torch.int32).view(-(-out[0] // 4), -(-out[1] // 4))
    expected = ids.repeat_interleave(4, 0).repeat_interleave(4, 1)[: out[0], : out[1]]
    assert torch.equal(upsample_ids(ids, 4, *out), expected)
    assert upsample_ids(ids, 1, *ids.shape) is ids


@pytest.mark.parametrize(("stride", "factor"), [(1.0, 1), (1.0, 4), (4.0, 1), (4.0, 2), (2.5, 3)])
def test_decode_grid_coordinates_are_block_centres_in_input_pixels(stride: float, factor: int) -> None:
    # Decode pixel j covers map pixels [j f, (j + 1) f), i.e. input pixels
    # [j f s, (j + 1) f s): its coordinate is the centre of that span, times the scale.
    grid = decode_grid((11, 17), factor, stride=stride, coord_scale=0.25)
    rows, cols = grid.coordinates(torch.device("cpu"), torch.float64)
    h, w = grid.size
    assert (h, w) == (-(-11 // factor), -(-17 // factor))
    span = factor * stride
    for coords, n in ((rows, h), (cols, w)):
        expected = torch.tensor([(j * span + (span - 1) / 2) * 0.25 for j in range(n)], dtype=torch.float64)
        torch.testing.assert_close(coords, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("map_size", "factor", "output_size"), [
    ((16, 24), 1, None), ((16, 24), 4, None), ((15, 22), 4, None), ((16, 24), 1, (64, 96)), ((16, 24), 2, (62, 93)),
])
def test_pixel_weight_counts_the_output_pixels_of_each_decode_pixel(
    map_size: tuple[int, int], factor: int, output_size: tuple[int, int] | None
) -> None:
    grid = decode_grid(map_size, factor, stride=4.0 if output_size else 1.0, output_size=output_size)
    h, w = grid.size
    # Brute force: upsample an id per decode pixel to the output size and count.
    ids = upsample_ids(torch.arange(h * w).view(h, w), grid.block, *grid.output_size)
    assert ids.shape == grid.output_size
    counts = torch.bincount(ids.reshape(-1), minlength=h * w).double()
    weight = grid.pixel_weight(torch.device("cpu"))
    got = torch.full((h * w,), grid.weight_scale, dtype=torch.float64) if weight is None else weight * grid.weight_scale
    assert torch.equal(got, counts)
    assert (weight is None) == grid.divides


def test_decode_maps_reads_block_centres_without_copying() -> None:
    gen = torch.Generator().manual_seed(3)
    emb = F.normalize(torch.randn(6, 16, 24, generator=gen), dim=0)
    maps_ = [torch.rand(1, 16, 24, generator=gen) for _ in range(3)]
    outputs = HLEOutputs(emb, *maps_, torch.randn(3, 16, 24, generator=gen))
    maps = decode_maps(outputs, decode_grid((16, 24), 4), "sample", split_embedding=False)
    assert maps.instance is None and maps.semantic.data_ptr() == emb[:, 2, 2].data_ptr()
    assert torch.equal(maps.semantic, emb[:, 2::4, 2::4])
    assert torch.equal(maps.seed, outputs.seed[0, 2::4, 2::4])
    assert torch.equal(maps.logits, outputs.semantic_logits[:, 2::4, 2::4])
    # avg re-normalises; split gives the two re-normalised halves, the instance one contiguous.
    avg = decode_maps(outputs, decode_grid((16, 24), 4), "avg", split_embedding=False)
    torch.testing.assert_close(avg.semantic, F.normalize(F.avg_pool2d(emb[None], 4)[0], dim=0))
    split = decode_maps(outputs, decode_grid((16, 24), 1), "sample", split_embedding=True)
    torch.testing.assert_close(split.semantic, F.normalize(emb[:3], dim=0))
    torch.testing.assert_close(split.instance, F.normalize(emb[3:], dim=0))
    assert split.instance.is_contiguous()


def test_copy_into_through_numpy_equals_torch_copy() -> None:
    src = torch.randn(4, 32, 48)[:, 1::4, 2::4]
    threads = torch.get_num_threads()
    try:
        copies = []
        for n in (1, 2):
            torch.set_num_threads(n)
            dst = torch.empty(src.shape)
            copy_into(dst, src)
            copies.append(dst)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(copies[0], src) and torch.equal(copies[1], src)
