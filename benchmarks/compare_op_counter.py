"""Operation counts of one spiking layer: sbsnn's counters against SpikingJelly 2.0's
``op_counter`` (SynOpCounter, ACCounter, MACCounter under DispatchCounterMode).

A ternary spike train (values -1, 0, +1) drives an INT8 linear layer step by step, as a
time-stepped SNN would run it. sbsnn counts every nonzero spike as an event and each
event as ``fan-out`` synaptic operations. SpikingJelly's counters only recognise {0, 1}
(or bool) tensors as spikes, so the same ternary input is costed as dense MACs and as
zero synaptic operations. A binary train (non-negative counts) is shown for reference:
there both tools agree.

Run: ``python benchmarks/compare_op_counter.py`` (needs spikingjelly, see
docs/install-extras.md).
"""

from __future__ import annotations

import argparse

import torch

from sbsnn.converters import SpikingLinear
from sbsnn.neurons import expand
from sbsnn.sim import Simulator


def sj_counts(linear: torch.nn.Linear, trains: torch.Tensor) -> dict[str, int]:
    from spikingjelly.activation_based.op_counter import (ACCounter, DispatchCounterMode,
                                                          MACCounter, SynOpCounter)

    counters = {"SynOpCounter": SynOpCounter(), "ACCounter": ACCounter(), "MACCounter": MACCounter()}
    with torch.no_grad(), DispatchCounterMode(list(counters.values())):
        for t in range(trains.shape[0]):       # one step at a time, as an SNN runs
            linear(trains[t])
    return {k: c.get_total() for k, c in counters.items()}


def sbsnn_counts(layer: SpikingLinear, x: torch.Tensor) -> dict[str, int]:
    holder = torch.nn.Sequential(layer)
    with Simulator(holder, "torch") as sim:
        holder(x)
    c = next(iter(sim.counters.values()))
    return {"events": c.events, "negative events": c.events_neg, "synaptic ops": c.synaptic_ops,
            "dense MACs": c.dense_macs, "time steps": c.time_steps_max}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--in-features", type=int, default=512)
    ap.add_argument("--out-features", type=int, default=256)
    ap.add_argument("--k", type=float, default=3.0)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    lin = torch.nn.Linear(args.in_features, args.out_features, bias=False)
    rows = []
    for coding, x in (("ternary", torch.randn(args.tokens, args.in_features)),
                      ("binary", torch.randn(args.tokens, args.in_features).relu())):
        layer = SpikingLinear.from_linear(lin, k=args.k, coding=coding)
        ours = sbsnn_counts(layer, x)
        counts, _ = layer.spike(x)
        trains = expand(counts, coding).to(torch.float32)     # [T, tokens, in]
        theirs = sj_counts(torch.nn.Linear(args.in_features, args.out_features, bias=False), trains)
        rows.append((coding, ours, theirs, trains.shape[0]))
    print(f"one layer {args.in_features} -> {args.out_features}, {args.tokens} tokens, k = {args.k:g}; "
          "SpikingJelly runs the [T, tokens, in] train step by step through nn.Linear")
    print(f"{'coding':8} {'T':>3} {'sbsnn events':>13} {'sbsnn SynOps':>13} {'SJ SynOps':>11} "
          f"{'SJ ACs':>11} {'SJ MACs':>11} {'dense MACs x T':>15}")
    for coding, ours, theirs, T in rows:
        print(f"{coding:8} {T:>3} {ours['events']:>13,} {ours['synaptic ops']:>13,} "
              f"{theirs['SynOpCounter']:>11,} {theirs['ACCounter']:>11,} {theirs['MACCounter']:>11,} "
              f"{ours['dense MACs'] * T:>15,}")
        if coding == "ternary":
            print(f"  ternary: {ours['negative events']:,} of sbsnn's events are negative spikes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
