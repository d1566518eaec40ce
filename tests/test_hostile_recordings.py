"""Hostile recordings: shards of another run, shard paths leading out, offsets that point
past their rows, datasets resized to 10^12 rows (issue 20, the recordings slice).

Each hostile case edits a copy of a valid recording (one file, a document set, or a
sharded recording written by ``simulate_documents`` over two ranks in one process) and
asserts, through the Python API and through ``sbsnn report``: a
:class:`~sbsnn.errors.RecordingError` (exit 2, one line on stderr) naming the culprit
(the file, the shard entry, the layer and dataset), no report written, and every file of
the case byte-identical afterwards. The valid ones assert that nothing valid is
refused: a sharded recording reads to the numbers of one process, an index of format
version 1 (before run ids) still reads, as does an incomplete file cut by a kill.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import sbsnn.cli as cli
from sbsnn import errors as E
from sbsnn.analysis import counters_from_recording, sparsity_from_recording
from sbsnn.converters import convert
from sbsnn.models import HybridConfig, HybridForCausalLM
from sbsnn.models.tokenizer import ByteTokenizer
from sbsnn.runs import simulate_documents
from sbsnn.sim import load_recording, simulate
from sbsnn.sim.shards import shard_path, write_index

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
            rope_theta=10000.0, gate_low_rank_dim=8)
TEXTS = ["ROMEO: But soft, what light through yonder window breaks?",
         "It is the east, and Juliet is the sun.",
         "Arise, fair sun, and kill the envious moon,",
         "Who is already sick and pale with grief."]


class ThreadGroup:
    """Rank ``rank`` of a two-rank group whose ranks are threads of this process: what
    :class:`sbsnn.runs.Group` offers, exchanged through shared slots and a barrier."""

    world_size, local_rank, distributed = 2, 0, True

    def __init__(self, rank: int, shared: SimpleNamespace):
        self.rank, self.shared = rank, shared

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def where(self) -> str:
        return f" (rank {self.rank} of 2)"

    def barrier(self) -> None:
        self.shared.barrier.wait()

    def all_gather(self, obj) -> list:
        self.shared.slots[self.rank] = obj
        self.barrier()
        out = list(self.shared.slots)
        self.barrier()
        return out

    def broadcast(self, obj, src: int = 0):
        return self.all_gather(obj)[src]

    def sum_ints(self, v: torch.Tensor) -> torch.Tensor:
        return sum(self.all_gather(v.clone()))

    def max_ints(self, v: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.all_gather(v.clone())).max(0).values


def simulate_two_ranks(model, texts, record: Path) -> None:
    """``simulate_documents`` as two ranks (threads, each with its own copy of the model,
    as each process has) writing a sharded recording."""
    shared = SimpleNamespace(barrier=threading.Barrier(2, timeout=120), slots=[None, None])
    errors: list[BaseException] = []

    def rank(r):
        try:
            simulate_documents(copy.deepcopy(model), texts, backend="torch", record=record,
                               block_size=8,
                               record_events=True, group=ThreadGroup(r, shared))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            shared.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One file with events and a trace; a document set; the same documents sharded over
    two ranks, twice (two runs); a traced file."""
    root = tmp_path_factory.mktemp("recs")
    torch.manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY)).eval()
    model.tokenizer = ByteTokenizer()
    snn = convert(model, "paper", group_size=16)
    snn.tokenizer = ByteTokenizer()
    first = next(n for n, m in snn.named_modules() if type(m).__name__ == "SpikingLinear")
    simulate(snn, TEXTS[0], backend="torch", block_size=8, record=root / "one.h5",
             record_events=True, trace=first)
    simulate_documents(snn, TEXTS, backend="torch", record=root / "docs.h5", block_size=8,
                       record_events=True, distributed=False)
    for run in ("sh", "other"):
        (root / run).mkdir()
        simulate_two_ranks(snn, TEXTS, root / run / "idx.h5")
    return SimpleNamespace(root=root, traced=first)


def digests(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


def first_layer(path: Path) -> tuple[str, str]:
    """``(layer name, its /layers key)`` of the first layer of a recording file."""
    with h5py.File(path, "r") as f:
        key = next(iter(f["layers"]))
        return f["layers"][key].attrs["name"], key


def rewrite(path: Path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def set_strings(f, key: str, values) -> None:
    del f[key]
    f.create_dataset(key, data=list(values), dtype=h5py.string_dtype())


def edit_series(key: str, value_fn):
    """Set dataset ``key`` of the first layer (of the traced one for ``trace/`` keys):
    ``value_fn(array) -> array``."""
    def fn(f):
        g = f["layers"][next(k for k in f["layers"]
                             if not key.startswith("trace/") or "trace" in f["layers"][k])]
        g[key][...] = value_fn(g[key][()])
    return fn


def resize(key: str, n: int = 10 ** 12, attr: str | None = None):
    def fn(f):
        g = f["layers"][next(iter(f["layers"]))] if not key.startswith("/") else f
        g[key.lstrip("/")].resize(n, axis=0)
        if attr:
            g.attrs[attr] = n
    return fn


# ----------------------------------------------------------------------------- the cases
# (id, source in base.root, file to edit (relative), edit(ctx) or h5py edit, culprits,
#  the file to open). Culprit placeholders: {d} the case directory, {layer} the first
#  layer's name (in /layers order), {traced} the traced layer's.
def _foreign_shard(d):
    shutil.copy(d / "other/idx.h5.shards/rank00001-of-00002.h5",
                d / "sh/idx.h5.shards/rank00001-of-00002.h5")


def _swapped_shards(d):
    s = d / "sh/idx.h5.shards"
    a, b = s / "rank00000-of-00002.h5", s / "rank00001-of-00002.h5"
    tmp = s / "t.h5"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _index_entries(entries):
    def fn(d):
        rewrite(d / "sh/idx.h5", lambda f: set_strings(f, "shards", entries(d)))
    return fn


def _outside_symlink(d):
    out = d / "elsewhere"
    out.mkdir()
    p = d / "sh/idx.h5.shards/rank00001-of-00002.h5"
    shutil.move(p, out / p.name)
    p.symlink_to(out / p.name)


def _fifo_shard(d):
    p = d / "sh/idx.h5.shards/rank00001-of-00002.h5"
    p.unlink()
    os.mkfifo(p)


def _fifo_recording(d):
    (d / "one.h5").unlink()
    os.mkfifo(d / "one.h5")


def _old_index_over_new_shards(d):
    rewrite(d / "sh/idx.h5", lambda f: (f.attrs.__delitem__("run_id"),
                                        f.attrs.__setitem__("format_version", 1)))


def _external_counts(d):
    other = d / "elsewhere.h5"
    shutil.copy(d / "one.h5", other)

    def fn(f):
        g = f["layers"][next(iter(f["layers"]))]
        del g["counts"]
        g["counts"] = h5py.ExternalLink(str(other), f"/layers/{next(iter(f['layers']))}/counts")
    rewrite(d / "one.h5", fn)


def _giant_chunks(f):
    g = f["layers"][next(iter(f["layers"]))]
    n = g["thresholds"].shape[0]
    del g["thresholds"]
    g.create_dataset("thresholds", shape=(n,), maxshape=(None,), dtype=np.float32,
                     chunks=(1 << 28,), compression="gzip")


def _metadata(edit):
    """Rewrite the metadata dataset: ``edit(dict) -> dict or raw JSON text``."""
    def fn(f):
        m = edit(json.loads(f["metadata"][()]))
        del f["metadata"]
        f.create_dataset("metadata", data=m if isinstance(m, str) else json.dumps(m),
                         dtype=h5py.string_dtype())
    return fn


def _negative_fan_out(m):
    name = next(iter(m["layers"]))
    m["layers"][name]["out_features"] = -5
    return m


def _h5(file, fn):
    return lambda d: rewrite(d / file, fn)


CASES = [
    # ---- 1. shards that are not the index's
    ("foreign-shard", "sh", _foreign_shard,
     ("{d}/sh/idx.h5.shards/rank00001-of-00002.h5", "another run"), "sh/idx.h5"),
    ("shards-swapped", "sh", _swapped_shards,
     ("rank00000-of-00002.h5", "rank 1 in place of rank 0"), "sh/idx.h5"),
    ("index-without-its-run-id", "sh",
     _h5("sh/idx.h5", lambda f: f.attrs.__delitem__("run_id")), ("{d}/sh/idx.h5", "run_id"),
     "sh/idx.h5"),
    ("old-index-over-shards-of-a-run", "sh", _old_index_over_new_shards,
     ("rank00000-of-00002.h5", "names no run"), "sh/idx.h5"),
    ("shard-with-another-documents", "sh",
     _h5("sh/idx.h5.shards/rank00001-of-00002.h5",
         lambda f: f["documents/tokens"].__setitem__(0, f["documents/tokens"][0] + 1)),
     ("rank00001-of-00002.h5", "document"), "sh/idx.h5"),
    # ---- 2. shard paths leading out of the index's directory
    ("absolute-shard-entry", "sh",
     _index_entries(lambda d: [str(d / "sh/idx.h5.shards/rank00000-of-00002.h5"),
                               "idx.h5.shards/rank00001-of-00002.h5"]),
     ("/rank00000-of-00002.h5", "absolute"), "sh/idx.h5"),
    ("dotdot-shard-entry", "sh",
     _index_entries(lambda d: ["idx.h5.shards/rank00000-of-00002.h5",
                               "../other/idx.h5.shards/rank00001-of-00002.h5"]),
     ("../other/idx.h5.shards/rank00001-of-00002.h5", "'..'"), "sh/idx.h5"),
    ("symlinked-shard-leading-out", "sh", _outside_symlink,
     ("idx.h5.shards/rank00001-of-00002.h5", "outside the index's directory"), "sh/idx.h5"),
    ("shard-listed-twice", "sh",
     _index_entries(lambda d: ["idx.h5.shards/rank00000-of-00002.h5"] * 2),
     ("idx.h5.shards/rank00000-of-00002.h5", "twice"), "sh/idx.h5"),
    ("fifo-in-place-of-a-shard", "sh", _fifo_shard,
     ("{d}/sh/idx.h5.shards/rank00001-of-00002.h5", "not a regular file"), "sh/idx.h5"),
    ("fifo-in-place-of-the-recording", "one.h5", _fifo_recording,
     ("{d}/one.h5", "not a regular file"), "one.h5"),
    ("external-link-out-of-the-file", "one.h5", _external_counts,
     ("{d}/one.h5", "/counts", "external link"), "one.h5"),
    # ---- 3. offsets and indices that point past what they index
    ("call-offset-past-rows", "one.h5",
     _h5("one.h5", edit_series("call_offsets", lambda a: np.append(a[:-1], a[-1] + 10 ** 6))),
     ("{d}/one.h5", "{layer}", "call_offsets["), "one.h5"),
    ("call-offsets-not-increasing", "one.h5",
     _h5("one.h5", edit_series("call_offsets", lambda a: np.append(a[:1], a[1:][::-1]))),
     ("{d}/one.h5", "{layer}", "call_offsets["), "one.h5"),
    ("call-offset-negative", "one.h5",
     _h5("one.h5", edit_series("call_offsets", lambda a: a - 3)),
     ("{d}/one.h5", "{layer}", "call_offsets[0] = -3"), "one.h5"),
    ("call-events-past-events", "one.h5",
     _h5("one.h5", edit_series("call_events", lambda a: np.append(a[:-1], a[-1] + 10 ** 9))),
     ("{d}/one.h5", "{layer}", "call_events["), "one.h5"),
    ("call-documents-unknown", "docs.h5",
     _h5("docs.h5", edit_series("call_documents", lambda a: np.where(a == a.max(), 99, a))),
     ("{d}/docs.h5", "{layer}", "document 99"), "docs.h5"),
    ("call-documents-out-of-order", "docs.h5",
     _h5("docs.h5", edit_series("call_documents", lambda a: a[::-1])),
     ("{d}/docs.h5", "{layer}", "call_documents["), "docs.h5"),
    ("documents-listed-twice", "docs.h5",
     _h5("docs.h5", lambda f: f["documents/index"].__setitem__(1, 0)),
     ("{d}/docs.h5", "/documents", "index[1]"), "docs.h5"),
    ("counts-shorter-than-their-attribute", "one.h5",
     _h5("one.h5", lambda f: f["layers"][next(iter(f["layers"]))].attrs.__setitem__("rows", 3)),
     ("{d}/one.h5", "{layer}", "rows"), "one.h5"),
    ("trace-steps-past-their-series", "one.h5",
     _h5("one.h5", edit_series("trace/step_offsets", lambda a: a + 10 ** 6)),
     ("{d}/one.h5", "{traced}", "trace of call 0"), "one.h5"),
    ("trace-last-step-past-the-steps", "one.h5",
     _h5("one.h5", edit_series("trace/last_step", lambda a: np.full_like(a, 2 ** 31 - 1))),
     ("{d}/one.h5", "{traced}", "first/last steps"), "one.h5"),
    ("metadata-fan-out-negative", "one.h5", _h5("one.h5", _metadata(_negative_fan_out)),
     ("{d}/one.h5", "out_features", "-5"), "one.h5"),
    ("metadata-unknown-coding", "one.h5",
     _h5("one.h5", _metadata(lambda m: {**m, "coding": "morse"})),
     ("{d}/one.h5", "coding", "morse"), "one.h5"),
    ("metadata-not-an-object", "one.h5", _h5("one.h5", _metadata(lambda m: "[1, 2]")),
     ("{d}/one.h5", "JSON object"), "one.h5"),
    ("metadata-nested-past-the-recursion-limit", "one.h5",
     _h5("one.h5", _metadata(lambda m: "[" * 100000 + "]" * 100000)),
     ("{d}/one.h5", "unreadable metadata"), "one.h5"),
    ("index-metadata-unknown-coding", "sh",
     _h5("sh/idx.h5", _metadata(lambda m: {**m, "coding": "morse"})),
     ("{d}/sh/idx.h5", "coding", "morse"), "sh/idx.h5"),
    # ---- 4. sizes that claim more than the file holds
    ("counts-resized-to-1e12-rows", "one.h5", _h5("one.h5", resize("counts", attr="rows")),
     ("{d}/one.h5", "counts", "1000000000000 rows"), "one.h5"),
    ("call-offsets-resized-to-1e12", "one.h5", _h5("one.h5", resize("call_offsets", attr="calls")),
     ("{d}/one.h5", "call_offsets", "1000000000000 rows"), "one.h5"),
    ("layer-names-resized-to-1e12", "one.h5", _h5("one.h5", resize("/layer_names")),
     ("{d}/one.h5", "/layer_names", "1000000000000 rows"), "one.h5"),
    ("document-names-resized-to-1e12", "docs.h5", _h5("docs.h5", resize("/documents/name")),
     ("{d}/docs.h5", "/documents/name", "1000000000000 rows"), "docs.h5"),
    ("incomplete-file-resized-to-1e12", "one.h5",
     _h5("one.h5", lambda f: (resize("counts")(f), f.attrs.__setitem__("complete", False))),
     ("{d}/one.h5", "counts", "1000000000000 rows"), "one.h5"),
    ("events-resized-to-1e12", "one.h5", _h5("one.h5", resize("events/token")),
     ("{d}/one.h5", "events/token", "1000000000000 rows"), "one.h5"),
    ("index-shard-list-resized-to-1e12", "sh", _h5("sh/idx.h5", lambda f: (
        f.__delitem__("shards"),
        f.create_dataset("shards", shape=(10 ** 12,), chunks=(1024,), dtype=h5py.string_dtype()))),
     ("{d}/sh/idx.h5", "/shards", "1000000000000 rows"), "sh/idx.h5"),
    ("shard-counts-resized-to-1e12", "sh",
     _h5("sh/idx.h5.shards/rank00001-of-00002.h5", resize("counts", attr="rows")),
     ("rank00001-of-00002.h5", "counts", "1000000000000 rows"), "sh/idx.h5"),
    ("chunks-of-a-gigabyte", "one.h5", _h5("one.h5", _giant_chunks),
     ("{d}/one.h5", "thresholds", "chunks of 1073741824 bytes"), "one.h5"),
]


def _setup(base, tmp: Path, source: str) -> Path:
    d = tmp / "case"
    d.mkdir()
    src = base.root / source
    if src.is_dir():
        shutil.copytree(src, d / source, symlinks=True)
        shutil.copytree(base.root / "other", d / "other")      # the other run, beside it
    else:
        shutil.copy(src, d / source)
    return d


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_recording_is_refused_by_name(base, tmp_path, case, capsys):
    _id, source, edit, culprits, target = case
    d = _setup(base, tmp_path, source)
    layer, _ = first_layer(d / "sh/idx.h5.shards/rank00000-of-00002.h5"
                           if source == "sh" else d / source)
    edit(d)
    before = digests(d)
    names = [c.format(d=d, layer=repr(layer), traced=repr(base.traced)) for c in culprits]
    with pytest.raises(E.RecordingError) as exc:
        with load_recording(d / target) as rec:     # traces are read (and checked) on demand
            for n in rec.traced_layers:
                rec.trace(n)
    for c in names:
        assert c in str(exc.value), f"{c!r} not named in {exc.value}"
    capsys.readouterr()
    out = tmp_path / "rep"
    rc = cli.main(["report", str(d / target), "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "error: " in lines[0], err
    assert "Traceback" not in err and "internal error" not in err
    for c in names:
        assert c in err, f"{c!r} not named in {err!r}"
    assert not out.exists() or not (out / "report.json").exists()
    assert digests(d) == before        # nothing read was changed


# ----------------------------------------------------------------------------- valid ones
def _report(path: Path, out: Path) -> dict:
    assert cli.main(["report", str(path), "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


def _same_numbers(a, b) -> None:
    assert a.layers == b.layers
    for name in a.layers:
        np.testing.assert_array_equal(a.counts(name)[:], b.counts(name)[:])
        np.testing.assert_array_equal(a.thresholds(name)[:], b.thresholds(name)[:])
        np.testing.assert_array_equal(a.call_offsets(name)[:], b.call_offsets(name)[:])
        ev_a, ev_b = a.events(name), b.events(name)
        for k in ev_b:
            np.testing.assert_array_equal(ev_a[k][:], ev_b[k][:])
    assert ({n: c.to_dict() for n, c in counters_from_recording(a).items()}
            == {n: c.to_dict() for n, c in counters_from_recording(b).items()})
    assert sparsity_from_recording(a).to_dict() == sparsity_from_recording(b).to_dict()


def test_a_sharded_recording_reads_as_one_process_does(base, tmp_path):
    """Two ranks' shards, tied to their index by one run id, read to the numbers of the
    same documents simulated by one process, and so does their report."""
    sh, one = base.root / "sh/idx.h5", base.root / "docs.h5"
    with load_recording(sh) as a, load_recording(one) as b:
        assert a.complete and a.format_version == 2 and len(a.run_id) == 32
        ids = {s.metadata["shard"]["run_id"] for s in a.shards}
        assert ids == {a.run_id}
        with load_recording(base.root / "other/idx.h5") as other:
            assert other.run_id != a.run_id          # one identity per run
        assert [d["index"] for d in a.documents] == [0, 1, 2, 3]
        assert {d["rank"] for d in a.documents} == {0, 1}
        _same_numbers(a, b)
    ra, rb = _report(sh, tmp_path / "a"), _report(one, tmp_path / "b")
    assert ra["sparsity"] == rb["sparsity"] and ra["energy"] == rb["energy"]


def test_an_index_of_format_1_still_reads(base, tmp_path):
    """An index written before run ids (version 1) over shards without one reads to the
    same numbers; its shards are then tied to it by ranks and documents only."""
    d = _setup(base, tmp_path, "sh")
    with load_recording(d / "sh/idx.h5") as a:
        meta, docs = a.metadata, a.planned_documents
    write_index(d / "sh/idx.h5", world_size=2, metadata=meta, documents=docs, complete=True)
    for r in range(2):
        def strip(f):
            m = json.loads(f["metadata"][()])
            del m["shard"]["run_id"]
            del f["metadata"]
            f.create_dataset("metadata", data=json.dumps(m), dtype=h5py.string_dtype())
        rewrite(shard_path(d / "sh/idx.h5", r, 2), strip)
    with h5py.File(d / "sh/idx.h5", "r") as f:
        assert f.attrs["format_version"] == 1 and "run_id" not in f.attrs
    with load_recording(d / "sh/idx.h5") as a, load_recording(base.root / "docs.h5") as b:
        assert a.complete and a.run_id is None
        _same_numbers(a, b)
    _report(d / "sh/idx.h5", tmp_path / "rep")


def test_an_incomplete_index_keeps_refusing_foreign_shards(base, tmp_path):
    """A run still going (its index incomplete) reads as incomplete, but a shard of
    another run is refused there too, never passed off as a missing one."""
    d = _setup(base, tmp_path, "sh")
    rewrite(d / "sh/idx.h5", lambda f: f.attrs.__setitem__("complete", False))
    with pytest.warns(UserWarning, match="incomplete"):
        load_recording(d / "sh/idx.h5").close()
    _foreign_shard(d)
    with pytest.raises(E.RecordingError, match="another run"):
        load_recording(d / "sh/idx.h5")


def test_a_shard_folder_inside_the_index_directory_through_a_symlink_reads(base, tmp_path):
    """A symlink that stays inside the index's directory is not refused."""
    d = _setup(base, tmp_path, "sh")
    s = d / "sh/idx.h5.shards"
    (d / "sh/kept").mkdir()
    p = s / "rank00000-of-00002.h5"
    shutil.move(p, d / "sh/kept" / p.name)
    p.symlink_to(Path("../kept") / p.name)
    with load_recording(d / "sh/idx.h5") as a, load_recording(base.root / "docs.h5") as b:
        _same_numbers(a, b)


def test_an_incomplete_file_cut_by_a_kill_still_reads(base, tmp_path):
    """The slack of an incomplete file: its last chunk rows never written (a kill during
    a flush) are cut off, not refused."""
    p = tmp_path / "cut.h5"
    shutil.copy(base.root / "one.h5", p)

    def grow(f):
        f.attrs["complete"] = False
        g = f["layers"][next(iter(f["layers"]))]
        n = g["counts"].shape[0]
        g["counts"].resize(n + g["counts"].chunks[0], axis=0)     # one chunk row unwritten
        g["thresholds"].resize(n + g["counts"].chunks[0], axis=0)
    rewrite(p, grow)
    name, _ = first_layer(p)
    with pytest.warns(UserWarning, match="incomplete"), load_recording(p) as rec, \
            load_recording(base.root / "one.h5") as ref:
        assert not rec.complete and name in rec.damaged
        np.testing.assert_array_equal(rec.counts(name)[:], ref.counts(name)[:])
        assert counters_from_recording(rec) == counters_from_recording(ref)
