"""Recordings: sbsnn.sim.recorder (Recorder, load_recording) through the real engine."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sbsnn
from sbsnn.converters import SpikingLinear, convert
from sbsnn.models import ByteTokenizer, HybridForCausalLM
from sbsnn.neurons import num_steps
from sbsnn.sim import simulate
from sbsnn.sim.recorder import Recorder, Recording, RecordingError, RowView, load_recording
from sbsnn.sim.recording_layout import group_key

REPO = Path(__file__).resolve().parents[1]
TEXT = "To be, or not to be, that is the question: whether 'tis nobler"  # 64 chars
_CACHE: dict = {}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def snn(tiny_config):
    """A random tiny spiking model (built once per module; read-only in the tests)."""
    if "snn" not in _CACHE:
        torch.manual_seed(0)
        model = HybridForCausalLM(tiny_config()).eval()
        s = convert(model, "paper", group_size=16)
        s.tokenizer = ByteTokenizer()
        _CACHE["snn"] = s
    return _CACHE["snn"]


class Capture:
    """Wraps every SpikingLinear's ``spike``: the ground-truth counts and thresholds of
    each call, in call order; ``fail_after`` raises KeyboardInterrupt at that call."""

    def __init__(self, model, fail_after: int | None = None):
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        self.fail_after = fail_after
        self.mods = [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingLinear)]

    def __enter__(self):
        for name, m in self.mods:
            orig = type(m).spike.__get__(m)

            def spike(x, _orig=orig, _name=name):
                if self.fail_after is not None and len(self.calls) >= self.fail_after:
                    raise KeyboardInterrupt("simulated ^C")
                c, v = _orig(x)
                self.calls.append((_name, c.clone(), v.clone()))
                return c, v
            m.spike = spike
        return self

    def __exit__(self, *exc):
        for _, m in self.mods:
            del m.spike

    def order(self) -> list[str]:
        return list(dict.fromkeys(n for n, _, _ in self.calls))

    def layer(self, name):
        cs = [(c, v) for n, c, v in self.calls if n == name]
        return (torch.cat([c.to(torch.int64) for c, _ in cs]),
                torch.cat([v.reshape(-1) for _, v in cs]), cs)


def _quiet_load(path) -> Recording:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_recording(path)


# ----------------------------------------------------------------------------- engine
def test_round_trip_through_engine(tmp_path, snn):
    path = tmp_path / "s.h5"
    with Capture(snn) as cap:
        res = simulate(snn, TEXT, backend="torch", record=path, block_size=16)
    assert cap.calls, "the capture hook saw no SpikingLinear call"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a complete recording must not warn
        rec = load_recording(path)
    with rec:
        assert rec.complete is True
        md = rec.metadata
        for key in ("sbsnn_version", "tokens", "token_digest", "model_config", "preset",
                    "coding", "k", "group_size"):
            assert key in md, key
        assert md["tokens"] == len(TEXT) and md["preset"] == "paper" and md["group_size"] == 16
        assert md["sbsnn_version"] == sbsnn.__version__
        assert md["model_config"] == snn.config.to_dict()           # parsed back from JSON
        ids = torch.tensor([ByteTokenizer().encode(TEXT)])
        assert md["token_digest"] == hashlib.sha256(ids.numpy().tobytes()).hexdigest()
        assert rec.layers == cap.order() and len(rec.layers) == len(res.layers)

        for name in rec.layers:
            counts, v_th, calls = cap.layer(name)
            ds = rec.counts(name)
            assert isinstance(ds, h5py.Dataset) and ds.shape == tuple(counts.shape)
            assert ds.chunks is not None and ds.compression == "lzf" and not ds.shuffle
            if counts.abs().max() <= 127:
                assert ds.dtype == np.int8, name
            np.testing.assert_array_equal(ds[:], counts.numpy())
            np.testing.assert_array_equal(rec.thresholds(name)[:], v_th.float().numpy())
            offsets = np.cumsum([0] + [c.shape[0] for c, _ in calls[:-1]])
            np.testing.assert_array_equal(rec.call_offsets(name)[:], offsets)
            np.testing.assert_array_equal(rec.call_steps(name)[:],
                                          [num_steps(c, "ternary") for c, _ in calls])
            blocks = list(rec.iter_counts(name, block=5))
            assert torch.equal(torch.cat(blocks).to(torch.int64), counts)
            assert rec.rows(name) == res.layers[name].tokens
            assert rec.events(name) is None
        g = rec._file["layers"][rec.layers[0]]
        assert g.attrs["calls"] == res.layers[rec.layers[0]].calls
    assert not rec._file.id.valid                                     # closed by the with


def test_counts_widen_to_int16_and_int32_keeping_old_rows(tmp_path):
    path = tmp_path / "w.h5"
    g = torch.Generator().manual_seed(0)
    small = [torch.randint(-5, 6, (n, 24), generator=g, dtype=torch.int8) for n in (300, 7, 260)]
    big = torch.randint(-5, 6, (3, 24), generator=g).to(torch.int16)
    big[1, 2] = 1000
    huge = torch.zeros(2, 24, dtype=torch.int32)
    huge[0, 0] = -100_000
    with Recorder(path, metadata={"coding": "ternary"}, chunk_tokens=64) as r:
        for c in small:
            r.write("layer.a", c, torch.rand(c.shape[0], 1))
        r.flush()
        assert r._layers["layer.a"].counts.dtype == np.int8
        r.write("layer.a", big, torch.rand(3, 1))
        assert r._layers["layer.a"].counts.dtype == np.int16
        r.write("layer.a", small[1], torch.rand(7, 1))                # narrow again: stays int16
        r.write("layer.a", huge, torch.rand(2, 1))
    with load_recording(path) as rec:
        ds = rec.counts("layer.a")
        assert ds.dtype == np.int32 and ds.compression == "lzf" and ds.chunks[0] == 64
        expect = torch.cat([c.to(torch.int64) for c in (*small, big, small[1], huge)])
        np.testing.assert_array_equal(ds[:], expect.numpy())
        assert rec.thresholds("layer.a").shape == (expect.shape[0],)
        assert list(rec.call_offsets("layer.a")[:]) == [0, 300, 307, 567, 570, 577]
        assert "counts.widening" not in rec._file["layers/layer.a"]


def test_old_gzip4_recordings_read_as_the_new_default_writes(tmp_path):
    """Files of the writer before issue 22 (gzip level 4) still read, and the default filter
    (lzf) reads back the same counts, thresholds and calls, int8 rows widened by outliers
    beyond int8 (counts up to 10^4) included."""
    g = torch.Generator().manual_seed(3)
    calls = [torch.randint(-3, 4, (n, 300), generator=g).to(torch.int8) for n in (200, 90, 150)]
    calls[1] = calls[1].to(torch.int16)
    calls[1][5, 7], calls[1][60, 299] = 10_000, -3_000           # massive activations
    v = [torch.rand(c.shape[0], 1, generator=g) for c in calls]
    files = {}
    for name, kw in (("old", dict(compression="gzip", compression_opts=4, shuffle=True)), ("new", {})):
        files[name] = tmp_path / f"{name}.h5"
        with Recorder(files[name], metadata={"coding": "ternary"}, chunk_tokens=64, **kw) as r:
            for c, t in zip(calls, v):
                r.write("mlp.down", c, t)
                r.write("attn.q", c[:, :100], t)
    with load_recording(files["old"]) as old, load_recording(files["new"]) as new:
        assert old.counts("mlp.down").compression_opts == 4 and old.counts("mlp.down").shuffle
        assert new.counts("mlp.down").compression == "lzf"
        np.testing.assert_array_equal(new.counts("mlp.down")[:], torch.cat(calls).numpy())
        for name in ("mlp.down", "attn.q"):
            for what in ("counts", "thresholds", "call_offsets", "call_steps"):
                a, b = getattr(old, what)(name)[:], getattr(new, what)(name)[:]
                assert a.dtype == b.dtype, (name, what)
                np.testing.assert_array_equal(a, b)
        assert new.counts("mlp.down").dtype == np.int16
        assert list(new.call_steps("mlp.down")[:]) == [3, 10_000, 3]


def _record_integer_path(model, text: str, path, block: int = 256) -> tuple[int, int]:
    """Feed ``text`` through the integer path in blocks, writing every SpikingLinear
    call into a Recorder (the very counts simulate would record, without the slower
    event accumulation); returns (tokens, float32 bytes of the same trains)."""
    coding = model.spiking_config.coding
    r = Recorder(path, metadata={"coding": coding, "text_chars": len(text)})
    float_bytes = 0

    def on_spikes(name, c, v):
        nonlocal float_bytes
        r.write(name, c, v)
        float_bytes += 4 * c.numel() * num_steps(c, coding)     # tokens x in x T x 4 B
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingLinear)]
    for name, m in mods:
        def spike(x, _orig=type(m).spike.__get__(m), _n=name):
            c, v = _orig(x)
            on_spikes(_n, c, v)
            return c, v
        m.spike = spike
    try:
        ids = torch.tensor([model.tokenizer.encode(text)])
        with torch.no_grad():
            state = model.new_state()
            for s in range(0, ids.shape[1], block):
                model(ids[:, s:s + block], state)
                r.flush()
        r.close(complete=True)
    finally:
        for _, m in mods:
            del m.spike
        r.close(complete=False)
    return ids.shape[1], float_bytes


def test_recording_is_much_smaller_than_float32_trains(tmp_path, snn, capsys):
    held = REPO / "sbsnn" / "data" / "tiny-hybrid" / "heldout.txt"
    if held.exists() and (held.parent / "model.safetensors").exists():
        model = convert(sbsnn.load_model("tiny-hybrid"), "paper")
        text, what = held.read_text(encoding="utf-8"), "tiny-hybrid on its heldout.txt"
    else:
        model = snn
        words = "the spiking brain counts events not multiplications and stays sparse ".split()
        text = " ".join(np.random.default_rng(0).choice(words, 400))[:2000]
        what = "random tiny model on 2000 chars (tiny-hybrid absent)"
    path = tmp_path / "size.h5"
    tokens, float_bytes = _record_integer_path(model, text, path)
    h5_bytes = path.stat().st_size
    with load_recording(path) as rec:
        assert rec.complete
        elements = sum(rec.rows(n) * rec.in_features(n) for n in rec.layers)
        recomputed = 0
        for name in rec.layers:      # the recording's own call bookkeeping gives the same
            offs = np.append(rec.call_offsets(name)[:], rec.rows(name))
            slots = int((np.diff(offs) * rec.call_steps(name)[:]).sum()) * rec.in_features(name)
            recomputed += 4 * slots
        dtypes = sorted({str(rec.counts(n).dtype) for n in rec.layers})
    assert recomputed == float_bytes
    with capsys.disabled():
        print(f"\n[recorder size] {what}: {tokens} tokens, {len(rec.layers)} layers, "
              f"{elements:,} counts ({'/'.join(dtypes)}): .h5 {h5_bytes:,} B "
              f"({h5_bytes / elements:.2f} B/count) vs float32 trains {float_bytes:,} B "
              f"-> {float_bytes / h5_bytes:.0f}x smaller")
    assert float_bytes >= 10 * h5_bytes


# ----------------------------------------------------------------------------- interruption
def test_keyboard_interrupt_leaves_incomplete_file_with_what_was_written(tmp_path, snn):
    path = tmp_path / "int.h5"
    n_layers = sum(isinstance(m, SpikingLinear) for m in snn.modules())
    fail_after = 2 * n_layers + n_layers // 2       # in the middle of the third block
    with Capture(snn, fail_after=fail_after) as cap, pytest.raises(KeyboardInterrupt):
        simulate(snn, TEXT, backend="torch", record=path, block_size=16)
    assert len(cap.calls) == fail_after
    with pytest.warns(UserWarning, match="incomplete"):
        rec = load_recording(path)
    with rec:
        assert rec.complete is False and not rec.damaged
        assert rec._file.attrs["flushes"] == 2
        assert set(rec.layers) == {n for n, _ in cap.mods}
        for name in rec.layers:
            counts, v_th, _ = cap.layer(name)
            assert rec.rows(name) >= 32                     # the two flushed blocks
            np.testing.assert_array_equal(rec.counts(name)[:], counts.numpy())
            np.testing.assert_array_equal(rec.thresholds(name)[:], v_th.float().numpy())


@pytest.mark.parametrize("where", ["call_events", "events/step"])
@pytest.mark.parametrize("flush_inside", [False, True])
def test_interrupt_inside_write_keeps_datasets_aligned(tmp_path, monkeypatch, where, flush_inside):
    """A call cut short anywhere in write() leaves no trace, also when write() flushed
    part of it already (a long call with a CountsWriter: DURABLE_BYTES)."""
    from sbsnn.sim import recorder as R

    path = tmp_path / "mid.h5"
    r = Recorder(path, record_events=True, chunk_tokens=2)
    c = torch.tensor([[1, -2, 0], [3, 0, 0], [0, 1, 1], [2, 2, 0], [1, 0, 0]], dtype=torch.int8)
    r.write("a", c[:2], torch.ones(2, 1))
    if flush_inside:
        monkeypatch.setattr(R, "DURABLE_BYTES", 1)      # a flush before every piece
    real, seen = R._append, []

    def flaky(ds, start, data):
        seen.append(ds.name)
        if ds.name.endswith(where):
            raise KeyboardInterrupt
        real(ds, start, data)
    monkeypatch.setattr(R, "_append", flaky)
    with pytest.raises(KeyboardInterrupt):
        r.write("a", c, torch.full((5, 1), 2.0))
    monkeypatch.setattr(R, "_append", real)
    r.close(complete=False)
    rec = _quiet_load(path)
    with rec:
        assert not rec.damaged and rec.rows("a") == 2 and rec.thresholds("a").shape == (2,)
        assert {k: d.shape[0] for k, d in rec._file["layers/a"].items() if k != "events"} == \
            {"counts": 2, "thresholds": 2, "call_offsets": 1, "call_steps": 1, "call_events": 1}
        assert rec.call_offsets("a").shape == (1,) and rec.events("a")["token"].shape == (6,)
        np.testing.assert_array_equal(rec.counts("a")[:], c[:2].numpy())
        np.testing.assert_array_equal(rec.thresholds("a")[:], [1.0, 1.0])


CHILD = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from sbsnn.converters import SpikingLinear, convert
    from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM
    from sbsnn.sim import recorder as R, simulate

    out, marker, cfg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    torch.manual_seed(0)
    snn = convert(HybridForCausalLM(HybridConfig(**cfg)).eval(), "paper", group_size=16)
    snn.tokenizer = ByteTokenizer()
    seen, state = {}, {"slow": False}
    for name, m in snn.named_modules():
        if isinstance(m, SpikingLinear):
            def spike(x, _orig=m.spike, _n=name):
                if state["slow"]:
                    time.sleep(120)           # the parent kills us here
                c, v = _orig(x)
                seen.setdefault(_n, []).append(c.to(torch.int64))
                return c, v
            m.spike = spike
    flush = R.Recorder.flush
    def flush_and_mark(self):
        flush(self)
        info = {n: [sum(len(c) for c in cs),
                    hashlib.sha256(torch.cat(cs).numpy().tobytes()).hexdigest()]
                for n, cs in seen.items()}
        with open(marker + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(marker + ".tmp", marker)
        state["slow"] = True
    R.Recorder.flush = flush_and_mark
    simulate(snn, "x" * 20 + "To be, or not to be, that is the question", backend="torch",
             record=out, block_size=16)
""")


def test_sigkill_after_a_flush_leaves_a_readable_incomplete_file(tmp_path, tiny_config):
    path, marker = tmp_path / "killed.h5", tmp_path / "flushed.json"
    cfg = {k: v for k, v in vars(tiny_config()).items() if k != "extra"}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(marker), json.dumps(cfg)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if p.poll() is not None:
                pytest.fail("child exited before its first flush:\n" + p.stdout.read().decode())
            assert time.monotonic() < deadline, "no flush within 120 s"
            time.sleep(0.05)
        time.sleep(0.2)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    flushed = json.loads(marker.read_text())
    with h5py.File(path, "r") as f:                      # opens with plain h5py
        assert f.attrs["complete"] == np.False_ and f.attrs["format"] == "sbsnn-recording"
    with pytest.warns(UserWarning, match="incomplete"):
        rec = load_recording(path)
    with rec:
        assert rec.complete is False and not rec.damaged
        assert set(flushed) <= set(rec.layers)
        for name, (rows, digest) in flushed.items():
            assert rec.rows(name) >= rows == 16
            got = rec.counts(name)[:rows].astype(np.int64)
            assert hashlib.sha256(got.tobytes()).hexdigest() == digest, name


def test_damaged_tail_is_cut_off_and_reported(tmp_path):
    """What a kill during a flush can do to the last chunk: it must not read back silently."""
    path = tmp_path / "dmg.h5"
    r = Recorder(path, chunk_tokens=8, record_events=True)
    c = torch.arange(20 * 4, dtype=torch.int64).reshape(20, 4) % 7 - 3
    r.write("a", c[:12], torch.rand(12, 1))                         # call 1: rows 0..11
    r.write("a", c[12:], torch.rand(8, 1))                          # call 2: rows 12..19
    r.write("b", c[:5], torch.rand(5, 1))
    r.close(complete=False)
    with h5py.File(path, "r") as f:
        info = f["layers/a/counts"].id.get_chunk_info_by_coord((16, 0))
    with open(path, "r+b") as fh:                                  # scribble over rows 16..19
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with pytest.warns(UserWarning, match=r"incomplete.*a: 16 of 20 rows readable"):
        rec = load_recording(path)
    with rec:
        assert rec.damaged == {"a": "16 of 20 rows readable"}
        view = rec.counts("a")
        assert isinstance(view, RowView) and view.shape == (16, 4) and len(view) == 16
        np.testing.assert_array_equal(view[:], c[:16].numpy())
        np.testing.assert_array_equal(view[-1], c[15].numpy())
        np.testing.assert_array_equal(view[2:30:3, 1], c[2:16:3, 1].numpy())
        np.testing.assert_array_equal(np.asarray(view), c[:16].numpy())
        with pytest.raises(IndexError):
            view[16]
        assert rec.rows("a") == 16 and rec.thresholds("a").shape == (16,)
        assert rec.call_offsets("a")[:].tolist() == [0, 12]
        ev = rec.events("a")              # only call 1's events: call 2 lost rows 16..19
        assert len(ev["token"]) == int(c[:12].abs().sum()) and ev["token"][:].max() == 11
        assert len(rec.events("b")["token"]) == int(c[:5].abs().sum())
        assert sum(len(b) for b in rec.iter_counts("a", block=3)) == 16
        assert rec.rows("b") == 5 and isinstance(rec.counts("b"), h5py.Dataset)
    # A torn flush can also leave an extent grown over rows never written (they read as
    # fill values): thresholds fill with NaN, so those rows are cut off too.
    with h5py.File(path, "r+") as f:
        for key in ("counts", "thresholds"):
            f["layers/b"][key].resize(9, axis=0)
    with pytest.warns(UserWarning, match="b: 5 of 9 rows readable"):
        rec = load_recording(path)
    with rec:
        assert rec.rows("b") == 5 and rec.counts("b").shape == (5, 4)
        assert np.isfinite(rec.thresholds("b")[:]).all()


# ----------------------------------------------------------------------------- events
def _events_back_to_counts(ev: dict, shape) -> np.ndarray:
    out = np.zeros(shape, np.int64)
    np.add.at(out, (ev["token"][:], ev["channel"][:]),
              ev["polarity"][:].astype(np.int64) * ev["weight"][:])
    return out


def test_events_sum_back_to_counts_through_engine(tmp_path, snn):
    path = tmp_path / "ev.h5"
    simulate(snn, TEXT[:40], backend="torch", record=path, block_size=16, record_events=True)
    with load_recording(path) as rec:
        for name in rec.layers:
            counts = rec.counts(name)[:]
            ev = rec.events(name)
            assert set(ev) == {"token", "channel", "step", "polarity", "weight"}
            assert ev["token"].compression == "lzf"
            assert len(ev["token"]) == int(np.abs(counts).sum())     # ternary: |c| events
            np.testing.assert_array_equal(_events_back_to_counts(ev, counts.shape), counts)
            steps, offs = rec.call_steps(name)[:], rec.call_offsets(name)[:]
            call = np.searchsorted(offs, ev["token"][:], side="right") - 1
            assert (ev["step"][:] < steps[call]).all()
            per_call = np.add.reduceat(np.abs(counts).sum(1), offs)   # ternary: |c| per call
            np.testing.assert_array_equal(rec.call_events(name)[:],
                                          np.concatenate([[0], np.cumsum(per_call)[:-1]]))


@pytest.mark.parametrize("coding", ["ternary", "bitwise", "twos_complement", "binary"])
def test_events_sum_back_for_every_coding(tmp_path, coding):
    g = torch.Generator().manual_seed(1)
    lo = 0 if coding == "binary" else -40
    calls = [torch.randint(lo, 41, (n, 10), generator=g).to(torch.int8) for n in (5, 9, 3)]
    with Recorder(tmp_path / "c.h5", metadata={"coding": coding}, record_events=True) as r:
        for c in calls:
            r.write("l", c, torch.ones(len(c), 1))
    with load_recording(tmp_path / "c.h5") as rec:
        assert rec.metadata["coding"] == coding
        counts = torch.cat(calls).numpy()
        np.testing.assert_array_equal(_events_back_to_counts(rec.events("l"), counts.shape), counts)


# ----------------------------------------------------------------------------- errors & API
def test_not_a_recording_raises_recording_error_naming_the_file(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    text = tmp_path / "notes.txt"
    text.write_text("not hdf5 at all\n")
    for p in (plain, text, tmp_path):
        with pytest.raises(RecordingError, match=str(p.name)) as e:
            load_recording(p)
        assert isinstance(e.value, ValueError)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_recording(tmp_path / "missing.h5")
    with h5py.File(plain, "a") as f:
        f.attrs["format"] = "sbsnn-recording"
        f.attrs["format_version"] = 99
        f.create_group("layers")
    with pytest.raises(RecordingError, match="version 99"):
        load_recording(plain)


def test_file_locked_by_its_writer_gives_a_clear_error(tmp_path):
    path = tmp_path / "busy.h5"
    with Recorder(path) as r:
        r.write("a", torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 1))
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               "f = h5py.File(sys.argv[1], 'a'); print('open', flush=True)\n"
                               "time.sleep(60)", str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"open"
        try:
            _quiet_load(path).close()
        except RecordingError as e:
            assert "busy.h5: locked by the process writing it" in str(e)
        else:
            pytest.skip("no HDF5 file locking here (HDF5_USE_FILE_LOCKING or filesystem)")
    finally:
        holder.kill()
        holder.wait()


def test_reopening_to_empty_the_metadata_cache_keeps_recording(tmp_path, monkeypatch):
    from sbsnn.sim import recorder as R

    monkeypatch.setattr(R, "_MDC_LIMIT", 0)            # reopen after every flush
    g = torch.Generator().manual_seed(2)
    calls = [torch.randint(-3, 4, (6, 5), generator=g).to(torch.int16) for _ in range(4)]
    calls[2][0, 0] = 300                                # widening after a reopen
    with Recorder(tmp_path / "re.h5", record_events=True, chunk_tokens=4) as r:
        for i, c in enumerate(calls):
            r.write("a", c, torch.full((6, 1), float(i + 1)))
            r.write("b", c[:2], torch.ones(2, 1))
            r.flush()
        assert r._reopens == r._flushes >= 4
    with load_recording(tmp_path / "re.h5") as rec:
        want = torch.cat([c.to(torch.int16) for c in calls]).numpy()
        np.testing.assert_array_equal(rec.counts("a")[:], want)
        assert rec.counts("a").dtype == np.int16 and rec.rows("b") == 8
        np.testing.assert_array_equal(rec.thresholds("a")[:], np.repeat([1., 2., 3., 4.], 6))
        np.testing.assert_array_equal(_events_back_to_counts(rec.events("a"), want.shape), want)


@pytest.mark.parametrize("direct", [False, True])
def test_long_calls_are_flushed_as_they_go(tmp_path, monkeypatch, direct):
    """One long call (simulate without block_size) is written in pieces with flushes in
    between, so it becomes durable as it goes: through HDF5's pipeline before a third
    chunk row since the last flush (what its chunk cache holds), with a CountsWriter
    every DURABLE_BYTES of counts."""
    from sbsnn.sim import recorder as R

    if direct and not R.direct_writes("lzf", False):
        pytest.skip("no numba: counts go through HDF5's pipeline")
    monkeypatch.setattr(R, "DURABLE_BYTES", 90)
    on_disk = []
    real_flush = Recorder.flush

    def flush(self):
        real_flush(self)
        on_disk.append(self._layers["a"].flushed_rows)
    monkeypatch.setattr(Recorder, "flush", flush)
    c = (torch.arange(100 * 3).reshape(100, 3) % 11 - 5).to(torch.int8)
    with Recorder(tmp_path / "long.h5", chunk_tokens=16, shuffle=not direct) as r:
        assert (r._layers == {}) and r._direct == direct
        r.write("a", c[:10], torch.rand(10, 1))
        r.write("a", c[10:], torch.rand(90, 1))
    # pipeline: before a third chunk row; direct: every 90 bytes = 30 rows of 3 counts
    assert on_disk == ([30, 60, 90] if direct else [32, 64, 96])
    with load_recording(tmp_path / "long.h5") as rec:
        np.testing.assert_array_equal(rec.counts("a")[:], c.numpy())
        assert rec.call_offsets("a")[:].tolist() == [0, 10] and rec.rows("a") == 100


def test_python_state_does_not_grow_with_calls(tmp_path):
    import gc
    import tracemalloc

    c, v = torch.randint(-9, 10, (64, 256)).to(torch.int8), torch.rand(64, 1)
    with Recorder(tmp_path / "m.h5") as r:
        for i in range(20):         # warm-up as below: the buffers of a steady state
            r.write("a", c, v)
            if i % 16 == 0:
                r.flush()
        r.flush()                   # measured at flushes: chunks in flight are stored
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):                            # 3.3 MB of counts
            r.write("a", c, v)
            if i % 16 == 0:
                r.flush()
        r.flush()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert grown < 64 << 10, grown


def test_recorder_lifecycle(tmp_path):
    path = tmp_path / "r.h5"
    with Recorder(path, metadata={"model_config": {"a": [1, 2]}, "dtype": torch.float16,
                                  "where": tmp_path}) as r:
        r.write("x/y.z", torch.tensor([[1, 2]]), torch.tensor([[0.5]]))
        r.write("x/y.z", torch.zeros(0, 2, dtype=torch.int8), torch.zeros(0, 1))  # nothing
        with pytest.raises(ValueError, match="3 channels"):
            r.write("x/y.z", torch.zeros(1, 3, dtype=torch.int8), torch.ones(1, 1))
        with pytest.raises(TypeError, match="integer"):
            r.write("x/y.z", torch.zeros(1, 2), torch.ones(1, 1))
    r.close()                                            # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        r.write("x/y.z", torch.tensor([[1, 2]]), torch.tensor([[0.5]]))
    with load_recording(path) as rec:
        assert rec.complete and rec.layers == ["x/y.z"] and rec.rows("x/y.z") == 1
        assert rec.metadata == {"model_config": {"a": [1, 2]}, "dtype": "torch.float16",
                                "where": str(tmp_path)}
        with pytest.raises(KeyError, match="nope"):
            rec.counts("nope")
    # Recording over a complete file, then dying: the old "complete" must not survive.
    with pytest.raises(ZeroDivisionError):
        with Recorder(path) as r:
            r.write("other", torch.tensor([[3]]), torch.tensor([[1.0]]))
            1 / 0
    rec = _quiet_load(path)
    with rec:
        assert rec.complete is False and rec.layers == ["other"]


# ----------------------------------------------------------------------------- traces
TRACE_FIELDS = ("events_pos", "events_neg", "first_step", "last_step", "output_offsets", "outputs")


def test_traces_round_trip_through_the_recording(tmp_path, snn):
    path = tmp_path / "t.h5"
    res = simulate(snn, TEXT, backend="torch", record=path, block_size=16,
                   trace=sbsnn.sim.TraceSpec(("model.layers.0.*", "model.layers.3.mlp.down_proj"), tokens=24))
    with load_recording(path) as rec:
        assert rec.format_version == sbsnn.sim.recorder.FORMAT_VERSION == 3
        assert rec.traced_layers == list(res.traces)
        assert rec.metadata["trace"] == {"layers": ["model.layers.0.*", "model.layers.3.mlp.down_proj"],
                                         "tokens": 24}
        for name in rec.layers:
            if name not in res.traces:
                assert rec.trace(name) is None
                continue
            a, b = res.traces[name], rec.trace(name)
            assert (b.name, b.in_features, b.out_features, b.coding) == (a.name, a.in_features, a.out_features, a.coding)
            assert len(a.calls) == len(b.calls) == rec.call_offsets(name).shape[0] == 4
            for ca, cb in zip(a.calls, b.calls):
                assert (ca.steps, ca.row0) == (cb.steps, cb.row0)
                for f in TRACE_FIELDS:
                    assert torch.equal(getattr(ca, f), getattr(cb, f)), (name, f)


def test_a_version_1_recording_still_reads(tmp_path, snn):
    """Recordings written before traces existed (format 1: no trace groups) read as before."""
    path = tmp_path / "v1.h5"
    res = simulate(snn, TEXT, backend="torch", record=path, block_size=32)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
    with load_recording(path) as rec:
        assert rec.format_version == 1 and rec.complete
        assert rec.traced_layers == [] and rec.trace(rec.layers[0]) is None
        assert rec.rows(rec.layers[0]) == res.tokens


def test_an_interrupted_traced_run_keeps_whole_traced_calls(tmp_path, snn):
    path = tmp_path / "ti.h5"
    n_layers = sum(isinstance(m, SpikingLinear) for m in snn.modules())
    with Capture(snn, fail_after=2 * n_layers + 3), pytest.raises(KeyboardInterrupt):
        simulate(snn, TEXT, backend="torch", record=path, block_size=16, trace="model.layers.*.attn.q_proj")
    with pytest.warns(UserWarning, match="incomplete"):
        rec = load_recording(path)
    with rec:
        for name in rec.traced_layers:
            tr = rec.trace(name)
            assert len(tr.calls) == rec.call_offsets(name).shape[0] >= 2
            for call in tr.calls:
                assert call.first_step.numel() == 16
                assert call.output_offsets[-1] == call.outputs.shape[0]
                assert not torch.isnan(call.outputs).any()


def test_siblings_handed_the_same_tensors_share_one_dataset(tmp_path):
    """q, k and v get the very same counts and thresholds: their layers' datasets are
    one (hard links), every layer reads back its own rows and calls, and a sibling whose
    input later differs, or a source that widens, keeps every row right."""
    path = tmp_path / "s.h5"
    g = torch.Generator().manual_seed(1)
    calls = []                                   # (name, counts, v_th) in write order
    with Recorder(path, metadata={"coding": "ternary"}, chunk_tokens=16) as r:
        for step in range(6):
            n = 5 + step
            c = torch.randint(-3, 4, (n, 24), generator=g, dtype=torch.int8)
            v = torch.rand(n, 1, generator=g)
            if step == 3:
                c = c.to(torch.int16)
                c[0, 0] = 900                    # the source widens to int16
            for name in ("q", "k", "v"):
                if name == "v" and step >= 4:    # v's input is no longer q's
                    c, v = c.clone(), v.clone() * 2
                r.write(name, c, v)
                calls.append((name, c, v))
            r.write("o", c.clone(), v)           # equal values, another tensor: its own
            calls.append(("o", c, v))
        lay = r._layers
        assert lay["k"].shares == "q" and lay["v"].shares is None and lay["o"].shares is None
    with load_recording(path) as rec:
        f = rec._file
        assert f["layers/k/counts"].id == f["layers/q/counts"].id          # one dataset
        assert f["layers/v/counts"].id != f["layers/q/counts"].id          # unshared at step 4
        for name in ("q", "k", "v", "o"):
            mine = [(c, v) for n, c, v in calls if n == name]
            want = torch.cat([c.to(torch.int64) for c, _ in mine])
            np.testing.assert_array_equal(rec.counts(name)[:], want.numpy())
            np.testing.assert_array_equal(rec.thresholds(name)[:],
                                          torch.cat([v for _, v in mine]).reshape(-1).numpy())
            np.testing.assert_array_equal(rec.call_offsets(name)[:],
                                          np.cumsum([0] + [c.shape[0] for c, _ in mine[:-1]]))
            assert rec.rows(name) == want.shape[0]


def test_sharing_shrinks_a_model_recording(tmp_path, snn):
    """The engine hands sibling layers one spiking of their shared input: the recording
    links their rows instead of writing them again, and reads back what was simulated."""
    path = tmp_path / "s.h5"
    with Capture(snn) as cap:
        simulate(snn, TEXT, backend="torch", record=path, block_size=16)
    with load_recording(path) as rec:
        shared = [n for n in rec.layers if "shares" in rec._file["layers"][group_key(n)].attrs]
        assert shared, "no layer shared its input's rows"
        for name in rec.layers:
            np.testing.assert_array_equal(rec.counts(name)[:], cap.layer(name)[0].numpy())
