"""Sharded recordings (one HDF5 file per rank plus an index, read as one recording), and
the openers of any recording.

A ``torchrun`` run with ``record="spikes.h5"`` never has two processes write one HDF5
file. Each rank writes its own shard, an ordinary sbsnn recording (format 3, with its
documents and ``call_documents``), and rank 0 writes the index at the path asked for::

    spikes.h5                       the index (attrs format="sbsnn-recording-index",
                                    format_version, complete, world_size, created)
        metadata                    str: JSON of the whole run's metadata (all tokens)
        shards                      str [world_size]: shard paths relative to the index
        documents/index,name,tokens,chars,rank   the document set and each one's rank
    spikes.h5.shards/rank00000-of-00002.h5      rank 0's shard
    spikes.h5.shards/rank00001-of-00002.h5      rank 1's shard

The index is written (atomically: a temporary file, then a rename) with
``complete=False`` before any shard, and rewritten with ``complete=True`` only after
every rank closed its shard complete; a run in which any rank failed or was killed
therefore never leaves a recording that looks complete.

:class:`ShardedRecording` (what :func:`open_recording` and :func:`load_recording`, the
openers of any recording, return for an index) offers :class:`~sbsnn.sim.Recording`'s
accessors over all shards at once: each layer's rows, calls and events are laid end to
end in document order (the order of the document set, whatever rank ran them), with
``call_offsets`` and event rows renumbered, so that a report of the sharded recording
equals the report of the same documents recorded by one process.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from sbsnn.checks import check_input_file
from sbsnn.errors import RecordingError
from sbsnn.fsutil import atomic_file
from sbsnn.sim.recording_layout import INDEX_FORMAT, as_str, json_default
from sbsnn.sim.recording_reader import Recording, no_layer_error
from sbsnn.sim.trace import LayerTrace

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "ConcatRows", "ShardedRecording", "is_index",
           "load_recording", "open_recording", "shard_path", "write_index"]

INDEX_VERSION = 1
_DOC_KEYS = ("index", "name", "tokens", "chars", "rank")


def shard_dir(index_path) -> Path:
    p = Path(index_path)
    return p.with_name(p.name + ".shards")


def shard_path(index_path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its shard of the recording ``index_path``."""
    return shard_dir(index_path) / f"rank{rank:05d}-of-{world_size:05d}.h5"


def is_index(path) -> bool:
    """True when ``path`` is an HDF5 file holding a sharded recording's index."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with h5py.File(p, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        return False
    return as_str(fmt) == INDEX_FORMAT


def remove_stale_shards(index_path, world_size: int) -> None:
    """Remove shard files of an earlier run with another world size (rank 0, before any
    rank writes)."""
    d = shard_dir(index_path)
    if not d.is_dir():
        return
    keep = {shard_path(index_path, r, world_size).name for r in range(world_size)}
    for p in d.glob("rank*-of-*.h5"):
        if p.name not in keep:
            p.unlink()


def write_index(path, *, world_size: int, metadata: dict, documents: Sequence[dict],
                complete: bool, run_id: str | None = None) -> Path:
    """Write the index of a sharded recording at ``path`` atomically; ``documents`` are
    dicts with ``index``, ``name``, ``tokens``, ``chars``, ``rank``. ``run_id``: the
    identity of the run, written in every shard too, so that a shard from another run is
    refused when the recording is read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["format"] = INDEX_FORMAT
            a["format_version"] = INDEX_VERSION
            a["complete"] = bool(complete)
            a["world_size"] = int(world_size)
            a["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if run_id is not None:
                a["run_id"] = str(run_id)
            f.create_dataset("metadata", data=json.dumps(metadata, default=json_default),
                             dtype=h5py.string_dtype())
            names = [str(shard_path(path, r, world_size).relative_to(path.parent))
                     for r in range(world_size)]
            f.create_dataset("shards", data=names, dtype=h5py.string_dtype())
            g = f.create_group("documents")
            for key in _DOC_KEYS:
                col = [d[key] for d in documents]
                if key == "name":
                    g.create_dataset(key, data=[str(v) for v in col], dtype=h5py.string_dtype())
                else:
                    g.create_dataset(key, data=np.asarray(col, dtype=np.int64).reshape(-1))
    return path


# ============================================================================ reading
class ConcatRows:
    """Row ranges of several datasets laid end to end, read lazily: ``shape``, ``dtype``,
    ``len`` and numpy-style indexing, as :class:`~sbsnn.sim.RowView`. ``parts`` are
    ``(dataset, start, stop, add)``; ``add`` is added to every value read (row renumbering)."""

    def __init__(self, parts: Sequence[tuple], template):
        self._parts = [p for p in parts if p[2] > p[1]]
        self._template = template
        self._bounds = np.cumsum([0] + [p[2] - p[1] for p in self._parts])
        types = [p[0].dtype for p in self._parts] or [template.dtype]
        self._dtype = np.result_type(*types)

    @property
    def shape(self) -> tuple:
        return (int(self._bounds[-1]), *self._template.shape[1:])

    @property
    def dtype(self):
        return self._dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, a: int, b: int) -> np.ndarray:
        pieces = []
        for k, (ds, s, e, add) in enumerate(self._parts):
            lo, hi = self._bounds[k], self._bounds[k + 1]
            if hi <= a or lo >= b:
                continue
            x = np.asarray(ds[s + max(a, lo) - lo: s + min(b, hi) - lo]).astype(self._dtype, copy=False)
            pieces.append(x + add if add else x)
        if not pieces:
            return np.zeros((0, *self.shape[1:]), self._dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n = len(self)
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            if step == 1:
                return self._rows(start, max(start, stop))[(slice(None), *rest)]
            return self._rows(0, n)[(first, *rest)]
        if isinstance(first, (int, np.integer)):
            i = int(first)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for {n} rows")
            return self._rows(i % n, i % n + 1)[(0, *rest)]
        return self._rows(0, n)[key]

    def __array__(self, dtype=None, copy=None):
        a = self._rows(0, len(self))
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"<ConcatRows: {len(self._parts)} parts, shape {self.shape}, {self.dtype}>"


@dataclass
class _Segment:
    """The calls of one document of one layer in one shard."""

    doc: int
    shard: int
    c0: int      # calls [c0, c1) of the shard's layer
    c1: int
    r0: int      # rows [r0, r1)
    r1: int
    e0: int      # events [e0, e1) (0, 0 without events)
    e1: int


class ShardedRecording:
    """A sharded recording opened for reading, by its index: the accessors of
    :class:`~sbsnn.sim.Recording` over every shard, in document order (module docstring).
    ``shards`` holds the shards' own :class:`~sbsnn.sim.Recording` objects."""

    def __init__(self, path, warn: bool = True):
        self.path = Path(path)
        self.notes: list[str] = []
        self.damaged: dict[str, str] = {}
        check_input_file(self.path, "a recording index", error=RecordingError)
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise RecordingError(f"{self.path}: cannot be opened as HDF5: {e}") from e
        with f:
            a = f.attrs
            if as_str(a.get("format")) != INDEX_FORMAT:
                raise RecordingError(f"{self.path}: not the index of a sharded sbsnn recording")
            version = int(a.get("format_version", 0))
            if version > INDEX_VERSION:
                raise RecordingError(f"{self.path}: sharded-recording index version {version} is "
                                     f"newer than this sbsnn reads ({INDEX_VERSION}); upgrade sbsnn")
            self.format_version = version
            self.world_size = int(a["world_size"])
            self.run_id = as_str(a["run_id"]) if "run_id" in a else None
            index_complete = bool(a.get("complete", False))
            self.metadata = json.loads(as_str(f["metadata"][()]))
            shard_names = [as_str(s) for s in f["shards"][()]]
            g = f["documents"]
            cols = {k: g[k][()] for k in _DOC_KEYS}
        self.planned_documents = [
            {k: (as_str(cols[k][i]) if k == "name" else int(cols[k][i])) for k in _DOC_KEYS}
            for i in range(len(cols["index"]))]
        rank_of = {d["index"]: d["rank"] for d in self.planned_documents}
        self.shards: list[Recording | None] = []
        missing = []
        try:
            if len(shard_names) != self.world_size:
                raise RecordingError(f"{self.path}: the index lists {len(shard_names)} shards "
                                     f"for {self.world_size} ranks; the index is damaged")
            for r, name in enumerate(shard_names):
                p = self._shard_file(name)
                if not p.exists():
                    missing.append(str(p))
                    self.shards.append(None)
                    continue
                try:
                    self.shards.append(Recording(p, warn=False))
                except (RecordingError, OSError) as e:
                    if index_complete:
                        raise
                    missing.append(f"{p} ({e})")      # a failed run's shard: not readable
                    self.shards.append(None)
                    continue
                self._check_shard(self.shards[-1], r)
            if missing and index_complete:
                raise RecordingError(f"{self.path}: shard {missing[0]} is missing ({len(missing)} of "
                                     f"{len(shard_names)}); a sharded recording is read with its "
                                     f"{shard_dir(self.path).name}/ directory beside the index")
            open_shards = [s for s in self.shards if s is not None]
            self.complete = index_complete and all(s.complete for s in open_shards)
            self._segments: dict[str, list[_Segment]] = {}
            self.layers = self._layer_order()
            for name in self.layers:
                self._segments[name] = self._layer_segments(name)
            docs: dict[int, dict] = {}      # (pipeline runs list every document in every shard)
            for r, s in enumerate(self.shards):
                if s is not None:
                    for d in s.documents:
                        docs.setdefault(d["index"], {**d, "rank": rank_of.get(d["index"], r)})
            self.documents = [docs[i] for i in sorted(docs)]
        except BaseException:
            self.close()
            raise
        for r, s in enumerate(self.shards):
            if s is not None:
                self.damaged.update({f"{k} (shard {r})": v for k, v in s.damaged.items()})
        if not self.complete:
            msg = (f"{self.path}: the sharded recording is incomplete (a rank failed, was "
                   f"stopped, or the run is still going); it holds what each rank flushed")
            if missing:
                msg += (f"; {len(missing)} of {len(shard_names)} shards were never written or "
                        f"do not read: {missing[0]}")
            if self.damaged:
                msg += f"; {len(self.damaged)} layer shard(s) lost their last rows"
            self.notes.append(msg)
            if warn:
                warnings.warn(msg, stacklevel=3)

    def _shard_file(self, name: str) -> Path:
        """The shard the index names, which must lie in the index's own directory: an
        absolute or ``..`` entry, or a link leading out, would read files anywhere."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise RecordingError(f"{self.path}: the index names the shard {name!r}, outside its "
                                 "directory; a shard lies beside its index (the index is "
                                 "altered or damaged)")
        p = self.path.parent / rel
        home = self.path.parent.resolve()
        if p.exists() and home not in p.resolve().parents:
            raise RecordingError(f"{self.path}: shard {p} leads to {p.resolve()}, outside the "
                                 f"index's directory {home}; copy the shard itself there")
        return p

    def _check_shard(self, shard: Recording, rank: int) -> None:
        """A shard belongs to this index: written by rank ``rank`` of the same world size
        and, for a run that recorded one, with the index's run identity (a shard copied in
        from another run with the same documents would give other numbers silently)."""
        own = shard.metadata.get("shard")
        if not isinstance(own, dict) and self.run_id is None:
            return          # an index written before run identities: nothing to hold it to
        if not isinstance(own, dict):
            raise RecordingError(f"{shard.path}: not a shard of a sharded recording (its "
                                 f"metadata names no rank), but {self.path} lists it as rank {rank}")
        if own.get("rank") != rank or own.get("world_size") != self.world_size:
            raise RecordingError(f"{shard.path}: written by rank {own.get('rank')} of "
                                 f"{own.get('world_size')}, but {self.path} lists it as rank "
                                 f"{rank} of {self.world_size}; the shard is not this run's")
        if self.run_id is not None and own.get("run_id") != self.run_id:
            raise RecordingError(f"{shard.path}: from another run (run {own.get('run_id')!r}, "
                                 f"the index's is {self.run_id!r}); a shard copied from another "
                                 "run would give its numbers: simulate again, or put back this "
                                 "run's shard")

    # ------------------------------------------------------------------ building
    def _layer_order(self) -> list[str]:
        seen: dict[str, None] = {}
        present = set()
        for s in self.shards:
            if s is not None:
                present.update(s.layers)
        for n in (self.metadata.get("layers") or {}):
            if n in present:
                seen[n] = None
        for s in self.shards:
            if s is not None:
                for n in s.layers:
                    seen.setdefault(n, None)
        return list(seen)

    def _layer_segments(self, name: str) -> list[_Segment]:
        segs = []
        for r, s in enumerate(self.shards):
            if s is None or name not in s.layers:
                continue
            cd = s.call_documents(name)
            if cd is None:
                raise RecordingError(f"{s.path}: layer {name!r} has no call_documents; a shard "
                                     f"of a sharded recording comes from a document-set run")
            co, cd = np.asarray(s.call_offsets(name)[:]), np.asarray(cd[:])
            rows = s.rows(name)
            calls = int(min(len(co), len(cd), np.searchsorted(co, rows, side="left")))
            ce = s.call_events(name)
            ev = s.events(name)
            n_ev = int(ev["token"].shape[0]) if ev is not None else 0
            ce = np.asarray(ce[:]) if ce is not None else None
            cuts = [0, *(np.flatnonzero(np.diff(cd[:calls])) + 1).tolist(), calls]
            for c0, c1 in zip(cuts[:-1], cuts[1:]):
                if c1 <= c0:
                    continue
                r1 = int(co[c1]) if c1 < calls else rows
                e0 = e1 = 0
                if ce is not None and c0 < len(ce):
                    e0 = min(int(ce[c0]), n_ev)
                    e1 = min(int(ce[c1]), n_ev) if c1 < len(ce) and c1 < calls else n_ev
                segs.append(_Segment(int(cd[c0]), r, c0, c1, int(co[c0]), r1, e0, e1))
        segs.sort(key=lambda g: (g.doc, g.shard))
        return segs

    def _shard(self, g: _Segment) -> Recording:
        return self.shards[g.shard]

    def _group_check(self, name: str) -> list[_Segment]:
        if name not in self._segments:
            raise no_layer_error(self.path, name, self.layers)
        return self._segments[name]

    def _concat(self, name: str, get, add_rows: bool = False) -> ConcatRows:
        segs = self._group_check(name)
        parts, g0 = [], 0
        template = get(next(s for s in self.shards if s is not None and name in s.layers), name)
        for g in segs:
            parts.append((get(self._shard(g), name), g.r0, g.r1, (g0 - g.r0) if add_rows else 0))
            g0 += g.r1 - g.r0
        return ConcatRows(parts, template)

    def _series(self, name: str, get, rebase: str | None = None) -> np.ndarray:
        """A per-call series laid end to end; ``rebase`` 'rows' or 'events' renumbers."""
        out, g_rows, g_ev = [], 0, 0
        for g in self._group_check(name):
            x = np.asarray(get(self._shard(g), name)[g.c0:g.c1])
            if rebase == "rows":
                x = x - g.r0 + g_rows
            elif rebase == "events":
                x = x - g.e0 + g_ev
            out.append(x)
            g_rows += g.r1 - g.r0
            g_ev += g.e1 - g.e0
        if not out:
            return np.zeros(0, np.int64)
        return np.concatenate(out)

    # ------------------------------------------------------------------ accessors
    def counts(self, name: str) -> ConcatRows:
        return self._concat(name, Recording.counts)

    def thresholds(self, name: str) -> ConcatRows:
        return self._concat(name, Recording.thresholds)

    def call_offsets(self, name: str) -> np.ndarray:
        return self._series(name, Recording.call_offsets, "rows")

    def call_steps(self, name: str) -> np.ndarray:
        return self._series(name, Recording.call_steps)

    def call_documents(self, name: str) -> np.ndarray:
        return self._series(name, Recording.call_documents)

    def call_events(self, name: str) -> np.ndarray | None:
        segs = self._group_check(name)
        if not segs or self._shard(segs[0]).call_events(name) is None:
            return None
        return self._series(name, Recording.call_events, "events")

    def events(self, name: str) -> dict | None:
        segs = self._group_check(name)
        if not segs or self._shard(segs[0]).events(name) is None:
            return None
        out = {}
        for key in self._shard(segs[0]).events(name):
            parts, g_rows = [], 0
            for g in segs:
                ds = self._shard(g).events(name)[key]
                parts.append((ds, g.e0, g.e1, (g_rows - g.r0) if key == "token" else 0))
                g_rows += g.r1 - g.r0
            out[key] = ConcatRows(parts, self._shard(segs[0]).events(name)[key])
        return out

    @property
    def traced_layers(self) -> list[str]:
        return [n for n in self.layers
                if any(n in s.traced_layers for s in self.shards if s is not None)]

    def trace(self, name: str):
        """The layer's trace over every shard, calls in document order (rows renumbered)."""
        segs = self._group_check(name)
        if name not in self.traced_layers:
            return None
        traces = {}
        out, g_rows = None, 0
        for g in segs:
            if g.shard not in traces:
                traces[g.shard] = self._shard(g).trace(name)
            t = traces[g.shard]
            if out is None:
                out = LayerTrace(t.name, t.in_features, t.out_features, t.coding)
            for call in t.calls[g.c0:g.c1]:
                out.calls.append(replace(call, row0=call.row0 - g.r0 + g_rows))
            g_rows += g.r1 - g.r0
        return out

    def rows(self, name: str) -> int:
        return sum(g.r1 - g.r0 for g in self._group_check(name))

    def in_features(self, name: str) -> int:
        for s in self.shards:
            if s is not None and name in s.layers:
                return s.in_features(name)
        raise KeyError(f"{self.path}: no layer {name!r} in the recording")

    # One implementation: it reads through self.counts, which here spans every shard.
    iter_counts = Recording.iter_counts

    def close(self) -> None:
        for s in getattr(self, "shards", []):
            if s is not None:
                s.close()

    def __enter__(self) -> "ShardedRecording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"ShardedRecording({str(self.path)!r}, {self.world_size} shards, "
                f"{len(self.layers)} layers, {state})")


# ============================================================================ opening
def open_recording(path, warn: bool = True):
    """A :class:`~sbsnn.sim.Recording`, or for the index of a sharded recording (one shard
    per rank of a ``torchrun`` run) a :class:`ShardedRecording` that reads its shards as one
    recording, with the same accessors."""
    if is_index(path):
        return ShardedRecording(path, warn=warn)
    return Recording(path, warn=warn)


def load_recording(path):
    """Open a recording written by ``simulate(..., record=path)`` (or a sharded one, by its
    index) for lazy reading.

    Raises :class:`~sbsnn.errors.RecordingError` (a ValueError) when ``path`` is not a
    recording; warns when the recording is incomplete (interrupted run: what was flushed is
    kept).
    """
    return ShardedRecording(path) if is_index(path) else Recording(path)
