"""The ``hle`` command line: train, evaluate, predict, demo, synth, pq, export, explore.

This module owns argument parsing and the translation of user mistakes into one line
on stderr with exit code 2 (missing files, unknown config keys or datasets, bad
values). Everything else is delegated: training to :mod:`hle.engine.trainer`,
inference to :mod:`hle.engine.inference`, the demo to :mod:`hle.engine.demo`, and the
``synth`` / ``pq`` / ``export`` / ``explore`` sub-commands to the argument builders of
:mod:`hle.data.cli`, :mod:`hle.evaluation.cli` and :mod:`hle.export.cli`. Set
``HLE_DEBUG=1`` to see full tracebacks.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


_EPILOG_TRAIN = """\
examples:
  hle train synthetic data.root=data/synth --out runs/synth
  hle train cityscapes_r50 data.root=/data/cityscapes train.batch_size=4 --out runs/cs
  torchrun --nproc_per_node 4 -m hle.cli train coco_r50 data.root=/data/coco --out runs/coco
  hle train runs/cs/config.yaml --out runs/cs --resume
shipped configs: {configs}
"""


def _add_train(sub: argparse._SubParsersAction) -> None:
    from hle.config import available_configs

    p = sub.add_parser(
        "train",
        help="train a model from a config",
        description="Train an HLE model. CONFIG is a shipped config name or a YAML path; "
        "any value can be overridden with section.key=value (sections: model, loss, data, "
        "optim, train, eval). Ctrl-C / SIGTERM save a checkpoint and exit cleanly. "
        "Under torchrun the run uses DistributedDataParallel.",
        epilog=_EPILOG_TRAIN.format(configs=", ".join(available_configs())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG", help="config name or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt if it exists")
    again.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in OUT (its checkpoints, metrics, TensorBoard logs); without "
        "--resume or --overwrite a folder holding a run is refused",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    """--flip / --no-flip and --device, shared by evaluate and predict."""
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None, help="test-time flip (default: the checkpoint config's eval.flip)")
    flip.add_argument("--no-flip", dest="flip", action="store_false", help="no test-time flip")
    native = p.add_mutually_exclusive_group()
    native.add_argument(
        "--native-resolution", dest="native", action="store_true", default=None,
        help="decode the network's outputs at its decoder stride (4; tiny: 2) and expand the ids to the "
        "image (fast; default: the checkpoint config's eval.native_resolution)",
    )
    native.add_argument(
        "--full-resolution", dest="native", action="store_false",
        help="upsample the network's outputs to the image size before decoding",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device (default: auto)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint (PQ table, COCO panoptic predictions)",
        description="Evaluate a trained checkpoint on a dataset split: prints the PQ table "
        "(PQ, SQ, RQ per class; All / Things / Stuff; PQ-dagger, PC, mIoU), writes "
        "OUT/metrics.json and the predictions in COCO panoptic format "
        "(OUT/panoptic_<split>.json + OUT/panoptic_<split>/*.png).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by hle train")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset loader: coco, cityscapes, vistas, custom, synthetic")
    p.add_argument("--root", required=True, metavar="DIR", help="dataset root folder")
    p.add_argument("--split", default="val", help="split name (default: val)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: next to the checkpoint, eval_<split>)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    _add_inference_options(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="eval overrides, e.g. eval.decoder.seed_threshold=0.4")
    p.set_defaults(func=_cmd_evaluate)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="panoptic segmentation of images",
        description="Predict panoptic segmentations. For each image writes OUT/<name>.png "
        "(COCO panoptic id PNG: id = R + 256 G + 256^2 B), OUT/<name>.json (segments_info "
        "with dataset category ids and names) and OUT/<name>_overlay.png (colours over the image). "
        "IMAGES may be files, folders (all images inside) or glob patterns.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by hle train (with --onnx: the first image)")
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files, folders or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--onnx", metavar="FILE", default=None, help="run a model written by hle export through onnxruntime (CPU) instead of a checkpoint")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_predict)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate synthetic data, train, evaluate, draw figures (what make demo runs)",
        description="The end-to-end demo on the built-in synthetic dataset: generates it "
        "(train / val / test, resumable), trains the small 'synthetic' config for a fixed number "
        "of steps (the same result on any machine, to evaluation noise), evaluates the held-out "
        "test split and writes OUT/metrics.json (PQ, PQ_th, PQ_st, SQ, RQ, mIoU and per-class PQ "
        "on a 0-100 scale, steps, times, the CPU) and PNG figures in OUT/figures, among them PQ "
        "on the validation split against training steps. Re-running resumes or just re-evaluates "
        "a finished run (delete OUT to start over). Threads: two compute threads when the CPU is "
        "idle, else one thread plus one data worker (override with train.threads=N data.num_workers=M).",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="training steps (default: the synthetic config's train.steps)")
    p.add_argument("--minutes", type=float, default=None,
                   help="optional wall-clock bound on training (the result then depends on the machine)")
    p.add_argument("--data", default=None, metavar="DIR", help="synthetic dataset folder (default: OUT/data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the synthetic config")
    p.set_defaults(func=_cmd_demo)


def _add_external(sub: argparse._SubParsersAction, name: str, module: str, add: str, run: str, help_text: str) -> None:
    import importlib

    p = sub.add_parser(name, help=help_text, description=help_text)
    try:
        mod = importlib.import_module(module)
        getattr(mod, add)(p)
        runner = getattr(mod, run)
    except (ImportError, AttributeError) as exc:
        message = f"hle {name} is not available in this installation ({exc})"

        def runner(args: argparse.Namespace) -> int:
            raise UserError(message)

    p.set_defaults(func=runner)


def build_parser() -> argparse.ArgumentParser:
    """The ``hle`` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="hle",
        description="Proposal-free panoptic segmentation with Hierarchical Lovász Embeddings.",
    )
    from hle import __version__

    parser.add_argument("--version", action="version", version=f"hle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_demo(sub)
    _add_external(sub, "synth", "hle.data.cli", "add_synth_arguments", "run_synth",
                  "generate the built-in synthetic panoptic dataset (COCO panoptic format)")
    _add_external(sub, "pq", "hle.evaluation.cli", "add_pq_arguments", "run_pq",
                  "panoptic quality of COCO panoptic prediction files against ground truth")
    _add_external(sub, "export", "hle.export.cli", "add_export_arguments", "run_export",
                  "export a checkpoint's network to ONNX with the decoder's inputs in its metadata")
    _add_external(sub, "explore", "hle.export.cli", "add_explore_arguments", "run_explore",
                  "write one self-contained HTML page to explore predictions and embeddings in a browser")
    return parser


# ----------------------------------------------------------------------- commands

def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available")
    return name


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hle.config import load_config
    from hle.engine.hooks import TrainingStopped
    from hle.engine.run_folder import RunExistsError
    from hle.engine.trainer import train

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        result = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except RunExistsError as exc:
        raise UserError(str(exc)) from None
    except TrainingStopped as exc:  # diverged, or an evaluation failed: the message says what is saved
        if os.environ.get("HLE_DEBUG"):
            raise
        print(f"hle train: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 1 if result.interrupted else 0  # under torchrun only rank 0 reports
    metrics = {k: v for k, v in result.last_metrics.items() if k != "per_class"}
    if result.interrupted:
        print(f"interrupted at step {result.step}; resume with: hle train {args.config} ... --out {out} --resume", file=sys.stderr)
        return 130
    summary = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"trained {result.step} steps in {result.elapsed_s / 60:.1f} min -> {out / 'last.pt'}" + (f" ({summary})" if summary else ""))
    return 0


def _load_checkpoint_model(path: str, device: str):  # noqa: ANN202 - LoadedModel, imported lazily
    from hle.engine.inference import load_trained

    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    return load_trained(path, device=_device(device))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from hle.config import apply_overrides, config_from_dict, config_to_dict, parse_overrides
    from hle.engine.build import build_mapper, decoder_params, decoder_split_embedding, load_records
    from hle.engine.inference import evaluate_records
    from hle.engine.writers import dataset_prediction_writer

    loaded = _load_checkpoint_model(args.checkpoint, args.device)
    config = loaded.config
    if args.overrides:
        data = apply_overrides(config_to_dict(config), parse_overrides(args.overrides), allowed_sections=("eval", "data.max_side"))
        config = config_from_dict(data)
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be >= 1, got {args.max_images}")
    if not os.path.isdir(args.root):
        raise UserError(f"--root: dataset folder not found: {args.root}")
    records, metadata = load_records(args.data, args.root, args.split)
    if metadata.num_classes != loaded.metadata.num_classes:
        raise UserError(
            f"dataset '{args.data}' has {metadata.num_classes} classes but the checkpoint was trained with "
            f"{loaded.metadata.num_classes}"
        )
    if args.max_images:
        records = records[: args.max_images]
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval_{args.split}"
    writer, add_prediction = dataset_prediction_writer(out, f"panoptic_{args.split}", metadata)
    flip = config.eval.flip if args.flip is None else args.flip
    native = config.eval.native_resolution if args.native is None else args.native
    result = evaluate_records(
        loaded.model,
        records,
        metadata,
        build_mapper(config, metadata, train=False),
        flip=flip,
        decoder_params=decoder_params(config),
        split_embedding=decoder_split_embedding(config),
        native=native,
        on_prediction=add_prediction,
        progress=True,
    )
    json_path = writer.close()
    from hle.evaluation import format_pq_table

    print(format_pq_table(result.summary))
    metrics = {k: v for k, v in result.metrics.items()}
    metrics.update(checkpoint=str(args.checkpoint), step=loaded.step, split=args.split, flip=flip, native_resolution=native, decoder=config_to_dict(config)["eval"]["decoder"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"predictions: {json_path} (+ {json_path.with_suffix('')}/); metrics: {out / 'metrics.json'}")
    return 0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_images(items: Sequence[str]) -> list[str]:
    """Files, folders (their images, sorted) and glob patterns -> image paths.

    Raises:
        UserError: an item matches nothing.
    """
    import glob
    from pathlib import Path

    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(q) for q in p.iterdir() if q.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in folder {item}")
            paths.extend(found)
        elif p.is_file():
            paths.append(str(p))
        elif any(ch in item for ch in "*?["):
            found = sorted(q for q in glob.glob(item, recursive=True) if Path(q).suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"no images match {item}")
            paths.extend(found)
        else:
            raise UserError(f"image not found: {item}")
    return paths


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hle.engine.writers import predict_images

    if not args.onnx and not args.images:
        raise UserError("no IMAGES given after CHECKPOINT")
    paths = expand_images([args.checkpoint, *args.images] if args.onnx else args.images)
    if args.onnx:
        from hle.export.cli import onnx_loaded_model

        loaded = onnx_loaded_model(args)
    else:
        loaded = _load_checkpoint_model(args.checkpoint, args.device)
    flip = loaded.config.eval.flip if args.flip is None else args.flip
    native = loaded.config.eval.native_resolution if args.native is None else args.native
    written = predict_images(loaded, paths, Path(args.out), flip=flip, native=native, progress=True)
    print(f"wrote {len(written)} predictions to {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hle.engine.demo import run_demo

    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    metrics = run_demo(args.out, steps=args.steps, minutes=args.minutes, data_dir=args.data,
                       overrides=args.overrides, progress=not args.no_progress)
    keys = ("PQ", "PQ_th", "PQ_st", "SQ", "RQ", "mIoU")
    per_class = ", ".join(f"{k} {v:.1f}" for k, v in metrics.get("per_class_pq", {}).items())
    print("demo (test split): " + ", ".join(f"{k} {metrics[k]:.1f}" for k in keys if k in metrics)
          + f" after {metrics.get('steps', 0)} steps ({metrics.get('train_minutes', 0):.1f} min of training;"
          f" this run {metrics.get('total_minutes', 0):.1f} min on {metrics.get('cpu', 'this CPU')}) -> {args.out}")
    if per_class:
        print(f"per-class PQ: {per_class}")
    return 0


# ---------------------------------------------------------------------------- main

def _user_errors() -> tuple[type[BaseException], ...]:
    from hle.config import ConfigError

    return (UserError, ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError, KeyError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hle`` console script; returns the exit code."""
    parser = build_parser()
    # KEY=VALUE overrides may come after options (``hle train cfg --out d a.b=1``);
    # argparse would call those "unrecognized", so they are collected here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        unknown = [e for e in extra if "=" not in e or e.startswith("-")]
        if unknown or not hasattr(args, "overrides"):
            parser.parse_args(argv)  # reports the unrecognized arguments, exits 2
        args.overrides = list(args.overrides) + extra
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except KeyboardInterrupt as exc:
        print(f"hle {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if os.environ.get("HLE_DEBUG"):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            message = f"missing key {message}"
        print(f"hle {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":  # ``torchrun -m hle.cli train ...``
    sys.exit(main())
