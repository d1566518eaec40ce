"""A long stream through the event simulation: memory and time per token stay flat.

Builds a document set of ``--tokens`` tokens (default 1,000,000) from the held-out text
shipped with the embedded model (``sbsnn.data.heldout_text()``, each document a rotation
of it repeated to a length cycling through 100 / 300 / 700 / 2,500 / 6,000 / 16,000 tokens), writes it
as JSONL to a temporary directory and simulates it with the embedded ``tiny-hybrid``
(GLA and sliding-window layers: a bounded decoding state) converted with the paper preset
(k = 3), through ``sbsnn.runs.simulate_documents``, the entry point of
``sbsnn simulate --text corpus.jsonl`` (block size 256, no recording; ``--record`` writes
one to a temporary file).

Every ``--window`` tokens (default 100k) it samples: tokens/s and microseconds per token
over the last window (wall clock, and this process's CPU time, which the load of other
processes disturbs less), the process's resident set (VmRSS), the peak resident set during the
window (VmHWM, reset through ``/proc/self/clear_refs`` at each sample) and the number of
objects the garbage collector tracks. It prints the table and the ratios last/first
window of time per token and of memory (resident and peak): flat is ~1.0. Whole-process
memory (torch's allocations included), so freed-but-retained malloc arenas count too.
Timings are wall-clock on shared cores: the time ratio carries the load of other
processes; compare it with the memory ratios, which do not.

    .venv/bin/python benchmarks/bench_long_stream.py --quick     # 20k tokens, ~1 min
    .venv/bin/python benchmarks/bench_long_stream.py --threads 2 # 1M tokens
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu_model, proc_status_kib, reset_peak_rss  # benchmarks/ on sys.path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sbsnn  # noqa: E402
from sbsnn.runs import simulate_documents  # noqa: E402

LENGTHS = (100, 300, 700, 2500, 6000, 16000)   # document lengths in tokens, cycled


def write_documents(path: Path, tokenizer, tokens: int) -> int:
    """Write a JSONL document set of exactly ``tokens`` tokens; returns its documents."""
    base = sbsnn.data.heldout_text()
    n = i = 0
    with open(path, "w", encoding="utf-8") as f:
        while n < tokens:
            off = (i * 613) % len(base)
            want = min(LENGTHS[i % len(LENGTHS)], tokens - n)
            text = (base[off:] + base[:off]) * (want // len(base) + 1)
            text = text[:want]
            while len(tokenizer.encode(text)) > want:   # a tokenizer that is not byte-level
                text = text[:-1]
            f.write(json.dumps({"id": f"doc{i}", "text": text}) + "\n")
            n += len(tokenizer.encode(text))
            i += 1
    return i


class Sampler:
    """Called after each block: every ``window`` tokens a row of speed and memory."""

    def __init__(self, window: int):
        self.window, self.done, self.rows = window, 0, []
        self.hwm_ok = reset_peak_rss()
        self.t, self.cpu, self.at = time.perf_counter(), time.process_time(), 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.done - self.at >= self.window:
            self.sample()

    def sample(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        tok = self.done - self.at
        self.rows.append({
            "tokens": self.done, "window_tokens": tok, "seconds": now - self.t,
            "tok_s": tok / (now - self.t), "us_per_tok": 1e6 * (now - self.t) / tok,
            "cpu_us_per_tok": 1e6 * (cpu - self.cpu) / tok,
            "rss_kib": proc_status_kib("VmRSS"),
            "peak_kib": proc_status_kib("VmHWM") if self.hwm_ok else None,
            "gc_objects": len(gc.get_objects())})
        self.at = self.done
        self.hwm_ok = reset_peak_rss()
        self.t, self.cpu = time.perf_counter(), time.process_time()   # sampling not timed


def mib(kib) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens of the stream (default 1M)")
    ap.add_argument("--window", type=int, default=None,
                    help="tokens per sample (default: 100k, or tokens/10 when fewer than 1M)")
    ap.add_argument("--block-size", type=int, default=256, help="block size (default 256, the CLI's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--record", action="store_true",
                    help="also write a recording to a temporary file (removed after)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20k tokens, windows of 2k")
    args = ap.parse_args(argv)
    if args.quick:
        args.tokens = 20_000
    window = args.window or (100_000 if args.tokens >= 1_000_000 else max(1, args.tokens // 10))
    if args.threads:
        torch.set_num_threads(args.threads)

    model = sbsnn.converters.convert(sbsnn.load_model("tiny-hybrid"), preset="paper", k=3)
    print(f"# bench_long_stream: {args.tokens:,} tokens, samples every {window:,}; "
          f"block size {args.block_size}; {torch.get_num_threads()} threads; {cpu_model()}; "
          f"torch {torch.__version__}; recording: {'yes' if args.record else 'no'}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        n_docs = write_documents(corpus, model._require_tokenizer(), args.tokens)
        print(f"# {n_docs:,} documents ({corpus.stat().st_size / 2**20:.1f} MiB of JSONL)")
        sampler = Sampler(window)
        t0 = time.perf_counter()
        r = simulate_documents(model, str(corpus), record=Path(tmp) / "spikes.h5" if args.record else None,
                               block_size=args.block_size, distributed=False,
                               on_tokens=sampler)
        total = time.perf_counter() - t0
        if sampler.done > sampler.at:
            sampler.sample()
        rec_bytes = (Path(tmp) / "spikes.h5").stat().st_size if args.record else None
    assert r.tokens == args.tokens == sampler.done, (r.tokens, sampler.done)

    print(f"\n{'tokens':>10} {'tok/s':>9} {'us/tok':>8} {'CPU us/tok':>10} {'RSS MiB':>9} {'peak MiB':>9} {'gc objs':>9}")
    for row in sampler.rows:
        print(f"{row['tokens']:>10,} {row['tok_s']:>9.0f} {row['us_per_tok']:>8.0f} "
              f"{row['cpu_us_per_tok']:>10.0f} "
              f"{mib(row['rss_kib']):>9} {mib(row['peak_kib']):>9} {row['gc_objects']:>9,}")
    full = [row for row in sampler.rows if row["window_tokens"] >= window]
    first, last = full[0], full[-1]
    print(f"\n{r.tokens:,} tokens of {len(r.documents):,} documents in {total:.1f} s "
          f"({r.tokens / total:.0f} tok/s); {r.totals()['events']:,} events")
    if rec_bytes is not None:
        print(f"recording: {rec_bytes / 2**20:.1f} MiB, {rec_bytes / r.tokens:.0f} bytes/token")
    print(f"ratios last/first window ({last['tokens']:,} vs {first['tokens']:,} tokens): "
          f"time per token {last['us_per_tok'] / first['us_per_tok']:.3f} "
          f"(CPU time {last['cpu_us_per_tok'] / first['cpu_us_per_tok']:.3f}), "
          f"RSS {last['rss_kib'] / first['rss_kib']:.3f}, "
          + (f"peak {last['peak_kib'] / first['peak_kib']:.3f}, " if first["peak_kib"] else "")
          + f"gc objects {last['gc_objects'] / first['gc_objects']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
