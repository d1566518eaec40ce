"""Kill campaign for recordings: SIGKILL a recording simulation at random times, then check
what the crash notes of ``sbsnn/sim/recorder.py`` promise.

Each kill runs ``simulate`` of the embedded tiny model on 1000 held-out characters,
recording (in blocks of 16 tokens, or in one pass with ``DURABLE_BYTES`` lowered to 1 MiB
so that one-pass calls flush too; a quarter of the runs with events), in a child process
that marks the rows of its last completed flush and whether it is inside a flush; the
child is killed at a random time between its first flush and the end of an
uninterrupted run. Then: every file must open; a
kill between flushes must keep every flushed row and read as undamaged; a kill inside a
flush may lose rows, but only as damage the reader reports; every row kept must equal the
rows of an uninterrupted run.

    .venv/bin/python benchmarks/kill_recording.py --kills 30
    .venv/bin/python benchmarks/kill_recording.py --kills 30 --pipeline   # HDF5's filter pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
import sbsnn
from sbsnn.converters import convert
from sbsnn.data import TINY_HYBRID, heldout_text
from sbsnn.sim import recorder as R, simulate

out, marker, block, events, pipeline = sys.argv[1:6]
R.DURABLE_BYTES = 1 << 20
if pipeline == "1":
    R.direct_writes = lambda *a: False
snn = convert(sbsnn.load_model(str(TINY_HYBRID)).eval(), "paper")
flush = R.Recorder.flush

def marked_flush(self):
    open(marker + ".in", "w").close()
    flush(self)
    with open(marker + ".tmp", "w") as f:
        json.dump({n: lay.flushed_rows for n, lay in self._layers.items()}, f)
    os.replace(marker + ".tmp", marker)
    os.remove(marker + ".in")

R.Recorder.flush = marked_flush
with torch.no_grad():
    simulate(snn, heldout_text(1000), backend="torch", record=out, record_events=events == "1",
             block_size=None if block == "none" else int(block))
'''


def child(path, marker, block, events, pipeline) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(marker), block,
                             "1" if events else "0", "1" if pipeline else "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv=None) -> int:
    from sbsnn.sim import load_recording

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30, help="how many runs to kill")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times and run kinds")
    ap.add_argument("--pipeline", action="store_true",
                    help="counts through HDF5's filter pipeline instead of sbsnn's encoder")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kill_rec_"))
    truth, span = {}, {}
    for block in ("16", "none"):      # uninterrupted runs: the rows, the time after a flush
        marker = tmp / f"t{block}.json"
        p = child(tmp / f"truth{block}.h5", marker, block, False, args.pipeline)
        while not marker.exists() and p.poll() is None:
            time.sleep(0.01)
        t0 = time.monotonic()
        if p.wait():
            raise SystemExit("the uninterrupted run failed")
        span[block] = time.monotonic() - t0
        with load_recording(tmp / f"truth{block}.h5") as r:
            truth[block] = {n: np.asarray(r.counts(n)[:]) for n in r.layers}
    tally = {"opened": 0, "between flushes": 0, "inside a flush": 0, "after the end": 0,
             "damaged between": 0, "damaged inside": 0, "lost flushed rows": 0, "wrong rows": 0}
    for i in range(args.kills):
        block, events = rng.choice(["16", "none"]), rng.random() < 0.25
        path, marker = tmp / f"k{i}.h5", tmp / f"k{i}.json"
        p = child(path, marker, block, events, args.pipeline)
        while not marker.exists() and p.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, span[block]))
        p.send_signal(signal.SIGKILL)
        p.wait()
        inside = Path(str(marker) + ".in").exists()
        flushed = None if inside or not marker.exists() else json.loads(marker.read_text())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec = load_recording(path)
        except Exception as e:  # noqa: BLE001 - a file that does not open is the finding
            print(f"kill {i}: the file does not open: {type(e).__name__}: {e}")
            continue
        tally["opened"] += 1
        with rec:
            where = "after the end" if rec.complete else "inside a flush" if inside else "between flushes"
            tally[where] += 1
            if rec.damaged:
                tally["damaged inside" if inside else "damaged between"] += 1
            for name in rec.layers:
                got = np.asarray(rec.counts(name)[:])
                if not np.array_equal(got, truth[block][name][:len(got)]):
                    tally["wrong rows"] += 1
                if flushed and not rec.damaged and len(got) < flushed.get(name, 0):
                    tally["lost flushed rows"] += 1
            print(f"kill {i} (block {block}, events {events}): {where}, "
                  f"damaged {bool(rec.damaged)}", flush=True)
        path.unlink()
    print(json.dumps(tally, indent=1))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    bad = tally["wrong rows"] or tally["lost flushed rows"] or tally["damaged between"] or \
        tally["opened"] < args.kills
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
