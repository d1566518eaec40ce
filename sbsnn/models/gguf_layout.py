"""A bounded first pass over a GGUF file: its header, metadata and tensor table, checked
before llama.cpp's ``gguf`` reader (which trusts every count it reads) sees the file.

Every count and length read from the file (tensors, metadata keys, string lengths, array
lengths, dimensions) is bounded by the bytes that remain after it, so a 7 KB file that
declares 2**40 array items, or 10**9 tensors, is refused by name before anything is
allocated or looped over. The tensor data is then held to the layout llama.cpp's loader
enforces, as strictly as sbsnn holds safetensors: a data section starting at the file's
alignment, every tensor's offset aligned, its element count a multiple of its type's
block, its bytes inside the file, no two tensors overlapping, no name given twice.

Byte order: little-endian files, and big-endian ones as the ``gguf`` reader detects them
(a version whose low 16 bits are zero read one way).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from sbsnn.models.errors import CheckpointError

__all__ = ["GGUFLayout", "TensorEntry", "check_layout"]

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4                      # GGML_MAX_DIMS: llama.cpp refuses more
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]          # ggml order, fastest first
    type: int
    offset: int                    # relative to the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFLayout:
    version: int
    alignment: int
    data_start: int
    tensors: tuple[TensorEntry, ...]
    kv_count: int


class _Cursor:
    def __init__(self, buf, path: Path, order: str):
        self.buf, self.path, self.order, self.pos = buf, path, order, 0
        self.size = len(buf)

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {what} (at byte {self.pos:,} of {self.size:,}); the "
                               "GGUF file is truncated or corrupt")

    def left(self) -> int:
        return self.size - self.pos

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if n > self.left():
            raise self.fail(f"the file ends inside a field of {n} bytes")
        v = struct.unpack_from(self.order + fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def count(self, what: str, item_bytes: int) -> int:
        """A u64 count of items of at least ``item_bytes`` each, bounded by what is left."""
        n = self.take("Q")
        if n * item_bytes > self.left():
            raise self.fail(f"{what} declares {n:,} items, more than the {self.left():,} bytes "
                            "left in the file can hold")
        return n

    def string(self, what: str) -> bytes:
        n = self.count(what, 1)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def skip_value(self, vtype: int, key: str) -> object:
        """Read (scalars and strings) or skip (arrays) one value, bounded."""
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string(f"the string of metadata key {key}")
        if vtype == _ARRAY:
            etype = self.take("I")
            if etype == _ARRAY:
                raise self.fail(f"metadata key {key} holds nested arrays, which sbsnn does not read")
            if etype == _STRING:
                n = self.count(f"the array of metadata key {key}", 8)
                for _ in range(n):
                    length = self.count(f"an item of metadata key {key}", 1)
                    self.pos += length
            elif etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                n = self.count(f"the array of metadata key {key}", size)
                self.pos += n * size
            else:
                raise self.fail(f"metadata key {key} holds an array of unknown type {etype}")
            return None
        raise self.fail(f"metadata key {key} has unknown value type {vtype}")


def _quant_sizes() -> dict[int, tuple[int, int, str]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (b, s, t.name) for t, (b, s) in GGML_QUANT_SIZES.items()}


def check_layout(path: Path) -> GGUFLayout:
    """The layout of the GGUF file ``path``, or the :class:`CheckpointError` naming the
    first count, key or tensor that does not fit (module docstring)."""
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:                # an empty file cannot be mapped
            raise CheckpointError(f"{path}: empty file, not a GGUF file") from None
    with buf, memoryview(buf) as view:
        return _check(view, path)


def _check(buf, path: Path) -> GGUFLayout:
    if len(buf) < 24 or bytes(buf[:4]) != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (no GGUF magic and header)")
    version = struct.unpack_from("<I", buf, 4)[0]
    order = "<"
    if version & 0xFFFF == 0:             # written on a big-endian machine
        order, version = ">", struct.unpack_from(">I", buf, 4)[0]
    if version not in (2, 3):
        raise CheckpointError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    c = _Cursor(buf, path, order)
    c.pos = 8
    n_tensors = c.count("the tensor table", 8 + 4 + 4 + 8)
    n_kv = c.count("the metadata table", 8 + 4 + 1)
    alignment = _DEFAULT_ALIGNMENT
    seen_keys: set[str] = set()
    for _ in range(n_kv):
        raw = c.string("a metadata key")
        try:
            key = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise c.fail(f"a metadata key is not UTF-8 ({raw[:40]!r})") from None
        if key in seen_keys:
            raise c.fail(f"metadata key {key} is given twice")
        seen_keys.add(key)
        vtype = c.take("I")
        value = c.skip_value(vtype, key)
        if key == "general.alignment":
            if vtype != 4 or value == 0 or value & (value - 1):
                raise CheckpointError(f"{path}: general.alignment={value!r} must be a 32-bit "
                                      "non-zero power of two")
            alignment = value
    sizes = _quant_sizes()
    entries = []
    names: set[str] = set()
    for _ in range(n_tensors):
        raw = c.string("a tensor name")
        name = raw.decode("utf-8", errors="replace")
        if name in names:
            raise c.fail(f"tensor {name} is listed twice")
        names.add(name)
        n_dims = c.take("I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise c.fail(f"tensor {name} has {n_dims} dimensions (1 to {_MAX_DIMS} are allowed)")
        dims = tuple(c.take("Q") for _ in range(n_dims))
        ttype = c.take("I")
        offset = c.take("Q")
        if ttype not in sizes:
            raise c.fail(f"tensor {name} has unknown ggml type {ttype}")
        block, type_size, tname = sizes[ttype]
        numel = 1
        for d in dims:
            numel *= d
        if numel > len(buf) * 64:
            raise c.fail(f"tensor {name} has dimensions {list(dims)}: {numel:,} elements, which "
                         "no file of this size can hold")
        if dims[0] % block:
            raise c.fail(f"tensor {name} ({tname}) has {dims[0]} elements per row, not a "
                         f"multiple of its type's block of {block}")
        entries.append(TensorEntry(name, dims, ttype, offset, numel // block * type_size))
    data_start = -(-c.pos // alignment) * alignment
    data_size = len(buf) - data_start
    end_prev, prev = 0, None
    for t in sorted(entries, key=lambda t: t.offset):
        if t.offset % alignment:
            raise CheckpointError(f"{path}: tensor {t.name}'s data starts at offset {t.offset:,}, "
                                  f"not a multiple of the file's alignment ({alignment}); the "
                                  "GGUF file is corrupt")
        if t.offset < end_prev:
            raise CheckpointError(f"{path}: tensors {prev} and {t.name} overlap (bytes "
                                  f"{t.offset:,} to {end_prev:,} of the data); the GGUF file is "
                                  "corrupt")
        if t.offset + t.nbytes > data_size:
            raise CheckpointError(f"{path}: tensor {t.name} needs {t.nbytes:,} bytes from offset "
                                  f"{t.offset:,}, past the end of the file's {data_size:,} data "
                                  "bytes; the GGUF file is truncated or corrupt")
        end_prev, prev = t.offset + t.nbytes, t.name
    return GGUFLayout(version, alignment, data_start, tuple(entries), n_kv)
