"""Beyond one process: document sets, torch.distributed runs, layer-split conversion and
pipeline stages.

This room sits above :mod:`sbsnn.sim` and :mod:`sbsnn.analysis` and below the CLI: it
splits work across the ranks of a ``torchrun`` launch (``torch.distributed``: gloo on
CPUs, NCCL on GPUs), reduces what they counted, and leaves one result; without
``torchrun`` the same calls run in one process. How to run it on a cluster:
``docs/distributed.md``.
"""

from sbsnn.dist.documents import (Document, DocumentSet, DocumentSetError, assign_documents,
                                  contiguous_split, load_documents)
from sbsnn.dist.group import Group, launched_by_torchrun, process_group
from sbsnn.dist.simulate import (DocumentCounters, DocumentSetResult, simulate_documents,
                                 tokenize_documents)
from sbsnn.dist.sweep import sweep_documents

__all__ = ["Document", "DocumentCounters", "DocumentSet", "DocumentSetError", "DocumentSetResult",
           "Group", "assign_documents", "contiguous_split", "launched_by_torchrun",
           "load_documents", "process_group", "simulate_documents", "sweep_documents",
           "tokenize_documents"]
