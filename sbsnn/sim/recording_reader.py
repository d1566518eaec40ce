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
from sbsnn.neurons.formula import CODINGS
from sbsnn.sim.recording_layout import (EVENT_FIELDS, FORMAT, FORMAT_VERSION, INDEX_FORMAT,
                                        TRACE_SERIES, as_str, check_stored, group_key)
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


_DIM_MAX = 1 << 31          # a layer's in/out features or group size, at most


def check_metadata(meta, path) -> dict:
    """A recording's (or an index's) metadata as the readers use it, refused by key when
    it is not: a JSON object; ``coding`` one of the codings; ``layers`` an object of
    layers whose ``in_features``, ``out_features`` and ``group_size`` are positive ints;
    ``tokens`` an int not negative (the report prices and counts by them)."""
    def bad(key, v, want):
        return RecordingError(f"{path}: metadata {key} = {str(v)[:80]!r} is not {want}; the "
                              f"file is damaged or was edited: simulate again")

    def count(v, lo):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= _DIM_MAX * _DIM_MAX

    if not isinstance(meta, dict):
        raise bad("(the whole)", type(meta).__name__, "a JSON object")
    coding = meta.get("coding")
    if coding is not None and coding not in (*CODINGS, "mixed"):
        raise bad("coding", coding, f"one of {', '.join(CODINGS)}")
    if meta.get("tokens") is not None and not count(meta["tokens"], 0):
        raise bad("tokens", meta["tokens"], "a count of tokens")
    layers = meta.get("layers")
    if layers is not None:
        if not isinstance(layers, dict):
            raise bad("layers", type(layers).__name__, "an object of layers")
        for name, info in layers.items():
            if not isinstance(info, dict):
                raise bad(f"layers[{name!r}]", info, "an object")
            for key in ("in_features", "out_features", "group_size"):
                v = info.get(key)
                if v is not None and not (count(v, 1) and v <= _DIM_MAX):
                    raise bad(f"layers[{name!r}].{key}", v, f"an int in 1..{_DIM_MAX}")
    return meta


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
        if self.path.is_dir():
            raise RecordingError(f"{self.path}: is a directory, not an sbsnn recording")
        check_input_file(self.path, "a recording (an HDF5 file written by sbsnn simulate "
                         "--record)", error=RecordingError)   # a FIFO would block the open
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
            except (TypeError, ValueError, OSError, RecursionError) as e:
                raise RecordingError(f"{self.path}: unreadable metadata: "
                                     f"{type(e).__name__}: {str(e)[:200]}") from None
            check_metadata(self.metadata, self.path)
            self._check_file_datasets()
            self.layers = self._layer_names()
            for name in self.layers:
                if not self.complete:
                    self._check(name)
                self._validate(name)
        except RecordingError:
            f.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:
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

    def _refuse(self, what: str, problem: str) -> RecordingError:
        return RecordingError(f"{self.path}: {what}: {problem}; the file is damaged or was "
                              f"edited (sbsnn never writes this): simulate again")

    def _check_file_datasets(self) -> None:
        """Every dataset of the file stores what its extent claims, before any is read
        (:func:`~sbsnn.sim.recording_layout.check_stored`); the layers' shapes are sane."""
        def link(key, lk):      # (an exception must not cross h5py's visit)
            if not isinstance(lk, h5py.HardLink):   # soft and external links lead elsewhere
                kind = "an external link" if isinstance(lk, h5py.ExternalLink) else "a soft link"
                return f"/{key}", f"is {kind} (to {getattr(lk, 'filename', '')}:{lk.path})"
            return None

        found = self._file.visititems_links(link)
        if found is not None:
            raise self._refuse(*found)
        datasets = []
        self._file.visititems(lambda key, obj: datasets.append((key, obj))
                              if isinstance(obj, h5py.Dataset) else None)
        for key, ds in datasets:
            check_stored(ds, self.path, f"dataset /{key}", self.complete)
        self._documents_index = self._check_documents()
        for key, g in self._file["layers"].items():
            if not isinstance(g, h5py.Group):
                raise self._refuse(f"/layers/{key}", "is not a group")
            for k in ("counts", "thresholds", "call_offsets", "call_steps"):
                if not isinstance(g.get(k), h5py.Dataset):
                    raise self._refuse(f"layer {as_str(g.attrs.get('name', key))!r}",
                                       f"has no dataset {k!r}")
            if g["counts"].ndim != 2 or g["thresholds"].ndim not in (1, 2) or any(
                    g[k].ndim != 1 for k in ("call_offsets", "call_steps")):
                raise self._refuse(f"layer {as_str(g.attrs.get('name', key))!r}",
                                   "its datasets have the wrong number of dimensions")

    def _validate(self, name: str) -> None:
        """Everything that indexes another dataset, checked before use: the call offsets
        (from 0, increasing, inside the rows), call_events (inside the events),
        call_documents (increasing, listed in ``/documents``); in a complete file every
        dataset of the layer has the length its attributes give."""
        g = self._file["layers"][group_key(name)]
        what = f"layer {name!r}"
        c = g["counts"]
        meta = (self.metadata.get("layers") or {}).get(name) or {}
        if meta.get("in_features") is not None and meta["in_features"] != c.shape[1]:
            raise self._refuse(what, f"its counts have {c.shape[1]} channels but the metadata "
                                     f"gives in_features {meta['in_features']}")
        series = {k: g[k] for k in ("call_offsets", "call_steps", "call_events", "call_documents")
                  if k in g}
        events = g["events"] if "events" in g else None
        if events is not None and not all(isinstance(events.get(f), h5py.Dataset)
                                          for f, _ in EVENT_FIELDS):
            raise self._refuse(what, "its events group lacks one of "
                                     + ", ".join(f for f, _ in EVENT_FIELDS))
        if (events is None) != ("call_events" not in g):
            raise self._refuse(what, "it has events without call_events, or the reverse")
        if self.complete:
            rows, calls = c.shape[0], g["call_offsets"].shape[0]
            n_ev = events["token"].shape[0] if events is not None else 0
            a = g.attrs
            lengths = {"counts": c.shape[0], "thresholds": g["thresholds"].shape[0],
                       **{k: ds.shape[0] for k, ds in series.items()},
                       **({f"events/{f}": events[f].shape[0] for f, _ in EVENT_FIELDS}
                          if events is not None else {})}
            expect = {k: (rows if k in ("counts", "thresholds") else
                          n_ev if k.startswith("events/") else calls) for k in lengths}
            for key, attr in (("counts", "rows"), ("call_offsets", "calls"),
                              ("events/token", "events")):
                if key in lengths and attr in a:
                    if int(a[attr]) != lengths[key]:
                        raise self._refuse(what, f"{key} has {lengths[key]} entries but the "
                                                 f"layer's attribute {attr} says {int(a[attr])}")
            bad = [k for k in lengths if lengths[k] != expect[k]]
            if bad:
                raise self._refuse(what, f"{bad[0]} has {lengths[bad[0]]} entries, not "
                                         f"{expect[bad[0]]} like the others of its kind")
        else:
            rows, calls, n_ev = self._safe[name]
        offs = np.asarray(g["call_offsets"][:calls], dtype=np.int64)
        if calls and (offs[0] != 0 or np.any(np.diff(offs) <= 0) or offs[-1] >= rows):
            bad = (0 if offs[0] != 0 else
                   int(np.flatnonzero(np.diff(offs) <= 0)[0]) + 1 if np.any(np.diff(offs) <= 0)
                   else calls - 1)
            raise self._refuse(what, f"call_offsets[{bad}] = {int(offs[bad])} (call offsets start "
                                     f"at 0 and increase below the layer's {rows} rows)")
        if not calls and rows and self.complete:
            raise self._refuse(what, f"{rows} rows but no call_offsets")
        steps = np.asarray(g["call_steps"][:calls])
        if calls and steps.min() < 0:
            raise self._refuse(what, f"call_steps[{int(np.argmin(steps))}] = {int(steps.min())} "
                                     f"is negative")
        if "call_events" in g:
            # (an incomplete file's last calls may point past the events a kill damaged:
            # readers clip them to the readable events)
            ce = np.asarray(g["call_events"][:calls], dtype=np.int64)
            if len(ce) and (ce[0] != 0 or np.any(np.diff(ce) < 0) or (
                    self.complete and ce[-1] > n_ev)):
                bad = (0 if ce[0] != 0 else int(np.flatnonzero(np.diff(ce) < 0)[0]) + 1
                       if np.any(np.diff(ce) < 0) else len(ce) - 1)
                raise self._refuse(what, f"call_events[{bad}] = {int(ce[bad])} (first events of "
                                         f"the calls start at 0 and never decrease nor pass the "
                                         f"layer's {n_ev} events)")
        if "call_documents" in g:
            if self._documents_index is None and self.complete:
                raise self._refuse(what, "it has call_documents but the file no /documents")
            cd = np.asarray(g["call_documents"][:calls], dtype=np.int64)
            if calls and (cd.min() < 0 or np.any(np.diff(cd) < 0)):
                bad = (int(np.argmin(cd)) if cd.min() < 0
                       else int(np.flatnonzero(np.diff(cd) < 0)[0]) + 1)
                raise self._refuse(what, f"call_documents[{bad}] = {int(cd[bad])} (the calls of "
                                         f"one document are contiguous, documents in increasing "
                                         f"order)")
            if self.complete and calls:
                unknown = sorted(set(np.unique(cd).tolist()) - self._documents_index)
                if unknown:
                    raise self._refuse(what, f"call_documents names document {unknown[0]}, which "
                                             f"/documents does not list")

    def _check_documents(self) -> set[int] | None:
        """The indices ``/documents`` lists (None without the group), after checking that
        they increase from 0 up, with tokens and characters not negative."""
        if "documents" not in self._file:
            return None
        g = self._file["documents"]
        keys = ("index", "name", "tokens", "chars")
        for k in keys:
            if not isinstance(g.get(k), h5py.Dataset) or g[k].ndim != 1:
                raise self._refuse("/documents", f"has no one-dimensional dataset {k!r}")
        lengths = {k: g[k].shape[0] for k in keys}
        if self.complete and len(set(lengths.values())) > 1:
            raise self._refuse("/documents", f"its columns differ in length ({lengths})")
        n = min(lengths.values())
        if not self.complete:
            n = min(_readable_rows(g[k], n) for k in keys)
        idx = np.asarray(g["index"][:n], dtype=np.int64)
        for k in ("tokens", "chars"):
            col = np.asarray(g[k][:n], dtype=np.int64)
            if n and col.min() < 0:
                raise self._refuse("/documents", f"{k}[{int(np.argmin(col))}] = {int(col.min())} "
                                                 f"is negative")
        if n and (idx[0] < 0 or np.any(np.diff(idx) <= 0)):
            bad = 0 if idx[0] < 0 else int(np.flatnonzero(np.diff(idx) <= 0)[0]) + 1
            raise self._refuse("/documents", f"index[{bad}] = {int(idx[bad])} (document indices "
                                             f"are not negative and increase)")
        return set(idx.tolist())

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
        offs = np.asarray(offsets[:calls], dtype=np.int64)
        if calls and (offs[0] != 0 or np.any(np.diff(offs) <= 0)):   # searchsorted needs order
            bad = 0 if offs[0] != 0 else int(np.flatnonzero(np.diff(offs) <= 0)[0]) + 1
            raise self._refuse(f"layer {name!r}", f"call_offsets[{bad}] = {int(offs[bad])} (call "
                                                  f"offsets start at 0 and increase)")
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
        what = f"layer {name!r}: trace"
        for key in [k for k, _, _ in TRACE_SERIES] + ["outputs"]:
            if not isinstance(t.get(key), h5py.Dataset) or t[key].ndim != (2 if key == "outputs" else 1):
                raise self._refuse(what, f"has no dataset {key!r} of the right shape")
        sizes = {k: t[k].shape[0] for k in t}
        calls = sizes["step_offsets"]
        if not self.complete:   # only the calls whose every piece reads back
            for k in t:
                sizes[k] = _readable_rows(t[k], sizes[k],
                                          unwritten=np.isnan if k == "outputs" else None)
            calls = min(sizes["step_offsets"], sizes["call_outputs"])
        elif sizes["call_outputs"] != calls:
            raise self._refuse(what, f"call_outputs has {sizes['call_outputs']} entries, "
                                     f"step_offsets {calls}")
        offsets = self.call_offsets(name)
        steps = self.call_steps(name)
        if self.complete and calls > len(offsets):
            raise self._refuse(what, f"{calls} traced calls but the layer has {len(offsets)}")
        calls = min(calls, len(offsets), len(steps))
        rows_total = self.rows(name)
        so = np.asarray(t["step_offsets"][:calls], dtype=np.int64)
        co = np.asarray(t["call_outputs"][:calls], dtype=np.int64)
        off_all = np.asarray(offsets[:], dtype=np.int64)
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
            where = f"{what} of call {k}"
            if e0 < 0 or o0 < 0 or o1 < o0 or o1 - o0 > r1 - r0:
                raise self._refuse(where, f"step offset {e0}, outputs {o0}..{o1} for "
                                          f"{r1 - r0} rows (offsets are not negative, "
                                          f"increase, and give at most one output per row)")
            if (e0 + T > sizes["events_pos"] or e0 + T > sizes["events_neg"] or r1 > sizes["first_step"]
                    or r1 > sizes["last_step"] or o1 > sizes["output_offsets"]):
                if not self.complete:       # the tail a kill cut off
                    break
                raise self._refuse(where, f"points past its series (steps {e0}..{e0 + T} of "
                                          f"{sizes['events_pos']}, rows ..{r1} of "
                                          f"{sizes['first_step']}, outputs ..{o1} of "
                                          f"{sizes['output_offsets']})")
            first = np.asarray(t["first_step"][r0:r1], dtype=np.int64)
            last = np.asarray(t["last_step"][r0:r1], dtype=np.int64)
            if len(first) and (first.min() < -1 or last.min() < -1 or first.max() >= T
                               or last.max() >= T or np.any((first < 0) != (last < 0))
                               or np.any(last < first)):
                raise self._refuse(where, f"first/last steps outside -1..{T - 1} (the call's "
                                          f"{T} steps) or out of order")
            if o1 > o0:
                starts = np.asarray(t["output_offsets"][o0:o1], dtype=np.int64)
                stop = int(t["output_offsets"][o1]) if o1 < sizes["output_offsets"] else out_rows_total
                if stop > out_rows_total or starts[0] < 0 or np.any(
                        np.diff(np.append(starts, stop)) <= 0):
                    if not self.complete and stop > out_rows_total:
                        break
                    raise self._refuse(where, f"output_offsets {int(starts[0])}..{stop} are not "
                                              f"increasing inside the {out_rows_total} output rows")
                out = torch.from_numpy(t["outputs"][int(starts[0]):stop])
                rel = torch.from_numpy(np.append(starts, stop) - int(starts[0]))
            else:
                out = torch.from_numpy(np.zeros((0, t["outputs"].shape[1]), t["outputs"].dtype))
                rel = torch.zeros(1, dtype=torch.int64)
            lt.calls.append(TraceCall(
                steps=T, row0=r0,
                events_pos=torch.from_numpy(t["events_pos"][e0:e0 + T].astype(np.int64)),
                events_neg=torch.from_numpy(t["events_neg"][e0:e0 + T].astype(np.int64)),
                first_step=torch.from_numpy(first), last_step=torch.from_numpy(last),
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


__all__ = ["Recording", "RowView", "check_metadata"]
