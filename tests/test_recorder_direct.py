"""Counts compressed by sbsnn (sbsnn.sim.chunk_codec, sbsnn.sim.counts_writer): the bytes
HDF5's own lzf + fletcher32 pipeline accepts, and recordings that read back exactly what
the pipeline's recordings hold."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbsnn.sim import chunk_codec as C
from sbsnn.sim import recorder as R
from sbsnn.sim.recorder import Recorder, load_recording

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(C.kernels() is None, reason="numba is not installed")]


chunks = st.one_of(
    st.binary(min_size=1, max_size=3000),
    # small alphabets and runs, as counts bytes are
    st.lists(st.sampled_from([0, 0, 0, 1, 255, 2, 254]), min_size=1, max_size=4000).map(bytes),
    st.builds(lambda k, n: bytes(k) * n, st.binary(min_size=1, max_size=9), st.integers(1, 2000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=chunks)
def test_lzf_stream_decodes_to_its_input_and_matches_the_plain_form(data):
    lz, fl, enc = C.kernels()
    src = np.frombuffer(data, np.uint8)
    out = np.empty(C.encoded_bound(src.size), np.uint8)
    htab = np.empty(1 << 14, np.int32)
    n = enc(src, out, htab)
    ref = np.empty_like(out)
    assert C.encode_chunk_py(src, ref, htab.copy()) == n        # numba = plain Python
    assert np.array_equal(out[:n], ref[:n])
    assert n <= C.encoded_bound(src.size)
    assert C.lzf_decompress(out[:n - 4].tobytes(), src.size) == data
    assert int(fl(out, n - 4)) == int.from_bytes(out[n - 4:n].tobytes(), "little")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1001])
def test_fletcher32_is_hdf5s(tmp_path, size):
    """The checksum HDF5 itself appends to a chunk (fletcher32 alone, odd sizes too)."""
    data = np.random.default_rng(size).integers(-128, 128, size).astype(np.int8)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", data=data, chunks=(size,), fletcher32=True)
        f.flush()
        _, stored = ds.id.read_direct_chunk((0,))
    raw = np.frombuffer(stored[:-4], np.uint8)
    assert stored[:-4] == data.tobytes()
    want = int.from_bytes(stored[-4:], "little")
    assert int(C.kernels()[1](raw, size)) == want == int(C.fletcher32_py(raw, size))


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "i8"])
def test_direct_chunks_read_back_through_h5pys_own_filter(tmp_path, dtype):
    """A chunk row encoded by sbsnn, stored with write_direct_chunk, read by plain h5py
    (its lzf filter and HDF5's checksum), columns split and zero-padded."""
    from sbsnn.sim.counts_writer import encode_row

    rng = np.random.default_rng(1)
    rows = rng.integers(-3, 4, (8, 37)).astype(dtype)
    rows[rng.random(rows.shape) < 0.5] = 0
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("c", shape=(8, 37), maxshape=(None, 37), dtype=dtype,
                              chunks=(8, 16), compression="lzf", fletcher32=True)
        for c0, data in encode_row(rows, 16):
            ds.id.write_direct_chunk((0, c0), data)
        np.testing.assert_array_equal(ds[:], rows)       # in the writing session
    with h5py.File(path, "r") as f:                       # and after
        np.testing.assert_array_equal(f["c"][:], rows)


# ------------------------------------------------------------------ whole recordings
def _calls(seed: int, coding: str, widths=(40, 5)):
    """Calls of two layers (one wider than a chunk's columns), with counts beyond int8 and
    beyond int16 in later calls, and a sibling handed the same tensors."""
    g = torch.Generator().manual_seed(seed)
    lo = 0 if coding == "binary" else -4
    calls = []
    for i, n in enumerate((3, 17, 1, 40, 9, 70, 2)):
        for name, d in zip(("l.a", "l.b"), widths):
            c = torch.randint(lo, 5, (n, d), generator=g, dtype=torch.int32)
            c[torch.rand(n, d, generator=g) < 0.6] = 0
            if i == 3 and name == "l.a":
                c[0, 1] = 300 if coding == "binary" else -300          # beyond int8
            if i == 5 and name == "l.b":
                c[-1, 0] = 70_000                                       # beyond int16
            v = torch.rand(n, 1, generator=g) + 0.5
            calls.append((name, c, v))
            if name == "l.a":
                calls.append(("l.a2", c, v))            # the same tensors: a hard link
    return calls


def _record(path, calls, flush_every, **kw):
    with Recorder(path, metadata={"coding": kw.pop("coding")}, chunk_tokens=16, **kw) as r:
        for i, (name, c, v) in enumerate(calls):
            r.write(name, c, v)
            if flush_every and i % flush_every == flush_every - 1:
                r.flush()


@pytest.mark.parametrize("coding", ["ternary", "binary"])
@pytest.mark.parametrize("flush_every", [0, 1, 5])
def test_direct_recording_reads_back_the_reference_counts(tmp_path, monkeypatch, coding,
                                                          flush_every):
    """Counts and thresholds read back exactly, for both codings, with and without the
    background thread, equal to HDF5's own pipeline writing the same calls (same dtypes,
    same calls), through widening to int16 and int32 and shared datasets."""
    calls = _calls(7, coding)
    files = {}
    for how in ("direct", "inline", "pipeline"):
        p = tmp_path / f"{how}.h5"
        with monkeypatch.context() as m:
            if how == "pipeline":
                m.setattr(R, "direct_writes", lambda *a: False)
            _record(p, calls, flush_every, coding=coding, background=how != "inline")
        files[how] = p
    with load_recording(files["pipeline"]) as ref:
        for how in ("direct", "inline"):
            with load_recording(files[how]) as rec:
                assert rec.layers == ref.layers == ["l.a", "l.a2", "l.b"]
                for name in rec.layers:
                    want = torch.cat([c for n, c, _ in calls if n == name]).numpy()
                    v = torch.cat([v.reshape(-1) for n, _, v in calls if n == name]).numpy()
                    got = rec.counts(name)
                    assert got.dtype == ref.counts(name).dtype
                    np.testing.assert_array_equal(got[:], want)
                    np.testing.assert_array_equal(rec.thresholds(name)[:], v)
                    np.testing.assert_array_equal(rec.call_offsets(name)[:],
                                                  ref.call_offsets(name)[:])
                    np.testing.assert_array_equal(rec.call_steps(name)[:],
                                                  ref.call_steps(name)[:])
                assert rec.counts("l.a").dtype == np.int16 and rec.counts("l.b").dtype == np.int32
    with h5py.File(files["direct"], "r") as f:             # plain h5py reads it too
        np.testing.assert_array_equal(f["layers/l.b/counts"][:], torch.cat(
            [c for n, c, _ in calls if n == "l.b"]).numpy())


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=12),
       flushes=st.lists(st.booleans(), min_size=12, max_size=12), seed=st.integers(0, 99))
def test_any_call_sizes_and_flush_points_read_back(tmp_path, sizes, flushes, seed):
    """Whatever the call sizes (partial chunk rows, rows spanning several chunk rows) and
    wherever the flushes fall, the counts read back."""
    g = torch.Generator().manual_seed(seed)
    calls = [torch.randint(-2, 3, (n, 6), generator=g, dtype=torch.int8) for n in sizes]
    path = tmp_path / f"h{seed}_{len(sizes)}.h5"
    with Recorder(path, chunk_tokens=8) as r:
        for c, fl in zip(calls, flushes):
            r.write("x", c, torch.ones(len(c), 1))
            if fl:
                r.flush()
    with load_recording(path) as rec:
        if sum(sizes):
            np.testing.assert_array_equal(rec.counts("x")[:], torch.cat(calls).numpy())


def test_chunks_split_by_columns_read_back(tmp_path):
    """Rows wider than a chunk's columns (chunk_tokens 2^16: 16 columns a chunk): the
    last chunk of a row is zero-padded on disk, never read back."""
    g = torch.Generator().manual_seed(5)
    calls = [torch.randint(-9, 10, (n, 40), generator=g, dtype=torch.int16) for n in (5, 11)]
    with Recorder(tmp_path / "w.h5", chunk_tokens=1 << 16) as r:
        assert r._direct
        for c in calls:
            r.write("x", c, torch.ones(len(c), 1))
            r.flush()
    with load_recording(tmp_path / "w.h5") as rec:
        assert rec.counts("x").chunks == (1 << 16, 16)
        np.testing.assert_array_equal(rec.counts("x")[:], torch.cat(calls).numpy())


def test_in_flight_rows_stay_bounded(tmp_path):
    """A long call hands the background thread at most MAX_IN_FLIGHT chunk rows at once."""
    from sbsnn.sim import counts_writer as W

    seen = []
    real = W.CountsWriter._write_row

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        seen.append(len(self.in_flight))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(W.CountsWriter, "_write_row", spy)
        c = torch.randint(-3, 4, (40 * 8, 9), dtype=torch.int8)
        with Recorder(tmp_path / "b.h5", chunk_tokens=8) as r:
            r.write("x", c, torch.ones(len(c), 1))
    assert seen and max(seen) <= W.MAX_IN_FLIGHT
    with load_recording(tmp_path / "b.h5") as rec:
        np.testing.assert_array_equal(rec.counts("x")[:], c.numpy())


def test_writing_on_after_a_call_cut_short_past_a_held_row(tmp_path, monkeypatch):
    """A call cut short after it stored fresh chunk rows past a row held since the last
    flush: the writer goes back, holds those rows too, and the file reads back the
    calls that were kept."""
    g = torch.Generator().manual_seed(4)
    c = [torch.randint(-3, 4, (n, 5), generator=g, dtype=torch.int8) for n in (6, 4, 8, 6)]
    real = R._append

    def flaky(ds, start, data):
        if ds.name.endswith("events/step"):
            raise KeyboardInterrupt
        real(ds, start, data)
    path = tmp_path / "cut.h5"
    with Recorder(path, chunk_tokens=4, record_events=True) as r:
        r.write("a", c[0], torch.ones(6, 1))
        r.flush()                                   # chunk row 1 stored partial
        r.write("a", c[1], torch.ones(4, 1))        # row 1 full: held
        monkeypatch.setattr(R, "_append", flaky)
        with pytest.raises(KeyboardInterrupt):
            r.write("a", c[2], torch.ones(8, 1))    # rows 2 and 3 stored, then cut short
        monkeypatch.setattr(R, "_append", real)
        r.write("a", c[3], torch.full((6, 1), 2.0))
    with load_recording(path) as rec:
        kept = torch.cat([c[0], c[1], c[3]])
        np.testing.assert_array_equal(rec.counts("a")[:], kept.numpy())
        np.testing.assert_array_equal(rec.thresholds("a")[:], [1.0] * 10 + [2.0] * 6)
        assert rec.call_offsets("a")[:].tolist() == [0, 6, 10]
