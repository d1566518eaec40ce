"""The sections of ``report.json`` built from analysis results, in one place.

:mod:`sbsnn.analysis.report` assembles them into the report and :mod:`sbsnn.analysis.plots`
draws from them; both import this module and neither imports the other back
(``report -> plots -> sections``, ``report -> sections``).

- :func:`sparsity_section`: the sparsity metrics with their definitions and the paper's
  reference figures;
- :func:`energy_section`: the energy estimates, constants and per-layer table;
- :func:`trace_section`: the time-resolved traces of a recording (events per step, steps
  per token), present only when the run traced layers (``simulate(..., trace=...)``);
- :func:`neurobench_section`: NeuroBench's metrics under its names
  (:mod:`sbsnn.analysis.neurobench_metrics`) beside the sbsnn figures they map to.
"""

from __future__ import annotations

from typing import Mapping

import torch

from sbsnn.analysis.energy import ESTIMATES, load_profile, spikingbrain_energy_per_mac
from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_FIG9, SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT

__all__ = ["BASELINE_INFO", "ESTIMATE_INFO", "FIDELITY_DEFINITIONS", "METRIC_DEFINITIONS",
           "TRACE_DEFINITIONS", "energy_section", "neurobench_section", "sparsity_section",
           "trace_section"]

# Mirrors the module docstring of sbsnn.analysis.sparsity.
METRIC_DEFINITIONS = {
    "zero_fraction": "Fraction of input elements (token x input channel) whose spike count "
                     "c is 0: silent elements.",
    "spikes_per_element": "Spikes emitted per input element: sum of s(c) / elements, with "
                          "s(c) = |c| (binary, ternary), popcount(|c|) (bitwise) or the popcount "
                          "of the T-bit two's-complement word. SpikingBrain's "
                          f"'{SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT:g} spikes per channel'.",
    "slot_sparsity_global": "1 - spikes / (elements x T), T the global number of time steps of "
                            "each layer call (upstream's firing rate is 1 - this).",
    "slot_sparsity_per_element": "1 - spikes / sum of T_e, each element with its own T_e (the "
                                 "steps its count needs).",
    "slot_sparsity_window": "Fixed window of W steps per element (W = 3, the paper's): 1 - sum "
                            "min(s(c), W) / (elements x W); spikes beyond the window saturate it.",
    "fits_window": "Fraction of elements whose train fits in W steps (T_e <= W).",
    "silent_channel_fraction": "Input channels whose count is 0 for every token of a call, over "
                               "channels x calls: what lets hardware skip whole weight rows.",
    "abs_count_histogram": "Elements by |c| (index = value; the last bin holds all larger values).",
    "spikes_histogram": "Elements by spikes emitted s(c) (index = value; the last bin holds all "
                        "larger values).",
    "elements": "Input elements counted: tokens x input channels, summed over calls.",
    "tokens": "Rows (tokens) the layer saw, summed over calls.",
    "calls": "Forward calls of the layer (one per block of tokens).",
    "window": "The fixed window W (time steps) of slot_sparsity_window and fits_window.",
}

# The fidelity section's figures (sbsnn.analysis.fidelity computes them).
FIDELITY_DEFINITIONS = {
    "perplexity_ratio": "Spiking / float perplexity on the same next-token predictions: "
                        "exp(spiking nats - float nats) per token; 1 is lossless.",
    "perplexity_ratio_interval": "95 % bootstrap interval of the ratio over the documents: "
                                 "documents drawn with replacement, the ratio of each draw's "
                                 "summed nats, percentiles; null for one document.",
    "top1_agreement": "Predictions where the two models' most likely next tokens agree.",
    "top1_accuracy": "Predictions whose most likely next token is the text's next token "
                     "(float_top1_accuracy, spiking_top1_accuracy).",
    "mean_kl": "Mean KL(float || spiking) of the next-token distributions, nats per prediction.",
    "recovery": "Each score of the spiking model as a fraction of the float model's, 1 = full "
                "recovery, >= 0.95 passing (llm-compressor's convention): float / spiking "
                "perplexity and nats, spiking / float top-1 accuracy, the agreement itself.",
    "prefix_tokens": "Tokens of the constant prefix every document followed: computed once in "
                     "float at conversion, not simulated, not counted.",
}

ESTIMATE_INFO = {
    "a_spikingbrain": {
        "label": "(a) SpikingBrain-compatible (report section 5.5, Eq. 24)",
        "short": "(a) SpikingBrain Eq. 24",
        "description": "Spiking: synaptic operations (spike events x fan-out) x E(INT8 add). "
                       "Baselines: dense MACs x E(FP16 MAC) or E(INT8 MAC, 8-bit accumulator)."},
    "b_arithmetic": {
        "label": "(b) plus the arithmetic Eq. 24 leaves out",
        "short": "(b) + arithmetic",
        "description": "Spiking: synaptic operations x E(INT32 add) (the accumulators are 32 "
                       "bits wide), shifts for bitwise codings, the threshold (mean|x|/k and "
                       "the division) and the rescale. INT8 baselines: INT8 multiply + INT32 "
                       "add per MAC plus the same activation quantization and rescale."},
    "c_memory": {
        "label": "(c) memory-aware (Lemaire et al., ICONIP 2022) with off-chip weights",
        "short": "(c) + memory, DRAM weights",
        "description": "All of (b) plus SRAM accesses (weights, inputs, accumulators, outputs; "
                       "Lemaire's access-energy fit) and weight rows fetched from DRAM/HBM in "
                       "blocks; rows of silent channels are never fetched."},
}
BASELINE_INFO = {
    "fp16_dense": {"label": "FP16 dense",
                   "description": "The float layer: every MAC of tokens x in x out at FP16."},
    "int8_dense": {"label": "INT8 dense (W8A8)",
                   "description": "INT8 weights and activations: every MAC in INT8."},
    "int8_zero_skip": {"label": "INT8 with zero-skipping",
                       "description": "As INT8 dense, but MACs only for input elements whose "
                                      "count is nonzero."},
}
_SCENARIOS = ("snn", "fp16_dense", "int8_dense", "int8_zero_skip")


def _div(a, b):
    return a / b if (a is not None and b) else None


def sparsity_section(report) -> dict:
    """``report.json``'s ``sparsity``: the report's dict plus definitions and the paper's
    reference figures."""
    d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    return {
        "coding": d["coding"], "window": d["window"],
        "definitions": dict(METRIC_DEFINITIONS),
        "pooled": d["pooled"], "per_kind": d["per_kind"], "per_layer": d["per_layer"],
        "reference": {**SPIKINGBRAIN_7B_FIG9,
                      "spikes_histogram": dict(SPIKINGBRAIN_7B_FIG9["spikes_histogram"])},
    }


def _scenario_out(s: Mapping, tokens: int) -> dict:
    per = (lambda v: _div(v, tokens)) if tokens else (lambda v: None)
    return {
        "applicable": bool(s["applicable"]),
        "total_pj": s["total_pj"],
        "pj_per_token": per(s["total_pj"]),
        "components_pj": dict(s["components_pj"]),
        "groups_pj": dict(s["groups_pj"]),
        "groups_pj_per_token": {g: per(v) for g, v in s["groups_pj"].items()},
        "counts": dict(s["counts"]),
        "missing": list(s.get("missing") or []),
        "priced_by": s.get("priced_by"),
        "note": s.get("note"),
    }


def _constants(profile) -> dict:
    d = profile.to_dict()
    return {"profile": d["name"], "description": d["description"], "source": d["source"],
            "all_in": d["all_in"], "values": d["constants"]}


def energy_section(report, tokens: int | None = None, kinds: Mapping[str, str] | None = None,
                   dense_projections: tuple[str, ...] = (), profiles: tuple | None = None) -> dict:
    """``report.json``'s ``energy`` from an :class:`~sbsnn.analysis.energy.EnergyReport`:
    totals per estimate (spiking side and baselines, pJ and pJ per token), the constants
    of both profiles with value, unit, basis and source, the non-spiking operations, and a
    compact per-layer table. ``profiles``: the (spiking, baseline)
    :class:`~sbsnn.analysis.energy.EnergyProfile` objects the report was priced with
    (default: loaded again by the names the report carries)."""
    d = report.to_dict()
    tc = d["totals"]["counts"]
    if tokens is None:
        tokens = max((L["counts"]["tokens"] for L in d["per_layer"]), default=0)
    estimates = {}
    for est in ESTIMATES:
        t = d["totals"]["estimates"][est]
        e = {
            **ESTIMATE_INFO[est],
            "applicable": bool(t["snn"]["applicable"]),
            "snn": _scenario_out(t["snn"], tokens),
            "baselines": {b: _scenario_out(t[b], tokens) for b in _SCENARIOS[1:]},
            "comparison": t["comparison"],
        }
        if "pj_per_mac_equivalent" in t:
            e["pj_per_mac_equivalent"] = t["pj_per_mac_equivalent"]
        if d["totals"].get("with_nonspiking_pj"):
            w = d["totals"]["with_nonspiking_pj"][est]
            e["with_nonspiking"] = {s: {"total_pj": w[s], "pj_per_token": _div(w[s], tokens)}
                                    for s in _SCENARIOS}
        estimates[est] = e
    ns = None
    if d.get("nonspiking") is not None:
        n = d["nonspiking"]
        ns = {"applicable": n["applicable"], "precision": n["precision"], "priced_by": n["priced_by"],
              "total_pj": n["total_pj"], "pj_per_token": _div(n["total_pj"], tokens),
              "macs": n["macs"], "ops": n["ops"], "components": n["components"],
              "unpriced_counts": n["unpriced_counts"], "dense_projections": list(dense_projections)}
    if profiles is None:
        profiles = (load_profile(report.profile), load_profile(report.baseline_profile))
    spiking_prof, base_prof = (load_profile(p) for p in profiles)
    formula = None
    if spiking_prof.kind == "arithmetic":
        formula = spikingbrain_energy_per_mac(tc["spikes_per_element"], spiking_prof)
    per_layer = []
    for L in d["per_layer"]:
        row = {"name": L["name"], "kind": (kinds or {}).get(L["name"], "other"),
               "in_features": L["in_features"], "out_features": L["out_features"],
               "tokens": L["counts"]["tokens"],
               "spikes_per_element": L["counts"]["spikes_per_element"],
               "synaptic_ops": L["counts"]["synaptic_ops"], "dense_macs": L["counts"]["dense_macs"],
               "total_pj": {est: {s: L["estimates"][est][s]["total_pj"] for s in _SCENARIOS}
                            for est in ESTIMATES}}
        per_layer.append(row)
    return {
        "unit": "pJ",
        "profile": d["profile"], "baseline_profile": d["baseline_profile"], "coding": d["coding"],
        "tokens": tokens,
        "params": d["params"],
        "counts": tc,
        "estimates": estimates,
        "baselines": {b: dict(v) for b, v in BASELINE_INFO.items()},
        "nonspiking": ns,
        "spikingbrain_formula": formula,
        "constants": {"spiking": _constants(spiking_prof), "baseline": _constants(base_prof)},
        "per_layer": per_layer,
        "notes": list(d["notes"]),
    }


TRACE_DEFINITIONS = {
    "events_per_step": "Spikes fired at each time step (positive + negative), summed over the "
                       "layer's calls with step 0 of every call aligned.",
    "steps_per_token": "Time steps a token needs: last spike step - first spike step + 1 over "
                       "its input channels (0 for a token with no spike).",
    "first_step": "The first step at which one of a token's input channels fires.",
    "last_step": "The last step at which one of a token's input channels fires; after it the "
                 "token's outputs no longer change.",
    "output_tokens": "Tokens whose outputs were recorded after every step (the trace's "
                     "per-step accumulators, rescaled to output units).",
}


def trace_section(recording) -> dict | None:
    """``report.json``'s ``trace``: per traced layer of a recording, events per step
    (positive, negative, all), the histogram of steps per token and first/last step
    figures; None when the recording holds no trace."""
    names = recording.traced_layers if hasattr(recording, "traced_layers") else []
    if not names:
        return None
    layers = {}
    for name in names:
        tr = recording.trace(name)
        pos, neg = tr.events_per_step()
        spt = tr.steps_per_token()
        first, last = tr.first_step(), tr.last_step()
        active = last >= 0
        hist = torch.bincount(spt, minlength=1) if spt.numel() else torch.zeros(1, dtype=torch.int64)
        layers[name] = {
            "calls": len(tr.calls), "tokens": int(spt.numel()), "steps_max": tr.steps_max,
            "silent_tokens": int((~active).sum()),
            "output_tokens": sum(c.output_tokens for c in tr.calls),
            "events_pos_per_step": pos.tolist(), "events_neg_per_step": neg.tolist(),
            "events_per_step": (pos + neg).tolist(),
            "steps_per_token_histogram": hist.tolist(),
            "steps_per_token_mean": float(spt[active].float().mean()) if bool(active.any()) else 0.0,
            "steps_per_token_max": int(spt.max()) if spt.numel() else 0,
            "first_step_max": int(first.max()) if spt.numel() else -1,
            "last_step_max": int(last.max()) if spt.numel() else -1,
        }
    return {"definitions": dict(TRACE_DEFINITIONS), "layers": layers}


def neurobench_section(nb: Mapping, sparsity: Mapping, energy: Mapping) -> dict:
    """``report.json``'s ``neurobench``: the section of
    :meth:`~sbsnn.analysis.neurobench_metrics.NeuroBenchTally.section` plus ``beside``, each
    NeuroBench total next to the sbsnn figure of the same report it relates to and how."""
    t, c, p = nb["totals"], energy["counts"], sparsity["pooled"]
    beside = [
        {"neurobench": "ActivationSparsity", "value": nb["results"]["ActivationSparsity"],
         "sbsnn": "sparsity.pooled.slot_sparsity_global", "sbsnn_value": p["slot_sparsity_global"],
         "relation": "the same ratio, 1 - spikes / (elements x T), but NeuroBench averages it "
                     "over samples (equal for one sample)"},
        {"neurobench": "Effective_ACs (all samples)", "value": t["Effective_ACs"],
         "sbsnn": "energy.counts.synaptic_ops", "sbsnn_value": c["synaptic_ops"],
         "relation": "sbsnn counts every output an event reaches (events x out_features); "
                     "NeuroBench skips the zero INT8 codes"},
        {"neurobench": "Dense (all samples)", "value": t["Dense"],
         "sbsnn": "energy.counts.dense_macs", "sbsnn_value": c["dense_macs"],
         "relation": "NeuroBench counts every weight at every time step: dense_macs x T "
                     "of each call"},
        {"neurobench": "MembraneUpdates (all samples)", "value": t["MembraneUpdates"],
         "sbsnn": "energy.counts.elements + events", "sbsnn_value": c["elements"] + c["events"],
         "relation": "NeuroBench: every neuron once at its charging step, then one update per "
                     "spike after step 0 (the spikes of step 0 fall on the charging step)"},
        {"neurobench": "spikes (all samples)", "value": t["spikes"],
         "sbsnn": "energy.counts.events", "sbsnn_value": c["events"],
         "relation": "equal: a spike of -1 is one nonzero activation, as one of +1"},
    ]
    return {**nb, "beside": beside}
