"""What a simulation run opens before its first token and closes after its last.

:func:`sbsnn.sim.simulate` (one text) and the document-set runs of :mod:`sbsnn.runs`
(documents split over ranks, pipeline stages) share this setup, so that a recording made
either way carries the same metadata and is finished the same way:

- :func:`select_trace`: the layers to resolve in time, refused before any file is opened
  when a glob matches nothing, and named in the recording's metadata;
- :class:`RunRecording`: this process's recorder (an HDF5 file, one shard of a sharded
  recording, or the caller's object with ``write``/``flush``/``close``), opened
  incomplete and closed complete only when the whole run succeeded; in a multi-rank run,
  rank 0 writes the index of the shards, complete last.

A ``group`` here is anything with ``distributed``, ``is_main``, ``rank``,
``world_size``, ``barrier()`` and ``broadcast(obj, src=0)`` (:class:`sbsnn.runs.Group`);
``None`` is one process.
"""

from __future__ import annotations

import hashlib
import os

import torch

from sbsnn import __version__
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.errors import OptionError
from sbsnn.sim import shards
from sbsnn.sim.connections import connection_facts, is_spiking, model_facts
from sbsnn.sim.recorder import Recorder
from sbsnn.sim.trace import TraceSpec

__all__ = ["RunRecording", "check_record", "coding_of", "is_spiking", "prefix_record",
           "recording_metadata",
           "select_trace"]


def coding_of(model) -> str:
    """The model's coding: its spiking config's, else its layers' ("mixed" if they differ)."""
    cfg = getattr(model, "spiking_config", None)
    if cfg is not None:
        return cfg.coding
    codings = {m.coding for m in model.modules() if isinstance(m, SpikingLinear)}
    return codings.pop() if len(codings) == 1 else "mixed"


def recording_metadata(model, ids: torch.Tensor, extra: dict | None, facts: dict | None = None) -> dict:
    """A recording's metadata: the layers' shapes (and the nonzero weight codes of each
    input column), the tokens and their digest, the sequences side by side, the model's
    config, spiking settings and connection figures (:func:`~sbsnn.sim.connections.connection_facts`),
    and ``extra``. ``facts``: the model's :func:`~sbsnn.sim.connections.model_facts`
    (pipeline stages: joined over the ranks), else taken from ``model``."""
    cfg = getattr(model, "spiking_config", None)
    facts = model_facts(model) if facts is None else facts
    layers = {}
    for n, m in model.named_modules():
        if isinstance(m, SpikingLinear):
            layers[n] = {"in_features": m.in_features, "out_features": m.out_features,
                         "group_size": m.group_size, "bias": m.bias is not None}
            if n in facts["columns"]:
                layers[n]["column_nonzero"] = facts["columns"][n]
    meta = {
        "sbsnn_version": __version__,
        "layers": layers,
        "connections": connection_facts(facts),
        "tokens": int(ids.shape[1]),
        "sequences": int(ids.shape[0]),
        "token_digest": hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest(),
        "model_config": getattr(getattr(model, "config", None), "to_dict", dict)(),
    }
    if cfg is not None:
        meta.update(preset=cfg.preset, coding=cfg.coding, k=cfg.k, group_size=cfg.group_size)
    pre = getattr(model, "prefix", None)
    if pre is not None:
        meta["prefix"] = prefix_record(pre)
    meta.update(extra or {})
    return meta


def prefix_record(prefix) -> dict:
    """What a recording (and the report read from it) says of a constant prefix: its
    tokens were computed once, in float, at conversion, and are not simulated."""
    return {**prefix.metadata(), "simulated": False,
            "note": f"each document starts from the state after a constant prefix of "
                    f"{prefix.tokens} token(s), computed once in float at conversion: those "
                    "tokens are not simulated, recorded or counted"}


def select_trace(model, trace, metadata: dict | None) -> tuple[TraceSpec | None, dict | None]:
    """``(spec, metadata)``: the parsed trace (None: no trace) after checking that it
    matches spiking layers of ``model`` (a glob that matches nothing is refused before any
    file is opened), and the metadata with the traced layers added."""
    spec = TraceSpec.parse(trace)
    if spec is None:
        return None, metadata
    spec.select(n for n, m in model.named_modules() if isinstance(m, SpikingLinear))
    return spec, {**(metadata or {}), "trace": {"layers": list(spec.layers), "tokens": spec.tokens}}


def check_record(record, record_events) -> None:
    """``record`` is None, a path or an object with write/flush/close; ``record_events``
    a bool that needs ``record``."""
    if not isinstance(record_events, bool):
        raise OptionError(f"record_events must be True or False, got {record_events!r}")
    if record_events and record is None:
        raise OptionError("record_events=True needs record= (the events are stored there)")
    if record is not None and not hasattr(record, "write") and not isinstance(record, (str, os.PathLike)):
        raise OptionError(f"record must be a file path or an object with write/flush/close, got "
                          f"{type(record).__name__}")


def _concat(ids: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(ids, dim=1) if ids else torch.zeros(1, 0, dtype=torch.long)


class RunRecording:
    """This process's recorder for one run (``recorder``: None without ``record``) and, in a
    multi-rank run, the index rank 0 writes: incomplete at the start, complete last.

    ``ids``: the token ids ``[1, n]`` of each document (one entry for a single text);
    ``documents`` (a :class:`~sbsnn.runs.DocumentSet`, with ``ranks``, the rank of each
    document) makes it a document-set recording; ``every_rank``: each rank's shard covers
    every document (pipeline stages) instead of its own; ``facts``: the model's weight
    figures when this process holds only part of it (pipeline stages).
    """

    def __init__(self, record, model, ids: list[torch.Tensor], metadata: dict | None,
                 record_events: bool, *, documents=None, ranks=None, group=None,
                 every_rank: bool = False, facts: dict | None = None):
        self.record, self.group, self.recorder, self.path = record, group, None, None
        self.distributed = group is not None and group.distributed
        if record is None:
            return
        if hasattr(record, "write"):
            self.recorder = record   # any object with write(name, counts, v_th), flush(), close()
            return
        self.path = str(record)
        extra = dict(metadata or {})
        if documents is not None:
            extra["documents"] = {"count": len(documents), "source": documents.source,
                                  "tokens": int(sum(x.shape[1] for x in ids))}
        self.index_metadata = recording_metadata(model, _concat(ids), extra, facts)
        if not self.distributed:
            self.recorder = Recorder(record, metadata=self.index_metadata,
                                     record_events=record_events)
            return
        self.planned = [{"index": d.index, "name": d.name, "tokens": int(x.shape[1]),
                         "chars": len(d.text), "rank": ranks[d.index]}
                        for d, x in zip(documents, ids)]
        # One identity per run, drawn by rank 0 and shared: written in the index and in
        # every shard, so that a shard of another run is refused when the index is read.
        self.run_id = group.broadcast(shards.new_run_id() if group.is_main else None, src=0)
        if group.is_main:
            shards.remove_stale_shards(record, group.world_size)
            self._index(complete=False)
        group.barrier()
        mine = [x for d, x in zip(documents, ids) if every_rank or ranks[d.index] == group.rank]
        path = shards.shard_path(record, group.rank, group.world_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = recording_metadata(model, _concat(mine), {
            **extra, "shard": {"rank": group.rank, "world_size": group.world_size,
                               "index": str(record), "run_id": self.run_id}}, facts)
        self.recorder = Recorder(path, metadata=meta, record_events=record_events)

    def _index(self, complete: bool) -> None:
        shards.write_index(self.record, world_size=self.group.world_size,
                           metadata=self.index_metadata, documents=self.planned, complete=complete,
                           run_id=self.run_id)

    def finish(self) -> None:
        """Close complete; in a multi-rank run, once every shard is closed, rank 0 marks
        the index complete."""
        if self.recorder is None:
            return
        self.recorder.close(complete=True)
        if self.distributed and self.path is not None:
            self.group.barrier()
            if self.group.is_main:
                self._index(complete=True)
            self.group.barrier()

    def fail(self) -> None:
        """Close incomplete (a failed or interrupted run never reads as finished)."""
        if self.recorder is not None:
            self.recorder.close(complete=False)
