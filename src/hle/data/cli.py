"""The ``hle synth`` sub-command: argument definitions and the runner.

The main CLI (``hle/cli.py``) adds these arguments to its ``synth`` sub-parser and
calls :func:`run_synth`; nothing here parses ``sys.argv`` itself.
"""
from __future__ import annotations

import argparse
import sys

from hle.data.synthetic import generate_synthetic


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--out --num --num-val --num-test --height --width --seed`` to ``parser``."""
    parser.add_argument("--out", required=True, help="output folder (created; existing images with the same settings are kept)")
    parser.add_argument("--num", type=int, required=True, help="number of training images")
    parser.add_argument("--num-val", type=int, default=None, help="number of validation images, for choosing thresholds (default: max(1, num // 5))")
    parser.add_argument("--num-test", type=int, default=None, help="number of test images, for reporting (default: max(1, num // 4)); a split of its own random stream")
    parser.add_argument("--height", type=int, default=128, help="image height in pixels (default 128)")
    parser.add_argument("--width", type=int, default=256, help="image width in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic dataset described by ``args``; returns the exit code."""
    num_val = args.num_val if args.num_val is not None else max(1, args.num // 5)
    num_test = args.num_test if args.num_test is not None else max(1, args.num // 4)
    for flag, value, low in (("--num", args.num, 0), ("--num-val", num_val, 0), ("--num-test", num_test, 0),
                             ("--height", args.height, 32), ("--width", args.width, 32)):
        if value < low:
            print(f"hle synth: {flag} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    try:
        folders = generate_synthetic(args.out, args.num, num_val, num_test, height=args.height, width=args.width, seed=args.seed)
    except OSError as e:  # unwritable or full output folder: a user problem, one line
        print(f"hle synth: cannot write to {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"synthetic dataset: {args.num} train / {num_val} val / {num_test} test images of {args.height}x{args.width} in {args.out} "
          f"({', '.join(str(p) for p in folders.values())})")
    return 0
