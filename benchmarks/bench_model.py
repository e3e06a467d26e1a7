"""Benchmark: forward+backward time of the HLE network (proposed benchmarks/bench_model.py).

Target (issue 4, make demo): the ``tiny`` network trains at batch 4, 128x256 on 2 CPU cores
well under 0.2 s per step (network alone: forward, backward, Adam step). The baseline timed
in the same process is the same DeepLabV3+ over torchvision's MobileNetV2. Prints a table and
writes ``benchmarks/results/bench_model.json``.

    python benchmarks/bench_model.py [--threads 2] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from hle.models import HLENet, param_groups


def time_steps(backbone: str, batch: int, height: int, width: int, steps: int, upsample: bool) -> dict:
    torch.manual_seed(0)
    model = HLENet(backbone, num_classes=9, embedding_dim=8).train()
    opt = torch.optim.Adam(param_groups(model, 1e-3))
    images = torch.randn(batch, 3, height, width)
    times = []
    for _ in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        out = model(images, upsample=upsample)
        loss = sum(t.mean() for t in out if t is not None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    times = sorted(times[3:])
    return {
        "backbone": backbone,
        "batch": batch,
        "size": [height, width],
        "upsample": upsample,
        "params": sum(p.numel() for p in model.parameters()),
        "median_s": times[len(times) // 2],
        "min_s": times[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [
        time_steps("tiny", 4, 128, 256, args.steps, upsample=False),
        time_steps("tiny", 4, 128, 256, args.steps, upsample=True),
        time_steps("mobilenet_v2", 4, 128, 256, max(args.steps // 4, 3), upsample=False),
    ]
    print(f"{'backbone':<14}{'upsample':>9}{'params':>10}{'median ms':>11}{'min ms':>9}{'steps/s':>9}")
    for r in rows:
        print(f"{r['backbone']:<14}{str(r['upsample']):>9}{r['params']:>10}"
              f"{r['median_s'] * 1e3:>11.1f}{r['min_s'] * 1e3:>9.1f}{1 / r['median_s']:>9.2f}")
    ratio = rows[2]["median_s"] / rows[0]["median_s"]
    print(f"tiny is {ratio:.1f}x faster than the MobileNetV2 baseline; target < 0.2 s/step: "
          f"{'met' if rows[0]['median_s'] < 0.2 else 'NOT met'}")
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    result = {"threads": args.threads, "load_avg": os.getloadavg(), "torch": torch.__version__,
              "rows": rows, "speedup_vs_mobilenet_v2": ratio}
    (out / "bench_model.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
