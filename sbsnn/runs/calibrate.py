"""Calibrate a checkpoint and measure it against plain conversion: ``sbsnn convert --calibrate``.

:func:`calibrate_checkpoint` loads a float checkpoint, calibrates it under a spike budget
(:func:`sbsnn.converters.calibration.calibrate`), converts it plainly at the budget's
uniform k, compares both with the float model on held-out text (:func:`compare`) and
writes the calibrated spiking checkpoint with its report (``calibration.json``) in one
atomic step. :func:`compare` measures, for each spiking model given (plain conversion,
calibrated), top-1 agreement, mean KL, both perplexities and spikes per element against
the float model on the same documents; :func:`format_calibration` prints the report (per
layer and overall) that the command shows.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

import torch
from tqdm.auto import tqdm

from sbsnn.analysis.fidelity import BOOTSTRAP_LEVEL, fidelity_of_documents, fidelity_sums_of_ids
from sbsnn.checks import check_int
from sbsnn.converters import convert, save_spiking
from sbsnn.converters.calibration import (SpikeBudget, SpikeTap, calibrate, each_document,
                                          text_blocks)
from sbsnn.fsutil import jsonable
from sbsnn.models.checkpoint import load_model
from sbsnn.runs.documents import load_documents

__all__ = ["CalibratedCheckpoint", "calibrate_checkpoint", "compare", "format_calibration",
           "format_overall"]


@contextmanager
def deferred_bar(desc: str, progress: bool):
    """A progress bar (tokens) whose total is known only once the work starts: yields
    ``start(total)``, which sets it and returns the bar's ``update`` (what
    :func:`compare` takes as ``progress``)."""
    with tqdm(total=0, desc=desc, unit="tok", disable=not progress) as bar:
        def start(total: int):
            bar.total = total
            bar.refresh()
            return bar.update

        yield start


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
    blocks = text_blocks(float_model, texts, max_tokens, block_size)
    if progress is not None:
        per_model = sum(sum(b.shape[1] for b in doc) - 1 for doc in blocks)
        progress = progress(per_model * len(spiking_models))
    out = {}
    for name, spiking in spiking_models.items():
        docs, spikes_per_element = _sums(float_model, spiking, blocks, coding, block_size,
                                         progress)
        d = fidelity_of_documents(docs).to_dict()
        out[name] = {key: d[key] for key in (
            "tokens", "documents", "top1_agreement", "mean_kl", "float_perplexity",
            "spiking_perplexity", "perplexity_ratio", "perplexity_ratio_interval",
            "float_nll", "spiking_nll", "float_top1_accuracy", "spiking_top1_accuracy",
            "recovery", "prefix_tokens")}
        out[name]["spikes_per_element"] = spikes_per_element
    return out


def _sums(float_model, spiking, blocks, coding: str, block_size: int, progress=None):
    """Fidelity sums of each document of ``blocks`` (in document order) and spikes per
    element over them: documents side by side on a CPU with several torch threads."""
    def one(i, doc, tell):
        with tap.document(i):
            return fidelity_sums_of_ids(float_model, spiking, torch.cat(doc, dim=1),
                                        block_size, progress=tell)

    with SpikeTap(spiking, coding) as tap:
        docs = list(each_document(one, blocks, [float_model, spiking], progress))
    tokens = sum(d.tokens for d in docs)
    return docs, tap.measured(tokens).spikes_per_element


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
        lines += format_overall(overall, indent="  ")
    return "\n".join(lines)


def format_overall(overall: Mapping, indent: str = "") -> list[str]:
    """Lines of a comparison (:func:`compare`'s result): per model, agreement, KL, both
    perplexities, their ratio with its bootstrap interval over documents, the recovery of
    perplexity and of top-1 accuracy, and spikes per element."""
    head = (f"{'':<12} {'top-1':>7} {'KL':>8} {'ppl float':>10} {'ppl spiking':>11} "
            f"{'ratio':>7} {f'{100 * BOOTSTRAP_LEVEL:.0f}% interval':>17} {'rec. ppl':>8} "
            f"{'rec. acc':>8} {'spk/el':>7}")
    lines = [indent + head]
    for name, o in overall.items():
        r = o["perplexity_ratio"]
        ci = o.get("perplexity_ratio_interval")
        rec = o.get("recovery") or {}
        lines.append(
            f"{indent}{name:<12} {100 * o['top1_agreement']:>6.1f}% {o['mean_kl']:>8.4f} "
            f"{o['float_perplexity']:>10.3f} {o['spiking_perplexity']:>11.3f} "
            f"{r if math.isfinite(r) else float('nan'):>7.4f} "
            f"{(f'{ci[0]:.4f}-{ci[1]:.4f}' if ci else 'n/a (1 doc)'):>17} "
            f"{_num(rec.get('perplexity')):>8} {_num(rec.get('top1_accuracy')):>8} "
            f"{o['spikes_per_element']:>7.3f}")
    first = next(iter(overall.values()))
    lines.append(f"{indent}({first['tokens']:,} next-token predictions over "
                 f"{first.get('documents', 1)} document(s); interval: bootstrap over documents; "
                 "recovery: float / spiking perplexity and spiking / float top-1 accuracy, "
                 ">= 0.95 passes"
                 + (f"; after a constant prefix of {first['prefix_tokens']} token(s), not "
                    "simulated" if first.get("prefix_tokens") else "") + ")")
    return lines


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@dataclass
class CalibratedCheckpoint:
    """What :func:`calibrate_checkpoint` wrote and measured: the calibration ``report``
    (also ``OUT/calibration.json``), the ``overall`` comparison on ``evaluated_on`` (plain
    and calibrated, as :func:`compare` returns it), the checkpoint's ``spiking_config`` and
    the seconds spent calibrating, evaluating and in all."""

    out: str
    spiking_config: object
    report: dict
    overall: dict
    evaluated_on: str
    calibration_seconds: float
    evaluation_seconds: float
    seconds: float

    def format(self) -> str:
        """The report as ``sbsnn convert --calibrate`` prints it."""
        return format_calibration(self.report, self.overall, self.evaluated_on)


def calibrate_checkpoint(src, out, texts, budget=None, *, eval_texts=None,
                         eval_tokens: int = 8192, coding: str = "ternary",
                         preset: str | None = "paper", k: float = 3.0, group_size: int = 128,
                         targets: list[str] | None = None, exclude: list[str] | None = None,
                         calibration_tokens: int = 32768, refine_epochs: int = 0,
                         refine_state=None, force: bool = False, allow_pickle: bool = False,
                         progress: bool = False, prefix=None,
                         prefix_text: str | None = None) -> CalibratedCheckpoint:
    """Calibrate the float checkpoint ``src`` on ``texts`` (a path to a text, ``.jsonl`` or
    directory of ``.txt`` files, or a list of texts) to spend at most ``budget`` spikes per
    element (a number, a :class:`~sbsnn.converters.calibration.SpikeBudget`; None: what
    plain conversion at ``k`` spends there), compare the result and plain conversion at
    the same uniform k with the float model on ``eval_texts`` (at most ``eval_tokens``
    tokens; None: the first tokens of the calibration text, which is not held out), and
    write the calibrated spiking checkpoint ``out`` with ``calibration.json`` in it, in one
    atomic step (``force``: replace an existing spiking checkpoint). ``prefix`` /
    ``prefix_text``: a constant prefix (:func:`~sbsnn.converters.calibration.calibrate`'s),
    given to both the calibrated and the plain model.
    """
    t0 = time.perf_counter()
    budget = SpikeBudget.at_k(k) if budget is None else SpikeBudget.of(budget)
    check_int(eval_tokens, "eval_tokens", minimum=2)
    docs = [d.text for d in load_documents(texts)]
    model = load_model(src, allow_pickle=allow_pickle)
    snn = calibrate(model, docs, budget, coding=coding, preset=preset, group_size=group_size,
                    targets=targets, exclude=exclude, max_tokens=calibration_tokens,
                    refine_epochs=refine_epochs, refine_state=refine_state, progress=progress,
                    prefix=prefix, prefix_text=prefix_text)
    report = snn.calibration_report
    plain = convert(model, preset, coding, report["plain_k"], group_size, targets, exclude,
                    prefix=prefix, prefix_text=prefix_text)
    if eval_texts is not None:
        held_out = load_documents(eval_texts)
        texts_eval, limit = [d.text for d in held_out], eval_tokens
        named = str(eval_texts) if not isinstance(eval_texts, (list, tuple)) else None
        where = f"{named} (held out)" if named else f"{len(held_out)} held-out texts"
        text_name = named or f"{len(held_out)} held-out texts"
    else:
        texts_eval, limit = docs, report["fisher_tokens"]
        where = (f"the first {limit:,} tokens of the calibration text (not held out: give "
                 "--eval TEXT for text the calibration did not see)")
        text_name = "calibration text"
    t_eval = time.perf_counter()
    with deferred_bar("evaluate (plain, calibrated)", progress) as start:
        overall = compare(model, {"plain": plain, "calibrated": snn}, texts_eval, coding,
                          max_tokens=limit, progress=start)
    t_eval = time.perf_counter() - t_eval
    report["overall"] = {"text": where, "before": overall["plain"], "after": overall["calibrated"]}
    snn.spiking_config.calibration["overall"] = {"text": text_name, **overall["calibrated"]}
    save_spiking(snn, out, force=force, extra_files={
        "calibration.json": json.dumps(jsonable(report), indent=1, allow_nan=False) + "\n"})
    return CalibratedCheckpoint(str(out), snn.spiking_config, report, overall, where,
                                report["seconds"]["total_s"], t_eval, time.perf_counter() - t0)
