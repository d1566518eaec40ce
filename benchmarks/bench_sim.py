"""CPU benchmark of event-driven simulation (sbsnn.sim) against the integer path and BLAS.

On 7B-shaped layers (3584 -> 18944, the MLP gate/up, and 18944 -> 3584, the down
projection; a random ``nn.Linear`` made INT8 by ``SpikingLinear.from_linear``, group 128,
k = 3), for 1 and 512 tokens, three ways of computing the same layer side by side:

- event path: ``Simulator(...).run_layer`` (spike counts, the event walk of
  ``accumulate_events_torch``, ``rescale``), for ternary and bitwise coding;
- integer path: ``SpikingLinear.forward`` (spike counts, ``group_accumulate``, the same
  ``rescale``); it does not depend on the coding;
- dense float32 matmul ``x @ W.T`` of the same shapes (BLAS), no spikes at all.

Inputs: "gauss" = standard normal activations (about k = 3 ternary spikes per element);
"sparse" = the same with 70 % of each token's channels set to 0 (SpikingBrain-like
sparsity; as in bench_gpu.py). The contenders run interleaved, round by round (the order
rotates each round), and each time is a median over rounds.

Rates: synaptic operations (events x fan-out, one INT8 weight-column addition per event
and output) per second of the event path, against the multiply-adds per second of the
dense matmul on the same shapes and token count.

For 512 tokens the event path walks ~1.5-5 million events x 3.6k-19k outputs per call
(~10^10-10^11 synaptic operations, about a minute or more per call on 2 cores), so by
default it is timed on the first ``--event-tokens`` (32) tokens and its 512-token time is
that time scaled by the ratio of events (closed form, ``spike_stats``); such cells are
marked ``~``. The event rate still grows a little with the batch (see the README), so
the scaled times are upper estimates. ``--event-tokens 0`` times all 512 tokens (slow). The script checks that event and integer outputs are
bit-identical (exit status 1 if not).

    .venv/bin/python benchmarks/bench_sim.py            # ~4 minutes on 2 cores
    .venv/bin/python benchmarks/bench_sim.py --quick    # smaller layers, a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sbsnn.converters import SpikingLinear  # noqa: E402
from sbsnn.neurons import spike_stats  # noqa: E402
from sbsnn.sim import Simulator  # noqa: E402

LAYERS = ((3584, 18944), (18944, 3584))
QUICK_LAYERS = ((896, 4736), (4736, 896))
GROUP_SIZE = 128
K = 3.0
SILENT = 0.7
CODINGS = ("ternary", "bitwise")


# ------------------------------------------------------------------------------ setup
def activations(n: int, d: int, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if kind == "sparse":
        x = x * (torch.rand(n, d, generator=g) >= SILENT)
    return x


class Pair(nn.Module):
    """One INT8 layer seen by the simulator twice: ternary and bitwise inputs (shared weights)."""

    def __init__(self, in_f: int, out_f: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        lin = nn.Linear(in_f, out_f)
        self.ternary = SpikingLinear.from_linear(lin, group_size=GROUP_SIZE, k=K, coding="ternary")
        self.bitwise = SpikingLinear(in_f, out_f, True, GROUP_SIZE, K, "bitwise")
        self.bitwise.weight_codes = self.ternary.weight_codes
        self.bitwise.weight_scales = self.ternary.weight_scales
        self.bitwise.bias = self.ternary.bias
        self.weight = lin.weight.detach()  # float32 [out, in] for the dense matmul


def median_times(contenders: dict, rounds: int, warmup: bool) -> dict[str, float]:
    """Median seconds per contender; contenders interleaved, order rotated each round
    (after one untimed call of each when ``warmup``)."""
    names = list(contenders)
    if warmup:
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


# ---------------------------------------------------------------------------- machine


def engine_state() -> str:
    """Which engine.py was measured (it is being optimised): sha256 prefix, git status."""
    path = ROOT / "sbsnn" / "sim" / "engine.py"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", str(path)], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        git = "modified vs HEAD" if dirty else "as committed"
    except Exception:  # noqa: BLE001 - informational only
        git = "git status unavailable"
    return f"sbsnn/sim/engine.py sha256 {digest} ({git})"


def machine() -> list[str]:
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [f"machine: nproc {nproc}; CPU {cpu_model()}; torch {torch.__version__}; "
            f"torch threads {torch.get_num_threads()}; python {sys.version.split()[0]}",
            engine_state()]


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# ------------------------------------------------------------------------------- main
def bench_layer(pair: Pair, sim: Simulator, tokens: int, kind: str, rounds: int,
                event_tokens: int, seed: int) -> tuple[list[dict], bool]:
    in_f, out_f = pair.ternary.in_features, pair.ternary.out_features
    x = activations(tokens, in_f, kind, seed)
    n_ev = tokens if not event_tokens or event_tokens >= tokens else event_tokens
    x_ev = x[:n_ev]
    W = pair.weight
    layers = {"ternary": pair.ternary, "bitwise": pair.bitwise}

    # Exactness (untimed): the event path equals the integer path on (a slice of) x.
    ok = True
    check = x[:min(tokens, 4)]
    want = pair.ternary(check)
    for coding, layer in layers.items():
        ok &= torch.equal(sim.run_layer(coding, layer, check), want)

    counts, _ = pair.ternary.spike(x)
    stats = {c: (spike_stats(counts, c), spike_stats(counts[:n_ev], c)) for c in CODINGS}
    contenders = {
        "dense": lambda: x @ W.t(),
        "integer": lambda: pair.ternary(x),
        **{f"event-{c}": (lambda c=c: sim.run_layer(c, layers[c], x_ev)) for c in CODINGS},
    }
    t = median_times(contenders, rounds, warmup=tokens <= 32)
    macs = tokens * in_f * out_f
    rows = []
    for c in CODINGS:
        full, part = stats[c]
        scale = full.total_spikes / part.total_spikes if part.total_spikes else 1.0
        t_ev = t[f"event-{c}"] * scale
        synops_part = part.total_spikes * out_f
        rows.append(dict(
            layer=f"{in_f}->{out_f}", tokens=tokens, input=kind, coding=c,
            zero=float((counts == 0).float().mean()), T=full.steps,
            spikes_per_element=full.total_spikes / counts.numel(),
            synops_per_mac=full.total_spikes * out_f / macs,
            event_s=t_ev, scaled=n_ev < tokens, event_tokens=n_ev,
            integer_s=t["integer"], dense_s=t["dense"],
            synops_rate=synops_part / t[f"event-{c}"] if t[f"event-{c}"] else float("nan"),
            mac_rate=macs / t["dense"],
        ))
    return rows, ok


def fmt_ms(s: float) -> str:
    ms = s * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| layer | tokens | input | coding | zero counts | T | spikes/elt | synops / dense MACs "
            "| event ms | integer ms | dense ms | event / integer | event / dense "
            "| event Gsynop/s | dense GMAC/s | synop rate / MAC rate |")
    lines = [head, "|" + "---|" * 4 + "---:|" * 12]
    for r in rows:
        mark = "~" if r["scaled"] else ""
        lines.append(
            f"| {r['layer']} | {r['tokens']} | {r['input']} | {r['coding']} | {r['zero']:.0%} | {r['T']} "
            f"| {r['spikes_per_element']:.2f} | {r['synops_per_mac']:.2f} "
            f"| {mark}{fmt_ms(r['event_s'])} | {fmt_ms(r['integer_s'])} | {fmt_ms(r['dense_s'])} "
            f"| {mark}{r['event_s'] / r['integer_s']:.1f} | {mark}{r['event_s'] / r['dense_s']:.0f} "
            f"| {r['synops_rate'] / 1e9:.2f} | {r['mac_rate'] / 1e9:.1f} "
            f"| {r['synops_rate'] / r['mac_rate']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=None, help="token counts (default 1 512)")
    ap.add_argument("--rounds-small", type=int, default=4, help="rounds for 1 token (default 4)")
    ap.add_argument("--rounds-large", type=int, default=2, help="rounds for the larger counts (default 2)")
    ap.add_argument("--event-tokens", type=int, default=32,
                    help="time the event path on this many of the tokens and scale (default 32; 0: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: layers 4x narrower (896 <-> 4736), 1 and 32 tokens, 1 round")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = QUICK_LAYERS if args.quick else LAYERS
    tokens = args.tokens or ([1, 32] if args.quick else [1, 512])
    rounds_small, rounds_large = (1, 1) if args.quick else (args.rounds_small, args.rounds_large)
    event_tokens = 8 if args.quick and args.event_tokens == 32 else args.event_tokens

    start = time.perf_counter()
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    for line in machine():
        print(line)
    print(f"layers: {', '.join(f'{a}->{b}' for a, b in shapes)}; INT8 group {GROUP_SIZE}; k {K}; "
          f"event path timed on {event_tokens or 'all'} token(s) of each larger batch; "
          f"rounds {rounds_small} (1 token) / {rounds_large}")
    rows, all_ok = [], True
    with torch.no_grad():
        for i, (in_f, out_f) in enumerate(shapes):
            t0 = time.perf_counter()
            pair = Pair(in_f, out_f, seed=i)
            sim = Simulator(pair, backend="torch")
            print(f"built {in_f}->{out_f} in {time.perf_counter() - t0:.1f} s", flush=True)
            for n in tokens:
                for kind in ("gauss", "sparse"):
                    t0 = time.perf_counter()
                    r, ok = bench_layer(pair, sim, n, kind, rounds_small if n == 1 else rounds_large,
                                        event_tokens, seed=100 * i + n)
                    rows += r
                    all_ok &= ok
                    print(f"  {in_f}->{out_f} {n} token(s) {kind}: {time.perf_counter() - t0:.1f} s"
                          f"{'' if ok else '  EVENT != INTEGER'}", flush=True)
            del pair, sim
    print()
    print(table(rows))
    print()
    print(f"event path bit-identical to the integer path: {all_ok}")
    print(f"~ = event path timed on the first {event_tokens} token(s), time scaled by the ratio of events")
    print(f"whole benchmark: {time.perf_counter() - start:.0f} s wall; load average at the end {load()}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
