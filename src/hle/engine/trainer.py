"""The training loop: a :class:`Trainer` that runs steps, and hooks around it.

This module owns :func:`train` and the loop it runs. A step (:meth:`Trainer.run_step`)
is ``images -> model -> HLEOutputs -> hle_loss -> backward -> clip -> Adam``; the loss
can be computed at the decoder stride against nearest-subsampled targets
(:func:`subsample_targets`). A step whose loss terms or gradients are not finite is
skipped: no update, BatchNorm statistics restored. Everything else is a hook
(:mod:`hle.engine.hooks`): budgets, signals, the NaN guard, logging, the progress bar,
checkpoints (``last.pt`` with the model, optimiser, schedule, AMP scaler, step,
data-order position, elapsed time, RNG states and the config; the previous one kept as
``last.prev.pt``) and evaluation with ``best.pt``. ``resume=True`` restores all of it,
so an interrupted or killed run continues to the weights an uninterrupted one reaches.
Run under ``torchrun`` it trains with DistributedDataParallel (SyncBatchNorm on CUDA,
one data slice per process, files written by rank 0).
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from hle.config import Config, ConfigError, check_config, config_from_dict, config_to_dict
from hle.core.hle_loss import HLELossOptions, hle_loss
from hle.core.kernels import IGNORE_LABEL
from hle.core.types import HLEOutputs, PanopticTargets
from hle.data import Metadata, PanopticDataset, collate
from hle.engine import distributed as hdist
from hle.engine import hooks as H
from hle.engine import run_folder
from hle.engine.build import (
    build_loss_options, build_mapper, build_model, decoder_params, decoder_split_embedding, load_records, loss_stride,
)
from hle.engine.checkpoint import (
    CorruptCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from hle.engine.inference import evaluate_records
from hle.engine.optim import PolySchedule, build_optimizer
from hle.engine.sampling import ResumableSampler, SeededDataset, repeats_for

__all__ = [
    "train",
    "TrainResult",
    "Trainer",
    "TrainState",
    "BatchStream",
    "subsample_targets",
    "HLETrainStep",
    "optimizer_step",
    "make_loader",
    "CHECKPOINT_VERSION",
]

#: 2: SHA-256 in the file, ``bad_steps``; version-1 files still resume.
CHECKPOINT_VERSION = 2


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
    bad_steps: int = 0


@dataclass
class TrainState:
    """The loop's counters, saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    elapsed_s: float = 0.0
    best_pq: float | None = None
    bad_steps: int = 0
    finished: bool = False


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

    def __init__(self, model: nn.Module, is_thing: torch.Tensor, loss_options: HLELossOptions, stride: int, amp: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("is_thing", is_thing.to(torch.bool), persistent=False)
        self.loss_options = loss_options
        self.stride = int(stride)
        self.amp = bool(amp)

    def forward(self, images: torch.Tensor, targets: PanopticTargets) -> dict[str, torch.Tensor]:
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            outputs = self.model(images, upsample=self.stride == 1)
        # The loss runs in float32: Lovász sorts and exp() kernels are fragile in half precision.
        outputs = HLEOutputs(*(None if t is None else t.float() for t in outputs))
        targets = subsample_targets(targets, self.stride, tuple(outputs.embedding.shape[-2:]))
        return hle_loss(outputs, targets, self.model.class_means, self.model.class_sigma(), self.is_thing, self.loss_options)


def _non_finite(scalars: dict[str, float]) -> str | None:
    """``"loss term(s) seg=nan, ins=inf"`` naming the bad terms (``total`` only if alone)."""
    bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
    if not bad:
        return None
    named = {k: v for k, v in bad.items() if k != "total"} or bad
    return "non-finite loss term(s) " + ", ".join(f"{k}={v}" for k, v in named.items())


def optimizer_step(
    step_module: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    targets: PanopticTargets,
    grad_clip: float,
    info: hdist.DistInfo | None = None,
) -> tuple[dict[str, float], str | None]:
    """One step: loss (Eq. 16) -> backward (AMP-scaled) -> clip the global norm -> Adam.

    A non-finite loss term, or (without AMP, whose scaler skips such steps itself)
    non-finite gradients, skip the update: the optimiser and scaler are not stepped,
    gradients are dropped and the model's buffers (BatchNorm statistics) are put back
    as they were. Under DDP the processes agree, so all skip together.

    Args:
        step_module: :class:`HLETrainStep`, possibly inside DDP.
        model: the plain network (its parameters are clipped, its buffers guarded).
        images: ``[B, 3, H, W]``; targets: ``[B, H, W]`` each.
        grad_clip: maximum global gradient norm (``0``: no clipping).
        info: the process group, for the agreement (``None``: one process).

    Returns:
        ``(scalars, fault)``: every scalar loss term as a float (``total`` included),
        and ``None`` after an update or a description of what was not finite.
    """
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    losses = step_module(images, targets)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    scalars = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.dim() == 0}
    fault = _non_finite(scalars)
    if fault is None and (grad_clip > 0 or not scaler.is_enabled()):
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not scaler.is_enabled() and not math.isfinite(float(norm)):
            fault = f"non-finite gradient norm {float(norm)} (loss terms finite)"
    if info is not None and hdist.reduce_max(float(fault is not None), info) > 0 and fault is None:
        fault = "non-finite values on another process"
    if fault is not None:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, old in zip(buffers, saved):
                buf.copy_(old)
        return scalars, fault
    scaler.step(optimizer)
    scaler.update()
    return scalars, None


def make_loader(dataset: Any, sampler: Any, batch_size: int, num_workers: int, *, drop_last: bool, device: torch.device) -> DataLoader:
    """A DataLoader over a :class:`SeededDataset` with the HLE collate function."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        # Fresh workers per epoch: the mapper's epoch is set per item anyway, and
        # persistent workers would keep a stale copy of the dataset.
        persistent_workers=False,
        # A private generator: otherwise each new iterator draws its worker base seed
        # from the global torch RNG, and a resumed run (one extra iterator) would drift.
        generator=torch.Generator().manual_seed(0),
    )


class BatchStream:
    """Training batches in resumable order, epoch after epoch.

    ``(epoch, position)`` say where the next batch starts (``position``: samples of
    this process already drawn in ``epoch``); a stream built with the values of
    :meth:`state` continues with the very batches this one would have given next.
    """

    def __init__(
        self, dataset: SeededDataset, sampler: ResumableSampler, batch_size: int, num_workers: int, device: torch.device
    ) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, device
        self.epoch, self.position = 0, 0
        self.per_epoch = sampler.samples_per_epoch // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"BatchStream: {sampler.samples_per_epoch} samples per epoch < batch size {batch_size}")
        self._batches: Iterator[Any] | None = None

    def next(self) -> tuple[torch.Tensor, PanopticTargets]:
        """The next ``(images [B, 3, H, W], targets [B, H, W])`` on the device."""
        while True:
            if self._batches is None:
                self.sampler.set_epoch(self.epoch, self.position)
                loader = make_loader(self.dataset, self.sampler, self.batch_size, self.num_workers, drop_last=True, device=self.device)
                self._batches = iter(loader)
            try:
                images, targets, _ = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch, self.position = self.epoch + 1, 0
                continue
            self.position += self.batch_size
            nb = self.device.type == "cuda"
            return images.to(self.device, non_blocking=nb), PanopticTargets(*(t.to(self.device, non_blocking=nb) for t in targets))

    def state(self) -> tuple[int, int]:
        """``(epoch, position)`` of the next batch (an exhausted epoch is the next one's start)."""
        if self.position >= self.per_epoch * self.batch_size:
            return self.epoch + 1, 0
        return self.epoch, self.position

    def seek(self, epoch: int, position: int) -> None:
        """Continue from a saved :meth:`state`."""
        self.close()
        self.epoch, self.position = int(epoch), int(position)

    def close(self) -> None:
        """Drop the current loader (and its worker processes)."""
        self._batches = None


@dataclass
class TrainParts:
    """The objects a :class:`Trainer` drives (``step_module`` possibly DDP-wrapped)."""

    model: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: PolySchedule
    scaler: torch.amp.GradScaler
    batches: BatchStream


class Trainer:
    """``before_train``; for each step ``before_step -> run_step -> after_step``; ``after_train``.

    The loop runs until a hook requests a stop (:mod:`hle.engine.hooks`). The trainer
    owns the step, the counters of :class:`TrainState` and the checkpoint contents.

    Args:
        parts: model, step module, optimiser, schedule, scaler, batch stream.
        state: counters to start from (a resumed checkpoint's or fresh ones).
        out_dir: run folder (``last.pt``, ``best.pt``).
        grad_clip: global gradient-norm limit (0: none).
        info: the process group.
        extra_state: stored in every checkpoint as is (config, dataset metadata).
    """

    def __init__(
        self,
        parts: TrainParts,
        state: TrainState,
        out_dir: Path,
        *,
        grad_clip: float,
        info: hdist.DistInfo,
        extra_state: dict[str, Any],
    ) -> None:
        self.parts, self.info, self.extra_state = parts, info, extra_state
        self.model = parts.model
        self.grad_clip = grad_clip
        self.out_dir = Path(out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.step, self.best_pq, self.bad_steps = state.step, state.best_pq, state.bad_steps
        self._elapsed_before = state.elapsed_s
        parts.batches.seek(state.epoch, state.position)
        self._saved_last: tuple[int, bool] | None = None
        self.hooks: list[H.HookBase] = []
        self.stop_reason: str | None = None
        self.stop_message = ""
        self.failed = False
        self.last_losses: dict[str, float] = {}
        self.step_fault: str | None = None
        self.last_metrics: dict[str, Any] = {}
        self.steps_this_run = 0
        self._t_start: float | None = None
        self._t_end: float | None = None

    # ------------------------------------------------------------------ the loop
    def register_hooks(self, hooks: Sequence[H.HookBase]) -> None:
        """Append hooks (their order is the calling order; ``after_train`` runs reversed)."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def run(self) -> None:
        """Run steps until a hook requests a stop; ``after_train`` runs in any case."""
        self._t_start = time.perf_counter()
        self.parts.step_module.train()
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.stop_reason is None:
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
        except BaseException:
            self.failed = True
            raise
        finally:
            self._t_end = time.perf_counter()
            self.parts.batches.close()
            self._after_train()

    def _after_train(self) -> None:
        error: BaseException | None = None
        for hook in reversed(self.hooks):
            try:
                hook.after_train()
            except BaseException as exc:  # the remaining hooks still clean up
                self.failed = True
                error = error or exc
        if error is not None:
            raise error

    def run_step(self) -> None:
        """One optimiser step on the next batch (skipped when not finite, see :func:`optimizer_step`)."""
        p = self.parts
        images, targets = p.batches.next()
        p.schedule.update(self.step, self.elapsed_s())
        self.last_losses, self.step_fault = optimizer_step(
            p.step_module, p.model, p.optimizer, p.scaler, images, targets, self.grad_clip,
            self.info if self.info.distributed else None,
        )
        self.step += 1
        self.steps_this_run += 1
        self.bad_steps += self.step_fault is not None

    # ------------------------------------------------------------- for the hooks
    def request_stop(self, reason: str, message: str = "") -> None:
        """Stop after the current step; a stronger reason (``H.STOP_REASONS``) replaces a weaker one."""
        rank = H.STOP_REASONS.index(reason)
        if self.stop_reason is None or rank > H.STOP_REASONS.index(self.stop_reason):
            self.stop_reason, self.stop_message = reason, message

    def elapsed_s(self) -> float:
        """Training seconds so far, earlier runs of a resumed run included."""
        running = time.perf_counter() - self._t_start if self._t_start is not None else 0.0
        return self._elapsed_before + running

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate per parameter group name."""
        return {g.get("name", f"group{i}"): g["lr"] for i, g in enumerate(self.parts.optimizer.param_groups)}

    def publish_eval(self, metrics: dict[str, Any], previews: Sequence[np.ndarray]) -> None:
        """Hand an evaluation's results to every hook's ``after_eval``."""
        for hook in self.hooks:
            hook.after_eval(metrics, previews)

    def note_last_saved(self, finished: bool) -> None:
        """``last.pt`` on disk already holds the current step (a run resumed from it)."""
        self._saved_last = (self.step, finished)

    def save_last(self) -> None:
        """Write ``last.pt`` (keeping the previous as ``last.prev.pt``) unless it already holds this state."""
        key = (self.step, self.stop_reason == "finished")
        if self._saved_last != key:
            self.save(self.last_path, keep_previous=True)
            self._saved_last = key

    def save_best(self) -> None:
        """Write ``best.pt``."""
        self.save(self.out_dir / "best.pt")

    def save(self, path: Path, *, keep_previous: bool = False) -> None:
        """Checkpoint to ``path`` (rank 0 writes; collective under DDP)."""
        hdist.average_buffers(self.model, self.info)
        if self.info.is_main:
            save_checkpoint(self.state_dict(), path, keep_previous=keep_previous)
        hdist.barrier(self.info)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :func:`restore_parts`)."""
        p = self.parts
        epoch, position = p.batches.state()
        return {
            "version": CHECKPOINT_VERSION,
            "model": p.model.state_dict(),
            "optimizer": p.optimizer.state_dict(),
            "schedule": p.schedule.state_dict(),
            "scaler": p.scaler.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "position": position,
            "elapsed_s": self.elapsed_s(),
            "best_pq": self.best_pq,
            "bad_steps": self.bad_steps,
            "finished": self.stop_reason == "finished",
            "rng": capture_rng_state(),
            **self.extra_state,
        }

    def result(self) -> TrainResult:
        """The :class:`TrainResult` of the run; times end with the last step (final evaluation excluded)."""
        start = self._t_start if self._t_start is not None else time.perf_counter()
        run_s = (self._t_end if self._t_end is not None else time.perf_counter()) - start
        return TrainResult(
            out_dir=self.out_dir,
            step=self.step,
            finished=self.stop_reason == "finished",
            interrupted=self.stop_reason == "interrupted",
            elapsed_s=self._elapsed_before + run_s,
            best_pq=self.best_pq,
            last_metrics=self.last_metrics,
            steps_per_s=self.steps_this_run / max(run_s, 1e-9),
            model=self.model,
            bad_steps=self.bad_steps,
        )


# ---------------------------------------------------------------- building a run

@dataclass
class TrainData:
    """Indices and datasets of a run (``val_records`` is ``None`` when evaluation is off)."""

    train_set: SeededDataset
    metadata: Metadata
    val_records: list[dict[str, Any]] | None


def _val_records(config: Config, say: Callable[[str], None]) -> list[dict[str, Any]] | None:
    """The validation records, or ``None`` when evaluation is off (said once)."""
    d, tc = config.data, config.train
    if tc.eval_every < 0:
        say("note: train.eval_every=-1: no evaluation and no best.pt")
        return None
    if not d.val_split:
        say("warning: data.val_split is null: training without evaluation and without best.pt")
        return None
    hint = "set data.val_split=null or train.eval_every=-1 to train without evaluation"
    try:
        records, _ = load_records(d.name, d.root, d.val_split)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"data.val_split '{d.val_split}' does not load ({first}); {hint}") from None
    if not records:
        raise ConfigError(f"data.val_split '{d.val_split}' has no images; {hint}")
    return records[: tc.eval_images] if tc.eval_images else records


def load_data(config: Config, info: hdist.DistInfo, say: Callable[[str], None]) -> TrainData:
    """Dataset indices (train and validation) and the seeded training dataset."""
    records, metadata = load_records(config.data.name, config.data.root, config.data.train_split)
    val = _val_records(config, say)
    if not records:
        raise ConfigError(f"data.train_split '{config.data.train_split}' has no images")
    repeats = repeats_for(len(records), config.train.batch_size, info.world_size)
    if repeats > 1:
        say(
            f"note: the training split has {len(records)} image(s), fewer than train.batch_size "
            f"{config.train.batch_size} x {info.world_size} process(es): each epoch draws it {repeats} times, "
            "each copy with its own augmentation"
        )
    dataset = PanopticDataset(records, build_mapper(config, metadata, train=True))
    return TrainData(SeededDataset(dataset, config.train.seed, repeats), metadata, val)


def build_parts(config: Config, data: TrainData, info: hdist.DistInfo, *, pretrained: bool) -> TrainParts:
    """Model, loss step, Adam, poly schedule, scaler and batch stream (not yet DDP-wrapped)."""
    tc, oc = config.train, config.optim
    model = build_model(config, data.metadata.num_classes, pretrained=pretrained).to(info.device)
    amp = bool(tc.amp and info.device.type == "cuda")
    stride = loss_stride(config, model)
    step_module = HLETrainStep(model, data.metadata.is_thing, build_loss_options(config, stride), stride, amp).to(info.device)
    optimizer = build_optimizer(model, lr=oc.lr, class_lr_mult=oc.class_lr_mult, weight_decay=oc.weight_decay, betas=oc.betas)
    schedule = PolySchedule(
        optimizer,
        total_steps=tc.steps,
        power=oc.poly_power,
        warmup_steps=oc.warmup_steps,
        min_lr_ratio=oc.min_lr_ratio,
        time_budget_s=tc.max_minutes * 60.0 if tc.max_minutes else None,
    )
    sampler = ResumableSampler(
        len(data.train_set), num_replicas=info.world_size, rank=info.rank, seed=tc.seed, shuffle=True, drop_last=True
    )
    batches = BatchStream(data.train_set, sampler, tc.batch_size, config.data.num_workers, info.device)
    return TrainParts(model, step_module, optimizer, schedule, torch.amp.GradScaler("cuda", enabled=amp), batches)


def restore_parts(parts: TrainParts, state: dict[str, Any] | None) -> TrainState:
    """Load a checkpoint into ``parts`` (random state last); fresh counters without one."""
    if state is None:
        return TrainState()
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.schedule.load_state_dict(state["schedule"])
    parts.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    return TrainState(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        position=int(state["position"]),
        elapsed_s=float(state["elapsed_s"]),
        best_pq=state.get("best_pq"),
        bad_steps=int(state.get("bad_steps", 0)),
        finished=bool(state.get("finished", False)),
    )


def _best_pq_on_disk(out: Path, say: Callable[[str], None]) -> float | None:
    """The best PQ stored in ``best.pt`` (``last.pt`` is saved before the evaluation that made it)."""
    path = out / "best.pt"
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path).get("best_pq")
    except CorruptCheckpointError as exc:
        say(f"warning: {exc}; it will be replaced by the next better evaluation")
        return None


def _resume_state(out: Path, config: Config, say: Callable[[str], None]) -> tuple[dict[str, Any] | None, Config]:
    """The checkpoint to resume from (or ``None``) and the config to use with it.

    ``state["from_last"]`` says whether it came from ``last.pt`` itself (not the
    previous copy).
    """
    found = load_latest_checkpoint(out / "last.pt", say)
    if found is None:
        if (out / "best.pt").exists():
            raise run_folder.RunExistsError(
                f"{out} has best.pt but no last.pt to resume from; replace the run with --overwrite"
            )
        return None, config
    state, path = found
    state["from_last"] = path.name == "last.pt"
    on_disk = _best_pq_on_disk(out, say)
    if on_disk is not None and (state.get("best_pq") is None or on_disk > state["best_pq"]):
        state["best_pq"] = on_disk
    saved = config_from_dict(state["config"], strict=False)
    if config_to_dict(saved)["model"] != config_to_dict(config)["model"]:
        say("warning: model section differs from the checkpoint's; using the checkpoint's")
        config.model = saved.model
    say(f"resumed from {path} at step {state['step']}")
    return state, config


def _prepare_folder(out: Path, config: Config, state: dict[str, Any] | None, info: hdist.DistInfo, say: Callable[[str], None]) -> None:
    """Rank 0: clear a replaced run or drop metric lines past the checkpoint; write config.yaml."""
    if info.is_main:
        if state is None:
            removed = run_folder.clear_run(out)
            if removed:
                say(f"removed the previous run's {', '.join(removed)} from {out}")
        else:
            run_folder.truncate_metrics(out / "metrics.jsonl", int(state["step"]))
            run_folder.remove_partial_files(out)
        out.mkdir(parents=True, exist_ok=True)
        run_folder.write_text_atomic(out / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    hdist.barrier(info)


def default_hooks(
    config: Config, trainer: Trainer, data: TrainData, info: hdist.DistInfo, *,
    progress: bool, on_step: Callable[[int], None] | None, say: Callable[[str], None],
) -> list[H.HookBase]:
    """The hooks of :func:`train`, in calling order (stop requests first, their agreement, then outputs)."""
    tc = config.train
    schedule = trainer.parts.schedule
    hooks: list[H.HookBase] = [H.CallbackHook(on_step)] if on_step is not None else []
    hooks += [H.SignalHook(), H.BudgetHook(tc.steps, schedule.time_budget_s), H.NaNGuardHook(tc.max_bad_steps, say)]
    if info.distributed:
        hooks.append(H.StopAgreementHook(lambda value: hdist.reduce_max(value, info)))
    if info.is_main:
        if progress:
            fraction = (lambda: schedule.last_progress) if schedule.time_budget_s else None
            hooks.append(H.ProgressHook(tc.steps, tc.batch_size * info.world_size, fraction))
        purge = trainer.step + 1 if trainer.step else None
        hooks += [H.TensorBoardHook(trainer.out_dir / "tb", tc.log_every, purge), H.MetricsFileHook(trainer.out_dir / "metrics.jsonl")]
    hooks.append(H.CheckpointHook(tc.checkpoint_every))
    if data.val_records is not None:
        hooks.append(H.EvalHook(_evaluator(config, trainer.model, data, info), tc.eval_every))
    return hooks


def _evaluator(config: Config, model: nn.Module, data: TrainData, info: hdist.DistInfo) -> H.EvalFn:
    """``() -> (metrics, previews)`` on the validation records (collective under DDP)."""
    mapper = build_mapper(config, data.metadata, train=False)

    def evaluate() -> tuple[dict[str, Any], Sequence[np.ndarray]]:
        hdist.average_buffers(model, info)
        result = evaluate_records(
            model, data.val_records or [], data.metadata, mapper,
            flip=config.eval.flip, native=config.eval.native_resolution, decoder_params=decoder_params(config),
            split_embedding=decoder_split_embedding(config), info=info, num_previews=3 if info.is_main else 0,
        )
        return result.metrics, result.previews

    return evaluate


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (``None``: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    config: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the HLE network described by ``config``; write checkpoints under ``out_dir``.

    Files: ``last.pt`` (every ``checkpoint_every`` steps, before every evaluation, on
    interruption and at the end; the one before it as ``last.prev.pt``), ``best.pt``
    (best validation PQ), ``metrics.jsonl`` (one line per evaluation), ``config.yaml``
    and TensorBoard event files in ``tb/``. Every config section, the training split
    and the validation split are checked before anything is written.

    Args:
        config: the run configuration.
        out_dir: run folder.
        resume: continue from ``out_dir/last.pt`` (or ``last.prev.pt`` if that one is
            damaged) if it exists, exactly: same data order, augmentations, RNG and
            optimiser state. A finished run only re-runs its final evaluation.
        overwrite: replace a run already in ``out_dir`` (its files are removed once
            the new run has passed its checks); without it, or ``resume``, such a
            folder is refused.
        progress: show a tqdm bar (rank 0 only).
        on_step: called with the step number after every step (tests use it to
            deliver a signal at a chosen step).
        log: where one-line messages go (default ``print`` to stderr on rank 0).

    Returns:
        :class:`TrainResult`. ``interrupted`` is true when a signal stopped the run
        (a checkpoint was written); ``finished`` when the step or time budget ran out.

    Raises:
        ConfigError: a bad config value or split. run_folder.RunExistsError: see
        ``overwrite``. hooks.TrainingDiverged: ``train.max_bad_steps`` non-finite steps
        in a row (checkpoints untouched). hooks.EvaluationFailed: an evaluation raised
        (``last.pt`` holds the training).
    """
    config = check_config(config)
    out = Path(out_dir)
    info = hdist.init_distributed(config.train.device)
    say = (log or (lambda msg: print(msg, file=sys.stderr, flush=True))) if info.is_main else (lambda msg: None)
    run_folder.check_run_folder(out, resume=resume, overwrite=overwrite)
    state, config = _resume_state(out, config, say) if resume else (None, config)
    hdist.barrier(info)  # every process has read the folder before rank 0 writes to it
    with _torch_threads(config.train.threads):
        torch.manual_seed(config.train.seed)
        data = load_data(config, info, say)
        parts = build_parts(config, data, info, pretrained=state is None)
        start = restore_parts(parts, state)
        parts.step_module = hdist.wrap_model(parts.step_module, info)
        extra = {"config": config_to_dict(config), "metadata": data.metadata.to_dict()}
        trainer = Trainer(parts, start, out, grad_clip=config.optim.grad_clip, info=info, extra_state=extra)
        if state is not None and state["from_last"]:
            trainer.note_last_saved(start.finished)
        _prepare_folder(out, config, state, info, say)
        trainer.register_hooks(default_hooks(config, trainer, data, info, progress=progress, on_step=on_step, say=say))
        trainer.run()
    if trainer.stop_reason == "diverged":
        raise H.TrainingDiverged(f"{trainer.stop_message}; stopped without saving: the checkpoints in {out} are untouched")
    if trainer.stop_reason == "interrupted":
        say(f"{trainer.stop_message} at step {trainer.step}; checkpoint saved to {trainer.last_path}")
    return trainer.result()
