"""Recordings of a simulation: spike counts, thresholds and (optionally) events in HDF5.

:func:`sbsnn.sim.simulate` with ``record="spikes.h5"`` writes, for every call of every
:class:`~sbsnn.converters.SpikingLinear`, the input's integer spike counts and per-token
thresholds, chunk by chunk, so memory stays bounded on long texts;
:func:`load_recording` reads the file back lazily.

File layout (``format="sbsnn-recording"``, ``format_version=3``; version 2 is the same
without ``documents/`` and ``call_documents``, version 1 also without ``trace/`` groups;
both still read)::

    /                         attrs: format, format_version, complete (False until a
                              normal close), sbsnn_version, created, closed (UTC, ISO),
                              coding, record_events, chunk_tokens, compression,
                              rows_written, layers (count), flushes
    /metadata                 str (scalar): JSON of the run's metadata (model, preset,
                              coding, k, group_size, tokens, token_digest, sbsnn_version,
                              model_config as a nested object, ...)
    /layer_names              str [layers], in the order layers were first written
    /documents/               only for document sets (Recorder.begin_document): one
                              entry per document, in the order they were simulated
        index                 int64: the document's index in its set
        name                  str
        tokens                int64: tokens of the document
        chars                 int64: characters of the document
    /layers/<name>            one group per spiking layer; <name> is the module name
                              with '%' and '/' percent-escaped (dots are kept).
                              attrs: name, index, in_features, rows, calls, events
        counts                int [rows, in_features], narrowest of int8/16/32/64 that
                              has held every count so far (widened when needed),
                              chunked (chunk_tokens rows), gzip + shuffle
        thresholds            float32 [rows] (float64 for float64 models; [rows, G]
                              when a layer gives G thresholds per row)
        call_offsets          int64 [calls]: first row of each call
        call_steps            int32 [calls]: T of each call (``sbsnn.neurons.num_steps``
                              of its counts under the recording's coding)
        call_events           int64 [calls]: first event of each call (with events)
        call_documents        int64 [calls]: index of the document each call belongs to
                              (document sets only; calls of one document are contiguous)
        events/               only with record_events=True, one entry per spike event:
            token             int64: the event's *row* in counts (global, not per call)
            channel           int32: input channel
            step              int32: time step within its call
            polarity          int8: +1 / -1
            weight            int64: value of one spike at that step (so that
                              sum(polarity * weight) per (token, channel) == counts)
        trace/                only for layers traced in time (simulate(..., trace=...)),
                              every call of the layer (sbsnn.sim.trace.TraceCall):
            step_offsets      int64 [calls]: first entry of each call in events_pos/neg
            events_pos        int64 [sum of T]: positive spikes fired at each step
            events_neg        int64 [sum of T]
            first_step        int32 [rows]: first step with a spike of each row, -1 silent
            last_step         int32 [rows]: last such step
            output_rows       int64 [traced rows]: the rows with per-step outputs
            output_offsets    int64 [traced rows]: first row of each in `outputs`
            outputs           float [.., out_features]: each output after steps 0, 1, ...
                              of its row, up to the row's last spike step
            call_outputs      int64 [calls]: first entry of each call in output_rows

Rows are the tokens a layer *saw*, in call order: for dense layers of a single sequence
row i is text position i; for a batch, rows are ``batch x positions`` per call; MoE
experts only see the tokens routed to them, so their rows are not aligned with text
positions (``call_offsets`` delimits the calls).

Crash behaviour. The file is written at its final path (an existing file is
overwritten) and marked ``complete=False`` from the moment it is opened; only
``close(complete=True)`` marks it complete.

- An exception inside :func:`simulate` (KeyboardInterrupt included) closes the file
  properly with ``complete=False``; it keeps every call written so far (a call cut
  short inside :meth:`Recorder.write` is trimmed away, so the datasets stay aligned).
- A process killed (SIGKILL, the OOM killer) *between* two flushes leaves the file as
  of its last flush: HDF5's metadata cache is told not to evict, so no metadata
  reaches the disk between flushes, and each counts dataset's chunk cache holds two
  rows of chunks, so partial chunks are rewritten only at a flush
  (:meth:`Recorder.write` flushes by itself before a layer would touch a third chunk
  row since the last flush: long calls, e.g. ``simulate`` without ``block_size``,
  become durable chunk row by chunk row). The file opens with plain h5py, reads as incomplete and
  holds every flushed row. (Nothing is fsynced: a power cut may lose what the OS had
  not written yet.)
- HDF5 has no atomic commit: a kill *during* a flush can damage the chunks that flush
  was rewriting, i.e. a layer's rows after its last complete chunk row (fewer than
  ``chunk_tokens``), and the events of its last calls. Every chunk carries a
  Fletcher-32 checksum, thresholds are NaN and polarities 0 where never written, so
  :class:`Recording` finds such damage when it opens an incomplete file, cuts it off
  (``damaged`` says where; the accessors then return :class:`RowView` objects over the
  readable rows) and says so in its warning. Complete chunk rows are never rewritten.
  With events, a single call's events can outgrow their chunk cache between flushes;
  the same checks then cut the damaged tail of the events.

Measured (HDF5 2.0, h5py 3.16; tiny model, 1000 tokens in blocks of 16 or in one pass,
with and without events; 192 SIGKILLs at random times or aimed at flushes): every file
opened; 0 of 117 kills between flushes lost a flushed row; 52 of 75 kills inside a flush
lost rows after some layers' last complete chunk row, always detected and cut off;
never a wrong number among the rows kept.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import h5py
import numpy as np
import torch

from sbsnn.errors import RecordingError  # noqa: F401 - re-exported (sbsnn.sim.RecordingError)

FORMAT = "sbsnn-recording"
INDEX_FORMAT = "sbsnn-recording-index"   # a sharded recording's index (sbsnn.sim.shards)
FORMAT_VERSION = 3

_INT_TYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
_TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_COUNT_CHUNK_BYTES = 1 << 20        # at most this many int8 bytes per counts chunk
_EVENT_CHUNK = 1 << 13              # events per chunk
_EVENT_BATCH = 1 << 20              # events buffered before an append
_MDC_LIMIT = 64 << 20              # reopen the file when HDF5's metadata cache outgrows this
_SERIES_CHUNK = 256                 # entries per chunk of call_offsets / call_steps
_EVENT_FIELDS = (("token", np.int64), ("channel", np.int32), ("step", np.int32),
                 ("polarity", np.int8), ("weight", np.int64))
# Trace datasets: (name, dtype or None for the outputs' float type, chunk length).
_TRACE_SERIES = (("step_offsets", np.int64, _SERIES_CHUNK), ("events_pos", np.int64, 4096),
                 ("events_neg", np.int64, 4096), ("first_step", np.int32, 4096),
                 ("last_step", np.int32, 4096), ("output_rows", np.int64, 4096),
                 ("output_offsets", np.int64, 4096), ("call_outputs", np.int64, _SERIES_CHUNK))
_TRACE_OUTPUT_ROWS = 64             # rows per chunk of trace/outputs


def _narrowest(lo: int, hi: int) -> np.dtype:
    """The narrowest integer type holding ``-peak..peak`` (peak = max(|lo|, |hi|)):
    symmetric, as the counts' own type, so a stored count's negation never overflows
    (int8 -128 would read back as a count whose abs() is -128)."""
    peak = max(-lo, hi)
    for dt in _INT_TYPES:
        if peak <= np.iinfo(dt).max:
            return dt
    raise ValueError(f"counts {lo}..{hi} do not fit int64")


def check_record_path(path, option: str = "record") -> Path:
    """Where a recording may be written: not a directory, in a directory that exists, and
    not over a file that is not an sbsnn recording (sbsnn overwrites only its own)."""
    from sbsnn.errors import (MissingPathError, OptionError, PathIsDirectoryError,
                              PathNotDirectoryError)

    p = Path(path)
    if p.is_dir():
        raise PathIsDirectoryError(f"{p}: is a directory ({option} names the recording's "
                                   "file); give a file name such as spikes.h5", filename=p)
    parent = p.parent
    if not parent.exists():
        raise MissingPathError(f"{p}: the directory {parent} does not exist; create it first "
                               f"({option})", filename=p)
    if not parent.is_dir():
        raise PathNotDirectoryError(f"{p}: {parent} is not a directory ({option})", filename=p)
    if p.exists() and p.stat().st_size:
        fmt = None
        try:
            if h5py.is_hdf5(p):
                with h5py.File(p, "r") as f:
                    fmt = f.attrs.get("format")
        except BlockingIOError:
            raise OptionError(f"{p}: in use by another process (a simulation still writing "
                              f"it?); choose another {option} file") from None
        except OSError:
            fmt = None
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        if fmt not in (FORMAT, INDEX_FORMAT):
            raise OptionError(f"{p}: exists and is not an sbsnn recording; {option} would "
                              "overwrite it: remove it yourself or choose another file name")
    return p


def _group_key(name: str) -> str:
    return quote(name, safe="") if name else "%00"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)     # torch dtypes, paths, enums...


def _chunk_cache(nbytes: int):
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(10007, int(nbytes), 1.0)     # w0=1: evict fully written chunks first
    return dapl


def _open_dataset(group: h5py.Group, key: str, cache_bytes: int | None = None) -> h5py.Dataset:
    if cache_bytes is None:
        return group[key]
    return h5py.Dataset(h5py.h5d.open(group.id, key.encode(), dapl=_chunk_cache(cache_bytes)))


def _append(ds: h5py.Dataset, start: int, data: np.ndarray) -> None:
    n = data.shape[0]
    if not n:
        return
    ds.resize(start + n, axis=0)
    ds[start:start + n] = data


def _named_os_errors(method):
    """A failed write in HDF5 (a full disk, a file-size limit) is raised as the
    :class:`~sbsnn.errors.PathError` of its kind naming the recording, after the file is
    abandoned (:meth:`Recorder._abandon`)."""
    import functools
    import re

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError) as e:
            from sbsnn.errors import SbsnnError, os_error

            if isinstance(e, SbsnnError) or (isinstance(e, RuntimeError) and "errno" not in str(e)):
                raise
            m = re.search(r"errno = (\d+)", str(e))
            code = int(m.group(1)) if m else getattr(e, "errno", None)
            self._abandon()
            err = OSError(code, os.strerror(code)) if code else e
            raise os_error(err, self.path, "writing the recording") from None
    return wrapper


@dataclass
class _Layer:
    key: str
    in_features: int
    group: h5py.Group = None
    counts: h5py.Dataset = None
    thresholds: h5py.Dataset = None
    call_offsets: h5py.Dataset = None
    call_steps: h5py.Dataset = None
    call_events: h5py.Dataset | None = None
    call_documents: h5py.Dataset | None = None
    events: dict | None = None
    trace: dict | None = None   # trace datasets, once the layer is traced
    rows: int = 0
    calls: int = 0
    n_events: int = 0
    flushed_rows: int = 0       # rows on disk at the last flush
    dirty: bool = True


class Recorder:
    """Writes counts, thresholds (and optionally events) of every spiking layer call.

    ``Recorder(path, metadata, record_events, compression="gzip", chunk_tokens=256)``
    truncates ``path`` (an existing file is overwritten) and marks it incomplete at
    once. ``write(name, counts, v_th)`` appends one call, ``flush()`` makes everything
    so far durable, ``close(complete)`` records whether the run finished (idempotent).
    Also a context manager (complete when its block exits without an exception).

    Memory: besides a few numbers per layer, HDF5 caches up to two rows of chunks per
    counts dataset (about ``2 x chunk_tokens x in_features x itemsize`` bytes per layer
    written to; lower ``chunk_tokens`` for very many layers, e.g. MoE experts) and its
    metadata cache, which is emptied (file closed and reopened after a flush) when it
    exceeds 64 MiB.
    """

    def __init__(self, path, metadata: dict | None = None, record_events: bool = False,
                 compression="gzip", chunk_tokens: int = 256):
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.record_events = bool(record_events)
        self.coding = str(self.metadata.get("coding") or "ternary")
        self.compression = compression
        self.chunk_tokens = chunk_tokens
        self._layers: dict[str, _Layer] = {}
        self._document: int | None = None     # index of the document being recorded
        self._documents = 0
        self._flushes = 0
        self._reopens = 0
        self._closed = False
        meta_json = json.dumps(self.metadata, default=_json_default)
        check_record_path(self.path)
        # Default (earliest) file format on purpose: its superblock has no "open for
        # writing" flag, so a file whose writer was killed still opens without h5clear.
        try:
            self._file = h5py.File(self.path, "w")
        except OSError as e:
            from sbsnn.errors import os_error

            raise os_error(e, self.path, "creating the recording") from None
        try:
            self._no_metadata_evictions()
            a = self._file.attrs
            a["format"] = FORMAT
            a["format_version"] = FORMAT_VERSION
            a["complete"] = False
            from sbsnn import __version__

            a["sbsnn_version"] = str(self.metadata.get("sbsnn_version", __version__))
            a["created"] = _now()
            a["coding"] = self.coding
            a["record_events"] = self.record_events
            a["chunk_tokens"] = chunk_tokens
            a["compression"] = str(compression)
            a["rows_written"] = 0
            a["layers"] = 0
            a["flushes"] = 0
            # A dataset, not an attribute: no 64 KiB limit (MoE models list many layers).
            self._file.create_dataset("metadata", data=meta_json, dtype=h5py.string_dtype())
            self._file.create_group("layers")
            self._names = self._file.create_dataset(
                "layer_names", shape=(0,), maxshape=(None,), chunks=(256,),
                dtype=h5py.string_dtype())
            self._file.flush()
        except BaseException:
            self._file.close()
            raise

    # ------------------------------------------------------------------ internals
    def _no_metadata_evictions(self) -> None:
        """Dirty HDF5 metadata reaches the disk only at flush/close, so a kill between
        flushes cannot leave half-updated metadata (e.g. a grown extent over an old
        chunk index)."""
        fid = self._file.id
        cfg = fid.get_mdc_config()
        cfg.incr_mode = 0            # H5C_incr__off
        cfg.flash_incr_mode = 0      # H5C_flash_incr__off
        cfg.decr_mode = 0            # H5C_decr__off
        cfg.evictions_enabled = False
        fid.set_mdc_config(cfg)

    def _reopen(self) -> None:
        """Close and reopen the (flushed) file: empties the non-evicting metadata cache."""
        self._file.close()
        self._file = h5py.File(self.path, "r+")
        self._no_metadata_evictions()
        self._names = self._file["layer_names"]
        for lay in self._layers.values():
            self._bind(lay)
        self._reopens += 1

    def _row_bytes(self, D: int, dtype) -> int:
        cols = min(D, max(1, _COUNT_CHUNK_BYTES // self.chunk_tokens))
        return self.chunk_tokens * math.ceil(D / cols) * cols * np.dtype(dtype).itemsize

    def _bind(self, lay: _Layer) -> None:
        g = lay.group = self._file["layers"][lay.key]
        cache = 2 * self._row_bytes(lay.in_features, g["counts"].dtype) + (64 << 10)
        lay.counts = _open_dataset(g, "counts", cache)
        lay.thresholds = g["thresholds"]
        lay.call_offsets = g["call_offsets"]
        lay.call_steps = g["call_steps"]
        if "call_documents" in g:
            lay.call_documents = g["call_documents"]
        if "events" in g:
            lay.call_events = g["call_events"]
            lay.events = {f: g["events"][f] for f, _ in _EVENT_FIELDS}
        if "trace" in g:
            lay.trace = {k: g["trace"][k] for k in g["trace"]}

    def _filters(self, dtype) -> dict:
        # fletcher32: a chunk damaged by a kill during a flush fails to read instead of
        # decoding to wrong numbers.
        f = {"fletcher32": True}
        if self.compression is not None:
            f.update(compression=self.compression, shuffle=np.dtype(dtype).itemsize > 1)
        return f

    def _new_counts(self, group: h5py.Group, key: str, D: int, dtype) -> h5py.Dataset:
        dtype = np.dtype(dtype)
        cols = min(D, max(1, _COUNT_CHUNK_BYTES // self.chunk_tokens))
        group.create_dataset(key, shape=(0, D), maxshape=(None, D), dtype=dtype,
                             chunks=(self.chunk_tokens, cols), **self._filters(dtype))
        return _open_dataset(group, key, 2 * self._row_bytes(D, dtype) + (64 << 10))

    def _series(self, group, key, dtype, chunk, tail=(), fill=None):
        return group.create_dataset(key, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                    chunks=(chunk, *tail), fillvalue=fill, **self._filters(dtype))

    def _new_layer(self, name: str, D: int, count_dtype, v: np.ndarray) -> _Layer:
        if D < 1:
            raise ValueError(f"Recorder.write({name!r}): counts have no channel")
        key = _group_key(name)
        g = self._file["layers"].create_group(key)
        index = len(self._layers)
        g.attrs.update(name=name, index=index, in_features=D, rows=0, calls=0, events=0)
        lay = _Layer(key=key, in_features=D, group=g)
        self._new_counts(g, "counts", D, count_dtype)
        # NaN fill: a row that was never written reads as NaN, never as a threshold.
        self._series(g, "thresholds", v.dtype, self.chunk_tokens, v.shape[1:], fill=np.nan)
        self._series(g, "call_offsets", np.int64, _SERIES_CHUNK)
        self._series(g, "call_steps", np.int32, _SERIES_CHUNK)
        if self._document is not None:
            self._series(g, "call_documents", np.int64, _SERIES_CHUNK)
        if self.record_events:
            self._series(g, "call_events", np.int64, _SERIES_CHUNK)
            eg = g.create_group("events")
            for f, dt in _EVENT_FIELDS:
                self._series(eg, f, dt, _EVENT_CHUNK)
        self._bind(lay)
        self._names.resize(index + 1, axis=0)
        self._names[index] = name
        self._layers[name] = lay
        return lay

    def _widen(self, lay: _Layer, dtype: np.dtype) -> None:
        """Copy the counts into a wider dataset (block by block) and swap it in."""
        g, old = lay.group, lay.counts
        if "counts.widening" in g:
            del g["counts.widening"]
        new = self._new_counts(g, "counts.widening", lay.in_features, dtype)
        new.resize(lay.rows, axis=0)
        step = self.chunk_tokens * max(1, 16 // math.ceil(lay.in_features / 4096))
        for s in range(0, lay.rows, step):
            new[s:s + step] = old[s:min(s + step, lay.rows)].astype(dtype)
        # Flush around the swap: the old chunks are freed only once the copy is on disk,
        # and the file points to the new dataset before that space can be reused.
        del new, old
        self.flush()                    # may reopen the file: take the group afresh
        g = lay.group
        del lay.counts
        del g["counts"]
        g.move("counts.widening", "counts")
        cache = 2 * self._row_bytes(lay.in_features, dtype) + (64 << 10)
        lay.counts = _open_dataset(g, "counts", cache)
        self.flush()

    # ------------------------------------------------------------------ API
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    @_named_os_errors
    def write(self, name: str, counts: torch.Tensor, v_th: torch.Tensor) -> None:
        """Append one call of layer ``name``: integer ``counts [N, in]``, ``v_th [N, 1]``."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the recorder is closed")
        c = torch.as_tensor(counts).detach()
        if c.dtype not in _TORCH_INTS:
            raise TypeError(f"Recorder.write({name!r}): counts must be an integer tensor, "
                            f"got {c.dtype}")
        if c.dim() != 2:
            raise ValueError(f"Recorder.write({name!r}): counts must be [tokens, in_features], "
                             f"got shape {tuple(c.shape)}")
        c = c.cpu()
        N, D = c.shape
        v = torch.as_tensor(v_th).detach().cpu()
        if v.numel() == N:
            v = v.reshape(N)
        elif not (v.dim() == 2 and v.shape[0] == N):
            raise ValueError(f"Recorder.write({name!r}): v_th must be [tokens, 1] or "
                             f"[tokens, groups] for {N} tokens, got shape {tuple(v.shape)}")
        v = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32).numpy()
        arr = c.numpy()
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        need = _narrowest(lo, hi)
        lay = self._layers.get(name)
        if lay is None:
            lay = self._new_layer(name, D, need, v)
        if D != lay.in_features:
            raise ValueError(f"Recorder.write({name!r}): {D} channels, but the layer was "
                             f"recorded with {lay.in_features}")
        if lay.thresholds.shape[1:] != v.shape[1:]:
            raise ValueError(f"Recorder.write({name!r}): thresholds of shape {v.shape[1:]} "
                             f"per row, but the layer was recorded with {lay.thresholds.shape[1:]}")
        if N == 0:
            return
        from sbsnn.neurons import num_steps

        T = int(num_steps(c, self.coding))
        r0, k0, e0 = lay.rows, lay.calls, lay.n_events
        try:
            if need.itemsize > lay.counts.dtype.itemsize:
                self._widen(lay, need)
            _append(lay.call_offsets, k0, np.array([r0], np.int64))
            _append(lay.call_steps, k0, np.array([T], np.int32))
            if lay.call_documents is not None:
                _append(lay.call_documents, k0, np.array([self._document], np.int64))
            if lay.events is not None:
                _append(lay.call_events, k0, np.array([e0], np.int64))
            ct, s = self.chunk_tokens, 0
            while s < N:                    # piece by piece, one chunk row at a time
                r = r0 + s
                if r // ct >= lay.flushed_rows // ct + 2:
                    # The cache holds two chunk rows: flush before a third is touched,
                    # so that no dirty chunk leaves the cache between flushes.
                    lay.rows = r
                    self.flush()
                n = min(N - s, ct - r % ct)
                _append(lay.counts, r, arr[s:s + n])
                _append(lay.thresholds, r, v[s:s + n])
                s += n
            if lay.events is not None:
                lay.n_events = self._write_events(lay, c, r0, T)
        except BaseException:
            # Interrupted between two appends: trim back so the datasets stay aligned.
            lay.rows, lay.n_events = r0, e0
            try:
                lay.counts.resize(r0, axis=0)
                lay.thresholds.resize(r0, axis=0)
                lay.call_offsets.resize(k0, axis=0)
                lay.call_steps.resize(k0, axis=0)
                if lay.call_documents is not None:
                    lay.call_documents.resize(k0, axis=0)
                for ds in (lay.events or {}).values():
                    ds.resize(e0, axis=0)
                if lay.call_events is not None:
                    lay.call_events.resize(k0, axis=0)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
            raise
        lay.rows, lay.calls, lay.dirty = r0 + N, k0 + 1, True

    @_named_os_errors
    def begin_document(self, index: int, name: str, tokens: int, chars: int = 0) -> None:
        """Start document ``index`` of a document set: every call written until the next
        ``begin_document`` belongs to it (``call_documents``), and ``/documents`` lists it.
        The first call must come before any :meth:`write`; indices must increase."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the recorder is closed")
        if self._document is None and self._layers:
            raise RuntimeError(f"{self.path}: begin_document after calls were written without "
                               f"one; a recording of a document set starts with its first document")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0 or (
                self._document is not None and index <= self._document):
            raise ValueError(f"Recorder.begin_document: index must be an int above the last one "
                             f"({self._document}), got {index!r}")
        if "documents" not in self._file:
            g = self._file.create_group("documents")
            for key, dt in (("index", np.int64), ("tokens", np.int64), ("chars", np.int64)):
                self._series(g, key, dt, _SERIES_CHUNK)
            g.create_dataset("name", shape=(0,), maxshape=(None,), chunks=(_SERIES_CHUNK,),
                             dtype=h5py.string_dtype())
        g = self._file["documents"]
        n = self._documents
        for key, value in (("index", index), ("tokens", tokens), ("chars", chars)):
            _append(g[key], n, np.array([int(value)], np.int64))
        g["name"].resize(n + 1, axis=0)
        g["name"][n] = str(name)
        self._documents = n + 1
        self._document = index

    @_named_os_errors
    def write_trace(self, name: str, call) -> None:
        """Append the time-resolved trace of the call of layer ``name`` just written by
        :meth:`write` (a :class:`sbsnn.sim.trace.TraceCall`), then flush."""
        if self._closed:
            raise RuntimeError(f"{self.path}: the recorder is closed")
        lay = self._layers.get(name)
        if lay is None or lay.calls == 0 or call.tokens == 0 or lay.rows < call.tokens:
            raise ValueError(f"Recorder.write_trace({name!r}): write the call's (non-empty) "
                             f"counts first")
        out = call.outputs.detach().cpu()
        if lay.trace is None:
            tg = lay.group.create_group("trace")
            for key, dt, chunk in _TRACE_SERIES:
                self._series(tg, key, dt, chunk)
            odt = np.float64 if out.dtype == torch.float64 else np.float32
            tg.create_dataset("outputs", shape=(0, out.shape[1]), maxshape=(None, out.shape[1]),
                              dtype=odt, chunks=(_TRACE_OUTPUT_ROWS, out.shape[1]),
                              fillvalue=np.nan, **self._filters(odt))
            lay.group.attrs["traced"] = True
            lay.trace = {k: tg[k] for k in tg}
        t = lay.trace
        row0 = lay.rows - call.tokens      # the rows of the call write() just appended
        sizes = {k: ds.shape[0] for k, ds in t.items()}
        n_out = call.output_tokens
        outputs_row = sizes["outputs"]
        data = {
            "events_pos": call.events_pos.numpy(), "events_neg": call.events_neg.numpy(),
            "first_step": call.first_step.numpy().astype(np.int32),
            "last_step": call.last_step.numpy().astype(np.int32),
            "output_rows": np.arange(row0, row0 + n_out, dtype=np.int64),
            "output_offsets": call.output_offsets[:-1].numpy() + outputs_row,
            "outputs": out.numpy(),
            "call_outputs": np.array([sizes["output_rows"]], np.int64),
            "step_offsets": np.array([sizes["events_pos"]], np.int64),   # last: marks the call done
        }
        try:
            for key, arr in data.items():
                _append(t[key], sizes[key], np.asarray(arr, dtype=t[key].dtype))
        except BaseException:
            try:
                for key, ds in t.items():
                    ds.resize(sizes[key], axis=0)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
            raise
        self.flush()

    def _write_events(self, lay: _Layer, c: torch.Tensor, row0: int, T: int) -> int:
        from sbsnn.sim.events import step_events

        n = lay.n_events
        buf: list[list[np.ndarray]] = [[] for _ in _EVENT_FIELDS]
        size = 0

        def drain():
            nonlocal n, size
            if not size:
                return
            for (f, _), parts in zip(_EVENT_FIELDS, buf):
                _append(lay.events[f], n, np.concatenate(parts))
                parts.clear()
            n += size
            size = 0

        for ev in step_events(c, self.coding, T):
            E = len(ev)
            if not E:
                continue
            cols = (ev.token.numpy() + row0, ev.channel.numpy(), np.full(E, ev.step),
                    ev.polarity.numpy(), np.full(E, ev.weight))
            for (_, dt), parts, col in zip(_EVENT_FIELDS, buf, cols):
                parts.append(np.asarray(col, dtype=dt))
            size += E
            if size >= _EVENT_BATCH:
                drain()
        drain()
        return n

    def _sync_attrs(self) -> None:
        for lay in self._layers.values():
            if lay.dirty:
                lay.group.attrs.update(rows=lay.rows, calls=lay.calls, events=lay.n_events)
                lay.dirty = False
        a = self._file.attrs
        a["rows_written"] = sum(lay.rows for lay in self._layers.values())
        a["layers"] = len(self._layers)
        a["flushes"] = self._flushes

    @_named_os_errors
    def flush(self) -> None:
        """Write everything recorded so far to disk (the engine calls it per block;
        :meth:`write` also does, before a layer's rows since the last flush would
        overflow its chunk cache)."""
        if self._closed:
            return
        self._flushes += 1
        self._sync_attrs()
        self._file.flush()
        for lay in self._layers.values():
            lay.flushed_rows = lay.rows
        if self._file.id.get_mdc_size()[2] > _MDC_LIMIT:
            self._reopen()

    def _abandon(self) -> None:
        """After a write failed (a full disk): HDF5 would retry its flush at every close and
        fail again (and, at interpreter exit, crash). The file's descriptor is pointed at
        /dev/null, so the close completes while the file on disk stays as of its last flush:
        incomplete (``complete=False`` is on disk from the start), read as such."""
        if getattr(self, "_abandoned", False):
            return
        self._abandoned = True
        try:
            fd = self._file.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except Exception:  # noqa: BLE001 - nothing more can be done for the file
            pass

    def close(self, complete: bool = True) -> None:
        """Record ``complete`` and close the file; a second call does nothing.

        With ``complete=False`` (the run failed) errors while finalising become warnings,
        so that they do not hide the run's own exception.
        """
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_abandoned", False):      # a write failed: nothing reaches the disk
            try:
                self._file.close()
            except Exception:  # noqa: BLE001
                pass
            return
        try:
            self._sync_attrs()
            self._file.attrs["complete"] = bool(complete)
            self._file.attrs["closed"] = _now()
        except Exception as e:  # noqa: BLE001
            if complete:
                self._file.close()
                raise
            warnings.warn(f"{self.path}: could not finalise the recording: {e}", stacklevel=2)
        finally:
            if self._file.id.valid:
                self._file.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(complete=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder({str(self.path)!r}, layers={len(self._layers)}, {state})"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ============================================================================ reading
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
            from sbsnn.errors import MissingPathError

            raise MissingPathError(f"{self.path}: no such recording (check the path; "
                                   "recordings come from sbsnn simulate --record FILE.h5)",
                                   filename=self.path)
        if self.path.is_dir():
            raise RecordingError(f"{self.path}: is a directory, not an sbsnn recording")
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
            fmt = a.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
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
            if not self.complete:
                for name in self.layers:
                    self._check(name)
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
                names = [n.decode() if isinstance(n, bytes) else str(n)
                         for n in self._file["layer_names"][()]]
            except OSError:     # damaged by a kill: fall back to the groups
                names = []
        names = list(dict.fromkeys(n for n in names if _group_key(n) in groups))
        known = set(names)
        extra = []
        for key, g in groups.items():     # groups the name list missed
            n = g.attrs.get("name", key)
            n = n.decode() if isinstance(n, bytes) else str(n)
            if n not in known:
                extra.append((int(g.attrs.get("index", 1 << 30)), n))
        return names + [n for _, n in sorted(extra)]

    def _check(self, name: str) -> None:
        """Readable rows, calls and events of a layer of an incomplete recording."""
        g = self._file["layers"][_group_key(name)]
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
            events = min(eg[f].shape[0] for f, _ in _EVENT_FIELDS)
            for f, _ in _EVENT_FIELDS:
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
        key = _group_key(name)
        groups = self._file["layers"]
        if name not in self.layers or key not in groups:
            shown = ", ".join(self.layers[:5]) + (", ..." if len(self.layers) > 5 else "")
            raise KeyError(f"{self.path}: no layer {name!r} in the recording "
                           f"({len(self.layers)} layers: {shown})")
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
                 "name": (lambda v: v.decode() if isinstance(v, bytes) else str(v))(cols["name"][i]),
                 "tokens": int(cols["tokens"][i]), "chars": int(cols["chars"][i])}
                for i in range(n)]

    def events(self, name: str) -> dict | None:
        """``{"token", "channel", "step", "polarity", "weight"}`` datasets, or None when
        the run did not record events (``token`` is the row in :meth:`counts`)."""
        g = self._group(name)
        if "events" not in g:
            return None
        n = self._limit(name, 2)
        return {k: self._view(g["events"][k], n) for k, _ in _EVENT_FIELDS}

    @property
    def traced_layers(self) -> list[str]:
        """Layers the run traced in time (``simulate(..., trace=...)``), in layer order."""
        return [n for n in self.layers if "trace" in self._group(n)]

    def trace(self, name: str):
        """The time-resolved trace of layer ``name`` (a :class:`sbsnn.sim.trace.LayerTrace`
        with every traced call that reads back whole), or None if it was not traced."""
        from sbsnn.sim.trace import LayerTrace, TraceCall

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


def open_recording(path, warn: bool = True):
    """A :class:`Recording`, or for the index of a sharded recording (one shard per rank of
    a ``torchrun`` run) a :class:`sbsnn.sim.shards.ShardedRecording` that reads its shards
    as one recording, with the same accessors."""
    from sbsnn.sim.shards import ShardedRecording, is_index

    if is_index(path):
        return ShardedRecording(path, warn=warn)
    return Recording(path, warn=warn)


def load_recording(path):
    """Open a recording written by ``simulate(..., record=path)`` (or a sharded one, by its
    index) for lazy reading.

    Raises :class:`RecordingError` (a ValueError) when ``path`` is not a recording;
    warns when the recording is incomplete (interrupted run: what was flushed is kept).
    """
    from sbsnn.sim.shards import ShardedRecording, is_index

    return ShardedRecording(path) if is_index(path) else Recording(path)


__all__ = ["Recorder", "Recording", "RecordingError", "RowView", "load_recording", "open_recording"]
