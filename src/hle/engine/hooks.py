"""Hooks of the training loop: everything around ``run_step``, one concern per class.

This module owns what happens between optimiser steps, in the manner of detectron2's
``HookBase``: :class:`~hle.engine.trainer.Trainer` calls ``before_train``, then
``before_step`` / ``after_step`` around every step, then ``after_train`` (in reverse
order, also when the loop raised), and ``after_eval`` when an evaluation has finished.
A hook asks the loop to stop with ``trainer.request_stop(reason, message)``; the
reasons are ``finished`` (a budget ran out), ``interrupted`` (a signal) and
``diverged`` (too many non-finite steps), the stronger one winning.

What a hook may use of the trainer (a fake with these members is enough to test one):
``step`` (steps done), ``stop_reason`` / ``stop_message`` / ``request_stop``,
``failed`` (an exception is on its way out), ``elapsed_s()``, ``last_losses`` and
``step_fault`` (the scalars of the last step; a description of its non-finite values
when its update was skipped, else ``None``), ``learning_rates()``, ``save_last()``,
``save_best()``, ``last_path``, ``best_pq``, ``last_metrics`` and
``publish_eval(metrics, previews)``.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hle.engine.checkpoint import capture_rng_state, restore_rng_state

__all__ = [
    "HookBase",
    "STOP_REASONS",
    "TrainingStopped",
    "TrainingDiverged",
    "EvaluationFailed",
    "CallbackHook",
    "SignalHook",
    "BudgetHook",
    "NaNGuardHook",
    "StopAgreementHook",
    "ProgressHook",
    "TensorBoardHook",
    "MetricsFileHook",
    "CheckpointHook",
    "EvalHook",
]

#: Why the loop stops, weakest first: a later request only replaces a weaker reason.
STOP_REASONS = ("finished", "interrupted", "diverged")

EvalFn = Callable[[], "tuple[dict[str, Any], Sequence[np.ndarray]]"]


class TrainingStopped(RuntimeError):
    """Training could not go on; the message says why and which checkpoint is intact."""


class TrainingDiverged(TrainingStopped):
    """Too many consecutive steps with non-finite losses or gradients."""


class EvaluationFailed(TrainingStopped):
    """An evaluation raised (a bad image, a bad value); the training state is saved."""


class HookBase:
    """A no-op hook; subclasses override the moments they care about.

    ``self.trainer`` is set by ``Trainer.register_hooks`` before ``before_train``.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Once, before the first step (also when no step will run)."""

    def before_step(self) -> None:
        """Before every ``run_step``."""

    def after_step(self) -> None:
        """After every ``run_step`` (``trainer.step`` already counts it)."""

    def after_train(self) -> None:
        """Once at the end, in reverse hook order, also after an exception (``trainer.failed``)."""

    def after_eval(self, metrics: dict[str, Any], previews: Sequence[np.ndarray]) -> None:
        """After an evaluation at ``trainer.step`` (metrics on a 0-100 scale)."""


class CallbackHook(HookBase):
    """Calls ``fn(step)`` after every step (tests use it to act at a chosen step)."""

    def __init__(self, fn: Callable[[int], None]) -> None:
        self.fn = fn

    def after_step(self) -> None:
        self.fn(self.trainer.step)


class SignalHook(HookBase):
    """SIGINT/SIGTERM request an ``interrupted`` stop after the current step.

    A second SIGINT raises ``KeyboardInterrupt`` at once. Handlers are installed only
    in the main thread (Python's rule) and the previous ones restored after training.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def before_train(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._handle)

    def after_step(self) -> None:
        if self.received:
            self.trainer.request_stop("interrupted", f"interrupted by {self.received}")

    def after_train(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class BudgetHook(HookBase):
    """A ``finished`` stop once ``max_steps`` are done or ``time_budget_s`` has elapsed."""

    def __init__(self, max_steps: int, time_budget_s: float | None = None) -> None:
        self.max_steps = int(max_steps)
        self.time_budget_s = time_budget_s

    def exhausted(self) -> bool:
        """Whether either budget has run out."""
        if self.trainer.step >= self.max_steps:
            return True
        return self.time_budget_s is not None and self.trainer.elapsed_s() >= self.time_budget_s

    def before_train(self) -> None:
        if self.exhausted():
            self.trainer.request_stop("finished")

    def after_step(self) -> None:
        if self.exhausted():
            self.trainer.request_stop("finished")


class NaNGuardHook(HookBase):
    """Counts skipped (non-finite) steps; ``max_bad_steps`` in a row stop the run as ``diverged``.

    The step itself is skipped by the trainer (no optimiser update, buffers restored);
    this hook reports it and decides when to give up.
    """

    def __init__(self, max_bad_steps: int, warn: Callable[[str], None]) -> None:
        if max_bad_steps < 1:
            raise ValueError(f"NaNGuardHook: max_bad_steps must be >= 1, got {max_bad_steps}")
        self.max_bad_steps = int(max_bad_steps)
        self.warn = warn
        self.consecutive = 0
        self.total = 0

    def after_step(self) -> None:
        fault = self.trainer.step_fault
        if fault is None:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        step = self.trainer.step
        self.warn(f"warning: step {step} skipped (no update): {fault}")
        if self.consecutive >= self.max_bad_steps:
            first = step - self.consecutive + 1
            self.trainer.request_stop(
                "diverged",
                f"training diverged: {fault} in {self.consecutive} consecutive steps ({first}-{step})",
            )


class StopAgreementHook(HookBase):
    """Makes every process stop at the same step for the strongest reason any of them has.

    Under DDP a signal may reach one process only and time budgets are read per
    process; a process leaving the loop alone would wait in a collective for ever.
    Place it after every hook that requests a stop in ``after_step``.

    Args:
        reduce_max: maximum of a float over all processes
            (:func:`hle.engine.distributed.reduce_max` bound to the process group).
    """

    def __init__(self, reduce_max: Callable[[float], float]) -> None:
        self.reduce_max = reduce_max

    def after_step(self) -> None:
        t = self.trainer
        mine = STOP_REASONS.index(t.stop_reason) + 1 if t.stop_reason else 0
        agreed = int(self.reduce_max(float(mine)))
        if agreed > mine:
            reason = STOP_REASONS[agreed - 1]
            t.request_stop(reason, f"{reason} on another process")


class ProgressHook(HookBase):
    """A tqdm bar: steps, the main loss terms and images per second.

    With a time budget the bar's total is re-estimated from the schedule's progress.

    Args:
        total_steps: the step budget.
        images_per_step: batch size x processes.
        progress_fraction: the schedule's current progress in ``[0, 1]`` (time-bounded
            runs), or ``None``.
        file: where the bar is drawn (``None``: stderr).
    """

    def __init__(
        self,
        total_steps: int,
        images_per_step: int,
        progress_fraction: Callable[[], float] | None = None,
        file: Any = None,
    ) -> None:
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self.progress_fraction = progress_fraction
        self.file = file
        self.bar: Any = None
        self._first_step = 0
        self._elapsed_at_start = 0.0

    def before_train(self) -> None:
        from tqdm import tqdm  # only a progress-bar run needs it

        t = self.trainer
        self._first_step, self._elapsed_at_start = t.step, t.elapsed_s()
        self.bar = tqdm(
            total=self.total_steps, initial=t.step, desc="train", dynamic_ncols=True, unit="step", file=self.file
        )

    def after_step(self) -> None:
        t = self.trainer
        if self.progress_fraction is not None:
            fraction = self.progress_fraction()
            if fraction > 0.01:
                # Time-bounded run: the step count at the end of the budget is an estimate.
                self.bar.total = max(t.step, min(self.total_steps, int(round(t.step / fraction))))
        self.bar.update(t.step - self.bar.n)
        post = {k: f"{t.last_losses[k]:.3f}" for k in ("total", "seg", "ins") if k in t.last_losses}
        seconds = max(t.elapsed_s() - self._elapsed_at_start, 1e-9)
        post["img/s"] = f"{(t.step - self._first_step) * self.images_per_step / seconds:.1f}"
        self.bar.set_postfix(post, refresh=False)

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoardHook(HookBase):
    """Loss terms (averaged over ``log_every`` steps) and learning rates; validation metrics and previews.

    Skipped (non-finite) steps are left out of the averages.

    Args:
        log_dir: event file folder (``run/tb``).
        log_every: scalar period in steps.
        purge_step: on resume, the first step not yet done: TensorBoard drops events
            from that step on that an interrupted run wrote after its checkpoint.
        writer_factory: ``(log_dir, purge_step) -> writer`` (default
            ``torch.utils.tensorboard.SummaryWriter``).
    """

    def __init__(
        self,
        log_dir: str | Path,
        log_every: int,
        purge_step: int | None = None,
        writer_factory: Callable[[str, int | None], Any] | None = None,
    ) -> None:
        self.log_dir = str(log_dir)
        self.log_every = max(int(log_every), 1)
        self.purge_step = purge_step
        self.writer_factory = writer_factory
        self.writer: Any = None
        self._sums: dict[str, float] = {}
        self._count = 0

    def before_train(self) -> None:
        factory = self.writer_factory
        if factory is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy optional import (tensorboard)

            factory = lambda log_dir, purge: SummaryWriter(log_dir, purge_step=purge)  # noqa: E731
        self.writer = factory(self.log_dir, self.purge_step)

    def after_step(self) -> None:
        t = self.trainer
        if t.step_fault is None:
            for k, v in t.last_losses.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
            self._count += 1
        if t.step % self.log_every != 0:
            return
        if self._count:
            for k, v in self._sums.items():
                self.writer.add_scalar(f"loss/{k}", v / self._count, t.step)
        for name, lr in t.learning_rates().items():
            self.writer.add_scalar(f"lr/{name}", lr, t.step)
        self._sums, self._count = {}, 0

    def after_eval(self, metrics: dict[str, Any], previews: Sequence[np.ndarray]) -> None:
        step = self.trainer.step
        for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"):
            if key in metrics:
                self.writer.add_scalar(f"val/{key}", metrics[key], step)
        for i, panel in enumerate(previews):
            self.writer.add_image(f"val/prediction_{i}", panel, step, dataformats="HWC")

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MetricsFileHook(HookBase):
    """Appends one JSON line ``{"step": s, **metrics}`` per evaluation to ``path`` (fsynced)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def after_eval(self, metrics: dict[str, Any], previews: Sequence[np.ndarray]) -> None:
        if not metrics:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": self.trainer.step, **metrics}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class CheckpointHook(HookBase):
    """``last.pt`` every ``every`` steps, and at the end of a finished or interrupted run.

    Nothing is saved after a skipped (non-finite) step, a ``diverged`` stop or an
    exception: the last good checkpoint stays as it is.
    """

    def __init__(self, every: int) -> None:
        self.every = int(every)

    def after_step(self) -> None:
        t = self.trainer
        if self.every > 0 and t.step % self.every == 0 and t.stop_reason is None and t.step_fault is None:
            t.save_last()

    def after_train(self) -> None:
        t = self.trainer
        if not t.failed and t.stop_reason in ("finished", "interrupted"):
            t.save_last()


class EvalHook(HookBase):
    """Evaluates every ``every`` steps and at the end of a finished run; keeps ``best.pt``.

    ``last.pt`` is saved before each evaluation, so a failing evaluation never costs
    training: the error (:class:`EvaluationFailed`) says so, and ``--resume`` redoes a
    final evaluation that failed. The global random state is restored after evaluating,
    so evaluations do not change the training that follows them.

    Args:
        evaluate: ``() -> (metrics, previews)`` of the current model (collective under
            DDP: every process calls it).
        every: period in steps (0: only at the end).
    """

    #: Exceptions that mean bad input (unreadable image, inconsistent annotation), not a bug.
    INPUT_ERRORS = (OSError, ValueError, KeyError)

    def __init__(self, evaluate: EvalFn, every: int) -> None:
        self.evaluate = evaluate
        self.every = int(every)
        self.evaluated_at = -1

    def after_step(self) -> None:
        t = self.trainer
        if self.every > 0 and t.step % self.every == 0 and t.stop_reason is None and t.step_fault is None:
            self._run()

    def after_train(self) -> None:
        t = self.trainer
        if not t.failed and t.stop_reason == "finished" and self.evaluated_at != t.step:
            self._run()

    def _run(self) -> None:
        t = self.trainer
        t.save_last()
        rng = capture_rng_state()
        try:
            metrics, previews = self.evaluate()
        except self.INPUT_ERRORS as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise EvaluationFailed(
                f"evaluation at step {t.step} failed ({type(exc).__name__}: {first}); the training state "
                f"is saved in {t.last_path}: fix the cause and run again with --resume"
            ) from exc
        finally:
            restore_rng_state(rng)
        self.evaluated_at = t.step
        t.last_metrics = metrics
        t.publish_eval(metrics, previews)
        pq = metrics.get("PQ")
        if pq is not None and math.isfinite(pq) and (t.best_pq is None or pq > t.best_pq):
            t.best_pq = float(pq)
            t.save_best()
