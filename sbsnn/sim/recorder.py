"""Writing a recording of a simulation: spike counts, thresholds and (optionally) events in HDF5.

:func:`sbsnn.sim.simulate` with ``record="spikes.h5"`` writes, for every call of every
:class:`~sbsnn.converters.SpikingLinear`, the input's integer spike counts and per-token
thresholds, chunk by chunk, so memory stays bounded on long texts;
:func:`load_recording` reads the file back lazily.

The file's layout (datasets, groups, format versions) is described in
:mod:`sbsnn.sim.recording_layout`; reading is :mod:`sbsnn.sim.recording_reader` (one file)
and :mod:`sbsnn.sim.shards` (one shard per rank of a ``torchrun`` run, and the openers
:func:`open_recording` / :func:`load_recording` of either kind). This module holds the
writer, :class:`Recorder`, and re-exports the reading names it held before they moved.

Crash behaviour. The file is written at its final path (an existing file is
overwritten) and marked ``complete=False`` from the moment it is opened; only
``close(complete=True)`` marks it complete.

- An exception inside :func:`simulate` (KeyboardInterrupt included) closes the file
  properly with ``complete=False``; it keeps every call written so far (a call cut
  short inside :meth:`Recorder.write` is trimmed away, so the datasets stay aligned).
- A process killed (SIGKILL, the OOM killer) *between* two flushes leaves the file as
  of its last flush: HDF5's metadata cache is told not to evict, so no metadata
  reaches the disk between flushes, and a chunk that a flush stored is rewritten only
  at a later flush. Counts go one of two ways. By default (lzf without shuffle, numba
  installed) sbsnn compresses them itself (:mod:`sbsnn.sim.counts_writer`): a full
  chunk row is stored at once only if no flush stored it before (fresh file space),
  else held in memory until the next flush, as is the partial row; thresholds and
  per-call entries wait for the flush too, and :meth:`Recorder.write` flushes by
  itself every ``DURABLE_BYTES`` (64 MiB) of counts. Through HDF5's filter pipeline
  (other filters), each counts dataset's chunk cache holds two rows of chunks and
  :meth:`Recorder.write` flushes before a layer would touch a third chunk row since
  the last flush. Either way long calls, e.g. ``simulate`` without ``block_size``,
  become durable as they go. The file opens with plain h5py, reads as incomplete and
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
with and without events; 192 SIGKILLs at random times or aimed at flushes), through
HDF5's pipeline: every file opened; 0 of 117 kills between flushes lost a flushed row;
52 of 75 kills inside a flush lost rows after some layers' last complete chunk row,
always detected and cut off; never a wrong number among the rows kept. With sbsnn's
own compression (``benchmarks/kill_recording.py --kills 40``: one-pass runs flushing
every MiB of counts, kills at random times after the first flush): every file opened;
0 of 10 kills between flushes lost a flushed row or read as damaged; 5 of 7 kills
inside a flush lost rows after some layers' last complete chunk row, always detected
and cut off; never a wrong number among the rows kept (23 kills came after the run had
ended; an earlier campaign of 30: 0 of 13 between, 6 of 6 inside, alike).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from sbsnn import __version__
from sbsnn.errors import RecordingError, SbsnnError, os_error
from sbsnn.neurons.formula import binary_negative_error, check_coding
from sbsnn.neurons.trains import min_steps
from sbsnn.sim.counts_writer import CountsWriter, direct_writes
from sbsnn.sim.events import step_events
from sbsnn.sim.recording_layout import (EVENT_CHUNK, EVENT_FIELDS, FORMAT, FORMAT_VERSION,
                                        INDEX_FORMAT, SERIES_CHUNK, TRACE_OUTPUT_ROWS,
                                        TRACE_SERIES, check_record_path, counts_chunk_columns,
                                        group_key, json_default, narrowest_count_dtype)
from sbsnn.sim.recording_reader import Recording, RowView
from sbsnn.sim.shards import load_recording, open_recording

_TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
_EVENT_BATCH = 1 << 20              # events buffered before an append
_MDC_LIMIT = 64 << 20              # reopen the file when HDF5's metadata cache outgrows this
MAX_CHUNK_TOKENS = 1 << 16         # rows per chunk: chunks stay far below CHUNK_BYTES_LIMIT
# With a CountsWriter, write() flushes by itself once this many bytes of counts were
# written since the last flush (a long call becomes durable as it goes).
DURABLE_BYTES = 64 << 20


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
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError) as e:
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
    # The layer whose counts and thresholds datasets this one's are (hard links: layers
    # fed the same tensor, as q, k and v are), or None when it holds its own.
    shares: str | None = None
    flushed_rows: int = 0       # rows on disk at the last flush
    # Counts compressed by sbsnn and written chunk by chunk (lzf without shuffle, numba
    # installed; None: through HDF5's filter pipeline). None for a sharing layer.
    writer: CountsWriter | None = None
    # Per-call entries (first row, T, document) and threshold rows since the last flush,
    # written at the flush; *_stored: what the file's datasets hold.
    pending_calls: list = field(default_factory=list)
    calls_stored: int = 0
    pending_v: list = field(default_factory=list)
    v_stored: int = 0
    dirty: bool = True


class Recorder:
    """Writes counts, thresholds (and optionally events) of every spiking layer call.

    ``Recorder(path, metadata, record_events, compression="lzf", chunk_tokens=256,
    compression_opts=None, shuffle=False, background=True)`` (the filter: on
    Gemma-shaped counts lzf writes in 35 % of gzip level 4's time for 1.5x its bytes,
    and 60 % of gzip 1's; ``benchmarks/bench_recording.py`` measures the candidates;
    lzf is h5py's filter: other HDF5 readers need its plugin. With lzf and no shuffle,
    where numba is installed, sbsnn compresses the counts chunks itself and hands HDF5
    the stored bytes: :mod:`sbsnn.sim.chunk_codec`, the same file; ``background``: on a
    thread of its own while the simulation goes on)
    truncates ``path`` (an existing file is overwritten) and marks it incomplete at
    once. ``write(name, counts, v_th)`` appends one call, ``flush()`` makes everything
    so far durable, ``close(complete)`` records whether the run finished (idempotent).
    Also a context manager (complete when its block exits without an exception).

    Memory: besides a few numbers per layer (and the thresholds and per-call entries
    since the last flush), up to two rows of chunks per counts dataset (about ``2 x
    chunk_tokens x in_features x itemsize`` bytes per layer written to, in HDF5's chunk
    cache or sbsnn's row buffers; lower ``chunk_tokens`` for very many layers, e.g. MoE
    experts), up to 4 chunk rows per layer being compressed, and HDF5's metadata
    cache, which is emptied (file closed and reopened after a flush) when it exceeds
    64 MiB.
    """

    def __init__(self, path, metadata: dict | None = None, record_events: bool = False,
                 compression="lzf", chunk_tokens: int = 256, compression_opts=None,
                 shuffle: bool = False, background: bool = True):
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or not (
                1 <= chunk_tokens <= MAX_CHUNK_TOKENS):
            raise ValueError(f"chunk_tokens must be an int in 1..{MAX_CHUNK_TOKENS} (readers "
                             f"decompress whole chunks), got {chunk_tokens!r}")
        self.path = Path(path)
        self.metadata = dict(metadata or {})
        self.record_events = bool(record_events)
        self.coding = str(self.metadata.get("coding") or "ternary")
        self.compression = compression
        self.compression_opts = compression_opts
        self.shuffle = bool(shuffle)
        self.chunk_tokens = chunk_tokens
        self._direct = direct_writes(compression, self.shuffle)
        if not isinstance(background, bool):
            raise TypeError(f"Recorder: background must be True or False, got {background!r}")
        # One thread that compresses counts chunks while the simulation goes on.
        self._kinds: dict = {}      # dataset kind -> (type, dataspace, creation properties)
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="sbsnn-recorder")
                      if self._direct and background else None)
        self._layers: dict[str, _Layer] = {}
        self._document: int | None = None     # index of the document being recorded
        self._documents = 0
        self._flushes = 0
        self._unflushed = 0                   # counts bytes written since the last flush
        self._reopens = 0
        self._closed = False
        # The last call written: (counts, v_th, layer name, T), kept until the next write
        # so that a sibling layer handed the very same tensors links to its rows.
        self._last = None
        meta_json = json.dumps(self.metadata, default=json_default)
        check_record_path(self.path)
        # Default (earliest) file format on purpose: its superblock has no "open for
        # writing" flag, so a file whose writer was killed still opens without h5clear.
        try:
            self._file = h5py.File(self.path, "w")
        except OSError as e:
            raise os_error(e, self.path, "creating the recording") from None
        try:
            self._no_metadata_evictions()
            a = self._file.attrs
            a["format"] = FORMAT
            a["format_version"] = FORMAT_VERSION
            a["complete"] = False
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
            self._layers_group = self._file.create_group("layers")
            self._pending_names: list[str] = []     # layer names, written at the next flush
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
        self._layers_group = self._file["layers"]
        for lay in self._layers.values():
            self._bind(lay)
        self._reopens += 1

    def _row_bytes(self, D: int, dtype) -> int:
        cols = counts_chunk_columns(D, self.chunk_tokens)
        return self.chunk_tokens * math.ceil(D / cols) * cols * np.dtype(dtype).itemsize

    def _bind(self, lay: _Layer) -> None:
        g = lay.group = self._file["layers"][lay.key]
        lay.shares = g.attrs.get("shares")
        lay.counts = _open_dataset(g, "counts", self._counts_cache(lay.in_features,
                                                                   g["counts"].dtype))
        if lay.shares is not None:
            lay.writer = None
        elif lay.writer is not None:            # reopened: the same rows, a new handle
            lay.writer.ds = lay.counts
        elif self._direct:
            lay.writer = CountsWriter(lay.counts, lay.rows, self._pool)
        lay.thresholds = g["thresholds"]
        lay.call_offsets = g["call_offsets"]
        lay.call_steps = g["call_steps"]
        if "call_documents" in g:
            lay.call_documents = g["call_documents"]
        if "events" in g:
            lay.call_events = g["call_events"]
            lay.events = {f: g["events"][f] for f, _ in EVENT_FIELDS}
        if "trace" in g:
            lay.trace = {k: g["trace"][k] for k in g["trace"]}

    def _counts_cache(self, D: int, dtype) -> int | None:
        """A counts dataset's chunk cache: two chunk rows when HDF5's pipeline writes them
        (partial chunks rewritten only at a flush), HDF5's default for a CountsWriter."""
        return None if self._direct else 2 * self._row_bytes(D, dtype) + (64 << 10)

    def _filters(self, dtype) -> dict:
        # fletcher32: a chunk damaged by a kill during a flush fails to read instead of
        # decoding to wrong numbers.
        f = {"fletcher32": True}
        if self.compression is not None:
            opts = self.compression_opts if self.compression == "gzip" else None
            f.update(compression=self.compression, compression_opts=opts,
                     shuffle=self.shuffle and np.dtype(dtype).itemsize > 1)
        return f

    def _new_counts(self, group: h5py.Group, key: str, D: int, dtype) -> h5py.Dataset:
        dtype = np.dtype(dtype)
        cols = counts_chunk_columns(D, self.chunk_tokens)
        ds = self._create(group, key, dtype, (D,), (self.chunk_tokens, cols))
        cache = self._counts_cache(D, dtype)
        return ds if cache is None else _open_dataset(group, key, cache)

    def _series(self, group, key, dtype, chunk, tail=(), fill=None):
        return self._create(group, key, np.dtype(dtype), tuple(tail), (chunk, *tail), fill)

    def _create(self, group, key: str, dtype: np.dtype, tail: tuple, chunks: tuple,
                fill=None) -> h5py.Dataset:
        """A new empty extendable dataset ``[0, *tail]``: the first of its kind through
        h5py's create_dataset, the next ones from its creation properties (h5py builds
        them afresh at every call: a third of the cost of a new layer)."""
        kind = (dtype.str, tail, chunks, None if fill is None else float(fill))
        made = self._kinds.get(kind)
        if made is None:
            ds = group.create_dataset(key, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                      chunks=chunks, fillvalue=fill, **self._filters(dtype))
            space = h5py.h5s.create_simple((0, *tail), (h5py.h5s.UNLIMITED, *tail))
            self._kinds[kind] = (ds.id.get_type(), space, ds.id.get_create_plist())
            return ds
        tid, space, dcpl = made
        return h5py.Dataset(h5py.h5d.create(group.id, key.encode(), tid, space, dcpl=dcpl))

    def _new_layer(self, name: str, D: int, count_dtype, v: np.ndarray | None,
                   shares: _Layer | None = None) -> _Layer:
        if D < 1:
            raise ValueError(f"Recorder.write({name!r}): counts have no channel")
        key = group_key(name)
        g = self._layers_group.create_group(key)
        index = len(self._layers)
        # rows, calls and events: written at every flush (a new layer is dirty)
        g.attrs.update(name=name, index=index, in_features=D)
        lay = _Layer(key=key, in_features=D, group=g)
        if shares is not None:          # hard links: one dataset, two names
            g["counts"] = lay.counts = shares.counts
            g["thresholds"] = lay.thresholds = shares.thresholds
            g.attrs["shares"] = lay.shares = shares.key
        else:
            lay.counts = self._new_counts(g, "counts", D, count_dtype)
            # NaN fill: a row that was never written reads as NaN, never as a threshold.
            lay.thresholds = self._series(g, "thresholds", v.dtype, self.chunk_tokens,
                                          v.shape[1:], fill=np.nan)
            if self._direct:
                lay.writer = CountsWriter(lay.counts, pool=self._pool)
        lay.call_offsets = self._series(g, "call_offsets", np.int64, SERIES_CHUNK)
        lay.call_steps = self._series(g, "call_steps", np.int32, SERIES_CHUNK)
        if self._document is not None:
            lay.call_documents = self._series(g, "call_documents", np.int64, SERIES_CHUNK)
        if self.record_events:
            lay.call_events = self._series(g, "call_events", np.int64, SERIES_CHUNK)
            eg = g.create_group("events")
            lay.events = {f: self._series(eg, f, dt, EVENT_CHUNK) for f, dt in EVENT_FIELDS}
        self._pending_names.append(name)
        self._layers[name] = lay
        return lay

    def _widen(self, lay: _Layer, dtype: np.dtype) -> None:
        """Copy the counts into a wider dataset (block by block) and swap it in."""
        if lay.writer is not None:
            lay.writer.sync()           # every row in the dataset before it is copied
            lay.writer = None
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
        lay.counts = _open_dataset(g, "counts", self._counts_cache(lay.in_features, dtype))
        if self._direct:
            lay.writer = CountsWriter(lay.counts, lay.rows, self._pool)
        for other in self._layers.values():      # its sharers link to the new dataset
            if other.shares == lay.key:
                del other.counts
                del other.group["counts"]
                other.group["counts"] = g["counts"]
                other.counts = other.group["counts"]
        self.flush()

    def _share(self, name: str, lay: _Layer | None, src: _Layer, N: int) -> _Layer | None:
        """The layer to append a call of ``name`` to as rows of ``src`` (which has just
        written the same counts and thresholds), or None when the rows do not line up."""
        if lay is None:
            if src.rows != N or src.shares is not None:
                return None
            lay = self._new_layer(name, src.in_features, None, None, shares=src)
            return lay
        return lay if lay.shares == src.key and lay.rows == src.rows - N else None

    def _unshare(self, lay: _Layer) -> None:
        """Give ``lay`` datasets of its own (copies of its rows so far): its input no
        longer is its sibling's."""
        g = lay.group
        for other in self._layers.values():    # the sibling's rows, all in its datasets
            if other.key == lay.shares:
                if other.writer is not None:
                    other.writer.sync()
                self._sync_series(other)
        src_counts, src_v = lay.counts, lay.thresholds
        for key in ("counts.own", "thresholds.own"):
            if key in g:
                del g[key]
        own = self._new_counts(g, "counts.own", lay.in_features, src_counts.dtype)
        v = self._series(g, "thresholds.own", src_v.dtype, self.chunk_tokens, src_v.shape[1:],
                         fill=np.nan)
        own.resize(lay.rows, axis=0)
        v.resize(lay.rows, axis=0)
        step = self.chunk_tokens
        for a in range(0, lay.rows, step):
            b = min(a + step, lay.rows)
            own[a:b] = src_counts[a:b]
            v[a:b] = src_v[a:b]
        del own, v, src_counts, src_v, lay.counts, lay.thresholds
        del g["counts"], g["thresholds"]
        g.move("counts.own", "counts")
        g.move("thresholds.own", "thresholds")
        lay.shares = None
        lay.writer = None
        lay.v_stored = lay.rows
        g.attrs.pop("shares", None)
        self._bind(lay)

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
        last, self._last = self._last, None
        if (last is not None and counts is last[0] and v_th is last[1] and last[2] != name
                and not self.record_events):
            src = self._layers[last[2]]
            N = int(counts.shape[0])
            lay = self._share(name, self._layers.get(name), src, N)
            if lay is not None:
                if N:
                    self._append_calls(lay, lay.rows, last[3])
                    lay.rows, lay.calls, lay.dirty = lay.rows + N, lay.calls + 1, True
                self._last = last
                return
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
        need = narrowest_count_dtype(lo, hi)
        lay = self._layers.get(name)
        if lay is not None and lay.shares is not None:
            self._unshare(lay)
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
        # T from the range scanned above (numpy's min/max): torch.aminmax over int16, as
        # num_steps scans, cost a third of an uncompressed write.
        check_coding(self.coding, "num_steps")
        if self.coding == "binary" and lo < 0:
            raise binary_negative_error("num_steps", lo)
        T = min_steps(self.coding, lo, hi)
        r0, k0, e0 = lay.rows, lay.calls, lay.n_events
        try:
            if need.itemsize > lay.counts.dtype.itemsize:
                self._widen(lay, need)
            self._append_calls(lay, r0, T)
            if lay.events is not None:
                _append(lay.call_events, k0, np.array([e0], np.int64))
            ct, s = self.chunk_tokens, 0
            row_bytes = D * lay.counts.dtype.itemsize
            while s < N:                    # piece by piece
                r = r0 + s
                if lay.writer is not None:
                    # Durable as it goes: a flush every DURABLE_BYTES of counts.
                    if self._unflushed >= DURABLE_BYTES:
                        lay.rows = r
                        self.flush()
                    n = min(N - s, -(-(DURABLE_BYTES - self._unflushed) // row_bytes))
                    lay.writer.append(arr[s:s + n].astype(lay.writer.dtype, copy=False))
                    self._unflushed += n * row_bytes
                else:
                    # One chunk row at a time: the cache holds two chunk rows, so flush
                    # before a third is touched (no dirty chunk leaves the cache
                    # between flushes).
                    if r // ct >= lay.flushed_rows // ct + 2:
                        lay.rows = r
                        self.flush()
                    n = min(N - s, ct - r % ct)
                    _append(lay.counts, r, arr[s:s + n])
                lay.pending_v.append(np.array(v[s:s + n]))
                s += n
            if lay.events is not None:
                lay.n_events = self._write_events(lay, c, r0, T)
        except BaseException:
            # Interrupted between two appends: trim back so the datasets stay aligned.
            lay.rows, lay.n_events = r0, e0
            try:
                if lay.writer is None:
                    lay.counts.resize(r0, axis=0)
                else:
                    lay.writer.truncate(r0)
                self._trim_series(lay, r0, k0)
                for ds in (lay.events or {}).values():
                    ds.resize(e0, axis=0)
                if lay.call_events is not None:
                    lay.call_events.resize(k0, axis=0)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
            raise
        lay.rows, lay.calls, lay.dirty = r0 + N, k0 + 1, True
        self._last = (counts, v_th, name, T)

    def _append_calls(self, lay: _Layer, r0: int, T: int) -> None:
        """One call's entries in the per-call series (first row, T, document), written
        at the next flush."""
        doc = self._document if lay.call_documents is not None else 0
        lay.pending_calls.append((r0, T, doc))

    def _call_series(self, lay: _Layer):
        return ((lay.call_offsets, np.int64), (lay.call_steps, np.int32),
                (lay.call_documents, np.int64))

    def _sync_series(self, lay: _Layer) -> None:
        """Write the thresholds and per-call entries held since the last flush (again
        at the same rows if an earlier try was cut short)."""
        if lay.pending_v:
            v = np.concatenate(lay.pending_v)
            _append(lay.thresholds, lay.v_stored, v)
            lay.v_stored += len(v)
            lay.pending_v.clear()
        if lay.pending_calls:
            a = np.array(lay.pending_calls, np.int64)
            for col, (ds, dt) in enumerate(self._call_series(lay)):
                if ds is not None:
                    _append(ds, lay.calls_stored, a[:, col].astype(dt))
            lay.calls_stored += len(a)
            lay.pending_calls.clear()

    def _trim_series(self, lay: _Layer, rows: int, calls: int) -> None:
        """Forget thresholds from row ``rows`` and per-call entries from ``calls`` on."""
        if lay.v_stored > rows:
            lay.thresholds.resize(rows, axis=0)
            lay.v_stored, lay.pending_v = rows, []
        elif lay.pending_v:
            v = np.concatenate(lay.pending_v)[:rows - lay.v_stored]
            lay.pending_v = [v] if len(v) else []
        if lay.calls_stored > calls:
            for ds, _ in self._call_series(lay):
                if ds is not None:
                    ds.resize(calls, axis=0)
            lay.calls_stored, lay.pending_calls = calls, []
        else:
            del lay.pending_calls[calls - lay.calls_stored:]

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
                self._series(g, key, dt, SERIES_CHUNK)
            g.create_dataset("name", shape=(0,), maxshape=(None,), chunks=(SERIES_CHUNK,),
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
            for key, dt, chunk in TRACE_SERIES:
                self._series(tg, key, dt, chunk)
            odt = np.float64 if out.dtype == torch.float64 else np.float32
            tg.create_dataset("outputs", shape=(0, out.shape[1]), maxshape=(None, out.shape[1]),
                              dtype=odt, chunks=(TRACE_OUTPUT_ROWS, out.shape[1]),
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
        n = lay.n_events
        buf: list[list[np.ndarray]] = [[] for _ in EVENT_FIELDS]
        size = 0

        def drain():
            nonlocal n, size
            if not size:
                return
            for (f, _), parts in zip(EVENT_FIELDS, buf):
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
            for (_, dt), parts, col in zip(EVENT_FIELDS, buf, cols):
                parts.append(np.asarray(col, dtype=dt))
            size += E
            if size >= _EVENT_BATCH:
                drain()
        drain()
        return n

    def _sync_writers(self) -> None:
        """Store everything held in memory: counts rows, thresholds, per-call entries,
        layer names."""
        writers = [lay.writer for lay in self._layers.values() if lay.writer is not None]
        for w in writers:           # this thread, while the pool finishes its rows
            w.store_buffered()
        for w in writers:
            w.drain()
        for lay in self._layers.values():
            self._sync_series(lay)
        if self._pending_names:
            n = self._names.shape[0]
            self._names.resize(n + len(self._pending_names), axis=0)
            self._names[n:] = np.array(self._pending_names, dtype=object)
            self._pending_names.clear()

    def _sync_attrs(self) -> None:
        for lay in self._layers.values():
            if lay.dirty:           # modify: in place once they exist (update recreates)
                a = lay.group.attrs
                for key, value in (("rows", lay.rows), ("calls", lay.calls),
                                   ("events", lay.n_events)):
                    a.modify(key, value)
                lay.dirty = False
        a = self._file.attrs
        a.modify("rows_written", sum(lay.rows for lay in self._layers.values()))
        a.modify("layers", len(self._layers))
        a.modify("flushes", self._flushes)

    @_named_os_errors
    def flush(self) -> None:
        """Write everything recorded so far to disk (the engine calls it per block;
        :meth:`write` also does, before a layer's rows since the last flush would
        overflow its chunk cache)."""
        if self._closed:
            return
        self._flushes += 1
        self._unflushed = 0
        self._sync_writers()
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
        self._last = None
        if getattr(self, "_abandoned", False):      # a write failed: nothing reaches the disk
            self._stop_pool()
            try:
                self._file.close()
            except Exception:  # noqa: BLE001
                pass
            return
        try:
            self._sync_writers()
            self._sync_attrs()
            self._file.attrs["complete"] = bool(complete)
            self._file.attrs["closed"] = _now()
        except Exception as e:  # noqa: BLE001
            if complete:
                self._file.close()
                raise
            warnings.warn(f"{self.path}: could not finalise the recording: {e}", stacklevel=2)
        finally:
            self._stop_pool()
            if self._file.id.valid:
                self._file.close()

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(complete=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder({str(self.path)!r}, layers={len(self._layers)}, {state})"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_FORMAT", "Recorder", "Recording", "RecordingError",
           "RowView", "check_record_path", "load_recording", "open_recording"]
