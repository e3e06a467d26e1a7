"""Built-in synthetic panoptic dataset: street-like scenes written in COCO panoptic format.

Owns the scene generator and its on-disk layout. Every image is drawn from its own
generator seeded by ``(seed, split, index)`` (three independent streams for the
``train``, ``val`` and ``test`` splits), so an image is the same whatever else is
generated, and generation can resume. Scenes have six stuff classes in irregular
regions (noisy skyline, smoothed-noise vegetation and terrain, wavy kerb) with
class textures, and three thing classes told apart by shape: cars (rounded body +
cabin + wheels), people (an ellipse from thin to broad, head, legs) and signs
(a pole one or a few pixels wide with a triangle, disc or square plate). Things
come in touching or overlapping same-class groups and shrink with distance down
to 10-20 px near the horizon; they are painted far-to-near (occlusion). Colour is
a cue but not a rule: about half of the things take a colour near one of their
class's typical colours, the rest a colour drawn independently of the class.
Visible fragments smaller than ``min_fragment`` pixels are marked void. The
result is read with the ordinary COCO-panoptic loader (:func:`synthetic`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from scipy import ndimage
from tqdm import tqdm

from hle.data.datasets import Record, custom_panoptic
from hle.data.metadata import Metadata
from hle.io import id2rgb, write_json_atomic

#: Bumped whenever the generator's output changes, so resumed runs regenerate old files.
GENERATOR_VERSION = 2
_PNG_KEY = "hle-synth"
#: Split -> the second entry of every image's seed, so each split is its own stream.
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SPLITS = tuple(_SPLIT_CODES)

#: (id, name, isthing, colour used for visualisation and as the stuff base colour).
SYNTHETIC_CATEGORIES: tuple[dict[str, Any], ...] = (
    {"id": 1, "name": "road", "isthing": 0, "color": [95, 92, 100]},
    {"id": 2, "name": "sidewalk", "isthing": 0, "color": [175, 160, 150]},
    {"id": 3, "name": "building", "isthing": 0, "color": [150, 105, 85]},
    {"id": 4, "name": "vegetation", "isthing": 0, "color": [60, 125, 45]},
    {"id": 5, "name": "terrain", "isthing": 0, "color": [150, 145, 75]},
    {"id": 6, "name": "sky", "isthing": 0, "color": [125, 170, 225]},
    {"id": 7, "name": "car", "isthing": 1, "color": [0, 0, 142]},
    {"id": 8, "name": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 9, "name": "sign", "isthing": 1, "color": [250, 170, 30]},
)
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, CAR, PERSON, SIGN = range(1, 10)


def synthetic_metadata() -> Metadata:
    """Metadata of the synthetic dataset: 6 stuff then 3 thing classes."""
    return Metadata(name="synthetic", categories=[dict(c) for c in SYNTHETIC_CATEGORIES])


# ------------------------------------------------------------------ noise fields
def _smooth_field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """``[h, w]`` smooth noise in about ``[-1, 1]`` with features about ``cell`` pixels wide."""
    gh, gw = max(2, int(round(h / cell)) + 2), max(2, int(round(w / cell)) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC))


def _smooth_profile(rng: np.random.Generator, w: int, cell: float, amp: float) -> np.ndarray:
    """``[w]`` smooth 1-D curve with amplitude ``amp`` (a noisy boundary)."""
    knots = max(2, int(round(w / cell)) + 2)
    xs = np.linspace(0, w - 1, knots)
    return np.interp(np.arange(w), xs, rng.uniform(-amp, amp, size=knots))


# --------------------------------------------------------------------- the scene
def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Category per pixel for the stuff classes, and the ground line ``[w]`` (first ground row)."""
    yy = np.arange(h)[:, None]
    horizon = h * rng.uniform(0.38, 0.55) + _smooth_profile(rng, w, w / 4, 0.04 * h)
    # Skyline: blocks of random width and height, blurred edges from a small profile.
    top = np.empty(w)
    block_class = np.empty(w, dtype=np.int64)
    x = 0
    while x < w:
        bw = int(rng.integers(max(4, w // 14), max(6, w // 4)))
        top[x : x + bw] = horizon[x : x + bw] - h * rng.uniform(0.08, 0.38)
        block_class[x : x + bw] = BUILDING if rng.random() < 0.7 else VEGETATION
        x += bw
    top += _smooth_profile(rng, w, 6, 0.02 * h)
    # Tree crowns are round-ish: lift the top of vegetation blocks with a smooth bump.
    top = np.where(block_class == VEGETATION, top + _smooth_profile(rng, w, 10, 0.06 * h), top)
    labels = np.full((h, w), SKY, dtype=np.int64)
    band = yy >= top[None, :]
    labels[band] = np.broadcast_to(block_class[None, :], (h, w))[band]
    # Trees in front of buildings: a thresholded smooth field inside the band.
    trees = (_smooth_field(rng, h, w, h / 5) > rng.uniform(0.35, 0.6)) & band
    labels[trees] = VEGETATION
    ground = np.clip(horizon, 2, h - 4)
    kerb = ground + h * rng.uniform(0.08, 0.22) + _smooth_profile(rng, w, w / 6, 0.05 * h)
    labels[yy >= ground[None, :]] = SIDEWALK
    labels[yy >= kerb[None, :]] = ROAD
    # Grass verges and patches: smooth field restricted to the ground near the kerb.
    verge = _smooth_field(rng, h, w, h / 6) > rng.uniform(0.1, 0.45)
    near_kerb = (yy >= ground[None, :]) & (yy < kerb[None, :] + 0.12 * h)
    labels[verge & near_kerb] = TERRAIN
    return labels, ground


def _stuff_texture(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """``[h, w, 3]`` float RGB of the stuff classes, each with its own texture."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), dtype=np.float32)
    fine = rng.normal(0.0, 1.0, size=(h, w)).astype(np.float32)
    mid = _smooth_field(rng, h, w, max(3.0, h / 24))
    for cat in SYNTHETIC_CATEGORIES[:6]:
        cid = cat["id"]
        m = labels == cid
        if not m.any():
            continue
        base = np.array(cat["color"], np.float32) + rng.uniform(-30, 30, size=3)
        if cid == SKY:
            shade = 25.0 * (yy / h) + 6.0 * mid
        elif cid == BUILDING:
            px, py = int(rng.integers(6, 12)), int(rng.integers(7, 13))
            windows = ((xx % px) < px // 2) & ((yy % py) < py // 2)
            shade = np.where(windows, -45.0, 0.0) + 5.0 * fine
        elif cid == VEGETATION:
            shade = 22.0 * fine + 25.0 * mid
        elif cid == ROAD:
            shade = 6.0 * fine
            lane = (np.abs(yy - h * 0.85) < 1.0) & ((xx // 12) % 2 == 0)
            shade = np.where(lane, 90.0, shade)
        elif cid == SIDEWALK:
            tiles = ((xx % 8) == 0) | ((yy % 6) == 0)
            shade = np.where(tiles, -30.0, 0.0) + 4.0 * fine
        else:  # terrain
            shade = 12.0 * fine + 30.0 * mid
        img[m] = base[None, :] + np.asarray(shade, np.float32)[m][:, None]
    return img


def _rounded_box(yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, y1: float, x1: float, r: float) -> np.ndarray:
    """Mask of a box ``[y0, y1) x [x0, x1)`` with corners rounded by radius ``r``."""
    cy = np.clip(yy, y0 + r, y1 - r)
    cx = np.clip(xx, x0 + r, x1 - r)
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1) & ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def _thing_shape(
    cls: int, rng: np.random.Generator, bottom: float, cx: float, size: float, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and per-pixel shade (-1..1 part contrast) of one thing on the ``yy, xx`` grid.

    ``size`` is the object's height in pixels; ``bottom`` its ground contact row.
    """
    shade = np.zeros(yy.shape, np.float32)
    if cls == CAR:
        hh, ww = size, size * rng.uniform(1.7, 2.3)
        body = _rounded_box(yy, xx, bottom - 0.62 * hh, cx - ww / 2, bottom - 0.12 * hh, cx + ww / 2, 0.18 * hh)
        cab_w = ww * rng.uniform(0.5, 0.65)
        cab_x = cx - ww / 2 + ww * rng.uniform(0.15, 0.3)
        cabin = _rounded_box(yy, xx, bottom - hh, cab_x, bottom - 0.55 * hh, cab_x + cab_w, 0.2 * hh)
        wr = 0.17 * hh
        wheels = np.zeros_like(body)
        for wx in (cx - ww * 0.3, cx + ww * 0.3):
            wheels |= (yy - (bottom - wr)) ** 2 + (xx - wx) ** 2 <= wr * wr
        mask = body | cabin | wheels
        window = cabin & _rounded_box(yy, xx, bottom - 0.9 * hh, cab_x + 0.1 * cab_w, bottom - 0.6 * hh, cab_x + 0.9 * cab_w, 0.1 * hh)
        shade[window] = 0.6
        shade[wheels & ~body] = -0.8
        shade[wheels] = -0.8
    elif cls == PERSON:
        hh = size
        bw = hh * rng.uniform(0.14, 0.32)  # from thin (a few pixels) to broad
        head_r = 0.11 * hh
        torso_c, torso_h = bottom - 0.55 * hh, 0.25 * hh
        torso = ((yy - torso_c) / torso_h) ** 2 + ((xx - cx) / (bw / 2)) ** 2 <= 1.0
        head = (yy - (bottom - hh + head_r)) ** 2 + (xx - cx) ** 2 <= head_r**2
        leg_w = max(1.0, 0.07 * hh)
        legs = (yy >= torso_c) & (yy < bottom) & (
            (np.abs(xx - (cx - 0.22 * bw)) <= leg_w) | (np.abs(xx - (cx + 0.22 * bw)) <= leg_w)
        )
        mask = torso | head | legs
        shade[head] = 0.5
        shade[legs & ~torso] = -0.5
    else:  # sign: thin pole + plate
        hh = size
        pw = max(1.0, 0.045 * hh * rng.uniform(0.6, 1.4))  # 1-2 px poles on small signs
        pole = (np.abs(xx - cx) <= pw / 2) & (yy >= bottom - hh) & (yy < bottom)
        pr = max(2.5, 0.13 * hh)
        py = bottom - hh + pr
        kind = rng.integers(3)
        if kind == 0:  # triangle
            plate = (yy >= py - pr) & (yy <= py + pr) & (np.abs(xx - cx) <= (yy - (py - pr)) * 0.6)
        elif kind == 1:  # disc
            plate = (yy - py) ** 2 + (xx - cx) ** 2 <= pr * pr
        else:  # square
            plate = (np.abs(yy - py) <= pr * 0.85) & (np.abs(xx - cx) <= pr * 0.85)
        mask = pole | plate
        shade[pole & ~plate] = -0.4
        shade[plate] = 0.3
    return mask, shade


_THING_HEIGHT = {CAR: 0.26, PERSON: 0.40, SIGN: 0.55}  # object height / image height at unit depth scale
_MIN_HEIGHT = {CAR: 8.0, PERSON: 10.0, SIGN: 10.0}     # pixels, however far away
_GROUP_SIZE = {CAR: (1, 4), PERSON: (1, 5), SIGN: (1, 3)}
_CLASS_PROB = (0.4, 0.4, 0.2)
#: Typical colours per class (RGB); a thing takes one of them, jittered, with
#: probability ``_COLOUR_CUE``, else a colour independent of its class.
_CLASS_COLOURS = {
    CAR: ((60, 60, 65), (190, 190, 195), (225, 225, 220), (170, 35, 35), (40, 70, 150)),
    PERSON: ((40, 45, 80), (30, 30, 30), (120, 80, 50), (180, 60, 70)),
    SIGN: ((210, 40, 40), (235, 200, 40), (40, 90, 200), (235, 235, 235)),
}
_COLOUR_CUE = 0.5


def _place_things(
    rng: np.random.Generator, h: int, w: int, ground: np.ndarray, count: int
) -> list[tuple[int, float, float, float]]:
    """``count`` things as ``(class, bottom row, centre column, height px)`` in same-class groups."""
    things: list[tuple[int, float, float, float]] = []
    first = True
    while len(things) < count:
        cls = int(rng.choice([CAR, PERSON, SIGN], p=_CLASS_PROB))
        lo, hi = _GROUP_SIZE[cls]
        # The first group always has touching members, so most images show the hard case.
        n = int(rng.integers(max(lo, 2 if first else 1), hi + 1))
        first = False
        cx = rng.uniform(0.05 * w, 0.95 * w)
        g = float(ground[int(np.clip(cx, 0, w - 1))])
        # Far things stand near the ground line and are small (down to _MIN_HEIGHT).
        bottom = rng.uniform(g + 0.02 * h, h * 1.05)
        depth = np.clip((bottom - g) / max(h - g, 1.0), 0.05, 1.2)
        size = max(_THING_HEIGHT[cls] * h * depth * rng.uniform(0.85, 1.15), _MIN_HEIGHT[cls] * rng.uniform(1.0, 1.25))
        width = size * {CAR: 2.0, PERSON: 0.3, SIGN: 0.26}[cls]
        step = rng.choice([-1.0, 1.0])
        for k in range(min(n, count - len(things))):
            # Members overlap or touch: offsets below one object width, small depth changes.
            things.append((cls, bottom + rng.uniform(-0.03, 0.03) * h, cx + step * k * width * rng.uniform(0.55, 0.95), size))
    return things


def _thing_colour(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A thing's base colour: near a typical colour of its class, or independent of it."""
    if rng.random() < _COLOUR_CUE:
        typical = _CLASS_COLOURS[cls]
        base = np.asarray(typical[int(rng.integers(len(typical)))], np.float32)
        return np.clip(base + rng.uniform(-25, 25, size=3), 15, 240).astype(np.float32)
    return rng.uniform(25, 235, size=3).astype(np.float32)


def render_scene(
    rng: np.random.Generator, height: int, width: int, *, min_fragment: int = 12, max_tries: int = 30
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw one scene.

    Args:
        rng: the scene's generator.
        height, width: image size.
        min_fragment: visible connected fragments of a thing below this many pixels become void.
        max_tries: redraws allowed to land 6-15 visible things.

    Returns:
        ``(image [H, W, 3] uint8, segment ids [H, W] int64, segments_info)`` with
        ids ``category_id * 1000 + k`` and COCO segment dicts (``id, category_id,
        iscrowd, area, bbox``).
    """
    h, w = height, width
    labels, ground = _stuff_layout(rng, h, w)
    base = _stuff_texture(rng, labels)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = rng.normal(0.0, 1.0, size=(h, w)).astype(np.float32)
    for _ in range(max_tries):
        img = base.copy()
        seg = labels * 1000
        things = _place_things(rng, h, w, ground, int(rng.integers(7, 17)))
        # Painter's order: far things (smaller bottom row) first, near ones cover them.
        things.sort(key=lambda t: t[1])
        counters = {CAR: 0, PERSON: 0, SIGN: 0}
        for cls, bottom, cx, size in things:
            mask, shade = _thing_shape(cls, rng, bottom, cx, size, yy, xx)
            if not mask.any():
                continue
            counters[cls] += 1
            colour = _thing_colour(rng, cls)
            pix = colour[None, :] * (1.0 + 0.45 * shade[mask][:, None]) + 7.0 * fine[mask][:, None]
            img[mask] = pix
            seg[mask] = cls * 1000 + counters[cls]
        # Void for tiny visible fragments, then count what is left.
        thing_ids = [int(s) for s in np.unique(seg) if s // 1000 in (CAR, PERSON, SIGN)]
        for sid in thing_ids:
            comp, n = ndimage.label(seg == sid)
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            small = np.flatnonzero(sizes[1:] < min_fragment) + 1
            if small.size:
                seg[np.isin(comp, small)] = 0
        visible = [s for s in np.unique(seg) if s // 1000 in (CAR, PERSON, SIGN)]
        if 6 <= len(visible) <= 15:
            break
    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    segments = []
    for sid in np.unique(seg):
        if sid == 0:
            continue
        m = seg == sid
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        segments.append(
            {
                "id": int(sid),
                "category_id": int(sid // 1000),
                "iscrowd": 0,
                "area": int(m.sum()),
                "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)],
            }
        )
    return image, seg, segments


# -------------------------------------------------------------------- on disk
def _save_png_atomic(array: np.ndarray, path: Path, text: str | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    info = None
    if text is not None:
        info = PngInfo()
        info.add_text(_PNG_KEY, text)
    Image.fromarray(array).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def _existing_segments(image_path: Path, pan_path: Path, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Segments of an already generated image with the same parameters, else ``None``."""
    if not (image_path.is_file() and pan_path.is_file()):
        return None
    try:
        with Image.open(pan_path) as im:
            meta = json.loads(im.text.get(_PNG_KEY, "null"))  # type: ignore[attr-defined]
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("params") != params:
        return None
    return meta["segments_info"]


def generate_synthetic(
    out_dir: str | os.PathLike[str],
    num_train: int,
    num_val: int,
    num_test: int = 0,
    *,
    height: int = 128,
    width: int = 256,
    seed: int = 0,
    min_fragment: int = 12,
    progress: bool = True,
) -> dict[str, Path]:
    """Generate (or complete) the synthetic dataset on disk.

    Layout: ``out_dir/{train,val,test}/images/NNNNNN.png``, ``.../panoptic/NNNNNN.png``,
    ``.../panoptic_{split}.json`` (COCO panoptic) and ``out_dir/categories.json``.
    Images that already exist with the same parameters are kept (resumable); every
    file is written through a temporary name and ``os.replace``, the JSON last, so an
    interrupted run never leaves a JSON naming missing files.

    Args:
        out_dir: output folder.
        num_train, num_val, num_test: number of images per split (``>= 0``; a split
            with 0 images is not written). ``val`` is for choosing thresholds and
            ``test`` for reporting: each split is its own random stream.
        height, width: image size (``>= 32`` each).
        seed: base seed; image ``i`` of a split depends only on ``(seed, split, i)``.
        min_fragment: visible thing fragments below this many pixels become void.
        progress: show a tqdm bar.

    Returns:
        ``{split: folder}`` for the splits written (``train`` and ``val`` always).
    """
    if min(num_train, num_val, num_test) < 0:
        raise ValueError(
            f"generate_synthetic: num_train/num_val/num_test must be >= 0, got {num_train}, {num_val}, {num_test}")
    if height < 32 or width < 32:
        raise ValueError(f"generate_synthetic: height and width must be >= 32, got {height}x{width}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    categories = [dict(c) for c in SYNTHETIC_CATEGORIES]
    write_json_atomic(out / "categories.json", categories, indent=1)
    folders: dict[str, Path] = {}
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if split == "test" and count == 0:
            continue
        d = out / split
        (d / "images").mkdir(parents=True, exist_ok=True)
        (d / "panoptic").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"synth {split}", disable=not progress, leave=False):
            name = f"{i:06d}.png"
            image_path, pan_path = d / "images" / name, d / "panoptic" / name
            params = {"version": GENERATOR_VERSION, "seed": seed, "split": split, "index": i,
                      "height": height, "width": width, "min_fragment": min_fragment}
            segments = _existing_segments(image_path, pan_path, params)
            if segments is None:
                rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
                image, seg, segments = render_scene(rng, height, width, min_fragment=min_fragment)
                _save_png_atomic(image, image_path)
                # The panoptic PNG goes last and carries its segments: present means complete.
                _save_png_atomic(id2rgb(seg), pan_path, json.dumps({"params": params, "segments_info": segments}, sort_keys=True))
            images.append({"id": i, "file_name": name, "height": height, "width": width})
            annotations.append({"image_id": i, "file_name": name, "segments_info": segments})
        index = {
            "info": {"description": "hle synthetic street scenes", "generator_version": GENERATOR_VERSION, "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        # sort_keys: segments read back from a PNG (resume) and fresh ones serialise identically.
        write_json_atomic(d / f"panoptic_{split}.json", index, sort_keys=True)
        folders[split] = d
    return folders


def synthetic(root: str | os.PathLike[str], split: str) -> tuple[list[Record], Metadata]:
    """Load a generated synthetic split (``train`` / ``val`` / ``test``) through the COCO-panoptic loader."""
    try:
        records, metadata = custom_panoptic(root, split)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; generate the synthetic dataset first: hle synth --out {root} --num N") from None
    return records, Metadata(name="synthetic", categories=metadata.categories)
