"""Spike-coding benchmark: sbsnn.neurons against a plain copy, the three-line formula and SpikingJelly.

All contenders run on the same activation, interleaved round by round in one process,
and the table reports the median of per-round ratios, so load from other processes hits
both sides of each ratio alike. Run from the repository root:

    .venv/bin/python benchmarks/bench_coding.py            # 4096 x 3584 float32
    .venv/bin/python benchmarks/bench_coding.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script

from sbsnn.neurons import spike_counts, spike_counts_reference, spike_stats


def three_line_counts(x, k=3.0):
    """The formula as written (sbsnn's plain reference): what spike_counts replaces."""
    return spike_counts_reference(x, k)


def three_line_stats(x):
    """Full ternary statistics with plain torch on the three-line counts."""
    counts, _ = three_line_counts(x)
    mag = counts.abs()
    steps = int(mag.max())
    per_step = torch.stack([(mag > t).sum() for t in range(steps)])
    return steps, per_step, int(per_step.sum())


def sbsnn_stats(x):
    counts, _ = spike_counts(x)
    return spike_stats(counts, "ternary")


def spikingjelly_stats(x, steps):
    """Ternary statistics by stepping SpikingJelly's TernaryIFNode: charge x / V_th at t=0."""
    from spikingjelly.activation_based import functional, neuron

    _, v_th = three_line_counts(x)
    node = neuron.TernaryIFNode(v_threshold=1.0, v_reset=None, step_mode="s")
    charge, silence = x / v_th, torch.zeros_like(x)
    per_step = []
    for t in range(steps):
        spikes = node(charge if t == 0 else silence)
        per_step.append(int(torch.count_nonzero(spikes)))
    functional.reset_net(node)
    return per_step, sum(per_step)


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> str:
    model = cpu_model()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"nproc {os.cpu_count()}, CPU {model}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"load average {load}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="tokens (default 4096)")
    parser.add_argument("--dim", type=int, default=3584, help="features (default 3584, a 7B layer)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds for counts (default 15)")
    parser.add_argument("--sj-rounds", type=int, default=3, help="rounds against SpikingJelly (default 3)")
    parser.add_argument("--sj-steps", type=int, default=8, help="T for SpikingJelly (default 8)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="512 x 3584, fewer rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.sj_rounds = 512, 5, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"command: {shlex.join([sys.executable] + sys.argv)}")
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.dim)
    y = torch.empty_like(x)
    print(f"input:   {args.rows} x {args.dim} float32 standard normal ({x.numel() * 4 / 2**20:.0f} MiB)")

    counts, v_th = spike_counts(x)
    ref_counts, ref_v = three_line_counts(x)
    identical = torch.equal(counts.float(), ref_counts) and torch.equal(v_th, ref_v)
    print(f"counts:  {counts.dtype}, max |count| {int(counts.abs().max())}, "
          f"bit-identical to the three-line formula: {'yes' if identical else 'NO'}")

    # heavy-tailed variant (Student-t, 2 degrees of freedom): outliers push counts to int16
    heavy = x / torch.randn(4, args.rows, args.dim).pow(2).mean(0).sqrt().clamp(min=1e-3)
    heavy_counts, _ = spike_counts(heavy)
    print(f"heavy:   Student-t(2) variant: {heavy_counts.dtype}, max |count| {int(heavy_counts.abs().max())}, "
          f"bit-identical: {'yes' if torch.equal(heavy_counts.float(), three_line_counts(heavy)[0]) else 'NO'}")
    identical = identical and torch.equal(heavy_counts.float(), three_line_counts(heavy)[0])
    del heavy_counts

    # --- spike_counts vs copy and the three-line formula, interleaved
    t_copy, t_counts, t_three, t_heavy = [], [], [], []
    for _ in range(2):  # warm-up: allocator, page faults, thread pool
        y.copy_(x), spike_counts(x), three_line_counts(x), spike_counts(heavy)
    for _ in range(args.rounds):
        t_copy.append(timed(lambda: y.copy_(x)))
        t_counts.append(timed(lambda: spike_counts(x)))
        t_three.append(timed(lambda: three_line_counts(x)))
        t_heavy.append(timed(lambda: spike_counts(heavy)))
    copy_ratio = statistics.median(c / s for c, s in zip(t_copy, t_counts))
    three_ratio = statistics.median(t / s for t, s in zip(t_three, t_counts))
    heavy_ratio = statistics.median(c / s for c, s in zip(t_copy, t_heavy))
    del heavy

    # --- full ternary statistics vs stepping SpikingJelly's TernaryIFNode
    stats = sbsnn_stats(x)
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401

        have_sj = True
    except ImportError:
        have_sj = False
    t_sj, t_ours, t_naive = [], [], []
    for _ in range(args.sj_rounds):
        if have_sj:
            t_sj.append(timed(lambda: spikingjelly_stats(x, args.sj_steps)))
        t_ours.append(statistics.median(timed(lambda: sbsnn_stats(x)) for _ in range(5)))
        t_naive.append(timed(lambda: three_line_stats(x)))

    def ms(values):
        return f"{statistics.median(values) * 1e3:.1f}"

    rows = [
        ("plain copy `y.copy_(x)`", ms(t_copy), "", ""),
        ("`spike_counts(x)`", ms(t_counts), f"copy/counts {copy_ratio:.2f}", ">= 0.4"),
        ("three-line formula", ms(t_three), f"formula/counts {three_ratio:.1f}x", ">= 5x"),
        ("`spike_counts`, heavy-tailed input (int16)", ms(t_heavy), f"copy/counts {heavy_ratio:.2f}", ""),
        ("full ternary stats, sbsnn", ms(t_ours), "", ""),
        ("full ternary stats, three-line + torch", ms(t_naive), "", ""),
    ]
    if have_sj:
        sj_ratio = statistics.median(s / o for s, o in zip(t_sj, t_ours))
        naive_ratio = statistics.median(s / n for s, n in zip(t_sj, t_naive))
        rows.append((f"SpikingJelly TernaryIFNode, T={args.sj_steps}", ms(t_sj),
                     f"SJ/sbsnn {sj_ratio:.0f}x (SJ/three-line {naive_ratio:.0f}x)", ">= 100x"))
    else:
        rows.append(("SpikingJelly TernaryIFNode", "not installed", "", ">= 100x"))
    print()
    print("| measurement | median ms | ratio (median of rounds) | target |")
    print("|---|---:|---|---|")
    for name, t, ratio, target in rows:
        print(f"| {name} | {t} | {ratio} | {target} |")
    print()
    print(f"ternary statistics: T={stats.steps}, total spikes {stats.total_spikes}, "
          f"firing rate {stats.firing_rate:.4f}, spikes per step {stats.spikes_per_step[:8].tolist()}...")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
