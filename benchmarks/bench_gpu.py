"""GPU benchmark of sbsnn's CuPy kernels (sbsnn/sim/cupy_backend.py). Needs a CUDA GPU and CuPy.

1. Runs the kernels' GPU tests first (``pytest -m gpu tests/test_cupy_kernels.py -q``);
   a failure is reported in the table's header and makes the exit status 1.
2. Counts kernel: ``spike_counts_cuda`` on a 4096 x 3584 float32 activation, against a
   device-to-device copy of the same tensor. Bandwidth counts the bytes each must move
   (counts: x read once, int8 counts and per-row V_th/peak written; copy: read + write).
   Target: >= 60 % of the copy's bandwidth.
3. Event-driven accumulation for ONE token on 7B-shaped layers (3584 -> 18944 and
   18944 -> 3584), inputs with ~70 % silent channels (SpikingBrain's sparsity), against
   dense INT8 (``torch._int_mm``, which needs more than 16 rows: one real token padded to a
   batch of 32, i.e. what a dense INT8 GEMM engine does for a single token) and a bf16
   matrix-vector product. Target: time <= 1.25 x active fraction x dense INT8 time.
   The accumulation time is the kernel alone (events already compacted); the compaction
   (two small kernels, a prefix sum and one synchronisation) is reported beside it.
4. The same for a 2048-token prompt (no target: there the dense tensor-core product is
   the bar, and an event-driven walk on CUDA cores is expected to lose).
5. Work independent of the largest count: the whole layer step the simulator runs
   (``cupy_backend.layer_outputs``: compaction, count-weighted accumulation, rescale) on
   512 tokens of a 7B-shaped layer, with 4 channels at 100-1000x the others (counts in
   the thousands) and with one count past the int32 kernel's bound (split off and added
   in int64), against the same inputs without outliers. Target: <= 1.25x.
6. A whole model on the GPU: a random model of Gemma 3 270M's shape with massive
   activations (as benchmarks/bench_sim.py builds it), 823 tokens: ``simulate(...,
   backend="cupy")`` and the integer path against the float forward of the same model on
   the same GPU (wall clock, synchronised). No target (the CPU goals are in bench_sim.py);
   the logits must equal the integer path's on the same device.

Timing: CUDA events around R back-to-back launches, queued behind a GPU sleep so that
host launch overhead does not show; warm-ups first; the median of several rounds.
Weights (and activations for the counts kernel) rotate over copies totalling several
times the L2 cache, so each launch reads from HBM as a real layer would.

    python benchmarks/bench_gpu.py              # tests, then the table (a few minutes)
    python benchmarks/bench_gpu.py --skip-tests
    python benchmarks/bench_gpu.py --dry-run    # prints the plan, touches no GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sbsnn.converters.quant import group_accumulate  # noqa: E402
from sbsnn.sim import cupy_backend as cb  # noqa: E402

COUNTS_SHAPE = (4096, 3584)
LAYERS = ((3584, 18944), (18944, 3584))  # 7B MLP: up/gate (in -> out) and down
PROMPT_TOKENS = 2048
SILENT = 0.7           # fraction of input channels silent per token
GROUP_SIZE = 128
K = 3.0
COUNTS_TARGET = 0.60   # >= this fraction of the copy bandwidth
ACC_SLACK = 1.25       # event time <= ACC_SLACK * active fraction * dense INT8 time
OUTLIER_SLACK = 1.25   # layer step with massive outliers <= this x the same without
OUTLIER_TOKENS = 512
MASSIVE = ((7, 1000.0), (100, 300.0), (2000, 100.0), (3000, 100.0))  # channel, factor
MODEL_TOKENS = 823


# ------------------------------------------------------------------------------ timing
class CudaTimer:
    """Median per-launch GPU time (microseconds) of ``fn``, launches queued back to back."""

    def __init__(self, rounds: int = 5, reps: int = 20, warmup: int = 3):
        self.rounds, self.reps, self.warmup = rounds, reps, warmup

    def __call__(self, fns) -> float:
        """``fns``: a list of callables used in rotation (one per weight copy)."""
        for i in range(self.warmup * len(fns)):
            fns[i % len(fns)]()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.rounds):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(50_000_000)  # ~25 ms: the host queues all reps meanwhile
            start.record()
            for i in range(self.reps):
                fns[i % len(fns)]()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0 / self.reps)
        return statistics.median(times)


def wall_time(fn, reps: int = 5) -> float:
    """Median wall-clock microseconds of ``fn`` (which synchronises itself)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(out)


def copies_for(nbytes: int, l2_bytes: int) -> int:
    """How many copies of an nbytes operand make a rotation of at least 3 x L2 (2..8)."""
    return max(2, min(8, -(-3 * l2_bytes // max(1, nbytes))))


# ------------------------------------------------------------------------------ inputs
def sparse_activations(n: int, d: int, device, seed: int) -> torch.Tensor:
    """Gaussian activations with a random SILENT fraction of channels set to zero per token."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=g)
    keep = torch.rand(n, d, device=device, generator=g) >= SILENT
    return x * keep


def int8_mm_operands(a_rows: torch.Tensor, codes: torch.Tensor, column_major: bool = True):
    """(A [M, in] int8, B [in, out] int8) for torch._int_mm. B column-major (the weights
    [out, in] contiguous, transposed: the layout cuBLASLt's INT8 GEMM wants), or row-major."""
    return a_rows, (codes.t() if column_major else codes.t().contiguous())


def dense_int8(a: torch.Tensor, b: torch.Tensor):
    return torch._int_mm(a, b)


# -------------------------------------------------------------------------- benchmarks
def bench_counts(timer, device, l2_bytes, rows=None):
    n, d = COUNTS_SHAPE if rows is None else rows
    nbytes = n * d * 4
    copies = copies_for(nbytes, l2_bytes)
    xs = [torch.randn(n, d, device=device) for _ in range(copies)]
    ys = [torch.empty_like(xs[0]) for _ in range(copies)]
    t_counts = timer([lambda x=x: cb.spike_counts_cuda(x, K, torch.int8, check=False) for x in xs])
    t_copy = timer([lambda x=x, y=y: y.copy_(x) for x, y in zip(xs, ys)])
    counts_bytes = n * d * (4 + 1) + n * (4 + 4)
    copy_bytes = 2 * nbytes
    bw_counts = counts_bytes / t_counts / 1e6   # TB/s (bytes / us / 1e6)
    bw_copy = copy_bytes / t_copy / 1e6
    # The answer itself, once, against the reference (no timing).
    c, v = cb.spike_counts_cuda(xs[0], K, torch.int8)
    want, _ = cb.spike_counts_reference(xs[0], K, torch.int8, v_th=v)
    return {"name": f"counts {n}x{d} f32->int8", "time": t_counts,
            "ref": f"d2d copy {t_copy:.1f} us", "value": bw_counts / bw_copy,
            "value_fmt": f"bw {bw_counts:.2f}/{bw_copy:.2f} TB/s = {bw_counts / bw_copy:.2f}",
            "target": f">= {COUNTS_TARGET:.2f}", "ok": bw_counts / bw_copy >= COUNTS_TARGET,
            "exact": bool(torch.equal(c, want))}


def bench_accumulate(timer, device, l2_bytes, d_in, d_out, tokens, seed):
    w_bytes = d_in * d_out
    copies = copies_for(w_bytes, l2_bytes) if tokens == 1 else 2
    gen = torch.Generator(device=device).manual_seed(seed)
    codes = [torch.randint(-127, 128, (d_out, d_in), device=device, dtype=torch.int8, generator=gen)
             for _ in range(copies)]
    codes_t = [c.t().contiguous() for c in codes]
    x = sparse_activations(tokens, d_in, device, seed)
    counts, _ = cb.spike_counts_cuda(x, K, torch.int8)
    active = float((counts != 0).float().mean())
    row_ptr, channels, values, group_ptr = cb.compact_cuda(counts, GROUP_SIZE)
    t_event = timer([lambda ct=ct: cb.accumulate_cuda(row_ptr, channels, values, ct, tokens, GROUP_SIZE,
                                                      group_ptr=group_ptr, check=False)
                     for ct in codes_t])
    t_compact = wall_time(lambda: cb.compact_cuda(counts, GROUP_SIZE))

    m = max(32, tokens)  # _int_mm needs more than 16 rows
    a = torch.zeros(m, d_in, device=device, dtype=torch.int8)
    a[:tokens] = counts
    t_int8, int8_note = None, ""
    for column_major in (True, False):
        try:
            ops = [int8_mm_operands(a, c, column_major) for c in codes]
            want = torch.mm(a[:tokens].double(), codes[0].t().double()) if tokens == 1 else None
            got = dense_int8(*ops[0])
            if want is not None and not torch.equal(got[:tokens].double(), want):
                raise RuntimeError("_int_mm gave a wrong product")
            t_int8 = timer([lambda o=o: dense_int8(*o) for o in ops])
            int8_note = ""
            break
        except RuntimeError as e:  # a layout or shape this torch's INT8 GEMM refuses
            int8_note = f"_int_mm failed: {str(e).splitlines()[0][:80]}"
    xb = x.to(torch.bfloat16)
    wb = [c.to(torch.bfloat16) for c in codes]
    t_bf16 = timer([lambda w=w: torch.nn.functional.linear(xb, w) for w in wb])

    # Exactness, once: the kernel's int32 group sums against int64 group_accumulate.
    acc = cb.accumulate_cuda(row_ptr, channels, values, codes_t[0], tokens, GROUP_SIZE, group_ptr=group_ptr)
    exact = bool(torch.equal(acc.to(torch.int64), group_accumulate(counts, codes[0], GROUP_SIZE)))
    label = "1 token" if tokens == 1 else f"{tokens} tokens"
    row = {"name": f"accumulate {label} {d_in}->{d_out}", "time": t_event, "active": active,
           "compact": t_compact, "bf16": t_bf16, "exact": exact, "int8": t_int8}
    if t_int8 is None:
        row.update(ref=f"bf16 {t_bf16:.1f} us; {int8_note}", value=None, value_fmt="n/a",
                   target="n/a", ok=None)
        return row
    ratio = t_event / t_int8
    row["ref"] = f"int8 {t_int8:.1f} us (M={m}), bf16 {t_bf16:.1f} us"
    row["value"] = ratio
    if tokens == 1:
        bound = ACC_SLACK * active
        row.update(value_fmt=f"{ratio:.3f} x int8 (active {active:.3f})",
                   target=f"<= {bound:.3f}", ok=ratio <= bound)
    else:
        row.update(value_fmt=f"{ratio:.2f} x int8 (active {active:.3f})", target="info", ok=None)
    return row


def bench_outliers(timer, device, d_in, d_out, seed):
    """The simulator's layer step with and without massive outliers (same weights)."""
    from sbsnn.converters import SpikingLinear

    torch.manual_seed(seed)
    layer = SpikingLinear.from_linear(torch.nn.Linear(d_in, d_out), group_size=GROUP_SIZE, k=K,
                                      coding="ternary").to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(OUTLIER_TOKENS, d_in, device=device, generator=g)
    plain, v_plain = layer.spike(x)
    xm = x.clone()
    for ch, f in MASSIVE:
        xm[:, ch % d_in] *= f
    massive, v_m = layer.spike(xm)
    split = massive.to(torch.int32)
    split[0, 5] = 2 * cb.int32_count_bound(GROUP_SIZE)     # past the int32 kernel: split off
    fns = {"plain": lambda: cb.layer_outputs(plain, v_plain, layer, torch.float32),
           "massive": lambda: cb.layer_outputs(massive, v_m, layer, torch.float32),
           "split": lambda: cb.layer_outputs(split, v_m, layer, torch.float32)}
    t = {k: wall_time(f) for k, f in fns.items()}
    exact = all(torch.equal(cb.layer_outputs(c, v, layer, torch.float32),
                            layer.forward_counts(c, v, torch.float32))
                for c, v in ((plain, v_plain), (massive, v_m), (split, v_m)))
    worst = max(t["massive"], t["split"]) / t["plain"]
    return {"name": f"layer step {OUTLIER_TOKENS} tok {d_in}->{d_out} outliers", "time": t["massive"],
            "ref": f"plain {t['plain']:.0f} us, split {t['split']:.0f} us",
            "value": worst,
            "value_fmt": (f"x{t['massive'] / t['plain']:.2f} / x{t['split'] / t['plain']:.2f} "
                          f"(peak {int(massive.abs().max())})"),
            "target": f"<= {OUTLIER_SLACK:.2f}", "ok": worst <= OUTLIER_SLACK, "exact": exact}


def bench_model_gpu(device):
    """simulate(..., backend="cupy") and the integer path against the float forward."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_sim as bs

    from sbsnn.converters import convert
    from sbsnn.sim import simulate

    model = bs.synthetic_model(bs.GEMMA3_270M).to(device)
    snn = convert(model, "paper", coding="ternary", k=K).eval()
    ids = bs.token_ids(model, MODEL_TOKENS).to(device)
    with torch.no_grad():
        fns = {"float": lambda: model(ids), "integer": lambda: snn(ids),
               "event": lambda: simulate(snn, ids, backend="cupy", return_logits=False)}
        t = {k: wall_time(f, reps=3) for k, f in fns.items()}
        res = simulate(snn, ids, backend="cupy")
        exact = bool(torch.equal(res.logits, snn(ids)[0].float().cpu()))
    tot = res.totals()
    return {"name": f"model {MODEL_TOKENS} tok Gemma3-270M shape", "time": t["event"],
            "ref": f"float {t['float'] / 1e3:.1f} ms, integer {t['integer'] / 1e3:.1f} ms",
            "value": t["event"] / t["float"],
            "value_fmt": (f"event x{t['event'] / t['float']:.2f}, integer x{t['integer'] / t['float']:.2f} "
                          f"(max count {tot['count_max']}, T {tot['time_steps_max']})"),
            "target": "info", "ok": None, "exact": exact}


def guarded(name, fn, *args):
    """Run one benchmark row; a failure becomes a row (the prepared run goes on)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - report and continue
        print(f"{name} failed: {type(e).__name__}: {e}")
        return {"name": name, "time": float("nan"), "ref": "FAILED", "value": None,
                "value_fmt": f"{type(e).__name__}: {str(e)[:30]}", "target": "n/a", "ok": False,
                "exact": False}


def run_tests(timeout: int = 240) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_cupy_kernels.py", "-q",
           "-p", "no:cacheprovider"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"pytest timed out after {timeout} s"
    out = (p.stdout + p.stderr).strip().splitlines()
    summary = out[-1] if out else "(no output)"
    if p.returncode != 0:
        print("\n".join(out[-60:]))
    return p.returncode == 0, f"{summary} ({time.perf_counter() - t0:.0f} s)"


def print_table(rows, header):
    print(header)
    print(f"{'measure':<38} {'time us':>10}  {'vs':<44} {'result':<36} {'target':<10} ok")
    for r in rows:
        ok = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['name']:<38} {r['time']:>10.1f}  {r['ref']:<44} {r['value_fmt']:<36} "
              f"{r['target']:<10} {ok}")
        extra = []
        if "compact" in r:
            extra.append(f"compaction {r['compact']:.1f} us wall (host-synced)")
        extra.append(f"exact vs torch reference: {r['exact']}")
        print(f"{'':<38} {'':>10}  " + "; ".join(extra))


def plan() -> str:
    lines = [f"counts: {COUNTS_SHAPE[0]}x{COUNTS_SHAPE[1]} float32 -> int8, k={K}, vs d2d copy; "
             f"target >= {COUNTS_TARGET:.0%} of copy bandwidth"]
    for d_in, d_out in LAYERS:
        for tokens in (1, PROMPT_TOKENS):
            tgt = (f"target <= {ACC_SLACK} x active x int8" if tokens == 1 else "info")
            lines.append(f"accumulate: {tokens} token(s), {d_in}->{d_out}, group {GROUP_SIZE}, "
                         f"{SILENT:.0%} silent channels, vs torch._int_mm (M>=32) and bf16 linear; {tgt}")
    for d_in, d_out in LAYERS:
        lines.append(f"layer step: {OUTLIER_TOKENS} tokens, {d_in}->{d_out}, channels "
                     f"{', '.join(f'{c} x{f:g}' for c, f in MASSIVE)} and one count past int32's bound, "
                     f"vs no outliers; target <= {OUTLIER_SLACK} x")
    lines.append(f"model: Gemma 3 270M shape with massive activations, {MODEL_TOKENS} tokens, "
                 "simulate(backend='cupy') and the integer path vs the float forward; info")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit before touching CUDA")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests first")
    args = ap.parse_args(argv)
    print(plan())
    if args.dry_run:
        print("dry run: kernels", ", ".join(cb.NAME_EXPRESSIONS), "- no GPU touched")
        return 0
    from sbsnn.sim.engine import cupy_usable

    if not cupy_usable():
        print("no usable CUDA device with CuPy: nothing to measure")
        return 2
    tests_ok, tests_summary = (True, "skipped") if args.skip_tests else run_tests()
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    l2 = int(getattr(props, "L2_cache_size", 0) or 60 << 20)
    torch.manual_seed(0)
    timer = CudaTimer()
    rows = [bench_counts(timer, device, l2)]
    for i, (d_in, d_out) in enumerate(LAYERS):
        rows.append(bench_accumulate(timer, device, l2, d_in, d_out, 1, seed=10 + i))
    for i, (d_in, d_out) in enumerate(LAYERS):
        rows.append(bench_accumulate(CudaTimer(rounds=3, reps=3, warmup=1), device, l2,
                                     d_in, d_out, PROMPT_TOKENS, seed=20 + i))
    for i, (d_in, d_out) in enumerate(LAYERS):
        rows.append(guarded(f"layer step outliers {d_in}->{d_out}", bench_outliers, timer, device,
                            d_in, d_out, 30 + i))
    rows.append(guarded("model", bench_model_gpu, device))
    import cupy

    header = (f"GPU {props.name} ({props.multi_processor_count} SMs, L2 {l2 >> 20} MiB); torch "
              f"{torch.__version__}, cupy {cupy.__version__}; gpu tests: "
              f"{'passed' if tests_ok else 'FAILED'} - {tests_summary}")
    print()
    print_table(rows, header)
    failed = [r["name"] for r in rows if r["ok"] is False or not r["exact"]]
    if failed:
        print("missed target or not exact:", ", ".join(failed))
    return 0 if tests_ok and all(r["exact"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
