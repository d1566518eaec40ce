"""The k sweep: fidelity, sparsity and energy of a model converted at several thresholds.

SpikingBrain tunes one number, ``k`` in ``V_th = mean|x| / k``: a larger k gives finer
counts (better accuracy) and more spikes (less sparsity). Its Table 11 (report Appendix
A.8, 7B model) lists, for k = 2 / 2.5 / 3 / 3.5 / 4, sparsity 0.730 / 0.709 / 0.692 /
0.677 / 0.664 and average benchmark score 0.6735 / 0.6807 / 0.6875 / 0.6898 / 0.6940
(bf16: 0.6998). :func:`sweep` is its analogue for any model and text: per k, float and
spiking perplexity, top-1 agreement, KL, the pooled sparsity metrics and the energy of
the spiking layers against INT8 and FP16, with the paper's figures beside ours where k
matches.

How it runs: for each k the model is converted (:func:`sbsnn.converters.convert`) and
both models read the text once (:func:`sbsnn.analysis.fidelity`); forward hooks on the
spiking layers take each call's integer counts, from which the sparsity metrics
(:class:`~sbsnn.analysis.sparsity.SparsityCollector`) and the layer counters
(:func:`sbsnn.analysis.counters.add_call`, the closed forms the recordings use) follow.
The counts are those of the event-driven simulation (the integer path and the event path
are bit-identical), without paying for the event-by-event accumulation.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

__all__ = ["SWEEP_KS", "format_sweep", "save_sweep", "sweep"]

SWEEP_KS = (2.0, 2.5, 3.0, 3.5, 4.0)
_SPARSITY_KEYS = ("zero_fraction", "spikes_per_element", "slot_sparsity_global",
                  "slot_sparsity_per_element", "slot_sparsity_window", "fits_window",
                  "silent_channel_fraction", "window", "elements")


def _reference(k: float) -> dict | None:
    from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_SWEEP as ref

    for i, rk in enumerate(ref["k"]):
        if math.isclose(rk, k):
            return {"k": rk, "sparsity": ref["sparsity"][i], "avg_score": ref["avg_score"][i],
                    "bf16_avg_score": ref["bf16_avg_score"],
                    "score_ratio": ref["bf16_avg_score"] / ref["avg_score"][i],
                    "source": ref["source"]}
    return None


def _energy_summary(report, tokens: int) -> dict:
    out = {"profile": report.profile, "baseline_profile": report.baseline_profile,
           "estimate": "a_spikingbrain", "by_estimate": {}}
    for est, t in report.totals["estimates"].items():
        cmp_ = t["comparison"]
        row = {}
        for s in ("snn", "int8_dense", "int8_zero_skip", "fp16_dense"):
            tot = t[s]["total_pj"]
            row[f"{s}_pj"] = tot
            row[f"{s}_pj_per_token"] = tot / tokens if (tot is not None and tokens) else None
        for b, short in (("int8_dense", "int8"), ("fp16_dense", "fp16")):
            row[f"reduction_vs_{short}"] = cmp_[b]["reduction"]
            row[f"ratio_vs_{short}"] = cmp_[b]["ratio"]
        out["by_estimate"][est] = row
    out.update(out["by_estimate"]["a_spikingbrain"])
    ns = report.nonspiking
    out["nonspiking_pj_per_token"] = (ns["total_pj"] / tokens
                                      if ns is not None and ns["total_pj"] is not None and tokens else None)
    return out


def check_sweep(model, ks, preset, coding, profile, group_size=128, block_size=256,
                window=3) -> list[float]:
    """Every option of a sweep, checked before the first conversion; the ks as floats."""
    from sbsnn.analysis.energy import load_profile
    from sbsnn.checks import check_int, check_k
    from sbsnn.converters.convert import check_request
    from sbsnn.converters.spiking_linear import SpikingLinear
    from sbsnn.errors import CheckpointKindError, OptionError

    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise OptionError(f"ks must be a list of numbers, got {ks!r}")
    ks = list(ks)
    if not ks:
        raise OptionError("sweep needs at least one k")
    ks = [check_k(k) for k in ks]
    check_request(preset, None, coding, ks[0], group_size)
    check_int(block_size, "block_size", minimum=1)
    check_int(window, "window", minimum=1, hint=" (the paper's window is 3 steps)")
    load_profile(profile)
    if any(isinstance(m, SpikingLinear) for m in model.modules()):
        raise CheckpointKindError("sweep needs the float model (it converts it at each k); this "
                                  "one is already spiking")
    return ks


def sweep(model, text: str, ks: Sequence[float] = SWEEP_KS, preset: str = "paper",
          coding: str = "ternary", profile: str = "horowitz45", *, group_size: int = 128,
          block_size: int = 256, window: int = 3, progress: bool = False,
          on_row: Callable[[dict], None] | None = None,
          spike_budgets: Sequence[float] = (), calibration_texts=None,
          calibration_tokens: int = 32768) -> list[dict]:
    """One row per k: perplexity float and spiking (and their ratio), top-1 agreement, mean
    KL, the pooled sparsity metrics, the energy of the spiking layers (estimate (a), and all
    three under ``by_estimate``) against INT8 and FP16, and SpikingBrain-7B's Table 11
    figures for that k (``reference``, None when the paper has no such k).

    ``model``: a float model with a tokenizer (``sbsnn.load_model``). ``on_row`` is called
    with each row as soon as it is ready (progress printing).

    ``spike_budgets`` (with ``calibration_texts``, a string or a list of documents): after
    the plain rows (``"method": "plain"``), one row per budget for the model calibrated on
    those texts to spend at most that many spikes per element
    (:func:`sbsnn.converters.calibration.calibrate`; ``"method": "calibrated"``,
    ``"spike_budget"``, ``"k"`` the median of its per-layer k, ``"calibration"`` what it
    spent there), measured on ``text`` like the plain rows: fidelity per spike.
    """
    import torch

    from sbsnn.analysis.counters import add_call
    from sbsnn.analysis.energy import estimate_energy
    from sbsnn.analysis.fidelity import fidelity
    from sbsnn.analysis.opcount import nonspiking_ops
    from sbsnn.analysis.sparsity import SparsityCollector
    from sbsnn.converters import SpikingLinear, convert
    from sbsnn.sim.engine import LayerCounters

    ks = check_sweep(model, ks, preset, coding, profile, group_size, block_size, window)
    from sbsnn.errors import OptionError

    budgets = [float(b) for b in spike_budgets]
    bad = [b for b in budgets if not (b > 0 and math.isfinite(b))]
    if bad:
        raise OptionError(f"every spike budget must be a finite number > 0, got {bad}")
    if budgets and calibration_texts is None:
        raise OptionError("spike budgets need calibration texts (calibration_texts=...)")
    cfg = model.config
    rows = []
    from tqdm.auto import tqdm

    def conversions():
        for k in ks:
            yield {"method": "plain"}, convert(model, preset=preset, coding=coding, k=k,
                                               group_size=group_size)
        for b in budgets:
            from sbsnn.converters.calibration import calibrate

            snn = calibrate(model, calibration_texts, b, coding=coding, preset=preset,
                            group_size=group_size, max_tokens=calibration_tokens,
                            progress=progress)
            r = snn.calibration_report
            yield {"method": "calibrated", "spike_budget": b,
                   "calibration": {"spikes_per_element": r["spikes_per_element"],
                                   "calibration_tokens": r["calibration_tokens"],
                                   "seconds": r["seconds"]["total_s"]}}, snn

    for fields, snn in tqdm(conversions(), total=len(ks) + len(budgets), desc="sweep",
                            unit="model", disable=not progress):
        t0 = time.perf_counter()
        k = float(snn.spiking_config.k)
        collector = SparsityCollector(coding, cfg, window)
        counters: dict[str, LayerCounters] = {}
        info: dict[str, dict] = {}
        hooks = []

        def tap(name):
            def hook(mod, inputs, _output):
                counts, v_th = mod.spike(inputs[0].detach())
                collector.write(name, counts, v_th)
                c = counters.get(name)
                if c is None:
                    c = counters[name] = LayerCounters(name, mod.in_features, mod.out_features)
                    info[name] = {"group_size": mod.group_size, "bias": mod.bias is not None}
                add_call(c, counts, coding)
            return hook

        for name, mod in snn.named_modules():
            if isinstance(mod, SpikingLinear):
                hooks.append(mod.register_forward_hook(tap(name)))
        try:
            with torch.no_grad():
                fid = fidelity(model, snn, text, block_size=block_size)
        finally:
            for h in hooks:
                h.remove()
        tokens = max((c.tokens for c in counters.values()), default=0)
        dense = tuple(p for p in ("down_proj",) if preset == "w8aspike")
        layers = [{**c.to_dict(), **info[n]} for n, c in counters.items()]
        en = estimate_energy(layers, coding, profile=profile, group_size=group_size,
                             nonspiking=nonspiking_ops(cfg, tokens, dense_projections=dense))
        pooled = collector.report().pooled
        fd = fid.to_dict()
        row = {
            "k": k, **fields, "preset": preset, "coding": coding, "tokens": tokens, "chars": len(text),
            "float_perplexity": fd["float_perplexity"], "spiking_perplexity": fd["spiking_perplexity"],
            "perplexity_ratio": fd["spiking_perplexity"] / fd["float_perplexity"],
            "top1_agreement": fd["top1_agreement"], "mean_kl": fd["mean_kl"],
            "float_nll": fd["float_nll"], "spiking_nll": fd["spiking_nll"],
            "sparsity": {key: pooled[key] for key in _SPARSITY_KEYS},
            "energy": _energy_summary(en, tokens),
            "reference": _reference(k) if fields["method"] == "plain" else None,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
        del snn
    return rows


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def format_sweep(rows: Iterable[Mapping]) -> str:
    """The sweep as a text table, SpikingBrain-7B's Table 11 in the last two columns."""
    rows = list(rows)
    head = (f"{'k':>12} {'ppl float':>9} {'ppl spike':>9} {'ratio':>6} {'top-1':>6} {'KL':>7} "
            f"{'zeros':>6} {'spk/el':>6} {'win3':>6} {'E(a)/tok':>9} {'vs INT8':>8} {'vs FP16':>8} "
            f"| {'7B spars.':>9} {'7B score':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sp, en, ref = r["sparsity"], r["energy"], r.get("reference") or {}
        e = en.get("snn_pj_per_token")
        e_txt = "n/a" if e is None else (f"{e / 1e3:.1f} nJ" if e >= 1e3 else f"{e:.1f} pJ")
        label = (f"cal {r['spike_budget']:.3g}/el" if r.get("method") == "calibrated"
                 else f"{r['k']:g}")
        lines.append(
            f"{label:>12} {_f(r['float_perplexity'], '{:.3f}'):>9} {_f(r['spiking_perplexity'], '{:.3f}'):>9} "
            f"{_f(r['perplexity_ratio'], '{:.3f}'):>6} {_f(100 * r['top1_agreement'], '{:.1f}%'):>6} "
            f"{_f(r['mean_kl'], '{:.4f}'):>7} {_f(100 * sp['zero_fraction'], '{:.1f}%'):>6} "
            f"{_f(sp['spikes_per_element'], '{:.2f}'):>6} {_f(100 * sp['slot_sparsity_window'], '{:.1f}%'):>6} "
            f"{e_txt:>9} {_f(None if en.get('reduction_vs_int8') is None else -100 * en['reduction_vs_int8'], '{:+.1f}%'):>8} "
            f"{_f(None if en.get('reduction_vs_fp16') is None else -100 * en['reduction_vs_fp16'], '{:+.1f}%'):>8} "
            f"| {_f(ref.get('sparsity'), '{:.3f}'):>9} {_f(ref.get('avg_score'), '{:.4f}'):>8}")
    if any(r.get("method") == "calibrated" for r in rows):
        lines.append("cal B/el: calibrated (sbsnn.calibrate) to spend at most B spikes per element "
                     "on the calibration text; its spk/el is measured on this text.")
    lines.append(f"ratio: spiking / float perplexity; zeros: zero fraction of counts; spk/el: spikes "
                 f"per element; win3: slot sparsity in a 3-step window; E(a): energy of the spiking "
                 f"layers per token, SpikingBrain's Eq. 24; 7B: SpikingBrain-7B, Table 11 (bf16 score 0.6998).")
    return "\n".join(lines)


def save_sweep(rows: Sequence[Mapping], out_dir, metadata: Mapping | None = None) -> dict:
    """Write ``sweep.json`` (rows + SpikingBrain's Table 11 + metadata) and ``sweep.png``
    into ``out_dir`` atomically (``sweep.json`` last); returns the JSON object."""
    from sbsnn import __version__
    from sbsnn.analysis.plots import plot_fidelity_per_spike, plot_sweep
    from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_SWEEP
    from sbsnn.fsutil import jsonable as _jsonable, write_atomically

    doc = _jsonable({"format": "sbsnn-sweep", "format_version": 1, "sbsnn_version": __version__,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "metadata": dict(metadata or {}), "rows": list(rows),
                     "reference": SPIKINGBRAIN_7B_SWEEP, "files": {"plot": "sweep.png"}})

    calibrated = any(r.get("method") == "calibrated" for r in doc["rows"])
    if calibrated:
        doc["files"]["fidelity_per_spike"] = "sweep_spikes.png"

    def write(tmp: Path) -> list[str]:
        plot_sweep([r for r in doc["rows"] if r.get("method") != "calibrated"], tmp / "sweep.png")
        files = ["sweep.png"]
        if calibrated:
            plot_fidelity_per_spike(doc["rows"], tmp / "sweep_spikes.png")
            files.append("sweep_spikes.png")
        (tmp / "sweep.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n",
                                        encoding="utf-8")
        return files + ["sweep.json"]

    write_atomically(out_dir, write, final="sweep.json", remove_first=("sweep.json",))
    return doc
