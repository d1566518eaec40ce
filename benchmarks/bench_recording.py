"""What a recording costs: write time and bytes per token of each candidate layout and filter.

A simulation's calls (every spiking layer's integer counts and thresholds) are captured
once, in memory, from ``sbsnn.simulate`` of a random model of Gemma 3 270M's shape (the
one of ``bench_sim.py``, with massive activations) or of ``--model``; then each candidate
writes the same calls with :class:`sbsnn.sim.Recorder`, side by side, round by round
(order rotated). Printed per candidate: the median write time, write ms per token, bytes
per token, and the ratio of (event simulation + write) to the float forward measured in the
same process (the issue 22 goal: a recorded simulation <= 1.5x the float forward). Every
candidate's file is read back and compared with the captured counts and thresholds.

Finally the whole ``simulate(..., record=...)`` with the writer's default is timed beside
the float forward, the simulation without a recording, and the recording with the counts
through HDF5's filter pipeline (the writer before issue 22 part 3).

    .venv/bin/python benchmarks/bench_recording.py                 # ~10 min on 2 shared cores
    .venv/bin/python benchmarks/bench_recording.py --model GGUF_OR_DIR
    .venv/bin/python benchmarks/bench_recording.py --quick
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import sbsnn  # noqa: E402
from bench_sim import GEMMA3_270M, K, QUICK_MODEL, machine, synthetic_model, token_ids  # noqa: E402
from sbsnn.converters import convert  # noqa: E402
from sbsnn.sim import Recorder, load_recording, simulate  # noqa: E402
from sbsnn.sim import recorder as recorder_module  # noqa: E402

# name -> Recorder keyword arguments (pipeline=True: counts through HDF5's filter
# pipeline even where sbsnn would compress them itself, as before issue 22 part 3)
CANDIDATES = {
    "gzip 4 + shuffle (before)": dict(compression="gzip", compression_opts=4, shuffle=True),
    "gzip 1 + shuffle": dict(compression="gzip", compression_opts=1, shuffle=True),
    "lzf + shuffle": dict(compression="lzf", shuffle=True),
    "lzf through HDF5's pipeline (before part 3)": dict(compression="lzf", pipeline=True),
    "lzf, sbsnn's encoder, inline": dict(compression="lzf", background=False),
    "lzf, sbsnn's encoder, background thread (the default)": dict(compression="lzf"),
    "none": dict(compression=None),
    # A bound, not a layout: the counts clipped to int8 (what an int8 + sparse outliers
    # layout would cost, less its outlier table); never read back equal where counts exceed int8.
    "bound: int8 (clipped) + lzf + shuffle": dict(compression="lzf", shuffle=True, clip8=True),
    "lzf + shuffle, chunks of 64 tokens": dict(compression="lzf", shuffle=True, chunk_tokens=64),
    "lzf + shuffle, chunks of 1024 tokens": dict(compression="lzf", shuffle=True, chunk_tokens=1024),
}


class Capture:
    """A recorder for ``simulate(record=...)`` that keeps every call in memory; siblings
    handed the very same tensors (q, k, v) get the same copies, so that the replay links
    their datasets as a recording of the simulation does."""

    def __init__(self):
        self.calls = []
        self._last = None

    def write(self, name, counts, v_th):
        last = self._last
        if last is not None and counts is last[0] and v_th is last[1]:
            c, v = self.calls[-1][1:]
        else:
            c, v = counts.detach().cpu().clone(), v_th.detach().cpu().clone()
        self._last = (counts, v_th)
        self.calls.append((name, c, v))

    def flush(self):
        pass

    def close(self, complete=True):
        pass


def replay(calls, path, kwargs) -> None:
    kwargs = dict(kwargs)
    clip = kwargs.pop("clip8", False)
    pipeline = kwargs.pop("pipeline", False)
    real = recorder_module.direct_writes
    if pipeline:
        recorder_module.direct_writes = lambda *a: False
    clipped: dict = {}
    try:
        with Recorder(path, metadata={"coding": "ternary"}, **kwargs) as rec:
            for name, c, v in calls:
                if clip:        # one clipped tensor per captured one: siblings still link
                    c = clipped.setdefault(id(c), c.clamp(-127, 127))
                rec.write(name, c, v)
    finally:
        recorder_module.direct_writes = real


def same(calls, path) -> bool:
    """The file holds exactly the captured counts and thresholds."""
    by_layer: dict[str, list] = {}
    for name, c, v in calls:
        by_layer.setdefault(name, []).append((c, v))
    with load_recording(path) as r:
        for name, parts in by_layer.items():
            c = torch.cat([p[0] for p in parts]).numpy()
            v = torch.cat([p[1].reshape(len(p[1]), -1) for p in parts]).numpy().astype(np.float32)
            got_v = np.asarray(r.thresholds(name)[:]).reshape(len(v), -1)
            if not (np.array_equal(np.asarray(r.counts(name)[:]), c) and np.array_equal(got_v, v)):
                return False
    return True


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="any model sbsnn.load_model reads (default: random Gemma 3 270M shape)")
    ap.add_argument("--tokens", type=int, default=823)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small model, 128 tokens, 1 round")
    ap.add_argument("--dir", default=None, help="where the files are written (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.tokens = 1, 128
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    for line in machine():
        print(line)
    if args.model:
        model = sbsnn.load_model(args.model).eval()
        what = args.model
    else:
        model = synthetic_model(QUICK_MODEL if args.quick else GEMMA3_270M)
        what = "random model of " + ("a small" if args.quick else "Gemma 3 270M's") + " shape"
    snn = convert(model, "paper", coding="ternary", k=K).eval()
    ids, _ = token_ids(model, args.tokens)
    n = ids.numel()
    tmp = tempfile.mkdtemp(prefix="bench_rec_", dir=args.dir)
    cap = Capture()
    with torch.no_grad():
        simulate(snn, ids, backend="torch", record=cap, return_logits=False)
        calls = cap.calls
        elems = sum(c.numel() for _, c, _ in calls)
        stored = sum(c.numel() for c in {id(c): c for _, c, _ in calls}.values())
        peak = max(int(c.abs().max()) for _, c, _ in calls if c.numel())
        wide = sum(int((c.abs() > 127).sum()) for _, c, _ in calls)
        print(f"model: {what}; {n} tokens; {len(calls)} calls, {elems / n:,.0f} counts per token, "
              f"({stored / n:,.0f} stored: siblings share), "
              f"largest |count| {peak:,}, {wide:,} counts beyond int8 ({100 * wide / elems:.4f} %); "
              f"count dtype {calls[0][1].dtype}", flush=True)
        paths = {name: os.path.join(tmp, f"c{i}.h5") for i, name in enumerate(CANDIDATES)}
        jobs = {name: (lambda name=name: replay(calls, paths[name], CANDIDATES[name])) for name in CANDIDATES}
        jobs["float forward"] = lambda: model(ids)
        jobs["event simulation"] = lambda: simulate(snn, ids, backend="torch", return_logits=False)
        names = list(jobs)
        for name in names:
            jobs[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name].append(timed(jobs[name]))
            print(f"  round {r + 1}/{args.rounds}: float {times['float forward'][-1]:.2f} s, event "
                  f"{times['event simulation'][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        # per round: (event + write) / float
        lines = ["", "| candidate | write s | write ms / token | bytes / token | (event + write) / float "
                 "| write / event | reads back exactly |", "|---|---:|---:|---:|---:|---:|---|"]
        for name in CANDIDATES:
            ratio = statistics.median((e + w) / f for e, w, f in zip(
                times["event simulation"], times[name], times["float forward"]))
            lines.append(f"| {name} | {med[name]:.2f} | {1e3 * med[name] / n:.2f} "
                         f"| {os.path.getsize(paths[name]) / n:,.0f} | {ratio:.2f} "
                         f"| {med[name] / med['event simulation']:.2f} | {same(calls, paths[name])} |")
        ev = statistics.median(e / f for e, f in zip(times["event simulation"], times["float forward"]))
        lines.append(f"\nfloat forward {med['float forward']:.2f} s, event simulation "
                     f"{med['event simulation']:.2f} s ({ev:.2f}x float); raw counts "
                     f"{elems / n:,.0f} per token")
        # the whole route with the writer's default
        rec, old = os.path.join(tmp, "default.h5"), os.path.join(tmp, "pipeline.h5")

        def through_pipeline():
            real = recorder_module.direct_writes
            recorder_module.direct_writes = lambda *a: False
            try:
                simulate(snn, ids, backend="torch", record=old, return_logits=False)
            finally:
                recorder_module.direct_writes = real
        whole = {"float forward": lambda: model(ids),
                 "event simulation": lambda: simulate(snn, ids, backend="torch", return_logits=False),
                 "event + recording": lambda: simulate(snn, ids, backend="torch", record=rec,
                                                       return_logits=False),
                 "event + recording through HDF5's pipeline (before part 3)": through_pipeline}
        wt: dict[str, list[float]] = {k: [] for k in whole}
        wn = list(whole)
        for r in range(args.rounds):
            for name in wn[r % len(wn):] + wn[:r % len(wn)]:
                wt[name].append(timed(whole[name]))
        with load_recording(rec) as r:
            ds = r.counts(r.layers[0])
            layout = f"{ds.compression} {ds.compression_opts}, shuffle {ds.shuffle}"
        lines.append(f"\nsimulate(..., record=...) with the default writer ({layout}):")
        for name in wn[1:]:
            ratio = statistics.median(a / b for a, b in zip(wt[name], wt["float forward"]))
            lines.append(f"- {name}: {statistics.median(wt[name]):.2f} s, {ratio:.2f}x the float forward")
        lines.append(f"- recording {os.path.getsize(rec) / n:,.0f} bytes per token "
                     f"({os.path.getsize(old) / n:,.0f} through HDF5's pipeline)")
    for p in [*paths.values(), rec, old]:
        os.remove(p)
    os.rmdir(tmp)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
