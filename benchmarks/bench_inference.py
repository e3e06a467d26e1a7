"""End-to-end inference per 1024x2048 image: network + decoder, three pipelines.

    full       HLENet(upsample=True) -> decode_panoptic()              (image-size maps)
    ds4        HLENet(upsample=True) -> decode_panoptic(DecoderParams(downsample=4))  (Supplementary C)
    native     HLENet(upsample=False) -> decode_panoptic(stride=4, output_size=(H, W))
               (``eval.native_resolution``: the decoder reads the network's own
               stride-4 outputs, nothing is upsampled but the final id map)

All three return a 1024x2048 id map. The network (tiny and MobileNetV2 DeepLabV3+,
D=12, 19 classes) is timed untrained: its cost does not depend on its weights. An
untrained network's outputs give the decoder nothing to do, so the decoder is timed
on the Cityscapes-like maps of ``bench_decode.py`` (30 instances, 19 classes): at
full resolution for full/ds4, and their 256x512 block centres for native. Times are
medians of ``--repeats`` runs after one warm-up, in one process with ``--threads``
torch threads. Prints a table and writes ``benchmarks/results/bench_inference.json``.

Usage: ``python benchmarks/bench_inference.py [--threads 1] [--repeats 3]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench_decode import synthetic_outputs  # same folder: the benchmark's Cityscapes-like maps
from hle.core.decode import DecoderParams, decode_panoptic
from hle.core.types import HLEOutputs
from hle.models import HLENet

HEIGHT, WIDTH, NUM_CLASSES = 1024, 2048, 19


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def time_network(backbone: str, repeats: int) -> dict[str, float]:
    """Median forward ms at image resolution (upsample) and at the decoder stride (native)."""
    torch.manual_seed(0)
    model = HLENet(backbone, num_classes=NUM_CLASSES, embedding_dim=12).eval()
    images = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        upsampled, _ = median_ms(lambda: model(images, upsample=True), repeats)
        native, out = median_ms(lambda: model(images, upsample=False), repeats)
    assert tuple(out.embedding.shape[-2:]) == (HEIGHT // model.decoder_stride, WIDTH // model.decoder_stride)
    return {"full": upsampled, "ds4": upsampled, "native": native}


def time_decoder(repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median decode ms of the three pipelines on bench_decode's synthetic maps."""
    maps = synthetic_outputs()
    full = HLEOutputs(*(maps[k] for k in ("embedding", "sigma", "spatial_sigma", "seed")))
    native = HLEOutputs(*(t[:, 2::4, 2::4].contiguous() for t in full[:4]))
    classes = (maps["class_means"], maps["class_sigma"], maps["is_thing"])
    params = DecoderParams(min_thing_area=64, min_stuff_area=2048)
    ds4 = dataclasses.replace(params, downsample=4)
    cases = {
        "full": lambda: decode_panoptic(full, *classes, params),
        "ds4": lambda: decode_panoptic(full, *classes, ds4),
        "native": lambda: decode_panoptic(native, *classes, params, stride=4.0, output_size=(HEIGHT, WIDTH)),
    }
    times, instances = {}, {}
    for name, fn in cases.items():
        times[name], result = median_ms(fn, repeats)
        assert tuple(result.panoptic.shape) == (HEIGHT, WIDTH)
        instances[name] = sum(s["isthing"] for s in result.segments_info)
    return times, instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "mobilenet_v2"])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_inference.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decode, instances = time_decoder(max(args.repeats, 5))
    rows = []
    for backbone in args.backbones:
        network = time_network(backbone, args.repeats)
        total = {k: network[k] + decode[k] for k in decode}
        rows.append({"backbone": backbone, "network_ms": network, "decode_ms": decode, "total_ms": total})
    print(f"{HEIGHT}x{WIDTH}, batch 1, torch threads={args.threads}, median of {args.repeats} "
          f"(decoder: {max(args.repeats, 5)}); instances decoded: {instances}")
    print(f"{'backbone':<14}{'pipeline':<9}{'network ms':>11}{'decode ms':>10}{'total ms':>10}{'x full':>8}")
    for row in rows:
        for name in ("full", "ds4", "native"):
            total = row["total_ms"][name]
            print(f"{row['backbone']:<14}{name:<9}{row['network_ms'][name]:>11.0f}{row['decode_ms'][name]:>10.1f}"
                  f"{total:>10.0f}{row['total_ms']['full'] / total:>8.2f}")
    result = {
        "benchmark": "inference",
        "size": [HEIGHT, WIDTH],
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "load_avg_1min": os.getloadavg()[0],
        "instances_decoded": instances,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
