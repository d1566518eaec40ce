"""Hostile recordings, second pass: a report is made from this run's rows only.

- a shard copied in from another run (same documents, same lengths) is refused: the index
  and every shard carry the run's identity; a shard of another rank or world size too;
- index entries that point outside the index's directory (absolute, ``..``, a link out)
  are refused, never opened;
- call tables that point past, or back into, a layer's rows are refused (a shifted report
  would look right);
- a dataset whose extent was grown to 10**12 rows is refused by name before anything is
  read (no MemoryError, no hour-long read).

Every refusal goes through ``sbsnn report`` (exit 2, one line naming the file and the
culprit) and leaves the files byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import sbsnn.cli as cli
from sbsnn.errors import RecordingError
from sbsnn.sim import load_recording
from sbsnn.sim.recorder import Recorder
from sbsnn.sim.session import RunRecording
from sbsnn.sim.shards import shard_path

LAYERS = {"l0": {"in_features": 4, "out_features": 3, "group_size": 4, "bias": False}}


class _Model:
    """What RunRecording reads of a model: spiking layers (none needed) and a config."""

    def named_modules(self):
        return iter(())


def _group(rank: int, run_id: str):
    return SimpleNamespace(distributed=True, is_main=rank == 0, rank=rank, world_size=2,
                           barrier=lambda: None, all_gather=lambda obj: [run_id, None])


def _sharded(dir_: Path, run_id: str, seed: int) -> Path:
    """A two-rank recording of three documents written by sbsnn's own run setup."""
    index = dir_ / "spikes.h5"
    documents = [SimpleNamespace(index=i, name=f"d{i}", text="x" * (5 + i)) for i in range(3)]
    ranks = [0, 1, 0]
    ids = [torch.zeros(1, 5 + i, dtype=torch.long) for i in range(3)]
    g = torch.Generator().manual_seed(seed)

    class Docs(list):
        source = "texts"

    recs = []
    for r in (0, 1):
        rr = RunRecording(index, _Model(), ids, {"layers": LAYERS, "coding": "ternary"}, False,
                          documents=Docs(documents), ranks=ranks, group=_group(r, run_id))
        for d in documents:
            if ranks[d.index] != r:
                continue
            rr.recorder.begin_document(d.index, d.name, 5 + d.index, len(d.text))
            c = torch.randint(-3, 4, (5 + d.index, 4), generator=g)
            rr.recorder.write("l0", c, torch.full((5 + d.index, 1), 0.5))
            rr.recorder.flush()
        recs.append(rr)
    for rr in recs:
        rr.recorder.close(complete=True)
    recs[0]._index(complete=True)
    return index


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _report(path: Path, out: Path, capsys) -> tuple[int, str]:
    rc = cli.main(["report", str(path), "--out", str(out)])
    return rc, capsys.readouterr().err


def test_a_run_reads_back_and_a_foreign_shard_is_refused(tmp_path, capsys):
    ours = _sharded(tmp_path / "a", "run-a", seed=0)
    theirs = _sharded(tmp_path / "b", "run-b", seed=1)
    with load_recording(ours) as rec:
        assert rec.complete and rec.run_id == "run-a" and rec.rows("l0") == 5 + 6 + 7
    assert _report(ours, tmp_path / "rep", capsys)[0] == 0
    # the same documents and lengths, other numbers: copied over rank 1's shard
    shutil.copyfile(shard_path(theirs, 1, 2), shard_path(ours, 1, 2))
    before = _tree(tmp_path / "a")
    rc, err = _report(ours, tmp_path / "rep2", capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "rank00001-of-00002.h5" in err and "another run" in err
    assert _tree(tmp_path / "a") == before and not (tmp_path / "rep2" / "report.json").exists()


def test_a_shard_of_another_rank_is_refused(tmp_path, capsys):
    index = _sharded(tmp_path, "run-a", seed=0)
    a, b = shard_path(index, 0, 2), shard_path(index, 1, 2)
    tmp = a.with_suffix(".swap")
    a.rename(tmp), b.rename(a), tmp.rename(b)          # the two shards swapped
    rc, err = _report(index, tmp_path / "rep", capsys)
    assert rc == 2 and "rank00000-of-00002.h5" in err and "written by rank 1" in err, err


@pytest.mark.parametrize("entry", ["ABS", "../outside.h5", "spikes.h5.shards/../../outside.h5",
                                   "LINK"])
def test_index_entries_outside_its_directory_are_refused(tmp_path, capsys, entry):
    index = _sharded(tmp_path / "run", "run-a", seed=0)
    outside = tmp_path / "outside.h5"
    shutil.copyfile(shard_path(index, 1, 2), outside)
    if entry == "ABS":
        entry = str(outside)
    elif entry == "LINK":
        link = index.parent / "spikes.h5.shards" / "link.h5"
        link.symlink_to(outside)
        entry = "spikes.h5.shards/link.h5"
    with h5py.File(index, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["shards"][()]]
        names[1] = entry
        del f["shards"]
        f.create_dataset("shards", data=names, dtype=h5py.string_dtype())
    before = outside.read_bytes()
    rc, err = _report(index, tmp_path / "rep", capsys)
    assert rc == 2 and "outside" in err and str(index) in err, err
    assert outside.read_bytes() == before


def _single(path: Path) -> Path:
    r = Recorder(path, metadata={"layers": LAYERS, "coding": "ternary", "tokens": 30})
    g = torch.Generator().manual_seed(0)
    for n in (10, 8, 12):
        r.write("l0", torch.randint(-3, 4, (n, 4), generator=g), torch.full((n, 1), 0.5))
        r.flush()
    r.close(complete=True)
    return path


@pytest.mark.parametrize("offsets, says", [
    ([0, 10, 31], "past its 30 rows"),
    ([0, 12, 9], "before call 1"),
    ([3, 10, 18], "not 0"),
])
def test_call_tables_that_do_not_index_the_rows_are_refused(tmp_path, capsys, offsets, says):
    path = _single(tmp_path / "r.h5")
    with load_recording(path) as rec:
        assert rec.call_offsets("l0")[:].tolist() == [0, 10, 18]
    with h5py.File(path, "r+") as f:
        f["layers"][next(iter(f["layers"]))]["call_offsets"][:] = np.asarray(offsets)
    before = path.read_bytes()
    rc, err = _report(path, tmp_path / "rep", capsys)
    assert rc == 2 and "'l0'" in err and says in err, err
    assert path.read_bytes() == before


@pytest.mark.parametrize("key", ["counts", "thresholds", "call_offsets", "call_steps"])
def test_a_dataset_grown_to_a_trillion_rows_is_refused_before_it_is_read(tmp_path, capsys, key):
    path = _single(tmp_path / "r.h5")
    with h5py.File(path, "r+") as f:
        f["layers"][next(iter(f["layers"]))][key].resize(10**12, axis=0)
    size = os.path.getsize(path)
    rc, err = _report(path, tmp_path / "rep", capsys)
    assert rc == 2 and repr(key) in err and "1,000,000,000,000 rows" in err, err
    assert os.path.getsize(path) == size
    with pytest.raises(RecordingError, match="stores at most"):
        load_recording(path)
