"""Orchestration: every job that strings the rooms together, one entry point per job.

This room sits above :mod:`sbsnn.sim`, :mod:`sbsnn.converters` and :mod:`sbsnn.analysis`
and below the CLI (which parses, calls one of these and prints):

- document sets (:func:`load_documents`) and data-parallel simulation
  (:func:`simulate_documents`; ``pipeline=True`` places the blocks across ranks instead,
  :mod:`sbsnn.runs.pipeline`);
- the k sweep, plain and calibrated rows, for a text or a document set
  (:func:`sweep`, :func:`sweep_documents`), and the frontier: the spikes per element each
  method needs to reach a fidelity target (:func:`frontier`);
- calibrate-and-evaluate of a checkpoint (:func:`calibrate_checkpoint`);
- spiking-aware fine-tuning (:func:`sbsnn.runs.finetune.finetune`, also ``sbsnn.finetune``;
  of a checkpoint: :func:`finetune_checkpoint`), data parallel under torchrun;
- layer-split conversion (:func:`convert_checkpoint_split`);
- the demo (:func:`run_demo`).

Under ``torchrun`` (``torch.distributed``: gloo on CPUs, NCCL on GPUs) the work is split
across the ranks, what they counted is reduced exactly, and every rank gets the one
result; without ``torchrun`` the same calls run in one process. How to run it on a
cluster: ``docs/distributed.md``.
"""

from sbsnn.runs.calibrate import CalibratedCheckpoint, calibrate_checkpoint, compare
from sbsnn.runs.convert import convert_checkpoint_split
from sbsnn.runs.finetune import FinetunedCheckpoint, finetune_checkpoint
from sbsnn.runs.demo import run_demo
from sbsnn.runs.documents import (Document, DocumentSet, DocumentSetError, assign_documents,
                                  contiguous_split, load_documents)
from sbsnn.runs.frontier import frontier
from sbsnn.runs.group import Group, launched_by_torchrun, process_group
from sbsnn.runs.results import DocumentCounters, DocumentSetResult, tokenize_documents
from sbsnn.runs.simulate import simulate_documents
from sbsnn.runs.sweep import sweep, sweep_documents

__all__ = ["CalibratedCheckpoint", "Document", "DocumentCounters", "DocumentSet",
           "DocumentSetError", "DocumentSetResult", "FinetunedCheckpoint", "Group",
           "assign_documents", "calibrate_checkpoint", "compare", "contiguous_split",
           "convert_checkpoint_split", "finetune_checkpoint", "frontier",
           "launched_by_torchrun", "load_documents", "process_group", "run_demo",
           "simulate_documents", "sweep", "sweep_documents", "tokenize_documents"]
