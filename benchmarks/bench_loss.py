"""Speed of the batched HLE loss and Lovász-softmax against per-class/per-instance loops.

At 512x1024, 19 classes (8 things), 30 instances, D=12, one image, times forward +
backward (median of interleaved repeats after one warm-up) of

    hle_loss         hle.core.hle_loss.hle_loss (all terms, default options)
    hle_loss-loop    the same loss written the straightforward way below: one Python
                     iteration, boolean mask, full sort and Berman-style Jaccard
                     gradient per class and per instance
    lovasz_softmax   hle.core.lovasz.lovasz_softmax on 19-class probabilities
    softmax-loop     the same, one full sort per class

in two embedding conditions: "clustered" (class means + per-instance offsets + noise,
like a network part-way through training) and "random" (unit Gaussian noise, like an
untrained network). The HLE loss is also timed on the half-resolution path the trainer
uses (256x512 map, stride 2). Target: hle_loss >= 5x faster than hle_loss-loop at full
size. Loop and batched values are compared, so the benchmark also checks agreement at
scale. Peak memory is the rise of the peak RSS (VmHWM, reset through /proc/self/clear_refs)
during one untimed forward + backward, each in a fresh subprocess so that memory kept by
the allocator from earlier runs does not hide it.

Timings are medians of interleaved repeats, so load from other users of the machine hits
both columns alike; the load average is recorded with every row.

Usage: ``python benchmarks/bench_loss.py [--threads 1 2] [--repeats 5] [--out PATH]``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from hle.core.hle_loss import HLELossOptions, hle_loss
from hle.core.kernels import instance_kernel, pixel_coordinates, semantic_logits
from hle.core.lovasz import lovasz_softmax
from hle.core.thomson import thomson_init
from hle.core.types import HLEOutputs, PanopticTargets

HEIGHT, WIDTH, DIM, NUM_CLASSES, NUM_THINGS, NUM_INSTANCES = 512, 1024, 12, 19, 8, 30
Case = tuple[HLEOutputs, PanopticTargets, torch.Tensor, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- inputs
def synthetic_case(height: int, width: int, condition: str, seed: int = 0) -> Case:
    """A Cityscapes-like crop: Voronoi stuff regions, 30 elliptic thing instances with
    log-uniform sizes (about 10-20% thing pixels), a void band at the bottom and one
    crowd region. Embeddings per ``condition`` (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    num_stuff = NUM_CLASSES - NUM_THINGS
    is_thing = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    is_thing[num_stuff:] = True
    rows = torch.arange(height, dtype=torch.float32)[:, None]
    cols = torch.arange(width, dtype=torch.float32)[None, :]
    sites = torch.rand(40, 2, generator=gen) * torch.tensor([height, width])
    site_class = torch.randint(0, num_stuff, (40,), generator=gen)
    nearest = torch.stack([(rows - y) ** 2 + (cols - x) ** 2 for y, x in sites.tolist()]).argmin(0)
    semantic = site_class[nearest]
    instance = torch.zeros(height, width, dtype=torch.long)
    scale = height / 512
    for i in range(NUM_INSTANCES):
        ry = 6 * scale * 10 ** float(torch.rand(1, generator=gen))     # semi-axes 6..60 px
        rx = ry * (0.7 + float(torch.rand(1, generator=gen)))
        cy = float(torch.rand(1, generator=gen)) * height
        cx = float(torch.rand(1, generator=gen)) * width
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
        instance[inside] = i + 1
        semantic[inside] = num_stuff + int(torch.randint(0, NUM_THINGS, (1,), generator=gen))
    crowd = torch.zeros(height, width, dtype=torch.bool)
    crowd[height // 3: height // 3 + height // 16, : width // 8] = True
    instance[crowd] = 0
    semantic[crowd] = num_stuff
    ignore = torch.zeros(height, width, dtype=torch.bool)
    ignore[-height // 16:, :] = True
    semantic[ignore] = 255
    instance[ignore] = 0

    means = thomson_init(NUM_CLASSES, DIM, seed=seed)
    if condition == "clustered":
        offsets = F.normalize(torch.randn(NUM_INSTANCES + 1, DIM, generator=gen), dim=1)
        base = means[semantic.clamp(max=NUM_CLASSES - 1)] + 0.3 * offsets[instance] * (instance > 0)[..., None]
        emb = base + 0.15 * torch.randn(height, width, DIM, generator=gen)
        class_sigma = torch.full((NUM_CLASSES,), 0.3)
        sigma = 0.2
    elif condition == "random":
        emb = torch.randn(height, width, DIM, generator=gen)
        class_sigma = torch.full((NUM_CLASSES,), 0.5)
        sigma = 0.5
    else:
        raise ValueError(f"condition must be 'clustered' or 'random', got {condition!r}")
    embedding = F.normalize(emb, dim=-1).permute(2, 0, 1)[None].contiguous()
    outputs = HLEOutputs(
        embedding=embedding,
        sigma=torch.full((1, 1, height, width), sigma),
        spatial_sigma=torch.full((1, 1, height, width), 1.0),
        seed=torch.rand(1, 1, height, width, generator=gen) * 0.9 + 0.05,
    )
    targets = PanopticTargets(semantic[None], instance[None], (is_thing[semantic.clamp(max=NUM_CLASSES - 1)]
                              & ~ignore)[None], ignore[None], crowd[None])
    return outputs, targets, means.clone(), class_sigma, is_thing


def with_grad(case: Case) -> tuple[Case, list[torch.Tensor]]:
    outputs, targets, means, class_sigma, is_thing = case
    leaves = [t.detach().clone().requires_grad_() for t in (*outputs[:4], means, class_sigma)]
    return (HLEOutputs(*leaves[:4]), targets, leaves[4], leaves[5], is_thing), leaves


# ----------------------------------------------------------------------------- loop baseline
def berman_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Jaccard gradient by differencing cumulative Jaccard values (the common recipe)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def loop_lovasz_binary(probas: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    errors = (fg.to(probas.dtype) - probas).abs()
    errors_sorted, perm = torch.sort(errors, descending=True)
    return torch.dot(errors_sorted, berman_grad(fg[perm].to(probas.dtype)))


def loop_lovasz_softmax(probas: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """``[B, C, H, W]`` probabilities, classes present, whole batch at once."""
    c = probas.shape[1]
    flat = probas.permute(0, 2, 3, 1).reshape(-1, c)
    labels = labels.reshape(-1)
    valid = labels != ignore
    flat, labels = flat[valid], labels[valid]
    losses = []
    for k in range(c):
        fg = labels == k
        if fg.any():
            losses.append(loop_lovasz_binary(flat[:, k], fg))
    return torch.stack(losses).mean() if losses else probas.sum() * 0.0


def loop_hle_loss(outputs: HLEOutputs, targets: PanopticTargets, class_means: torch.Tensor,
                  class_sigma: torch.Tensor, is_thing: torch.Tensor, stride: float = 1.0,
                  gamma: float = 10.0) -> dict[str, torch.Tensor]:
    """Eq. (11)-(16) with one Python iteration per class and per instance (B = 1)."""
    _, d, h, w = outputs.embedding.shape
    emb = outputs.embedding[0].reshape(d, -1).T
    sigma, spatial, seed = (t[0, 0].reshape(-1) for t in outputs[1:4])
    semantic, instance, ignore, crowd = (t[0].reshape(-1) for t in
                                         (targets.semantic, targets.instance, targets.ignore, targets.crowd))
    coords = pixel_coordinates(h, w, stride=stride)
    valid = ~ignore
    emb_valid = emb[valid]
    probas = torch.softmax(semantic_logits(emb_valid, class_means, class_sigma), dim=0)
    labels = semantic[valid]
    seg_terms, mean_terms = [], []
    for k in range(class_means.shape[0]):
        fg = labels == k
        if fg.any():
            seg_terms.append(loop_lovasz_binary(probas[k], fg))
            target = F.normalize(emb_valid[fg].detach().mean(0), dim=0)
            mean_terms.append((class_means[k] - target).pow(2).sum())
    ins_valid = valid & ~crowd
    e_v, c_v, inst_v = emb[ins_valid], coords[ins_valid], instance[ins_valid]
    ins_terms, var_sq, seed_sq, n_inst = [], [], [], 0
    for l in inst_v.unique().tolist():
        if l == 0:
            continue
        member = inst_v == l
        full_member = ins_valid & (instance == l)
        s_l = sigma[full_member].mean()
        phi = instance_kernel(e_v, c_v, e_v[member].mean(0, keepdim=True), s_l[None],
                              c_v[member].mean(0, keepdim=True), spatial[full_member].mean()[None])[0]
        ins_terms.append(loop_lovasz_binary(phi, member))
        var_sq.append((sigma[full_member] - s_l.detach()).pow(2).sum())
        seed_sq.append((seed[full_member] - phi.detach()[member]).pow(2).sum())
        n_inst += int(member.sum())
    stuff = ins_valid & ~is_thing[semantic.clamp(max=len(is_thing) - 1)]
    seed_sq.append(seed[stuff].pow(2).sum())
    terms = {
        "seg": torch.stack(seg_terms).mean(),
        "seg_mean": torch.stack(mean_terms).mean(),
        "ins": torch.stack(ins_terms).mean(),
        "ins_var": gamma * torch.stack(var_sq).sum() / n_inst,
        "seed": torch.stack(seed_sq).sum() / (n_inst + int(stuff.sum())),
    }
    terms["total"] = sum(terms.values())
    return terms


# ----------------------------------------------------------------------------- measuring
def peak_rss_rise_mib(fn: Callable[[], None]) -> float | None:
    """Rise of the peak resident set size during ``fn`` (Linux only), in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None

    def status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])
        raise KeyError(key)

    before = status("VmRSS:")
    fn()
    return (status("VmHWM:") - before) / 1024


def machine() -> dict[str, object]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                     if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown"
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def case_steps(condition: str, height: int, width: int) -> dict[str, tuple[Callable[[], dict[str, float]], ...]]:
    """Per benchmark case, the (batched, loop) forward + backward closures."""
    full = synthetic_case(height, width, condition)
    half = synthetic_case(height // 2, width // 2, condition)
    probas = torch.softmax(semantic_logits(
        full[0].embedding[0].reshape(DIM, -1).T, full[2], full[3]), dim=0).reshape(1, NUM_CLASSES, height, width)
    labels = full[1].semantic

    def hle_fn(case: Case, stride: float, loop: bool) -> Callable[[], dict[str, float]]:
        def step() -> dict[str, float]:
            args, _ = with_grad(case)
            out = loop_hle_loss(*args, stride=stride) if loop else hle_loss(
                *args, HLELossOptions(stride=stride))
            out["total"].backward()
            return {k: float(v.detach()) for k, v in out.items()}
        return step

    def softmax_fn(loop: bool) -> Callable[[], dict[str, float]]:
        def step() -> dict[str, float]:
            p = probas.detach().clone().requires_grad_()
            loss = loop_lovasz_softmax(p, labels) if loop else lovasz_softmax(p, labels, ignore=255)
            loss.backward()
            return {"loss": float(loss.detach())}
        return step

    return {
        "hle_loss": (hle_fn(full, 1.0, False), hle_fn(full, 1.0, True)),
        "lovasz_softmax": (softmax_fn(False), softmax_fn(True)),
        "hle_loss-stride2": (hle_fn(half, 2.0, False), hle_fn(half, 2.0, True)),
    }


def memory_in_subprocess(condition: str, case: str, variant: int, height: int, width: int,
                         threads: int) -> float | None:
    cmd = [sys.executable, __file__, "--memory-of", condition, case, str(variant),
           "--size", str(height), str(width), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def run(threads: list[int], repeats: int, height: int, width: int) -> dict[str, object]:
    results: dict[str, object] = {"machine": machine(), "size": [height, width], "dim": DIM,
                                  "classes": NUM_CLASSES, "things": NUM_THINGS,
                                  "instances": NUM_INSTANCES, "repeats": repeats,
                                  "load_average_start": os.getloadavg(), "rows": []}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for condition in ("clustered", "random"):
            for name, (batched, loop) in case_steps(condition, height, width).items():
                values_b, values_l = batched(), loop()                 # warm-up + agreement
                diff = max(abs(values_b[k] - values_l[k]) / max(1.0, abs(values_l[k])) for k in values_b)
                times_b, times_l = [], []
                for _ in range(repeats):                                 # interleaved
                    for fn, out in ((batched, times_b), (loop, times_l)):
                        start = time.perf_counter()
                        fn()
                        out.append(time.perf_counter() - start)
                med_b, med_l = statistics.median(times_b), statistics.median(times_l)
                row = {
                    "case": name, "condition": condition, "threads": n_threads,
                    "batched_s": med_b, "loop_s": med_l, "speedup": med_l / med_b,
                    "batched_times": times_b, "loop_times": times_l,
                    "batched_peak_mib": memory_in_subprocess(condition, name, 0, height, width, n_threads),
                    "loop_peak_mib": memory_in_subprocess(condition, name, 1, height, width, n_threads),
                    "max_rel_value_diff": diff, "values": values_b, "load_average": os.getloadavg(),
                }
                results["rows"].append(row)
                peaks = [math.nan if row[k] is None else row[k] for k in ("batched_peak_mib", "loop_peak_mib")]
                print(f"{n_threads}T {name:17s} {condition:9s} batched {med_b * 1e3:8.1f} ms  loop "
                      f"{med_l * 1e3:8.1f} ms  speedup {med_l / med_b:5.1f}x  peak RSS +{peaks[0]:5.0f} / "
                      f"+{peaks[1]:5.0f} MiB  value diff {diff:.1e}  load {os.getloadavg()[0]:.1f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to run (each gets its own rows)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="128x256 smoke run, no JSON written")
    parser.add_argument("--size", type=int, nargs=2, default=[HEIGHT, WIDTH], metavar=("H", "W"))
    parser.add_argument("--memory-of", nargs=3, metavar=("CONDITION", "CASE", "VARIANT"),
                        help=argparse.SUPPRESS)  # internal: one peak-memory measurement
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_loss.json")
    args = parser.parse_args()
    height, width = (128, 256) if args.quick else args.size
    if args.memory_of:
        torch.set_num_threads(args.threads[0])
        condition, case, variant = args.memory_of
        step = case_steps(condition, height, width)[case][int(variant)]
        print(peak_rss_rise_mib(step))
        return
    print(f"{height}x{width}, C={NUM_CLASSES} ({NUM_THINGS} things), {NUM_INSTANCES} instances, D={DIM}, "
          f"threads {args.threads}, median of {args.repeats} (forward + backward)")
    results = run(args.threads, args.repeats, height, width)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
