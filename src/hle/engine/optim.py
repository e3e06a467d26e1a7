"""Optimiser and learning-rate schedule: Adam with polynomial decay (Sec. 4.2).

This module owns the parameter groups (the persistent class means and class sigmas
get a higher learning rate than the network, because back-propagation alone moves them
too slowly, cf. the discussion of Eq. 15) and :class:`PolySchedule`, a polynomial decay
over training progress. Progress is ``step / total_steps`` or, with a wall-clock
budget, the larger of that and the elapsed fraction of the budget, so a time-bounded
run (``hle demo``) still decays to the end of its budget.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["split_param_groups", "build_optimizer", "PolySchedule", "poly_factor"]

#: Parameter-name fragments that mark the persistent class parameters.
CLASS_PARAM_KEYS = ("class_mean", "class_sigma")


def split_param_groups(
    model: nn.Module, lr: float, class_lr_mult: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Adam parameter groups: the network at ``lr``, class means/sigmas at ``lr * mult``.

    Uses the model's own ``param_groups(lr, class_lr_mult)`` helper when it has one
    (the network owns the knowledge of which parameters are "class" parameters);
    otherwise parameters whose name contains ``class_mean``/``class_sigma`` form the
    second group. Weight decay applies to the network group only: decaying unit-norm
    class means would only fight their re-normalisation.

    Returns:
        A list of groups with ``params``, ``lr``, ``weight_decay`` and ``name``.
    """
    helper = getattr(model, "param_groups", None)
    groups: list[dict[str, Any]]
    if callable(helper):
        try:
            groups = [dict(g) for g in helper(lr=lr, class_lr_mult=class_lr_mult)]
        except TypeError:
            groups = [dict(g) for g in helper(lr, class_lr_mult)]
        for i, g in enumerate(groups):
            g.setdefault("lr", lr)
            g.setdefault("name", f"group{i}")
            is_class = g.get("name") == "class" or g["lr"] != lr
            g.setdefault("weight_decay", 0.0 if is_class else weight_decay)
        return groups
    net, cls = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (cls if any(k in name for k in CLASS_PARAM_KEYS) else net).append(param)
    groups = [{"params": net, "lr": lr, "weight_decay": weight_decay, "name": "network"}]
    if cls:
        groups.append({"params": cls, "lr": lr * class_lr_mult, "weight_decay": 0.0, "name": "class"})
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    class_lr_mult: float = 5.0,
    weight_decay: float = 0.0,
    betas: Iterable[float] = (0.9, 0.999),
) -> torch.optim.Adam:
    """Adam over :func:`split_param_groups` (Sec. 4.2: Adam, lr 1e-5)."""
    if lr <= 0:
        raise ValueError(f"build_optimizer: lr must be > 0, got {lr}")
    b1, b2 = tuple(betas)
    groups = split_param_groups(model, lr, class_lr_mult, weight_decay)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.Adam(groups, lr=lr, betas=(b1, b2))


def poly_factor(progress: float, power: float, warmup: float = 0.0, min_ratio: float = 0.0) -> float:
    """``(1 - progress) ** power`` with an optional linear warm-up and floor.

    Args:
        progress: fraction of training done, clipped to ``[0, 1]``.
        power: polynomial exponent (0.9 is the usual choice).
        warmup: fraction of training spent warming up linearly from 0.
        min_ratio: lower bound of the factor after warm-up.
    """
    p = min(max(progress, 0.0), 1.0)
    factor = max((1.0 - p) ** power, min_ratio)
    if warmup > 0 and p < warmup:
        factor *= p / warmup
    return factor


class PolySchedule:
    """Polynomial decay of every group's ``initial_lr`` by training progress.

    Call :meth:`update` before each optimiser step with the step index and the elapsed
    training seconds. State (for checkpoints) is plain data.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        power: float = 0.9,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        time_budget_s: float | None = None,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"PolySchedule: total_steps must be > 0, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        self.time_budget_s = time_budget_s
        self.last_progress = 0.0

    def progress(self, step: int, elapsed_s: float = 0.0) -> float:
        """Fraction of training done at ``step`` after ``elapsed_s`` seconds."""
        p = step / self.total_steps
        if self.time_budget_s:
            p = max(p, elapsed_s / self.time_budget_s)
        return min(p, 1.0)

    def update(self, step: int, elapsed_s: float = 0.0) -> float:
        """Set the learning rates for ``step``; returns the factor applied."""
        self.last_progress = self.progress(step, elapsed_s)
        factor = poly_factor(self.last_progress, self.power, 0.0, self.min_lr_ratio)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor

    def state_dict(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "power": self.power,
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
            "time_budget_s": self.time_budget_s,
            "last_progress": self.last_progress,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_progress = float(state.get("last_progress", 0.0))
