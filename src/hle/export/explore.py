"""``hle explore``: one self-contained HTML page to look inside the embedding (the paper's Fig. 1).

This module owns turning a model's outputs on a few images into one HTML file that
needs no server, no network and no ES modules (inline CSS and a classic script, so it
works opened from disk). Per image the page shows the input, the panoptic prediction
(hover: class name, segment id, score) and the embedding as RGB (PCA,
:func:`hle.visualize.embedding_to_rgb`); clicking any pixel draws, computed in the
browser from the stored maps: the cosine distance from that pixel to every pixel
(Fig. 1), the class kernel psi_k (Eq. 9) of the pixel's class k (the argmax of psi at
the pixel) and the instance kernel Phi of Sec. 3.5 with the pixel as the seed,
``exp(-d_cos(e_i, e_j) / (2 sigma_i^2) - |rho_i - rho_j|^2 / (2 sigma_spatial,i^2))``.
Python computes nothing per click.

What the page stores, per image, at the network's decoder stride ``s`` (the maps the
decoder reads natively): the embedding as uint8 per dimension (``lo_d + q * step_d``,
each dimension scaled to its own range, so the error per component is at most
``step_d / 2``), sigma and spatial sigma as uint16 on their range, and the decoded
segment ids (constant on ``s x s`` blocks when decoding at the stride) run-length
coded; the input as JPEG and the coloured prediction as PNG at the network's input
size. Coordinates follow :func:`hle.core.kernels.pixel_coordinates`: map pixel ``(r,
c)`` sits at ``((r + 0.5) s - 0.5, (c + 0.5) s - 0.5)`` input pixels, times
``coord_scale``. Typed arrays are little-endian.
"""
from __future__ import annotations

import base64
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "HEATMAP_CMAP",
    "quantize",
    "dequantize",
    "run_lengths",
    "image_payload",
    "page_html",
    "write_explorer",
]

#: Colour map of the three heatmaps (bright = near / high); stored as a 256-entry table.
HEATMAP_CMAP = "magma"
_PAGE_VERSION = 1


def quantize(values: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise each column of ``values [N, K]`` linearly on its own range.

    Returns:
        ``(q [N, K] uint8 or uint16, lo [K], step [K])`` with
        ``|lo + q * step - values| <= step / 2``; a constant column gets ``step = 0``.
    """
    if values.ndim != 2 or bits not in (8, 16):
        raise ValueError(f"quantize: expected [N, K] values and bits 8 or 16, got {values.shape}, {bits}")
    x = values.astype(np.float64)
    lo, hi = x.min(0), x.max(0)
    levels = 2**bits - 1
    step = (hi - lo) / levels
    q = np.where(step > 0, np.rint((x - lo) / np.where(step > 0, step, 1.0)), 0.0)
    return q.astype(np.uint8 if bits == 8 else np.uint16), lo, step


def dequantize(q: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize` (up to its rounding): ``lo + q * step``, float64."""
    return lo + q.astype(np.float64) * step


def run_lengths(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length code of a map in row-major order: ``(values [R] int32, lengths [R] int32)``."""
    flat = np.asarray(ids).reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return flat[starts].astype(np.int32), lengths.astype(np.int32)


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def _data_uri(image: np.ndarray, fmt: str) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": 90} if fmt == "JPEG" else {"optimize": True}
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _stride_ids(panoptic: np.ndarray, stride: int, size: tuple[int, int]) -> np.ndarray:
    """The ``[h, w]`` ids of a stride-decoded id map, checked to be constant on ``stride`` blocks."""
    small = panoptic[::stride, ::stride]
    expanded = np.repeat(np.repeat(small, stride, 0), stride, 1)[: size[0], : size[1]]
    if expanded.shape != panoptic.shape or not np.array_equal(expanded, panoptic):
        raise ValueError(f"explore: the decoded id map is not constant on {stride}x{stride} blocks")
    return small


@torch.no_grad()
def image_payload(loaded: Any, path: str | Path, *, flip: bool = False, max_side: int | None = None) -> dict[str, Any]:
    """Everything the page needs for one image (see the module docstring).

    Args:
        loaded: :class:`hle.engine.inference.LoadedModel` (a checkpoint or
            :func:`hle.export.onnx.load_onnx`).
        path: image file.
        flip: test-time flip.
        max_side: shrink the image so its longer side is at most this before the
            network (``None``: the model's ``data.max_side``).
    """
    from hle.engine.build import decoder_params, decoder_split_embedding
    from hle.engine.inference import decode_outputs, run_model
    from hle.engine.writers import prepare_image
    from hle.visualize import class_palette, colorize_panoptic, denormalize_image, embedding_to_rgb

    model, metadata = loaded.model, loaded.metadata
    _, image = prepare_image(str(path), max_side or loaded.config.data.max_side)
    device = next(model.parameters()).device
    out = run_model(model, image[None].to(device), flip=flip, upsample=False)
    size = tuple(int(v) for v in image.shape[-2:])
    result = decode_outputs(
        model, out, metadata.is_thing, decoder_params(loaded.config),
        split_embedding=decoder_split_embedding(loaded.config), image_size=size,
    )[0]
    stride = int(model.decoder_stride)
    embedding = out.embedding[0].float().cpu().numpy()
    dim, h, w = embedding.shape
    q, lo, step = quantize(embedding.reshape(dim, -1).T)
    sigmas = torch.cat([out.sigma[0], out.spatial_sigma[0]]).float().cpu().numpy().reshape(2, -1).T
    qs, slo, sstep = quantize(sigmas, bits=16)
    panoptic = result.panoptic.cpu().numpy()
    values, lengths = run_lengths(_stride_ids(panoptic, stride, size))
    palette = class_palette(metadata.num_classes, metadata.colors)
    names = metadata.class_names
    return {
        "name": Path(path).name,
        "height": size[0], "width": size[1], "mapHeight": h, "mapWidth": w, "stride": stride,
        "image": _data_uri(denormalize_image(image), "JPEG"),
        "panoptic": _data_uri(colorize_panoptic(panoptic, result.segments_info, palette), "PNG"),
        "embeddingRGB": _data_uri(embedding_to_rgb(embedding), "PNG"),
        "embedding": {"dim": dim, "q": _b64(q), "lo": lo.tolist(), "step": step.tolist()},
        "sigma": {"q": _b64(qs), "lo": slo.tolist(), "step": sstep.tolist()},
        "ids": {"values": _b64(values), "lengths": _b64(lengths)},
        "segments": [
            {
                "id": int(s["id"]), "category": int(s["category_id"]), "name": names[int(s["category_id"])],
                "isthing": bool(s["isthing"]), "score": float(s["score"]), "area": int(s["area"]),
            }
            for s in result.segments_info
        ],
    }


def _colormap_table(name: str) -> list[list[int]]:
    import matplotlib

    table = matplotlib.colormaps[name](np.arange(256))[:, :3]
    return (table * 255).round().astype(int).tolist()


def page_html(images: Sequence[dict[str, Any]], model_info: dict[str, Any], *, title: str = "hle explore") -> str:
    """The whole page: template + inline CSS + inline script + the data as JSON.

    Args:
        images: :func:`image_payload` of each image.
        model_info: ``classes`` (``[{name, isthing, color}]`` in train-id order),
            ``classMeans [C][D]``, ``classSigma [C]``, ``split`` (split-embedding
            ablation), ``coordScale``.
    """
    import html

    assets = resources.files("hle.export") / "assets"
    data = dict(model_info, version=_PAGE_VERSION, lut=_colormap_table(HEATMAP_CMAP), images=list(images))
    # "</script" would end the element that holds the JSON and "<!--" would change how
    # it is parsed; JSON's \u003c escape keeps every "<" out of the markup.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    template = (assets / "explore.html").read_text(encoding="utf-8")
    return (
        template.replace("{{TITLE}}", html.escape(title))
        .replace("{{CSS}}", (assets / "explore.css").read_text(encoding="utf-8"))
        .replace("{{DATA}}", payload)
        .replace("{{SCRIPT}}", (assets / "explore.js").read_text(encoding="utf-8"))
    )


def model_info(loaded: Any) -> dict[str, Any]:
    """The per-model part of the page data (classes, class means and sigmas, flags)."""
    from hle.engine.build import decoder_split_embedding

    metadata, model = loaded.metadata, loaded.model
    return {
        "classes": [
            {"name": n, "isthing": bool(t), "color": list(c)}
            for n, t, c in zip(metadata.class_names, metadata.is_thing.tolist(), metadata.colors)
        ],
        "classMeans": model.class_means.detach().float().cpu().tolist(),
        "classSigma": model.class_sigma().detach().float().cpu().tolist(),
        "split": decoder_split_embedding(loaded.config),
        "coordScale": float(loaded.config.loss.options.coord_scale),
    }


def write_explorer(
    loaded: Any,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    flip: bool = False,
    max_side: int | None = None,
    progress: bool = False,
) -> Path:
    """Write the explorer page for ``paths`` to ``out`` (atomically) and return its path.

    Args:
        loaded: :class:`hle.engine.inference.LoadedModel`.
        paths: image files.
        out: the ``.html`` file.
        flip: test-time flip.
        max_side: see :func:`image_payload`.
        progress: tqdm bar over the images.
    """
    from hle.export import write_bytes_atomic

    iterator: Any = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="explore", leave=False)
    images = [image_payload(loaded, p, flip=flip, max_side=max_side) for p in iterator]
    page = page_html(images, model_info(loaded), title=f"hle explore: {len(images)} image(s)")
    return write_bytes_atomic(out, page.encode("utf-8"))
