"""Before and after calibration: the overall figures of the calibration report.

:func:`compare` measures, for each spiking model given (plain conversion, calibrated),
top-1 agreement, mean KL, both perplexities and spikes per element against the float
model on the same documents; :func:`format_calibration` prints the report (per layer and
overall) that ``sbsnn convert --calibrate`` shows and writes as ``calibration.json``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from sbsnn.analysis.fidelity import FidelitySums, fidelity_sums_of_ids

__all__ = ["compare", "format_calibration"]


@torch.no_grad()
def compare(float_model, spiking_models: Mapping[str, object], texts, coding: str, *,
            max_tokens: int = 8192, block_size: int = 256, progress=None) -> dict:
    """Per entry of ``spiking_models`` (name -> spiking model): ``tokens``,
    ``top1_agreement``, ``mean_kl``, ``float_perplexity``, ``spiking_perplexity``,
    ``perplexity_ratio`` and ``spikes_per_element`` (in ``coding``) on ``texts`` (a string
    or a list of documents, each a fresh sequence; at most ``max_tokens`` tokens).
    ``progress``: called once with the number of predictions to come (all models), it
    returns the callable that gets ``n`` after each block of ``n`` predictions, on the
    calling thread (e.g. a progress bar's ``update`` after setting its total)."""
    from sbsnn.converters.calibration import text_blocks

    blocks = text_blocks(float_model, texts, max_tokens, block_size)
    if progress is not None:
        per_model = sum(sum(b.shape[1] for b in doc) - 1 for doc in blocks)
        progress = progress(per_model * len(spiking_models))
    out = {}
    for name, spiking in spiking_models.items():
        sums, spikes_per_element = _sums(float_model, spiking, blocks, coding, block_size, progress)
        f = sums.fidelity()
        out[name] = {"tokens": f.tokens, "top1_agreement": f.top1_agreement,
                     "mean_kl": f.mean_kl, "float_perplexity": f.float_perplexity,
                     "spiking_perplexity": f.spiking_perplexity,
                     "perplexity_ratio": f.spiking_perplexity / f.float_perplexity,
                     "spikes_per_element": spikes_per_element}
    return out


def _sums(float_model, spiking, blocks, coding: str, block_size: int, progress=None):
    """Fidelity sums and spikes per element over the documents ``blocks``: documents side
    by side on a CPU with several torch threads, everything added in document order."""
    from sbsnn.converters.calibration import SpikeTap, each_document

    def one(i, doc, tell):
        with tap.document(i):
            return fidelity_sums_of_ids(float_model, spiking, torch.cat(doc, dim=1),
                                        block_size, progress=tell)

    with SpikeTap(spiking, coding) as tap:
        sums = FidelitySums()
        for s in each_document(one, blocks, [float_model, spiking], progress):
            sums = sums.add(s)
    return sums, tap.measured(sums.tokens).spikes_per_element


def _short(name: str) -> str:
    return name.replace("model.layers.", "").replace("self_attn.", "attn.")


def format_calibration(report: Mapping, overall: Mapping | None = None,
                       overall_text: str = "") -> str:
    """The calibration report as text: the budget and what was spent, per layer before
    (plain conversion at the budget's uniform k) and after (k, spikes per element, local
    output error), and, given ``overall`` (from :func:`compare`), the overall figures."""
    lines = [f"calibration ({report['coding']} coding, {report['preset'] or 'custom targets'}): "
             f"budget {report['budget']:.4f} spikes per element ({report['budget_from']}); "
             f"spent {report['spikes_per_element']:.4f} on the calibration text "
             f"({report['calibration_tokens']:,} tokens, {report['documents']} "
             f"document{'s' if report['documents'] != 1 else ''}) "
             f"in {report['seconds']['total_s']:.0f} s"]
    head = (f"  {'layer':<34} {'k before':>8} {'k after':>8} {'spk/el before':>13} "
            f"{'after':>7} {'error before':>12} {'after':>7}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for name, d in report["layers"].items():
        b, a = d["before"], d["after"]
        lines.append(f"  {_short(name):<34} {b['k']:>8.3g} {a['k']:>8.3g} "
                     f"{b['spikes_per_element']:>13.3f} {a['spikes_per_element']:>7.3f} "
                     f"{b['local_error']:>12.4f} {a['local_error']:>7.4f}")
    lines.append(f"  spikes per element and local error (relative RMS error of the layer's output) "
                 f"on the first {report['fisher_tokens']:,} calibration tokens; before: plain "
                 f"conversion at k = {report['plain_k']:.3g}")
    ref = report.get("refinement")
    if ref:
        kl = ", ".join(f"{v:.4f}" for v in ref["kl_per_epoch"])
        lines.append(f"  refined {ref['parameters']:,} norm weights: {ref['epochs']} epochs of "
                     f"{ref['tokens']:,} tokens in {ref['seconds']:.0f} s"
                     + (f" (resumed after epoch {ref['resumed_from_epoch']})"
                        if ref["resumed_from_epoch"] else "")
                     + f"; sampled KL per epoch {kl}")
    if overall:
        lines.append(f"overall{(' on ' + overall_text) if overall_text else ''}:")
        lines.append(f"  {'':<12} {'top-1':>7} {'KL':>8} {'ppl float':>10} {'ppl spiking':>11} "
                     f"{'ratio':>7} {'spk/el':>7}")
        for name, o in overall.items():
            r = o["perplexity_ratio"]
            lines.append(f"  {name:<12} {100 * o['top1_agreement']:>6.1f}% {o['mean_kl']:>8.4f} "
                         f"{o['float_perplexity']:>10.3f} {o['spiking_perplexity']:>11.3f} "
                         f"{r if math.isfinite(r) else float('nan'):>7.4f} "
                         f"{o['spikes_per_element']:>7.3f}")
        lines.append(f"  ({next(iter(overall.values()))['tokens']:,} next-token predictions)")
    return "\n".join(lines)
