"""Writing predictions to disk: COCO panoptic files and per-image prediction bundles.

This module owns the engine's file outputs at inference time.
:func:`dataset_prediction_writer` connects the evaluation loop to
:class:`hle.evaluation.CocoPanopticWriter` (the COCO panoptic layout that panopticapi,
cityscapesScripts and ``hle pq`` read: ``<name>.json`` + ``<name>/<file>.png`` with
``id = R + 256 G + 256^2 B``). :func:`predict_images` runs a trained model on arbitrary
image files and writes, per image, the id PNG, a JSON of its segments and a colour
overlay.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["dataset_prediction_writer", "predict_images", "prepare_image"]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def dataset_prediction_writer(out_dir: str | Path, name: str, metadata: Any) -> tuple[Any, Callable[..., None]]:
    """A COCO panoptic writer for a dataset split and the callback that feeds it.

    Uses :class:`hle.evaluation.CocoPanopticWriter` (``<out_dir>/<name>.json`` +
    ``<out_dir>/<name>/``); the callback takes ``(record, panoptic, segments_info)`` with
    dataset category ids, as :func:`hle.engine.inference.evaluate_records` calls it, and
    names each PNG after the record's ground-truth PNG so the two folders line up.

    Returns:
        ``(writer, callback)``; call ``writer.close()`` at the end.
    """
    from hle.evaluation import CocoPanopticWriter

    categories = [
        {k: c[k] for k in ("id", "name", "isthing", "color") if k in c}
        for c in metadata.categories
        if not c.get("ignore", False)
    ]
    writer = CocoPanopticWriter(Path(out_dir) / f"{name}.json", categories=categories)

    def add(record: dict[str, Any], panoptic: np.ndarray, segments_info: list[dict[str, Any]]) -> None:
        stem = Path(str(record.get("pan_seg_file_name") or record["file_name"])).stem
        writer.add(record.get("image_id", stem), panoptic, segments_info, file_name=f"{stem}.png")

    return writer, add


def prepare_image(path: str, max_side: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """Read an image; return ``(original [H, W, 3] uint8, normalised [3, h, w] tensor)``.

    The tensor is resized so its longer side is at most ``max_side`` and normalised
    with the ImageNet statistics the data mapper uses.
    """
    from hle.io import read_image
    from hle.data.transforms import IMAGENET_MEAN, IMAGENET_STD, max_side_size, normalize, resize_image

    try:
        original = read_image(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    image = torch.from_numpy(np.ascontiguousarray(original)).permute(2, 0, 1).float().div_(255.0)
    if max_side is not None:
        image = resize_image(image, *max_side_size(image.shape[1], image.shape[2], max_side))
    return original, normalize(image, IMAGENET_MEAN, IMAGENET_STD)


@torch.no_grad()
def predict_images(
    loaded: Any,
    paths: Sequence[str],
    out_dir: Path,
    *,
    flip: bool = False,
    native: bool = False,
    progress: bool = False,
) -> list[Path]:
    """Predict each image and write ``<stem>.png``, ``<stem>.json``, ``<stem>_overlay.png``.

    Args:
        loaded: :class:`hle.engine.inference.LoadedModel`.
        paths: image files.
        out_dir: output folder (created).
        flip: test-time flip.
        native: decode the network's outputs at its decoder stride (see
            :func:`hle.engine.inference.evaluate_records`).

    Returns:
        The id PNG paths written.
    """
    from hle.engine.build import decoder_params, decoder_split_embedding
    from hle.engine.inference import decode_outputs, resize_ids, run_model, to_dataset_ids
    from hle.io import write_panoptic_png
    from hle.visualize import class_palette, colorize_panoptic, overlay, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = loaded.metadata
    device = next(loaded.model.parameters()).device
    palette = class_palette(len(metadata.categories), [c["color"] for c in metadata.categories])
    index = {c["id"]: i for i, c in enumerate(metadata.categories)}
    names = {c["id"]: c["name"] for c in metadata.categories}
    written: list[Path] = []
    iterator: Any = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="predict", leave=False)
    used: set[str] = set()
    for path in iterator:
        original, image = prepare_image(path, loaded.config.data.max_side)
        outputs = run_model(loaded.model, image[None].to(device), flip=flip, upsample=not native)
        result = decode_outputs(
            loaded.model, outputs, metadata.is_thing, decoder_params(loaded.config),
            split_embedding=decoder_split_embedding(loaded.config), image_size=image.shape[-2:],
        )[0]
        pan, segments = to_dataset_ids(result, metadata)
        h, w = original.shape[:2]
        pan = resize_ids(pan, h, w)
        stem = Path(path).stem
        while stem in used:  # two inputs with the same name from different folders
            stem += "_"
        used.add(stem)
        for s in segments:
            # Area and box at the original resolution (the network may have seen a resized image).
            ys, xs = np.nonzero(pan == s["id"])
            s["area"] = int(len(ys))
            if len(ys):
                s["bbox"] = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            s["category_name"] = names.get(s["category_id"], str(s["category_id"]))
        segments = [s for s in segments if s["area"] > 0]
        write_panoptic_png(out_dir / f"{stem}.png", pan)
        _write_json(
            out_dir / f"{stem}.json",
            {"file_name": str(path), "height": h, "width": w, "segments_info": segments},
        )
        painted = colorize_panoptic(
            pan,
            [dict(s, category_id=index[s["category_id"]]) for s in segments],
            palette,
        )
        save_png(overlay(original, painted, alpha=0.55), out_dir / f"{stem}_overlay.png")
        written.append(out_dir / f"{stem}.png")
    return written
