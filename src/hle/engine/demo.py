"""``hle demo``: synthetic data -> step-bounded training -> evaluation on test -> figures.

This module owns the end-to-end demo that ``make demo`` runs. It generates the
built-in synthetic dataset (train / val / test, resumable), trains the ``synthetic``
config for its fixed number of steps (so the result is the same on every machine, to
evaluation noise; ``--minutes`` may add a wall-clock bound), evaluates the validation
split a few times during training (the PQ-against-steps curve), evaluates the held-out
``test`` split at the end with the config's decoder thresholds (which were chosen on
``val`` by ``benchmarks/recipe.py``, never on ``test``), and writes ``metrics.json``
(test metrics with per-class PQ, the val curve, times) plus PNG figures: input,
panoptic prediction, ground truth, the embedding as RGB, the paper's Fig. 1
distance-to-pixel heatmap and the curve. A re-run resumes an interrupted run or only
re-evaluates a finished one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "run_demo", "draw_figures", "draw_curve", "cpu_plan", "busy_cores",
    "DEMO_TRAIN_IMAGES", "DEMO_VAL_IMAGES", "DEMO_TEST_IMAGES",
]

#: Synthetic images generated for the demo, per split.
DEMO_TRAIN_IMAGES = 400
DEMO_VAL_IMAGES = 50
DEMO_TEST_IMAGES = 100


def busy_cores(window_s: float = 0.5) -> float | None:
    """How many cores other processes keep busy right now (Linux ``/proc/stat``).

    Samples the aggregate CPU counters twice ``window_s`` apart while this process
    sleeps. Unlike the load average, which needs minutes to decay after a burst (an
    install, a test run), this reflects the present. ``None`` where unavailable.
    """
    import os

    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    first = read()
    if first is None:
        return None
    time.sleep(window_s)
    second = read()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (1.0 - idle / total) * (os.cpu_count() or 1)


def cpu_plan(cores: int | None = None, busy: float | None = None) -> list[str]:
    """Threads and data workers for the demo on this CPU, as config overrides.

    On an idle 2-core machine two compute threads with in-process data loading are
    fastest (8.5 steps/s against 5.8 for one thread plus one worker, measured on the
    reference machine). When other jobs keep a core busy, two OpenMP threads spin
    against them and training slows several-fold, so a busy machine gets one compute
    thread plus one data worker (the ``synthetic`` config's setting).

    Args:
        cores: CPU count (default ``os.cpu_count()``).
        busy: cores kept busy by other processes (default :func:`busy_cores`, else the
            1-minute load average).
    """
    import os

    cores = cores or os.cpu_count() or 1
    if busy is None:
        busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # not available on every platform
            busy = 0.0
    if cores <= 2 and busy > 0.5:
        return ["train.threads=1", "data.num_workers=1"]
    return [f"train.threads={min(cores, 8)}", "data.num_workers=0" if cores <= 2 else "data.num_workers=2"]


def _pick_target(gt_pan: np.ndarray, segments: list[dict[str, Any]], metadata: Any) -> tuple[int, int]:
    """A pixel near the centre of the largest thing segment (else the image centre)."""
    things = [s for s in segments if metadata.category(int(s["category_id"]))["isthing"] and not s.get("iscrowd", 0)]
    if not things:
        return gt_pan.shape[0] // 2, gt_pan.shape[1] // 2
    best = max(things, key=lambda s: int((gt_pan == int(s["id"])).sum()))
    ys, xs = np.nonzero(gt_pan == int(best["id"]))
    # The pixel of the segment closest to its centroid (the centroid may lie outside it).
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])


@torch.no_grad()
def draw_figures(checkpoint: str | Path, records: Sequence[dict[str, Any]], out_dir: str | Path, *, index: int = 0) -> dict[str, str]:
    """Write the demo figures for validation record ``index``.

    Files: ``input.png``, ``prediction.png``, ``ground_truth.png``, ``embedding_rgb.png``
    (PCA of the D embedding dimensions to RGB), ``distance_heatmap.png`` (cosine distance
    of every pixel to one thing pixel, marked red; Fig. 1) and ``overview.png`` (all of
    them in one panel).

    Returns:
        figure name -> path.
    """
    from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding
    from hle.engine.inference import decode_outputs, load_trained, run_model, to_dataset_ids
    from hle.visualize import (
        class_palette,
        colorize_panoptic,
        denormalize_image,
        distance_heatmap,
        embedding_to_rgb,
        save_panel,
        save_png,
    )

    loaded = load_trained(checkpoint)
    metadata = loaded.metadata
    mapper = build_mapper(loaded.config, metadata, train=False)
    sample = mapper(records[index], index=index)
    image = sample["image"][None]
    outputs = run_model(loaded.model, image, flip=loaded.config.eval.flip)
    result = decode_outputs(
        loaded.model, outputs, metadata.is_thing, decoder_params(loaded.config),
        split_embedding=decoder_split_embedding(loaded.config),
    )[0]
    pan, segments = to_dataset_ids(result, metadata)
    gt_pan = sample["panoptic"].numpy()
    gt_segments = sample["segments_info"]

    palette = class_palette(len(metadata.categories), [c["color"] for c in metadata.categories])
    pos = {c["id"]: i for i, c in enumerate(metadata.categories)}

    def paint(ids: np.ndarray, segs: list[dict[str, Any]]) -> np.ndarray:
        return colorize_panoptic(
            ids,
            [dict(s, category_id=pos[int(s["category_id"])], isthing=metadata.category(int(s["category_id"]))["isthing"]) for s in segs],
            palette,
        )

    target = _pick_target(gt_pan, gt_segments, metadata)
    figures = {
        "input": denormalize_image(sample["image"]),
        "prediction": paint(pan, segments),
        "ground_truth": paint(gt_pan, gt_segments),
        "embedding_rgb": embedding_to_rgb(outputs.embedding[0], method="pca"),
        "distance_heatmap": distance_heatmap(outputs.embedding[0], target),
    }
    out = Path(out_dir)
    paths = {name: str(save_png(img, out / f"{name}.png")) for name, img in figures.items()}
    titles = {
        "input": "input",
        "prediction": "panoptic prediction",
        "ground_truth": "ground truth",
        "embedding_rgb": f"embedding (PCA of {outputs.embedding.shape[1]} dims to RGB)",
        "distance_heatmap": "cosine distance to the red pixel",
    }
    paths["overview"] = str(save_panel({titles[k]: v for k, v in figures.items()}, out / "overview.png", columns=3))
    return paths


def draw_curve(metrics_jsonl: str | Path, path: str | Path) -> Path | None:
    """PQ and PQ_th of the periodic validation evaluations against steps (``None`` if none)."""
    from hle.visualize import save_curve

    source = Path(metrics_jsonl)
    if not source.is_file():
        return None
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rows = sorted({int(r["step"]): r for r in rows if "PQ" in r}.values(), key=lambda r: int(r["step"]))
    if not rows:
        return None
    series = {key: [r[key] for r in rows] for key in ("PQ", "PQ_th", "PQ_st") if all(key in r for r in rows)}
    return save_curve([int(r["step"]) for r in rows], series, path, ylabel="validation (0-100)",
                      title="synthetic val during training")


def _evaluate_test(checkpoint: Path, config: Any, records: Sequence[dict[str, Any]], progress: bool) -> dict[str, Any]:
    """Metrics of the checkpoint on the test records with the config's eval settings."""
    from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding
    from hle.engine.inference import evaluate_records, load_trained

    loaded = load_trained(checkpoint)
    mapper = build_mapper(loaded.config, loaded.metadata, train=False)
    result = evaluate_records(
        loaded.model, records, loaded.metadata, mapper, flip=config.eval.flip,
        native=config.eval.native_resolution, decoder_params=decoder_params(config),
        split_embedding=decoder_split_embedding(config), progress=progress,
    )
    metrics = dict(result.metrics)
    metrics["per_class_pq"] = {v["name"]: round(v["pq"], 2) for v in metrics.pop("per_class").values()}
    return metrics


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    steps: int | None = None,
    minutes: float | None = None,
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    num_train: int = DEMO_TRAIN_IMAGES,
    num_val: int = DEMO_VAL_IMAGES,
    num_test: int = DEMO_TEST_IMAGES,
) -> dict[str, Any]:
    """Run (or resume, or re-evaluate) the demo; returns the metrics written.

    Args:
        out_dir: run folder (checkpoints, TensorBoard logs, figures, metrics.json).
        steps: training steps (default: the ``synthetic`` config's ``train.steps``).
        minutes: optional wall-clock bound on training; the run then stops at whichever
            comes first, and the result depends on the machine's speed.
        data_dir: synthetic dataset folder (default ``out_dir/data``).
        overrides: ``key=value`` overrides of the ``synthetic`` config.
        progress: progress bars.
        num_train, num_val, num_test: synthetic images per split.

    Returns:
        The test metrics (0-100, ``per_class_pq`` by class name) with ``steps``, the
        times in minutes, the val curve (``val_curve``) and the settings used.
    """
    from hle.config import config_to_dict, load_config
    from hle.data import generate_synthetic
    from hle.engine.build import load_records
    from hle.engine.trainer import train

    t0 = time.perf_counter()
    plan = cpu_plan()  # before data generation, whose own load would skew the reading
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir else out / "data"
    generate_synthetic(data, num_train, num_val, num_test, progress=progress)
    gen_s = time.perf_counter() - t0

    threading = [] if any(o.startswith(("train.threads=", "data.num_workers=")) for o in overrides) else plan
    bounds = ([f"train.steps={steps}"] if steps is not None else []) + (
        [f"train.max_minutes={minutes}"] if minutes is not None else [])
    config = load_config("synthetic", [f"data.root={data}", *threading, *bounds, *overrides])
    result = train(config, out, resume=True, progress=progress)
    if result.interrupted:
        # The checkpoint is saved; the next run resumes from it with the same schedule.
        raise KeyboardInterrupt(f"demo interrupted at step {result.step}; run it again to resume")
    test_records, _ = load_records(config.data.name, config.data.root, "test")
    metrics = _evaluate_test(out / "last.pt", config, test_records, progress)
    figures = draw_figures(out / "last.pt", test_records, out / "figures")
    curve = draw_curve(out / "metrics.jsonl", out / "figures" / "pq_vs_steps.png")
    if curve is not None:
        figures["pq_vs_steps"] = str(curve)
    val_curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] if (
        out / "metrics.jsonl").is_file() else []
    metrics.update(
        split="test",
        steps=result.step,
        train_minutes=result.elapsed_s / 60.0,
        total_minutes=(time.perf_counter() - t0) / 60.0,
        data_minutes=gen_s / 60.0,
        steps_per_s_this_run=result.steps_per_s,
        finished=result.finished,
        num_images={"train": num_train, "val": num_val, "test": num_test},
        torch_threads=torch.get_num_threads(),
        data_workers=config.data.num_workers,
        cpu_plan=plan,
        cpu=cpu_name(),
        decoder=config_to_dict(config)["eval"]["decoder"],
        flip=config.eval.flip,
        native_resolution=config.eval.native_resolution,
        figures=figures,
        val_curve=[{k: r[k] for k in ("step", "PQ", "PQ_th", "PQ_st") if k in r} for r in val_curve],
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def cpu_name() -> str:
    """The CPU model name (Linux ``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
