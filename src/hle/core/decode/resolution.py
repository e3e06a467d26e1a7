"""Resolution arithmetic of the decoder: maps -> decode grid -> output id map.

This module owns the three resolutions of a decode (Supplementary C): the network's maps
(``H x W``, at ``stride`` input pixels per map pixel), the decode grid (the maps reduced
by ``downsample = f``: ``ceil(H/f) x ceil(W/f)``) and the output id map (the maps' size,
or ``output_size`` for maps at an integer stride). Each decode pixel covers a block of
``f * scale`` output pixels per side (the last block row and column cropped). It reduces
the maps (:func:`decode_maps`), gives the decode pixels' coordinates and the output
pixels each one covers (:class:`DecodeGrid`) and expands the decoded ids back
(:func:`upsample_ids`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from hle.core.kernels import DEFAULT_COORD_SCALE, axis_coordinates, split_views
from hle.core.types import HLEOutputs

#: dtypes that NumPy shares memory with (not bfloat16).
_NUMPY_DTYPES = frozenset(
    {torch.float16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool}
)


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.copy_(src)`` for a strided ``src`` and a contiguous ``dst`` of one shape.

    On CPU with one intra-op thread and one dtype the copy goes through NumPy, whose
    strided-to-contiguous loops are specialised by item size and beat ``Tensor.copy_``
    on the block centres of a map (docs/benchmarks.md). NumPy copies on one thread, so
    with more torch threads the parallel ``Tensor.copy_`` is used instead.
    """
    same_cpu_dtype = dst.device.type == src.device.type == "cpu" and dst.dtype == src.dtype
    if same_cpu_dtype and dst.dtype in _NUMPY_DTYPES and torch.get_num_threads() == 1:
        np.copyto(dst.detach().numpy(), src.detach().numpy(), casting="no")
    else:
        dst.copy_(src)


def block_centres(x: torch.Tensor, factor: int) -> torch.Tensor | None:
    """The centre pixels of the ``factor x factor`` blocks of ``x`` as a strided view.

    Args:
        x: ``[C, H, W]``.

    Returns:
        ``[C, ceil(H/f), ceil(W/f)]`` view ``x[:, f//2::f, f//2::f]``, or ``None`` when a
        cropped last block has its centre outside the map.
    """
    _, h, w = x.shape
    off = factor // 2
    if (h - 1) % factor < off or (w - 1) % factor < off:
        return None
    return x[:, off::factor, off::factor]


def downsample_maps(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """``[C, H, W] -> [C, ceil(H/f), ceil(W/f)]`` by block-centre sampling or averaging.

    ``"sample"`` takes each block's centre pixel (a cropped last block whose centre
    falls outside the map takes its last pixel); ``"avg"`` averages each block over its
    in-map pixels. ``factor == 1`` returns ``x`` itself.
    """
    if factor == 1:
        return x
    if mode == "avg":
        return F.avg_pool2d(x[None], factor, factor, ceil_mode=True)[0]
    centres = block_centres(x, factor)
    if centres is not None:
        dense = torch.empty(centres.shape, dtype=x.dtype, device=x.device)
        copy_into(dense, centres)
        return dense
    _, h, w = x.shape
    off = factor // 2
    rows = (torch.arange(-(-h // factor), device=x.device) * factor + off).clamp_(max=h - 1)
    cols = (torch.arange(-(-w // factor), device=x.device) * factor + off).clamp_(max=w - 1)
    return x[:, rows][:, :, cols]


def read_at(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """Values of the ``[H, W]`` map ``x`` as :func:`downsample_maps` gives them at decode
    pixels ``(rows, cols)`` (``[K]`` each), without reducing the whole map in ``"sample"`` mode."""
    if factor == 1:
        return x[rows, cols]
    if mode == "avg":
        return downsample_maps(x[None], factor, mode)[0][rows, cols]
    h, w = x.shape
    off = factor // 2
    return x[(rows * factor + off).clamp(max=h - 1), (cols * factor + off).clamp(max=w - 1)]


def block_sizes(size: int, block: int, device: torch.device) -> torch.Tensor:
    """``[ceil(size/block)]`` output pixels covered by each block along one axis."""
    starts = torch.arange(-(-size // block), device=device) * block
    return (starts + block).clamp(max=size) - starts


def upsample_ids(ids: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    """Nearest upsampling of an ``[h, w]`` id map by an integer factor, cropped to ``[height, width]``."""
    if factor == 1:
        return ids
    h, w = ids.shape
    # Columns first ([h, w*f], small), then whole rows repeated: the big write is then
    # row copies, faster than one 4-D strided expand.
    wide = ids[:, :, None].expand(h, w, factor).reshape(h, w * factor)[:, :width]
    return wide[:, None, :].expand(h, factor, width).reshape(h * factor, width)[:height]


@dataclass(frozen=True)
class DecodeGrid:
    """The three resolutions of one decode (built by :func:`decode_grid`).

    Attributes:
        map_size: ``(H, W)`` of the network's maps.
        factor: ``downsample``, map pixels per decode pixel along each axis.
        scale: output pixels per map pixel along each axis (1 without ``output_size``).
        output_size: ``(H_out, W_out)`` of the decoded id map.
        stride: input-image pixels per map pixel.
        coord_scale: coordinate units per input pixel.
    """

    map_size: tuple[int, int]
    factor: int
    scale: int
    output_size: tuple[int, int]
    stride: float
    coord_scale: float

    @property
    def size(self) -> tuple[int, int]:
        """``(h, w)`` of the decode grid: ``ceil(H / f), ceil(W / f)``."""
        return -(-self.map_size[0] // self.factor), -(-self.map_size[1] // self.factor)

    @property
    def block(self) -> int:
        """Output pixels per decode pixel along each axis (``f * scale``)."""
        return self.factor * self.scale

    def coordinates(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``([h], [w])`` row and column coordinates of the decode pixels (input pixels x coord_scale)."""
        h, w = self.size
        step = self.stride * self.factor
        return (
            axis_coordinates(h, stride=step, coord_scale=self.coord_scale, device=device, dtype=dtype),
            axis_coordinates(w, stride=step, coord_scale=self.coord_scale, device=device, dtype=dtype),
        )

    @property
    def divides(self) -> bool:
        """Whether the block divides the output size (every decode pixel covers ``block^2`` pixels)."""
        return self.output_size[0] % self.block == 0 and self.output_size[1] % self.block == 0

    @property
    def weight_scale(self) -> float:
        """Output pixels per decode pixel when :attr:`divides`, else 1 (see :meth:`pixel_weight`)."""
        return float(self.block * self.block) if self.divides else 1.0

    def pixel_weight(self, device: torch.device) -> torch.Tensor | None:
        """``[h * w]`` float64 output pixels covered by each decode pixel, or ``None`` when
        the block :attr:`divides` the output size (each covers :attr:`weight_scale`)."""
        if self.divides:
            return None
        out_h, out_w = self.output_size
        rows, cols = block_sizes(out_h, self.block, device), block_sizes(out_w, self.block, device)
        return (rows[:, None] * cols[None, :]).reshape(-1).double()


def decode_grid(
    map_size: tuple[int, int],
    factor: int,
    *,
    stride: float = 1.0,
    output_size: tuple[int, int] | None = None,
    coord_scale: float = DEFAULT_COORD_SCALE,
) -> DecodeGrid:
    """The :class:`DecodeGrid` of maps of ``map_size`` decoded at ``downsample = factor``.

    Args:
        map_size: ``(H, W)`` of the maps.
        factor: ``downsample >= 1``.
        stride: input pixels per map pixel, ``> 0``.
        output_size: ``(H_out, W_out)`` for maps at an integer ``stride``, with
            ``ceil(H_out / stride) == H`` (and likewise for W); ``None``: the maps' size.
        coord_scale: coordinate units per input pixel, ``> 0``.

    Raises:
        ValueError: a stride, coordinate scale or output size that does not fit, named.
    """
    if not stride > 0 or not coord_scale > 0:
        raise ValueError(f"decode_panoptic: stride and coord_scale must be > 0, got {stride} and {coord_scale}")
    height, width = map_size
    if output_size is None:
        return DecodeGrid((height, width), factor, 1, (height, width), float(stride), float(coord_scale))
    scale = round(stride)
    if scale < 1 or abs(stride - scale) > 1e-6:
        raise ValueError(f"decode_panoptic: output_size needs an integer stride >= 1, got stride={stride}")
    try:
        out_h, out_w = (int(v) for v in output_size)
    except (TypeError, ValueError):
        raise ValueError(f"decode_panoptic: output_size must be (height, width), got {output_size!r}") from None
    if -(-out_h // scale) != height or -(-out_w // scale) != width or out_h < 1 or out_w < 1:
        raise ValueError(
            f"decode_panoptic: output_size {out_h}x{out_w} does not fit maps of {height}x{width} at stride "
            f"{scale} (expected ceil(H_out / {scale}) = {height} and ceil(W_out / {scale}) = {width})"
        )
    return DecodeGrid((height, width), factor, scale, (out_h, out_w), float(stride), float(coord_scale))


class DecodeMaps(NamedTuple):
    """One image's maps on the decode grid (built by :func:`decode_maps`).

    Attributes:
        semantic: ``[Ds, h, w]`` semantic view of the embedding; may be a strided view
            of the full map (its block centres), read once by the semantic stage.
        instance: ``[Di, h, w]`` contiguous instance view, or ``None`` when it equals
            ``semantic`` (the semantic stage then returns the contiguous copy it makes).
        seed: ``[h, w]`` seed scores, in the embedding's dtype.
        logits: ``[C, h, w]`` separate-branch logits, or ``None``.
    """

    semantic: torch.Tensor
    instance: torch.Tensor | None
    seed: torch.Tensor
    logits: torch.Tensor | None


def decode_maps(outputs: HLEOutputs, grid: DecodeGrid, mode: str, split_embedding: bool) -> DecodeMaps:
    """Reduce one image's ``[*, H, W]`` maps to the decode grid (Supplementary C).

    With ``"sample"`` mode and block centres inside the map, the embedding is not copied
    here: the semantic stage reads its strided block centres a few rows at a time.
    ``"avg"`` re-normalises the averaged embeddings. ``split_embedding`` splits the
    (reduced) embedding into its semantic and instance halves (:func:`split_views`).
    """
    f, emb = grid.factor, outputs.embedding
    centres = block_centres(emb, f) if f > 1 and mode == "sample" and not split_embedding else None
    if centres is not None:
        semantic, instance = centres, None
    else:
        reduced = downsample_maps(emb, f, mode)
        if f > 1 and mode == "avg":
            reduced = F.normalize(reduced, dim=0)
        semantic, instance_view = split_views(reduced, split_embedding, dim=0)
        instance = instance_view.contiguous() if split_embedding else None
    seed = downsample_maps(outputs.seed, f, mode)[0].to(emb.dtype)
    logits = outputs.semantic_logits
    if logits is not None:
        logits = downsample_maps(logits, f, mode).to(emb.dtype)
    return DecodeMaps(semantic, instance, seed, logits)
