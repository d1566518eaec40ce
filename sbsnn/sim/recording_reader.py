"""Reading a recording file: :class:`Recording` (lazy accessors) and :class:`RowView`.

:func:`sbsnn.sim.open_recording` / ``sbsnn.load_recording`` open a recording by its path
(one file, read here, or a sharded recording's index, read by
:class:`sbsnn.sim.shards.ShardedRecording` over :class:`Recording` objects). The layout
read is described in :mod:`sbsnn.sim.recording_layout`; how an incomplete file comes to
be, and what a kill can damage, in :mod:`sbsnn.sim.recorder`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from sbsnn.checks import check_input_file
from sbsnn.errors import MissingPathError, RecordingError
from sbsnn.sim.recording_layout import (EVENT_FIELDS, FORMAT, FORMAT_VERSION, INDEX_FORMAT, as_str,
                                        group_key)
from sbsnn.sim.trace import LayerTrace, TraceCall


def _readable_rows(ds: h5py.Dataset, n: int, unwritten=None) -> int:
    """The first ``n`` rows of ``ds``, less what a kill during a flush damaged: a trailing
    chunk row that is unallocated or fails its checksum, and rows from the first one
    that ``unwritten(rows) -> bool mask`` flags (fill values). Only the last two chunk
    rows are at risk: complete chunks are never rewritten."""
    n = min(n, ds.shape[0])
    if n <= 0:
        return 0
    rc = ds.chunks[0]
    cc = ds.chunks[1] if ds.ndim > 1 else None
    last = (n - 1) // rc * rc
    for s in range(max(0, last - rc), last + 1, rc):
        try:
            for c in (range(0, ds.shape[1], cc) if cc else (None,)):
                coord = (s,) if c is None else (s, c) + (0,) * (ds.ndim - 2)
                if ds.id.get_chunk_info_by_coord(coord).byte_offset is None:
                    return s
            rows = ds[s:min(s + rc, n)]
        except (OSError, ValueError, RuntimeError):
            return s
        if unwritten is not None:
            bad = np.flatnonzero(unwritten(rows.reshape(len(rows), -1)).any(axis=1))
            if bad.size:
                return s + int(bad[0])
    return n


def _stored_rows(ds: h5py.Dataset) -> int:
    """An upper bound on the rows ``ds`` really stores: its allocated chunks (a chunked,
    resizable dataset, as the recorder writes) or its storage (a contiguous one)."""
    if ds.chunks is None:
        row = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        return ds.id.get_storage_size() // row if row else ds.shape[0]
    per_row_block = 1
    for n, c in zip(ds.shape[1:], ds.chunks[1:]):
        per_row_block *= -(-n // c) if n else 1
    stored = ds.id.get_num_chunks()
    return -(-stored // per_row_block) * ds.chunks[0]


def no_layer_error(path, name: str, layers: list[str]) -> KeyError:
    """The KeyError for a layer ``name`` that the recording at ``path`` does not hold."""
    shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
    return KeyError(f"{path}: no layer {name!r} in the recording ({len(layers)} layers: {shown})")


class RowView:
    """The first ``rows`` rows of a dataset (a damaged incomplete recording's readable
    part): ``shape``, ``dtype``, ``len`` and numpy-style indexing, read lazily."""

    def __init__(self, ds: h5py.Dataset, rows: int):
        self.dataset, self.rows = ds, rows

    @property
    def shape(self) -> tuple:
        return (self.rows, *self.dataset.shape[1:])

    @property
    def dtype(self):
        return self.dataset.dtype

    @property
    def ndim(self) -> int:
        return self.dataset.ndim

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(first, slice):
            first = slice(*first.indices(self.rows))
            if first.step < 0 or first.start > first.stop:
                return self[:][key]
        elif isinstance(first, (int, np.integer)):
            i = int(first)
            if not -self.rows <= i < self.rows:
                raise IndexError(f"index {i} is out of range for {self.rows} rows")
            first = i % self.rows
        else:
            return self.dataset[:self.rows][key]
        return self.dataset[(first, *rest)]

    def __array__(self, dtype=None, copy=None):
        a = self.dataset[:self.rows]
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"<RowView of {self.dataset.name}: first {self.rows} rows, {self.dtype}>"


class Recording:
    """A recording opened for reading; datasets are read lazily (slice what you need).

    ``path``, ``complete``, ``metadata`` (dict; ``model_config`` is a dict),
    ``layers`` (names in first-write order), ``counts(name)`` / ``thresholds(name)`` /
    ``call_offsets(name)`` / ``call_steps(name)`` / ``call_events(name)`` (h5py
    datasets), ``events(name)``
    (dict of datasets or None), ``iter_counts(name, block)`` (torch tensors),
    ``rows(name)``. In an incomplete recording whose writer was killed during a flush,
    the rows that no longer read back are cut off (``damaged`` lists them) and the
    accessors return :class:`RowView` objects over the readable rows.
    ``Recording(path, warn=False)`` keeps the incomplete-file warning in ``notes`` instead
    of issuing it (no warning filter needs changing to collect it). Traced layers
    (format 2): ``traced_layers`` and ``trace(name)``. Document sets (format 3):
    ``documents`` and ``call_documents(name)``.
    """

    def __init__(self, path, warn: bool = True):
        self.path = Path(path)
        self.notes: list[str] = []      # what opening found (an incomplete or damaged file)
        if not self.path.exists():
            raise MissingPathError(f"{self.path}: no such recording (check the path; "
                                   "recordings come from sbsnn simulate --record FILE.h5)",
                                   filename=self.path)
        check_input_file(self.path, "a recording", error=RecordingError)
        try:
            f = h5py.File(self.path, "r")
        except BlockingIOError as e:
            raise RecordingError(
                f"{self.path}: locked by the process writing it (is its simulation still "
                f"running?); wait for it to finish, or read a copy of the file") from e
        except OSError as e:
            raise RecordingError(f"{self.path}: not an sbsnn recording (cannot be opened as "
                                 f"HDF5: {e})") from e
        self._file = f
        self._safe: dict[str, tuple[int, int, int]] = {}
        self.damaged: dict[str, str] = {}
        try:
            a = f.attrs
            fmt = as_str(a.get("format"))
            if fmt == INDEX_FORMAT:
                raise RecordingError(f"{self.path}: the index of a sharded recording (one shard "
                                     f"per rank); open it with sbsnn.load_recording or "
                                     f"sbsnn.sim.open_recording, which read all its shards")
            if fmt != FORMAT or "layers" not in f:
                raise RecordingError(f"{self.path}: not an sbsnn recording (an HDF5 file without "
                                     f"format={FORMAT!r}; recordings come from "
                                     f"simulate(..., record=path))")
            version = int(a.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise RecordingError(f"{self.path}: recording format version {version} is newer "
                                     f"than this sbsnn reads ({FORMAT_VERSION}); upgrade sbsnn")
            self.format_version = version
            self.complete = bool(a.get("complete", False))
            try:
                raw = f["metadata"][()] if "metadata" in f else a.get("metadata", "{}")
                self.metadata = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            except (TypeError, ValueError, OSError) as e:
                raise RecordingError(f"{self.path}: unreadable metadata: {e}") from e
            self.layers = self._layer_names()
            for name in self.layers:
                self._check_stored(name)
                if not self.complete:
                    self._check(name)
                self._check_calls(name)
        except (OSError, RuntimeError, KeyError) as e:
            f.close()
            state = "complete" if getattr(self, "complete", False) else "incomplete"
            raise RecordingError(f"{self.path}: damaged {state} recording: its structure cannot be "
                                 f"read ({type(e).__name__}: {e}); its writer was probably cut off "
                                 "during a write (a full disk, a kill): simulate again") from None
        except BaseException:
            f.close()
            raise
        shard = self.metadata.get("shard")
        if isinstance(shard, dict):
            self.notes.append(f"{self.path}: shard {shard.get('rank')} of {shard.get('world_size')} "
                              f"of the sharded recording {shard.get('index')}; open the index to "
                              f"read every rank's documents")
        if not self.complete:
            msg = (f"{self.path}: the recording is incomplete (its run was interrupted or is "
                   f"still going); it holds what was flushed before that")
            if self.damaged:
                shown = "; ".join(f"{k}: {v}" for k, v in list(self.damaged.items())[:3])
                msg += (f"; {len(self.damaged)} layer(s) lost their last rows to a kill during "
                        f"a flush: {shown}")
            self.notes.append(msg)
            if warn:
                warnings.warn(msg, stacklevel=3)

    def _layer_names(self) -> list[str]:
        groups = self._file["layers"]
        names = []
        if "layer_names" in self._file:
            try:
                names = [as_str(n) for n in self._file["layer_names"][()]]
            except OSError:     # damaged by a kill: fall back to the groups
                names = []
        names = list(dict.fromkeys(n for n in names if group_key(n) in groups))
        known = set(names)
        extra = []
        for key, g in groups.items():     # groups the name list missed
            n = as_str(g.attrs.get("name", key))
            if n not in known:
                extra.append((int(g.attrs.get("index", 1 << 30)), n))
        return names + [n for _, n in sorted(extra)]

    def _check_stored(self, name: str) -> None:
        """Every dataset of layer ``name`` declares no more rows than the file stores (a
        dataset resized to 10**12 rows would otherwise be read as fill values, or exhaust
        memory); checked before anything is read from it."""
        g = self._file["layers"][group_key(name)]
        series = [(k, g[k]) for k in ("counts", "thresholds", "call_offsets", "call_steps",
                                      "call_events", "call_documents") if k in g]
        if "events" in g:
            series += [(f"events/{f}", g["events"][f]) for f, _ in EVENT_FIELDS if f in g["events"]]
        for key, ds in series:
            bound = _stored_rows(ds)
            if not self.complete and ds.chunks is not None:
                bound += 2 * ds.chunks[0]     # a torn flush: the last chunk rows unwritten
            if ds.shape[0] > bound:
                raise RecordingError(f"{self.path}: layer {name!r}: dataset {key!r} declares "
                                     f"{ds.shape[0]:,} rows but the file stores at most {bound:,}; "
                                     "the recording was altered or damaged: simulate again")

    def _check_calls(self, name: str) -> None:
        """The call table of layer ``name`` indexes its rows: offsets start at 0, never
        decrease and end within the rows; every per-call series has one entry per call;
        document numbers name documents of the table. A table that points elsewhere would
        shift every call silently, so it is refused, naming the layer."""
        g = self._file["layers"][group_key(name)]
        rows = self._limit(name, 0)
        rows = min(g["counts"].shape[0], g["thresholds"].shape[0]) if rows is None else rows
        calls = self._limit(name, 1)
        per_call = [k for k in ("call_offsets", "call_steps", "call_events", "call_documents")
                    if k in g]
        if calls is None:
            lengths = {k: g[k].shape[0] for k in per_call}
            if len(set(lengths.values())) > 1:
                raise RecordingError(f"{self.path}: layer {name!r}: its call tables differ in "
                                     f"length ({lengths}); the recording is damaged")
            if g["counts"].shape[0] != g["thresholds"].shape[0]:
                raise RecordingError(f"{self.path}: layer {name!r}: {g['counts'].shape[0]:,} "
                                     f"rows of counts but {g['thresholds'].shape[0]:,} of "
                                     "thresholds; the recording is damaged")
            calls = g["call_offsets"].shape[0]
        offs = np.asarray(g["call_offsets"][:calls], dtype=np.int64)
        bad = None
        if offs.size and offs[0] != 0:
            bad = f"the first call starts at row {int(offs[0])}, not 0"
        elif offs.size and (np.diff(offs) < 0).any():
            i = int(np.flatnonzero(np.diff(offs) < 0)[0]) + 1
            bad = f"call {i} starts at row {int(offs[i])}, before call {i - 1} ({int(offs[i - 1])})"
        elif offs.size and offs[-1] > rows:
            bad = f"call {offs.size - 1} starts at row {int(offs[-1])}, past its {rows:,} rows"
        if bad is None and "call_documents" in g and "documents" in self._file:
            docs = self._file["documents"]["index"]
            if docs.shape[0] <= _stored_rows(docs):
                known = set(int(v) for v in docs[:])
                cd = np.asarray(g["call_documents"][:calls], dtype=np.int64)
                wrong = [int(v) for v in np.unique(cd) if int(v) not in known]
                if wrong:
                    bad = f"its calls name document {wrong[0]}, which the documents table lacks"
        if bad is not None:
            raise RecordingError(f"{self.path}: layer {name!r}: {bad}; the call table does not "
                                 "index this recording's rows (altered or damaged): simulate again")

    def _check(self, name: str) -> None:
        """Readable rows, calls and events of a layer of an incomplete recording."""
        g = self._file["layers"][group_key(name)]
        c, t = g["counts"], g["thresholds"]
        rows = min(c.shape[0], t.shape[0])
        rows = _readable_rows(t, _readable_rows(c, rows), unwritten=np.isnan)
        offsets = g["call_offsets"]
        calls = _readable_rows(g["call_steps"], _readable_rows(offsets, offsets.shape[0]))
        if "call_documents" in g:
            calls = _readable_rows(g["call_documents"], calls)
        offs = offsets[:calls]
        calls = int(np.searchsorted(offs, rows, side="left"))   # calls starting before `rows`
        events = 0
        if "events" in g:
            eg = g["events"]
            events = min(eg[f].shape[0] for f, _ in EVENT_FIELDS)
            for f, _ in EVENT_FIELDS:
                events = _readable_rows(eg[f], events,
                                        unwritten=(lambda p: p == 0) if f == "polarity" else None)
            # Keep only the events of the calls whose rows are all kept.
            ends = np.append(offs[1:], c.shape[0])
            whole = int(np.searchsorted(ends, rows, side="right"))
            firsts = g["call_events"]
            if whole < firsts.shape[0]:
                n_firsts = _readable_rows(firsts, whole + 1)
                events = min(events, int(firsts[whole])) if n_firsts > whole else 0
        self._safe[name] = (rows, calls, events)
        if rows < c.shape[0] or rows < t.shape[0]:
            self.damaged[name] = f"{rows} of {max(c.shape[0], t.shape[0])} rows readable"

    def _group(self, name: str) -> h5py.Group:
        key = group_key(name)
        groups = self._file["layers"]
        if name not in self.layers or key not in groups:
            raise no_layer_error(self.path, name, self.layers)
        return groups[key]

    def _view(self, ds: h5py.Dataset, n: int | None):
        return ds if n is None or n >= ds.shape[0] else RowView(ds, n)

    def _limit(self, name: str, which: int) -> int | None:
        s = self._safe.get(name)
        return None if s is None else s[which]

    def counts(self, name: str):
        """Integer counts ``[rows, in_features]`` of layer ``name`` (lazy h5py dataset)."""
        return self._view(self._group(name)["counts"], self._limit(name, 0))

    def thresholds(self, name: str):
        """Thresholds ``[rows]`` of layer ``name`` (lazy)."""
        return self._view(self._group(name)["thresholds"], self._limit(name, 0))

    def call_offsets(self, name: str):
        """First row of each call of layer ``name``."""
        return self._view(self._group(name)["call_offsets"], self._limit(name, 1))

    def call_steps(self, name: str):
        """Time steps T of each call of layer ``name``."""
        return self._view(self._group(name)["call_steps"], self._limit(name, 1))

    def call_events(self, name: str):
        """First event of each call of layer ``name`` (None without events)."""
        g = self._group(name)
        return self._view(g["call_events"], self._limit(name, 1)) if "call_events" in g else None

    def call_documents(self, name: str):
        """Document index of each call of layer ``name`` (None unless the run simulated a
        document set)."""
        g = self._group(name)
        return (self._view(g["call_documents"], self._limit(name, 1))
                if "call_documents" in g else None)

    @property
    def documents(self) -> list[dict]:
        """The documents of a document-set run, in simulation order: ``index``, ``name``,
        ``tokens``, ``chars`` (empty for a single text). Of an incomplete file, those that
        read back."""
        if "documents" not in self._file:
            return []
        g = self._file["documents"]
        keys = ("index", "name", "tokens", "chars")
        n = min(g[k].shape[0] for k in keys)
        if not self.complete:
            n = min(_readable_rows(g[k], n) for k in keys)
        cols = {k: g[k][:n] for k in keys}
        return [{"index": int(cols["index"][i]),
                 "name": as_str(cols["name"][i]),
                 "tokens": int(cols["tokens"][i]), "chars": int(cols["chars"][i])}
                for i in range(n)]

    def events(self, name: str) -> dict | None:
        """``{"token", "channel", "step", "polarity", "weight"}`` datasets, or None when
        the run did not record events (``token`` is the row in :meth:`counts`)."""
        g = self._group(name)
        if "events" not in g:
            return None
        n = self._limit(name, 2)
        return {k: self._view(g["events"][k], n) for k, _ in EVENT_FIELDS}

    @property
    def traced_layers(self) -> list[str]:
        """Layers the run traced in time (``simulate(..., trace=...)``), in layer order."""
        return [n for n in self.layers if "trace" in self._group(n)]

    def trace(self, name: str):
        """The time-resolved trace of layer ``name`` (a :class:`sbsnn.sim.trace.LayerTrace`
        with every traced call that reads back whole), or None if it was not traced."""
        g = self._group(name)
        if "trace" not in g:
            return None
        t = g["trace"]
        sizes = {k: t[k].shape[0] for k in t}
        calls = sizes["step_offsets"]
        if not self.complete:   # only the calls whose every piece reads back
            for k in t:
                sizes[k] = _readable_rows(t[k], sizes[k],
                                          unwritten=np.isnan if k == "outputs" else None)
            calls = min(sizes["step_offsets"], sizes["call_outputs"])
        offsets = self.call_offsets(name)
        steps = self.call_steps(name)
        calls = min(calls, len(offsets), len(steps))
        rows_total = self.rows(name)
        so, co = t["step_offsets"][:calls], t["call_outputs"][:calls]
        off_all = offsets[:]
        ends = list(off_all[1:]) + [rows_total]
        n_out_total = sizes["output_rows"]
        out_ends = list(co[1:]) + [n_out_total]
        out_rows_total = sizes["outputs"]
        meta = (self.metadata.get("layers") or {}).get(name) or {}
        lt = LayerTrace(name, self.in_features(name), int(meta.get("out_features", t["outputs"].shape[1])),
                        str(self.metadata.get("coding") or "ternary"))
        for k in range(calls):
            T, r0, r1 = int(steps[k]), int(off_all[k]), int(ends[k])
            e0 = int(so[k])
            o0, o1 = int(co[k]), int(out_ends[k])
            if (e0 + T > sizes["events_pos"] or e0 + T > sizes["events_neg"] or r1 > sizes["first_step"]
                    or r1 > sizes["last_step"] or o1 > sizes["output_offsets"]):
                break
            if o1 > o0:
                starts = t["output_offsets"][o0:o1].astype(np.int64)
                stop = int(t["output_offsets"][o1]) if o1 < sizes["output_offsets"] else out_rows_total
                if stop > out_rows_total:
                    break
                out = torch.from_numpy(t["outputs"][int(starts[0]):stop])
                rel = torch.from_numpy(np.append(starts, stop) - int(starts[0]))
            else:
                out = torch.from_numpy(np.zeros((0, t["outputs"].shape[1]), t["outputs"].dtype))
                rel = torch.zeros(1, dtype=torch.int64)
            lt.calls.append(TraceCall(
                steps=T, row0=r0,
                events_pos=torch.from_numpy(t["events_pos"][e0:e0 + T].astype(np.int64)),
                events_neg=torch.from_numpy(t["events_neg"][e0:e0 + T].astype(np.int64)),
                first_step=torch.from_numpy(t["first_step"][r0:r1].astype(np.int64)),
                last_step=torch.from_numpy(t["last_step"][r0:r1].astype(np.int64)),
                output_offsets=rel, outputs=out))
        return lt

    def rows(self, name: str) -> int:
        """Rows (tokens seen) of layer ``name`` that read back."""
        return int(self.counts(name).shape[0])

    def in_features(self, name: str) -> int:
        return int(self._group(name)["counts"].shape[1])

    def iter_counts(self, name: str, block: int = 4096) -> Iterator[torch.Tensor]:
        """Counts of layer ``name`` as torch int tensors, ``block`` rows at a time."""
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        ds = self.counts(name)
        for s in range(0, ds.shape[0], block):
            yield torch.from_numpy(ds[s:s + block])

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return f"Recording({str(self.path)!r}, {len(self.layers)} layers, {state})"


__all__ = ["Recording", "RowView"]
