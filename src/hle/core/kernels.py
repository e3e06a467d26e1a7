"""Embedding kernels shared by the HLE loss and the panoptic decoder.

This module owns the geometry of the embedding space and the one implementation of each
kernel equation: the cosine distance on the unit hypersphere (Sec. 3.4), the Gaussian
score of Eq. (7) as a linear form in the embedding, the instance kernel of Eq. (8) as a
linear form in the features ``[e, rho, |rho|^2, 1]``, the nearest-class-mean logits of
Eq. (9) and the pixel coordinate grid. The loss and the decoder both build their kernels
from :func:`gaussian_linear_form` and :func:`instance_linear_form`; the dense, grid and
chunked evaluations below (and the decoder's chunked stages) only apply those forms.
Everything is pixel-major: flattened embeddings are ``[N, D]`` (N pixels, D dimensions)
and kernels against K centres return ``[K, N]``. No I/O, no module state.
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

#: Features of the instance linear form beyond the embedding: ``rho_row, rho_col, |rho|^2, 1``.
SPATIAL_FEATURES = 4


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
    rows = axis_coordinates(height, stride=stride, coord_scale=coord_scale, device=device, dtype=dtype)
    cols = axis_coordinates(width, stride=stride, coord_scale=coord_scale, device=device, dtype=dtype)
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
        can round a cosine to just above 1 (it does on some CPUs' BLAS kernels).
    """
    return (1.0 - normalize_rows(centers) @ embeddings.transpose(0, 1)).clamp(0.0, 2.0)


# ----------------------------------------------------------------------------- Eq. (7), (9)
def gaussian_linear_form(means: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (7) as a linear form: ``log p_k(e) = e @ weight[:, k] + bias[k]`` for a unit ``e``.

    ``log p_k(e) = -d_cos(e, mu_k) / (2 sigma_k^2) = e . mu_hat_k / (2 sigma_k^2) - 1 / (2 sigma_k^2)``.
    With class means and class sigmas these are the logits of Eq. (9); with instance
    means and sigmas, the embedding part of Eq. (8) (:func:`instance_linear_form`).

    Args:
        means: ``[K, D]`` centres (normalised here).
        sigma: ``[K]`` positive sigmas.

    Returns:
        ``(weight [D, K] contiguous, bias [K])``.
    """
    inv = 0.5 / (sigma * sigma)
    weight = (normalize_rows(means) * inv[:, None]).transpose(0, 1).contiguous()
    return weight, -inv


def semantic_logits(
    embeddings: torch.Tensor, class_means: torch.Tensor, class_sigma: torch.Tensor
) -> torch.Tensor:
    """Logits whose softmax over classes is psi_k(e_i) of Eq. (9).

    ``psi_k = p_k / sum_c p_c`` with ``p_k`` of Eq. (7), so ``log p_k`` (the linear form of
    :func:`gaussian_linear_form`) are exactly softmax logits, and psi lies in ``(0, 1]``
    whatever their rounding. One ``addmm``: a single pass over ``[C, N]`` forward and a
    matmul backward.

    Args:
        embeddings: ``[N, D]`` unit embeddings.
        class_means: ``[C, D]`` persistent class means (normalised here).
        class_sigma: ``[C]`` positive class sigmas.

    Returns:
        ``[C, N]`` logits.
    """
    weight, bias = gaussian_linear_form(class_means, class_sigma)
    # A row-major [C, D] factor keeps addmm's backward on its fast path.
    return torch.addmm(bias[:, None], weight.transpose(0, 1).contiguous(), embeddings.transpose(0, 1))


# ----------------------------------------------------------------------------- Eq. (8)
def instance_linear_form(
    means: torch.Tensor,
    sigma: torch.Tensor,
    centers: torch.Tensor,
    spatial_sigma: torch.Tensor,
    origin: torch.Tensor,
) -> torch.Tensor:
    """Eq. (8) as a linear form: ``log phi = [e, rho, |rho|^2, 1] @ weight`` (:func:`spatial_features`).

    ``log phi_k(e, x) = -d_cos(e, mu_k) / (2 sigma_k^2) - |x - c_k|^2 / (2 s_k^2)`` with
    ``rho = x - origin``, ``c = c_k - origin`` and ``b_k = 1 / (2 s_k^2)`` expands to
    ``e . w_k + 2 b_k rho . c - b_k |rho|^2 + (bias_k - b_k |c|^2)`` (``w_k, bias_k`` of
    Eq. 7, :func:`gaussian_linear_form`). The quadratic terms cancel near the centre, so
    the origin should lie among the centres (their mean): the rounding error then scales
    with the spread of the centres, not with their distance from the image corner.

    Args:
        means: ``[K, D]`` instance means (normalised here).
        sigma: ``[K]`` instance sigmas.
        centers: ``[K, 2]`` instance spatial centres (row, col).
        spatial_sigma: ``[K]`` spatial sigmas.
        origin: ``[2]`` origin of ``rho``.

    Returns:
        ``[D + 4, K]`` weights (rows: embedding, ``rho_row, rho_col, |rho|^2, 1``).
    """
    weight, bias = gaussian_linear_form(means, sigma)
    centred = centers - origin                                               # [K, 2]
    b = (0.5 / (spatial_sigma * spatial_sigma))[:, None]                     # [K, 1]
    constant = bias[:, None] - b * centred.pow(2).sum(dim=1, keepdim=True)
    spatial = torch.cat([2.0 * b * centred, -b, constant], dim=1)            # [K, 4]
    return torch.cat([weight, spatial.transpose(0, 1)])


def spatial_features(coords: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """The spatial features ``[rho, |rho|^2, 1]`` (``rho = coords - origin``) of :func:`instance_linear_form`.

    A pixel's full feature vector is ``[e, spatial_features]``.

    Args:
        coords: ``[N, 2]`` pixel coordinates.
        origin: ``[2]``.

    Returns:
        ``[N, 4]``.
    """
    rho = coords - origin
    return torch.cat([rho, rho.pow(2).sum(dim=1, keepdim=True), torch.ones_like(rho[:, :1])], dim=1)


def instance_log_kernel(
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    means: torch.Tensor,
    sigma: torch.Tensor,
    centers: torch.Tensor,
    spatial_sigma: torch.Tensor,
) -> torch.Tensor:
    """``log phi_l(e_i)`` of Eq. (8) for K instances over N pixels, clamped to ``<= 0``.

    The exponent is ``<= 0`` in exact arithmetic, but ``mu_hat . e`` can round to just
    above 1 (it does on some CPUs' BLAS kernels): clamped, so ``phi`` stays in ``(0, 1]``.
    The expanded quadratic of :func:`instance_linear_form` (origin: the mean centre) loses
    about ``eps |c_k - origin|^2 / (2 s_k^2)`` to rounding: with centres far apart and
    small spatial sigmas, pass float64 (as the decoder's seed merging does) or, on a
    pixel grid, use :func:`grid_instance_log_kernel`.

    Args:
        embeddings: ``[N, D]`` unit embeddings.
        coords: ``[N, 2]`` coordinates.
        means: ``[K, D]`` instance mean embeddings (normalised here).
        sigma: ``[K]`` instance sigmas.
        centers: ``[K, 2]`` instance spatial centres.
        spatial_sigma: ``[K]`` instance spatial sigmas.

    Returns:
        ``[K, N]`` log scores in ``[-inf, 0]``.
    """
    d = embeddings.shape[1]
    origin = centers.mean(dim=0) if centers.shape[0] else centers.new_zeros(2)
    weight = instance_linear_form(means, sigma, centers, spatial_sigma, origin).transpose(0, 1)  # [K, D+4]
    # [e, spatial] @ W as two products, so the embeddings are not copied into a feature
    # matrix; row-major [K, *] factors keep the backward on BLAS's fast path.
    spatial = weight[:, d:].contiguous() @ spatial_features(coords, origin).transpose(0, 1)
    return torch.addmm(spatial, weight[:, :d].contiguous(), embeddings.transpose(0, 1)).clamp(max=0.0)


def instance_kernel(
    embeddings: torch.Tensor,
    coords: torch.Tensor,
    means: torch.Tensor,
    sigma: torch.Tensor,
    centers: torch.Tensor,
    spatial_sigma: torch.Tensor,
) -> torch.Tensor:
    """Instance score phi_l(e_i) of Eq. (8): ``exp`` of :func:`instance_log_kernel`.

    Returns:
        ``[K, N]`` scores in ``(0, 1]`` (``0`` only where the exponent underflows).
    """
    return instance_log_kernel(embeddings, coords, means, sigma, centers, spatial_sigma).exp()


def grid_instance_log_kernel(
    embeddings: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    means: torch.Tensor,
    sigma: torch.Tensor,
    centers: torch.Tensor,
    spatial_sigma: torch.Tensor,
) -> torch.Tensor:
    """:func:`instance_log_kernel` on a pixel grid (the loss's layout), in three passes over ``[K, N]``.

    The spatial part of :func:`instance_linear_form` separates into a ``[K, H]`` row part
    and a ``[K, W]`` column part (one broadcast add), and the embedding part is one
    ``addmm`` on top of it. The two small parts are evaluated in float64 and split so
    that each is small near its centre, so the cancelling quadratic terms cost no
    precision in float32.

    Args:
        embeddings: ``[N, D]`` unit embeddings, ``N = H * W`` in row-major order.
        rows: ``[H]`` row coordinates; cols: ``[W]`` column coordinates.
        means: ``[K, D]`` instance means (normalised here).
        sigma, spatial_sigma: ``[K]`` positive instance sigmas.
        centers: ``[K, 2]`` instance centres (row, col).

    Returns:
        ``[K, N]`` log scores in ``[-inf, 0]`` (``<= 0`` by construction).
    """
    k, d = means.shape
    f64 = torch.float64
    origin = centers.to(f64).mean(dim=0)
    weight = instance_linear_form(means.to(f64), sigma.to(f64), centers.to(f64), spatial_sigma.to(f64), origin)
    rho_r, rho_c = rows.to(f64)[None, :] - origin[0], cols.to(f64)[None, :] - origin[1]
    w_r, w_c, w_q, w_1 = (w[:, None] for w in weight[d:])                      # [K, 1] each
    # The column's share of the constant, -b |c_col|^2 = w_c^2 / (4 w_q), goes to the
    # column part: each part is then small near its centre and keeps its precision
    # when cast to the embedding's dtype.
    col_const = w_c * w_c / (4.0 * w_q)
    row_part = (w_1 - col_const) + w_r * rho_r + w_q * rho_r * rho_r           # [K, H]
    col_part = col_const + w_c * rho_c + w_q * rho_c * rho_c                   # [K, W]
    dtype = embeddings.dtype
    spatial = (row_part.to(dtype)[:, :, None] + col_part.to(dtype)[:, None, :]).reshape(k, -1)
    # A row-major [K, D] factor: addmm's backward is several times slower with a
    # column-major one at these shapes (K small, N large).
    log_phi = torch.addmm(spatial, weight[:d].transpose(0, 1).to(dtype).contiguous(), embeddings.transpose(0, 1))
    return log_phi.clamp_(max=0.0)


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
