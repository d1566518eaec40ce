"""The on-disk layout of a recording, shared by its writer, its reader and the shards.

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
                              chunked (chunk_tokens rows), lzf + fletcher32
                              (files written before issue 22: shuffle + gzip 4;
                              h5py reads either, the layout is the same). sbsnn
                              compresses these chunks itself where numba is
                              installed (sbsnn.sim.chunk_codec: the LZF stream
                              h5py's filter decodes, stored with
                              write_direct_chunk, filter mask 0); the file is the
                              same format, version unchanged
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

A sharded recording's index (``format="sbsnn-recording-index"``) is described in
:mod:`sbsnn.sim.shards`.

Readers trust no size or offset of the file: :func:`check_stored` holds every dataset to
what the file stores before it is read, and :class:`sbsnn.sim.Recording` checks every
series that indexes another (call offsets, call_events, call_documents, the documents,
the trace series) before use (``docs/errors.md``, "Recordings").
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np

from sbsnn.errors import (MissingPathError, OptionError, PathIsDirectoryError, PathNotDirectoryError,
                          RecordingError)

FORMAT = "sbsnn-recording"
INDEX_FORMAT = "sbsnn-recording-index"   # a sharded recording's index (sbsnn.sim.shards)
FORMAT_VERSION = 3

INT_TYPES = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64))
COUNT_CHUNK_BYTES = 1 << 20         # at most this many int8 bytes per counts chunk
EVENT_CHUNK = 1 << 13               # events per chunk
SERIES_CHUNK = 256                  # entries per chunk of call_offsets / call_steps
EVENT_FIELDS = (("token", np.int64), ("channel", np.int32), ("step", np.int32),
                ("polarity", np.int8), ("weight", np.int64))
# Trace datasets: (name, dtype, chunk length); `outputs` (the outputs' float type) apart.
TRACE_SERIES = (("step_offsets", np.int64, SERIES_CHUNK), ("events_pos", np.int64, 4096),
                ("events_neg", np.int64, 4096), ("first_step", np.int32, 4096),
                ("last_step", np.int32, 4096), ("output_rows", np.int64, 4096),
                ("output_offsets", np.int64, 4096), ("call_outputs", np.int64, SERIES_CHUNK))
TRACE_OUTPUT_ROWS = 64              # rows per chunk of trace/outputs
# The largest chunk a reader decompresses: sbsnn writes chunks of at most a few MiB (a
# counts chunk holds COUNT_CHUNK_BYTES counts); a chunk of gigabytes compresses to a few
# megabytes of zeros, a memory bomb in a small file.
CHUNK_BYTES_LIMIT = 256 << 20
# A kill during a flush may leave chunks unwritten (never allocated) at the end of a
# dataset of an incomplete file: its last two chunk rows, and what HDF5's default chunk
# cache (1 MiB) held of a dataset without a cache of its own (events, trace series).
_DEFAULT_CHUNK_CACHE = 1 << 20


def narrowest_count_dtype(lo: int, hi: int) -> np.dtype:
    """The narrowest integer type holding ``-peak..peak`` (peak = max(|lo|, |hi|)):
    symmetric, as the counts' own type, so a stored count's negation never overflows
    (int8 -128 would read back as a count whose abs() is -128)."""
    peak = max(-lo, hi)
    for dt in INT_TYPES:
        if peak <= np.iinfo(dt).max:
            return dt
    raise ValueError(f"counts {lo}..{hi} do not fit int64")


def counts_chunk_columns(in_features: int, chunk_tokens: int) -> int:
    """Columns per chunk of a counts dataset (a chunk is ``chunk_tokens`` rows by these)."""
    return min(in_features, max(1, COUNT_CHUNK_BYTES // chunk_tokens))


def check_stored(ds: h5py.Dataset, path, what: str, complete: bool = True) -> None:
    """Refuse, naming ``path`` and ``what``, a dataset whose extent claims more than the
    file stores: a chunked dataset with fewer chunks written than its extent covers (a
    dataset resized to 10^12 rows reads back as fill values and exhausts memory), a chunk
    over CHUNK_BYTES_LIMIT, contiguous storage shorter than the extent. An incomplete file
    may lack what a kill during a flush left unwritten (module docstring of
    :mod:`sbsnn.sim.recorder`): its last two chunk rows and a chunk cache's worth."""
    if ds.is_virtual or ds.id.get_create_plist().get_external_count():
        raise RecordingError(f"{path}: {what} keeps its data in other files (a virtual or "
                             f"external dataset); sbsnn reads only what a recording holds "
                             f"itself: simulate again")
    shape = ds.shape
    if shape is None:                                   # a null dataspace holds nothing
        return
    size = math.prod(int(n) for n in shape)
    if size == 0:
        return
    elem = int(ds.id.get_type().get_size())
    chunks = ds.chunks
    if chunks is None:
        stored = int(ds.id.get_storage_size())
        if stored < size * elem:
            raise RecordingError(
                f"{path}: {what} has shape {shape} ({size * elem} bytes) but the file stores "
                f"{stored} bytes of it; the file is damaged or was edited: simulate again")
        return
    chunk_bytes = math.prod(int(c) for c in chunks) * elem
    if chunk_bytes > CHUNK_BYTES_LIMIT:
        raise RecordingError(
            f"{path}: {what} has chunks of {chunk_bytes} bytes, over the {CHUNK_BYTES_LIMIT} "
            f"bytes sbsnn decompresses at once (sbsnn writes chunks of a few MiB); the file "
            f"was not written by sbsnn's Recorder: simulate again")
    per_row = math.prod(-(-int(n) // int(c)) for n, c in zip(shape[1:], chunks[1:]))
    need = -(-int(shape[0]) // int(chunks[0])) * per_row
    slack = 0 if complete else 2 * per_row + _DEFAULT_CHUNK_CACHE // chunk_bytes + 2
    have = int(ds.id.get_num_chunks())
    if have < need - slack:
        rows = f"{shape[0]} rows" if len(shape) else "its extent"
        raise RecordingError(
            f"{path}: {what} claims {rows} but the file stores {have} of the {need} chunks "
            f"they need (a dataset resized past what was written: a damaged or edited "
            f"file); refused rather than read as fill values: simulate again")


def group_key(name: str) -> str:
    """The ``/layers`` group of layer ``name``: the name percent-escaped ('%00' for '')."""
    return quote(name, safe="") if name else "%00"


def as_str(v) -> str:
    """An HDF5 string (bytes or str) as str."""
    return v.decode() if isinstance(v, bytes) else str(v)


def json_default(o):
    """``json.dumps(default=...)`` for run metadata: numpy scalars, sets, anything else as str."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)     # torch dtypes, paths, enums...


def check_record_path(path, option: str = "record") -> Path:
    """Where a recording may be written: not a directory, in a directory that exists, and
    not over a file that is not an sbsnn recording (sbsnn overwrites only its own)."""
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
    if p.exists() and not p.is_file():
        raise OptionError(f"{p}: exists and is not a regular file (a directory, pipe or "
                          f"device); choose another {option} file")
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


__all__ = ["CHUNK_BYTES_LIMIT", "EVENT_FIELDS", "FORMAT", "FORMAT_VERSION", "INDEX_FORMAT",
           "TRACE_SERIES", "as_str", "check_record_path", "check_stored", "counts_chunk_columns",
           "group_key", "json_default", "narrowest_count_dtype"]
