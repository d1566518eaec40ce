"""Hostile GGUF files written byte by byte (issue 20): memory bombs, tensor tables that
do not tile the data as llama.cpp requires, zero or negative sizes, wrong value types.

Each damaged file must be refused in one line naming the file and the key or tensor, by
``read_gguf`` and by ``sbsnn info`` (exit 2); valid layouts llama.cpp reads (another
alignment, version 2, bytes after the data) must load to the same tensors. A hypothesis
test mutates the counts, lengths, types and offsets of a small valid file: what sbsnn
accepts holds the bytes ``gguf.GGUFReader`` reads; the rest is refused by name. A
subprocess measures the peak memory of ``sbsnn info`` and a load on the bombs.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from gguf_files import (ARRAY, FLOAT32, INT32, STRING, UINT32, UINT64, RawGGUF,  # noqa: E402
                        raw_model)

import sbsnn.cli as cli  # noqa: E402
from sbsnn.errors import SbsnnError  # noqa: E402
from sbsnn.models.errors import CheckpointError  # noqa: E402
from sbsnn.models.gguf import read_file, read_gguf, read_gguf_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> bytes:
    return raw_model(tmp_path_factory.mktemp("llama"), "llama").to_bytes()


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> bytes:
    return raw_model(tmp_path_factory.mktemp("gemma"), "gemma3", window=16).to_bytes()


def _patch(data: bytes, raw: RawGGUF, what: str, value: int, nth: int = 0) -> bytes:
    """``data`` (written from ``raw``) with the nth field named ``what`` set to ``value``."""
    pos, fmt, _ = [f for f in raw.fields if f[2] == what][nth]
    out = bytearray(data)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def _n_bytes(dims, t) -> int:
    block, size = gguf.GGML_QUANT_SIZES[Q(t)]
    return int(np.prod(dims)) // block * size


def relayout(raw: RawGGUF, alignment: int) -> RawGGUF:
    """The same tensors laid out (offsets, padding) for another alignment."""
    old = raw.alignment
    chunks, off = [], 0
    for name, dims, t, o in raw.tensors:
        chunks.append(raw.blob[o:o + _n_bytes(dims, t)])
    new = RawGGUF([list(e) for e in raw.kvs], [list(e) for e in raw.tensors], b"",
                  version=raw.version, alignment=alignment)
    blob = bytearray()
    for e, chunk in zip(new.tensors, chunks):
        e[3] = off
        blob += chunk + b"\0" * ((-len(chunk)) % alignment)
        off = len(blob)
    new.blob = bytes(blob)
    if alignment != 32 or old != 32:
        kv = [e for e in new.kvs if e[0] == "general.alignment"]
        if kv:
            kv[0][2] = alignment
        else:
            new.kvs.append(["general.alignment", UINT32, alignment])
    return new


def _refused(path: Path, capsys, *named: str) -> str:
    """Refused by read_gguf and by ``sbsnn info`` (exit 2), one line naming the file and
    ``named``; returns the message."""
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for n in named:
        assert n in msg, (n, msg)
    capsys.readouterr()
    assert cli.main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "internal error" not in err, err
    return msg


# ----------------------------------------------------------------------------- cases
def _kv(key, vtype, value):
    def f(r: RawGGUF):
        e = [e for e in r.kvs if e[0] == key]
        if e:
            e[0][1], e[0][2] = vtype, value
        else:
            r.kvs.append([key, vtype, value])
    return f


def _tensor(name, i, value):
    def f(r: RawGGUF):
        r.tensor(name)[i] = value(r.tensor(name)[i]) if callable(value) else value
    return f


# (case id, model, change to the RawGGUF, then (field, value) patched in the bytes, named)
LLAMA = "llama"
CASES = [
    # tiling: overlap, misaligned offset, gap, a type whose bytes do not match, data past end
    ("overlap", LLAMA, _tensor("blk.0.attn_norm.weight", 3, lambda o: o - 32), None,
     ["blk.0.attn_norm.weight", "overlaps"]),
    ("misaligned", LLAMA, _tensor("blk.0.attn_norm.weight", 3, lambda o: o + 4), None,
     ["blk.0.attn_norm.weight", "alignment 32"]),
    ("gap", LLAMA, _tensor("blk.0.attn_norm.weight", 3, lambda o: o + 32), None,
     ["blk.0.attn_norm.weight", "gap"]),
    ("f32-as-q8_0", LLAMA, _tensor("output_norm.weight", 2, int(Q.Q8_0)), None,
     ["output_norm.weight (Q8_0", "expects"]),
    ("block-not-dividing", LLAMA, _tensor("output_norm.weight", 2, int(Q.Q4_K)), None,
     ["output_norm.weight", "Q4_K blocks of 256"]),
    ("unknown-type", LLAMA, _tensor("output_norm.weight", 2, 99), None,
     ["output_norm.weight", "ggml type 99"]),
    ("past-end", LLAMA, lambda r: setattr(r, "blob", r.blob[:-300]), None,
     ["truncated or corrupt", "ends at byte"]),
    ("five-dims", LLAMA, _tensor("output_norm.weight", 1, [64, 1, 1, 1, 1]), None,
     ["output_norm.weight", "5 dimensions"]),
    ("duplicate-tensor", LLAMA, lambda r: r.tensors.append(list(r.tensors[-1])), None,
     [" twice"]),
    ("duplicate-key", LLAMA, lambda r: r.kvs.append(list(r.kvs[-1])), None, [" twice"]),
    ("alignment-0", LLAMA, _kv("general.alignment", UINT32, 0), None, ["general.alignment"]),
    ("alignment-3", LLAMA, _kv("general.alignment", UINT32, 3), None, ["general.alignment"]),
    ("alignment-u64", LLAMA, _kv("general.alignment", UINT64, 64), None, ["general.alignment"]),
    ("alignment-huge", LLAMA, _kv("general.alignment", UINT32, 1 << 31), None,
     ["truncated or corrupt"]),
    ("nested-array", LLAMA, _kv("general.tags", ARRAY, [ARRAY, [[UINT32, [1]]]]), None,
     ["general.tags", "array of arrays"]),
    ("bad-utf8-key", LLAMA, lambda r: r.kvs.append([b"general.\xff", UINT32, 1]), None,
     ["not valid UTF-8"]),
    ("value-type-13", LLAMA, _kv("general.foo", 13, 0), None, ["general.foo", "value type 13"]),
    # memory bombs: counts and sizes the file cannot hold
    ("block-count-1e9", LLAMA, _kv("llama.block_count", UINT32, 10 ** 9), None,
     ["llama.block_count"]),
    ("block-count-2^40", LLAMA, _kv("llama.block_count", UINT64, 1 << 40), None,
     ["llama.block_count"]),
    ("block-count-beyond-tensors", LLAMA, _kv("llama.block_count", UINT32, 9), None,
     ["llama.block_count", "tensors"]),
    ("vocab-2^40", LLAMA, _kv("llama.vocab_size", UINT64, 1 << 40), None, ["llama.vocab_size"]),
    ("ffn-2^40", LLAMA, _kv("llama.feed_forward_length", UINT64, 1 << 40), None,
     ["llama.feed_forward_length"]),
    ("last-array-2^40", LLAMA, _kv("general.zz", ARRAY, [UINT32, [1, 2, 3]]),
     ("length of general.zz", 1 << 40), ["general.zz", "1,099,511,627,776 items"]),
    ("string-array-2^40", LLAMA, None, ("length of tokenizer.ggml.tokens", 1 << 40),
     ["tokenizer.ggml.tokens"]),
    ("string-2^62", LLAMA, None, ("length of general.name", 1 << 62), ["general.name"]),
    ("key-length-2^62", LLAMA, None, ("length of key general.name", 1 << 62),
     ["metadata key #"]),
    ("tensor-count-2^63", LLAMA, None, ("tensor count", 1 << 63), ["tensors"]),
    ("key-count-2^40", LLAMA, None, ("key count", 1 << 40), ["metadata keys"]),
    ("n-dims-2^31", LLAMA, None, ("n_dims of output_norm.weight", 1 << 31), ["output_norm.weight"]),
    ("dims-2^40", LLAMA, _tensor("output_norm.weight", 1, [1 << 40, 1 << 40]), None,
     ["output_norm.weight"]),
    # zero, negative and non-integer sizes: refused by key, never a ZeroDivisionError
    ("heads-0", LLAMA, _kv("llama.attention.head_count", UINT32, 0), None,
     ["llama.attention.head_count=0", "positive"]),
    ("heads-negative", LLAMA, _kv("llama.attention.head_count", INT32, -4), None,
     ["llama.attention.head_count=-4"]),
    ("heads-nan", LLAMA, _kv("llama.attention.head_count", FLOAT32, float("nan")), None,
     ["llama.attention.head_count", "finite"]),
    ("kv-heads-0", LLAMA, _kv("llama.attention.head_count_kv", UINT32, 0), None,
     ["llama.attention.head_count_kv"]),
    ("hidden-0", LLAMA, _kv("llama.embedding_length", UINT32, 0), None, ["llama.embedding_length"]),
    ("ffn-0", LLAMA, _kv("llama.feed_forward_length", UINT32, 0), None,
     ["llama.feed_forward_length"]),
    ("layers-0", LLAMA, _kv("llama.block_count", UINT32, 0), None, ["llama.block_count"]),
    ("context-0", LLAMA, _kv("llama.context_length", UINT32, 0), None, ["llama.context_length"]),
    ("rope-dims-0", LLAMA, _kv("llama.rope.dimension_count", UINT32, 0), None,
     ["llama.rope.dimension_count"]),
    ("rope-dims-odd", LLAMA, _kv("llama.rope.dimension_count", UINT32, 15), None,
     ["llama.rope.dimension_count"]),
    ("theta-0", LLAMA, _kv("llama.rope.freq_base", FLOAT32, 0.0), None, ["llama.rope.freq_base"]),
    ("eps-negative", LLAMA, _kv("llama.attention.layer_norm_rms_epsilon", FLOAT32, -1.0), None,
     ["llama.attention.layer_norm_rms_epsilon"]),
    ("gemma-key-length-0", "gemma3", _kv("gemma3.attention.key_length", UINT32, 0), None,
     ["gemma3.attention.key_length"]),
    ("gemma-window-negative", "gemma3", _kv("gemma3.attention.sliding_window", INT32, -8), None,
     ["gemma3.attention.sliding_window"]),
    ("gemma-pattern-string", "gemma3", _kv("gemma3.attention.sliding_window_pattern", STRING,
                                           "six"), None,
     ["gemma3.attention.sliding_window_pattern"]),
    # tokenizer keys of the wrong type
    ("tokens-a-string", LLAMA, _kv("tokenizer.ggml.tokens", STRING, "abc"), None,
     ["tokenizer.ggml.tokens"]),
    ("bos-a-string", LLAMA, _kv("tokenizer.ggml.bos_token_id", STRING, "1"), None,
     ["tokenizer.ggml.bos_token_id"]),
    ("scores-strings", LLAMA, lambda r: r.kv("tokenizer.ggml.scores").__setitem__(
        2, [STRING, ["x"] * len(r.kv("tokenizer.ggml.tokens")[2][1])]), None,
     ["tokenizer.ggml.scores"]),
    ("version-1", LLAMA, lambda r: setattr(r, "version", 1), None, ["version 1"]),
    ("big-endian", LLAMA, lambda r: setattr(r, "version", 3 << 24), None, ["big-endian"]),
]


def _case_bytes(source: bytes, change, patch) -> bytes:
    """A case's file: ``source`` parsed, ``change`` applied to its fields, written back,
    then ``patch`` applied to the bytes."""
    raw = RawGGUF.parse(source)
    if change is not None:
        change(raw)
    data = raw.to_bytes()
    return data if patch is None else _patch(data, raw, *patch)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_gguf_refused_by_name(case, llama, gemma, tmp_path, capsys):
    name, arch, change, patch, named = case
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(_case_bytes(llama if arch == LLAMA else gemma, change, patch))
    _refused(path, capsys, *named)


def test_merges_that_do_not_fit_are_refused_by_name(tmp_path, capsys):
    raw = raw_model(tmp_path, "qwen2")
    merges = raw.kv("tokenizer.ggml.merges")[2][1]
    for i, bad in enumerate(["nospace", "a  b", "zzzq qqqz"]):
        merges[0] = bad
        path = tmp_path / f"merges{i}.gguf"
        path.write_bytes(raw.to_bytes())
        with pytest.raises(CheckpointError) as e:
            read_gguf(path)
        assert str(path) in str(e.value) and "tokenizer.ggml.merges" in str(e.value)


def test_long_refused_array_is_not_dumped(tmp_path):
    """A refusal quoting a vocabulary-sized value shows its first items and its length."""
    raw = raw_model(tmp_path, "llama")
    raw.kv("tokenizer.ggml.token_type")[2][1].pop()
    path = tmp_path / "types.gguf"
    path.write_bytes(raw.to_bytes())
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    assert "tokenizer.ggml.token_type" in str(e.value) and len(str(e.value)) < 400


# ----------------------------------------------------------------------------- still valid
def _same_tensors(a: Path, b: Path):
    x, y = read_gguf(a), read_gguf(b)
    assert x.config == y.config and x.tensors.keys() == y.tensors.keys()
    for k in x.tensors:
        assert x.tensors[k].equal(y.tensors[k]), k


@pytest.mark.parametrize("how", ["alignment-64", "alignment-1", "version-2", "trailing-bytes"])
def test_valid_layouts_llama_cpp_reads_still_load(how, llama, tmp_path):
    raw = RawGGUF.parse(llama)
    if how.startswith("alignment"):
        raw = relayout(raw, int(how.split("-")[1]))
    elif how == "version-2":
        raw.version = 2
    else:
        raw.blob += b"\0" * 100
    ref, path = tmp_path / "ref.gguf", tmp_path / f"{how}.gguf"
    ref.write_bytes(llama)
    path.write_bytes(raw.to_bytes())
    _same_tensors(ref, path)


def test_reader_matches_gguf_package_on_tiny_files(llama, gemma, tmp_path):
    for i, data in enumerate((llama, gemma)):
        path = tmp_path / f"{i}.gguf"
        path.write_bytes(data)
        _agrees_with_gguf(path)


def _agrees_with_gguf(path: Path):
    """sbsnn's reader and gguf.GGUFReader see the same metadata and tensor bytes."""
    mine, ref = read_file(path), gguf.GGUFReader(path)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        v = field.contents()
        assert mine.meta[key] == v or (isinstance(v, float) and np.isnan(v)), key
    assert [t.name for t in mine.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(mine.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and a.start == b.data_offset, a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert a.data.tobytes() == b.data.tobytes(), a.name


# ----------------------------------------------------------------------------- hypothesis
_LIMIT = 2 << 30  # address space the property may add to this process (a safety net)


@pytest.fixture
def address_limit():
    """Cap this process's address space a little above what it has mapped, so that an
    unbounded allocation fails with MemoryError instead of taking the machine down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (min(vm + _LIMIT, hard) if hard > 0 else vm + _LIMIT,
                                            hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


_VALUES = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 32, 33, 64, 255,
                                     256, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1,
                                     1 << 40, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]),
                    st.integers(-64, 64))


@pytest.fixture(scope="module")
def mutable(llama):
    raw = RawGGUF.parse(llama)
    data = raw.to_bytes()
    groups: dict[str, list] = {}
    for pos, fmt, what in raw.fields:
        groups.setdefault(what, []).append((pos, fmt))
    return data, groups


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(picks=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), _VALUES,
                                st.booleans()), min_size=1, max_size=3))
def test_mutated_headers_load_right_or_are_refused_by_name(picks, mutable, tmp_path,
                                                           address_limit):
    """Counts, lengths, types and offsets of a valid file set to other values (or moved by
    a little): sbsnn either refuses by name or reads what gguf reads."""
    data, groups = mutable
    names = sorted(groups)
    out = bytearray(data)
    for g, i, value, relative in picks:
        pos, fmt = groups[names[g % len(names)]][i % len(groups[names[g % len(names)]])]
        size = struct.calcsize(fmt)
        old = struct.unpack_from(fmt, out, pos)[0]
        bits = 8 * size
        v = (old + value if relative else value) % (1 << bits)
        if fmt[-1].islower() and v >= 1 << (bits - 1):  # signed formats
            v -= 1 << bits
        struct.pack_into(fmt, out, pos, v)
    path = tmp_path / "mutated.gguf"
    path.write_bytes(bytes(out))
    try:
        read_gguf_config(path)
        ck = read_gguf(path)
    except SbsnnError as e:
        msg = str(e)
        assert str(path) in msg and "\n" not in msg, msg
        event("refused")
        return
    event("accepted")
    _agrees_with_gguf(path)
    ref = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for hf, name in ck.origin.items():
        want = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type)
        got = ck.tensors[hf]
        if ck.config["model_type"] == "llama" and "_proj" in hf and (".q_" in hf or ".k_" in hf):
            continue  # un-permuted rows: compared in test_gguf against transformers
        assert np.array_equal(got.reshape(-1).numpy(), want.reshape(-1)), hf


# ----------------------------------------------------------------------------- peak memory
_CHILD = r"""
import json, resource, sys
from pathlib import Path
import sbsnn.cli as cli
from sbsnn.errors import SbsnnError
from sbsnn.models.gguf import read_gguf

def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
base = hwm()
out = []
for p in sys.argv[1:]:
    rc = cli.main(["info", p])
    try:
        read_gguf(p)
        msg = None
    except SbsnnError as e:
        msg = str(e)
    out.append({"path": p, "rc": rc, "msg": msg, "grew": hwm() - base})
print(json.dumps(out))
"""


def test_bombs_stay_within_memory_bound(llama, tmp_path):
    """`sbsnn info` and a load on each bomb, in a child with a 1 GiB address-space margin:
    all refused, and the peak resident memory grows by less than 64 MiB plus 20 times the
    file (the files are under 200 KB; the unbounded reader went past 4 GB)."""
    bombs = []
    for name, arch, change, patch, _ in CASES:
        if arch == LLAMA and any(s in name for s in ("2^", "1e9")):
            p = tmp_path / f"{name}.gguf"
            p.write_bytes(_case_bytes(llama, change, patch))
            bombs.append(p)
    assert len(bombs) >= 10
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CHILD, *map(str, bombs)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for res in results:
        size = Path(res["path"]).stat().st_size
        assert res["rc"] == 2 and res["msg"] and res["path"] in res["msg"], res
        assert res["grew"] < (64 << 20) + 20 * size, res
