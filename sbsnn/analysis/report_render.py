"""A report dict for people: the self-contained ``report.html`` page and the short terminal
summary.

:func:`render_html` and :func:`format_summary` read only the dict that
:func:`sbsnn.analysis.report.build_report` returns (or ``report.json``); the page shows
the plots by the relative names in ``report['files']['plots']``, with inline CSS, no
script and no URL.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any, Mapping

from sbsnn.analysis.energy import format_pj
from sbsnn.analysis.sections import BASELINE_INFO
from sbsnn.analysis.spikingbrain import (SPIKINGBRAIN_7B_EQ24 as EQ24, SPIKINGBRAIN_7B_SILENT_CHANNELS,
                                        SPIKINGBRAIN_7B_SPARSITY, SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT)

__all__ = ["PLOT_CAPTIONS", "format_summary", "render_html"]

PLOT_CAPTIONS = {
    "sparsity_per_layer": "Zero fraction of the spike counts at the input of each spiking layer, "
                          "coloured by layer kind; dashed: pooled over all layers; dotted: "
                          f"SpikingBrain-7B's {100 * SPIKINGBRAIN_7B_SPARSITY:.2f} % (bitwise "
                          "coding, report Fig. 9).",
    "count_histograms": "Left: how often each abs(count) occurs, pooled over all layers. Right: "
                        "spikes emitted per input element (0, 1, 2, >= 3) beside SpikingBrain-7B's "
                        "Fig. 9 bars (bitwise coding).",
    "spike_raster": "A few tokens of one layer's input expanded to spike trains: each token takes "
                    "T time steps; +1 spikes and -1 spikes in two colours.",
    "energy": "Energy of the spiking layers per token, for the spiking model and the dense "
              "baselines, under each estimate, stacked by component.",
    "events_per_step": "Spikes fired at each time step by the inputs of the traced layers "
                       "(the run's trace), solid +1 and dashed -1 spikes, summed over calls.",
    "steps_per_token": "Fraction of the tokens of each traced layer done within a number of "
                       "time steps (from a token's first to its last input spike).",
}


# ============================================================================ text
def _pct(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def _red(cmp_: Mapping, b: str) -> str:
    r = (cmp_.get(b) or {}).get("reduction")
    return "n/a" if r is None else f"{-100 * r:+.1f} %"


_RECOVERY_NAMES = {"perplexity": "perplexity", "nats": "nats per token and per char",
                   "top1_accuracy": "top-1 accuracy", "top1_agreement": "top-1 agreement"}


def _recovery_text(rec: Mapping) -> str:
    """Recovery of every score (sbsnn.analysis.fidelity.recovery), >= 0.95 passing."""
    parts = [f"{_RECOVERY_NAMES[k]} {rec[k]:.3f}{'' if rec[k] >= 0.95 else ' (below 0.95)'}"
             for k in _RECOVERY_NAMES if rec.get(k) is not None]
    return "   ".join(parts) + "   (spiking score as a fraction of float's; >= 0.95 passes)"


def format_summary(report: Mapping, where: str | os.PathLike | None = None) -> str:
    """A short terminal table: fidelity, sparsity, energy per token against INT8 and FP16."""
    m, sp, en = report["metadata"], report["sparsity"], report["energy"]
    p = sp["pooled"]
    k = m.get("k")
    lines = [f"{m.get('tokens', 0):,} tokens, {m.get('spiking_layers', len(sp['per_layer']))} spiking "
             f"layers, {m.get('coding')} coding, k = {k if k is None else f'{k:g}'}, preset "
             f"{m.get('preset')}" + ("" if m.get("recording_complete", True) else "  [INCOMPLETE]")]
    rows: list[tuple[str, str]] = []
    f = report.get("fidelity")
    if f:
        on = f"   on {f['tokens']:,} predicted tokens" if f.get("tokens") else ""
        rows.append(("perplexity", f"float {f['float_perplexity']:.3f}   spiking "
                                   f"{f['spiking_perplexity']:.3f}   (x{f['perplexity_ratio']:.3f}){on}"))
        ci = f.get("perplexity_ratio_interval")
        if ci:
            rows.append(("", f"(x{ci[0]:.3f} to x{ci[1]:.3f}: 95 % bootstrap interval over "
                             f"{f.get('documents', '?')} documents)"))
        rows.append(("agreement", f"top-1 {_pct(f['top1_agreement'])}   mean KL {f['mean_kl']:.4f} nats"))
        rows.append(("recovery", _recovery_text(f.get("recovery") or {})))
    rows.append(("sparsity", f"zero counts {_pct(p['zero_fraction'])}   "
                             f"{p['spikes_per_element']:.2f} spikes/element   "
                             f"{p['window']}-step window {_pct(p['slot_sparsity_window'])}"))
    rows.append(("", f"(SpikingBrain-7B, bitwise coding: {_pct(SPIKINGBRAIN_7B_SPARSITY, 2)} in a "
                     f"3-step window, {SPIKINGBRAIN_7B_SPIKES_PER_ELEMENT:g} spikes/element)"))
    pre = m.get("prefix")
    if isinstance(pre, dict):
        rows.append(("prefix", f"{pre.get('tokens')} token(s) computed once in float, not "
                               "simulated (the figures cover the documents' own tokens)"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b}" for a, b in rows]
    lines.append(f"  energy of the spiking layers per token ({en['profile']}; baselines "
                 f"{en['baseline_profile']}):")
    head = f"    {'estimate':<28}{'spiking':>11}{'INT8':>11}{'FP16':>11}{'vs INT8':>10}{'vs FP16':>10}"
    lines.append(head)
    for est, e in en["estimates"].items():
        b = e["baselines"]
        lines.append(f"    {e.get('short', est):<28}{format_pj(e['snn']['pj_per_token']):>11}"
                     f"{format_pj(b['int8_dense']['pj_per_token']):>11}{format_pj(b['fp16_dense']['pj_per_token']):>11}"
                     f"{_red(e['comparison'], 'int8_dense'):>10}{_red(e['comparison'], 'fp16_dense'):>10}")
    ns = en.get("nonspiking")
    if ns and ns.get("pj_per_token") is not None:
        lines.append(f"    + operations that never spike ({ns['precision'].upper()}: attention, "
                     f"norms, lm_head): {format_pj(ns['pj_per_token'])} per token in every column")
    nb = report.get("neurobench")
    if nb:
        r = nb["results"]
        lines.append(f"  NeuroBench per sample ({nb['totals']['samples']:,}): ActivationSparsity "
                     f"{r['ActivationSparsity']:.4f}, Effective_ACs "
                     f"{r['SynapticOperations']['Effective_ACs']:,.0f}, MembraneUpdates "
                     f"{r['MembraneUpdates']:,.0f}"
                     + (f", Footprint {r['Footprint']:,} bytes" if r["Footprint"] is not None else ""))
    if where is not None:
        lines.append(f"  report: {where}")
    return "\n".join(lines)


# ============================================================================ html
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.meta{color:#555;font-size:.92em}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.4em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
code{background:#f4f4f4;padding:0 .25em}dl dt{font-weight:bold;margin-top:.5em}dl dd{margin-left:1.5em}
.small{font-size:.85em;color:#555}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: Any, fmt: str = "{:.4g}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return fmt.format(x)
    return _e(x)


def _table(head: list[str], rows: list[list[str]], left: int | set = 1) -> str:
    """``rows`` hold ready HTML; columns in ``left`` (the first ``left`` when an int) are
    left-aligned."""
    lft = set(range(left)) if isinstance(left, int) else set(left)
    h = "".join(f"<th class=\"l\">{_e(c)}</th>" if i in lft else f"<th>{_e(c)}</th>"
                for i, c in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td class=\"l\">{c}</td>" if i in lft else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _source_text(src: Any) -> str:
    if isinstance(src, Mapping):
        parts = [src.get(k) for k in ("authors", "title", "venue", "year", "pages") if src.get(k)]
        s = ", ".join(str(p) for p in parts)
        if src.get("doi"):
            s += f", doi:{src['doi']}"
        if src.get("cited_by"):
            s += f" (cited by: {src['cited_by']})"
        rest = {k: v for k, v in src.items()
                if k not in ("authors", "title", "venue", "year", "pages", "doi", "cited_by")}
        if rest:
            s += "; " + "; ".join(f"{k}: {v}" for k, v in rest.items())
        return s
    return str(src)


def _no_urls(text: str) -> str:
    """Plain text never carries a live link: 'http://x' is shown as 'http[:]//x'."""
    return re.sub(r"(?i)\b(https?):(?=//)", r"\1[:]", text)


def render_html(report: Mapping) -> str:
    """The self-contained ``report.html`` for a report dict (inline CSS; images by the
    relative names in ``report['files']['plots']``; no script, no external URL)."""
    m, sp, en = report["metadata"], report["sparsity"], report["energy"]
    p = sp["pooled"]
    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
    w(f"<title>{_e(report.get('title', 'sbsnn report'))}</title><style>{_CSS}</style></head><body>")
    w(f"<h1>{_e(report.get('title', 'sbsnn report'))}</h1>")
    k = m.get("k")
    w(f"<p class=\"meta\">{_num(m.get('tokens'))} tokens &middot; {_e(m.get('spiking_layers'))} spiking "
      f"layers &middot; {_e(m.get('coding'))} coding &middot; k = {_e(k if k is None else f'{k:g}')} "
      f"&middot; preset {_e(m.get('preset'))} &middot; recording <code>{_e(Path(str(m.get('recording', ''))).name)}</code>"
      f" &middot; sbsnn {_e(report['generator']['version'])}, {_e(report['generator']['created'])} "
      f"&middot; schema {_e(report['schema_version'])}</p>")
    docs = report.get("documents")
    if docs:
        w(f"<p class=\"meta\">{_num(len(docs))} documents, each from a fresh decoding state "
          f"({_num(sum(d['rows'] for d in docs))} tokens recorded); per document in "
          f"<code>report.json</code></p>")
    for n in report.get("notes") or []:
        w(f"<div class=\"note\">{_e(_no_urls(n))}</div>")

    # ---- summary
    w("<h2>Summary</h2>")
    rows = []
    f = report.get("fidelity")
    if f:
        rows += [["perplexity, float", _num(f["float_perplexity"]), ""],
                 ["perplexity, spiking", _num(f["spiking_perplexity"]),
                  f"x{f['perplexity_ratio']:.4f} of float" if f.get("perplexity_ratio") else ""],
                 ["top-1 agreement (float vs spiking)", _e(_pct(f["top1_agreement"])), ""],
                 ["mean KL(float || spiking)", _num(f["mean_kl"]) + " nats", "per predicted token"]]
        ci = f.get("perplexity_ratio_interval")
        if ci:
            rows.append(["perplexity ratio, 95 % interval", _e(f"x{ci[0]:.4f} to x{ci[1]:.4f}"),
                         _e(f"bootstrap over {f.get('documents', '?')} documents")])
        for key, name in _RECOVERY_NAMES.items():
            v = (f.get("recovery") or {}).get(key)
            if v is not None:
                rows.append([f"recovery, {name}", _num(v, "{:.4f}"),
                             "passes (>= 0.95)" if v >= 0.95 else "below 0.95"])
    pre = m.get("prefix")
    if isinstance(pre, dict):
        rows.append(["constant prefix", _e(f"{pre.get('tokens')} token(s)"),
                     _e(f"state of {pre.get('bytes', 0):,} bytes computed once in float; "
                        "not simulated")])
    ref = sp["reference"]
    rows += [["zero fraction of counts", _e(_pct(p["zero_fraction"])), ""],
             ["spikes per element", _num(p["spikes_per_element"], "{:.3f}"),
              f"SpikingBrain-7B: {ref['spikes_per_element']} (bitwise)"],
             [f"slot sparsity, {p['window']}-step window", _e(_pct(p["slot_sparsity_window"])),
              f"SpikingBrain-7B: {_pct(SPIKINGBRAIN_7B_SPARSITY, 2)} (bitwise)"],
             ["silent input channels per call", _e(_pct(p["silent_channel_fraction"])),
              f"SpikingBrain-7B: {_pct(SPIKINGBRAIN_7B_SILENT_CHANNELS)} of channels fire no spike"]]
    w(_table(["quantity", "this run", "reference / note"], rows))
    if f and f.get("definitions"):
        w("<details><summary>Fidelity definitions</summary><dl>")
        for key, text in f["definitions"].items():
            w(f"<dt><code>{_e(key)}</code></dt><dd>{_e(_no_urls(text))}</dd>")
        w("</dl></details>")
    erow = []
    for est, e in en["estimates"].items():
        b = e["baselines"]
        erow.append([_e(e["label"]), _e(format_pj(e["snn"]["pj_per_token"])),
                     _e(format_pj(b["int8_zero_skip"]["pj_per_token"])),
                     _e(format_pj(b["int8_dense"]["pj_per_token"])), _e(format_pj(b["fp16_dense"]["pj_per_token"])),
                     _e(_red(e["comparison"], "int8_dense")), _e(_red(e["comparison"], "fp16_dense"))])
    w("<p>Energy of the spiking layers, per token (spiking side priced by "
      f"<code>{_e(en['profile'])}</code>, baselines by <code>{_e(en['baseline_profile'])}</code>):</p>")
    w(_table(["estimate", "spiking", "INT8 zero-skip", "INT8 dense", "FP16 dense",
              "spiking vs INT8", "spiking vs FP16"], erow))
    ns = en.get("nonspiking")
    if ns and ns.get("pj_per_token") is not None:
        dp = ns.get("dense_projections") or []
        w(f"<p>Operations that never spike (attention scores and sums, the linear mixers' "
          f"states and convolutions, gates, norms, RoPE, SwiGLU, residuals, lm_head{', dense ' + ', '.join(dp) if dp else ''}) at "
          f"{_e(ns['precision'].upper())}: {_e(format_pj(ns['pj_per_token']))} per token "
          f"({_num(ns['macs'])} MACs, {_num(ns['ops'])} other operations in all), the same "
          f"for the spiking model and every baseline.</p>")
    sf = en.get("spikingbrain_formula")
    if sf:
        w(f"<p>SpikingBrain's formula (Eq. 24) on this run: {sf['spikes_per_element']:.3f} spikes per "
          f"element x {sf['e_add_pj']} pJ = {sf['pj_per_mac_equivalent']:.4f} pJ per MAC-equivalent: "
          f"{100 * sf['reduction_vs_fp16']:.1f} % below an FP16 MAC ({sf['fp16_mac_pj']} pJ), "
          f"{100 * sf['reduction_vs_int8']:.1f} % below an INT8 MAC ({sf['int8_mac_pj']} pJ). The 7B "
          f"model's {EQ24['spikes_per_element']:g} spikes give {EQ24['pj_per_mac_equivalent']:g} pJ "
          f"(-{EQ24['reduction_vs_fp16_pct']:g} % / -{EQ24['reduction_vs_int8_pct']:g} %).</p>")

    # ---- figures
    w("<h2>Plots</h2>")
    for key, fname in report["files"]["plots"].items():
        w(f"<figure><img src=\"{_e(fname)}\" alt=\"{_e(key.replace('_', ' '))}\">"
          f"<figcaption>{_e(PLOT_CAPTIONS.get(key, ''))}</figcaption></figure>")

    # ---- sparsity tables
    w("<h2>Sparsity</h2>")
    cols = ["zero_fraction", "spikes_per_element", "slot_sparsity_window", "slot_sparsity_global",
            "slot_sparsity_per_element", "fits_window", "silent_channel_fraction"]

    def mrow(label, d, kind=None):
        r = [_e(label)] + ([_e(kind)] if kind is not None else [])
        for c in cols:
            v = d[c]
            r.append(_num(v, "{:.3f}") if c == "spikes_per_element" else _e(_pct(v)))
        r.append(_num(d["elements"]))
        return r

    w("<p>Per layer kind and pooled:</p>")
    w(_table(["kind"] + cols + ["elements"],
             [mrow(kd, d) for kd, d in sp["per_kind"].items()] + [mrow("pooled", p)]))
    w("<p>Per layer:</p>")
    w(_table(["layer", "kind"] + cols + ["elements"],
             [mrow(n, d, d.get("kind", "")) for n, d in sp["per_layer"].items()], left=2))
    w("<h3>Metric definitions</h3><dl>")
    for key, text in sp["definitions"].items():
        w(f"<dt><code>{_e(key)}</code></dt><dd>{_e(_no_urls(text))}</dd>")
    w(f"</dl><p class=\"small\">Reference figures: {_e(_no_urls(ref['source']))}.</p>")

    # ---- NeuroBench
    nb = report.get("neurobench")
    if nb:
        r = nb["results"]
        so = r["SynapticOperations"]
        w("<h2>NeuroBench metrics</h2>")
        w(f"<p>NeuroBench's workload and static metrics under its names and definitions, per "
          f"sample ({_num(nb['totals']['samples'])} samples: the sequences run), as its own "
          f"<code>Benchmark</code> gives them through sbsnn's adapter "
          f"(<code>sbsnn.analysis.neurobench</code>); mapping in sbsnn's "
          f"<code>docs/report.md</code>.</p>")
        w(_table(["metric", "value"], [
            ["ActivationSparsity", _num(r["ActivationSparsity"], "{:.4f}")],
            ["SynapticOperations: Effective_ACs", _num(so["Effective_ACs"], "{:,.1f}")],
            ["SynapticOperations: Effective_MACs", _num(so["Effective_MACs"], "{:,.1f}")],
            ["SynapticOperations: Dense", _num(so["Dense"], "{:,.1f}")],
            ["MembraneUpdates", _num(r["MembraneUpdates"], "{:,.1f}")],
            ["Footprint (bytes)", _num(r["Footprint"])],
            ["ConnectionSparsity", _num(r["ConnectionSparsity"], "{:.4f}")]]))
        w("<p>Beside sbsnn's figures (totals over all samples):</p>")
        w(_table(["NeuroBench", "value", "sbsnn", "value", "relation"],
                 [[_e(b["neurobench"]), _num(b["value"], "{:.4f}"), f"<code>{_e(b['sbsnn'])}</code>",
                   _num(b["sbsnn_value"], "{:.4f}"), _e(b["relation"])] for b in nb["beside"]],
                 left={0, 2, 4}))
        w("<dl>")
        for key, text in nb["definitions"].items():
            w(f"<dt><code>{_e(key)}</code></dt><dd>{_e(text)}</dd>")
        w("</dl>")

    # ---- time-resolved trace
    tr = report.get("trace")
    if tr:
        w("<h2>Time-resolved trace</h2>")
        w("<p>Layers the run traced in time (<code>simulate(..., trace=...)</code>): spikes per "
          "step and the steps each token needed; every output's value after each step is in the "
          "recording (<code>Recording.trace(name)</code>).</p>")
        rows = []
        for name, d in tr["layers"].items():
            busy = sum(1 for v in d["events_per_step"] if v)
            rows.append([_e(name), _num(d["calls"]), _num(d["tokens"]), _num(d["steps_max"]),
                         _num(busy), _num(sum(d["events_per_step"])),
                         _num(d["steps_per_token_mean"], "{:.1f}"), _num(d["steps_per_token_max"]),
                         _num(d["silent_tokens"]), _num(d["output_tokens"])])
        w(_table(["layer", "calls", "tokens", "steps (max T)", "steps with events", "events",
                  "steps per token, mean", "max", "silent tokens", "tokens with per-step outputs"],
                 rows))
        w("<dl>")
        for key, text in tr["definitions"].items():
            w(f"<dt><code>{_e(key)}</code></dt><dd>{_e(text)}</dd>")
        w("</dl>")

    # ---- energy details
    w("<h2>Energy</h2><dl>")
    for est, e in en["estimates"].items():
        w(f"<dt>{_e(e['label'])}</dt><dd>{_e(e['description'])}")
        if e["snn"].get("note"):
            w(f" <em>{_e(e['snn']['note'])}</em>")
        w("</dd>")
    for b, info in en["baselines"].items():
        w(f"<dt>{_e(info['label'])}</dt><dd>{_e(info['description'])}</dd>")
    w("</dl>")
    groups = list(next(iter(en["estimates"].values()))["snn"]["groups_pj_per_token"])
    rows = []
    for est, e in en["estimates"].items():
        for s, sc in [("spiking", e["snn"])] + [(BASELINE_INFO[b]["label"], v) for b, v in e["baselines"].items()]:
            rows.append([_e(est), _e(s)] + [_e(format_pj(sc["groups_pj_per_token"].get(g))) for g in groups]
                        + [_e(format_pj(sc["pj_per_token"]))])
    w("<p>Per token, by component:</p>")
    w(_table(["estimate", "side"] + groups + ["total"], rows, left=2))
    for n in en.get("notes") or []:
        w(f"<div class=\"note\">{_e(_no_urls(n))}</div>")
    w("<h3>Energy constants</h3>")
    seen = set()
    for side, c in en["constants"].items():
        if c["profile"] in seen:
            continue
        seen.add(c["profile"])
        used = "spiking side and baselines" if en["profile"] == en["baseline_profile"] else (
            "spiking side" if side == "spiking" else "baselines and non-spiking operations")
        w(f"<p><b>{_e(c['profile'])}</b> ({_e(used)}): {_e(_no_urls(c['description']))}<br>"
          f"<span class=\"small\">Source: {_e(_no_urls(_source_text(c['source'])))}</span></p>")
        crow = []
        for key, v in c["values"].items():
            rng = f" (range {v['range'][0]:g}-{v['range'][1]:g})" if v.get("range") else ""
            crow.append([f"<code>{_e(key)}</code>", _e(f"{v['value']:g}{rng}"), _e(v["unit"]),
                         _e(v["basis"]), _e(_no_urls(v["source"])), _e(_no_urls(v.get("note") or ""))])
        w(_table(["constant", "value", "unit", "basis", "source", "note"], crow, left={0, 2, 3, 4, 5}))

    # ---- metadata
    w("<h2>Run</h2>")
    keep = ["recording", "recording_complete", "tokens", "token_digest", "coding", "k", "preset",
            "group_size", "sbsnn_version", "spiking_layers"]
    w(_table(["key", "value"], [[_e(kk), _e(_no_urls(str(m.get(kk))))] for kk in keep if kk in m]))
    mc = m.get("model_config")
    if mc:
        shown = {kk: mc.get(kk) for kk in ("model_type", "hidden_size", "intermediate_size",
                                           "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "attn_layers", "sliding_window",
                                           "vocab_size") if kk in mc}
        w("<p>Model: " + ", ".join(f"{_e(kk)} = {_e(v)}" for kk, v in shown.items()) + "</p>")
    w("<p class=\"small\">All numbers of this page are in <code>report.json</code> beside it "
      "(schema in sbsnn's <code>docs/report.md</code>).</p>")
    w("</body></html>\n")
    return "".join(out)
