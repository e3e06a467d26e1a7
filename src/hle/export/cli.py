"""The ``hle export`` and ``hle explore`` sub-commands, and the model behind ``hle predict --onnx``.

This module owns only the command-line shells around :mod:`hle.export.onnx` and
:mod:`hle.export.explore`; ``hle/cli.py`` registers them. User mistakes surface as
``FileNotFoundError`` or ``ValueError`` with a one-line message that the main CLI prints
(not ``hle.cli.UserError``: under ``python -m hle.cli`` that class lives in
``__main__``); a missing optional package (``hle[export]``) becomes a ``ValueError``
that says how to install it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hle.export.onnx import DEFAULT_OPSET

__all__ = [
    "add_export_arguments",
    "run_export",
    "add_explore_arguments",
    "run_explore",
    "onnx_loaded_model",
]

#: Size of the random test input on which ``hle export`` compares onnxruntime with PyTorch.
CHECK_SIZE = (96, 128)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``CHECKPOINT --format onnx --out FILE [--opset N] [--no-check]``."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by hle train")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file, e.g. model.onnx")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument(
        "--no-check", action="store_true",
        help="skip comparing onnxruntime with PyTorch on a random input after the export",
    )


def run_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX, check it against PyTorch, print a summary; returns 0."""
    import torch

    from hle.engine.inference import load_trained
    from hle.export.onnx import OnnxModel, export_info, export_onnx, max_abs_difference

    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    loaded = load_trained(args.checkpoint, device="cpu")
    try:
        path = export_onnx(loaded.model, args.out, export_info(loaded), opset=args.opset)
        summary = f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset {args.opset})"
        if not args.no_check:
            images = torch.randn(1, 3, *CHECK_SIZE, generator=torch.Generator().manual_seed(0))
            diffs = max_abs_difference(loaded.model, OnnxModel(path), images)
            summary += "; onnxruntime vs PyTorch max |difference| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    print(summary)
    return 0


def onnx_loaded_model(args: argparse.Namespace) -> Any:
    """The :class:`~hle.engine.inference.LoadedModel` of ``hle predict --onnx FILE``.

    Raises:
        ValueError: ``--full-resolution`` or ``--device cuda`` (the graph gives maps at
            the decoder stride and runs on onnxruntime's CPU provider), or a missing
            optional package.
    """
    from hle.export.onnx import load_onnx

    if getattr(args, "native", None) is False:
        raise ValueError("--onnx decodes the exported maps at the decoder stride; drop --full-resolution")
    if getattr(args, "device", "auto") == "cuda":
        raise ValueError("--onnx runs on onnxruntime's CPU provider; drop --device cuda")
    try:
        return load_onnx(args.onnx)
    except ImportError as exc:
        raise ValueError(str(exc)) from None


def add_explore_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``MODEL IMAGES... --out FILE [--flip | --no-flip] [--max-side N] [--device D]``."""
    parser.add_argument("model", metavar="CHECKPOINT", help="a .pt file written by hle train, or a .onnx file written by hle export")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or globs")
    parser.add_argument("--out", default="explore.html", metavar="FILE", help="the HTML file to write (default: explore.html)")
    flip = parser.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="flip", action="store_true", default=None, help="test-time flip (default: the model's eval.flip)")
    flip.add_argument("--no-flip", dest="flip", action="store_false", help="no test-time flip")
    parser.add_argument(
        "--max-side", type=int, default=None, metavar="N",
        help="shrink images so the longer side is at most N (default: the model's data.max_side); "
        "the page grows with the image area times the embedding dimension",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of a checkpoint's network (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_explore(args: argparse.Namespace) -> int:
    """Write the explorer page for a model and images; returns 0."""
    from hle.cli import expand_images
    from hle.engine.inference import load_trained
    from hle.export.explore import write_explorer

    if args.max_side is not None and args.max_side < 16:
        raise ValueError(f"--max-side must be >= 16, got {args.max_side}")
    paths = expand_images(args.images)
    model = Path(args.model)
    if not model.is_file():
        raise FileNotFoundError(f"model not found: {model}")
    if model.suffix.lower() == ".onnx":
        if args.device == "cuda":
            raise ValueError("an .onnx model runs on onnxruntime's CPU provider; drop --device cuda")
        args.onnx, args.native = str(model), True
        loaded = onnx_loaded_model(args)
    else:
        loaded = load_trained(model, device=args.device)
    flip = loaded.config.eval.flip if args.flip is None else args.flip
    out = write_explorer(loaded, paths, args.out, flip=flip, max_side=args.max_side, progress=not args.no_progress)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(paths)} image(s)); open it in a browser")
    return 0
