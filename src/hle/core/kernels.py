"""Embedding kernels shared by the HLE loss and the panoptic decoder.

This module owns the geometry of the embedding space: cosine distance on the unit
hypersphere, the Gaussian score of Eq. (7), the spatial term of Eq. (8), the
nearest-class-mean logits of Eq. (9) and the pixel coordinate grid. Everything is
pixel-major: flattened embeddings are ``[N, D]`` (N pixels, D dimensions) and
kernels against K centres return ``[K, N]``. No I/O, no module state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Pixel coordinates are measured in input-image pixels times this factor, so a
#: spatial sigma of 1.0 means 64 pixels. Coordinates never depend on the image or
#: crop size (translation invariant), which keeps the learned spatial sigma valid
#: for crops, full images and downsampled decoding alike.
DEFAULT_COORD_SCALE = 1.0 / 64.0

#: Label used for ignored pixels in semantic targets.
IGNORE_LABEL = 255


def axis_coordinates(
    size: int,
    *,
    stride: float = 1.0,
    coord_scale: float = DEFAULT_COORD_SCALE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Coordinates of the ``size`` pixel centres along one axis (see :func:`pixel_coordinates`).

    Returns:
        ``[size]`` tensor: ``((i + 0.5) * stride - 0.5) * coord_scale`` for pixel ``i``.
    """
    return ((torch.arange(size, device=device, dtype=dtype) + 0.5) * stride - 0.5) * coord_scale


def pixel_coordinates(
    height: int,
    width: int,
    *,
    stride: float = 1.0,
    coord_scale: float = DEFAULT_COORD_SCALE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the (row, col) position of every pixel of an ``height x width`` map.

    Args:
        height, width: size of the map (any size; nothing is hard-coded).
        stride: how many input pixels one map pixel spans (2 for a map at half
            resolution). Positions are pixel centres in input-image pixels.
        coord_scale: multiplier turning input pixels into coordinate units.

    Returns:
        ``[height * width, 2]`` tensor, row-major order matching ``x.flatten(-2)``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"pixel_coordinates: expected a positive size, got {height}x{width}")
    kwargs = dict(stride=stride, coord_scale=coord_scale, device=device, dtype=dtype)
    rows, cols = axis_coordinates(height, **kwargs), axis_coordinates(width, **kwargs)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)


def check_class_parameters(
    caller: str, class_means: torch.Tensor, class_sigma: torch.Tensor, is_thing: torch.Tensor, dim: int
) -> int:
    """Check the per-class tensors the loss and the decoder share; return ``C``.

    Raises:
        ValueError: naming ``caller``, the tensor, the expected and the given shape:
            ``class_means [C, dim]``, ``class_sigma [C]``, ``is_thing [C]`` bool.
    """
    if class_means.dim() != 2 or class_means.shape[1] != dim:
        raise ValueError(f"{caller}: class_means must be [C, D] with D={dim}, got {tuple(class_means.shape)}")
    c = class_means.shape[0]
    if tuple(class_sigma.shape) != (c,):
        raise ValueError(f"{caller}: class_sigma must be [C] = ({c},), got {tuple(class_sigma.shape)}")
    if tuple(is_thing.shape) != (c,) or is_thing.dtype != torch.bool:
        raise ValueError(
            f"{caller}: is_thing must be a bool [C] = ({c},) tensor, got {tuple(is_thing.shape)} {is_thing.dtype}"
        )
    return c


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise the last dimension (means of unit vectors are not unit)."""
    return F.normalize(x, dim=-1, eps=eps)


def cosine_distance(embeddings: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Cosine distance ``d_cos(e, mu) = 1 - e^T mu / |mu|`` (Sec. 3.4).

    Args:
        embeddings: ``[N, D]`` unit-length pixel embeddings.
        centers: ``[K, D]`` centres (instance or class means), normalised here.

    Returns:
        ``[K, N]`` distances in ``[0, 2]``, clamped there: a matmul of unit vectors
        can round a cosine to just above 1 (it does on some CPUs' BLAS kernels), and
        a negative distance would push every kernel built on it above 1.
    """
    return (1.0 - normalize_rows(centers) @ embeddings.transpose(0, 1)).clamp(0.0, 2.0)


def gaussian_log_score(distance: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Log of Eq. (7): ``-d / (2 sigma^2)``.

    Args:
        distance: ``[K, N]`` cosine distances.
        sigma: ``[K]`` (one per centre) or ``[K, N]`` positive variances.
    """
    if sigma.dim() == 1:
        sigma = sigma[:, None]
    return -distance / (2.0 * sigma * sigma)


def spatial_log_score(
    coords: torch.Tensor, centers: torch.Tensor, spatial_sigma: torch.Tensor
) -> torch.Tensor:
    """Log of the spatial factor of Eq. (8): ``-|rho_i - rho_l|^2 / (2 sigma_s^2)``.

    Args:
        coords: ``[N, 2]`` pixel coordinates (see :func:`pixel_coordinates`).
        centers: ``[K, 2]`` instance centres in the same units.
        spatial_sigma: ``[K]`` positive spatial sigmas.

    Returns:
        ``[K, N]``.
    """
    sq = (coords[None, :, :] - centers[:, None, :]).pow(2).sum(-1)
    return -sq / (2.0 * spatial_sigma[:, None] ** 2)


def instance_kernel(
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    means: torch.Tensor,
    sigma: torch.Tensor,
    centers: torch.Tensor,
    spatial_sigma: torch.Tensor,
) -> torch.Tensor:
    """Instance score phi_l(e_i) of Eq. (8) for K instances over N pixels.

    Args:
        embeddings: ``[N, D]`` unit embeddings.
        coords: ``[N, 2]`` coordinates.
        means: ``[K, D]`` instance mean embeddings (normalised here).
        sigma: ``[K]`` instance sigmas.
        centers: ``[K, 2]`` instance spatial centres.
        spatial_sigma: ``[K]`` instance spatial sigmas.

    Returns:
        ``[K, N]`` scores in ``(0, 1]`` (both log factors are ``<= 0`` by construction).
    """
    log_p = gaussian_log_score(cosine_distance(embeddings, means), sigma)
    return torch.exp(log_p + spatial_log_score(coords, centers, spatial_sigma))


def semantic_logits(
    embeddings: torch.Tensor, class_means: torch.Tensor, class_sigma: torch.Tensor
) -> torch.Tensor:
    """Logits whose softmax over classes is psi_k(e_i) of Eq. (9).

    ``psi_k = p_k / sum_c p_c`` with ``p_k = exp(-d_cos(e, mu_k) / (2 sigma_k^2))``,
    so ``log p_k`` are exactly softmax logits.

    Args:
        embeddings: ``[N, D]`` unit embeddings.
        class_means: ``[C, D]`` persistent class means (normalised here).
        class_sigma: ``[C]`` positive class sigmas.

    Returns:
        ``[C, N]`` logits.
    """
    return gaussian_log_score(cosine_distance(embeddings, class_means), class_sigma)


def split_views(embedding: torch.Tensor, split: bool, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic and instance views of an embedding (ablation "split embedding space").

    With ``split=False`` both views are the embedding itself (the paper's joint,
    hierarchical space). With ``split=True`` the first half of the channels serves
    semantics and the second half instances, each re-normalised to unit length.

    Args:
        embedding: tensor with the embedding channels along ``dim`` (e.g. ``[B, D, H, W]``).
    """
    if not split:
        return embedding, embedding
    d = embedding.shape[dim]
    if d < 2 or d % 2:
        raise ValueError(f"split embedding needs an even dimension >= 2, got D={d}")
    sem, ins = embedding.split(d // 2, dim=dim)
    return F.normalize(sem, dim=dim), F.normalize(ins, dim=dim)
