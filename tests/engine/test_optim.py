"""Adam parameter groups and the polynomial schedule (hle/engine/optim.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hle.engine.optim import PolySchedule, build_optimizer, poly_factor


class _WithClassParams(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.class_means = nn.Parameter(torch.randn(5, 4))
        self.class_sigma_raw = nn.Parameter(torch.zeros(5))


def test_class_parameters_get_the_multiplied_lr_and_no_decay() -> None:
    model = _WithClassParams()
    opt = build_optimizer(model, lr=1e-3, class_lr_mult=5.0, weight_decay=1e-4)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    for p in (model.class_means, model.class_sigma_raw):
        assert by_id[id(p)]["lr"] == pytest.approx(5e-3) and by_id[id(p)]["weight_decay"] == 0.0
    for p in model.conv.parameters():
        assert by_id[id(p)]["lr"] == pytest.approx(1e-3) and by_id[id(p)]["weight_decay"] == 1e-4
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_hle_network_groups() -> None:
    from hle.models import HLENet

    model = HLENet("tiny", num_classes=3, embedding_dim=4)
    opt = build_optimizer(model, lr=2e-3, class_lr_mult=4.0)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"network": pytest.approx(2e-3), "class": pytest.approx(8e-3)}


def test_poly_factor_hand_values() -> None:
    assert poly_factor(0.0, 0.9) == 1.0
    assert poly_factor(0.5, 2.0) == pytest.approx(0.25)
    assert poly_factor(0.75, 1.0) == pytest.approx(0.25)
    assert poly_factor(1.0, 0.9) == 0.0
    assert poly_factor(2.0, 0.9) == 0.0  # clipped
    assert poly_factor(1.0, 0.9, min_ratio=0.1) == pytest.approx(0.1)


def test_schedule_by_steps_and_by_time_budget() -> None:
    model = _WithClassParams()
    opt = build_optimizer(model, lr=1.0, class_lr_mult=5.0)
    sched = PolySchedule(opt, total_steps=10, power=1.0)
    sched.update(5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 2.5])
    timed = PolySchedule(opt, total_steps=1000, power=1.0, time_budget_s=100.0)
    timed.update(step=10, elapsed_s=75.0)  # time dominates: progress 0.75
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    warm = PolySchedule(opt, total_steps=100, power=1.0, warmup_steps=4)
    warm.update(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * 1.0)
