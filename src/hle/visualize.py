"""Pictures of panoptic results and embedding spaces (no metric code here).

This module owns turning tensors into RGB images: a panoptic id map coloured by class
with per-instance shades and outlines, an overlay on the input, the D-dimensional
embedding shown as RGB (PCA to 3 components or the first 3 dimensions, as in the
paper's Fig. 3), and the paper's Fig. 1 heatmap: the cosine distance of every pixel's
embedding to one chosen pixel, which is marked in red. Every function returns a
``[H, W, 3]`` uint8 NumPy array; :func:`save_png` and :func:`save_panel` write files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "class_palette",
    "colorize_panoptic",
    "overlay",
    "embedding_to_rgb",
    "distance_map",
    "distance_heatmap",
    "denormalize_image",
    "save_png",
    "save_panel",
    "save_curve",
]


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def class_palette(num_classes: int, colors: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """``[C, 3]`` uint8 colours: the given ones, else evenly spaced hues.

    Args:
        num_classes: C.
        colors: optional per-class ``[r, g, b]`` (e.g. from dataset metadata).
    """
    if colors is not None:
        pal = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
        if len(pal) < num_classes:
            raise ValueError(f"class_palette: {len(pal)} colours given for {num_classes} classes")
        return np.clip(pal[:num_classes], 0, 255).astype(np.uint8)
    import colorsys

    rgb = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95) for i in range(num_classes)]
    return (np.asarray(rgb) * 255).round().astype(np.uint8)


def _boundaries(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    edge[:-1, :] |= ids[1:, :] != ids[:-1, :]
    return edge


def colorize_panoptic(
    panoptic: torch.Tensor | np.ndarray,
    segments_info: list[dict],
    palette: np.ndarray,
    *,
    outline: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Colour a panoptic id map: stuff in its class colour, things in shades of it.

    Args:
        panoptic: ``[H, W]`` segment ids (0 = void, drawn black).
        segments_info: dicts with ``id``, ``category_id`` (index into ``palette``) and
            ``isthing``.
        palette: ``[C, 3]`` uint8 class colours (:func:`class_palette`).
        outline: draw thing boundaries in white.
        seed: seeds the per-instance shade so pictures are reproducible.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    ids = _as_numpy(panoptic).astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"colorize_panoptic: panoptic must be [H, W], got shape {ids.shape}")
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    things = np.zeros(ids.shape, dtype=bool)
    for seg in segments_info:
        mask = ids == int(seg["id"])
        color = palette[int(seg["category_id"]) % len(palette)].astype(np.int64)
        if seg.get("isthing", False):
            color = np.clip(color + rng.integers(-60, 61, size=3), 0, 255)
            things |= mask
        out[mask] = color
    if outline:
        edge = _boundaries(ids) & (things | np.roll(things, 1, 0) | np.roll(things, 1, 1))
        out[edge] = 255
    return out


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``colors`` over ``image`` (both ``[H, W, 3]`` uint8); black = transparent."""
    img = np.asarray(image, dtype=np.float32)
    col = np.asarray(colors, dtype=np.float32)
    if img.shape != col.shape:
        raise ValueError(f"overlay: image {img.shape} and colors {col.shape} must have the same shape")
    painted = col.sum(-1, keepdims=True) > 0
    blended = np.where(painted, (1 - alpha) * img + alpha * col, img)
    return blended.round().clip(0, 255).astype(np.uint8)


def embedding_to_rgb(embedding: torch.Tensor | np.ndarray, method: str = "pca") -> np.ndarray:
    """Show a ``[D, H, W]`` embedding as RGB (Fig. 3, bottom row).

    Args:
        embedding: ``[D, H, W]`` unit embeddings.
        method: ``"pca"`` projects on the 3 principal components; ``"first3"`` takes
            dimensions 0-2. Each channel is stretched to ``[0, 255]``.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    e = _as_numpy(embedding).astype(np.float64)
    if e.ndim != 3:
        raise ValueError(f"embedding_to_rgb: embedding must be [D, H, W], got shape {e.shape}")
    d, h, w = e.shape
    flat = e.reshape(d, -1).T  # [N, D]
    if method == "pca":
        centred = flat - flat.mean(0, keepdims=True)
        # Principal axes from the D x D covariance: cheap for any image size.
        cov = centred.T @ centred / max(len(centred) - 1, 1)
        vals, vecs = np.linalg.eigh(cov)
        axes = vecs[:, np.argsort(vals)[::-1][:3]]
        proj = centred @ axes
    elif method == "first3":
        proj = flat[:, :3]
    else:
        raise ValueError(f"embedding_to_rgb: method must be 'pca' or 'first3', got {method!r}")
    if proj.shape[1] < 3:
        proj = np.concatenate([proj, np.zeros((len(proj), 3 - proj.shape[1]))], 1)
    lo, hi = proj.min(0, keepdims=True), proj.max(0, keepdims=True)
    proj = (proj - lo) / np.maximum(hi - lo, 1e-12)
    return (proj.reshape(h, w, 3) * 255).round().astype(np.uint8)


def distance_map(embedding: torch.Tensor | np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Cosine distance ``1 - e_i^T e_t`` of every pixel to pixel ``target`` (Fig. 1).

    Args:
        embedding: ``[D, H, W]`` unit embeddings.
        target: ``(row, col)`` of the chosen pixel.

    Returns:
        ``[H, W]`` float distances in ``[0, 2]``.
    """
    e = _as_numpy(embedding).astype(np.float64)
    if e.ndim != 3:
        raise ValueError(f"distance_map: embedding must be [D, H, W], got shape {e.shape}")
    r, c = target
    if not (0 <= r < e.shape[1] and 0 <= c < e.shape[2]):
        raise ValueError(f"distance_map: target {target} outside the {e.shape[1]}x{e.shape[2]} map")
    t = e[:, r, c]
    t = t / max(np.linalg.norm(t), 1e-12)
    return 1.0 - np.tensordot(t, e, axes=(0, 0))


def distance_heatmap(
    embedding: torch.Tensor | np.ndarray,
    target: tuple[int, int],
    *,
    cmap: str = "magma_r",
    marker_radius: int = 3,
) -> np.ndarray:
    """The paper's Fig. 1: a heatmap of :func:`distance_map` with the target in red.

    Near pixels are bright. The colour scale spans ``[0, max distance]``.

    Returns:
        ``[H, W, 3]`` uint8.
    """
    import matplotlib

    dist = distance_map(embedding, target)
    scale = max(float(dist.max()), 1e-6)
    rgba = matplotlib.colormaps[cmap](np.clip(dist / scale, 0, 1))
    out = (rgba[..., :3] * 255).round().astype(np.uint8)
    r, c = target
    h, w = dist.shape
    rr, cc = np.ogrid[:h, :w]
    disk = (rr - r) ** 2 + (cc - c) ** 2 <= marker_radius**2
    ring = disk & ((rr - r) ** 2 + (cc - c) ** 2 >= max(marker_radius - 1, 0) ** 2)
    out[disk] = (255, 0, 0)
    out[ring] = (255, 255, 255)
    out[r, c] = (255, 0, 0)
    return out


def denormalize_image(
    image: torch.Tensor | np.ndarray,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> np.ndarray:
    """Undo ``(x/255 - mean) / std`` on a ``[3, H, W]`` image; returns ``[H, W, 3]`` uint8."""
    x = _as_numpy(image).astype(np.float64)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"denormalize_image: image must be [3, H, W], got shape {x.shape}")
    x = x * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    return (x.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an ``[H, W, 3]`` (or ``[H, W]``) uint8 array as PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def save_panel(images: dict[str, np.ndarray], path: str | Path, *, columns: int = 3, scale: float = 3.0) -> Path:
    """A titled grid of images (matplotlib), e.g. input / prediction / ground truth."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(images)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    first = next(iter(images.values()))
    aspect = first.shape[1] / first.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale * aspect, rows * scale), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, images.items()):
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curve(
    steps: Sequence[int], series: dict[str, Sequence[float]], path: str | Path, *, xlabel: str = "training step",
    ylabel: str = "", title: str = "",
) -> Path:
    """A line plot of metrics against training steps (matplotlib), one line per series."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, values in series.items():
        ax.plot(list(steps), list(values), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
