"""The ``hle pq`` sub-command: argument definitions and the runner.

This module owns only the command-line shell around :func:`hle.evaluation.pq_compute`;
``hle/cli.py`` registers it. User mistakes (missing files, inconsistent files) surface as
``FileNotFoundError`` / ``ValueError`` with a one-line message that the main CLI prints.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_pq_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``GT_JSON PRED_JSON [--gt-folder D] [--pred-folder D] [--json] [--workers N] [--ap]``."""
    parser.add_argument("gt_json", metavar="GT_JSON", help="ground truth in COCO panoptic format")
    parser.add_argument("pred_json", metavar="PRED_JSON", help="predictions in COCO panoptic format")
    parser.add_argument("--gt-folder", metavar="D", default=None,
                        help="ground-truth PNG folder (default: GT_JSON without .json)")
    parser.add_argument("--pred-folder", metavar="D", default=None,
                        help="prediction PNG folder (default: PRED_JSON without .json)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--workers", metavar="N", type=int, default=None,
                        help="worker processes (default: all cores)")
    parser.add_argument("--ap", action="store_true", help="also compute COCO mask AP of thing classes")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def run_pq(args: argparse.Namespace) -> int:
    """Evaluate and print the table (or JSON with ``--json``) on stdout; returns 0."""
    from hle.evaluation.panoptic import format_pq_table, pq_compute

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: expected a positive number, got {args.workers}")
    results = pq_compute(args.gt_json, args.pred_json, args.gt_folder, args.pred_folder,
                         workers=args.workers, compute_ap=bool(getattr(args, "ap", False)))
    if args.json:
        json.dump(_jsonable(results), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(format_pq_table(results))
    return 0
