"""Runs launched with torchrun: two CPU processes over gloo on 127.0.0.1, against one.

- ``sbsnn simulate`` of an uneven document set (one long document on one rank, four
  short ones on the other) with and without ``torchrun --nproc-per-node 2``: the same
  printed counters, logical recordings with the same counts row for row, and reports
  with every sparsity and energy figure equal and every document counted once;
- ``sbsnn sweep`` likewise (three documents split 1 / 2): the same rows;
- a rank killed mid-run (SIGKILL): the run exits non-zero and neither the recording
  nor any shard reads as complete; a rank that fails (its shard cannot be created)
  stops the run with its own error;
- ``sbsnn convert`` over 2 ranks writes the files one process writes, byte for byte;
- pipeline stages over 2 ranks give the logits, counters and report of one process.
- once ``sbsnn convert`` or ``sbsnn simulate`` returns, no gloo thread of the group is left
  (the group sbsnn initialised is really gone, not left to interpreter exit).

Each launch is bounded by a timeout; the model is the embedded tiny-hybrid (4 layers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import sbsnn
from sbsnn.analysis.report import build_report
from sbsnn.sim.shards import shard_path

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(),
                                 reason="this torch has no torch.distributed")]

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
LAUNCH_TIMEOUT = 300
BLOCK = "32"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"       # gloo talks over the loopback only
    return env


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n: int) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr",
            "127.0.0.1", "--master-port", str(_port()), "--monitor-interval", "0.1"]


def run_cli(args, nproc: int | None = None, timeout: float = LAUNCH_TIMEOUT):
    """``sbsnn ARGS`` in one process (``nproc=None``) or under torchrun."""
    head = [PY] if nproc is None else _torchrun(nproc)
    return subprocess.run([*head, "-m", "sbsnn", *map(str, args)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _ok(r) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"


def _heldout() -> str:
    from importlib.resources import files

    return files("sbsnn.data").joinpath("tiny-hybrid/heldout.txt").read_text()


def _jsonl(path: Path, spans) -> Path:
    t = _heldout()
    path.write_text("".join(json.dumps({"id": f"doc{i}", "text": t[a:b]}) + "\n"
                            for i, (a, b) in enumerate(spans)))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrun")
    from sbsnn.converters import convert_checkpoint

    convert_checkpoint("tiny-hybrid", d / "ck", progress=False)
    # one long document and four short ones: 2 ranks take 1 and 4 documents
    _jsonl(d / "docs.jsonl", [(0, 330), (400, 440), (500, 550), (600, 660), (700, 745)])
    return d


@pytest.fixture(scope="module")
def simulated(work):
    """The same simulate command without and with torchrun (2 processes)."""
    out = {}
    for n in (None, 2):
        rec = work / f"rec{n or 1}" / "spikes.h5"
        rec.parent.mkdir()
        r = run_cli(["simulate", work / "ck", "--text", work / "docs.jsonl", "--record", rec,
                     "--block-size", BLOCK, "--quiet"], nproc=n)
        _ok(r)
        out[n or 1] = (r, rec)
    return out


def _same_report(a: dict, b: dict) -> None:
    for r in (a, b):
        for k in ("recording", "recording_shards"):
            r["metadata"].pop(k)
        r["generator"].pop("created")
        r["metadata"].pop("pipeline", None)
    assert a == b


# ----------------------------------------------------------------------------- data parallel
def test_two_processes_report_what_one_does(work, simulated):
    (r1, rec1), (r2, rec2) = simulated[1], simulated[2]
    lines1, lines2 = r1.stdout.splitlines(), r2.stdout.splitlines()
    assert "on 2 ranks (documents split)" in lines2[0] and "ranks" not in lines1[0]
    strip = lambda s: s.split(" in ")[0]     # noqa: E731 - the time differs
    assert strip(lines1[0]) == strip(lines2[0]) and "5 documents" in lines1[0]
    assert lines1[1:-1] == lines2[1:-1] and len(lines1) > 4        # every counter printed
    assert rec2.exists() and shard_path(rec2, 1, 2).exists()

    with sbsnn.load_recording(rec1) as one, sbsnn.load_recording(rec2) as two:
        assert one.complete and two.complete and len(two.shards) == 2
        assert [d["index"] for d in two.documents] == [0, 1, 2, 3, 4]
        ranks = [d["rank"] for d in two.documents]
        assert sorted(ranks.count(r) for r in (0, 1)) == [1, 4]    # uneven per rank
        assert [(d["name"], d["tokens"]) for d in one.documents] == [
            (d["name"], d["tokens"]) for d in two.documents]
        assert one.layers == two.layers and len(one.layers) == 32
        for name in one.layers:
            np.testing.assert_array_equal(two.counts(name)[:], one.counts(name)[:])
            np.testing.assert_array_equal(two.thresholds(name)[:], one.thresholds(name)[:])
            np.testing.assert_array_equal(two.call_offsets(name)[:], one.call_offsets(name)[:])
            np.testing.assert_array_equal(two.call_documents(name)[:], one.call_documents(name)[:])
        for r, s in enumerate(two.shards):       # each rank wrote only its own documents
            assert [d["index"] for d in s.documents] == [i for i, k in enumerate(ranks) if k == r]

    a = build_report(rec1, work / "rep1")
    b = build_report(rec2, work / "rep2")
    assert a["metadata"]["recording_shards"] == 1 and b["metadata"]["recording_shards"] == 2
    assert [d["index"] for d in b["documents"]] == [0, 1, 2, 3, 4]           # each once
    assert sum(d["rows"] for d in b["documents"]) == b["metadata"]["tokens"] == 330 + 40 + 50 + 60 + 45
    _same_report(a, b)


def test_two_processes_sweep_as_one(work):
    docs = _jsonl(work / "sweep.jsonl", [(0, 150), (300, 340), (400, 450)])
    rows = {}
    for n in (None, 2):
        out = work / f"sweep{n or 1}"
        r = run_cli(["sweep", "tiny-hybrid", "--text", docs, "--k", "3", "--out", out, "--quiet"],
                    nproc=n)
        _ok(r)
        rows[n or 1] = json.loads((out / "sweep.json").read_text())["rows"]
    for a, b in zip(rows[1], rows[2]):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    assert rows[1][0]["documents"] == 3 and [d["index"] for d in rows[1][0]["per_document"]] == [0, 1, 2]


# ----------------------------------------------------------------------------- failures
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _rank_pid(launcher: int, rank: int) -> int | None:
    for c in _children(launcher):
        try:
            env = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return c
    return None


def _flushes(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get("flushes", 0))
    except (OSError, KeyError, ValueError):
        return 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_killed_rank_fails_the_run_and_leaves_nothing_complete(work):
    # long enough that rank 1 is far from done when it is killed after its first flush
    docs = _jsonl(work / "long.jsonl", [(i % 5 * 1000, i % 5 * 1000 + 1000) for i in range(40)])
    rec = work / "killed" / "spikes.h5"
    rec.parent.mkdir()
    p = subprocess.Popen([*_torchrun(2), "-m", "sbsnn", "simulate", str(work / "ck"), "--text",
                          str(docs), "--record", str(rec), "--block-size", BLOCK, "--quiet"],
                         cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        shard, t0 = shard_path(rec, 1, 2), time.monotonic()
        while _flushes(shard) < 1:
            assert p.poll() is None, f"the run ended before rank 1 flushed: {p.communicate()}"
            assert time.monotonic() - t0 < LAUNCH_TIMEOUT, "rank 1 never flushed"
            time.sleep(0.05)
        victim = _rank_pid(p.pid, 1)
        assert victim is not None, "rank 1's process not found"
        os.kill(victim, signal.SIGKILL)
        out, err = p.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode != 0
    assert "SIGKILL" in err or "-9" in err
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = sbsnn.load_recording(rec)
    with r:
        assert not r.complete and any("incomplete" in str(x.message) for x in w)
        assert all(s is None or not s.complete for s in r.shards)
    for k in range(2):                   # and no shard, opened alone, claims to be complete
        if shard_path(rec, k, 2).exists():
            with h5py.File(shard_path(rec, k, 2), "r") as f:
                assert not f.attrs["complete"]
    rep = run_cli(["report", rec, "--out", work / "killed-report"])
    _ok(rep)
    assert "[INCOMPLETE]" in rep.stdout


def test_a_failing_rank_stops_the_run_with_its_error(work):
    rec = work / "failing" / "spikes.h5"
    shard_path(rec, 1, 2).mkdir(parents=True)      # rank 1 cannot create its shard
    r = run_cli(["simulate", work / "ck", "--text", work / "docs.jsonl", "--record", rec,
                 "--block-size", BLOCK, "--quiet"], nproc=2)
    assert r.returncode != 0
    assert "sbsnn simulate: error (rank 1 of 2)" in r.stderr and "is a directory" in r.stderr.lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with sbsnn.load_recording(rec) as rr:
            assert not rr.complete and rr.shards[1] is None
            assert "do not read" in rr.notes[0]


# ----------------------------------------------------------------------------- bigger than one process
def test_layer_split_conversion_writes_what_one_process_writes(work):
    from sbsnn.converters import convert_checkpoint

    one, two = work / "conv1", work / "conv2"
    convert_checkpoint("tiny-hybrid", one, preset="w8aspike", k=2.5, progress=False)
    r = run_cli(["convert", "tiny-hybrid", two, "--preset", "w8aspike", "--k", "2.5", "--quiet"],
                nproc=2)
    _ok(r)
    assert "on 2 ranks" in r.stdout
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in two.iterdir()) and len(files) >= 7   # 5 shards + index + configs
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    assert not [p for p in work.iterdir() if ".partial" in p.name]               # nothing left over


AFTER_CLI = """
import json, os, sys
from sbsnn.cli import main
rc = main(sys.argv[2:])
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip()
                 for t in os.listdir("/proc/self/task"))
with open(sys.argv[1] + f".rank{os.environ['RANK']}.json", "w") as f:   # not the shared stdout,
    json.dump(threads, f)                                                # where lines interleave
raise SystemExit(rc)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc/self/task (Linux)")
@pytest.mark.parametrize("command", ["convert", "simulate"])
def test_process_group_is_gone_when_the_command_returns(work, command):
    """Building the model imports torch._dynamo, which used to keep the group alive past
    destroy_process_group: its gloo threads lived into interpreter exit, whose teardown
    aborted a finished run now and then (SIGABRT, exit 1 from torchrun)."""
    script = work / "after_cli.py"
    script.write_text(AFTER_CLI)
    args = (["convert", "tiny-hybrid", work / "conv-threads", "--preset", "w8aspike", "--force",
             "--quiet"] if command == "convert" else
            ["simulate", work / "ck", "--text", work / "docs.jsonl", "--block-size", BLOCK, "--quiet"])
    out = work / f"threads-{command}"
    r = subprocess.run([*_torchrun(2), str(script), str(out), *map(str, args)], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    _ok(r)
    for rank in (0, 1):
        threads = json.loads(Path(f"{out}.rank{rank}.json").read_text())
        assert threads                                  # the list was read
        assert not [t for t in threads if "gloo" in t], (rank, threads)


PIPELINE = """
import json, sys, torch
torch.set_num_threads(1)
from sbsnn.runs.pipeline import simulate_pipeline
ck, docs, rec, out = sys.argv[1:5]
r = simulate_pipeline(ck, docs, backend="torch", record=rec, block_size={block},
                      return_logits=True, metadata={{"model_dir": ck}})  # as sbsnn simulate
if r.document_logits:
    torch.save(r.document_logits, out + f".rank{{r.rank}}.pt")
if r.rank == 0:
    json.dump({{n: c.to_dict() for n, c in r.layers.items()}}, open(out + ".json", "w"))
"""


def test_pipeline_stages_give_one_process_logits(work, simulated):
    script = work / "pipeline.py"
    script.write_text(PIPELINE.format(block=BLOCK))
    rec, out = work / "pipe" / "spikes.h5", work / "pipe-out"
    rec.parent.mkdir()
    r = subprocess.run([*_torchrun(2), str(script), str(work / "ck"), str(work / "docs.jsonl"),
                        str(rec), str(out)], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=LAUNCH_TIMEOUT)
    _ok(r)
    assert not Path(f"{out}.rank0.pt").exists()           # the logits come out of the last stage
    logits = torch.load(f"{out}.rank1.pt", weights_only=True)
    from sbsnn.runs import simulate_documents

    snn = sbsnn.load_spiking(work / "ck")
    ref = simulate_documents(snn, work / "docs.jsonl", backend="torch", block_size=int(BLOCK),
                             return_logits=True)
    assert sorted(logits) == [0, 1, 2, 3, 4]
    for i, t in ref.document_logits.items():
        assert torch.equal(logits[i], t), i
    counters = json.loads(Path(f"{out}.json").read_text())
    assert counters == {n: c.to_dict() for n, c in ref.layers.items()}
    with sbsnn.load_recording(rec) as pr:
        layers0, layers1 = pr.shards[0].layers, pr.shards[1].layers
        assert layers0 and layers1 and not set(layers0) & set(layers1)   # each stage its own layers
        assert all(n.startswith(("model.layers.0.", "model.layers.1.")) for n in layers0)
    _same_report(build_report(simulated[1][1], work / "rep-one"), build_report(rec, work / "rep-pipe"))
