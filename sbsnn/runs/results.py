"""What a document-set run returns, and the exact reductions that build it over ranks.

:class:`DocumentCounters` (one document's totals), :class:`DocumentSetResult` (a
:class:`~sbsnn.sim.SimResult` over a set), :func:`tokenize_documents`, and
:func:`reduce_counters` (layer counters summed over a process group with int64
``all_reduce``, bit for bit what one process counts). Both ways of splitting a run, by
documents (:mod:`sbsnn.runs.simulate`) and by blocks (:mod:`sbsnn.runs.pipeline`),
build on this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sbsnn.checks import check_max_tokens
from sbsnn.runs.documents import DocumentSet
from sbsnn.runs.group import Group
from sbsnn.sim.engine import LayerCounters, SimResult, after_prefix, counter_fields

__all__ = ["DocumentCounters", "DocumentSetResult", "document_ids", "reduce_counters",
           "tokenize_documents", "totals_of"]


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


def document_ids(model, docs: DocumentSet, index: int, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids ``[1, n]`` of document ``index`` of ``docs`` (its first ``max_tokens``), as
    the model reads them after its constant prefix, if it has one
    (:func:`sbsnn.sim.engine.after_prefix`)."""
    d = docs[index]
    ids = torch.tensor([model._require_tokenizer().encode(d.text)], dtype=torch.long)
    ids = after_prefix(model, ids)
    if max_tokens is not None:
        ids = ids[:, :max_tokens]
    if ids.shape[1] == 0:
        raise ValueError(f"{docs.source}: document {d.index} ({d.name}) has no tokens")
    return ids


def tokenize_documents(model, docs: DocumentSet, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Token ids ``[1, n]`` of each document (the first ``max_tokens`` of each)."""
    check_max_tokens(max_tokens)
    return [document_ids(model, docs, d.index, max_tokens) for d in docs]


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


def totals_of(counters: dict[str, LayerCounters]) -> dict:
    """:meth:`sbsnn.sim.SimResult.totals` of some layers' counters."""
    return SimResult(None, counters, 0, 0.0, "", "").totals()
