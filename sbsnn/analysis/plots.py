"""Plots of sparsity, spike trains, energy and k sweeps (PNG files, no display needed).

Every function draws on a :class:`matplotlib.figure.Figure` rendered by the Agg canvas:
pyplot and its global backend are never touched, so the functions work on a headless
machine, in threads and inside a notebook alike. Each takes plain data (the dicts of
``report.json``, :meth:`SparsityReport.to_dict`, sweep rows, a counts tensor), writes
one PNG atomically (temporary name, then rename) and returns its path.

========================  ==============================================================
function                  draws
========================  ==============================================================
plot_sparsity_per_layer   one bar per spiking layer (zero fraction by default), coloured
                          by layer kind, with the pooled value and SpikingBrain-7B's
                          sparsity
plot_count_histograms     the histogram of abs(count) and the spikes per element (0, 1, 2,
                          >= 3) beside SpikingBrain-7B's Fig. 9 bars
plot_spike_raster         a few channels of a few tokens expanded to spike trains
                          (:func:`sbsnn.neurons.expand`): +1 and -1 spikes in two colours
plot_energy               pJ per token of the spiking layers and of each baseline, per
                          estimate, stacked by component
plot_sweep                perplexity ratio and sparsity against k, with SpikingBrain-7B's
                          Table 11 points
plot_frontier             per coding, perplexity ratio and KL against spikes per element
                          for each method, the targets and where each method reaches
                          them, with SpikingBrain-7B's published point
plot_events_per_step      spikes fired at each time step of the traced layers (positive
                          and negative), log scale
plot_steps_per_token      how many time steps the tokens of each traced layer needed
========================  ==============================================================

The plots take ``report.json``'s sections (:mod:`sbsnn.analysis.sections`) and never import
:mod:`sbsnn.analysis.report`, which imports them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from sbsnn.analysis.sections import energy_section
from sbsnn.analysis.spikingbrain import (SPIKINGBRAIN_7B_ABS_COUNT_LE_7, SPIKINGBRAIN_7B_POINT,
                                        SPIKINGBRAIN_7B_SPARSITY, SPIKINGBRAIN_7B_SPIKES,
                                        SPIKINGBRAIN_7B_SWEEP)
from sbsnn.fsutil import atomic_file
from sbsnn.neurons import expand, spike_stats

__all__ = ["KIND_COLORS", "SPIKINGBRAIN_7B_POINT", "SPIKINGBRAIN_7B_SWEEP",
           "plot_count_histograms", "plot_energy", "plot_events_per_step",
           "plot_fidelity_per_spike", "plot_frontier", "plot_sparsity_per_layer",
           "plot_spike_raster", "plot_steps_per_token", "plot_sweep"]

KIND_COLORS = {"GLA": "#1f77b4", "SWA": "#ff7f0e", "full attention": "#d62728",
               "attention": "#8c564b", "MLP": "#2ca02c", "MoE": "#9467bd", "other": "#7f7f7f",
               "GDN": "#17becf", "Mamba-2": "#bcbd22", "short conv": "#e377c2"}
POS_COLOR, NEG_COLOR = "#d62728", "#1f77b4"
ESTIMATE_LABELS = {"a_spikingbrain": "(a) SpikingBrain Eq. 24", "b_arithmetic": "(b) + arithmetic",
                   "c_memory": "(c) + memory (DRAM)"}
SCENARIO_LABELS = {"snn": "spiking", "int8_dense": "INT8\ndense", "int8_zero_skip": "INT8\nzero-skip",
                   "fp16_dense": "FP16\ndense"}
GROUP_LABELS = {"compute": "compute (adds / MACs, shifts)",
                "threshold_rescale": "threshold + rescale",
                "weight_traffic": "weight reads + fetches",
                "accumulator_traffic": "accumulator reads/writes",
                "io_traffic": "input reads + output writes"}
GROUP_COLORS = {"compute": "#4c72b0", "threshold_rescale": "#dd8452", "weight_traffic": "#55a868",
                "accumulator_traffic": "#c44e52", "io_traffic": "#8172b3"}


# ============================================================================ helpers
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path) -> Path:
    """Write the PNG under a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _short(name: str) -> str:
    """``model.layers.3.mlp.gate_proj`` -> ``3.mlp.gate``: short tick labels."""
    s = name.replace("model.layers.", "").replace("_proj", "")
    return s.replace("linear_attn.", "gla.")


def _unit(x: float) -> tuple[str, float]:
    """The unit (pJ, nJ, uJ, mJ) that shows ``x`` pJ with 1-3 digits, and its factor."""
    for unit, f in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(x) >= f:
            return unit, f
    return "pJ", 1.0


def _pj(x: float) -> str:
    for unit, f in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.3g} {unit}"
    return f"{x:.3g} pJ"


# ============================================================================ sparsity
METRIC_LABELS = {
    "zero_fraction": "zero fraction of counts (silent elements)",
    "slot_sparsity_window": "slot sparsity, 3-step window",
    "slot_sparsity_global": "slot sparsity, global T",
    "slot_sparsity_per_element": "slot sparsity, per-element T",
    "silent_channel_fraction": "silent input channels per call",
    "fits_window": "fraction of elements whose train fits the window",
}


def plot_sparsity_per_layer(sparsity: Mapping, path, metric: str = "zero_fraction",
                            title: str | None = None) -> Path:
    """Bars of ``metric`` per spiking layer, coloured by layer kind (GLA, SWA, MLP...).

    ``sparsity``: ``SparsityReport.to_dict()`` or ``report.json``'s ``sparsity`` section.
    A dashed line marks the pooled value, a dotted one SpikingBrain-7B's sparsity (report
    Fig. 9, pooled over the 7B model, bitwise coding, "within a 3-step window").
    """
    per_layer = sparsity["per_layer"]
    names = list(per_layer)
    vals = [100 * per_layer[n][metric] for n in names]
    kinds = [per_layer[n].get("kind", "other") for n in names]
    fig = _figure(max(7.0, 0.32 * len(names) + 2.5), 4.6)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, vals, color=[KIND_COLORS.get(k, KIND_COLORS["other"]) for k in kinds], width=0.8)
    handles = []
    from matplotlib.patches import Patch

    for k in dict.fromkeys(kinds):
        handles.append(Patch(color=KIND_COLORS.get(k, KIND_COLORS["other"]), label=f"{k} layers"))
    pooled = 100 * sparsity["pooled"][metric]
    handles.append(ax.axhline(pooled, color="black", ls="--", lw=1.2,
                              label=f"pooled, this run: {pooled:.1f} %"))
    if metric in ("zero_fraction", "slot_sparsity_window"):
        handles.append(ax.axhline(100 * SPIKINGBRAIN_7B_SPARSITY, color="#555555", ls=":", lw=1.5,
                                  label=f"SpikingBrain-7B: {100 * SPIKINGBRAIN_7B_SPARSITY:.2f} % "
                                        "(Fig. 9, bitwise)"))
    ax.set_xticks(x, [_short(n) for n in names], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
    ax.set_xlabel("spiking layer (its input is spiked)")
    coding = sparsity.get("coding", "")
    ax.set_title(title or f"Sparsity per layer ({coding} coding): {METRIC_LABELS.get(metric, metric)}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_count_histograms(sparsity: Mapping, path, reference: Mapping[str, float] | None = None,
                          title: str | None = None) -> Path:
    """Left: elements by abs(count) (log scale). Right: elements by spikes emitted, 0 / 1 /
    2 / >= 3, beside SpikingBrain-7B's Fig. 9 bars (``reference``, by default
    :data:`~sbsnn.analysis.spikingbrain.SPIKINGBRAIN_7B_SPIKES`)."""
    if reference is None:
        reference = SPIKINGBRAIN_7B_SPIKES
    pooled = sparsity["pooled"]
    coding = sparsity.get("coding", "")
    abs_h = np.asarray(pooled["abs_count_histogram"], dtype=float)
    sp_h = np.asarray(pooled["spikes_histogram"], dtype=float)
    total = max(1.0, abs_h.sum())
    fig = _figure(11.0, 4.2)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.6, 1])

    last = int(np.nonzero(abs_h)[0].max()) if abs_h.any() else 0
    shown = abs_h[: last + 1] / total * 100
    ax1.bar(np.arange(len(shown)), shown, color="#4c72b0", width=0.85)
    ticks = list(range(0, len(shown), max(1, len(shown) // 12)))
    labels = [str(t) for t in ticks]
    if last == len(abs_h) - 1:                        # the last bin holds all larger values
        while ticks and ticks[-1] > last - 3:
            ticks.pop()
            labels.pop()
        ticks.append(last)
        labels.append(f">={last}")
    ax1.set_xticks(ticks, labels)
    ax1.set_yscale("log")
    ax1.set_xlabel("abs(spike count) of an input element")
    ax1.set_ylabel("% of input elements (log scale)")
    ax1.set_title(f"abs(count) histogram, pooled over all layers ({int(total):,} elements)")
    le7 = abs_h[:8].sum() / total * 100
    ax1.text(0.98, 0.95, f"abs(count) <= 7: {le7:.1f} %\n(SpikingBrain-7B: "
             f"{100 * SPIKINGBRAIN_7B_ABS_COUNT_LE_7:.1f} %)",
             transform=ax1.transAxes, ha="right", va="top", fontsize=9,
             bbox=dict(boxstyle="round", fc="white", ec="#bbbbbb"))
    ax1.grid(axis="y", alpha=0.3)

    sp_total = max(1.0, sp_h.sum())
    ours = [sp_h[0], sp_h[1], sp_h[2], sp_h[3:].sum()]
    ours = [100 * v / sp_total for v in ours]
    ref = [100 * reference[k] for k in ("0", "1", "2", ">=3")]
    x = np.arange(4)
    w = 0.38
    b1 = ax2.bar(x - w / 2, ours, w, color="#4c72b0", label=f"this run ({coding} coding)")
    b2 = ax2.bar(x + w / 2, ref, w, color="#c0c0c0", edgecolor="#555555",
                 label="SpikingBrain-7B (bitwise coding, Fig. 9)")
    for bars in (b1, b2):
        for b in bars:
            ax2.annotate(f"{b.get_height():.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                         ha="center", va="bottom", fontsize=8, xytext=(0, 1),
                         textcoords="offset points")
    ax2.set_xticks(x, ["0", "1", "2", ">= 3"])
    ax2.set_xlabel("spikes emitted by an input element")
    ax2.set_ylabel("% of input elements")
    ax2.set_ylim(0, 105)
    ax2.set_title("spikes per element")
    ax2.legend(fontsize=8, loc="upper right", frameon=False)
    ax2.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ============================================================================ raster
def plot_spike_raster(counts, coding: str, path, layer: str | None = None,
                      channels: Sequence[int] | None = None, max_channels: int = 8,
                      token_offset: int = 0, title: str | None = None) -> Path:
    """Spike trains of a few channels over a few tokens: ``counts [tokens, channels]``
    (integers, one layer's input) are expanded with :func:`sbsnn.neurons.expand` (one T
    for the shown block, the smallest the coding allows); each token takes T time steps,
    laid side by side; +1 spikes and -1 spikes in two colours.

    ``channels``: which input channels to show; by default the ``max_channels`` channels
    with the most spikes in these tokens (named on the y axis).
    """
    c = torch.as_tensor(counts)
    if c.dim() != 2 or c.numel() == 0:
        raise ValueError(f"plot_spike_raster: counts must be a non-empty [tokens, channels] tensor, "
                         f"got shape {tuple(c.shape)}")
    if channels is None:
        per_ch = spike_stats(c, coding).spikes.to(torch.int64).sum(0)
        order = torch.argsort(per_ch, descending=True, stable=True)
        channels = sorted(order[:max_channels].tolist())
        chosen = f"the {len(channels)} most active of {c.shape[1]} channels"
    else:
        channels = list(channels)
        chosen = f"{len(channels)} of {c.shape[1]} channels"
    sub = c[:, channels]
    trains = expand(sub, coding).to(torch.int8)          # [T, tokens, channels]
    T, n_tok, n_ch = trains.shape
    fig = _figure(max(7.0, min(16.0, 0.09 * T * n_tok + 2.5)), 0.45 * n_ch + 1.9)
    ax = fig.add_subplot()
    if T:
        t_idx, tok_idx, ch_idx = torch.nonzero(trains, as_tuple=True)
        vals = trains[t_idx, tok_idx, ch_idx]
        xs = (tok_idx * T + t_idx).numpy()
        ys = ch_idx.numpy()
        for sign, color, label in ((1, POS_COLOR, "+1 spike"), (-1, NEG_COLOR, "-1 spike")):
            m = (vals == sign).numpy()
            ax.scatter(xs[m], ys[m], marker="|", s=140, linewidths=2.0, color=color,
                       label=f"{label} ({int(m.sum())})")
        for j in range(1, n_tok):
            ax.axvline(j * T - 0.5, color="#999999", lw=0.8, ls="--")
    ax.set_xlim(-0.5, max(1, n_tok * T) - 0.5)
    ax.set_ylim(-0.6, n_ch - 0.4)
    ax.set_yticks(range(n_ch), [f"ch {ch}" for ch in channels])
    ax.invert_yaxis()
    if T:
        ax.set_xticks([j * T + (T - 1) / 2 for j in range(n_tok)],
                      [f"token {token_offset + j}" for j in range(n_tok)])
    weights = ("; step t weighs 2^(T-1-t), most significant first"
               if coding in ("bitwise", "twos_complement") else "; every spike weighs 1")
    ax.set_xlabel(f"time: {T} steps per token (dashed lines separate tokens){weights}")
    ax.set_ylabel("input channel")
    ax.set_title(title or f"Spike raster, {coding} coding: {chosen}"
                          + (f"\ninput of {layer}" if layer else ""), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


# ============================================================================ energy
def plot_energy(energy: Mapping, path, title: str | None = None) -> Path:
    """pJ per token of the spiking layers (spiking, INT8 dense, INT8 zero-skip, FP16
    dense) for each estimate, stacked by component; one panel per estimate, each with its
    own linear scale (totals printed on the bars).

    ``energy``: ``report.json``'s ``energy`` section, or an :class:`EnergyReport` (then
    converted with :func:`sbsnn.analysis.report.energy_section`).
    """
    if not isinstance(energy, Mapping):
        energy = energy_section(energy)
    ests = [e for e in ("a_spikingbrain", "b_arithmetic", "c_memory") if e in energy["estimates"]]
    scen_order = ("snn", "int8_zero_skip", "int8_dense", "fp16_dense")
    fig = _figure(4.1 * len(ests) + 2.4, 4.8)
    axes = fig.subplots(1, len(ests), squeeze=False)[0]
    used_groups: dict[str, str] = {}
    for ax, est in zip(axes, ests):
        e = energy["estimates"][est]
        scen = {"snn": e["snn"], **e["baselines"]}
        x = np.arange(len(scen_order))
        stacks = []
        for g in GROUP_LABELS:
            vals = []
            for s in scen_order:
                sc = scen[s]
                v = (sc.get("groups_pj_per_token") or {}).get(g) if sc["applicable"] else None
                vals.append(v or 0.0)
            stacks.append((g, np.asarray(vals)))
        top = sum(v for _, v in stacks)
        unit, f = _unit(float(top.max()) if len(top) else 0.0)
        bottoms = np.zeros(len(scen_order))
        for g, vals in stacks:
            if vals.any():
                ax.bar(x, vals / f, bottom=bottoms, color=GROUP_COLORS[g], width=0.7)
                used_groups[g] = GROUP_LABELS[g]
            bottoms += vals / f
        for i, s in enumerate(scen_order):
            sc = scen[s]
            txt = _pj(sc["pj_per_token"]) if sc["applicable"] and sc["pj_per_token"] is not None else "n/a"
            ax.annotate(txt, (i, bottoms[i]), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [SCENARIO_LABELS[s] for s in scen_order], fontsize=8)
        ax.set_ylim(0, max(bottoms.max(), 1e-12) * 1.32)
        ax.set_ylabel(f"energy per token ({unit})")
        ax.set_title(ESTIMATE_LABELS.get(est, est), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        cmp_ = e.get("comparison", {})
        lines = []
        for b, short in (("int8_dense", "INT8 dense"), ("fp16_dense", "FP16 dense")):
            r = (cmp_.get(b) or {}).get("reduction")
            if r is not None:
                lines.append(f"spiking = {1 - r:.3g} x {short} ({-100 * r:+.1f} %)"
                             if abs(r) < 10 else f"spiking = {1 - r:.3g} x {short}")
        if lines:
            ax.text(0.03, 0.97, "\n".join(lines), transform=ax.transAxes,
                    ha="left", va="top", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="#bbbbbb"))
    from matplotlib.patches import Patch

    axes[-1].legend(handles=[Patch(color=GROUP_COLORS[g], label=lbl) for g, lbl in used_groups.items()],
                    loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                    title="component")
    ns = energy.get("nonspiking") or {}
    sub = (f"not shown: operations that never spike (attention, norms, lm_head; "
           f"{ns.get('precision', 'fp16').upper()}) add {_pj(ns['pj_per_token'])} per token to every bar"
           if ns.get("pj_per_token") is not None else "")
    fig.suptitle(title or f"Energy per token of the spiking layers ({energy.get('coding', '')} coding; "
                          f"spiking side priced by {energy.get('profile')}, baselines by "
                          f"{energy.get('baseline_profile')})\n{sub}", fontsize=9)
    return _save(fig, path)


# ============================================================================ sweep
def plot_sweep(rows: Sequence[Mapping], path, reference: Mapping | None = None,
               title: str | None = None) -> Path:
    """Two panels against k: (left) quality loss as a ratio, 1 = lossless: this run's
    spiking / float perplexity beside SpikingBrain-7B's bf16 / spiking average benchmark
    score; (right) sparsity: this run's zero fraction and 3-step-window slot sparsity
    beside the 7B's Table 11 sparsity."""
    ref = dict(SPIKINGBRAIN_7B_SWEEP if reference is None else reference)
    ks = [r["k"] for r in rows]
    fig = _figure(11.0, 4.3)
    ax1, ax2 = fig.subplots(1, 2)
    ratio = [r["perplexity_ratio"] for r in rows]
    ax1.plot(ks, ratio, "o-", color="#4c72b0", label="this run: perplexity spiking / float")
    ref_ratio = [ref["bf16_avg_score"] / s for s in ref["avg_score"]]
    ax1.plot(ref["k"], ref_ratio, "s--", color="#777777", mfc="white",
             label="SpikingBrain-7B: avg score bf16 / spiking (Table 11)")
    ax1.axhline(1.0, color="black", lw=0.8)
    ax1.set_xlabel("k (threshold V_th = mean|x| / k)")
    ax1.set_ylabel("degradation ratio (1 = lossless, higher = worse)")
    ax1.set_title("Fidelity against k")
    ax1.legend(fontsize=8, frameon=False)
    ax1.grid(alpha=0.3)

    zf = [100 * r["sparsity"]["zero_fraction"] for r in rows]
    sw = [100 * r["sparsity"]["slot_sparsity_window"] for r in rows]
    coding = rows[0].get("coding", "") if rows else ""
    ax2.plot(ks, zf, "o-", color="#4c72b0", label=f"this run: zero fraction ({coding})")
    ax2.plot(ks, sw, "^-", color="#55a868", label=f"this run: 3-step-window slot sparsity")
    ax2.plot(ref["k"], [100 * s for s in ref["sparsity"]], "s--", color="#777777", mfc="white",
             label="SpikingBrain-7B: sparsity (Table 11)")
    ax2.set_xlabel("k (threshold V_th = mean|x| / k)")
    ax2.set_ylabel("sparsity (%)")
    ax2.set_ylim(0, 100)
    ax2.set_title("Sparsity against k")
    ax2.legend(fontsize=8, frameon=False, loc="lower left")
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        lo, hi = min(ks + ref["k"]), max(ks + ref["k"])
        pad = 0.1 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(lo - pad, hi + pad)
    fig.suptitle(title or "k sweep: this model beside SpikingBrain-7B (report Appendix A.8, Table 11)",
                 fontsize=10)
    if not all(math.isfinite(v) for v in ratio):
        ax1.text(0.5, 0.5, "some perplexities are not finite", transform=ax1.transAxes, ha="center")
    return _save(fig, path)


def plot_fidelity_per_spike(rows: Sequence[Mapping], path, title: str | None = None) -> Path:
    """Fidelity against spikes per element, plain conversion at each k beside calibration
    at each budget (rows of :func:`sbsnn.runs.sweep.sweep` with ``method``): (left)
    top-1 agreement with the float model, (right) perplexity ratio, with SpikingBrain-7B's
    published point (:data:`~sbsnn.analysis.spikingbrain.SPIKINGBRAIN_7B_POINT`: bitwise
    k = 3, spikes per element, bf16 / spiking benchmark score) on the ratio panel."""
    fig = _figure(11.0, 4.3)
    ax1, ax2 = fig.subplots(1, 2)
    styles = {"plain": ("o-", "#4c72b0", "plain conversion (labels: k)"),
              "calibrated": ("D-", "#c44e52", "calibrated (sbsnn.calibrate) at each budget")}
    for method, (style, color, label) in styles.items():
        rs = sorted((r for r in rows if r.get("method", "plain") == method),
                    key=lambda r: r["sparsity"]["spikes_per_element"])
        if not rs:
            continue
        x = [r["sparsity"]["spikes_per_element"] for r in rs]
        ax1.plot(x, [100 * r["top1_agreement"] for r in rs], style, color=color, label=label)
        ax2.plot(x, [r["perplexity_ratio"] for r in rs], style, color=color, label=label)
        if method == "plain":
            for xi, r in zip(x, rs):
                ax1.annotate(f"k={r['k']:g}", (xi, 100 * r["top1_agreement"]), fontsize=7,
                             textcoords="offset points", xytext=(4, -10), color=color)
    p = SPIKINGBRAIN_7B_POINT
    ax2.plot([p["spikes_per_element"]], [p["score_ratio"]], "*", ms=12, color="#777777",
             label=f"SpikingBrain-7B, {p['coding']} k = {p['k']:g}: bf16 / spiking avg score")
    ax2.axhline(1.0, color="black", lw=0.8)
    coding = rows[0].get("coding", "") if rows else ""
    for ax, ylabel, ttl in ((ax1, "top-1 agreement with the float model (%)", "Agreement per spike"),
                            (ax2, "perplexity spiking / float (1 = lossless)", "Degradation per spike")):
        ax.set_xlabel(f"spikes per element ({coding} coding)")
        ax.set_ylabel(ylabel)
        ax.set_title(ttl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title or "Fidelity against spikes: plain conversion and calibration", fontsize=10)
    return _save(fig, path)


_FRONTIER_STYLES = {"plain": ("o-", "#4c72b0"), "calibrated": ("D-", "#c44e52"),
                    "calibrated+prefix": ("s-", "#55a868"), "fine-tuned": ("^-", "#8172b2")}


def plot_frontier(result: Mapping, path, title: str | None = None) -> Path:
    """The frontier (:func:`sbsnn.runs.frontier.frontier`'s result): one column per coding;
    top, perplexity ratio (log scale) and bottom, mean KL against spikes per element, one
    line per method through its measured points, the targets as dashed lines and, on each,
    a tick where each method reaches it (read off as the result says: linear between
    points, in log ratio or KL). SpikingBrain-7B's published point (bitwise: spikes per
    element, bf16 / spiking benchmark score) is the star on the bitwise ratio panel. The
    methods' points and the result's reading of them: ``result["points"]``,
    ``result["needed"]``."""
    codings = list(result["codings"])
    fig = _figure(5.2 * len(codings) + 0.6, 7.6)
    # top, perplexity ratio (linear: the targets sit a few per cent above 1); bottom, KL
    axes = np.atleast_2d(fig.subplots(2, len(codings), squeeze=False))
    targets = result["targets"]
    needed = {(r["coding"], r["method"]): r for r in result["needed"]}
    for j, coding in enumerate(codings):
        for i, metric in enumerate(("perplexity_ratio", "mean_kl")):
            ax = axes[i, j]
            for method in result["methods"]:
                pts = sorted((p for p in result["points"]
                              if p["coding"] == coding and p["method"] == method),
                             key=lambda p: p["spikes_per_element"])
                if not pts:
                    continue
                style, color = _FRONTIER_STYLES.get(method, ("x-", "#777777"))
                ax.plot([p["spikes_per_element"] for p in pts], [p[metric] for p in pts],
                        style, color=color, ms=4, lw=1.3, label=method)
                for t in targets:
                    n = needed[(coding, method)]["targets"][t["name"]]
                    if t["metric"] == metric and n["how"] in ("interpolated", "measured"):
                        ax.plot([n["spikes_per_element"]], [t["target"]], "|", ms=14, mew=2,
                                color=color)
            for t in targets:
                if t["metric"] == metric:
                    ax.axhline(t["target"], color="#999999", lw=0.8, ls="--")
                    ax.annotate(t["name"], (1.0, t["target"]), xycoords=("axes fraction", "data"),
                                fontsize=7, color="#666666", ha="right", va="bottom")
            if metric == "perplexity_ratio":
                ax.set_ylabel("perplexity spiking / float")
                ref = result.get("reference") or SPIKINGBRAIN_7B_POINT
                if coding == ref["coding"]:
                    ax.plot([ref["spikes_per_element"]], [ref["score_ratio"]], "*", ms=12,
                            color="#777777", label=f"SpikingBrain-7B k = {ref['k']:g} "
                            "(benchmark-score ratio)")
            else:
                ax.set_ylabel("mean KL(float || spiking), nats")
                if all(p["mean_kl"] > 0 for p in result["points"] if p["coding"] == coding):
                    ax.set_yscale("log")
            ax.set_xlabel(f"spikes per element ({coding} coding, held-out text)")
            ax.set_title(f"{coding}: {'perplexity ratio' if i == 0 else 'KL'} against spikes",
                         fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "The frontier: spikes per element each method needs (ticks: where a "
                 "method reaches a target)", fontsize=10)
    return _save(fig, path)


# ============================================================================ traces
_TRACE_LINES = 8   # traced layers drawn per plot (the busiest ones)


def _traced(trace: Mapping, key) -> list[tuple[str, Mapping]]:
    layers = list(trace["layers"].items())
    layers.sort(key=lambda kv: -sum(kv[1]["events_per_step"]))
    return layers[:_TRACE_LINES]


def plot_events_per_step(trace: Mapping, path, title: str | None = None) -> Path:
    """Spikes fired at each time step, per traced layer (the busiest 8): solid positive,
    dashed negative, log scale. ``trace``: ``report.json``'s ``trace`` section."""
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    layers = _traced(trace, "events_per_step")
    cmap = __import__("matplotlib").colormaps["tab10"]
    drawn = False
    for i, (name, d) in enumerate(layers):
        color = cmap(i % 10)
        for key, style, label in (("events_pos_per_step", "-", _short(name)),
                                  ("events_neg_per_step", "--", None)):
            y = np.asarray(d[key], dtype=float)
            if y.size and y.any():
                x = np.arange(y.size)
                ax.step(x, np.where(y > 0, y, np.nan), where="mid", ls=style, color=color, lw=1.2,
                        label=label)
                drawn = True
    if drawn:
        ax.set_yscale("log")
    ax.set_xlabel("time step")
    ax.set_ylabel("spikes fired at the step")
    n = len(trace["layers"])
    shown = f" (the {len(layers)} busiest of {n})" if n > len(layers) else ""
    ax.set_title(title or f"Events per time step, traced layers{shown}: solid +1, dashed -1",
                 fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_steps_per_token(trace: Mapping, path, title: str | None = None) -> Path:
    """How many time steps the tokens needed (last - first spike step + 1), per traced
    layer (the busiest 8): the fraction of tokens done within each number of steps (a
    cumulative distribution; log-scaled steps axis for long traces)."""
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    layers = _traced(trace, "steps_per_token_histogram")
    cmap = __import__("matplotlib").colormaps["tab10"]
    top = 1
    for i, (name, d) in enumerate(layers):
        h = np.asarray(d["steps_per_token_histogram"], dtype=float)
        if not h.size or not h.sum():
            continue
        top = max(top, h.size - 1)
        cdf = np.cumsum(h) / h.sum()
        ax.step(np.arange(h.size), cdf, where="post", lw=1.3, color=cmap(i % 10),
                label=f"{_short(name)} (mean {d['steps_per_token_mean']:.1f}, max {d['steps_per_token_max']})")
    if top > 20:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time steps a token needs (last - first spike step + 1)")
    ax.set_ylabel("fraction of tokens done")
    ax.set_title(title or "Steps per token, traced layers (cumulative)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)
