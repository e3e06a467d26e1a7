"""Shared fixtures of the engine tests: a tiny synthetic dataset and config overrides."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 train / 3 val synthetic images of 64x128 (generated once per session)."""
    from hle.data import generate_synthetic

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, 8, 3, height=64, width=128, seed=3, progress=False)
    return root


def tiny_overrides(root: Path, **extra: object) -> list[str]:
    """Overrides that make the ``synthetic`` config train in well under a second per step.

    ``extra`` keys use ``__`` for dots: ``train__steps=6``.
    """
    items = {
        "data.root": str(root),
        "data.crop_size": "[64,128]",
        "data.num_workers": 0,
        "model.options": "{backbone_options: {widths: [8, 8, 16, 16]}}",
        "train.batch_size": 2,
        "train.steps": 4,
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.device": "cpu",
        "eval.flip": "false",
    }
    items.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture()
def overrides(tiny_synth: Path):  # noqa: ANN201 - returns a callable
    """``overrides(**extra) -> list[str]`` for the tiny dataset."""
    return lambda **extra: tiny_overrides(tiny_synth, **extra)


@pytest.fixture()
def overrides_for():  # noqa: ANN201 - returns a callable
    """``overrides_for(root, **extra) -> list[str]`` for another dataset folder."""
    return tiny_overrides
