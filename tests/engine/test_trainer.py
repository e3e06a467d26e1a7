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


# --------------------------------------------------------------------------- lost work

def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_folder_is_refused_without_resume_or_overwrite_and_overwrite_leaves_no_old_file(
    tmp_path: Path, overrides, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    from hle.cli import main

    run = tmp_path / "run"
    assert main(["train", "synthetic", *overrides(train__steps=2, train__eval_every=0), "--out", str(run), "--no-progress"]) == 0
    before = _files(run)
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.yaml"} <= set(before)
    capsys.readouterr()
    # again without --resume: refused, one line naming both ways out, nothing touched
    assert main(["train", "synthetic", *overrides(train__steps=3), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err and len(err.splitlines()) == 1
    # --overwrite with a config that fails its checks: the old run is still intact
    assert main(["train", "synthetic", *overrides(data__val_split="nope"), "--out", str(run), "--overwrite", "--no-progress"]) == 2
    assert _files(run) == before
    # --overwrite: a new run without evaluation; no best.pt, metrics or event file of the old one remains
    assert main(["train", "synthetic", *overrides(train__steps=3, train__eval_every=-1), "--out", str(run), "--overwrite", "--no-progress"]) == 0
    after = _files(run)
    assert "best.pt" not in after and "metrics.jsonl" not in after
    old_events = {k for k in before if k.startswith("tb")}
    assert old_events and not old_events & set(after) and any(k.startswith("tb") for k in after)
    assert load_checkpoint(run / "last.pt")["step"] == 3 and "steps: 3" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("eval.decoder.seed_thresh=0.4", "unknown config key 'eval.decoder.seed_thresh'"),
        ("eval.decoder.seed_threshold=abc", "eval.decoder.seed_threshold: expected float"),
        ("loss.options.embedding_loss=lovaz", "loss.options.embedding_loss: expected one of"),
        ("data.val_split=valx", "data.val_split 'valx' does not load"),
    ],
)
def test_bad_values_stop_train_before_anything_runs(
    tmp_path: Path, overrides, capsys: pytest.CaptureFixture[str], override: str, expected: str  # noqa: ANN001
) -> None:
    from hle.cli import main

    out = tmp_path / "run"
    assert main(["train", "synthetic", *overrides(), override, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing trained, nothing written


def test_train_checks_a_config_changed_in_code(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    from hle.config import ConfigError

    config = load_config("synthetic", overrides())
    config.eval.decoder = {"seed_thresh": 0.4}  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="unknown config key 'eval.decoder.seed_thresh'"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_null_val_split_trains_without_evaluation_and_says_so(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    messages: list[str] = []
    result = train(load_config("synthetic", overrides(data__val_split="null")), tmp_path / "run", progress=False, log=messages.append)
    assert result.finished and result.best_pq is None and result.last_metrics == {}
    assert any("data.val_split is null" in m and "without evaluation" in m for m in messages)
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_corrupt_val_image_costs_no_training_and_resume_redoes_only_the_evaluation(
    tmp_path: Path, tiny_synth: Path, overrides_for  # noqa: ANN001
) -> None:
    import shutil

    from hle.engine.hooks import EvaluationFailed

    tiny_overrides = overrides_for

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    bad = sorted((data / "val" / "images").iterdir())[1]
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:60])  # a truncated PNG
    items = tiny_overrides(data, train__steps=3, train__eval_every=0)
    with pytest.raises(EvaluationFailed) as info:
        train(load_config("synthetic", items), tmp_path / "run", progress=False)
    message = str(info.value)
    assert "evaluation at step 3 failed" in message and "last.pt" in message and "--resume" in message
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 3 and saved["finished"]
    # last.pt holds exactly the weights of the same training without any evaluation
    reference = train(load_config("synthetic", tiny_overrides(data, train__steps=3, train__eval_every=-1)), tmp_path / "ref", progress=False)
    assert _state_equal(saved["model"], reference.model.state_dict())
    # the image fixed, --resume runs no step, only the evaluation
    bad.write_bytes(good_bytes)
    steps_run: list[int] = []
    again = train(load_config("synthetic", items), tmp_path / "run", resume=True, progress=False, on_step=steps_run.append)
    assert steps_run == [] and again.finished and again.step == 3 and again.best_pq is not None
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [3] and (tmp_path / "run" / "best.pt").is_file()
    assert _state_equal(load_checkpoint(tmp_path / "run" / "last.pt")["model"], saved["model"])


def _kill_after_first_checkpoint(argv: list[str], out: Path) -> int:
    """Start ``hle train`` in a subprocess, SIGKILL it once last.pt exists; its return code."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "hle.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    # One compute thread in both processes: the killed subprocess and this one run the
    # same CPU kernels, so their steps are bit-identical.
    items = overrides(train__steps=24, train__checkpoint_every=4, train__eval_every=-1, train__threads=1)
    killed = tmp_path / "killed"
    code = _kill_after_first_checkpoint(["train", "synthetic", *items, "--out", str(killed), "--no-progress"], killed)
    assert code == -signal.SIGKILL  # it was killed, it did not finish
    found = [p for p in (killed / "last.pt", killed / "last.prev.pt") if p.exists()]
    assert found and max(load_checkpoint(p)["step"] for p in found) < 24
    resumed = train(load_config("synthetic", items), killed, resume=True, progress=False)
    straight = train(load_config("synthetic", items), tmp_path / "straight", progress=False)
    assert resumed.step == straight.step == 24
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(killed / "last.pt")
    assert _state_equal(a["model"], b["model"])
    assert all(_state_equal(a["optimizer"]["state"][i], b["optimizer"]["state"][i]) for i in a["optimizer"]["state"])


def test_a_damaged_last_checkpoint_resumes_from_the_previous_one(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    items = overrides(train__steps=6, train__checkpoint_every=2, train__eval_every=-1)
    straight = train(load_config("synthetic", items), tmp_path / "a", progress=False)

    def sigterm_at_5(step: int) -> None:
        if step == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "b"
    assert train(load_config("synthetic", items), run, progress=False, on_step=sigterm_at_5).interrupted
    assert load_checkpoint(run / "last.pt")["step"] == 5 and load_checkpoint(run / "last.prev.pt")["step"] == 4
    data = bytearray((run / "last.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "last.pt").write_bytes(bytes(data))
    messages: list[str] = []
    resumed = train(load_config("synthetic", items), run, resume=True, progress=False, log=messages.append)
    assert any("last.pt is corrupt" in m and "last.prev.pt" in m for m in messages)
    assert any("resumed from" in m and "last.prev.pt at step 4" in m for m in messages)
    assert resumed.step == 6 and _state_equal(straight.model.state_dict(), resumed.model.state_dict())


def test_a_checkpoint_from_before_this_version_resumes(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    # Version 1: plain torch.save (no checksum), no bad_steps, config sections as plain dicts.
    items = overrides(train__steps=6, train__eval_every=-1)
    straight = train(load_config("synthetic", items), tmp_path / "a", progress=False)

    def sigterm_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "b"
    train(load_config("synthetic", items), run, progress=False, on_step=sigterm_at_3)
    state = load_checkpoint(run / "last.pt")
    state["version"] = 1
    del state["bad_steps"]
    state["config"]["loss"]["options"] = {}
    state["config"]["eval"]["decoder"] = {"seed_threshold": 0.45, "min_stuff_area": 64}
    (run / "last.pt").unlink()
    torch.save(state, run / "last.pt")
    resumed = train(load_config("synthetic", items), run, resume=True, progress=False)
    assert resumed.step == 6 and _state_equal(straight.model.state_dict(), resumed.model.state_dict())


# ------------------------------------------------------------------ numerical faults

class _Snapshots:
    """``on_step`` keeping a copy of the model and Adam state after every step.

    It sees the trainer by wrapping ``Trainer.run_step`` (``monkeypatch`` undoes it).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from hle.engine.trainer import Trainer

        self.taken: dict[int, dict] = {}
        self.trainer: Trainer | None = None
        original = Trainer.run_step

        def run_step(trainer: Trainer) -> None:
            self.trainer = trainer
            original(trainer)

        monkeypatch.setattr(Trainer, "run_step", run_step)

    def __call__(self, step: int) -> None:
        assert self.trainer is not None
        adam = self.trainer.parts.optimizer.state_dict()["state"]
        self.taken[step] = {
            "model": {k: v.clone() for k, v in self.trainer.model.state_dict().items()},
            "adam": {i: {k: v.clone() for k, v in s.items()} for i, s in adam.items()},
        }


def test_non_finite_steps_are_skipped_without_touching_any_state(
    tmp_path: Path, overrides, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    from hle.engine import trainer as trainer_mod

    original_next = trainer_mod.BatchStream.next
    calls = {"n": 0}

    def nan_images_at_3_and_4(self: trainer_mod.BatchStream):  # noqa: ANN202
        images, targets = original_next(self)
        calls["n"] += 1
        if calls["n"] in (3, 4):
            images = torch.full_like(images, float("nan"))  # a NaN image batch
        return images, targets

    monkeypatch.setattr(trainer_mod.BatchStream, "next", nan_images_at_3_and_4)
    snapshots = _Snapshots(monkeypatch)
    taken = snapshots.taken
    messages: list[str] = []
    result = train(load_config("synthetic", overrides(train__steps=6)), tmp_path / "run", progress=False, on_step=snapshots, log=messages.append)
    assert result.finished and result.step == 6 and result.bad_steps == 2
    assert [m.split(":")[0] for m in messages if "skipped" in m] == ["warning", "warning"]
    assert any("step 3 skipped (no update): non-finite loss term(s)" in m for m in messages)
    # steps 3 and 4 changed nothing: weights, BatchNorm statistics (and their counter), Adam moments
    assert _state_equal(taken[2]["model"], taken[4]["model"])
    assert taken[2]["adam"].keys() == taken[4]["adam"].keys()
    assert all(_state_equal(taken[2]["adam"][i], taken[4]["adam"][i]) for i in taken[2]["adam"])
    assert not _state_equal(taken[4]["model"], taken[5]["model"])  # step 5 trained again
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())
    assert load_checkpoint(tmp_path / "run" / "last.pt")["bad_steps"] == 2


def test_consecutive_non_finite_steps_stop_naming_the_term_and_keep_the_last_good_checkpoint(
    tmp_path: Path, overrides, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    from hle.cli import main
    from hle.engine import trainer as trainer_mod
    from hle.engine.hooks import TrainingDiverged

    real_loss = trainer_mod.hle_loss
    calls = {"n": 0}

    def ins_goes_nan_from_step_4(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 4:
            bad = terms["ins"] * float("nan")
            terms["ins"], terms["total"] = bad, terms["total"] + bad
        return terms

    monkeypatch.setattr(trainer_mod, "hle_loss", ins_goes_nan_from_step_4)
    snapshots = _Snapshots(monkeypatch)
    taken = snapshots.taken
    items = overrides(train__steps=20, train__checkpoint_every=3, train__max_bad_steps=3)
    with pytest.raises(TrainingDiverged) as info:
        train(load_config("synthetic", items), tmp_path / "run", progress=False, on_step=snapshots, log=lambda m: None)
    message = str(info.value)
    assert "ins=nan" in message and "seg=" not in message and "3 consecutive steps (4-6)" in message
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["step"] == 3 and _state_equal(saved["model"], taken[3]["model"])
    assert not (tmp_path / "run" / "last.prev.pt").exists()  # nothing saved after step 3
    # through the CLI: exit 1, one line naming the term
    calls["n"] = 0
    code = main(["train", "synthetic", *items, "--out", str(tmp_path / "cli"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("hle train: error: training diverged") and "ins=nan" in err[-1]


# ----------------------------------------------------------------- data and variants

def test_one_training_image_trains_with_a_larger_batch_and_resumes_exactly(tmp_path: Path, overrides_for) -> None:  # noqa: ANN001
    from hle.data import generate_synthetic

    tiny_overrides = overrides_for

    data = tmp_path / "one"
    generate_synthetic(data, 1, 1, height=64, width=128, seed=4, progress=False)
    items = tiny_overrides(data, train__steps=5, train__batch_size=3, train__eval_every=-1)
    messages: list[str] = []
    straight = train(load_config("synthetic", items), tmp_path / "a", progress=False, log=messages.append)
    assert straight.finished and straight.step == 5
    assert any("1 image(s), fewer than train.batch_size 3" in m for m in messages)

    def sigterm_at_2(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(load_config("synthetic", items), tmp_path / "b", progress=False, on_step=sigterm_at_2).interrupted
    resumed = train(load_config("synthetic", items), tmp_path / "b", resume=True, progress=False)
    assert _state_equal(straight.model.state_dict(), resumed.model.state_dict())


@pytest.mark.parametrize(
    "variant",
    ["loss.options.embedding_loss=cross_entropy", "loss.options.embedding_loss=associative",
     "loss.options.semantic_branch=true", "loss.options.split_embedding=true"],
)
def test_loss_ablation_variants_train_and_evaluate(tmp_path: Path, overrides, variant: str) -> None:  # noqa: ANN001
    from hle.engine.build import build_model

    config = load_config("synthetic", [*overrides(train__steps=2, train__eval_every=0), variant])
    result = train(config, tmp_path / "run", progress=False)
    assert result.finished and result.bad_steps == 0 and "PQ" in result.last_metrics
    init = build_model(config, 9, pretrained=False).state_dict()
    trained = result.model.state_dict()
    assert init.keys() == trained.keys() and not _state_equal(init, trained)
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    if "semantic_branch" in variant:  # the extra head exists and was trained
        head = [k for k in trained if "semantic" in k and trained[k].is_floating_point()]
        assert head and any(not torch.equal(init[k], trained[k]) for k in head)


def test_evaluations_do_not_change_the_training(tmp_path: Path, overrides) -> None:  # noqa: ANN001
    # last.pt is saved before each evaluation and the random state restored after it,
    # so a run that evaluates every 2 steps trains exactly like one that never does.
    a = train(load_config("synthetic", overrides(train__steps=4, train__eval_every=2)), tmp_path / "a", progress=False)
    b = train(load_config("synthetic", overrides(train__steps=4, train__eval_every=-1)), tmp_path / "b", progress=False)
    assert _state_equal(a.model.state_dict(), b.model.state_dict())
    assert [json.loads(x)["step"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()] == [2, 4]


def test_evaluate_refuses_overrides_that_do_not_apply_to_it(
    tmp_path: Path, tiny_synth: Path, overrides, capsys: pytest.CaptureFixture[str]  # noqa: ANN001
) -> None:
    from hle.cli import main

    train(load_config("synthetic", overrides(train__steps=1, train__eval_every=-1)), tmp_path / "run", progress=False)
    capsys.readouterr()
    argv = ["evaluate", str(tmp_path / "run" / "last.pt"), "--data", "synthetic", "--root", str(tiny_synth), "--out", str(tmp_path / "e")]
    assert main([*argv, "train.steps=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "override 'train.steps' does not apply here" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()
