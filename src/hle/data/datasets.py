"""Index loaders: dataset folders -> (list of panoptic records, :class:`Metadata`).

A loader only reads the dataset's index (the COCO-panoptic JSON) and checks that
the files it names exist; it never opens images. Each record follows detectron2's
panoptic record: ``file_name`` (image path), ``image_id``, ``pan_seg_file_name``
(panoptic PNG path), ``height``, ``width`` and ``segments_info`` (one dict per
segment: ``id, category_id`` (dataset id), ``iscrowd, isthing, area, bbox``).
Reading, augmenting and building targets happen later, per sample, in
:mod:`hle.data.mapper`. Supported layouts: COCO panoptic (and any custom dataset
in that format), Cityscapes as written by cityscapesScripts' ``createPanopticImgs``,
and Mapillary Vistas panoptic v1.2 / v2.0.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from hle.data.metadata import Metadata
from hle.io import read_json

Record = dict[str, Any]
PathLike = str | os.PathLike[str]


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (expected a folder)")
    return path


def _listing(folder: Path, cache: dict[Path, set[str]]) -> set[str]:
    # One listdir per folder instead of one stat per file keeps 100k-image indexes fast.
    if folder not in cache:
        cache[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
    return cache[folder]


def _check_files(records: list[Record], index_path: Path) -> None:
    cache: dict[Path, set[str]] = {}
    for rec in records:
        for key, what in (("file_name", "image"), ("pan_seg_file_name", "panoptic PNG")):
            p = Path(rec[key])
            if p.name not in _listing(p.parent, cache):
                raise FileNotFoundError(
                    f"{what} not found: {p} (listed for image_id {rec['image_id']!r} in {index_path})"
                )


def metadata_from_json_categories(name: str, categories: list[dict[str, Any]]) -> Metadata:
    """Build :class:`Metadata` from COCO-panoptic ``categories`` entries.

    Categories named ``unlabeled`` (any case, any ``--`` prefix, as in Vistas'
    ``void--unlabeled``) are marked ignore; everything else keeps its list order.
    """
    cats = []
    for c in categories:
        c = dict(c)
        short = str(c.get("name", "")).lower().split("--")[-1].strip()
        if short == "unlabeled":
            c["ignore"] = True
        cats.append(c)
    return Metadata(name=name, categories=cats)


def records_from_panoptic_json(
    index: dict[str, Any],
    *,
    index_path: Path,
    image_path: Callable[[dict[str, Any]], Path],
    panoptic_dir: Path,
    metadata: Metadata,
    check_files: bool = True,
) -> list[Record]:
    """Turn a loaded COCO-panoptic JSON into records.

    Args:
        index: the parsed JSON (``images``, ``annotations``).
        index_path: its path, for error messages.
        image_path: maps an ``images`` entry to the image path (layouts differ).
        panoptic_dir: folder of the panoptic PNGs named by ``annotations[*].file_name``.
        metadata: categories; gives ``isthing`` per segment (unknown ids: not a thing).
        check_files: verify that every image and PNG exists (one listdir per folder).

    Returns:
        one record per annotation, in the JSON's annotation order.
    """
    for key in ("images", "annotations"):
        if key not in index:
            raise ValueError(f"{index_path}: expected a COCO-panoptic JSON with key {key!r}, found keys {sorted(index)}")
    images = {img["id"]: img for img in index["images"]}
    records: list[Record] = []
    for ann in index["annotations"]:
        img = images.get(ann["image_id"])
        if img is None:
            raise ValueError(f"{index_path}: annotation {ann.get('file_name')!r} names image_id {ann['image_id']!r} absent from 'images'")
        segments = []
        for s in ann["segments_info"]:
            cid = int(s["category_id"])
            known = cid in metadata.id_to_train_id
            segments.append(
                {
                    "id": int(s["id"]),
                    "category_id": cid,
                    "iscrowd": int(s.get("iscrowd", 0)),
                    "isthing": int(metadata.category(cid)["isthing"]) if known else 0,
                    "area": int(s.get("area", 0)),
                    "bbox": [int(v) for v in s.get("bbox") or [0, 0, 0, 0]],
                }
            )
        records.append(
            {
                "file_name": str(image_path(img)),
                "image_id": ann["image_id"],
                "pan_seg_file_name": str(panoptic_dir / ann["file_name"]),
                "height": int(img["height"]) if "height" in img else None,
                "width": int(img["width"]) if "width" in img else None,
                "segments_info": segments,
            }
        )
    if check_files:
        _check_files(records, index_path)
    for rec in records:
        if rec["height"] is None or rec["width"] is None:
            with Image.open(rec["file_name"]) as im:  # header only
                rec["width"], rec["height"] = im.size
    return records


def load_coco_panoptic(
    image_dir: PathLike,
    panoptic_json: PathLike,
    panoptic_dir: PathLike,
    *,
    name: str = "coco",
    metadata: Metadata | None = None,
    check_files: bool = True,
) -> tuple[list[Record], Metadata]:
    """Load any dataset in COCO panoptic format.

    Args:
        image_dir: folder holding the images named by ``images[*].file_name``.
        panoptic_json: the panoptic JSON (``images``, ``annotations``, ``categories``).
        panoptic_dir: folder holding the PNGs named by ``annotations[*].file_name``.
        name: dataset name stored in the metadata.
        metadata: use these categories instead of the JSON's.
        check_files: verify every image and PNG exists.

    Returns:
        ``(records, metadata)``; categories (and train ids) in the JSON's order.
    """
    image_dir, panoptic_json, panoptic_dir = Path(image_dir), Path(panoptic_json), Path(panoptic_dir)
    _require_dir(image_dir, "image folder")
    index = read_json(panoptic_json, "COCO panoptic JSON (images, annotations, categories)")
    _require_dir(panoptic_dir, "panoptic PNG folder")
    if metadata is None:
        if "categories" not in index:
            raise ValueError(f"{panoptic_json}: no 'categories' key; pass metadata= or add the categories")
        metadata = metadata_from_json_categories(name, index["categories"])
    records = records_from_panoptic_json(
        index,
        index_path=panoptic_json,
        image_path=lambda img: image_dir / img["file_name"],
        panoptic_dir=panoptic_dir,
        metadata=metadata,
        check_files=check_files,
    )
    return records, metadata


def coco_panoptic(root: PathLike, split: str) -> tuple[list[Record], Metadata]:
    """COCO panoptic in its standard layout.

    ``root/{split}2017/*.jpg``, ``root/annotations/panoptic_{split}2017.json`` and
    ``root/annotations/panoptic_{split}2017/*.png``; ``split`` is ``train`` or ``val``.
    """
    root = Path(root)
    split = split.removesuffix("2017")
    return load_coco_panoptic(
        root / f"{split}2017",
        root / "annotations" / f"panoptic_{split}2017.json",
        root / "annotations" / f"panoptic_{split}2017",
        name="coco",
    )


def custom_panoptic(root: PathLike, split: str) -> tuple[list[Record], Metadata]:
    """A dataset in COCO panoptic format, split into folders or flat.

    Split layout (what :mod:`hle.data.synthetic` writes): ``root/{split}/images/``,
    ``root/{split}/panoptic/`` and ``root/{split}/panoptic_{split}.json``.
    Flat layout, when ``root/{split}`` does not exist: ``root/images/``,
    ``root/panoptic/`` and ``root/panoptic.json``, the same images for every split (one
    annotated folder to overfit or to evaluate on as it is).
    """
    root = Path(root)
    name = Path(root).name or "custom"
    d = root / split
    if not d.is_dir() and (root / "panoptic.json").is_file():
        return load_coco_panoptic(root / "images", root / "panoptic.json", root / "panoptic", name=name)
    _require_dir(d, f"split folder for split {split!r} (or a flat layout: images/, panoptic/, panoptic.json)")
    return load_coco_panoptic(d / "images", d / f"panoptic_{split}.json", d / "panoptic", name=name)


# --------------------------------------------------------------------- Cityscapes
#: The 19 Cityscapes evaluation classes in train-id order:
#: (name, label id, is thing, colour). Public facts from the Cityscapes label table.
CITYSCAPES_CLASSES: tuple[tuple[str, int, bool, tuple[int, int, int]], ...] = (
    ("road", 7, False, (128, 64, 128)),
    ("sidewalk", 8, False, (244, 35, 232)),
    ("building", 11, False, (70, 70, 70)),
    ("wall", 12, False, (102, 102, 156)),
    ("fence", 13, False, (190, 153, 153)),
    ("pole", 17, False, (153, 153, 153)),
    ("traffic light", 19, False, (250, 170, 30)),
    ("traffic sign", 20, False, (220, 220, 0)),
    ("vegetation", 21, False, (107, 142, 35)),
    ("terrain", 22, False, (152, 251, 152)),
    ("sky", 23, False, (70, 130, 180)),
    ("person", 24, True, (220, 20, 60)),
    ("rider", 25, True, (255, 0, 0)),
    ("car", 26, True, (0, 0, 142)),
    ("truck", 27, True, (0, 0, 70)),
    ("bus", 28, True, (0, 60, 100)),
    ("train", 31, True, (0, 80, 100)),
    ("motorcycle", 32, True, (0, 0, 230)),
    ("bicycle", 33, True, (119, 11, 32)),
)


def cityscapes_metadata(*, use_train_id: bool = False) -> Metadata:
    """Metadata of the 19 Cityscapes classes (8 things).

    Args:
        use_train_id: category ids are train ids ``0..18`` (``createPanopticImgs
            --use-train-id``) instead of label ids.
    """
    cats = [
        {"id": t if use_train_id else lid, "name": n, "isthing": int(th), "color": list(col)}
        for t, (n, lid, th, col) in enumerate(CITYSCAPES_CLASSES)
    ]
    return Metadata(name="cityscapes", categories=cats)


def cityscapes_panoptic(root: PathLike, split: str) -> tuple[list[Record], Metadata]:
    """Cityscapes panoptic as written by cityscapesScripts' ``createPanopticImgs``.

    Layout: ``root/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png``,
    ``root/gtFine/cityscapes_panoptic_{split}.json`` and
    ``root/gtFine/cityscapes_panoptic_{split}/*_gtFine_panoptic.png`` (the
    ``_trainId`` variant of both is used when only it exists).
    """
    root = Path(root)
    gt = _require_dir(root / "gtFine", "Cityscapes gtFine folder")
    images_dir = _require_dir(root / "leftImg8bit" / split, f"Cityscapes image folder for split {split!r}")
    base = f"cityscapes_panoptic_{split}"
    use_train_id = not (gt / f"{base}.json").is_file() and (gt / f"{base}_trainId.json").is_file()
    if use_train_id:
        base += "_trainId"
    index_path = gt / f"{base}.json"
    index = read_json(
        index_path, f"Cityscapes panoptic JSON (run cityscapesScripts' createPanopticImgs to make {base}.json)"
    )
    pan_dir = _require_dir(gt / base, "Cityscapes panoptic PNG folder")
    metadata = cityscapes_metadata(use_train_id=use_train_id)
    records = records_from_panoptic_json(
        index,
        index_path=index_path,
        # Image ids are <city>_<seq>_<frame> and the city is the sub-folder. The JSON's own
        # file_name is not used: createPanopticImgs writes "<id>_gtFine_leftImg8bit.png",
        # which is not the name of the image on disk.
        image_path=lambda img: images_dir / str(img["id"]).split("_")[0] / f"{img['id']}_leftImg8bit.png",
        panoptic_dir=pan_dir,
        metadata=metadata,
    )
    return records, metadata


# ------------------------------------------------------------------------- Vistas
_VISTAS_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def _vistas_layout(root: Path, split: str, version: str | None) -> tuple[str, Path, Path | None]:
    """Find ``(version, panoptic JSON, config file)`` of a Vistas split."""
    candidates = {
        "1.2": [
            (root / split / "panoptic" / "panoptic_2018.json", root / "config.json"),
            (root / split / "v1.2" / "panoptic" / "panoptic_2018.json", root / "config_v1.2.json"),
        ],
        "2.0": [(root / split / "v2.0" / "panoptic" / "panoptic_2020.json", root / "config_v2.0.json")],
    }
    if version is not None and version not in candidates:
        raise ValueError(f"vistas_panoptic: version must be '1.2', '2.0' or None, got {version!r}")
    for ver in [version] if version else ["1.2", "2.0"]:
        for js, cfg in candidates[ver]:
            if js.is_file():
                return ver, js, cfg if cfg.is_file() else None
    tried = [str(js) for ver in ([version] if version else candidates) for js, _ in candidates[ver]]
    raise FileNotFoundError(f"Mapillary Vistas panoptic JSON not found; expected one of: {', '.join(tried)}")


def _vistas_key(name: Any) -> str:
    """Comparable form of a Vistas label name ("Ground_Animal" ~ "Ground Animal")."""
    return str(name or "").lower().replace("_", " ").strip()


def vistas_panoptic(root: PathLike, split: str, *, version: str | None = None) -> tuple[list[Record], Metadata]:
    """Mapillary Vistas panoptic, v1.2 or v2.0 layout.

    v1.2 (``config.json``): ``root/{training,validation}/images/*.jpg`` and
    ``root/{split}/panoptic/panoptic_2018.json`` + PNGs (the v2.0 download keeps
    v1.2 under ``{split}/v1.2/panoptic/`` with ``config_v1.2.json``).
    v2.0 (``config_v2.0.json``): ``root/{split}/v2.0/panoptic/panoptic_2020.json`` + PNGs.
    Categories come from the panoptic JSON; ``unlabeled`` and classes the config
    marks ``"evaluate": false`` become ignore; a category without ``isthing`` takes
    the config's ``instances`` flag.

    Args:
        root: dataset root.
        split: ``train``/``training`` or ``val``/``validation``.
        version: ``"1.2"``, ``"2.0"`` or ``None`` (v1.2 when present, as in the paper).
    """
    root = Path(root)
    _require_dir(root, "Mapillary Vistas root folder")
    if split not in _VISTAS_SPLITS:
        raise ValueError(f"vistas_panoptic: split must be one of {sorted(_VISTAS_SPLITS)}, got {split!r}")
    split = _VISTAS_SPLITS[split]
    _, index_path, config_path = _vistas_layout(root, split, version)
    images_dir = _require_dir(root / split / "images", "Mapillary Vistas image folder")
    index = read_json(index_path, "Mapillary Vistas panoptic JSON")
    labels: dict[str, dict[str, Any]] = {}
    if config_path is not None:
        for label in read_json(config_path, "Mapillary Vistas config").get("labels", []):
            for k in ("name", "readable"):
                labels.setdefault(_vistas_key(label.get(k)), label)
    cats = []
    for c in index.get("categories", []):
        c = dict(c)
        # v1.2 panoptic JSONs keep the readable name in "name" ("Ground_Animal") and the
        # full name in "supercategory" ("animal--ground-animal"); v2.0 the full name in "name".
        label = labels.get(_vistas_key(c.get("supercategory"))) or labels.get(_vistas_key(c.get("name")))
        if label is not None:
            if label.get("evaluate", True) is False:
                c["ignore"] = True
            c.setdefault("isthing", int(bool(label.get("instances", False))))
        cats.append(c)
    if not cats:
        raise ValueError(f"{index_path}: expected a non-empty 'categories' list")
    metadata = metadata_from_json_categories("vistas", cats)
    records = records_from_panoptic_json(
        index,
        index_path=index_path,
        image_path=lambda img: images_dir / img["file_name"],
        panoptic_dir=index_path.parent,
        metadata=metadata,
    )
    return records, metadata
