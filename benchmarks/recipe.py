"""Train a recipe variant for a fixed number of steps, choose decoder thresholds on val, report test.

The measurement behind every quality number of the synthetic recipe (docs/results.md):

1. train the ``synthetic`` config with the given overrides for ``--steps`` steps, once
   per ``--seeds`` seed (each run resumes if interrupted);
2. run the network once over the ``val`` and ``test`` splits and keep its outputs;
3. grid-search the decoder thresholds on ``val`` only (:data:`GRID`);
4. evaluate ``test`` with the thresholds chosen on ``val`` and write per-class PQ;
5. with ``--diagnose``, measure per ground-truth thing instance of ``test`` (binned by
   area) what the issue asks about small things: semantic recall (share of its pixels
   whose argmax class is its class), the best seed value inside it, the within-instance
   spread of the predicted spatial sigma, and whether it was matched (IoU > 0.5).

Run: ``.venv/bin/python benchmarks/recipe.py --data DIR --out runs/recipe/NAME --steps 3000
--seeds 0,1,2 [key=value ...]``. Writes ``OUT/seed<k>/result.json`` and ``OUT/summary.json``
(mean and standard deviation over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hle.config import load_config
from hle.core.decode import DecoderParams
from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding, load_records
from hle.engine.inference import cache_outputs, decode_outputs, load_trained, resize_ids, to_dataset_ids
from hle.engine.trainer import train
from hle.evaluation import PanopticEvaluator

#: Decoder thresholds searched on val. Areas are in output pixels (128x256 images).
GRID: dict[str, tuple[Any, ...]] = {
    "seed_threshold": (0.3, 0.4, 0.5),
    "merge_threshold": (0.3, 0.5),
    "mask_threshold": (0.3, 0.4, 0.5),
    "min_thing_area": (8, 16),
}
FIXED = {"min_stuff_area": 64}
AREA_BINS = ((0, 100), (100, 400), (400, 10**9))


def evaluate(model: Any, cached: list, metadata: Any, decoder: dict[str, Any], split: bool = False) -> dict[str, Any]:
    """Metrics of decoding cached outputs: PQ, PQ_th, PQ_st (0-100) and per-class PQ by name."""
    evaluator = PanopticEvaluator([c for c in metadata.categories if not c.get("ignore", False)])
    params = DecoderParams(**decoder)
    for item in cached:
        result = decode_outputs(model, item.outputs, metadata.is_thing, params, split_embedding=split,
                                image_size=item.image_size)[0]
        pan, segments = to_dataset_ids(result, metadata)
        evaluator.process(item.gt_pan, item.gt_segments, resize_ids(pan, *item.gt_pan.shape), segments)
    s = evaluator.evaluate()
    out = {"PQ": 100 * s["All"]["pq"], "PQ_th": 100 * s["Things"]["pq"], "PQ_st": 100 * s["Stuff"]["pq"],
           "SQ": 100 * s["All"]["sq"], "RQ": 100 * s["All"]["rq"], "mIoU": 100 * s["miou"]["All"]["miou"]}
    out["per_class"] = {v["name"]: round(100 * v["pq"], 2) for v in s["per_class"].values()}
    return out


def search(
    model: Any, cached: list, metadata: Any, base: dict[str, Any], split: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid point with the best val PQ (ties: the first in grid order) and its metrics."""
    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    for values in itertools.product(*GRID.values()):
        decoder = {**base, **FIXED, **dict(zip(GRID, values))}
        metrics = evaluate(model, cached, metadata, decoder, split)
        if best is None or metrics["PQ"] > best[0]:
            best = (metrics["PQ"], decoder, metrics)
    assert best is not None
    return best[1], best[2]


@torch.no_grad()
def diagnose(model: Any, cached: list, metadata: Any, decoder: dict[str, Any], split: bool = False) -> dict[str, Any]:
    """Per-instance small-thing diagnostics on cached outputs, binned by instance area."""
    means, sigma = model.class_means.float(), model.class_sigma().float()
    rows: list[dict[str, Any]] = []
    for item in cached:
        out = item.outputs
        size = item.image_size
        up = [torch.nn.functional.interpolate(t.float(), size=size, mode="bilinear", align_corners=False)
              if t.shape[-2:] != torch.Size(size) else t.float() for t in out[:4]]
        emb = torch.nn.functional.normalize(up[0][0], dim=0)
        logits = -(1 - torch.einsum("dhw,cd->chw", emb, torch.nn.functional.normalize(means, dim=1))) / (2 * sigma[:, None, None] ** 2)
        label = logits.argmax(0).numpy()
        seed, ssig = up[3][0, 0].numpy(), up[2][0, 0].numpy()
        result = decode_outputs(model, out, metadata.is_thing, DecoderParams(**decoder), split_embedding=split,
                                image_size=size)[0]
        pred, pred_segs = to_dataset_ids(result, metadata)
        gt = item.gt_pan
        for seg in item.gt_segments:
            cat = metadata.category(int(seg["category_id"]))
            if not cat["isthing"] or seg.get("iscrowd", 0):
                continue
            m = gt == int(seg["id"])
            area = int(m.sum())
            if area == 0:
                continue
            tid = metadata.train_id(cat["id"])
            ids, counts = np.unique(pred[m], return_counts=True)
            matched = False
            for pid, inter in zip(ids, counts):
                ps = next((p for p in pred_segs if p["id"] == pid), None)
                if ps is None or ps["category_id"] != cat["id"]:
                    continue
                union = area + int((pred == pid).sum()) - int(inter)
                matched = matched or inter / union > 0.5
            rows.append({"class": cat["name"], "area": area, "recall": float((label[m] == tid).mean()),
                         "seed_max": float(seed[m].max()), "ssig_cv": float(ssig[m].std() / ssig[m].mean()),
                         "ssig_mean": float(ssig[m].mean()), "matched": bool(matched)})
    summary: dict[str, Any] = {}
    for lo, hi in AREA_BINS:
        sel = [r for r in rows if lo <= r["area"] < hi]
        if not sel:
            continue
        key = f"area {lo}-{hi if hi < 10**9 else 'inf'}"
        summary[key] = {
            "n": len(sel),
            "by_class": {c: sum(r["class"] == c for r in sel) for c in sorted({r["class"] for r in sel})},
            "matched": round(float(np.mean([r["matched"] for r in sel])), 3),
            "semantic_recall": round(float(np.mean([r["recall"] for r in sel])), 3),
            "seed_max_median": round(float(np.median([r["seed_max"] for r in sel])), 3),
            "seed_max_below_threshold": round(float(np.mean([r["seed_max"] <= decoder["seed_threshold"] for r in sel])), 3),
            "spatial_sigma_cv_median": round(float(np.median([r["ssig_cv"] for r in sel])), 3),
            "spatial_sigma_px_median": round(64 * float(np.median([r["ssig_mean"] for r in sel])), 1),
        }
    return summary


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    out = Path(args.out) / f"seed{seed}"
    result_path = out / "result.json"
    if result_path.is_file() and not args.force_eval:
        return json.loads(result_path.read_text())
    overrides = [f"data.root={args.data}", f"train.steps={args.steps}", "train.max_minutes=null",
                 "train.eval_every=0", f"train.seed={seed}", f"train.threads={args.threads}", *args.overrides]
    config = load_config(args.config, overrides)
    t0 = time.perf_counter()
    trained = train(config, out, resume=True, progress=not args.no_progress)
    if not trained.finished:
        sys.exit(f"training of {out} did not finish (interrupted at step {trained.step}); run again to resume")
    loaded = load_trained(out / "last.pt")
    model, metadata = loaded.model, loaded.metadata
    mapper = build_mapper(loaded.config, metadata, train=False)
    cached = {}
    for split in ("val", "test"):
        records, _ = load_records(config.data.name, config.data.root, split)
        cached[split] = cache_outputs(model, records, mapper, flip=config.eval.flip, native=config.eval.native_resolution)
    base = dataclasses.asdict(decoder_params(loaded.config))
    split = decoder_split_embedding(loaded.config)
    decoder, val = search(model, cached["val"], metadata, base, split)
    test = evaluate(model, cached["test"], metadata, decoder, split)
    result: dict[str, Any] = {
        "seed": seed, "steps": trained.step, "train_minutes": trained.elapsed_s / 60,
        "overrides": list(args.overrides), "decoder": decoder, "val": val, "test": test,
        "eval_minutes": (time.perf_counter() - t0 - trained.elapsed_s) / 60,
    }
    if args.diagnose:
        result["diagnostics"] = diagnose(model, cached["test"], metadata, decoder, split)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="synthetic dataset root (train/val/test)")
    parser.add_argument("--out", required=True, help="output folder of this variant")
    parser.add_argument("--config", default="synthetic")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0],
                        help="comma-separated training seeds (default: 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument("--force-eval", action="store_true", help="re-evaluate even if result.json exists")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    results = [run_seed(args, s) for s in args.seeds]
    summary: dict[str, Any] = {"overrides": args.overrides, "steps": args.steps, "seeds": args.seeds}
    for split in ("val", "test"):
        for key in ("PQ", "PQ_th", "PQ_st", "mIoU"):
            values = [r[split][key] for r in results]
            summary[f"{split}_{key}"] = [round(statistics.mean(values), 2),
                                         round(statistics.stdev(values), 2) if len(values) > 1 else 0.0]
    names = results[0]["test"]["per_class"].keys()
    summary["test_per_class"] = {n: round(statistics.mean(r["test"]["per_class"][n] for r in results), 1) for n in names}
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
