"""The training loop: Adam + poly decay, checkpoints, exact resume, DDP, logging.

This module owns one function, :func:`train`, and the small pieces it is made of. A
step is ``images -> model -> HLEOutputs -> hle_loss -> backward -> clip -> Adam``; the
loss can be computed at the decoder stride against nearest-subsampled targets
(:func:`subsample_targets`). Every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at
the end, ``last.pt`` is written atomically with the model, optimiser, schedule, AMP
scaler, step, data-order position, elapsed time, RNG states and the config; the best
validation PQ so far is kept in ``best.pt``. ``resume=True`` restores all of it, so the
interrupted run and an uninterrupted one produce the same weights. Run under
``torchrun`` it trains with DistributedDataParallel (SyncBatchNorm, one data slice per
process, logging and checkpoints on rank 0).
"""
from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from hle.config import Config, config_from_dict, config_to_dict
from hle.core.kernels import IGNORE_LABEL
from hle.core.types import HLEOutputs, PanopticTargets
from hle.engine import distributed as hdist
from hle.engine.build import (
    build_loss_options, build_mapper, build_model, decoder_params, decoder_split_embedding, load_records, loss_stride,
)
from hle.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from hle.engine.optim import PolySchedule, build_optimizer
from hle.engine.sampling import ResumableSampler, SeededDataset

__all__ = ["train", "TrainResult", "subsample_targets", "HLETrainStep", "optimizer_step", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What a call to :func:`train` did (``model``: the trained network, unwrapped)."""

    out_dir: Path
    step: int
    finished: bool
    interrupted: bool
    elapsed_s: float
    best_pq: float | None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    steps_per_s: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)


def subsample_targets(targets: PanopticTargets, stride: int, size: tuple[int, int]) -> PanopticTargets:
    """Nearest-neighbour subsampling of ``[B, H, W]`` targets to a ``[B, h, w]`` map.

    Pixel ``(i, j)`` of the reduced map covers input pixels ``stride*i .. stride*i+stride-1``;
    it takes the label at offset ``(stride - 1) // 2`` (the pixel nearest the centre that
    :func:`hle.core.kernels.pixel_coordinates` uses, ties to the top-left). Rows/columns
    past the input (when ``H`` is not a multiple of ``stride``) are void.

    Args:
        targets: full-resolution targets ``[B, H, W]``.
        stride: integer factor.
        size: ``(h, w)`` of the reduced outputs (``ceil(H / stride)`` etc.).
    """
    if stride == 1 and tuple(targets.semantic.shape[-2:]) == tuple(size):
        return targets
    h, w = size
    off = (stride - 1) // 2
    fill = {"semantic": IGNORE_LABEL, "instance": 0, "thing": False, "ignore": True, "crowd": False}
    out = {}
    for name in PanopticTargets._fields:
        t = getattr(targets, name)
        sub = t[:, off::stride, off::stride][:, :h, :w]
        if tuple(sub.shape[-2:]) != (h, w):
            full = torch.full((t.shape[0], h, w), fill[name], dtype=t.dtype, device=t.device)
            full[:, : sub.shape[1], : sub.shape[2]] = sub
            sub = full
        out[name] = sub
    return PanopticTargets(**out)


class HLETrainStep(nn.Module):
    """Model + loss in one module, so DDP sees every parameter used in ``forward``.

    The class means and sigmas enter only the loss; wrapping the pair lets
    DistributedDataParallel reduce their gradients like any other. Not part of the
    model (the network never computes its own loss); this is an engine detail.
    """

    def __init__(self, model: nn.Module, is_thing: torch.Tensor, loss_options: Any, stride: int, amp: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("is_thing", is_thing.to(torch.bool), persistent=False)
        self.loss_options = loss_options
        self.stride = int(stride)
        self.amp = bool(amp)

    def forward(self, images: torch.Tensor, targets: PanopticTargets) -> dict[str, torch.Tensor]:
        from hle.core.hle_loss import hle_loss

        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            outputs = self.model(images, upsample=self.stride == 1)
        # The loss runs in float32: Lovász sorts and exp() kernels are fragile in half precision.
        outputs = HLEOutputs(*(None if t is None else t.float() for t in outputs))
        targets = subsample_targets(targets, self.stride, tuple(outputs.embedding.shape[-2:]))
        return hle_loss(outputs, targets, self.model.class_means, self.model.class_sigma(), self.is_thing, self.loss_options)


class _StopFlag:
    """Set by SIGINT/SIGTERM; a second SIGINT raises ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name


@contextmanager
def _signal_handlers(flag: _StopFlag) -> Iterator[None]:
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, flag)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _to_device(images: torch.Tensor, targets: PanopticTargets, device: torch.device) -> tuple[torch.Tensor, PanopticTargets]:
    nb = device.type == "cuda"
    return images.to(device, non_blocking=nb), PanopticTargets(*(t.to(device, non_blocking=nb) for t in targets))


def _collate_fn() -> Callable:
    from hle.data import collate

    return collate


def make_loader(dataset: Any, sampler: Any, batch_size: int, num_workers: int, *, drop_last: bool, device: torch.device) -> DataLoader:
    """A DataLoader over a :class:`SeededDataset` with the HLE collate function."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate_fn(),
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        # Fresh workers per epoch: the mapper's epoch is set per item anyway, and
        # persistent workers would keep a stale copy of the dataset.
        persistent_workers=False,
        # A private generator: otherwise each new iterator draws its worker base seed
        # from the global torch RNG, and a resumed run (one extra iterator) would drift.
        generator=torch.Generator().manual_seed(0),
    )


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: PolySchedule,
    scaler: torch.amp.GradScaler,
    config: Config,
    metadata: Any,
    *,
    step: int,
    epoch: int,
    position: int,
    elapsed_s: float,
    best_pq: float | None,
    finished: bool,
) -> dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "epoch": epoch,
        "position": position,
        "elapsed_s": elapsed_s,
        "best_pq": best_pq,
        "finished": finished,
        "rng": capture_rng_state(),
        "config": config_to_dict(config),
        "metadata": metadata.to_dict() if hasattr(metadata, "to_dict") else None,
    }


def optimizer_step(
    step_module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: PanopticTargets,
    grad_clip: float,
) -> dict[str, float]:
    """One step: loss (Eq. 16) -> backward (AMP-scaled) -> clip the global norm -> Adam.

    Args:
        step_module: :class:`HLETrainStep`, possibly inside DDP.
        model: the plain network (its parameters are clipped).
        images: ``[B, 3, H, W]``; targets: ``[B, H, W]`` each.
        grad_clip: maximum global gradient norm (``0``: no clipping).

    Returns:
        Every scalar loss term as a float (``total`` included).
    """
    losses = step_module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.dim() == 0}


def _write_scalars(writer: Any, losses: dict[str, float], optimizer: torch.optim.Optimizer, step: int) -> None:
    for k, v in losses.items():
        writer.add_scalar(f"loss/{k}", v, step)
    for group in optimizer.param_groups:
        writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], step)


def _format_losses(losses: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.3f}" for k, v in losses.items()}


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the HLE network described by ``config``; write checkpoints under ``out_dir``.

    Files: ``last.pt`` (every ``checkpoint_every`` steps, on interruption and at the
    end), ``best.pt`` (best validation PQ), ``metrics.jsonl`` (one line per
    evaluation), ``config.yaml`` and TensorBoard event files in ``tb/``.

    Args:
        config: the run configuration.
        out_dir: run folder.
        resume: continue from ``out_dir/last.pt`` if it exists (exactly: same data
            order, augmentations, RNG and optimiser state).
        progress: show a tqdm bar (rank 0 only).
        on_step: called with the step number after every optimiser step (tests use it
            to deliver a signal at a chosen step).
        log: where one-line messages go (default ``print`` to stderr on rank 0).

    Returns:
        :class:`TrainResult`. ``interrupted`` is true when a signal stopped the run
        (a checkpoint was written); ``finished`` when the step or time budget ran out.
    """
    import sys

    import yaml

    out = Path(out_dir)
    info = hdist.init_distributed(config.train.device)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not info.is_main:
        say = lambda msg: None  # noqa: E731
    tc, oc = config.train, config.optim
    if tc.batch_size < 1 or tc.steps < 1:
        raise ValueError(f"train.batch_size and train.steps must be >= 1, got {tc.batch_size}, {tc.steps}")

    last_path = out / "last.pt"
    state: dict[str, Any] | None = None
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        saved = config_from_dict(state["config"], strict=False)
        if config_to_dict(saved)["model"] != config_to_dict(config)["model"]:
            say("warning: model section differs from the checkpoint's; using the checkpoint's")
            config.model = saved.model

    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    torch.manual_seed(tc.seed)
    train_records, metadata = load_records(config.data.name, config.data.root, config.data.train_split)
    val_records = None
    if tc.eval_every >= 0 and config.data.val_split:
        try:
            val_records, _ = load_records(config.data.name, config.data.root, config.data.val_split)
        except FileNotFoundError:
            val_records = None
    from hle.data import PanopticDataset

    train_set = SeededDataset(PanopticDataset(train_records, build_mapper(config, metadata, train=True)), tc.seed)
    model = build_model(config, metadata.num_classes, pretrained=state is None).to(info.device)
    amp = bool(tc.amp and info.device.type == "cuda")
    stride = loss_stride(config, model)
    step_module = HLETrainStep(model, metadata.is_thing, build_loss_options(config, stride), stride, amp).to(info.device)
    optimizer = build_optimizer(
        model, lr=oc.lr, class_lr_mult=oc.class_lr_mult, weight_decay=oc.weight_decay, betas=oc.betas
    )
    time_budget = tc.max_minutes * 60.0 if tc.max_minutes else None
    schedule = PolySchedule(
        optimizer,
        total_steps=tc.steps,
        power=oc.poly_power,
        warmup_steps=oc.warmup_steps,
        min_lr_ratio=oc.min_lr_ratio,
        time_budget_s=time_budget,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    step, epoch, position, elapsed_prev = 0, 0, 0, 0.0
    best_pq: float | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        elapsed_prev = float(state["elapsed_s"])
        best_pq = state.get("best_pq")
        restore_rng_state(state["rng"])
        say(f"resumed from {last_path} at step {step}")
    wrapped = hdist.wrap_model(step_module, info)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tb"), purge_step=step if state is not None else None)

    sampler = ResumableSampler(
        len(train_set), num_replicas=info.world_size, rank=info.rank, seed=tc.seed, shuffle=True, drop_last=True
    )
    per_epoch = sampler.samples_per_epoch // tc.batch_size
    if per_epoch < 1:
        raise ValueError(
            f"train.batch_size {tc.batch_size} x {info.world_size} process(es) exceeds the "
            f"{len(train_set)} training images"
        )

    def run_eval(tag_step: int) -> dict[str, Any]:
        from hle.engine.inference import evaluate_records

        if val_records is None:
            return {}
        hdist.average_buffers(model, info)
        result = evaluate_records(
            model,
            val_records[: tc.eval_images] if tc.eval_images else val_records,
            metadata,
            build_mapper(config, metadata, train=False),
            flip=config.eval.flip,
            native=config.eval.native_resolution,
            decoder_params=decoder_params(config),
            split_embedding=decoder_split_embedding(config),
            info=info,
            num_previews=3 if writer is not None else 0,
        )
        metrics, previews = result.metrics, result.previews
        if writer is not None and metrics:
            for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"):
                if key in metrics:
                    writer.add_scalar(f"val/{key}", metrics[key], tag_step)
            for i, panel in enumerate(previews):
                writer.add_image(f"val/prediction_{i}", panel, tag_step, dataformats="HWC")
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": tag_step, **metrics}) + "\n")
        return metrics

    def save(path: Path, finished: bool) -> None:
        hdist.average_buffers(model, info)
        if info.is_main:
            save_checkpoint(
                _checkpoint_state(
                    model, optimizer, schedule, scaler, config, metadata,
                    step=step, epoch=epoch, position=position,
                    elapsed_s=elapsed_prev + (time.perf_counter() - t_start),
                    best_pq=best_pq, finished=finished,
                ),
                path,
            )
        hdist.barrier(info)

    flag = _StopFlag()
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=tc.steps, initial=step, desc="train", dynamic_ncols=True, unit="step")
    t_start = time.perf_counter()
    steps_this_run = 0
    last_metrics: dict[str, Any] = {}
    evaluated_at = -1
    interrupted = False
    log_acc: dict[str, float] = {}
    log_n = 0

    def out_of_budget() -> bool:
        if step >= tc.steps:
            return True
        return time_budget is not None and elapsed_prev + (time.perf_counter() - t_start) >= time_budget

    with _signal_handlers(flag):
        wrapped.train()
        while not out_of_budget() and not interrupted:
            sampler.set_epoch(epoch, position)
            loader = make_loader(train_set, sampler, tc.batch_size, config.data.num_workers, drop_last=True, device=info.device)
            for images, targets, _ in loader:
                images, targets = _to_device(images, targets, info.device)
                schedule.update(step, elapsed_prev + (time.perf_counter() - t_start))
                scalars = optimizer_step(wrapped, model, optimizer, scaler, images, targets, oc.grad_clip)
                step += 1
                steps_this_run += 1
                position += tc.batch_size
                for k, v in scalars.items():
                    log_acc[k] = log_acc.get(k, 0.0) + v
                log_n += 1
                if on_step is not None:
                    on_step(step)
                if writer is not None and (step % max(tc.log_every, 1) == 0):
                    _write_scalars(writer, {k: v / log_n for k, v in log_acc.items()}, optimizer, step)
                    log_acc, log_n = {}, 0
                if bar is not None:
                    if time_budget is not None and schedule.last_progress > 0.01:
                        # Time-bounded run: the step count at the end of the budget is an estimate.
                        bar.total = max(step, min(tc.steps, int(round(step / schedule.last_progress))))
                    bar.update(1)
                    run_s = time.perf_counter() - t_start
                    post = _format_losses({k: scalars[k] for k in ("total", "seg", "ins") if k in scalars})
                    post["img/s"] = f"{steps_this_run * tc.batch_size * info.world_size / max(run_s, 1e-9):.1f}"
                    bar.set_postfix(post, refresh=False)
                if not math.isfinite(scalars["total"]):
                    raise FloatingPointError(f"training loss became {scalars['total']} at step {step}")
                # Agree on stopping across processes so no rank waits in a collective alone.
                stop = torch.tensor(
                    [float(flag.requested), float(out_of_budget())], device=info.device
                )
                if info.distributed:
                    torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
                if tc.eval_every > 0 and step % tc.eval_every == 0 and stop[0] == 0 and stop[1] == 0:
                    wrapped.eval()
                    last_metrics = run_eval(step)
                    evaluated_at = step
                    wrapped.train()
                    pq = last_metrics.get("PQ")
                    if pq is not None and (best_pq is None or pq > best_pq):
                        best_pq = float(pq)
                        save(out / "best.pt", False)
                if stop[0] > 0:
                    interrupted = True
                    break
                if stop[1] > 0:
                    break
                if tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0:
                    save(last_path, False)
            else:
                epoch += 1
                position = 0
                continue
            if position >= per_epoch * tc.batch_size:
                epoch += 1
                position = 0
            if interrupted or out_of_budget():
                break
    if bar is not None:
        bar.close()
    run_s = time.perf_counter() - t_start
    finished = out_of_budget() and not interrupted
    if interrupted:
        say(f"interrupted by {flag.signal_name or 'signal'} at step {step}; checkpoint saved to {last_path}")
    elif finished and evaluated_at != step:
        wrapped.eval()
        last_metrics = run_eval(step)
        pq = last_metrics.get("PQ")
        if pq is not None and (best_pq is None or pq > best_pq):
            best_pq = float(pq)
            save(out / "best.pt", True)
    save(last_path, finished)
    if writer is not None:
        writer.close()
    return TrainResult(
        out_dir=out,
        step=step,
        finished=finished,
        interrupted=interrupted,
        elapsed_s=elapsed_prev + run_s,
        best_pq=best_pq,
        last_metrics=last_metrics,
        steps_per_s=steps_this_run / max(run_s, 1e-9),
        model=model,
    )
