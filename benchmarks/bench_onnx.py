"""Benchmark: the network per 1024x2048 image through onnxruntime vs PyTorch on the CPU.

For ``tiny`` and ``mobilenet_v2`` (untrained: the cost does not depend on the weights;
19 classes, D = 12) the network runs at its decoder stride (``upsample=False``, the graph
``hle export`` writes) on one 1024x2048 image, batch 1, through PyTorch and through
:class:`hle.export.onnx.OnnxModel` (onnxruntime, CPU provider), with 1 and 2 threads
(``torch.set_num_threads`` / onnxruntime ``intra_op_num_threads``). Rounds are
interleaved in one process (every backend and thread count once per round, after one
warm-up call each); wall time and process CPU time are recorded, medians reported. Also
recorded: the export time and graph size of the two ``torch.onnx`` exporters, and the
size of an ``hle explore`` page for one such image. Prints a table and writes
``benchmarks/results/bench_onnx.json``.

    python benchmarks/bench_onnx.py [--rounds 5] [--backbones tiny mobilenet_v2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hle.export.onnx import ExportInfo, OnnxModel, _StrideOutputs, export_onnx
from hle.models import HLENet

SIZE = (1024, 2048)
CATEGORIES = {"name": "bench", "categories": [{"id": i, "name": f"c{i}", "isthing": int(i >= 11)} for i in range(19)]}


def build(backbone: str) -> HLENet:
    torch.manual_seed(0)
    return HLENet(backbone, num_classes=19, embedding_dim=12).eval()


def exporter_row(model: HLENet, backbone: str, folder: Path) -> dict[str, Any]:
    """Export time, node count and agreement of the dynamo (used) and TorchScript exporters."""
    import onnx

    info = ExportInfo(model.class_means.detach(), model.class_sigma().detach(), CATEGORIES, decoder_stride=model.decoder_stride)
    start = time.perf_counter()
    path = export_onnx(model, folder / f"{backbone}.onnx", info)
    dynamo_s = time.perf_counter() - start
    legacy = folder / f"{backbone}_torchscript.onnx"
    names = ["embedding", "sigma", "spatial_sigma", "seed"]
    start = time.perf_counter()
    torch.onnx.export(
        _StrideOutputs(model).eval(), (torch.randn(2, 3, 64, 96),), str(legacy), dynamo=False,
        input_names=["images"], output_names=names, opset_version=18,
        dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch", 2: "h", 3: "w"} for n in names}},
    )
    legacy_s = time.perf_counter() - start
    nodes = {k: len(onnx.load(str(p), load_external_data=False).graph.node) for k, p in (("dynamo", path), ("torchscript", legacy))}
    return {"backbone": backbone, "export_s": {"dynamo": dynamo_s, "torchscript": legacy_s}, "nodes": nodes,
            "file_mib": path.stat().st_size / 2**20, "path": str(path)}


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_backends(model: HLENet, path: str, rounds: int) -> list[dict[str, Any]]:
    """Interleaved rounds of PyTorch and onnxruntime at 1 and 2 threads on one 1024x2048 image."""
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    sessions = {threads: OnnxModel(path, threads=threads) for threads in (1, 2)}
    runs: dict[tuple[str, int], Callable[[], Any]] = {}
    for threads in (1, 2):
        def torch_run(t: int = threads) -> Any:
            torch.set_num_threads(t)
            with torch.no_grad():
                return model(images, upsample=False)
        runs[("pytorch", threads)] = torch_run
        runs[("onnxruntime", threads)] = lambda s=sessions[threads]: s(images)
    diff = max(float((a - b).abs().max()) for a, b in zip(runs[("pytorch", 1)]()[:4], runs[("onnxruntime", 1)]()[:4]))
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            samples[key].append(timed(run))
    return [
        {"backend": backend, "threads": threads, "wall_s": [w for w, _ in s], "cpu_s": [c for _, c in s],
         "median_wall_s": statistics.median(w for w, _ in s), "median_cpu_s": statistics.median(c for _, c in s),
         "max_abs_diff_vs_pytorch": diff, "load_avg": os.getloadavg()}
        for (backend, threads), s in samples.items()
    ]


def explore_size(model: HLENet, folder: Path) -> dict[str, Any]:
    """Size of the ``hle explore`` page of one 1024x2048 synthetic street scene."""
    from hle.config import load_config
    from hle.data import generate_synthetic
    from hle.data.metadata import Metadata
    from hle.engine.inference import LoadedModel
    from hle.export.explore import write_explorer

    generate_synthetic(folder / "synth", 0, 1, height=SIZE[0], width=SIZE[1], seed=0, progress=False)
    image = next((folder / "synth" / "val" / "images").iterdir())
    loaded = LoadedModel(model, load_config("cityscapes_mnv2"), Metadata.from_dict(CATEGORIES), 0)
    start = time.perf_counter()
    page = write_explorer(loaded, [image], folder / "explore.html")
    row = {"backbone": "mobilenet_v2", "embedding_dim": 12, "size": list(SIZE), "page_mib": page.stat().st_size / 2**20,
           "write_s": time.perf_counter() - start}
    row.update(browser_times(page))
    return row


_CLICK = """() => {
    const view = document.querySelector("section[data-index='0'] .view[data-panel='input']");
    const box = view.getBoundingClientRect(), times = [];
    for (const [fy, fx] of [[0.7, 0.3], [0.5, 0.5], [0.8, 0.8]]) {
        const t = performance.now();
        view.dispatchEvent(new MouseEvent("click", {clientX: box.left + fx * box.width, clientY: box.top + fy * box.height, bubbles: true}));
        times.push(performance.now() - t);
    }
    return times;
}"""


def browser_times(page: Path) -> dict[str, Any]:
    """Load time and per-click time of the page in headless Chromium (if Playwright and chromium are here)."""
    import shutil

    chromium = os.environ.get("HLE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}
    if not chromium:
        return {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        start = time.perf_counter()
        tab.goto(page.resolve().as_uri())
        tab.wait_for_selector("body[data-ready='1']", timeout=120_000)
        load_s = time.perf_counter() - start
        clicks = tab.evaluate(_CLICK)
        browser.close()
    return {"browser": "chromium (headless)", "load_s": load_s, "click_ms": clicks}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "mobilenet_v2"])
    parser.add_argument("--explore-only", action="store_true", help="only the hle explore page size and browser times")
    args = parser.parse_args()
    import onnxruntime

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": cpu_model(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "size": list(SIZE), "rounds": args.rounds, "exporters": [], "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in [] if args.explore_only else args.backbones:
            model = build(backbone)
            export = exporter_row(model, backbone, Path(tmp))
            result["exporters"].append(export)
            for row in time_backends(model, export["path"], args.rounds):
                result["rows"].append(dict(row, backbone=backbone))
        if "mobilenet_v2" in args.backbones:
            result["explore"] = explore_size(build("mobilenet_v2"), Path(tmp))
    print(f"{'backbone':<14}{'backend':<13}{'threads':>8}{'wall ms':>10}{'cpu ms':>10}{'vs pytorch':>12}")
    for r in result["rows"]:
        base = next(x for x in result["rows"] if x["backbone"] == r["backbone"] and x["threads"] == r["threads"] and x["backend"] == "pytorch")
        print(f"{r['backbone']:<14}{r['backend']:<13}{r['threads']:>8}{r['median_wall_s'] * 1e3:>10.0f}"
              f"{r['median_cpu_s'] * 1e3:>10.0f}{base['median_wall_s'] / r['median_wall_s']:>11.2f}x")
    for e in result["exporters"]:
        print(f"export {e['backbone']}: dynamo {e['export_s']['dynamo']:.1f} s ({e['nodes']['dynamo']} nodes), "
              f"torchscript {e['export_s']['torchscript']:.1f} s ({e['nodes']['torchscript']} nodes), {e['file_mib']:.1f} MiB")
        e.pop("path")
    if "explore" in result:
        x = result["explore"]
        print(f"hle explore page, one {SIZE[0]}x{SIZE[1]} image, D=12: {x['page_mib']:.1f} MiB, written in {x['write_s']:.1f} s"
              + (f"; Chromium: loaded in {x['load_s']:.1f} s, clicks {', '.join(f'{t:.0f}' for t in x['click_ms'])} ms"
                 if "load_s" in x else ""))
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / ("bench_explore.json" if args.explore_only else "bench_onnx.json")).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
