"""Simulating a document set, in one process or split across torch.distributed ranks.

:func:`simulate_documents` runs every document from a fresh decoding state through
:class:`sbsnn.sim.Simulator` (event by event, the counters in closed form) and keeps
document boundaries: per-document counters in the result, ``call_documents`` and a
``documents`` table in the recording.

Under ``torchrun`` (or in a process group the host initialised) the documents are split
across the ranks, balanced by tokens (:func:`sbsnn.dist.documents.assign_documents`);
each rank simulates its own documents with its own copy of the model and writes its
own shard of the recording; the layer counters are reduced over the group (exact int64
``all_reduce``), the per-document results gathered in document order, and rank 0 writes
the recording's index (:mod:`sbsnn.sim.shards`). Every rank returns the same totals,
equal to those of one process running all the documents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from sbsnn.dist.documents import DocumentSet, assign_documents, load_documents
from sbsnn.dist.group import Group, process_group
from sbsnn.sim.engine import (LayerCounters, SimResult, Simulator, _coding_of, _recording_metadata,
                              counter_fields, resolve_backend, run_sequence)
from sbsnn.sim.trace import TraceError, TraceSpec

__all__ = ["DocumentCounters", "DocumentSetResult", "reduce_counters", "simulate_documents",
           "tokenize_documents"]


@dataclass
class DocumentCounters:
    """One document of a set: where it ran and its totals over all spiking layers
    (the keys of :meth:`sbsnn.sim.SimResult.totals`)."""

    index: int
    name: str
    tokens: int
    chars: int
    rank: int
    totals: dict

    def to_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "tokens": self.tokens,
                "chars": self.chars, "rank": self.rank, "totals": dict(self.totals)}


@dataclass
class DocumentSetResult(SimResult):
    """A :class:`~sbsnn.sim.SimResult` over a document set (``layers``: counters summed
    over every document of every rank), plus ``documents`` (per-document counters, in
    document order), ``world_size`` / ``rank``, and ``document_logits`` (index -> logits of
    this rank's documents, with ``return_logits=True``). ``seconds``: the slowest rank's
    simulation time."""

    documents: list[DocumentCounters] = field(default_factory=list)
    world_size: int = 1
    rank: int = 0
    document_logits: dict[int, torch.Tensor] = field(default_factory=dict)
    recording: str | None = None


def tokenize_documents(model, docs: DocumentSet, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Token ids ``[1, n]`` of each document (the first ``max_tokens`` of each)."""
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        from sbsnn.errors import OptionError

        raise OptionError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    tok = model._require_tokenizer()
    out = []
    for d in docs:
        ids = torch.tensor([tok.encode(d.text)], dtype=torch.long)
        if max_tokens is not None:
            ids = ids[:, :max_tokens]
        if ids.shape[1] == 0:
            raise ValueError(f"{docs.source}: document {d.index} ({d.name}) has no tokens")
        out.append(ids)
    return out


def reduce_counters(group: Group, names: list[str], counters: dict[str, LayerCounters],
                    shapes: dict[str, tuple[int, int]]) -> dict[str, LayerCounters]:
    """The counters of layers ``names`` summed over the group (``*_max`` fields: the
    largest), exactly: one int64 ``all_reduce`` per kind. ``shapes``: in/out features."""
    keys = counter_fields()
    rows = []
    for n in names:
        c = counters.get(n)
        rows.append([0 if c is None else int(getattr(c, k)) for k in keys])
    packed = torch.tensor(rows, dtype=torch.int64).reshape(len(names), len(keys))
    is_max = torch.tensor([k.endswith("_max") for k in keys])
    summed = group.sum_ints(packed)
    maxed = group.max_ints(packed)
    total = torch.where(is_max, maxed, summed)
    out = {}
    for n, row in zip(names, total.tolist()):
        i, o = shapes[n]
        c = LayerCounters(n, i, o)
        for k, v in zip(keys, row):
            setattr(c, k, int(v))
        out[n] = c
    return out


def _totals(counters: dict[str, LayerCounters]) -> dict:
    return SimResult(None, counters, 0, 0.0, "", "").totals()


def _concat(ids: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(ids, dim=1) if ids else torch.zeros(1, 0, dtype=torch.long)


class _RunRecording:
    """This rank's recorder (a file, a shard, or the caller's object) and, in a
    multi-rank run, the index rank 0 writes: incomplete at the start, complete last."""

    def __init__(self, record, model, docs, ids, ranks, group: Group, metadata, record_events,
                 every_rank: bool = False):
        self.record, self.group, self.recorder, self.path = record, group, None, None
        if record is None:
            return
        if hasattr(record, "write"):
            self.recorder = record
            return
        from sbsnn.sim.recorder import Recorder

        self.path = str(record)
        extra = {**(metadata or {}),
                 "documents": {"count": len(docs), "source": docs.source,
                               "tokens": int(sum(x.shape[1] for x in ids))}}
        self.index_metadata = _recording_metadata(model, _concat(ids), extra)
        if not group.distributed:
            self.recorder = Recorder(record, metadata=self.index_metadata, record_events=record_events)
            return
        from sbsnn.sim import shards

        self.planned = [{"index": d.index, "name": d.name, "tokens": int(x.shape[1]),
                         "chars": len(d.text), "rank": ranks[d.index]} for d, x in zip(docs, ids)]
        if group.is_main:
            shards.remove_stale_shards(record, group.world_size)
            self._index(complete=False)
        group.barrier()
        mine = [x for d, x in zip(docs, ids) if every_rank or ranks[d.index] == group.rank]
        path = shards.shard_path(record, group.rank, group.world_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = _recording_metadata(model, _concat(mine), {
            **extra, "shard": {"rank": group.rank, "world_size": group.world_size,
                               "index": str(record)}})
        self.recorder = Recorder(path, metadata=meta, record_events=record_events)

    def _index(self, complete: bool) -> None:
        from sbsnn.sim import shards

        shards.write_index(self.record, world_size=self.group.world_size,
                           metadata=self.index_metadata, documents=self.planned, complete=complete)

    def finish(self) -> None:
        """Close complete; in a multi-rank run, once every shard is closed, rank 0 marks
        the index complete."""
        if self.recorder is None:
            return
        self.recorder.close(complete=True)
        if self.group.distributed and self.path is not None:
            self.group.barrier()
            if self.group.is_main:
                self._index(complete=True)
            self.group.barrier()

    def fail(self) -> None:
        if self.recorder is not None:
            self.recorder.close(complete=False)


@torch.no_grad()
def simulate_documents(spiking_model, documents, backend: str = "auto", record=None,
                       block_size: int | None = 256, max_tokens: int | None = None,
                       return_logits: bool = False, progress: bool = False,
                       record_events: bool = False, metadata: dict | None = None,
                       trace=None, distributed: bool | str = "auto",
                       group: Group | None = None) -> DocumentSetResult:
    """Simulate every document of ``documents`` (a path or texts, see
    :func:`~sbsnn.dist.documents.load_documents`) from a fresh decoding state.

    ``block_size`` / ``record`` / ``record_events`` / ``backend`` / ``trace`` as
    :func:`sbsnn.sim.simulate`; ``max_tokens`` cuts each document. ``distributed``
    (see :func:`~sbsnn.dist.group.process_group`) or an open ``group`` decides whether the
    documents are split across ranks; ``record="spikes.h5"`` then writes a sharded
    recording (index at ``spikes.h5``), read as one by ``sbsnn.load_recording``. A trace
    needs one process (its first tokens would depend on the split).
    """
    if group is None:
        with process_group(distributed) as g:
            return simulate_documents(spiking_model, documents, backend, record, block_size,
                                      max_tokens, return_logits, progress, record_events,
                                      metadata, trace, group=g)
    docs = load_documents(documents)
    ids = tokenize_documents(spiking_model, docs, max_tokens)
    backend = resolve_backend(backend)
    spec = TraceSpec.parse(trace)
    if spec is not None and group.distributed:
        raise TraceError(f"trace: a time-resolved trace needs one process (its traced tokens "
                         f"would depend on how the documents are split over "
                         f"{group.world_size} ranks); run the traced simulation without torchrun")
    if spec is not None:
        from sbsnn.converters.spiking_linear import SpikingLinear

        spec.select(n for n, m in spiking_model.named_modules() if isinstance(m, SpikingLinear))
        metadata = {**(metadata or {}), "trace": {"layers": list(spec.layers), "tokens": spec.tokens}}
    ranks = assign_documents([int(x.shape[1]) for x in ids], group.world_size)
    device = next(spiking_model.parameters()).device
    mine = [d for d in docs if ranks[d.index] == group.rank]
    run_rec = _RunRecording(record, spiking_model, docs, ids, ranks, group, metadata,
                            record_events)
    recorder = run_rec.recorder
    from tqdm.auto import tqdm

    per_doc: list[DocumentCounters] = []
    logits: dict[int, torch.Tensor] = {}
    try:
        with Simulator(spiking_model, backend, recorder, trace=spec) as sim:
            names = [n for n, _ in sim.layers]
            shapes = {n: (m.in_features, m.out_features) for n, m in sim.layers}
            group.barrier()
            t0 = time.perf_counter()
            bar = tqdm(total=sum(int(ids[d.index].shape[1]) for d in mine),
                       desc=f"simulate{group.where()}", unit="tok",
                       disable=not (progress and group.is_main))
            for d in mine:
                x = ids[d.index].to(device)
                n = int(x.shape[1])
                if recorder is not None and hasattr(recorder, "begin_document"):
                    recorder.begin_document(d.index, d.name, n, len(d.text))
                counters = sim.begin_document()
                out = run_sequence(spiking_model, x, block_size, recorder, return_logits,
                                   on_block=bar.update)
                if recorder is not None:
                    recorder.flush()
                if out is not None:
                    logits[d.index] = out
                per_doc.append(DocumentCounters(d.index, d.name, n, len(d.text), group.rank,
                                                _totals(counters)))
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
        backend=backend, coding=_coding_of(spiking_model), traces=sim.traces,
        documents=all_docs, world_size=group.world_size, rank=group.rank,
        document_logits=logits, recording=run_rec.path)
