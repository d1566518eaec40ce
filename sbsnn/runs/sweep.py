"""The k sweep: fidelity, sparsity and energy of a model converted at several thresholds.

SpikingBrain tunes one number, ``k`` in ``V_th = mean|x| / k``: a larger k gives finer
counts (better accuracy) and more spikes (less sparsity). Its Table 11 (report Appendix
A.8, 7B model) lists, for k = 2 / 2.5 / 3 / 3.5 / 4, sparsity 0.730 / 0.709 / 0.692 /
0.677 / 0.664 and average benchmark score 0.6735 / 0.6807 / 0.6875 / 0.6898 / 0.6940
(bf16: 0.6998). :func:`sweep` is its analogue for any model and text, and
:func:`sweep_documents` for a document set: per k (and per spike budget, for calibrated
rows), float and spiking perplexity, top-1 agreement, KL, the pooled sparsity metrics
and the energy of the spiking layers against INT8 and FP16, with the paper's figures
beside ours where k matches.

One implementation serves both (a text is a set of one document) in one process or
split across the ranks of a ``torchrun`` launch: for each conversion, every document is
read by both models from a fresh decoding state (:func:`sbsnn.analysis.fidelity_sums`)
while the spiking model runs under :class:`sbsnn.sim.Simulator` with a
:class:`~sbsnn.analysis.sparsity.SparsityCollector` as its recorder, so the spikes are
counted once per forward, by the simulator's own counters (closed forms, bit-identical
logits to the integer path). Integer sums (layer counters, sparsity tallies) are reduced
over the ranks with int64 ``all_reduce``; the fidelity sums are gathered per document
and added in document order, so every rank gets the rows one process computes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from sbsnn import __version__
from sbsnn.analysis.energy import estimate_energy, load_profile
from sbsnn.analysis.fidelity import fidelity_of_documents, fidelity_sums
from sbsnn.analysis.opcount import nonspiking_ops
from sbsnn.analysis.plots import plot_fidelity_per_spike, plot_sweep
from sbsnn.analysis.sparsity import SparsityCollector, SparsityTally
from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_SWEEP
from sbsnn.checks import check_block_size, check_int, check_k, check_window
from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters.calibration import calibrate
from sbsnn.converters.convert import check_request
from sbsnn.errors import CheckpointKindError, OptionError, brief
from sbsnn.fsutil import jsonable, write_atomically
from sbsnn.runs.documents import Document, DocumentSet, assign_documents, load_documents
from sbsnn.runs.group import Group, process_group
from sbsnn.runs.results import reduce_counters
from sbsnn.sim.engine import Simulator

__all__ = ["SWEEP_KS", "check_sweep", "format_sweep", "reduce_tallies", "save_sweep", "sweep",
           "sweep_documents"]

SWEEP_KS = (2.0, 2.5, 3.0, 3.5, 4.0)
_SPARSITY_KEYS = ("zero_fraction", "spikes_per_element", "slot_sparsity_global",
                  "slot_sparsity_per_element", "slot_sparsity_window", "fits_window",
                  "silent_channel_fraction", "window", "elements")


def _reference(k: float) -> dict | None:
    ref = SPIKINGBRAIN_7B_SWEEP
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
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise OptionError(f"ks must be a list of numbers, got {brief(ks)}")
    ks = list(ks)
    if not ks:
        raise OptionError("sweep needs at least one k")
    ks = [check_k(k) for k in ks]
    check_request(preset, None, coding, ks[0], group_size)
    check_block_size(block_size)
    check_window(window)
    load_profile(profile)
    if any(isinstance(m, SpikingLinear) for m in model.modules()):
        raise CheckpointKindError("sweep needs the float model (it converts it at each k); this "
                                  "one is already spiking")
    return ks


def _check_budgets(spike_budgets, calibration_texts) -> list[float]:
    budgets = [float(b) for b in spike_budgets]
    bad = [b for b in budgets if not (b > 0 and math.isfinite(b))]
    if bad:
        raise OptionError(f"every spike budget must be a finite number > 0, got {bad}")
    if budgets and calibration_texts is None:
        raise OptionError("spike budgets need calibration texts (calibration_texts=...)")
    return budgets


def _tally_keys(t) -> list[tuple[str, int]]:
    """(field, length) of a SparsityTally's summed fields (length 0: an int)."""
    return [(k, len(v) if isinstance(v, list) else 0) for k, v in vars(t).items() if k != "window"]


def reduce_tallies(group: Group, names: list[str], tallies: dict, window: int) -> dict:
    """Per-layer :class:`~sbsnn.analysis.sparsity.SparsityTally` sums over the group
    (exact, one int64 ``all_reduce``); layers that no rank saw are left out."""
    keys = _tally_keys(SparsityTally(window))
    width = sum(n or 1 for _, n in keys)
    packed = torch.zeros(len(names), width, dtype=torch.int64)
    for i, name in enumerate(names):
        t = tallies.get(name)
        if t is None:
            continue
        row = []
        for k, n in keys:
            v = getattr(t, k)
            row += list(v) if n else [v]
        packed[i] = torch.tensor(row, dtype=torch.int64)
    total = group.sum_ints(packed)
    out = {}
    for name, row in zip(names, total.tolist()):
        t, j = SparsityTally(window), 0
        for k, n in keys:
            setattr(t, k, [int(x) for x in row[j:j + n]] if n else int(row[j]))
            j += n or 1
        if t.calls:
            out[name] = t
    return out


def sweep(model, text: str, ks: Sequence[float] = SWEEP_KS, preset: str = "paper",
          coding: str = "ternary", profile: str = "horowitz45", *, group_size: int = 128,
          block_size: int = 256, window: int = 3, progress: bool = False,
          on_row: Callable[[dict], None] | None = None,
          spike_budgets: Sequence[float] = (), calibration_texts=None,
          calibration_tokens: int = 32768, backend: str = "auto") -> list[dict]:
    """One row per k: perplexity float and spiking (and their ratio), top-1 agreement, mean
    KL, the pooled sparsity metrics, the energy of the spiking layers (estimate (a), and all
    three under ``by_estimate``) against INT8 and FP16, and SpikingBrain-7B's Table 11
    figures for that k (``reference``, None when the paper has no such k).

    ``model``: a float model with a tokenizer (``sbsnn.load_model``); ``text``: one text (a
    set of one document; :func:`sweep_documents` takes a set). ``on_row`` is called with
    each row as soon as it is ready (progress printing).

    ``spike_budgets`` (with ``calibration_texts``, a string or a list of documents): after
    the plain rows (``"method": "plain"``), one row per budget for the model calibrated on
    those texts to spend at most that many spikes per element
    (:func:`sbsnn.converters.calibration.calibrate`; ``"method": "calibrated"``,
    ``"spike_budget"``, ``"k"`` the median of its per-layer k, ``"calibration"`` what it
    spent there), measured on ``text`` like the plain rows: fidelity per spike.
    """
    if not isinstance(text, str):
        raise OptionError(f"sweep needs a text (str), got {type(text).__name__}; a document "
                          "set goes to sweep_documents")
    with process_group(False) as g:
        return _sweep(model, DocumentSet("text", (Document(0, "text", text),)), ks, preset,
                      coding, profile, group_size, block_size, window, progress, on_row,
                      spike_budgets, calibration_texts, calibration_tokens, backend, g,
                      one_text=True, per_document=False)


def sweep_documents(model, documents, ks: Sequence[float] | None = None, preset: str = "paper",
                    coding: str = "ternary", profile: str = "horowitz45", *,
                    group_size: int = 128, block_size: int = 256, window: int = 3,
                    max_chars: int | None = None, progress: bool = False,
                    on_row: Callable[[dict], None] | None = None,
                    spike_budgets: Sequence[float] = (), calibration_texts=None,
                    calibration_tokens: int = 32768, backend: str = "auto",
                    per_document: bool = True, distributed: bool | str = "auto",
                    group: Group | None = None) -> list[dict]:
    """The rows of :func:`sweep` over a document set (a path or texts,
    :func:`~sbsnn.runs.documents.load_documents`), each document read from a fresh state,
    plus ``documents`` (how many) and ``per_document`` (index, name, predictions,
    perplexities, agreement, KL of each; ``per_document=False`` leaves both out, as
    :func:`sweep` does). ``max_chars`` cuts each document. Under
    ``torchrun`` (``distributed``, or an open ``group``) the documents are split across the
    ranks, balanced by tokens; every rank returns the same rows, those of one process."""
    check_int(max_chars, "max_chars", minimum=1, none_ok=True, hint=" (None: the whole text)")
    if group is None:
        with process_group(distributed) as g:
            return sweep_documents(model, documents, ks, preset, coding, profile,
                                   group_size=group_size, block_size=block_size, window=window,
                                   max_chars=max_chars, progress=progress, on_row=on_row,
                                   spike_budgets=spike_budgets,
                                   calibration_texts=calibration_texts,
                                   calibration_tokens=calibration_tokens, backend=backend,
                                   per_document=per_document, group=g)
    docs = load_documents(documents)
    if max_chars is not None:
        docs = DocumentSet(docs.source, tuple(Document(d.index, d.name, d.text[:max_chars])
                                              for d in docs))
    return _sweep(model, docs, SWEEP_KS if ks is None else ks, preset, coding, profile,
                  group_size, block_size, window, progress, on_row, spike_budgets,
                  calibration_texts, calibration_tokens, backend, group, one_text=False,
                  per_document=per_document)


def _sweep(model, docs: DocumentSet, ks, preset, coding, profile, group_size, block_size, window,
           progress, on_row, spike_budgets, calibration_texts, calibration_tokens, backend,
           group: Group, one_text: bool, per_document: bool) -> list[dict]:
    ks = check_sweep(model, ks, preset, coding, profile, group_size, block_size, window)
    budgets = _check_budgets(spike_budgets, calibration_texts)
    tok = model._require_tokenizer()
    lengths = [len(tok.encode(d.text)) for d in docs]
    short = [d for d, n in zip(docs, lengths) if n < 2]
    if short and one_text:
        raise OptionError("fidelity needs a text of at least two tokens")
    if short:
        raise ValueError(f"{docs.source}: document {short[0].index} ({short[0].name}) has fewer "
                         f"than two tokens; fidelity needs a next token to predict")
    ranks = assign_documents(lengths, group.world_size)
    mine = [d for d in docs if ranks[d.index] == group.rank]
    dense = tuple(p for p in ("down_proj",) if preset == "w8aspike")
    nonspiking: dict = {}
    for n in lengths:          # each document a fresh sequence
        for key, v in nonspiking_ops(model.config, n, dense_projections=dense).items():
            nonspiking[key] = nonspiking.get(key, 0) + v

    def conversions():
        for k in ks:
            yield {"method": "plain"}, convert(model, preset=preset, coding=coding, k=k,
                                               group_size=group_size)
        for b in budgets:
            snn = calibrate(model, calibration_texts, b, coding=coding, preset=preset,
                            group_size=group_size, max_tokens=calibration_tokens,
                            progress=progress and group.is_main)
            r = snn.calibration_report
            yield {"method": "calibrated", "spike_budget": b,
                   "calibration": {"spikes_per_element": r["spikes_per_element"],
                                   "calibration_tokens": r["calibration_tokens"],
                                   "seconds": r["seconds"]["total_s"]}}, snn

    rows = []
    for fields, snn in tqdm(conversions(), total=len(ks) + len(budgets),
                            desc=f"sweep{group.where()}", unit="model",
                            disable=not (progress and group.is_main)):
        t0 = time.perf_counter()
        row = _measure(model, snn, docs, mine, fields, preset, coding, profile, group_size,
                       block_size, window, nonspiking, backend, group)
        if not per_document:
            del row["documents"], row["per_document"]
        row["seconds"] = max(group.all_gather(time.perf_counter() - t0))
        rows.append(row)
        if on_row is not None and group.is_main:
            on_row(row)
        del snn
    return rows


@torch.no_grad()
def _measure(model, snn, docs: DocumentSet, mine, fields: dict, preset, coding, profile,
             group_size, block_size, window, nonspiking, backend, group: Group) -> dict:
    """One row: this rank's documents through both models, the spiking one under the
    simulator (its counters, a sparsity collector as its recorder), reduced over ranks."""
    collector = SparsityCollector(coding, model.config, window)
    per_doc = []
    with Simulator(snn, backend, recorder=collector) as sim:
        for d in mine:
            per_doc.append((d.index, fidelity_sums(model, snn, d.text, block_size=block_size)))
    layers = sim.layers
    names = [n for n, _ in layers]
    tallies: dict[str, SparsityTally] = {}
    for name, t in collector.calls:
        tallies.setdefault(name, SparsityTally(window)).add(t)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers}
    reduced = reduce_counters(group, names, sim.counters, shapes)
    reduced = {n: c for n, c in reduced.items() if c.calls}
    collector.calls = list(reduce_tallies(group, names, tallies, window).items())
    sums = sorted((x for part in group.all_gather(per_doc) for x in part), key=lambda x: x[0])
    if [i for i, _ in sums] != list(range(len(docs))):
        raise RuntimeError(f"internal: fidelity of {len(sums)} documents gathered for {len(docs)}")
    # added in document order: the same bits on any split
    fid = fidelity_of_documents([s for _, s in sums]).to_dict()
    info = {n: {"group_size": m.group_size, "bias": m.bias is not None} for n, m in layers}
    tokens = max((c.tokens for c in reduced.values()), default=0)
    en = estimate_energy([{**c.to_dict(), **info[n]} for n, c in reduced.items()], coding,
                         profile=profile, group_size=group_size, nonspiking=nonspiking)
    pooled = collector.report().pooled
    k = float(snn.spiking_config.k)
    return {
        "k": k, **fields, "preset": preset, "coding": coding, "tokens": tokens,
        "chars": docs.chars,
        "float_perplexity": fid["float_perplexity"], "spiking_perplexity": fid["spiking_perplexity"],
        "perplexity_ratio": fid["spiking_perplexity"] / fid["float_perplexity"],
        "top1_agreement": fid["top1_agreement"], "mean_kl": fid["mean_kl"],
        "float_nll": fid["float_nll"], "spiking_nll": fid["spiking_nll"],
        "perplexity_ratio_interval": fid["perplexity_ratio_interval"],
        "float_top1_accuracy": fid["float_top1_accuracy"],
        "spiking_top1_accuracy": fid["spiking_top1_accuracy"], "recovery": fid["recovery"],
        "prefix_tokens": fid["prefix_tokens"],
        "sparsity": {key: pooled[key] for key in _SPARSITY_KEYS},
        "energy": _energy_summary(en, tokens),
        "reference": _reference(k) if fields["method"] == "plain" else None,
        "documents": len(docs),
        "per_document": [{"index": i, "name": docs[i].name, **_doc_fidelity(s)} for i, s in sums],
    }


def _doc_fidelity(s) -> dict:
    f = s.fidelity()
    return {"tokens": f.tokens, "float_nll": f.float_nll, "spiking_nll": f.spiking_nll,
            "float_perplexity": f.float_perplexity, "spiking_perplexity": f.spiking_perplexity,
            "top1_agreement": f.top1_agreement, "mean_kl": f.mean_kl}


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def format_sweep(rows: Iterable[Mapping]) -> str:
    """The sweep as a text table, SpikingBrain-7B's Table 11 in the last two columns."""
    rows = list(rows)
    head = (f"{'k':>12} {'ppl float':>9} {'ppl spike':>9} {'ratio':>6} {'rec.':>5} {'top-1':>6} {'KL':>7} "
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
            f"{_f(r['perplexity_ratio'], '{:.3f}'):>6} "
            f"{_f((r.get('recovery') or {}).get('perplexity'), '{:.3f}'):>5} "
            f"{_f(100 * r['top1_agreement'], '{:.1f}%'):>6} "
            f"{_f(r['mean_kl'], '{:.4f}'):>7} {_f(100 * sp['zero_fraction'], '{:.1f}%'):>6} "
            f"{_f(sp['spikes_per_element'], '{:.2f}'):>6} {_f(100 * sp['slot_sparsity_window'], '{:.1f}%'):>6} "
            f"{e_txt:>9} {_f(None if en.get('reduction_vs_int8') is None else -100 * en['reduction_vs_int8'], '{:+.1f}%'):>8} "
            f"{_f(None if en.get('reduction_vs_fp16') is None else -100 * en['reduction_vs_fp16'], '{:+.1f}%'):>8} "
            f"| {_f(ref.get('sparsity'), '{:.3f}'):>9} {_f(ref.get('avg_score'), '{:.4f}'):>8}")
    if any(r.get("method") == "calibrated" for r in rows):
        lines.append("cal B/el: calibrated (sbsnn.calibrate) to spend at most B spikes per element "
                     "on the calibration text; its spk/el is measured on this text.")
    lines.append("ratio: spiking / float perplexity (its bootstrap interval over documents in "
                 "sweep.json); rec.: recovery, float / spiking perplexity (>= 0.95 passes); "
                 "zeros: zero fraction of counts; spk/el: spikes "
                 "per element; win3: slot sparsity in a 3-step window; E(a): energy of the spiking "
                 "layers per token, SpikingBrain's Eq. 24; 7B: SpikingBrain-7B, Table 11 (bf16 score "
                 f"{SPIKINGBRAIN_7B_SWEEP['bf16_avg_score']:.4f}).")
    return "\n".join(lines)


def save_sweep(rows: Sequence[Mapping], out_dir, metadata: Mapping | None = None) -> dict:
    """Write ``sweep.json`` (rows + SpikingBrain's Table 11 + metadata) and ``sweep.png``
    into ``out_dir`` atomically (``sweep.json`` last); returns the JSON object."""
    doc = jsonable({"format": "sbsnn-sweep", "format_version": 1, "sbsnn_version": __version__,
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
