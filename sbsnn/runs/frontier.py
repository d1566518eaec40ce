"""The frontier: how few spikes buy a faithful model, per coding and per method.

For each coding, :func:`frontier` measures every method at several spike costs on held-out
text, against the float model, and reads off the spikes per element each method needs to
reach a perplexity ratio of x1.01, x1.02 and x1.05 and a mean KL of 0.02 nats
(:data:`FRONTIER_TARGETS`):

- ``plain``: plain conversion at each k of ``ks``;
- ``calibrated``: :func:`sbsnn.calibrate` at the budget plain conversion at each k spends on
  the calibration text (``"k=K"``), calibrated on one text and measured on another;
- ``calibrated+prefix``: the same, calibrated and evaluated after the constant prefix
  (:mod:`sbsnn.models.prefix`: the model's BOS, or a prefix the user names), whose state is
  computed once in float and whose tokens are not simulated;
- ``fine-tuned``: spiking checkpoints fine-tuned by the user (``sbsnn finetune``), or a
  callable that builds one per k; skipped, with a note, when none is given.

Each point is measured by :func:`sbsnn.runs.calibrate.compare`: spikes per element counted
on the held-out text itself (the prefix's tokens excluded), perplexity ratio with its
bootstrap interval over documents, KL, agreement, recovery.

**How the spikes needed are read off** (:func:`spikes_needed`): per method the points are
ordered by spikes per element and joined by straight lines, in spikes per element against
the log of the perplexity ratio (the mean nats per token the spiking model loses) or
against the KL; the answer is where that line first reaches the target, going up from the
fewest spikes. A target met already at the fewest spikes measured is reported as "at most"
that many; one never met, as "more than" the most measured. Nothing is extrapolated.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from torch import nn

from sbsnn import __version__
from sbsnn.analysis.plots import plot_frontier
from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_POINT
from sbsnn.checks import check_int, check_k
from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters.calibration import calibrate
from sbsnn.converters.convert import check_request
from sbsnn.errors import CheckpointKindError, OptionError, brief
from sbsnn.fsutil import jsonable, write_atomically
from sbsnn.models.prefix import prefix_ids
from sbsnn.runs.calibrate import compare
from sbsnn.runs.documents import load_documents

__all__ = ["FRONTIER_KS", "FRONTIER_METHODS", "FRONTIER_TARGETS", "format_frontier", "frontier",
           "save_frontier", "spikes_needed"]

FRONTIER_KS = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
FRONTIER_METHODS = ("plain", "calibrated", "calibrated+prefix", "fine-tuned")
FRONTIER_TARGETS = ({"name": "ppl x1.01", "metric": "perplexity_ratio", "target": 1.01},
                    {"name": "ppl x1.02", "metric": "perplexity_ratio", "target": 1.02},
                    {"name": "ppl x1.05", "metric": "perplexity_ratio", "target": 1.05},
                    {"name": "KL 0.02", "metric": "mean_kl", "target": 0.02})
INTERPOLATION = ("points ordered by spikes per element and joined by straight lines, in spikes "
                 "per element against log(perplexity ratio) (the nats per token lost) or "
                 "against KL; the spikes needed are where the line first reaches the target "
                 "going up from the fewest spikes; 'at most' x: met at the fewest spikes "
                 "measured; 'more than' x: never met; nothing extrapolated")


def _level(metric: str, value: float) -> float:
    """The quantity interpolated: log of a perplexity ratio, KL as it is."""
    return math.log(value) if metric == "perplexity_ratio" else value


def spikes_needed(points: Sequence[Mapping], metric: str, target: float) -> dict:
    """The spikes per element at which ``points`` (each with ``spikes_per_element`` and
    ``metric``) first reach ``target`` (module docstring: linear between neighbours, in
    log ratio or KL). Returns ``{"spikes_per_element", "how", "between"}``, ``how`` one of
    ``measured``, ``interpolated``, ``at most``, ``more than``, ``no points``."""
    pts = sorted((p for p in points if p.get(metric) is not None and math.isfinite(p[metric])),
                 key=lambda p: p["spikes_per_element"])
    if not pts:
        return {"spikes_per_element": None, "how": "no points", "between": None}
    t = _level(metric, target)
    for i, p in enumerate(pts):
        y = _level(metric, p[metric])
        if y > t:
            continue
        if i == 0:
            how = "measured" if y == t else "at most"
            return {"spikes_per_element": p["spikes_per_element"], "how": how,
                    "between": [p["label"]]}
        q = pts[i - 1]
        yq = _level(metric, q[metric])
        x0, x1 = q["spikes_per_element"], p["spikes_per_element"]
        x = x1 if y == t else x0 + (t - yq) * (x1 - x0) / (y - yq)
        return {"spikes_per_element": x, "how": "measured" if y == t else "interpolated",
                "between": [q["label"], p["label"]]}
    return {"spikes_per_element": pts[-1]["spikes_per_element"], "how": "more than",
            "between": [pts[-1]["label"]]}


def _check_targets(targets) -> list[dict]:
    out = []
    for t in targets:
        if not isinstance(t, Mapping) or t.get("metric") not in ("perplexity_ratio", "mean_kl"):
            raise OptionError(f"targets: each is {{'name', 'metric': 'perplexity_ratio' or "
                              f"'mean_kl', 'target'}}, got {brief(t)}")
        v = t.get("target")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                v <= (1.0 if t["metric"] == "perplexity_ratio" else 0.0)):
            raise OptionError(f"targets: {t.get('name')!r} needs a finite target above "
                              f"{'1 (a perplexity ratio)' if t['metric'] == 'perplexity_ratio' else '0 (KL, nats)'}"
                              f", got {v!r}")
        out.append({"name": str(t.get("name") or f"{t['metric']} {v:g}"), "metric": t["metric"],
                    "target": float(v)})
    if not out:
        raise OptionError("targets: give at least one")
    return out


def _finetuned_models(finetuned, model, codings) -> tuple[dict, Callable | None]:
    """``({coding: [(label, model)]}, builder)`` of the ``finetuned`` argument: spiking
    checkpoints (paths or models) grouped by their coding, or a callable ``(float_model,
    coding, k) -> spiking model``."""
    if finetuned is None:
        return {}, None
    if isinstance(finetuned, (str, Path, nn.Module)) or not isinstance(finetuned, Iterable):
        if callable(finetuned) and not isinstance(finetuned, (str, Path, nn.Module)):
            return {}, finetuned
        finetuned = [finetuned]
    from sbsnn.converters import load_spiking

    groups: dict[str, list] = {}
    for item in finetuned:
        label = str(item) if isinstance(item, (str, Path)) else "fine-tuned model"
        snn = load_spiking(item) if isinstance(item, (str, Path)) else item
        scfg = getattr(snn, "spiking_config", None)
        if scfg is None:
            raise CheckpointKindError(f"finetuned: {label} is not a spiking model (no "
                                      "spiking_config); give sbsnn finetune's output")
        theirs, ours = snn.config, model.config
        for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
            if getattr(theirs, key) != getattr(ours, key):
                raise OptionError(f"finetuned: {label} has {key} {getattr(theirs, key)}, the float "
                                  f"model {getattr(ours, key)}: it was not made from this model")
        if scfg.coding not in codings:
            raise OptionError(f"finetuned: {label} is {scfg.coding} coded; the frontier runs "
                              f"{', '.join(codings)} (add --codings {scfg.coding})")
        if getattr(snn, "tokenizer", None) is None:
            snn.tokenizer = model.tokenizer
        groups.setdefault(scfg.coding, []).append((label, snn))
    return groups, None


def frontier(model, texts, *, calibration_texts=None, codings: Sequence[str] = ("ternary", "bitwise"),
             ks: Sequence[float] = FRONTIER_KS, prefix="auto", prefix_text: str | None = None,
             finetuned=None, methods: Sequence[str] = FRONTIER_METHODS,
             targets: Sequence[Mapping] = FRONTIER_TARGETS, preset: str = "paper",
             group_size: int = 128, calibration_tokens: int = 32768,
             eval_tokens: int = 16384, block_size: int = 256, progress: bool = False,
             on_point: Callable[[dict], None] | None = None) -> dict:
    """The frontier of ``model`` (a float model with a tokenizer) on held-out ``texts`` (a
    path or texts, :func:`~sbsnn.runs.documents.load_documents`; at most ``eval_tokens``
    tokens): every point of every method (module docstring) and, per coding and method,
    the spikes per element needed for each target.

    ``calibration_texts``: the text the calibrated methods calibrate on (another text than
    ``texts``; without it they are skipped, with a note). ``prefix``: ``"auto"`` (the
    model's BOS token when it has one), ``"bos"``, token ids, or None; ``prefix_text``: a
    prefix given as text. ``finetuned``: spiking checkpoints (paths or models; their
    coding is read from them) or a callable ``(float_model, coding, k) -> spiking model``
    run at each k; None: the method is skipped, with a note. ``on_point(point)`` is called
    as each point is measured. Returns ``{"points", "needed", "notes", ...}`` (written by
    :func:`save_frontier`)."""
    if any(isinstance(m, SpikingLinear) for m in model.modules()):
        raise CheckpointKindError("the frontier needs the float model (it converts it); this "
                                  "one is already spiking")
    codings = list(codings)
    if not codings:
        raise OptionError("codings: give at least one")
    for c in codings:
        check_request(preset, None, c, 3.0, group_size)
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
        raise OptionError(f"ks must be a list of numbers, got {brief(ks)}")
    ks = sorted({check_k(k) for k in ks})
    if not ks:
        raise OptionError("ks: give at least one k")
    unknown = [m for m in methods if m not in FRONTIER_METHODS]
    if unknown or not methods:
        raise OptionError(f"methods {unknown or list(methods)} are not among "
                          f"{', '.join(FRONTIER_METHODS)}")
    targets = _check_targets(targets)
    check_int(calibration_tokens, "calibration_tokens", minimum=2)
    check_int(eval_tokens, "eval_tokens", minimum=2)
    held_out = [d.text for d in load_documents(texts)]
    cal = [d.text for d in load_documents(calibration_texts)] if calibration_texts is not None \
        else None
    notes = [f"spikes needed: {INTERPOLATION}"]
    # the constant prefix of the "calibrated+prefix" method
    if prefix == "auto":
        bos = model.config.bos_token_id
        prefix = "bos" if prefix_text is None and isinstance(bos, int) and not isinstance(
            bos, bool) else None
    use_prefix = prefix is not None or prefix_text is not None
    if use_prefix:
        ids, _ = prefix_ids(model, prefix, prefix_text)        # refused here, before any work
    if use_prefix and "calibrated+prefix" in methods:
        notes.append(f"calibrated+prefix: every document follows a constant prefix of "
                     f"{len(ids)} token(s) ({'text ' + repr(prefix_text[:40]) if prefix_text else f'ids {ids[:8]}'}), "
                     "its state computed once in float; its tokens are not simulated or counted")
    groups, builder = _finetuned_models(finetuned, model, codings)
    methods = list(methods)
    skipped = {}
    if cal is None:
        for m in ("calibrated", "calibrated+prefix"):
            skipped[m] = "no calibration text given (calibration_texts=..., --calibrate TEXT)"
    if not use_prefix:
        skipped.setdefault("calibrated+prefix", "the model has no BOS token and no prefix was "
                           "named (prefix=..., --prefix-text)")
    if finetuned is None:
        skipped["fine-tuned"] = ("no fine-tuned checkpoint given (make one with sbsnn finetune "
                                 "SPIKING OUT --text FILE and pass it with --finetuned)")
    for m, why in skipped.items():
        if m in methods:
            notes.append(f"{m}: skipped: {why}")

    points: list[dict] = []

    def measure(coding, method, label, k, build):
        t0 = time.perf_counter()
        snn = build()
        t_build = time.perf_counter() - t0
        t1 = time.perf_counter()
        r = compare(model, {method: snn}, held_out, coding, max_tokens=eval_tokens,
                    block_size=block_size)[method]
        rep = getattr(snn, "calibration_report", None)
        point = {"coding": coding, "method": method, "label": label, "k": k, **r,
                 "calibration_spikes_per_element": rep["spikes_per_element"] if rep else None,
                 "build_seconds": t_build, "eval_seconds": time.perf_counter() - t1}
        points.append(point)
        if on_point is not None:
            on_point(point)

    for coding in codings:
        for method in methods:
            if method in skipped:
                continue
            if method == "plain":
                for k in ks:
                    measure(coding, method, f"k={k:g}", k,
                            lambda k=k: convert(model, preset, coding, k, group_size))
            elif method in ("calibrated", "calibrated+prefix"):
                pre = ({"prefix": prefix, "prefix_text": prefix_text}
                       if method == "calibrated+prefix" else {})
                for k in ks:
                    measure(coding, method, f"k={k:g} budget", k,
                            lambda k=k, pre=pre: calibrate(
                                model, cal, f"k={k:g}", coding=coding, preset=preset,
                                group_size=group_size, max_tokens=calibration_tokens,
                                progress=progress, **pre))
            elif builder is not None:
                for k in ks:
                    measure(coding, method, f"k={k:g}", k,
                            lambda k=k: builder(model, coding, k))
            else:
                for label, snn in groups.get(coding, []):
                    measure(coding, method, label, snn.spiking_config.k, lambda snn=snn: snn)
    needed = []
    for coding in codings:
        for method in methods:
            pts = [p for p in points if p["coding"] == coding and p["method"] == method]
            row = {"coding": coding, "method": method, "points": len(pts),
                   "skipped": skipped.get(method), "targets": {}}
            if method == "fine-tuned" and not pts and method not in skipped:
                row["skipped"] = f"no fine-tuned checkpoint of {coding} coding given"
            for t in targets:
                row["targets"][t["name"]] = spikes_needed(pts, t["metric"], t["target"])
            needed.append(row)
    return {"format": "sbsnn-frontier", "format_version": 1, "sbsnn_version": __version__,
            "codings": codings, "methods": methods, "ks": ks, "targets": targets,
            "preset": preset, "eval_tokens": eval_tokens,
            "calibration_tokens": calibration_tokens if cal is not None else None,
            "points": points, "needed": needed, "notes": notes,
            "interpolation": INTERPOLATION, "reference": SPIKINGBRAIN_7B_POINT}


def _cell(n: Mapping) -> str:
    x, how = n["spikes_per_element"], n["how"]
    if x is None:
        return "-"
    return {"at most": f"<={x:.2f}", "more than": f">{x:.2f}"}.get(how, f"{x:.2f}")


def format_frontier(result: Mapping) -> str:
    """The frontier as a text table: per coding and method, the spikes per element needed
    for each target; SpikingBrain-7B's published point below it, then the notes."""
    names = [t["name"] for t in result["targets"]]
    head = f"{'coding':<9} {'method':<18} {'points':>6} " + " ".join(f"{n:>10}" for n in names)
    lines = ["spikes per element needed to reach each target on the held-out text", head,
             "-" * len(head)]
    for row in result["needed"]:
        if row["skipped"]:
            cells = f"skipped: {row['skipped']}"
        else:
            cells = " ".join(f"{_cell(row['targets'][n]):>10}" for n in names)
        lines.append(f"{row['coding']:<9} {row['method']:<18} {row['points']:>6} {cells}")
    ref = result.get("reference") or SPIKINGBRAIN_7B_POINT
    lines.append(f"SpikingBrain-7B (published, {ref['coding']} k = {ref['k']:g}): "
                 f"{ref['spikes_per_element']:g} spikes per element at a bf16 / spiking average "
                 f"benchmark score of x{ref['score_ratio']:.3f} (a score ratio, not perplexity; "
                 f"{ref['source']})")
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


def format_points(result: Mapping) -> str:
    """Every measured point: spikes per element, perplexity ratio with its interval, KL,
    agreement, recovery, seconds."""
    head = (f"{'coding':<9} {'method':<18} {'point':<14} {'spk/el':>7} {'ratio':>7} "
            f"{'95% interval':>15} {'KL':>7} {'top-1':>6} {'rec.ppl':>7} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for p in result["points"]:
        ci = p.get("perplexity_ratio_interval")
        lines.append(
            f"{p['coding']:<9} {p['method']:<18} {str(p['label'])[:14]:<14} "
            f"{p['spikes_per_element']:>7.3f} {p['perplexity_ratio']:>7.4f} "
            f"{(f'{ci[0]:.4f}-{ci[1]:.4f}' if ci else 'n/a'):>15} {p['mean_kl']:>7.4f} "
            f"{100 * p['top1_agreement']:>5.1f}% {p['recovery']['perplexity']:>7.3f} "
            f"{p['build_seconds'] + p['eval_seconds']:>8.1f}")
    return "\n".join(lines)


def save_frontier(result: Mapping, out_dir, metadata: Mapping | None = None) -> dict:
    """Write ``frontier.json`` (the result and ``metadata``) and ``frontier.png``
    (:func:`sbsnn.analysis.plots.plot_frontier`) into ``out_dir`` atomically
    (``frontier.json`` last); returns the JSON object."""
    doc = jsonable({**result, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "metadata": dict(metadata or {}), "files": {"plot": "frontier.png"}})

    def write(tmp: Path) -> list[str]:
        plot_frontier(doc, tmp / "frontier.png")
        (tmp / "frontier.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n",
                                           encoding="utf-8")
        return ["frontier.png", "frontier.json"]

    write_atomically(out_dir, write, final="frontier.json", remove_first=("frontier.json",))
    return doc
