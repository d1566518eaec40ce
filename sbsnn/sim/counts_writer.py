"""Writing a counts dataset chunk row by chunk row, compressed by sbsnn, not by HDF5.

:class:`CountsWriter` appends rows to one ``counts`` dataset of a recording (chunked
``chunk_tokens`` rows by ``cols`` columns, filters ``lzf`` + ``fletcher32``, the
layout of :mod:`sbsnn.sim.recording_layout`): it keeps the chunk row being filled in
memory and, once a chunk row is full, encodes its chunks with
:mod:`sbsnn.sim.chunk_codec` (numba, without the GIL) and stores them with
``write_direct_chunk``. HDF5's filter pipeline never runs on counts, and a chunk is
compressed once instead of at every flush that finds it dirty. The file is the one the
pipeline would write: plain h5py reads it.

The crash rules of :mod:`sbsnn.sim.recorder` hold: a chunk row is written between two
flushes only if no flush has written it yet (a fresh allocation, which metadata on disk
does not reference); a chunk row that a flush wrote while it was partial is *held* in
memory once full and rewritten at the next flush, as is the partial row itself
(:meth:`sync`). Memory: the partial row and one held row (two after a call cut
short), ``chunk_tokens x in_features`` counts each, and with a background ``pool`` up
to ``MAX_IN_FLIGHT`` chunk rows being encoded (copies, and their encoded bytes until
stored).

:meth:`append` changes nothing when a write fails (the chunk rows it stored count as
written, so that they are rewritten only at a flush); :meth:`truncate` takes the writer
back to a call's first row when the recorder cuts a call short.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Executor

import h5py
import numpy as np

from sbsnn.sim.chunk_codec import LZF_FILTER, encoded_bound, kernels


def direct_writes(compression, shuffle: bool) -> bool:
    """Whether counts written with these filters go through :class:`CountsWriter`:
    lzf without shuffle (the recorder's default) where numba is installed."""
    return compression == "lzf" and not shuffle and kernels() is not None


MAX_IN_FLIGHT = 4       # chunk rows a writer has being encoded at once


def encode_row(rows: np.ndarray, cols: int) -> list[tuple[int, np.ndarray]]:
    """The stored chunks of one chunk row ``rows [chunk_tokens, width]``: (first column,
    bytes) for each ``cols`` columns, the last zero-padded. Runs on any thread (the
    kernel releases the GIL)."""
    enc = kernels()[2]
    ct, width = rows.shape
    htab = np.empty(1 << 14, np.int32)
    out = []
    for c0 in range(0, width, cols):
        block = rows[:, c0:c0 + cols]
        if block.shape[1] != cols:
            pad = np.zeros((ct, cols), rows.dtype)
            pad[:, :block.shape[1]] = block
            block = pad
        src = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
        dst = np.empty(encoded_bound(src.size), np.uint8)
        out.append((c0, dst[:enc(src, dst, htab)]))
    return out


class CountsWriter:
    """Buffered, directly written rows of the counts dataset ``ds`` (which holds ``rows``
    rows already, all of them stored). With ``pool`` (an executor of one thread), chunk
    rows are encoded there while the caller goes on, and stored (on the caller's thread,
    in order) at its next :meth:`append` that finds them done, or at :meth:`sync`."""

    def __init__(self, ds: h5py.Dataset, rows: int = 0, pool: Executor | None = None):
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        if filters != [LZF_FILTER, h5py.h5z.FILTER_FLETCHER32]:
            raise ValueError(f"CountsWriter: {ds.name} has filters {filters}, not lzf + fletcher32")
        self.ds = ds
        self.ct, self.cols = (int(c) for c in ds.chunks)
        self.width = int(ds.shape[1])
        self.dtype = ds.dtype
        self.rows = rows
        self.base = rows // self.ct * self.ct          # first row of the row being filled
        self.written = math.ceil(rows / self.ct)       # chunk rows stored at least once
        self.stored = rows                             # rows in the dataset's extent
        self.synced = rows                             # rows stored at the last sync
        self.buf = np.zeros((self.ct, self.width), self.dtype)
        if rows > self.base:
            self.buf[:rows - self.base] = ds[self.base:rows]
        # Chunk rows a flush stored while partial, once full: rewritten at the next flush
        # (the row being filled at the last flush; after a call cut short, also a row
        # appended past it). Their buffers are kept for reuse.
        self.held: dict[int, np.ndarray] = {}
        self._spares: list[np.ndarray] = []
        self.pool = pool
        self.in_flight: deque = deque()                # (chunk row, future of encode_row)

    # ------------------------------------------------------------------ writing
    def append(self, arr: np.ndarray) -> None:
        """Append rows ``arr [n, width]`` (of this dataset's dtype)."""
        self._drain(wait=False)
        n, ct = arr.shape[0], self.ct
        fill, base, s = self.rows - self.base, self.base, 0
        full: list[tuple[int, np.ndarray]] = []      # chunk rows this call completes
        if fill + n >= ct:
            if fill:                                    # buf past `rows` is free space
                self.buf[fill:] = arr[:ct - fill]
                full.append((base // ct, self.buf))
            else:
                full.append((base // ct, arr[:ct]))
            s, base, fill = ct - fill, base + ct, 0
            while n - s >= ct:
                full.append((base // ct, arr[s:s + ct]))
                s, base = s + ct, base + ct
        hold = [(j, rows) for j, rows in full if j < self.written]
        for j, rows in full:
            if j >= self.written:
                self._write_row(j, rows)
                self.written = j + 1
        # Nothing below fails: the call is committed.
        for j, rows in hold:
            keep = self._spares.pop() if self._spares else np.empty((ct, self.width), self.dtype)
            keep[:] = rows
            self.held[j] = keep
        rest = n - s
        self.buf[fill:fill + rest] = arr[s:]
        self.base, self.rows = base, base + fill + rest

    def _write_row(self, j: int, rows: np.ndarray) -> None:
        """Encode and store full chunk row ``j`` (``rows``: ``ct`` rows; on the pool where
        there is one), first growing the extent over it (never shrunk here: HDF5 would
        rewrite the edge chunk through its pipeline)."""
        end = (j + 1) * self.ct
        if self.stored < end:
            self.ds.resize(end, axis=0)
            self.stored = end
        if self.pool is None:
            self._store(j, encode_row(rows, self.cols))
            return
        # A copy: the rows' buffer is reused (and the caller's counts are not ours).
        self.in_flight.append((j, self.pool.submit(encode_row, np.array(rows), self.cols)))
        if len(self.in_flight) > MAX_IN_FLIGHT:
            self._drain(wait=True, keep=MAX_IN_FLIGHT)

    def _store(self, j: int, chunks) -> None:
        for c0, data in chunks:
            self.ds.id.write_direct_chunk((j * self.ct, c0), data)

    def _drain(self, wait: bool, keep: int = 0) -> None:
        """Store the encoded chunk rows, oldest first: those done (all but ``keep``
        with ``wait``)."""
        q = self.in_flight
        while q and (len(q) > keep if wait else q[0][1].done()):
            j, fut = q[0]
            self._store(j, fut.result())
            q.popleft()

    def sync(self) -> None:
        """Store every row: the held chunk row and the partial one (at a flush)."""
        self.store_buffered()
        self.drain()

    def store_buffered(self) -> None:
        """Encode and store the held and the partial chunk row on this thread (the first
        half of :meth:`sync`: the pool meanwhile finishes the rows in flight)."""
        if self.stored < self.rows:             # HDF5 stores chunks inside the extent only
            self.ds.resize(self.rows, axis=0)
            self.stored = self.rows
        for j in sorted(self.held):
            self._store(j, encode_row(self.held[j], self.cols))
            self._spares.append(self.held.pop(j))
        if self.rows > max(self.base, self.synced):     # a partial row, grown since
            self.buf[self.rows - self.base:] = 0
            self._store(self.base // self.ct, encode_row(self.buf, self.cols))
            self.written = max(self.written, self.base // self.ct + 1)
        self.synced = self.rows

    def drain(self) -> None:
        """Store the rows in flight (the second half of :meth:`sync`)."""
        self._drain(wait=True)

    def truncate(self, rows: int) -> None:
        """Forget every row from ``rows`` on (a call cut short: the recorder trims its
        datasets back to their first row)."""
        if rows >= self.rows:
            return
        self._drain(wait=True)
        ct = self.ct
        j = rows // ct
        if rows < self.base:                    # back into a chunk row that went out
            if j in self.held:
                self.buf[:] = self.held[j]
            else:                               # stored by append: read it back
                self.buf[:rows - j * ct] = self.ds[j * ct:rows]
            self.base = j * ct
        for k in [k for k in self.held if k >= j]:
            self._spares.append(self.held.pop(k))
        self.rows = rows
        self.synced = min(self.synced, rows)
        if self.stored > rows:
            self.ds.resize(rows, axis=0)
            self.stored = rows


__all__ = ["CountsWriter", "direct_writes", "encode_row"]
