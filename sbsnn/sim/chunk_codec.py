"""Encoding a counts chunk as HDF5 stores it under the filters ``lzf`` + ``fletcher32``.

The recorder compresses its counts chunks itself and hands the stored bytes to HDF5
(``write_direct_chunk``): the compression then runs in a numba kernel that releases the
GIL, off HDF5's filter pipeline (which h5py runs under the GIL, one chunk after another).
The bytes are what h5py's own pipeline would accept, so any h5py (and any HDF5 reader
with the LZF plugin) decodes them; only the LZF match choices may differ from liblzf's.

- ``lzf_compress`` writes an LZF stream (the format of liblzf, which h5py's lzf
  filter decodes): a control byte below 32 is a run of ``ctrl + 1`` literal bytes; any
  other is a back reference of ``(ctrl >> 5) + 2`` bytes (``7 + next byte + 2`` when the
  top three bits are all set) at distance ``((ctrl & 31) << 8 | next byte) + 1``.
- ``fletcher32`` is HDF5's ``H5_checksum_fletcher32`` (16-bit big-endian words,
  sums folded every 360 words), stored little-endian after the data.
- ``encode_chunk`` is the stored chunk: the LZF stream, then the checksum. Always LZF,
  with filter mask 0, even where the stream outgrows the raw bytes (by at most one byte
  in 32; counts chunks shrink to about half or less): HDF5 2.0 keeps a direct chunk's
  filter mask only on disk, so a chunk stored raw (mask 1) would not read back before
  the file is reopened.

:func:`kernels` compiles the three with numba (``sbsnn.neurons.jit``); without numba it
is None and the recorder leaves compression to HDF5's pipeline. ``lzf_compress_py``,
``fletcher32_py`` and ``encode_chunk_py`` are the same functions uncompiled, and
:func:`lzf_decompress` a plain decoder: the tests' references (h5py's filter is the one
readers use).
"""

from __future__ import annotations

import numpy as np

from sbsnn.neurons.jit import njit

LZF_FILTER = 32000          # HDF5's registered id of h5py's lzf filter
_HLOG = 14                  # hash table of 2^14 positions
_MAX_OFF = 1 << 13          # back references reach 8192 bytes back
_MAX_REF = 264              # and copy at most 7 + 255 + 2 bytes
_MAX_LIT = 32               # literal runs of at most 32 bytes


def _lzf_compress(src, dst, htab):
    """LZF-compress ``src`` (uint8) into ``dst``; the compressed size, or 0 when it does
    not fit ``dst``. ``htab`` (int32, 2^_HLOG) is scratch, overwritten."""
    n = src.shape[0]
    cap = dst.shape[0]
    htab[:] = -1
    mask = (1 << _HLOG) - 1
    ip = 0
    op = 1                  # dst[0] is the first literal run's control byte
    lit = 0
    if n == 0:
        return 0
    while ip < n:
        length = 0              # of a back reference found at ip (3 bytes at least)
        off = 0
        if ip + 2 < n:          # the last two bytes are always literals
            h = (int(src[ip]) << 16) | (int(src[ip + 1]) << 8) | int(src[ip + 2])
            h = ((h * 2654435761) >> (32 - _HLOG)) & mask
            ref = htab[h]
            htab[h] = ip
            off = ip - ref - 1
            if (ref >= 0 and off < _MAX_OFF and src[ref] == src[ip]
                    and src[ref + 1] == src[ip + 1] and src[ref + 2] == src[ip + 2]):
                length = 3
                top = min(_MAX_REF, n - ip)
                while length < top and src[ref + length] == src[ip + length]:
                    length += 1
        if length:
            if op + 4 > cap:            # control, 2 bytes of reference, next control
                return 0
            if lit:
                dst[op - lit - 1] = lit - 1
            else:
                op -= 1                 # no literal run before the reference
            code = length - 2
            if code < 7:
                dst[op] = (code << 5) | (off >> 8)
                op += 1
            else:
                dst[op] = (7 << 5) | (off >> 8)
                dst[op + 1] = code - 7
                op += 2
            dst[op] = off & 255
            op += 2                     # and a control byte for the next literal run
            lit = 0
            ip += length
            if ip + 2 < n:              # the position before the next: long zero runs
                p = ip - 1
                h = (int(src[p]) << 16) | (int(src[p + 1]) << 8) | int(src[p + 2])
                htab[((h * 2654435761) >> (32 - _HLOG)) & mask] = p
        else:
            if op + 2 > cap:
                return 0
            dst[op] = src[ip]
            op += 1
            ip += 1
            lit += 1
            if lit == _MAX_LIT:
                dst[op - lit - 1] = lit - 1
                lit = 0
                op += 1
    if lit:
        dst[op - lit - 1] = lit - 1
    else:
        op -= 1
    return op


def _fletcher32(data, n):
    """HDF5's Fletcher-32 of ``data[:n]`` (uint8)."""
    sum1 = np.uint32(0)
    sum2 = np.uint32(0)
    words = n // 2
    i = 0
    while words:
        t = min(words, 360)
        words -= t
        for _ in range(t):
            sum1 += (np.uint32(data[i]) << 8) | np.uint32(data[i + 1])
            sum2 += sum1
            i += 2
        sum1 = (sum1 & np.uint32(0xFFFF)) + (sum1 >> np.uint32(16))
        sum2 = (sum2 & np.uint32(0xFFFF)) + (sum2 >> np.uint32(16))
    if n % 2:
        sum1 += np.uint32(data[i]) << 8
        sum2 += sum1
        sum1 = (sum1 & np.uint32(0xFFFF)) + (sum1 >> np.uint32(16))
        sum2 = (sum2 & np.uint32(0xFFFF)) + (sum2 >> np.uint32(16))
    sum1 = (sum1 & np.uint32(0xFFFF)) + (sum1 >> np.uint32(16))
    sum2 = (sum2 & np.uint32(0xFFFF)) + (sum2 >> np.uint32(16))
    return (sum2 << np.uint32(16)) | sum1


def _encoder(lzf_compress, fletcher32):
    def encode_chunk(src, dst, htab):
        """Write the stored chunk of raw ``src`` (uint8) to ``dst`` (at least
        :func:`encoded_bound` bytes); returns its size."""
        size = lzf_compress(src, dst[:dst.shape[0] - 4], htab)
        if size == 0:
            raise ValueError("encode_chunk: dst is smaller than encoded_bound(len(src))")
        c = fletcher32(dst, size)
        dst[size] = c & 255
        dst[size + 1] = (c >> 8) & 255
        dst[size + 2] = (c >> 16) & 255
        dst[size + 3] = (c >> 24) & 255
        return size + 4
    return encode_chunk


def encoded_bound(n: int) -> int:
    """The most bytes a stored chunk of ``n`` raw bytes takes: every byte a literal (a
    control byte per 32), and the checksum."""
    return n + (n + 31) // 32 + 8


# The plain Python forms (slow: the tests' reference on small chunks).
lzf_compress_py = _lzf_compress
fletcher32_py = _fletcher32
encode_chunk_py = _encoder(_lzf_compress, _fletcher32)

_state: dict = {}


def kernels():
    """The compiled ``(lzf_compress, fletcher32, encode_chunk)``, or None without numba."""
    if "k" not in _state:
        jit = njit()
        if jit is None:
            _state["k"] = None
        else:
            lz, fl = jit(_lzf_compress), jit(_fletcher32)
            _state["k"] = (lz, fl, jit(_encoder(lz, fl)))
    return _state["k"]


def lzf_decompress(data: bytes, size: int) -> bytes:
    """A plain LZF decoder (the tests' reference): ``size`` bytes from ``data``."""
    out = bytearray()
    i = 0
    while i < len(data):
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            out += data[i:i + ctrl + 1]
            i += ctrl + 1
        else:
            length = ctrl >> 5
            if length == 7:
                length += data[i]
                i += 1
            ref = len(out) - ((ctrl & 31) << 8) - data[i] - 1
            i += 1
            if ref < 0:
                raise ValueError("LZF back reference before the start")
            for _ in range(length + 2):
                out.append(out[ref])
                ref += 1
    if len(out) != size:
        raise ValueError(f"LZF stream decodes to {len(out)} bytes, expected {size}")
    return bytes(out)


__all__ = ["LZF_FILTER", "encoded_bound", "kernels", "lzf_decompress"]
