"""Documents side by side: the exact passes of calibration and its evaluation, one document
per worker.

Each document is a fresh decoding state, so documents are independent: with several torch
threads on a CPU, :func:`each_document` runs them on sbsnn's single-threaded workers
(:mod:`sbsnn.neurons.workers`), longest first, instead of running one document at a time
on torch's threads (the integer path is made of many mid-sized operations, each a
fork/join that a second thread barely speeds up). Whatever a document computes stays its
own and the caller combines the results in document order, so the numbers do not depend
on the number of workers (the tests check it, bit for bit).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from sbsnn.neurons.workers import run_parts, workers_for

__all__ = ["each_document", "document_workers"]


def _hooked(model: nn.Module) -> bool:
    """Forward hooks anywhere in ``model`` (or global ones): they would run on the workers,
    in an order that depends on timing, so such models run their documents one by one."""
    from torch.nn.modules import module as _module

    if any(getattr(_module, name, None) for name in
           ("_global_forward_hooks", "_global_forward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def document_workers(blocks: Sequence[Sequence[torch.Tensor]], models: Sequence[nn.Module]) -> int:
    """How many documents of ``blocks`` run at once: 1 for a single document, tensors off
    the CPU, models with forward hooks, or one torch thread; else up to torch's thread
    count of the calling thread (:func:`~sbsnn.neurons.workers.workers_for`)."""
    if len(blocks) <= 1:
        return 1
    devices = {b.device.type for doc in blocks for b in doc}
    for m in models:
        devices |= {p.device.type for p in m.parameters()} | {b.device.type for b in m.buffers()}
        if _hooked(m):
            return 1
    if devices != {"cpu"}:
        return 1
    return workers_for(len(blocks))


def each_document(fn: Callable, blocks: Sequence[Sequence[torch.Tensor]],
                  models: Sequence[nn.Module], progress: Callable | None = None) -> list:
    """``[fn(i, doc, tell) for i, doc in enumerate(blocks)]``, documents concurrently when
    :func:`document_workers` allows (longest first), results in document order.

    ``fn`` calls ``tell(tokens)`` after each block: ``progress(tokens)`` then runs on the
    calling thread, and a document whose run has stopped (another one failed, or the
    caller was interrupted) ends there. An exception in a document propagates once the
    documents in flight have stopped."""
    workers = document_workers(blocks, models)
    sizes = [sum(b.shape[-1] for b in doc) for doc in blocks]
    order = sorted(range(len(blocks)), key=lambda i: -sizes[i])
    relay = progress if progress is not None else (lambda n: None)
    return run_parts(lambda i, tell: fn(i, blocks[i], tell), range(len(blocks)), workers,
                     order=order, relay=relay)
