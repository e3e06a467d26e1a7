"""The training loop: checkpoints, exact resume, signals, DDP (hle/engine/trainer.py)."""
from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch

from hle.config import load_config
from hle.core.types import PanopticTargets
from hle.engine.checkpoint import load_checkpoint
from hle.engine.trainer import subsample_targets, train


def _targets(semantic: torch.Tensor) -> PanopticTargets:
    return PanopticTargets(
        semantic=semantic,
        instance=semantic * 10,
        thing=semantic > 1,
        ignore=semantic == 255,
        crowd=torch.zeros_like(semantic, dtype=torch.bool),
    )


def test_subsample_targets_takes_the_pixel_nearest_the_coordinate_centre() -> None:
    sem = torch.arange(5 * 6).reshape(1, 5, 6)
    # stride 2: output pixel (i, j) covers rows 2i..2i+1 and takes row/col 2i (offset (2-1)//2 = 0);
    # the 5th row has no partner, output row 2 still exists (ceil(5/2) = 3).
    sub = subsample_targets(_targets(sem), 2, (3, 3))
    assert sub.semantic.tolist() == [[[0, 2, 4], [12, 14, 16], [24, 26, 28]]]
    assert torch.equal(sub.instance, sub.semantic * 10)
    # stride 4 on 5 x 6: offset 1; the second output row/column lie past the input -> void
    sub4 = subsample_targets(_targets(sem), 4, (2, 2))
    assert sub4.semantic.tolist() == [[[7, 11], [255, 255]]]
    assert sub4.ignore.tolist() == [[[False, False], [True, True]]]
    assert sub4.instance[0, 1].tolist() == [0, 0]


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_short_run_writes_checkpoint_metrics_and_logs(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    config = load_config("synthetic", overrides(train__steps=3, train__eval_every=2))
    result = train(config, tmp_path / "run", progress=False)
    assert result.finished and not result.interrupted and result.step == 3
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["finished"] and ckpt["config"]["train"]["steps"] == 3
    assert {"model", "optimizer", "schedule", "scaler", "rng", "epoch", "position", "metadata"} <= set(ckpt)
    # evaluated at step 2 (eval_every) and again at the end
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 3]
    for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU"):
        assert 0.0 <= result.last_metrics[key] <= 100.0
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    assert any((tmp_path / "run" / "tb").iterdir())


def test_interrupt_and_resume_gives_the_same_weights_as_a_straight_run(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    # 8 images, batch 2 -> 4 steps per epoch: the 6-step run crosses an epoch boundary,
    # the interruption at step 3 falls mid-epoch.
    config = load_config("synthetic", overrides(train__steps=6, train__eval_every=0))
    straight = train(config, tmp_path / "a", progress=False)

    def sigterm_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = train(load_config("synthetic", overrides(train__steps=6, train__eval_every=0)), tmp_path / "b", progress=False, on_step=sigterm_at_3)
    assert first.interrupted and first.step == 3 and not first.finished
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3
    resumed = train(load_config("synthetic", overrides(train__steps=6, train__eval_every=0)), tmp_path / "b", resume=True, progress=False)
    assert resumed.finished and resumed.step == 6
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert _state_equal(a["model"], b["model"])
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(_state_equal({k: v for k, v in opt_a[i].items()}, {k: v for k, v in opt_b[i].items()}) for i in opt_a)
    # sanity: training moved the weights away from the (seeded) initialisation
    from hle.engine.build import build_model

    init = build_model(config, 9).state_dict()
    assert straight.step == 6 and not _state_equal(init, a["model"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str, override_list: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from hle.engine.distributed import shutdown_distributed

    config = load_config("synthetic", override_list)
    result = train(config, out, progress=False)
    sync_bn = any(isinstance(m, torch.nn.SyncBatchNorm) for m in result.model.modules())
    torch.save({"state": result.model.state_dict(), "sync_bn": sync_bn, "step": result.step}, Path(out) / f"rank{rank}.pt")
    shutdown_distributed()


@pytest.mark.slow
def test_two_process_ddp_keeps_replicas_identical(tmp_path: Path, tiny_synth: Path, overrides) -> None:  # noqa: ANN001
    import torch.multiprocessing as mp

    out = Path(os.environ.get("HLE_DDP_OUT", tmp_path / "ddp"))
    out.mkdir(exist_ok=True)
    # batch 2 per process x 2 processes over 8 images: 2 steps per epoch; eval sharded too.
    args = overrides(train__steps=3, train__eval_every=0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_synth), str(out), args), nprocs=2, join=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    # SyncBatchNorm only on CUDA (PyTorch's DDP refuses it on CPU modules)
    assert r0["step"] == r1["step"] == 3 and r0["sync_bn"] == r1["sync_bn"] == torch.cuda.is_available()
    assert _state_equal(r0["state"], r1["state"])
    assert load_checkpoint(out / "last.pt")["step"] == 3  # rank 0 wrote the checkpoint
