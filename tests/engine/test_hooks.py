"""Each training hook alone, driven by a fake trainer (hle/engine/hooks.py)."""
from __future__ import annotations

import io
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hle.engine import hooks as H


class FakeTrainer:
    """The members hooks use, recording what they do in ``events``."""

    def __init__(self, step: int = 0) -> None:
        self.step = step
        self.stop_reason: str | None = None
        self.stop_message = ""
        self.failed = False
        self.elapsed = 0.0
        self.last_losses: dict[str, float] = {}
        self.step_fault: str | None = None
        self.best_pq: float | None = None
        self.last_metrics: dict[str, Any] = {}
        self.last_path = Path("run/last.pt")
        self.lrs = {"network": 0.1, "class": 0.5}
        self.events: list[tuple[str, int]] = []
        self.hooks: list[H.HookBase] = []

    def request_stop(self, reason: str, message: str = "") -> None:
        if self.stop_reason is None or H.STOP_REASONS.index(reason) > H.STOP_REASONS.index(self.stop_reason):
            self.stop_reason, self.stop_message = reason, message

    def elapsed_s(self) -> float:
        return self.elapsed

    def learning_rates(self) -> dict[str, float]:
        return dict(self.lrs)

    def save_last(self) -> None:
        self.events.append(("save_last", self.step))

    def save_best(self) -> None:
        self.events.append(("save_best", self.step))

    def publish_eval(self, metrics: dict[str, Any], previews: Any) -> None:
        self.events.append(("publish", self.step))
        for hook in self.hooks:
            hook.after_eval(metrics, previews)


def attach(hook: H.HookBase, trainer: FakeTrainer | None = None) -> FakeTrainer:
    trainer = trainer or FakeTrainer()
    hook.trainer = trainer
    trainer.hooks.append(hook)
    return trainer


def test_callback_hook_gets_every_step() -> None:
    seen: list[int] = []
    t = attach(H.CallbackHook(seen.append))
    for step in (1, 2, 3):
        t.step = step
        t.hooks[0].after_step()
    assert seen == [1, 2, 3]


def test_signal_hook_turns_sigterm_into_an_interrupted_stop_and_restores_handlers() -> None:
    hook = H.SignalHook()
    t = attach(hook)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook.before_train()
    try:
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        hook.after_step()
        assert t.stop_reason is None
        os.kill(os.getpid(), signal.SIGTERM)
        hook.after_step()
        assert t.stop_reason == "interrupted" and "SIGTERM" in t.stop_message
    finally:
        hook.after_train()
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_sigint_raises_at_once() -> None:
    hook = H.SignalHook()
    attach(hook)
    hook.before_train()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # first: a polite request
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # second: out now
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    finally:
        hook.after_train()


def test_signal_hook_outside_the_main_thread_installs_nothing() -> None:
    hook = H.SignalHook()
    attach(hook)
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    worker = threading.Thread(target=lambda: (hook.before_train(), seen.append(signal.getsignal(signal.SIGTERM))))
    worker.start()
    worker.join()
    hook.after_train()
    assert seen == [before] and signal.getsignal(signal.SIGTERM) == before


def test_budget_hook_stops_at_the_step_or_time_budget() -> None:
    hook = H.BudgetHook(max_steps=3, time_budget_s=60.0)
    t = attach(hook)
    hook.before_train()
    t.step = 2
    hook.after_step()
    assert t.stop_reason is None
    t.step = 3
    hook.after_step()
    assert t.stop_reason == "finished"
    # time: 59 s of a 60 s budget goes on, 60 s stops
    t2 = attach(H.BudgetHook(max_steps=100, time_budget_s=60.0))
    t2.elapsed = 59.0
    t2.hooks[0].after_step()
    assert t2.stop_reason is None
    t2.elapsed = 60.0
    t2.hooks[0].after_step()
    assert t2.stop_reason == "finished"
    # a resumed run that is already done stops before its first step
    t3 = attach(H.BudgetHook(max_steps=5), FakeTrainer(step=5))
    t3.hooks[0].before_train()
    assert t3.stop_reason == "finished"


def test_nan_guard_counts_bad_steps_and_stops_after_n_in_a_row() -> None:
    warnings: list[str] = []
    hook = H.NaNGuardHook(max_bad_steps=3, warn=warnings.append)
    t = attach(hook)
    faults = [None, "non-finite loss term(s) ins=nan", "x", None, "a", "b", "non-finite loss term(s) ins=nan"]
    for step, fault in enumerate(faults, start=1):
        t.step, t.step_fault = step, fault
        hook.after_step()
        if step < len(faults):
            assert t.stop_reason is None, step  # two in a row (steps 2-3) are not three
    assert t.stop_reason == "diverged"
    assert "ins=nan" in t.stop_message and "3 consecutive steps (5-7)" in t.stop_message
    assert hook.total == 5 and len(warnings) == 5 and "step 2 skipped" in warnings[0]
    with pytest.raises(ValueError, match="max_bad_steps"):
        H.NaNGuardHook(0, warnings.append)


@pytest.mark.parametrize(
    "mine, others, expected",
    [
        (None, 0, None),
        (None, 2, "interrupted"),  # a signal reached another process only
        ("finished", 0, "finished"),
        ("finished", 2, "interrupted"),
        ("diverged", 2, "diverged"),
    ],
)
def test_stop_agreement_takes_the_strongest_reason_of_any_process(mine: str | None, others: int, expected: str | None) -> None:
    sent: list[float] = []

    def reduce_max(value: float) -> float:
        sent.append(value)
        return max(value, float(others))

    t = attach(H.StopAgreementHook(reduce_max))
    if mine:
        t.request_stop(mine, "mine")
    t.hooks[0].after_step()
    assert t.stop_reason == expected
    assert sent == [float(H.STOP_REASONS.index(mine) + 1 if mine else 0)]


def test_progress_hook_counts_steps_and_estimates_a_time_bounded_total() -> None:
    out = io.StringIO()
    fraction = {"value": 0.0}
    hook = H.ProgressHook(total_steps=1000, images_per_step=4, progress_fraction=lambda: fraction["value"], file=out)
    t = attach(hook, FakeTrainer(step=10))  # a resumed run starts its bar at step 10
    hook.before_train()
    assert hook.bar.n == 10
    for step in (11, 12):
        t.step, t.elapsed = step, float(step - 10)
        t.last_losses = {"total": 1.23456, "seg": 0.5, "other": 9.0}
        fraction["value"] = step / 48.0  # the time budget will end near step 48
        hook.after_step()
    assert hook.bar.n == 12 and hook.bar.total == 48
    assert hook.bar.postfix is not None and "total=1.235" in hook.bar.postfix and "img/s=4.0" in hook.bar.postfix
    hook.after_train()
    assert hook.bar is None and "train" in out.getvalue()


class FakeWriter:
    def __init__(self, log_dir: str, purge: int | None) -> None:
        self.log_dir, self.purge = log_dir, purge
        self.scalars: list[tuple[str, float, int]] = []
        self.images: list[tuple[str, tuple[int, ...], int]] = []
        self.closed = False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str) -> None:
        self.images.append((tag, image.shape, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_hook_averages_finite_steps_and_logs_evaluations() -> None:
    writers: list[FakeWriter] = []

    def factory(log_dir: str, purge: int | None) -> FakeWriter:
        writers.append(FakeWriter(log_dir, purge))
        return writers[-1]

    hook = H.TensorBoardHook("run/tb", log_every=3, purge_step=7, writer_factory=factory)
    t = attach(hook, FakeTrainer(step=6))
    hook.before_train()
    w = writers[0]
    assert (w.log_dir, w.purge) == ("run/tb", 7)
    for step, total, fault in ((7, 1.0, None), (8, float("nan"), "nan"), (9, 3.0, None)):
        t.step, t.last_losses, t.step_fault = step, {"total": total}, fault
        hook.after_step()
    # step 9 logs the mean of the finite steps 7 and 9; the skipped step 8 is left out
    assert ("loss/total", 2.0, 9) in w.scalars and ("lr/network", 0.1, 9) in w.scalars
    assert [s for s in w.scalars if s[0] == "loss/total"] == [("loss/total", 2.0, 9)]
    hook.after_eval({"PQ": 55.0, "mIoU": 70.0, "per_class": {}}, [np.zeros((4, 12, 3), np.uint8)])
    assert ("val/PQ", 55.0, 9) in w.scalars and ("val/mIoU", 70.0, 9) in w.scalars
    assert w.images == [("val/prediction_0", (4, 12, 3), 9)]
    hook.after_train()
    assert w.closed


def test_metrics_file_hook_appends_one_line_per_evaluation(tmp_path: Path) -> None:
    hook = H.MetricsFileHook(tmp_path / "metrics.jsonl")
    t = attach(hook, FakeTrainer(step=4))
    hook.after_eval({"PQ": 12.5}, [])
    t.step = 8
    hook.after_eval({}, [])  # nothing evaluated: no line
    hook.after_eval({"PQ": 20.0}, [])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 4, "PQ": 12.5}, {"step": 8, "PQ": 20.0}]


def test_checkpoint_hook_saves_periodically_and_at_a_clean_end_only() -> None:
    hook = H.CheckpointHook(every=2)
    t = attach(hook)
    for step in (1, 2, 3):
        t.step = step
        hook.after_step()
    t.step, t.step_fault = 4, "nan"  # a skipped step is not saved
    hook.after_step()
    t.step, t.step_fault = 6, None
    t.request_stop("finished")  # stopping: the end-of-training save writes it instead
    hook.after_step()
    hook.after_train()
    assert t.events == [("save_last", 2), ("save_last", 6)]
    for reason, failed, saved in (("interrupted", False, True), ("diverged", False, False), ("finished", True, False)):
        t2 = attach(H.CheckpointHook(every=0), FakeTrainer(step=5))
        t2.request_stop(reason)
        t2.failed = failed
        t2.hooks[0].after_train()
        assert (t2.events == [("save_last", 5)]) is saved, reason


def test_eval_hook_saves_last_first_keeps_the_best_and_evaluates_at_the_end() -> None:
    scores = iter([40.0, 30.0, 50.0])
    calls: list[int] = []

    def evaluate() -> tuple[dict[str, Any], list[np.ndarray]]:
        calls.append(t.step)
        return {"PQ": next(scores)}, []

    hook = H.EvalHook(evaluate, every=2)
    t = attach(hook)
    for step in (1, 2, 3, 4):
        t.step = step
        hook.after_step()
    assert calls == [2, 4] and t.best_pq == 40.0
    t.step = 5
    t.request_stop("finished")
    hook.after_train()
    assert calls == [2, 4, 5] and t.best_pq == 50.0 and t.last_metrics == {"PQ": 50.0}
    assert t.events == [
        ("save_last", 2), ("publish", 2), ("save_best", 2),
        ("save_last", 4), ("publish", 4),  # 30 < 40: no best
        ("save_last", 5), ("publish", 5), ("save_best", 5),
    ]
    hook.after_train()  # already evaluated at this step: not again
    assert calls == [2, 4, 5]


def test_eval_hook_skips_the_final_evaluation_unless_finished() -> None:
    for reason in ("interrupted", "diverged"):
        hook = H.EvalHook(lambda: pytest.fail("must not evaluate"), every=0)
        t = attach(hook, FakeTrainer(step=3))
        t.request_stop(reason)
        hook.after_train()
        assert t.events == []


def test_a_failing_evaluation_says_the_training_is_saved() -> None:
    def evaluate() -> tuple[dict[str, Any], list[np.ndarray]]:
        raise OSError("cannot read image val/3.png: image file is truncated")

    hook = H.EvalHook(evaluate, every=0)
    t = attach(hook, FakeTrainer(step=7))
    t.request_stop("finished")
    with pytest.raises(H.EvaluationFailed) as info:
        hook.after_train()
    message = str(info.value)
    assert "step 7" in message and "val/3.png" in message and "run/last.pt" in message and "--resume" in message
    assert t.events == [("save_last", 7)]  # saved before evaluating
    # a bug in our own code is not dressed up as bad input
    hook2 = H.EvalHook(lambda: (_ for _ in ()).throw(TypeError("bug")), every=0)
    t2 = attach(hook2, FakeTrainer(step=1))
    t2.request_stop("finished")
    with pytest.raises(TypeError, match="bug"):
        hook2.after_train()


def test_evaluation_leaves_the_random_state_as_it_found_it() -> None:
    def evaluate() -> tuple[dict[str, Any], list[np.ndarray]]:
        torch.rand(5)
        np.random.rand(3)
        return {"PQ": 1.0}, []

    hook = H.EvalHook(evaluate, every=1)
    t = attach(hook, FakeTrainer(step=0))
    torch.manual_seed(11)
    np.random.seed(11)
    expected = (torch.rand(2), np.random.rand(2))
    torch.manual_seed(11)
    np.random.seed(11)
    t.step = 1
    hook.after_step()
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
