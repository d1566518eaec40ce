"""Simulating a document set, in one process or split across torch.distributed ranks.

:func:`simulate_documents` runs every document from a fresh decoding state through
:class:`sbsnn.sim.Simulator` (event by event, the counters in closed form) and keeps
document boundaries: per-document counters in the result, ``call_documents`` and a
``documents`` table in the recording.

Under ``torchrun`` (or in a process group the host initialised) the documents are split
across the ranks, balanced by tokens (:func:`sbsnn.runs.documents.assign_documents`);
each rank simulates its own documents with its own copy of the model and writes its
own shard of the recording; the layer counters are reduced over the group (exact int64
``all_reduce``), the per-document results gathered in document order, and rank 0 writes
the recording's index (:mod:`sbsnn.sim.shards`). Every rank returns the same totals,
equal to those of one process running all the documents.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from sbsnn.checks import check_block_size, check_max_tokens
from sbsnn.runs.documents import assign_documents, load_documents
from sbsnn.runs.group import Group, process_group
from sbsnn.runs.pipeline import simulate_pipeline
from sbsnn.runs.results import (DocumentCounters, DocumentSetResult, document_ids,
                                reduce_counters, tokenize_documents, totals_of)
from sbsnn.sim.engine import Simulator, resolve_backend, run_sequence
from sbsnn.sim.session import RunRecording, check_record, coding_of, select_trace
from sbsnn.sim.trace import TraceError, TraceSpec

__all__ = ["DocumentCounters", "DocumentSetResult", "reduce_counters", "simulate_documents",
           "tokenize_documents"]


@torch.no_grad()
def simulate_documents(spiking_model, documents, backend: str = "auto", record=None,
                       block_size: int | None = 256, max_tokens: int | None = None,
                       return_logits: bool = False, progress: bool = False,
                       record_events: bool = False, metadata: dict | None = None,
                       trace=None, distributed: bool | str = "auto",
                       group: Group | None = None, pipeline: bool = False,
                       on_tokens=None) -> DocumentSetResult:
    """Simulate every document of ``documents`` (a path or texts, see
    :func:`~sbsnn.runs.documents.load_documents`) from a fresh decoding state.

    ``block_size`` / ``record`` / ``record_events`` / ``backend`` / ``trace`` as
    :func:`sbsnn.sim.simulate`; ``max_tokens`` cuts each document. ``distributed``
    (see :func:`~sbsnn.runs.group.process_group`) or an open ``group`` decides whether the
    documents are split across ranks; ``record="spikes.h5"`` then writes a sharded
    recording (index at ``spikes.h5``), read as one by ``sbsnn.load_recording``. A trace
    needs one process (its first tokens would depend on the split).

    ``pipeline=True``: the model's blocks are split across the ranks instead of the
    documents (:func:`sbsnn.runs.pipeline.simulate_pipeline`); ``spiking_model`` is then
    the spiking checkpoint's directory, of which each rank loads only its own blocks.

    ``on_tokens(n)`` is called after each block with the ``n`` tokens this rank just ran
    (e.g. to sample speed and memory along a long stream).
    """
    if group is None:
        with process_group(distributed) as g:
            return simulate_documents(spiking_model, documents, backend, record, block_size,
                                      max_tokens, return_logits, progress, record_events,
                                      metadata, trace, group=g, pipeline=pipeline,
                                      on_tokens=on_tokens)
    if pipeline:
        if trace is not None:
            raise TraceError("trace: a time-resolved trace needs one process without pipeline "
                             "stages")
        return simulate_pipeline(spiking_model, documents, backend, record, block_size,
                                 max_tokens, return_logits, progress, record_events, metadata,
                                 group=group, on_tokens=on_tokens)
    check_block_size(block_size, none_ok=True)
    check_record(record, record_events)
    check_max_tokens(max_tokens)
    docs = load_documents(documents)
    # Each document is tokenized again when it runs: the ids of a long set are never all
    # held at once (only a recording to a file needs them all, for its metadata, below).
    lengths = [int(document_ids(spiking_model, docs, d.index, max_tokens).shape[1]) for d in docs]
    backend = resolve_backend(backend)
    if TraceSpec.parse(trace) is not None and group.distributed:
        raise TraceError(f"trace: a time-resolved trace needs one process (its traced tokens "
                         f"would depend on how the documents are split over "
                         f"{group.world_size} ranks); run the traced simulation without torchrun")
    spec, metadata = select_trace(spiking_model, trace, metadata)
    ranks = assign_documents(lengths, group.world_size)
    device = next(spiking_model.parameters()).device
    mine = [d for d in docs if ranks[d.index] == group.rank]
    to_file = record is not None and not hasattr(record, "write")
    run_rec = RunRecording(record, spiking_model,
                           tokenize_documents(spiking_model, docs, max_tokens) if to_file else [],
                           metadata, record_events, documents=docs, ranks=ranks, group=group)
    recorder = run_rec.recorder
    per_doc: list[DocumentCounters] = []
    logits: dict[int, torch.Tensor] = {}
    try:
        with Simulator(spiking_model, backend, recorder, trace=spec) as sim:
            names = [n for n, _ in sim.layers]
            shapes = {n: (m.in_features, m.out_features) for n, m in sim.layers}
            group.barrier()
            t0 = time.perf_counter()
            bar = tqdm(total=sum(lengths[d.index] for d in mine),
                       desc=f"simulate{group.where()}", unit="tok",
                       disable=not (progress and group.is_main))
            step = bar.update if on_tokens is None else (lambda n: (bar.update(n), on_tokens(n)))
            for d in mine:
                x = document_ids(spiking_model, docs, d.index, max_tokens).to(device)
                n = int(x.shape[1])
                if recorder is not None and hasattr(recorder, "begin_document"):
                    recorder.begin_document(d.index, d.name, n, len(d.text))
                counters = sim.begin_document()
                out = run_sequence(spiking_model, x, block_size, recorder, return_logits,
                                   on_block=step)
                if recorder is not None:
                    recorder.flush()
                if out is not None:
                    logits[d.index] = out
                per_doc.append(DocumentCounters(d.index, d.name, n, len(d.text), group.rank,
                                                totals_of(counters)))
            bar.close()
            seconds = time.perf_counter() - t0
            layers = reduce_counters(group, names, sim.counters, shapes)
            gathered = group.all_gather((per_doc, seconds))
        all_docs = sorted((dc for part, _ in gathered for dc in part), key=lambda dc: dc.index)
        seconds = max(s for _, s in gathered)
        run_rec.finish()
    except BaseException:
        run_rec.fail()
        raise
    if len(all_docs) != len(docs) or any(dc.index != i for i, dc in enumerate(all_docs)):
        raise RuntimeError(f"internal: the ranks returned {len(all_docs)} document results for "
                           f"{len(docs)} documents")
    return DocumentSetResult(
        logits=None, layers=layers, tokens=sum(dc.tokens for dc in all_docs), seconds=seconds,
        backend=backend, coding=coding_of(spiking_model), traces=sim.traces,
        documents=all_docs, world_size=group.world_size, rank=group.rank,
        document_logits=logits, recording=run_rec.path)
