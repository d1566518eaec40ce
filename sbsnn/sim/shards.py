"""Sharded recordings (one HDF5 file per rank plus an index, read as one recording), and
the openers of any recording.

A ``torchrun`` run with ``record="spikes.h5"`` never has two processes write one HDF5
file. Each rank writes its own shard, an ordinary sbsnn recording (format 3, with its
documents and ``call_documents``), and rank 0 writes the index at the path asked for::

    spikes.h5                       the index (attrs format="sbsnn-recording-index",
                                    format_version, complete, world_size, created, run_id)
        metadata                    str: JSON of the whole run's metadata (all tokens)
        shards                      str [world_size]: shard paths relative to the index
        documents/index,name,tokens,chars,rank   the document set and each one's rank
    spikes.h5.shards/rank00000-of-00002.h5      rank 0's shard
    spikes.h5.shards/rank00001-of-00002.h5      rank 1's shard

The index is written (atomically: a temporary file, then a rename) with
``complete=False`` before any shard, and rewritten with ``complete=True`` only after
every rank closed its shard complete; a run in which any rank failed or was killed
therefore never leaves a recording that looks complete.

Every shard belongs to one index. ``run_id`` (a random hex string rank 0 draws once per
run and broadcasts to every rank) is written in the index's attributes and in every
shard's metadata (``metadata["shard"]``: ``rank``, ``world_size``, ``index``,
``run_id``); opening the index refuses, naming the shard, a shard whose run id, rank or
world size differs (a shard copied in from another run), and a shard whose documents the
index did not plan for its rank or with other lengths. Shard paths are confined to the
index's directory: an entry that is absolute, climbs out with ``..`` or resolves (through
a symlink) outside that directory is refused by name, as is a shard that is not a
regular file or is listed twice. Index format version 1 (before run ids) still reads:
its shards are tied to it only by the checks on ranks and documents (a shard of another
run of the same documents cannot be told apart there); an index of version 2 without a
run id, or a version-1 index over shards that carry one, is refused.

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
import uuid
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from sbsnn.errors import RecordingError
from sbsnn.fsutil import atomic_file
from sbsnn.sim.recording_layout import INDEX_FORMAT, as_str, check_stored, json_default
from sbsnn.sim.recording_reader import Recording, check_metadata, no_layer_error
from sbsnn.sim.trace import LayerTrace

__all__ = ["INDEX_FORMAT", "INDEX_VERSION", "ConcatRows", "ShardedRecording", "is_index",
           "load_recording", "new_run_id", "open_recording", "shard_path", "write_index"]

INDEX_VERSION = 2           # 2: run_id ties the shards to their index (1 still reads)
MAX_WORLD_SIZE = 1 << 20    # ranks an index may list
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


def new_run_id() -> str:
    """A run identity: 32 random hex digits, drawn once per run by rank 0."""
    return uuid.uuid4().hex


def write_index(path, *, world_size: int, metadata: dict, documents: Sequence[dict],
                complete: bool, run_id: str | None = None) -> Path:
    """Write the index of a sharded recording at ``path`` atomically; ``documents`` are
    dicts with ``index``, ``name``, ``tokens``, ``chars``, ``rank``. ``run_id`` (every
    shard's ``metadata["shard"]["run_id"]``) makes it a version-2 index; without it, the
    index is written as version 1 (no tie to its shards but ranks and documents)."""
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"run_id must be a non-empty str, got {run_id!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["format"] = INDEX_FORMAT
            a["format_version"] = INDEX_VERSION if run_id is not None else 1
            if run_id is not None:
                a["run_id"] = run_id
            a["complete"] = bool(complete)
            a["world_size"] = int(world_size)
            a["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise RecordingError(f"{self.path}: cannot be opened as HDF5: {e}") from e
        with f:
            try:
                index_complete, shard_names, cols = self._read_index(f)
            except RecordingError:
                raise
            except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
                raise RecordingError(f"{self.path}: damaged index of a sharded recording "
                                     f"({type(e).__name__}: {e}); simulate again") from None
        self.planned_documents = [
            {k: (as_str(cols[k][i]) if k == "name" else int(cols[k][i])) for k in _DOC_KEYS}
            for i in range(len(cols["index"]))]
        rank_of = {d["index"]: d["rank"] for d in self.planned_documents}
        if len(rank_of) != len(self.planned_documents):
            raise RecordingError(f"{self.path}: the index plans a document twice; the index "
                                 f"is damaged or was edited: simulate again")
        self._planned = {d["index"]: d for d in self.planned_documents}
        paths = [self._shard_file(name) for name in shard_names]
        self.shards: list[Recording | None] = []
        missing = []
        try:
            for r, p in enumerate(paths):
                if not p.exists():
                    missing.append(str(p))
                    self.shards.append(None)
                    continue
                try:        # (refuses a directory, pipe or device without opening it)
                    shard = Recording(p, warn=False)
                except (RecordingError, OSError) as e:
                    if index_complete:
                        raise
                    missing.append(f"{p} ({e})")      # a failed run's shard: not readable
                    self.shards.append(None)
                    continue
                self.shards.append(shard)
                self._check_shard(shard, r)
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

    # ------------------------------------------------------------------ checking
    def _read_index(self, f: h5py.File):
        """``(complete, shard names, document columns)`` of the open index, every size
        checked before it is read."""
        a = f.attrs
        if as_str(a.get("format")) != INDEX_FORMAT:
            raise RecordingError(f"{self.path}: not the index of a sharded sbsnn recording")
        version = int(a.get("format_version", 0))
        if version > INDEX_VERSION:
            raise RecordingError(f"{self.path}: sharded-recording index version {version} is "
                                 f"newer than this sbsnn reads ({INDEX_VERSION}); upgrade sbsnn")
        self.format_version = version
        run_id = a.get("run_id")
        self.run_id = as_str(run_id) if run_id is not None else None
        if version >= 2 and not self.run_id:
            raise RecordingError(f"{self.path}: index version {version} without a run_id (it "
                                 f"ties the shards to their index); the index is damaged or was "
                                 f"edited: simulate again")
        self.world_size = int(a["world_size"])
        if not 1 <= self.world_size <= MAX_WORLD_SIZE:
            raise RecordingError(f"{self.path}: world_size {self.world_size} is outside "
                                 f"1..{MAX_WORLD_SIZE}; the index is damaged or was edited")
        names = ["metadata", "shards", *(f"documents/{k}" for k in _DOC_KEYS)]
        for key in names:
            ds = f.get(key)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != (0 if key == "metadata" else 1):
                raise RecordingError(f"{self.path}: the index has no {'scalar' if key == 'metadata' else 'one-dimensional'} "
                                     f"dataset {key!r}; it is damaged or was edited")
            check_stored(ds, self.path, f"dataset /{key}")
        if f["shards"].shape[0] != self.world_size:
            raise RecordingError(f"{self.path}: the index lists {f['shards'].shape[0]} shards for "
                                 f"world_size {self.world_size}; it is damaged or was edited")
        lengths = {f[f"documents/{k}"].shape[0] for k in _DOC_KEYS}
        if len(lengths) != 1:
            raise RecordingError(f"{self.path}: the index's document columns differ in length; "
                                 f"it is damaged or was edited")
        try:
            self.metadata = check_metadata(json.loads(as_str(f["metadata"][()])), self.path)
        except (ValueError, RecursionError) as e:
            if isinstance(e, RecordingError):
                raise
            raise RecordingError(f"{self.path}: unreadable metadata: {type(e).__name__}: "
                                 f"{str(e)[:200]}") from None
        shard_names = [as_str(x) for x in f["shards"][()]]
        cols = {k: f[f"documents/{k}"][()] for k in _DOC_KEYS}
        return bool(a.get("complete", False)), shard_names, cols

    def _shard_file(self, name: str) -> Path:
        """The shard ``name`` (an index entry) names, confined to the index's directory:
        relative, without ``..``, resolving (symlinks followed) inside that directory, and
        listed once."""
        home = self.path.parent
        rel = Path(name)
        why = None
        if not name:
            why = "is empty"
        elif rel.is_absolute():
            why = "is an absolute path"
        elif ".." in rel.parts:
            why = "climbs out of the index's directory with '..'"
        else:
            target = (home / rel).resolve()
            if not target.is_relative_to(home.resolve()):
                why = f"resolves to {target}, outside the index's directory (a symlink)"
        if why:
            raise RecordingError(f"{self.path}: shard entry {name!r} {why}; shards are read only "
                                 f"from {shard_dir(self.path).name}/ beside the index")
        p = home / rel
        seen = getattr(self, "_seen_shards", set())
        key = p.resolve()
        if key in seen:
            raise RecordingError(f"{self.path}: shard entry {name!r} is listed twice; the index "
                                 f"is damaged or was edited")
        seen.add(key)
        self._seen_shards = seen
        return p

    def _check_shard(self, shard: Recording, rank: int) -> None:
        """Refuse a shard that is not this index's rank ``rank``: another run's (run id), a
        rank or world size other than its place, documents not planned for it."""
        info = shard.metadata.get("shard")
        info = info if isinstance(info, dict) else {}
        sid = info.get("run_id")
        fix = "put back this run's shard, or simulate again"
        if self.run_id is not None and sid != self.run_id:
            raise RecordingError(f"{shard.path}: shard of another run (run id {sid or 'none'}, the "
                                 f"index {self.path.name} has {self.run_id}); {fix}")
        if self.run_id is None and sid is not None:
            raise RecordingError(f"{shard.path}: shard of run {sid}, but the index {self.path.name} "
                                 f"(version {self.format_version}) names no run; {fix}")
        for key, want in (("rank", rank), ("world_size", self.world_size)):
            if key in info and info[key] != want:
                raise RecordingError(f"{shard.path}: shard with {key} {info[key]!r} in place of "
                                     f"rank {rank} of {self.world_size} in the index "
                                     f"{self.path.name}; {fix}")
        for d in shard.documents:
            plan = self._planned.get(d["index"])
            if plan is None or plan["rank"] not in (rank, -1) or any(
                    plan[k] != d[k] for k in ("name", "tokens", "chars")):
                said = ("not planned" if plan is None else
                        f"planned for rank {plan['rank']} with {plan['tokens']} tokens")
                raise RecordingError(f"{shard.path}: document {d['index']} ({d['tokens']} tokens) "
                                     f"of this shard (rank {rank}) is {said} in the index "
                                     f"{self.path.name}; {fix}")

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
        for a, b in zip(segs, segs[1:]):
            if a.doc == b.doc:      # one document's calls of a layer come from one rank
                raise RecordingError(f"{self.shards[b.shard].path}: layer {name!r} holds calls of "
                                     f"document {b.doc}, which {self.shards[a.shard].path.name} "
                                     f"also holds; the shards are not one run's: simulate again")
        for g in segs:
            if g.doc not in self._planned:
                raise RecordingError(f"{self.shards[g.shard].path}: layer {name!r} holds calls of "
                                     f"document {g.doc}, which the index {self.path.name} does not "
                                     f"plan; the shard is not this run's: simulate again")
        want = ((self.metadata.get("layers") or {}).get(name) or {}).get("in_features")
        src = "the index's metadata"
        for g in segs:
            d = self.shards[g.shard].in_features(name)
            if want is None:
                want, src = d, self.shards[g.shard].path.name
            if d != want:
                raise RecordingError(f"{self.shards[g.shard].path}: layer {name!r} has {d} channels, "
                                     f"{src} {want}; the shard is not this run's: simulate again")
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
