"""Hostile GGUF files, second pass: bounded before anything is allocated, tiled strictly.

- counts read from the file (a block count of 10**9, a metadata array of 2**40 items, a
  tensor table of 2**40 entries) are refused by name, with the memory of a small file;
- tensor data that overlaps, starts off the file's alignment, or has a row length that is
  not a multiple of its type's block is refused (llama.cpp's loader refuses all three);
- a zero head count is named, not a ZeroDivisionError;
- hypothesis: bytes of a valid file's header, metadata and tensor table changed at
  random are refused naming the file, or read to the same model, never with more memory
  than a bound proportional to the file.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gguf_files as gf
from sbsnn.errors import CheckpointError
from sbsnn.models.gguf import read_gguf, read_gguf_config

gguf = pytest.importorskip("gguf")
REPO = Path(__file__).resolve().parent.parent


def _model(tmp_path: Path, name: str = "m.gguf", **meta_changes) -> Path:
    vocab = gf.spm_vocab()
    meta = gf.model_meta("llama", vocab=vocab)
    tensors = gf.model_tensors("llama", meta, qtype=gguf.GGMLQuantizationType.F32)
    meta.update({f"llama.{k}": v for k, v in meta_changes.items()})
    return gf.write_gguf(tmp_path / name, "llama", meta, tensors)


def _info_in_child(path: Path, limit_gb: float = 3.0) -> tuple[int, str, int]:
    """``sbsnn info PATH`` in a child with an address-space limit: (status, stderr, peak RSS
    in MB of the child)."""
    def limit():
        lim = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    code = ("import resource, sys; from sbsnn.cli import main; rc = main(['info', sys.argv[1]]); "
            "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
            "sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=120, preexec_fn=limit, cwd=REPO)
    peak = [ln for ln in r.stderr.splitlines() if ln.startswith("PEAK")]
    return r.returncode, r.stderr, int(peak[-1].split()[1]) // 1024 if peak else -1


def _baseline_peak(tmp_path: Path) -> int:
    rc, err, peak = _info_in_child(_model(tmp_path, "ok.gguf"))
    assert rc == 0, err
    return peak


# ------------------------------------------------------------------- counts
def test_a_block_count_of_a_billion_is_refused_with_a_small_files_memory(tmp_path):
    path = _model(tmp_path, block_count=10**9)
    rc, err, peak = _info_in_child(path)
    assert rc == 2 and "llama.block_count" in err and str(path) in err, err
    assert peak < _baseline_peak(tmp_path) + 100, peak       # MB: nothing built per block


def _raw_gguf(kvs: bytes, n_kv: int, n_tensors: int = 0, tail: bytes = b"\0" * 64) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tail


def _kv_string_array(key: str, count: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IIQ", 9, 8, count)


@pytest.mark.parametrize("what, data, culprit", [
    ("array", _raw_gguf(_kv_string_array("tokenizer.ggml.tokens", 2**40), 1),
     "tokenizer.ggml.tokens declares 1,099,511,627,776 items"),
    ("tensors", _raw_gguf(b"", 0, n_tensors=2**40), "the tensor table declares"),
    ("keys", _raw_gguf(b"", 2**40), "the metadata table declares"),
    ("string", _raw_gguf(struct.pack("<Q", 2**62) + b"abc", 1), "a metadata key declares"),
])
def test_counts_beyond_the_file_are_refused_before_they_are_used(tmp_path, what, data, culprit):
    path = tmp_path / f"{what}.gguf"
    path.write_bytes(data)
    rc, err, peak = _info_in_child(path, limit_gb=2.0)
    assert rc == 2 and culprit in err and str(path) in err and "Memory" not in err, err
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_gguf(path)


def test_a_zero_head_count_is_named(tmp_path):
    path = _model(tmp_path, **{"attention.head_count": 0})
    with pytest.raises(CheckpointError, match=r"llama.attention.head_count=0: must be a whole"):
        read_gguf_config(path)


# ------------------------------------------------------------------- tiling
def _tensor_fields(path: Path) -> dict[str, dict]:
    """Byte positions of each tensor's type and offset fields in the tensor table."""
    r = gguf.GGUFReader(path)
    out = {}
    for t in r.tensors:
        sizes = [p.nbytes for p in t.field.parts]
        start = t.field.offset
        out[t.name] = {"type_at": start + sum(sizes[:-2]), "offset_at": start + sum(sizes[:-1]),
                       "offset": int(t.data_offset - r.data_offset) if hasattr(t, "data_offset")
                       else None, "numel": int(np.prod(t.shape))}
    return out


def _patch(path: Path, at: int, fmt: str, value) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, data, at, value)
    path.write_bytes(bytes(data))


def _offsets(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    return {n: struct.unpack_from("<Q", data, f["offset_at"])[0]
            for n, f in _tensor_fields(path).items()}


def test_overlapping_tensors_are_refused(tmp_path):
    path = _model(tmp_path)
    offs = _offsets(path)
    a, b = sorted(offs, key=offs.get)[3:5]
    _patch(path, _tensor_fields(path)[b]["offset_at"], "Q", offs[a])
    with pytest.raises(CheckpointError, match="overlap"):
        read_gguf(path)


def test_a_tensor_off_the_alignment_is_refused(tmp_path):
    path = _model(tmp_path)
    offs = _offsets(path)
    last = max(offs, key=offs.get)
    _patch(path, _tensor_fields(path)[last]["offset_at"], "Q", offs[last] + 4)
    with pytest.raises(CheckpointError, match="not a multiple of the file's alignment"):
        read_gguf(path)


def test_a_type_whose_block_does_not_fit_the_row_is_refused(tmp_path):
    path = _model(tmp_path)
    fields = _tensor_fields(path)
    name = "blk.0.attn_norm.weight"                    # 64 float32 values per row
    _patch(path, fields[name]["type_at"], "I", int(gguf.GGMLQuantizationType.Q4_K))  # block 256
    with pytest.raises(CheckpointError, match=r"blk.0.attn_norm.weight \(Q4_K\).*block of 256"):
        read_gguf(path)


# ------------------------------------------------------------------- hypothesis
@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    path = _model(tmp_path_factory.mktemp("hyp"))
    r = gguf.GGUFReader(path)
    return path.read_bytes(), int(r.data_offset), read_gguf_config(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_changed_header_bytes_are_refused_or_read_the_same_model(tmp_path, small_gguf, data):
    raw, data_offset, config = small_gguf
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(4, data_offset - 1))
        kind = data.draw(st.sampled_from(["byte", "u64", "u32"]))
        if kind == "byte":
            buf[at] = data.draw(st.integers(0, 255))
        else:
            fmt = "<Q" if kind == "u64" else "<I"
            if at + struct.calcsize(fmt) <= data_offset:
                hi = 2**64 - 1 if kind == "u64" else 2**32 - 1
                struct.pack_into(fmt, buf, at, data.draw(st.sampled_from([0, 1, 2**31, 2**40 % hi, hi])))
    path = tmp_path / "h.gguf"
    path.write_bytes(bytes(buf))
    tracemalloc.start()
    try:
        got = read_gguf_config(path)
    except CheckpointError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        got = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 * len(raw) + (16 << 20), peak
    if got is not None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            assert got[key] == config[key] or key == "vocab_size"
