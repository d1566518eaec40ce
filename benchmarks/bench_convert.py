"""Streaming conversion of a checkpoint with SpikingBrain-7B layer shapes: time and memory.

Writes a random bf16 checkpoint (sbsnn names, GLA/SWA alternating, one safetensors shard
per block plus one for the rest, and an index), generated one block at a time so that
writing it never holds more than one block. Then:

1. reads every shard once with ``cat > /dev/null`` to warm the page cache, then times a
   second read of the same bytes (warm cache: the conversion below reads them warm too);
2. runs ``sbsnn.convert_checkpoint`` in a fresh subprocess and measures the call's wall
   time (without the interpreter and torch import), its peak resident set (``VmHWM`` and
   ``ru_maxrss``; anonymous and file-backed peaks sampled every 20 ms from
   ``/proc/self/status``), and where the time went (quantisation incl. page faults on the
   mapped source, shard writes, the rest);
3. compares: conversion time vs read time (target <= 2x), peak memory vs the largest
   block (target < 2 x largest block + 500 MB).

Temporary files are removed at the end (``--keep`` keeps them).

    .venv/bin/python benchmarks/bench_convert.py                      # 4 layers, ~1.9 GB
    .venv/bin/python benchmarks/bench_convert.py --tiny               # seconds, smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from safetensors.torch import save_file  # noqa: E402

from sbsnn.models import HybridConfig, HybridForCausalLM  # noqa: E402

MB = 1 << 20

# The conversion, run in a fresh process so its peak memory is its own.
CHILD = r"""
import json, os, resource, sys, threading, time
peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out
stop = False
def sample():
    while not stop:
        s = status()
        for k in peaks:
            peaks[k] = max(peaks[k], s.get(k, 0))
        time.sleep(0.02)
t_import = time.perf_counter()
import torch
import sbsnn.converters.stream as stream
from sbsnn.converters.spiking_linear import SpikingLinear
t_import = time.perf_counter() - t_import
timing = {"quantize_s": 0.0, "write_s": 0.0, "build_s": 0.0}
real_model = stream.HybridForCausalLM
def timed_model(*a, **k):
    t = time.perf_counter(); m = real_model(*a, **k); timing["build_s"] += time.perf_counter() - t; return m
stream.HybridForCausalLM = timed_model
real_write, real_from = stream._write, SpikingLinear.from_linear.__func__
def timed_write(*a, **k):
    t = time.perf_counter(); n = real_write(*a, **k); timing["write_s"] += time.perf_counter() - t; return n
def timed_from(cls, *a, **k):
    t = time.perf_counter(); m = real_from(cls, *a, **k); timing["quantize_s"] += time.perf_counter() - t; return m
stream._write = timed_write
SpikingLinear.from_linear = classmethod(timed_from)
src, out, preset, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
base = status()
th = threading.Thread(target=sample, daemon=True); th.start()
t0 = time.perf_counter()
cfg = stream.convert_checkpoint(src, out, preset=preset, progress=False)
seconds = time.perf_counter() - t0
stop = True; th.join()
end = status()
from sbsnn.converters.format import read_spiking_config  # the output is a spiking checkpoint
assert read_spiking_config(out).targets == cfg.targets
print(json.dumps({"seconds": seconds, "import_s": t_import, **timing,
                  "baseline_rss": base["VmRSS"], "end_rss": end["VmRSS"], "vm_hwm": end["VmHWM"],
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_anon": peaks["RssAnon"], "peak_file": peaks["RssFile"],
                  "targets": len(cfg.targets), "clamped": cfg.quantization["clamped"],
                  "threads": torch.get_num_threads()}))
"""


def bench_config(args) -> HybridConfig:
    if args.tiny:
        return HybridConfig(vocab_size=256, hidden_size=256, intermediate_size=768,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            attn_layers=[1, 3], sliding_window=64)
    return HybridConfig(vocab_size=args.vocab, hidden_size=3584, intermediate_size=18944,
                        num_hidden_layers=args.layers, num_attention_heads=28,
                        num_key_value_heads=4, head_dim=128,
                        attn_layers=list(range(1, args.layers, 2)), sliding_window=4096,
                        gate_low_rank_dim=16, tie_word_embeddings=False)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def write_checkpoint(cfg: HybridConfig, d: Path, seed: int = 0) -> dict:
    """Random bf16 weights, one block per shard, generated block by block."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HybridForCausalLM(cfg).state_dict().items()}
    groups: dict[str, list[str]] = {}
    for name in shapes:
        parts = name.split(".")
        key = ".".join(parts[:3]) if name.startswith("model.layers.") else "rest"
        groups.setdefault(key, []).append(name)
    order = [f"model.layers.{i}" for i in range(cfg.num_hidden_layers)] + ["rest"]
    files = {g: f"model-{i + 1:05d}-of-{len(order):05d}.safetensors" for i, g in enumerate(order)}
    gen = torch.Generator().manual_seed(seed)
    weight_map, sizes = {}, {}
    for g in order:
        tensors = {}
        for name in groups[g]:
            shape = shapes[name]
            if "norm" in name:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                fan_in = shape[-1] if len(shape) == 2 else 64
                t = torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(fan_in ** -0.5)
            tensors[name] = t
            weight_map[name] = files[g]
        save_file(tensors, str(d / files[g]), metadata={"format": "pt"})
        sizes[g] = sum(nbytes(t) for t in tensors.values())
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}, indent=1))
    c = cfg.to_dict()
    c["torch_dtype"] = "bfloat16"
    (d / "config.json").write_text(json.dumps(c, indent=2))
    return {"files": [d / files[g] for g in order], "sizes": sizes}


def timed_cat(files) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (default: 4, ~1.9 GB)")
    ap.add_argument("--vocab", type=int, default=1024, help="vocabulary (small: saves space)")
    ap.add_argument("--preset", default="paper", choices=["paper", "w8aspike"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the converter (0: default)")
    ap.add_argument("--reads", type=int, default=3, help="timed warm reads (best is reported)")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where to write (default: %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="small shapes: a smoke test in seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temporary checkpoints")
    args = ap.parse_args(argv)

    cfg = bench_config(args)
    with torch.device("meta"):
        total = sum(nbytes(v.to(torch.bfloat16)) for v in HybridForCausalLM(cfg).state_dict().values())
    free = shutil.disk_usage(args.tmp).free
    need = int(total * 2.2) + 512 * MB  # bf16 source + int8/bf16 output + margin
    if free < need:
        print(f"not enough space in {args.tmp}: {free / MB:,.0f} MiB free, need {need / MB:,.0f} MiB",
              file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sbsnn-bench-convert-", dir=args.tmp))
    t_start = time.perf_counter()
    try:
        src, out = work / "src", work / "out"
        src.mkdir()
        t0 = time.perf_counter()
        ck = write_checkpoint(cfg, src)
        t_write = time.perf_counter() - t0
        files = ck["files"]
        disk = sum(f.stat().st_size for f in files)
        block_sizes = {g: s for g, s in ck["sizes"].items() if g != "rest"}
        largest_name = max(block_sizes, key=block_sizes.get)
        largest = block_sizes[largest_name]

        timed_cat(files)  # warm the page cache: the conversion reads warm bytes too
        reads = [timed_cat(files) for _ in range(args.reads)]
        t_read = min(reads)

        r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), args.preset,
                            str(args.threads)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
        out_bytes = sum(f.stat().st_size for f in out.iterdir())
        print("converter:", json.dumps(res), flush=True)

        ratio_t = res["seconds"] / t_read
        mem_target = 2 * largest + 500 * MB
        ratio_m = res["vm_hwm"] / mem_target
        load = os.getloadavg()
        rows = [
            ("source checkpoint (bf16, on disk)", f"{disk / MB:,.0f} MiB", f"{len(files)} shards; written in {t_write:.1f} s"),
            ("largest block (bf16)", f"{largest / MB:,.0f} MiB", largest_name),
            ("read all shards, warm page cache (best of %d)" % args.reads, f"{t_read:.2f} s",
             f"{disk / MB / t_read:,.0f} MiB/s; reads {', '.join(f'{x:.2f}' for x in reads)} s"),
            ("convert_checkpoint wall", f"{res['seconds']:.2f} s",
             f"quantise {res['quantize_s']:.1f} s, write {res['write_s']:.1f} s, "
             f"build meta model {res['build_s']:.1f} s, "
             f"other {res['seconds'] - res['quantize_s'] - res['write_s'] - res['build_s']:.1f} s; "
             f"torch threads {res['threads']}; import {res['import_s']:.1f} s not counted"),
            ("**conversion / read**", f"**{ratio_t:.1f}x**", "target <= 2x: " + ("met" if ratio_t <= 2 else "NOT met")),
            ("output checkpoint", f"{out_bytes / MB:,.0f} MiB", f"{res['targets']} spiking layers, {res['clamped']} codes clamped"),
            ("peak RSS of the converter (VmHWM)", f"{res['vm_hwm'] / MB:,.0f} MiB",
             f"ru_maxrss {res['ru_maxrss'] / MB:,.0f} MiB; after imports {res['baseline_rss'] / MB:,.0f} MiB; "
             f"sampled peaks: anonymous {res['peak_anon'] / MB:,.0f} MiB, file-backed {res['peak_file'] / MB:,.0f} MiB"),
            ("target: 2 x largest block + 500 MB", f"{mem_target / MB:,.0f} MiB", ""),
            ("**peak / target**", f"**{ratio_m:.2f}**", "target < 1: " + ("met" if ratio_m < 1 else "NOT met")),
        ]
        print(f"\nmachine: nproc {os.cpu_count()}; CPU {cpu_model()}; torch {torch.__version__}; "
              f"python {platform.python_version()}; date {time.strftime('%Y-%m-%d %H:%M')}; "
              f"load average at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
        print(f"model: hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
              f"{cfg.num_attention_heads} heads x {cfg.head_dim}, {cfg.num_key_value_heads} KV heads, "
              f"{cfg.num_hidden_layers} layers ({', '.join(cfg.layer_kind(i) for i in range(cfg.num_hidden_layers))}), "
              f"vocab {cfg.vocab_size}; preset {args.preset}\n")
        print("| measure | value | notes |\n|---|---:|---|")
        for name, value, note in rows:
            print(f"| {name} | {value} | {note} |")
        print(f"\nwhole benchmark: {time.perf_counter() - t_start:.0f} s wall")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
