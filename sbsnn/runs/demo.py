"""``sbsnn demo``: the main job on the embedded model, end to end.

1. load the embedded ``tiny-hybrid`` model (a byte-level GLA + sliding-window hybrid
   trained on Shakespeare) and the shipped held-out text (two plays it never saw);
2. convert it to spiking form: ``paper`` preset (every linear projection's input is
   spiked, INT8 weights), ternary coding, k = 3;
3. fidelity: float and spiking perplexity, top-1 agreement and KL on the text;
4. simulate the spiking model event by event with recording
   (``simulate(..., record=out/"spikes.h5", block_size=256)``);
5. build the report from the recording (``report.json``, ``report.html``, PNG plots) and
   print a short summary table.

The event-driven simulation covers the whole text by default (``sim_tokens`` limits
it); on a CPU it costs about as many integer additions as there are synaptic operations
(spikes x fan-out, about 3 x the dense MACs for ternary coding at k = 3).
Fidelity always covers the whole text (``max_chars`` shortens it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from sbsnn.analysis.energy import load_profile
from sbsnn.analysis.fidelity import fidelity
from sbsnn.analysis.report import build_report, format_summary
from sbsnn.checks import THREADS_LIMIT, THREADS_WHY, check_int
from sbsnn.converters import convert
from sbsnn.data import heldout_text
from sbsnn.errors import OptionError, brief
from sbsnn.fsutil import atomic_file, check_replaceable, ensure_output_dir, record_outputs
from sbsnn.models.checkpoint import load_model
from sbsnn.sim import simulate
from sbsnn.sim.engine import resolve_backend
from sbsnn.sim.recorder import check_record_path

DEFAULT_MODEL = "tiny-hybrid"
PRESET, CODING, K = "paper", "ternary", 3.0
BLOCK_SIZE = 256


def _resolve_sim_tokens(sim_tokens, n_tokens: int) -> int:
    if sim_tokens == "auto" or sim_tokens is None:
        return n_tokens
    if isinstance(sim_tokens, bool) or not isinstance(sim_tokens, int) or sim_tokens < 0:
        raise ValueError(f"sim_tokens must be 'auto' or an int >= 0 (0: the whole text), "
                         f"got {brief(sim_tokens)}")
    return n_tokens if sim_tokens == 0 else min(n_tokens, sim_tokens)


def run_demo(out: str | Path = "sbsnn-demo", max_chars: int | None = None,
             threads: int = 0, print_fn=print, *, sim_tokens: int | str = "auto",
             profile: str = "horowitz45", backend: str = "auto", progress: bool = False) -> int:
    """Run the demo, write ``spikes.h5``, the report and ``summary.json`` into ``out``,
    print the summary through ``print_fn``; returns 0.

    ``max_chars``: use only the first N characters of the held-out text. ``threads``: only
    0; torch's thread count is the host program's to set (``torch.set_num_threads``; the
    command's ``--threads`` does it for its own process), never the library's. ``sim_tokens``: tokens simulated event by
    event ('auto' or 0: the whole text). ``profile``:
    energy profile of the spiking side. ``backend``: 'auto', 'torch' or 'cupy'.
    """
    # Every option is checked before any work (a bad one must not cost a conversion).
    check_int(max_chars, "max_chars", minimum=2, none_ok=True, hint=" (None: the whole text)")
    check_int(threads, "threads", minimum=0, maximum=THREADS_LIMIT, why=THREADS_WHY)
    if threads:
        raise OptionError(f"threads={threads}: run_demo does not change the process's torch "
                          "thread count (the host program owns it); call "
                          f"torch.set_num_threads({threads}) first, or run sbsnn demo --threads")
    if sim_tokens not in ("auto", None):
        check_int(sim_tokens, "sim_tokens", minimum=0, hint=" ('auto' or 0: the whole text)")
    load_profile(profile)
    backend = resolve_backend(backend)
    out = ensure_output_dir(out, "the demo's output directory")
    check_record_path(out / "spikes.h5")
    # The summary and the report mark a finished run: gone until this one finishes, so a
    # killed rerun never leaves the previous run's beside a new, incomplete recording.
    finished = ("summary.json", "report.json", "report.html")
    check_replaceable(out, finished)        # a file of the user's is never removed
    for name in finished:
        (out / name).unlink(missing_ok=True)
    times: dict[str, float] = {}
    t_all = t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = round(now - t, 2)
        t = now

    model = load_model(DEFAULT_MODEL)
    text = heldout_text(max_chars)
    lap("load")
    snn = convert(model, preset=PRESET, coding=CODING, k=K)
    lap("convert")
    fid = fidelity(model, snn, text, block_size=BLOCK_SIZE)
    lap("fidelity")
    n_sim = _resolve_sim_tokens(sim_tokens, fid.tokens + 1)
    recording = out / "spikes.h5"
    sim = simulate(snn, text, backend=backend, record=recording, block_size=BLOCK_SIZE,
                   max_tokens=n_sim, return_logits=False, progress=progress,
                   metadata={"model": DEFAULT_MODEL, "text": "heldout.txt",
                             "text_chars": len(text), "text_tokens": fid.tokens + 1,
                             "source": "sbsnn demo"})
    lap("simulate")
    report = build_report(recording, out, profile=profile, fidelity=fid,
                          title=f"sbsnn demo: {DEFAULT_MODEL}, {PRESET} preset, {CODING} coding, "
                                f"k = {K:g}")
    lap("report")
    seconds = time.perf_counter() - t_all

    p = report["sparsity"]["pooled"]
    ea = report["energy"]["estimates"]["a_spikingbrain"]
    summary = {
        "model": DEFAULT_MODEL, "preset": PRESET, "coding": CODING, "k": K,
        "text_chars": len(text), "fidelity_tokens": fid.tokens + 1, "simulated_tokens": sim.tokens,
        "backend": sim.backend,
        "float_perplexity": fid.float_perplexity, "spiking_perplexity": fid.spiking_perplexity,
        "top1_agreement": fid.top1_agreement, "mean_kl": fid.mean_kl,
        "zero_fraction": p["zero_fraction"], "spikes_per_element": p["spikes_per_element"],
        "slot_sparsity_window": p["slot_sparsity_window"],
        "energy_a_pj_per_token": {"spiking": ea["snn"]["pj_per_token"],
                                  "int8_dense": ea["baselines"]["int8_dense"]["pj_per_token"],
                                  "fp16_dense": ea["baselines"]["fp16_dense"]["pj_per_token"]},
        "reduction_vs_int8": ea["comparison"]["int8_dense"]["reduction"],
        "reduction_vs_fp16": ea["comparison"]["fp16_dense"]["reduction"],
        "report": {"html": str(out / "report.html"), "json": str(out / "report.json"),
                   "recording": str(recording)},
        "seconds": round(seconds, 2), "phase_seconds": times,
    }
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    record_outputs(out, ["summary.json"])

    part = ("" if sim.tokens == fid.tokens + 1 else
            f" (event-driven simulation and report: the first {sim.tokens:,} tokens; "
            f"--sim-tokens 0 for all)")
    print_fn(f"sbsnn demo: {DEFAULT_MODEL}, {PRESET} preset, {CODING} coding, k = {K:g}, "
             f"{len(text):,} held-out characters{part}")
    print_fn(format_summary(report, out / "report.html"))
    print_fn(f"  time: {seconds:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
             + f"; {sim.backend} backend, {torch.get_num_threads()} threads)")
    return 0
