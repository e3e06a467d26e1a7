"""Training and inference engine: plain functions around the model, loss, decoder and evaluator.

Sub-modules: :mod:`~hle.engine.checkpoint` (atomic checkpoints, RNG state),
:mod:`~hle.engine.optim` (Adam groups, polynomial decay), :mod:`~hle.engine.sampling`
(resumable data order), :mod:`~hle.engine.distributed` (torchrun / DDP),
:mod:`~hle.engine.build` (config sections -> model, mapper, loss options, decoder
arguments), :mod:`~hle.engine.trainer` (the loop), :mod:`~hle.engine.hooks` (what runs
around each step), :mod:`~hle.engine.run_folder` (refusing, replacing and resuming a run
folder), :mod:`~hle.engine.inference`
(checkpoint loading, prediction, decoding, evaluation, cached outputs for threshold
searches), :mod:`~hle.engine.writers` (COCO panoptic files, ``hle predict`` outputs) and
:mod:`~hle.engine.demo` (``hle demo``). Nothing is imported
here eagerly so that ``import hle.engine.checkpoint`` stays light.
"""
from __future__ import annotations
