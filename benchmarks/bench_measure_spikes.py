"""Calibration's exact pass (``measure_spikes``) at 1 torch thread and at 2, side by side.

With one thread the documents run one after another; with two they run side by side on
sbsnn's single-threaded workers. Both passes must give the same bits (checked here); the
script prints tokens per second of each, their ratio and the load average around each
pass (the cores may be shared). Texts: the even topics of Python's language reference
(``pydoc_data.topics``), as bench_fidelity calibrates on.

    .venv/bin/python benchmarks/bench_measure_spikes.py /work/models/gemma-3-270m-q4_k_m.gguf
    .venv/bin/python benchmarks/bench_measure_spikes.py tiny-hybrid --tokens 2048
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model sbsnn.load_model reads (path or embedded name)")
    ap.add_argument("--tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--coding", default="ternary")
    args = ap.parse_args()

    import pydoc_data.topics as topics

    import sbsnn
    from sbsnn.converters.calibration import measure_spikes, text_blocks
    from sbsnn.converters.convert import convert

    threads_before = torch.get_num_threads()
    m = sbsnn.load_model(args.model)
    spiking = convert(m, "paper", args.coding, 3.0, 128, None, None)
    keys = sorted(topics.topics)
    blocks = text_blocks(m, [topics.topics[k] for k in keys[0::2]], args.tokens, args.block_size)
    n = sum(b.shape[1] for d in blocks for b in d)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"model: {args.model}; {n:,} tokens in {len(blocks)} documents, blocks of "
          f"{args.block_size}, {args.coding} coding")
    rows, results = [], {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        results[threads] = measure_spikes(spiking, blocks, args.coding)
        s = time.perf_counter() - t
        rows.append((threads, s, n / s, load0, os.getloadavg()[0]))
    torch.set_num_threads(threads_before)
    same = results[1] == results[2]
    print("| torch threads | documents | s | tok/s | vs 1 thread | load avg before -> after |")
    print("|---:|---|---:|---:|---:|---|")
    for threads, s, tps, l0, l1 in rows:
        how = "one after another" if threads == 1 else "side by side (sbsnn workers)"
        print(f"| {threads} | {how} | {s:.1f} | {tps:.0f} | {tps / rows[0][2]:.2f}x | "
              f"{l0:.2f} -> {l1:.2f} |")
    print(f"spikes per element {results[1].spikes_per_element:.6f}; "
          f"both passes bit-identical: {same}")
    if not same:
        sys.exit("the 2-thread pass differs from the 1-thread pass")


if __name__ == "__main__":
    main()
