"""Data-parallel simulation: tokens per second for 1, 2, ... processes on one document set.

Converts the embedded tiny-hybrid (or ``--model``, a spiking checkpoint or any model
``sbsnn.load_model`` reads) with the paper preset, writes a document set of ``--docs``
documents cut from the shipped held-out text (lengths varying from ``--chars`` / 2 to
``--chars`` x 1.5) and simulates it with ``torchrun --nproc-per-node N`` for every N of
``--nproc``, ``--repeats`` times, the process counts interleaved round by round (so
background load hits all alike). Each process runs torch with one thread (``--threads``).
Every launch records to a sharded HDF5 recording (``--no-record``: none).

Per launch, rank 0 reports the simulation phase: from a barrier after every rank loaded
the model to the moment ``simulate_documents`` returned (documents simulated, counters
reduced, recording closed and indexed). Throughput = the set's tokens / that time; the
speedup is against the median of N = 1. End to end = the whole ``torchrun`` command
(interpreter start, model load, everything). The load average is printed before and
after every launch: the machine may be shared.

On a GPU machine the same script scales by ``--nproc``: ``--backend cupy`` (or auto)
puts each rank on ``cuda:LOCAL_RANK`` and the ranks talk over NCCL (``cpu:gloo,cuda:nccl``).

    .venv/bin/python benchmarks/bench_distributed.py                      # 1 and 2 processes
    .venv/bin/python benchmarks/bench_distributed.py --nproc 1 2 4 8 --backend cupy   # GPUs
    .venv/bin/python benchmarks/bench_distributed.py --readme benchmarks/README.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _readme import write_section  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

SECTION = "## Data-parallel simulation (bench_distributed.py)"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- worker
def worker(args) -> int:
    """One rank (launched by torchrun): load, barrier, simulate, report (rank 0)."""
    import torch

    torch.set_num_threads(args.threads)            # this process is ours: the benchmark owns it
    import sbsnn
    from sbsnn.runs import process_group, simulate_documents

    with process_group() as g:
        device = "cpu"
        if args.backend != "torch" and torch.cuda.is_available():
            device = f"cuda:{g.local_rank}"
            torch.cuda.set_device(g.local_rank)
            try:
                import cupy

                cupy.cuda.Device(g.local_rank).use()
            except ImportError:
                pass
        model = sbsnn.load_spiking(args.model, device=device)
        g.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        r = simulate_documents(model, args.docs, backend=args.backend,
                               record=args.record or None, block_size=args.block_size, group=g)
        cpu = time.process_time() - c0
        g.barrier()
        seconds = time.perf_counter() - t0
        cpus = g.all_gather(cpu)
        if g.is_main:
            per_rank = [0] * g.world_size
            for d in r.documents:
                per_rank[d.rank] += d.tokens
            Path(args.result).write_text(json.dumps({
                "world_size": g.world_size, "tokens": r.tokens, "seconds": seconds,
                "loop_seconds": r.seconds, "tokens_per_rank": per_rank, "cpu_per_rank": cpus,
                "events": r.totals()["events"], "backend": r.backend}))
    return 0


# ----------------------------------------------------------------------------- launcher
def _documents(path: Path, n: int, chars: int) -> None:
    from sbsnn.data import heldout_text

    t = heldout_text()
    lines, pos = [], 0
    for i in range(n):
        size = int(chars * (0.5 + (i * 7 % n) / max(1, n - 1)))    # chars/2 .. 3 chars/2
        if pos + size > len(t):
            pos = 0
        lines.append(json.dumps({"id": f"doc{i}", "text": t[pos:pos + size]}))
        pos += size
    path.write_text("\n".join(lines) + "\n")


def _burn(n: int) -> None:
    s = 0
    for i in range(n):
        s += i * i


def machine_parallelism(work_items: int = 6_000_000) -> float:
    """How much more CPU two busy processes get than one, right now (a fixed pure-Python
    loop run by 1, then 2, processes at once): 2.0 on two idle cores, ~1 when the machine
    (or this container's CPU share) is saturated by other work."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")

    def run(k: int) -> float:
        ps = [ctx.Process(target=_burn, args=(work_items,)) for _ in range(k)]
        t0 = time.perf_counter()
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        return time.perf_counter() - t0

    one, two = run(1), run(2)
    return 2 * one / two


def launch(n: int, args, work: Path, run: int) -> dict:
    result = work / f"result-{n}-{run}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
           "--master-addr", "127.0.0.1", "--master-port", str(_port()), __file__, "--worker",
           "--model", str(args.model), "--docs", str(args.docs), "--threads", str(args.threads),
           "--block-size", str(args.block_size), "--backend", args.backend,
           "--result", str(result)]
    if args.record:
        cmd += ["--record", str(work / f"rec-{n}-{run}" / "spikes.h5")]
        (work / f"rec-{n}-{run}").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads),
           "TQDM_DISABLE": "1"}
    before = _load()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"launch with {n} processes failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(result.read_text())
    out.update(wall=wall, load_before=before, load_after=_load())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--record", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help="spiking checkpoint, or a model to convert "
                    "(default: tiny-hybrid, converted here)")
    ap.add_argument("--docs", default=None, help="document set (default: one written here)")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n-docs", type=int, default=24, help="documents to write (default 24)")
    ap.add_argument("--chars", type=int, default=400, help="mean characters per document")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--backend", default="torch", choices=["auto", "torch", "cupy"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="simulate without a recording")
    ap.add_argument("--readme", help="append the results to this markdown file")
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        work = Path(tmp)
        from sbsnn.converters.format import SPIKING_CONFIG

        if args.model is None or not (Path(args.model) / SPIKING_CONFIG).exists():
            from sbsnn.converters import convert_checkpoint

            convert_checkpoint(args.model or "tiny-hybrid", work / "ck", progress=False)
            src = args.model or "tiny-hybrid"
            args.model = work / "ck"
        else:
            src = args.model
        if args.docs is None:
            args.docs = work / "docs.jsonl"
            _documents(args.docs, args.n_docs, args.chars)
        args.record = not args.no_record
        import torch

        from sbsnn.runs import load_documents

        docs = load_documents(args.docs)
        runs: dict[int, list[dict]] = {n: [] for n in args.nproc}
        par = [machine_parallelism()]
        print(f"  the machine gives 2 busy processes {par[0]:.2f}x the CPU of one", flush=True)
        for k in range(args.repeats):
            order = args.nproc if k % 2 == 0 else list(reversed(args.nproc))
            for n in order:
                r = launch(n, args, work, k)
                runs[n].append(r)
                print(f"  round {k + 1}: {n} process(es): {r['tokens'] / r['seconds']:,.0f} tok/s "
                      f"(simulation {r['seconds']:.2f} s, CPU per rank "
                      f"{' / '.join(f'{c:.2f}' for c in r['cpu_per_rank'])} s, end to end "
                      f"{r['wall']:.1f} s; load {r['load_before']} -> {r['load_after']})", flush=True)
        par.append(machine_parallelism())
        print(f"  the machine gives 2 busy processes {par[1]:.2f}x the CPU of one", flush=True)

    base = statistics.median(r["tokens"] / r["seconds"] for r in runs[args.nproc[0]])
    # throughput had every rank a core of its own: tokens / the busiest rank's CPU time
    cpu_tps = lambda r: r["tokens"] / max(r["cpu_per_rank"])  # noqa: E731
    cpu_base = statistics.median(cpu_tps(r) for r in runs[args.nproc[0]])
    head = ("| processes | tokens | tokens per rank | simulation s (median) | tok/s (median) | "
            f"speedup vs {args.nproc[0]} | CPU s of the busiest rank | speedup in CPU time | "
            "end to end s (median) | load before -> after |")
    lines = [head, "|" + "---:|" * 9 + "---|"]
    for n in args.nproc:
        rs = runs[n]
        tps = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        lines.append(
            f"| {n} | {rs[0]['tokens']:,} | {' / '.join(f'{x:,}' for x in rs[0]['tokens_per_rank'])} "
            f"| {statistics.median(r['seconds'] for r in rs):.2f} | {tps:,.0f} | {tps / base:.2f} "
            f"| {statistics.median(max(r['cpu_per_rank']) for r in rs):.2f} "
            f"| {statistics.median(cpu_tps(r) for r in rs) / cpu_base:.2f} "
            f"| {statistics.median(r['wall'] for r in rs):.1f} "
            f"| {'; '.join(r['load_before'].split(',')[0] + ' -> ' + r['load_after'].split(',')[0] for r in rs)} |")
    same = len({r["events"] for rs in runs.values() for r in rs}) == 1
    facts = [
        f"machine: nproc {os.cpu_count()}; torch {torch.__version__}; {args.threads} torch thread(s) "
        f"per process; python {sys.version.split()[0]}; date {datetime.date.today()}; load "
        f"average at the end {_load()}",
        f"model: {src} (spiking, paper preset, ternary, k = 3); backend {runs[args.nproc[0]][0]['backend']}; "
        f"block size {args.block_size}; {'sharded recording' if args.record else 'no recording'}",
        f"documents: {len(docs)} ({docs.chars:,} characters), each from a fresh decoding state, "
        f"split across ranks by tokens",
        f"events counted: the same in every launch: {same}",
        f"CPU the machine gave 2 busy processes against one (pure-Python loop, before and after): "
        f"{par[0]:.2f}x, {par[1]:.2f}x",
        f"whole benchmark: {time.perf_counter() - t_start:.0f} s wall",
    ]
    text = "\n".join(["", *(f"- {f}" for f in facts), "", *lines, ""])
    print(text)
    if not same:
        print("ERROR: the launches counted different events", file=sys.stderr)
    if args.readme:
        cmd = "python benchmarks/bench_distributed.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        write_section(Path(args.readme), SECTION, __doc__.split("\n\n")[0] + "\n",
                      text.strip("\n"), cmd.strip())
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
