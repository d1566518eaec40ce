"""Reading llama.cpp GGUF files: a Hugging Face config, float32 tensors under the Hugging
Face names, and the tokenizer, all from one file (needs the ``gguf`` extra).

What comes out is what ``transformers`` builds from the same file
(``AutoConfig.from_pretrained(dir, gguf_file=name)`` and
``modeling_gguf_pytorch_utils.load_gguf_checkpoint``): the config in the current
(transformers 5) layout, llama-architecture q/k projections un-permuted, Gemma norm
weights with llama.cpp's ``+1`` removed. Where transformers' GGUF loader drops a field the
file states (RoPE scaling, llama3 frequency factors, Qwen3's key length, Gemma's logit
soft-capping) the file's value is used, since that is what llama.cpp runs; where the file
lacks a field, the family's transformers default is used, and the file is refused if
llama.cpp's own default for it differs. Every metadata key is used, on the harmless list
(``HARMLESS``), or refused; so is every tensor. docs/gguf.md lists the rules.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sbsnn.checks import check_input_file
from sbsnn.models.errors import CheckpointError
from sbsnn.models import gguf_hybrid
from sbsnn.models.gguf_hybrid import unpermute_rows
from sbsnn.models.families import SIZE_BOUNDS
from sbsnn.models.gguf_tokenizer import build_tokenizer, check_tokenizer_types
from sbsnn.models.gguf_tokenizer import is_known_key as _is_tokenizer_key
from sbsnn.models.tokenizer import HFTokenizer

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3") + gguf_hybrid.ARCHITECTURES
# ggml tensor types read (dequantized with gguf.quants.dequantize).
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                "Q4_K", "Q5_K", "Q6_K")
# Keys that do not change the forward pass: descriptive general.* keys (name, license,
# file type, quantization version, alignment: the reader honours it), the reader's own
# GGUF.* entries, and llama.cpp's sampling defaults.
HARMLESS_PREFIXES = ("general.", "GGUF.")
_HARMLESS_ARCH_KEYS = {"rope.scaling.finetuned"}  # a flag: was the model tuned with scaling
_MAGIC = b"GGUF"


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading GGUF files needs the 'gguf' package: "
                          "pip install 'sbsnn[gguf]'") from e
    return gguf


def is_gguf(path) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic bytes."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):   # a FIFO would block the open below
            return False
        with open(path, "rb") as f:
            return f.read(4) == _MAGIC
    except (OSError, TypeError):
        return False


@dataclass
class GGUFCheckpoint:
    path: Path
    config: dict                      # a config.json dict, transformers 5 layout
    tensors: dict[str, torch.Tensor]  # float32, Hugging Face names
    origin: dict[str, str]            # Hugging Face name -> GGUF tensor name
    tokenizer: HFTokenizer

    def tokenizer_json(self) -> str:
        """The tokenizer as a ``tokenizer.json`` (to write beside a converted checkpoint)."""
        return self.tokenizer.to_json()


# ----------------------------------------------------------------------------- the file
# Read here with struct over a read-only memory map rather than with gguf.GGUFReader,
# which trusts every count in the file (a 7 KB file declaring 2**40 array items makes it
# allocate without bound). Every count and length is checked against the bytes left in
# the file before anything is allocated or looped over, and the tensor table is checked
# as llama.cpp's gguf.cpp checks it.
_GGML_MAX_DIMS = 4         # llama.cpp refuses tensors of more dimensions
_DEFAULT_ALIGNMENT = 32    # GGUF_DEFAULT_ALIGNMENT
_MIN_KV_BYTES = 13         # key length (8) + value type (4) + a one-byte value
_MIN_TENSOR_BYTES = 24     # name length (8) + n_dims (4) + type (4) + offset (8)
# The longest metadata array read: sbsnn's vocabulary bound (token, score, type and merge
# lists have one item per token).
MAX_ARRAY_ITEMS = SIZE_BOUNDS["vocab_size"][0]
# GGUF value type -> (struct format, numpy dtype) of its scalars; 8 string, 9 array
_SCALARS = {0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
            4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "<u1"),
            10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8")}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


@dataclass
class GGUFTensor:
    """One entry of the tensor table, checked: ``shape`` in ggml order (fastest first),
    ``start`` the absolute byte offset of its ``n_bytes`` bytes in the file."""
    name: str
    shape: tuple[int, ...]
    tensor_type: object        # gguf.GGMLQuantizationType
    start: int
    n_bytes: int
    file: "GGUFFile" = field(repr=False, compare=False)

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def data(self) -> np.ndarray:
        """A read-only view of the file, laid out as ``gguf.GGUFReader`` lays it out (the
        input ``gguf.quants.dequantize`` expects)."""
        gguf = _gguf()
        Q = gguf.GGMLQuantizationType
        raw = self.file.map[self.start:self.start + self.n_bytes]
        dims = tuple(reversed(self.shape))
        if self.tensor_type == Q.F32:
            return raw.view(np.float32).reshape(dims)
        if self.tensor_type == Q.F16:
            return raw.view(np.float16).reshape(dims)
        return raw.reshape(gguf.quants.quant_shape_to_byte_shape(dims or (1,), self.tensor_type))


@dataclass
class GGUFFile:
    path: Path
    size: int
    version: int
    alignment: int
    meta: dict                  # key -> plain Python value (arrays as lists)
    tensors: list[GGUFTensor]
    map: np.ndarray = field(repr=False, compare=False)  # the whole file, read-only uint8


class _Cursor:
    """Reads little-endian values at a position, refusing any read past the file's end."""

    def __init__(self, path: Path, buf: memoryview):
        self.path, self.buf, self.size, self.pos = path, buf, len(buf), 0

    @property
    def left(self) -> int:
        return self.size - self.pos

    def take(self, n: int, what: str) -> int:
        if n > self.left:
            raise CheckpointError(f"{self.path}: truncated or corrupt GGUF file: {what} needs "
                                  f"{n:,} bytes at offset {self.pos:,}, the file has "
                                  f"{self.left:,} left; re-download or re-convert it")
        at = self.pos
        self.pos += n
        return at

    def scalar(self, fmt: str, what: str):
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what)
        at = self.take(n, what)
        try:
            return str(self.buf[at:at + n], "utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: {what} is not valid UTF-8 (byte {at + e.start:,} "
                                  "of the file); the file is corrupt") from None


def _read_value(c: _Cursor, vtype: int, key: str):
    what = f"metadata key {key}"
    if vtype == _STRING:
        return c.string(what)
    if vtype in _SCALARS:
        v = c.scalar(_SCALARS[vtype][0], what)
        return bool(v) if vtype == 7 else v
    if vtype != _ARRAY:
        raise CheckpointError(f"{c.path}: {what} has value type {vtype}, which is not a GGUF "
                              "type (0-12); the file is corrupt")
    itype = c.scalar("<I", what)
    n = c.scalar("<Q", what)
    if itype == _ARRAY:
        raise CheckpointError(f"{c.path}: {what} is an array of arrays, which llama.cpp does not "
                              "read either; not supported")
    if itype != _STRING and itype not in _SCALARS:
        raise CheckpointError(f"{c.path}: {what} is an array of value type {itype}, which is not "
                              "a GGUF type (0-12); the file is corrupt")
    item = 8 if itype == _STRING else struct.calcsize(_SCALARS[itype][0])
    if n * item > c.left:  # each string needs at least its 8-byte length
        raise CheckpointError(f"{c.path}: truncated or corrupt GGUF file: {what} declares {n:,} "
                              f"items, which need at least {n * item:,} bytes; the file has "
                              f"{c.left:,} left")
    if n > MAX_ARRAY_ITEMS:
        raise CheckpointError(f"{c.path}: {what} declares {n:,} items, beyond sbsnn's bound of "
                              f"{MAX_ARRAY_ITEMS:,} (the vocabulary bound: "
                              f"{SIZE_BOUNDS['vocab_size'][1]})")
    if itype == _STRING:
        return [c.string(f"{what}[{i}]") for i in range(n)]
    at = c.take(n * item, what)
    values = np.frombuffer(c.buf, dtype=_SCALARS[itype][1], count=n, offset=at)
    return (values != 0).tolist() if itype == 7 else values.tolist()


def _pad(n: int, alignment: int) -> int:
    return n + (-n) % alignment


def read_file(path: str | Path) -> GGUFFile:
    """The metadata and the checked tensor table of a GGUF (version 2 or 3, little-endian)
    file; tensor bytes stay in the file until read.

    Refused, naming the file and the key or tensor: counts or lengths that the bytes left
    cannot hold, arrays over sbsnn's bound, unknown value or tensor types, arrays of arrays,
    duplicate keys or tensor names, a general.alignment that is not a power-of-two uint32,
    more than four dimensions, a row length that is not a whole number of blocks, and a
    tensor whose data does not start where llama.cpp expects it (declaration order, each
    tensor's bytes padded to the alignment: no overlap, no gap, no misaligned offset) or
    runs past the end of the file."""
    try:
        return _read_file(Path(path))
    except CheckpointError as e:
        raise e from None  # one line, no chained context


def _read_file(path: Path) -> GGUFFile:
    gguf = _gguf()
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    check_input_file(path, "a GGUF file", error=CheckpointError)   # a FIFO would block
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as e:
        from sbsnn.errors import os_error

        raise os_error(e, path, "reading the GGUF file") from None
    except ValueError:  # an empty file cannot be mapped
        mm = np.zeros(0, dtype=np.uint8)
    c = _Cursor(path, memoryview(mm))
    if c.size < 4 or bytes(c.buf[:4]) != _MAGIC:
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
    c.pos = 4
    version = c.scalar("<I", "the GGUF version")
    if version not in (2, 3):
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        why = ("a big-endian GGUF file, which llama.cpp reads only on big-endian machines; "
               "convert it on a little-endian one" if swapped in (2, 3) else
               "GGUF version 1 (llama.cpp dropped it); re-convert the model" if version == 1 else
               "an unknown GGUF version (sbsnn and llama.cpp read versions 2 and 3)")
        raise CheckpointError(f"{path}: version {version}: {why}")
    n_tensors = c.scalar("<Q", "the tensor count")
    n_kv = c.scalar("<Q", "the metadata key count")
    least = n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES
    if least > c.left:
        raise CheckpointError(f"{path}: truncated or corrupt GGUF file: its header declares "
                              f"{n_kv:,} metadata keys and {n_tensors:,} tensors, which need at "
                              f"least {least:,} bytes; the file has {c.left:,} left")
    meta: dict = {}
    for i in range(n_kv):
        key = c.string(f"metadata key #{i}")
        vtype = c.scalar("<I", f"metadata key {key}")
        if key in meta:
            raise CheckpointError(f"{path}: metadata key {key} is given twice (which holds?); "
                                  "the file is corrupt")
        meta[key] = _read_value(c, vtype, key)
        if key == "general.alignment":
            a = meta[key]
            if vtype != _UINT32 or a <= 0 or a & (a - 1):
                raise CheckpointError(f"{path}: general.alignment={_short(a)}: the alignment must "
                                      "be a power of two stored as uint32 (llama.cpp refuses "
                                      "anything else); the file is corrupt")
    alignment = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
    Q = gguf.GGMLQuantizationType
    known = {int(q): q for q in Q if q in gguf.GGML_QUANT_SIZES}
    infos, names = [], set()
    for i in range(n_tensors):
        name = c.string(f"the name of tensor #{i}")
        what = f"tensor {name}"
        if name in names:
            raise CheckpointError(f"{path}: {what} is listed twice in the tensor table (which "
                                  "holds?); the file is corrupt")
        names.add(name)
        n_dims = c.scalar("<I", what)
        if n_dims > _GGML_MAX_DIMS:
            raise CheckpointError(f"{path}: {what} declares {n_dims:,} dimensions, more than "
                                  f"ggml's {_GGML_MAX_DIMS}; the file is corrupt")
        shape = tuple(c.scalar("<Q", what) for _ in range(n_dims))
        raw_type = c.scalar("<I", what)
        offset = c.scalar("<Q", what)
        if raw_type not in known:
            raise CheckpointError(f"{path}: {what} has ggml type {raw_type}, which is not a ggml "
                                  "tensor type; the file is corrupt")
        qtype = known[raw_type]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        if shape and shape[0] % block:
            raise CheckpointError(f"{path}: {what} ({qtype.name}, shape {list(shape)}) has rows of "
                                  f"{shape[0]:,} values, not a whole number of {qtype.name} "
                                  f"blocks of {block}; the file is corrupt")
        n_bytes = math.prod(shape) // block * type_size
        infos.append((name, shape, qtype, offset, n_bytes))
    data_start = _pad(c.pos, alignment)
    tensors, expected, previous = [], 0, "the data section's start"
    for name, shape, qtype, offset, n_bytes in infos:
        if offset != expected:
            where = (f"is not a multiple of the alignment {alignment}" if offset % alignment else
                     "overlaps the bytes before it" if offset < expected else
                     "leaves a gap before it")
            raise CheckpointError(
                f"{path}: tensor {name} has data offset {offset:,}, which {where}: llama.cpp "
                f"expects {expected:,}, right after {previous} (tensors follow each other in "
                f"table order, each padded to {alignment} bytes); the file is corrupt")
        end = data_start + offset + n_bytes
        if end > c.size:
            raise CheckpointError(f"{path}: truncated or corrupt GGUF file: tensor {name} ({qtype.name}, "
                                  f"shape {list(shape)}, {n_bytes:,} bytes) ends at byte {end:,}, "
                                  f"the file has {c.size:,}; re-download or re-convert it")
        tensors.append((name, shape, qtype, data_start + offset, n_bytes))
        expected = _pad(offset + n_bytes, alignment)
        previous = f"tensor {name} ({qtype.name}, shape {list(shape)}: {n_bytes:,} bytes)"
    f = GGUFFile(path=path, size=c.size, version=version, alignment=alignment, meta=meta,
                 tensors=[], map=mm)
    f.tensors = [GGUFTensor(n, s, q, st, nb, f) for n, s, q, st, nb in tensors]
    return f


# GGUF size keys -> the config key whose bound (families.SIZE_BOUNDS) holds for them
_BOUNDED = {"embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
            "block_count": "num_hidden_layers", "attention.head_count": "num_attention_heads",
            "attention.head_count_kv": "num_key_value_heads", "attention.key_length": "head_dim",
            "attention.value_length": "head_dim", "rope.dimension_count": "head_dim",
            "vocab_size": "vocab_size"}
_POSITIVE = {"context_length"}  # positive, no size bound (nothing is sized by them)
# float keys -> the least value allowed (rope bases divide; an epsilon or cap is >= 0)
_FLOAT_FLOOR = {"rope.freq_base": (0.0, False), "rope.freq_base_swa": (0.0, False),
                "rope.scaling.factor": (0.0, False),
                "attention.layer_norm_rms_epsilon": (0.0, True),
                "final_logit_softcapping": (0.0, True), "attn_logit_softcapping": (0.0, True)}
_TENSORS_PER_LAYER = 9  # norm, q, k, v, o, gate, up, down, second norm: the least a layer holds


class _Meta:
    """The architecture's ``{arch}.*`` keys; remembers which were read so that the rest
    can be refused by name."""

    def __init__(self, meta: dict, arch: str, path: Path, n_tensors: int = 0):
        self.meta, self.arch, self.path, self.n_tensors = meta, arch, path, n_tensors
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def has(self, name: str) -> bool:
        return self.key(name) in self.meta

    def get(self, name: str, default=None, kind=None):
        k = self.key(name)
        self.used.add(k)
        if k not in self.meta:
            return default
        v = self.meta[k]
        if kind is not None and (isinstance(v, (list, bool)) or not isinstance(v, (int, float))):
            self.refuse(name, "a single number is expected (per-layer values are not supported)")
        if kind is not None and not math.isfinite(v):
            self.refuse(name, "a finite number is expected")
        if kind is int and v != int(v):
            self.refuse(name, "a whole number is expected")
        v = kind(v) if kind is not None else v
        if kind is int and (name in _BOUNDED or name in _POSITIVE):
            self._bound(name, v)
        if kind is float and name in _FLOAT_FLOOR:
            floor, inclusive = _FLOAT_FLOOR[name]
            if v < floor or (v == floor and not inclusive):
                self.refuse(name, f"must be {'at least' if inclusive else 'greater than'} {floor}")
        return v

    def _bound(self, name: str, v: int):
        """Sizes are positive (they divide, and count layers and heads), within sbsnn's
        bounds, and the layer count within what the file's tensor table can hold; checked
        before anything is sized by them."""
        if v <= 0:
            self.refuse(name, "must be a positive integer")
        if name not in _BOUNDED:
            return
        bound, why = SIZE_BOUNDS[_BOUNDED[name]]
        if v > bound:
            self.refuse(name, f"is refused: the bound is {bound:,} ({why}); the file is damaged "
                              "or not a language model's")
        per = gguf_hybrid.TENSORS_PER_LAYER.get(self.arch, _TENSORS_PER_LAYER)
        if name == "block_count" and v * per > self.n_tensors:
            self.refuse(name, f"{v:,} layers need at least {v * per:,} tensors, "
                              f"the file holds {self.n_tensors:,}")

    def req(self, name: str, kind=int):
        if not self.has(name):
            raise CheckpointError(f"{self.path}: metadata key {self.key(name)} is missing; "
                                  f"a {self.arch} model needs it")
        return self.get(name, kind=kind)

    def refuse(self, name: str, why: str):
        k = self.key(name) if not name.startswith(self.arch + ".") else name
        raise CheckpointError(f"{self.path}: {k}={_short(self.meta.get(k))}: {why}")

    def must_equal(self, name: str, expected, why: str):
        v = self.get(name)
        if v is not None and v != expected:
            self.refuse(name, f"{why} (expected {expected!r})")

    def leftovers(self) -> list[str]:
        return [k for k in self.meta if k.startswith(self.arch + ".") and k not in self.used
                and k[len(self.arch) + 1:] not in _HARMLESS_ARCH_KEYS]


# ----------------------------------------------------------------------------- config
def _rope_scaling(m: _Meta, theta: float) -> dict:
    """rope.scaling.* as rope_parameters (linear is the one llama.cpp type that maps one to
    one onto transformers'; the rest are refused)."""
    kind = m.get("rope.scaling.type", "none")
    factor = m.get("rope.scaling.factor", None, kind=float)
    m.get("rope.scaling.original_context_length")  # read by llama.cpp for YaRN only
    if kind == "none" and factor in (None, 1.0):
        return {"rope_type": "default", "rope_theta": theta}
    if kind == "linear" and factor is not None and float(factor) > 0:
        if float(factor) == 1.0:
            return {"rope_type": "default", "rope_theta": theta}
        return {"rope_type": "linear", "rope_theta": theta, "factor": float(factor)}
    m.refuse("rope.scaling.type" if kind != "none" else "rope.scaling.factor",
             f"RoPE scaling {_short(kind)} with factor {factor!r} is not supported (supported: "
             "none, linear)")


def _llama3_rope(factors: np.ndarray, theta: float, head_dim: int, path: Path) -> dict:
    """transformers' ``llama3`` rope_parameters that reproduce llama.cpp's per-frequency
    divisors ``rope_freqs.weight``, or a refusal.

    llama.cpp stores ``f_i`` with RoPE angle ``pos * inv_freq_i / f_i``: 1 for short
    wavelengths, ``factor`` for long ones, a smooth blend between. The blend depends on
    (original_max_position_embeddings, low_freq_factor, high_freq_factor) only up to a
    common scale, so low_freq_factor is fixed at 1 and the other two are solved from the
    blended frequencies; the fit must reproduce every divisor to float32 rounding."""
    f = factors.astype(np.float64)
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if f.shape != inv.shape or not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise CheckpointError(f"{path}: tensor rope_freqs.weight: {f.shape[0]} finite positive "
                              f"frequency factors expected for head_dim {head_dim}")
    if np.all(f == 1.0):
        return {"rope_type": "default", "rope_theta": theta}
    factor = float(f.max())
    mid = (f > 1.0) & (f < factor)
    fail = CheckpointError(
        f"{path}: tensor rope_freqs.weight: its frequency factors are not a llama3 RoPE "
        "scaling that transformers' rope_parameters can express; refusing rather than "
        "running different positions")
    if mid.sum() < 2:
        raise fail
    wavelen = 2 * math.pi / inv
    smooth = (1.0 / f[mid] - 1.0 / factor) / (1.0 - 1.0 / factor)
    # smooth = (L / w - 1) / (b - 1) = slope / w + icpt, slope = L/(b-1), icpt = -1/(b-1)
    slope, icpt = np.polyfit(1.0 / wavelen[mid], smooth, 1)
    if icpt >= 0:
        raise fail
    high = 1.0 - 1.0 / icpt
    orig = slope * (high - 1.0)
    for L, b in ((round(orig), round(high, 4)), (orig, high)):
        params = {"rope_type": "llama3", "rope_theta": theta, "factor": factor,
                  "low_freq_factor": 1.0, "high_freq_factor": float(b),
                  "original_max_position_embeddings": L}
        if np.allclose(_llama3_divisors(params, wavelen), f, rtol=2e-6, atol=0):
            return params
    raise fail


def _llama3_divisors(p: dict, wavelen: np.ndarray) -> np.ndarray:
    """The per-frequency divisor transformers' llama3 RoPE applies (reference for the fit)."""
    L, lo, hi, k = (p["original_max_position_embeddings"], p["low_freq_factor"],
                    p["high_freq_factor"], p["factor"])
    smooth = (L / wavelen - lo) / (hi - lo)
    d = 1.0 / ((1 - smooth) / k + smooth)
    d = np.where(wavelen < L / hi, 1.0, d)
    return np.where(wavelen > L / lo, k, d)


def _common(m: _Meta, n_tokens: int) -> dict:
    hidden = m.req("embedding_length")
    heads = m.req("attention.head_count")
    return {
        "vocab_size": m.get("vocab_size", n_tokens, kind=int),
        "hidden_size": hidden,
        "intermediate_size": m.req("feed_forward_length"),
        "num_hidden_layers": m.req("block_count"),
        "num_attention_heads": heads,
        "max_position_embeddings": m.req("context_length"),
        "rms_norm_eps": m.req("attention.layer_norm_rms_epsilon", float),
    }


def _no_experts(m: _Meta):
    for k in ("expert_count", "expert_used_count"):
        if m.get(k, 0):
            m.refuse(k, "mixture-of-experts models are not supported")


def _head_dim_checks(m: _Meta, head_dim: int, *, key_length: bool = True):
    """Keys that restate head_dim: allowed when they agree (partial RoPE is not supported)."""
    if key_length:
        m.must_equal("attention.key_length", head_dim, "the key length must equal head_dim")
    m.must_equal("attention.value_length", head_dim, "the value length must equal head_dim")
    m.must_equal("rope.dimension_count", head_dim,
                 "RoPE over part of the head is not supported for this architecture")


def _llama_config(m: _Meta, n_tokens: int, rope_freqs) -> dict:
    c = _common(m, n_tokens)
    heads = c["num_attention_heads"]
    head_dim = m.get("rope.dimension_count", c["hidden_size"] // heads, kind=int)
    _head_dim_checks(m, head_dim)
    _no_experts(m)
    theta = m.get("rope.freq_base", 10000.0, kind=float)  # llama.cpp's and LlamaConfig's default
    rope = _rope_scaling(m, theta)
    if rope_freqs is not None:
        if rope["rope_type"] != "default":
            raise CheckpointError(f"{m.path}: both rope_freqs.weight and "
                                  f"{m.key('rope.scaling.type')} scale RoPE; not supported")
        rope = _llama3_rope(rope_freqs, theta, head_dim, m.path)
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **c,
            "num_key_value_heads": m.get("attention.head_count_kv", heads, kind=int),
            "head_dim": head_dim, "hidden_act": "silu", "rope_parameters": rope,
            "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
            "pretraining_tp": 1}


def _qwen_config(m: _Meta, n_tokens: int, qwen3: bool) -> dict:
    c = _common(m, n_tokens)
    heads, layers = c["num_attention_heads"], c["num_hidden_layers"]
    out = {"model_type": "qwen3" if qwen3 else "qwen2",
           "architectures": ["Qwen3ForCausalLM" if qwen3 else "Qwen2ForCausalLM"], **c,
           "num_key_value_heads": m.req("attention.head_count_kv"),
           "hidden_act": "silu"}
    if qwen3:
        # transformers' GGUF loader ignores key_length and takes Qwen3Config's 128;
        # llama.cpp defaults a missing one to hidden/heads.
        if m.has("attention.key_length"):
            head_dim = m.get("attention.key_length", kind=int)
        elif c["hidden_size"] // heads == 128:
            head_dim = 128
        else:
            raise CheckpointError(f"{m.path}: {m.key('attention.key_length')} is missing and the "
                                  "defaults disagree (transformers 128, llama.cpp hidden/heads = "
                                  f"{c['hidden_size'] // heads}); refusing to guess head_dim")
        out["head_dim"] = head_dim
        _head_dim_checks(m, head_dim, key_length=False)
    else:
        _head_dim_checks(m, c["hidden_size"] // heads)
    _no_experts(m)
    theta = m.req("rope.freq_base", float)
    out["rope_parameters"] = _rope_scaling(m, theta)
    if qwen3:
        out["attention_bias"] = False
    out.update({"use_sliding_window": False, "sliding_window": None,
                "layer_types": ["full_attention"] * layers, "attention_dropout": 0.0})
    return out


_GEMMA3_PATTERN = 6  # every sixth layer global: llama.cpp's and Gemma3TextConfig's default


def _gemma3_config(m: _Meta, n_tokens: int) -> dict:
    c = _common(m, n_tokens)
    heads, layers, hidden = c["num_attention_heads"], c["num_hidden_layers"], c["hidden_size"]
    if m.has("attention.key_length"):
        head_dim = m.get("attention.key_length", kind=int)
    elif hidden // heads == 256:
        head_dim = 256
    else:
        raise CheckpointError(f"{m.path}: {m.key('attention.key_length')} is missing and the "
                              "defaults disagree (transformers 256, llama.cpp hidden/heads = "
                              f"{hidden // heads}); refusing to guess head_dim")
    _head_dim_checks(m, head_dim, key_length=False)
    _no_experts(m)
    window = m.get("attention.sliding_window", None, kind=int)
    if window is None or window <= 0:
        m.refuse("attention.sliding_window", "Gemma 3 without a sliding window (llama.cpp then "
                 "uses global attention everywhere, transformers a 4096 window) is not supported")
    sliding = [bool((i + 1) % _GEMMA3_PATTERN) for i in range(layers)]
    pattern = m.get("attention.sliding_window_pattern")
    if pattern is not None and not (
            isinstance(pattern, int) or (isinstance(pattern, list) and all(
                isinstance(p, int) for p in pattern))):  # bools are ints
        m.refuse("attention.sliding_window_pattern", "a whole number (the period) or one flag "
                 "per layer is expected")
    if pattern is not None:
        stated = ([bool(p) for p in pattern] if isinstance(pattern, list)
                  else [bool((i + 1) % pattern) if pattern > 0 else False
                        for i in range(layers)])
        if stated != sliding:
            m.refuse("attention.sliding_window_pattern",
                     "only the default pattern (every sixth layer global) is supported")
    # Not in the file: Gemma3TextConfig's 256; llama.cpp scales by 1/sqrt(key_length), or by
    # 1/sqrt(hidden/heads) for its 62-layer (27B) model. Both must agree.
    scalar = 256
    cpp = hidden // heads if layers == 62 else head_dim
    if cpp != scalar:
        raise CheckpointError(f"{m.path}: query_pre_attn_scalar is not in the file and the "
                              f"defaults disagree (transformers {scalar}, llama.cpp {cpp}); "
                              "refusing to guess the attention scale")
    theta = m.req("rope.freq_base", float)
    local = m.get("rope.freq_base_swa", 10000.0, kind=float)  # transformers' and llama.cpp's 10000
    caps = {}
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        v = m.get(name, 0.0, kind=float)
        caps[name] = v if v else None
    # llama.cpp scales only the global layers' RoPE (its SWA layers use scale 1).
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": local},
            "full_attention": _rope_scaling(m, theta)}
    return {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], **c,
            "num_key_value_heads": m.req("attention.head_count_kv"), "head_dim": head_dim,
            "hidden_activation": "gelu_pytorch_tanh", "rope_parameters": rope,
            "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": scalar,
            "sliding_window": window,
            "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
            **caps, "use_bidirectional_attention": False}


# ----------------------------------------------------------------------------- tensors
_LAYER_NAMES = {  # GGUF leaf name -> Hugging Face name under model.layers.{i}.
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_PER_ARCH = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "qwen3": {"ffn_norm": "post_attention_layernorm", "attn_q_norm": "self_attn.q_norm",
              "attn_k_norm": "self_attn.k_norm"},
    "gemma3": {"post_attention_norm": "post_attention_layernorm",
               "ffn_norm": "pre_feedforward_layernorm",
               "post_ffw_norm": "post_feedforward_layernorm",
               "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"},
}
_TOP = {"token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def expected_shapes(arch: str, c: dict) -> dict[str, tuple]:
    """Hugging Face name -> shape of every tensor a file of this config must hold."""
    H, V, I, L = c["hidden_size"], c["vocab_size"], c["intermediate_size"], c["num_hidden_layers"]
    d = c.get("head_dim") or H // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    out = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not c["tie_word_embeddings"]:
        out["lm_head.weight"] = (V, H)
    for i in range(L):
        p = f"model.layers.{i}."
        layer = {"input_layernorm.weight": (H,), "self_attn.q_proj.weight": (q, H),
                 "self_attn.k_proj.weight": (kv, H), "self_attn.v_proj.weight": (kv, H),
                 "self_attn.o_proj.weight": (H, q), "mlp.gate_proj.weight": (I, H),
                 "mlp.up_proj.weight": (I, H), "mlp.down_proj.weight": (H, I),
                 "post_attention_layernorm.weight": (H,)}
        if arch == "qwen2":
            layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
        if arch in ("qwen3", "gemma3"):
            layer.update({"self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,)})
        if arch == "gemma3":
            layer.update({"pre_feedforward_layernorm.weight": (H,),
                          "post_feedforward_layernorm.weight": (H,)})
        out.update({p + k: v for k, v in layer.items()})
    return out


def hf_name(arch: str, gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor of this architecture, or None."""
    if gguf_name in _TOP:
        return _TOP[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[3] in ("weight", "bias"):
        leaf = _PER_ARCH[arch].get(parts[2]) or _LAYER_NAMES.get(parts[2])
        if leaf is not None:
            return f"model.layers.{parts[1]}.{leaf}.{parts[3]}"
    return None


def _dequantize(t: GGUFTensor, path: Path) -> np.ndarray:
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    if t.tensor_type.name not in TENSOR_TYPES:
        raise CheckpointError(f"{path}: tensor {t.name} has ggml type {t.tensor_type.name}, which "
                              f"is not supported (supported: {', '.join(TENSOR_TYPES)})")
    try:
        if t.tensor_type == Q.F32:
            return np.array(t.data, dtype=np.float32)  # a copy: t.data maps the file
        return gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as e:
        raise CheckpointError(f"{path}: tensor {t.name} ({t.tensor_type.name}, shape "
                              f"{list(t.shape)}) cannot be dequantized ({type(e).__name__}: "
                              f"{e})") from None


# ----------------------------------------------------------------------------- entry
def _check_keys(meta: dict, arch: str, path: Path):
    """Refuse every key outside general.*, the architecture's own and the tokenizer's."""
    count = meta.get("split.count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count > 1:
        raise CheckpointError(f"{path}: split.count={_short(count)}: a split GGUF is not "
                              "supported; merge its parts first (llama.cpp's gguf-split --merge)")
    for key, value in meta.items():
        if key.startswith(HARMLESS_PREFIXES) or key.startswith(arch + ".") \
                or key in ("split.no", "split.count", "split.tensors.count"):
            continue
        if key.startswith("tokenizer.") and _is_tokenizer_key(key):
            continue
        raise CheckpointError(f"{path}: {key}={_short(value)}: unknown metadata key; "
                              "refusing rather than guessing whether it changes the model")
    check_tokenizer_types(meta, str(path))


def _head_dim(m: _Meta, config: dict) -> None:
    """head_dim (stated, or hidden/heads) must be positive and even: RoPE rotates pairs, and
    llama.cpp's q/k row order interleaves them."""
    d = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if d <= 0 or d % 2:
        name = next((n for n in ("rope.dimension_count", "attention.key_length") if m.has(n)),
                    "attention.head_count")
        m.refuse(name, f"gives head_dim {d}; a positive even head_dim is needed (RoPE rotates "
                       "pairs of values)")


def _config(f: GGUFFile, arch: str, path: Path) -> dict:
    meta, by_name = f.meta, {t.name: t for t in f.tensors}
    m = _Meta(meta, arch, path, len(f.tensors))
    n_tokens = len(meta.get("tokenizer.ggml.tokens") or [])
    rope_freqs = None
    if "rope_freqs.weight" in by_name:
        if arch != "llama":
            raise CheckpointError(f"{path}: tensor rope_freqs.weight (RoPE frequency factors) "
                                  f"is not supported for architecture {arch!r}")
        rope_freqs = _dequantize(by_name["rope_freqs.weight"], path).reshape(-1)
    if arch == "llama":
        if meta.get("general.name") == "mistral":
            raise CheckpointError(
                f"{path}: general.name='mistral': transformers reads such a llama-architecture "
                "file as Mistral with a 4096-token sliding window, llama.cpp as Llama with full "
                "attention; the file does not say which is meant")
        config = _llama_config(m, n_tokens, rope_freqs)
    elif arch in ("qwen2", "qwen3"):
        config = _qwen_config(m, n_tokens, qwen3=arch == "qwen3")
    elif arch in gguf_hybrid.ARCHITECTURES:
        config = gguf_hybrid.config(arch, m, n_tokens, set(by_name))
    else:
        config = _gemma3_config(m, n_tokens)
    _head_dim(m, config)
    left = m.leftovers()
    if left:
        k = left[0]
        raise CheckpointError(f"{path}: {k}={_short(meta[k])}: metadata key not supported for "
                              f"architecture {arch!r}; refusing rather than guessing whether it "
                              "changes the model")
    # llama.cpp writes output.weight only when the head is not the embedding matrix
    config["tie_word_embeddings"] = "output.weight" not in by_name
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        config[f"{name}_token_id"] = meta.get(f"tokenizer.ggml.{key}")
    return config


def _tensor_plan(f: GGUFFile, arch: str, config: dict, path: Path) -> dict[str, str]:
    """GGUF name -> Hugging Face name for every tensor, after checking names, shapes, types
    and completeness (so that no work is done on a file that will be refused)."""
    if arch in gguf_hybrid.ARCHITECTURES:
        return _hybrid_plan(f, arch, config, path)
    shapes = expected_shapes(arch, config)
    names = {}
    for t in f.tensors:
        if t.name == "rope_freqs.weight":
            continue  # became rope_parameters
        hf = hf_name(arch, t.name)
        if hf is None or hf not in shapes:
            raise CheckpointError(f"{path}: unexpected tensor {t.name} for a {arch} model of "
                                  f"{config['num_hidden_layers']} layers; refusing rather than "
                                  "dropping it")
        if hf in names.values():
            raise CheckpointError(f"{path}: tensor {t.name}: {hf} is stored twice")
        names[t.name] = hf
        shape = tuple(reversed(t.shape))  # ggml lists dims fastest first
        while len(shape) > len(shapes[hf]) and shape[0] == 1:
            shape = shape[1:]
        if shape != shapes[hf]:
            raise CheckpointError(f"{path}: tensor {t.name} has shape {shape}, expected "
                                  f"{shapes[hf]} for {hf} under the file's metadata")
        if t.tensor_type.name not in TENSOR_TYPES:
            _dequantize(t, path)  # refuses by tensor name and type
    missing = [k for k in shapes if k not in names.values()]
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]} (and {len(missing) - 1} more) missing "
                              f"for a {arch} model")
    return names


def load_tensors(f: GGUFFile, names: dict[str, str], arch: str, config: dict, path: Path,
                 progress: bool = False) -> tuple[dict, dict]:
    """Dequantize the planned tensors to float32 and undo llama.cpp's transforms:
    ``(tensors, origin)`` keyed by Hugging Face name."""
    if arch in gguf_hybrid.ARCHITECTURES:
        return _hybrid_load(f, names, arch, config, path, progress)
    shapes = expected_shapes(arch, config)
    items = [t for t in f.tensors if t.name in names]
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc=f"dequantizing {path.name}", unit="tensor")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors, origin = {}, {}
    for t in items:
        hf = names[t.name]
        w = _dequantize(t, path)
        try:
            w = torch.from_numpy(w).reshape(shapes[hf])
            if arch == "llama" and ".self_attn.q_proj." in hf:
                w = unpermute_rows(w, heads).contiguous()
            elif arch == "llama" and ".self_attn.k_proj." in hf:
                w = unpermute_rows(w, kv_heads).contiguous()
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {t.name} ({t.tensor_type.name}, {w.numel():,} "
                                  f"values) cannot be laid out as {hf} {shapes[hf]} "
                                  f"({type(e).__name__}: {e})") from None
        if arch == "gemma3" and hf.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w) RMSNorm weight as 1 + w
        tensors[hf], origin[hf] = w, t.name
    return tensors, origin


def _hybrid_plan(f: GGUFFile, arch: str, config: dict, path: Path) -> dict[str, str]:
    """As _tensor_plan, for the hybrid architectures (gguf_hybrid.plan): some Hugging Face
    tensors come from two GGUF tensors. Shapes may differ from the converter's by
    dimensions of size 1 (llama.cpp treats them alike)."""
    targets = gguf_hybrid.plan(arch, config, {t.name for t in f.tensors})
    wanted = {}
    for hf, target in targets.items():
        for src, shape in zip(target.sources, target.shapes):
            wanted[src] = (hf, shape)
    names = {}
    for t in f.tensors:
        if t.name not in wanted:
            raise CheckpointError(f"{path}: unexpected tensor {t.name} for a {arch} model of "
                                  f"{config['num_hidden_layers']} layers (layer types "
                                  f"{_short(config.get('layer_types'))}); refusing rather "
                                  "than dropping it")
        hf, expected = wanted[t.name]
        shape = tuple(reversed(t.shape))
        if [d for d in shape if d != 1] != [d for d in expected if d != 1]:
            raise CheckpointError(f"{path}: tensor {t.name} has shape {shape}, expected "
                                  f"{expected} for {hf} under the file's metadata")
        if t.tensor_type.name not in TENSOR_TYPES:
            _dequantize(t, path)  # refuses by tensor name and type
        names[t.name] = hf
    missing = [s for s in wanted if s not in names]
    if missing:
        raise CheckpointError(f"{path}: tensor {missing[0]} (and {len(missing) - 1} more) missing "
                              f"for a {arch} model")
    return names


def _hybrid_load(f: GGUFFile, names: dict[str, str], arch: str, config: dict, path: Path,
                 progress: bool) -> tuple[dict, dict]:
    targets = gguf_hybrid.plan(arch, config, {t.name for t in f.tensors})
    by_name = {t.name: t for t in f.tensors}
    items = list(targets.items())
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc=f"dequantizing {path.name}", unit="tensor")
    tensors, origin = {}, {}
    for hf, target in items:
        parts = []
        for src, shape in zip(target.sources, target.shapes):
            t = by_name[src]
            parts.append(torch.from_numpy(_dequantize(t, path)).reshape(shape))
        tensors[hf] = target.build(*parts).contiguous()
        origin[hf] = "+".join(target.sources)
    return tensors, origin


def _read_checked(path: Path) -> tuple[GGUFFile, str, dict]:
    """The file, its architecture and its config, all keys and the tensor table checked."""
    f = read_file(path)
    arch = f.meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: general.architecture={_short(arch)} is not supported "
                              f"(supported: {', '.join(ARCHITECTURES)})")
    _check_keys(f.meta, arch, path)
    return f, arch, _config(f, arch, path)


def read_gguf(path: str | Path, progress: bool = False) -> GGUFCheckpoint:
    """Read a GGUF file of a supported architecture (``ARCHITECTURES``)."""
    path = Path(path)
    f, arch, config = _read_checked(path)
    names = _tensor_plan(f, arch, config, path)
    tok = build_tokenizer(f.meta, arch, str(path))
    tensors, origin = load_tensors(f, names, arch, config, path, progress)
    return GGUFCheckpoint(path=path, config=config, tensors=tensors, origin=origin,
                          tokenizer=HFTokenizer.from_tokenizer(tok, path))


def read_gguf_config(path: str | Path) -> dict:
    """Only the config (as :func:`read_gguf` builds it), checking the metadata and the
    tensor table but dequantizing nothing (for ``sbsnn info``)."""
    path = Path(path)
    f, arch, config = _read_checked(path)
    _tensor_plan(f, arch, config, path)
    return config


def _short(value) -> str:
    """A value for a one-line message: long lists by their first items and length."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(repr(v)[:20] for v in value[:4])}, ... ({len(value):,} items)]"
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."
