"""Reports of a simulation: ``report.json``, ``report.html`` and PNG plots from a recording.

:func:`build_report` reads a recording written by ``simulate(..., record="spikes.h5")``,
computes the sparsity metrics (:mod:`sbsnn.analysis.sparsity`), the layer counters and
the energy estimates (:mod:`sbsnn.analysis.energy`, plus the operations that never spike,
:mod:`sbsnn.analysis.opcount`), and writes into ``out_dir``:

==========================  ===================================================
``report.json``             every number, schema ``report_schema.json`` (versioned
                            by ``schema_version``; described in ``docs/report.md``)
``report.html``             a self-contained page (inline CSS, no script, no URL):
                            summary, plots, tables, metric definitions, energy
                            constants with their sources
``sparsity_per_layer.png``  :func:`~sbsnn.analysis.plots.plot_sparsity_per_layer`
``count_histograms.png``    :func:`~sbsnn.analysis.plots.plot_count_histograms`
``spike_raster.png``        :func:`~sbsnn.analysis.plots.plot_spike_raster`
``energy.png``              :func:`~sbsnn.analysis.plots.plot_energy`
``events_per_step.png``     :func:`~sbsnn.analysis.plots.plot_events_per_step`
                            (recordings of runs with ``trace=``)
``steps_per_token.png``     :func:`~sbsnn.analysis.plots.plot_steps_per_token`
                            (same)
==========================  ===================================================

Atomicity: every file is first written into a hidden temporary folder inside
``out_dir``; only when all are written are the old ``report.json`` and ``report.html``
removed, the plots moved in, then ``report.html`` and, last, ``report.json``
(``os.replace``: atomic on one file system). A run killed at any point therefore leaves
either the previous complete report or no ``report.json`` at all, never one that points
at missing or half-written files. The temporary folder is removed on any error.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from sbsnn.analysis.sections import (BASELINE_INFO, ESTIMATE_INFO, METRIC_DEFINITIONS, _div,
                                     energy_section, sparsity_section, trace_section)

__all__ = ["ESTIMATE_INFO", "BASELINE_INFO", "METRIC_DEFINITIONS", "PLOT_FILES", "SCHEMA_VERSION",
           "build_report", "energy_section", "format_summary", "load_schema", "render_html",
           "sparsity_section", "write_atomically"]

SCHEMA_VERSION = "1.2"
PLOT_FILES = {
    "sparsity_per_layer": "sparsity_per_layer.png",
    "count_histograms": "count_histograms.png",
    "spike_raster": "spike_raster.png",
    "energy": "energy.png",
    "events_per_step": "events_per_step.png",        # only with a traced recording
    "steps_per_token": "steps_per_token.png",        # only with a traced recording
}
PLOT_CAPTIONS = {
    "sparsity_per_layer": "Zero fraction of the spike counts at the input of each spiking layer, "
                          "coloured by layer kind; dashed: pooled over all layers; dotted: "
                          "SpikingBrain-7B's 69.15 % (bitwise coding, report Fig. 9).",
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

_REPORT_JSON, _REPORT_HTML = "report.json", "report.html"


# ============================================================================ helpers
def load_schema() -> dict:
    """The JSON Schema of ``report.json`` (``sbsnn/analysis/report_schema.json``)."""
    from importlib import resources

    return json.loads(resources.files("sbsnn.analysis").joinpath("report_schema.json")
                      .read_text(encoding="utf-8"))


def _jsonable(x: Any) -> Any:
    """Plain JSON values: NaN and infinities become null, tuples lists, tensors numbers."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return _jsonable(x.item())
    if hasattr(x, "item"):                 # numpy scalars
        return _jsonable(x.item())
    if isinstance(x, Path):
        return str(x)
    return str(x)


def write_atomically(out_dir, write: Callable[[Path], list[str]], final: str = _REPORT_JSON,
                     remove_first: tuple[str, ...] = (_REPORT_JSON, _REPORT_HTML)) -> list[Path]:
    """Call ``write(tmp_dir)`` (it writes files there and returns their names), then move
    them into ``out_dir``: the names in ``remove_first`` are deleted before anything is
    moved, and ``final`` is moved last. Returns the final paths."""
    from sbsnn.errors import PathNotDirectoryError, os_error
    from sbsnn.fsutil import make_dir, remove_stale

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PathNotDirectoryError(f"{out}: the output directory is a file; give a directory "
                                    "(it is created if missing)", filename=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale(out, "sbsnn", "partial")      # what a killed run left
        tmp = make_dir(out, "sbsnn", "partial")
    except OSError as e:
        raise os_error(e, out, "creating the output directory") from None
    try:
        names = list(write(tmp))
        for n in remove_first:
            (out / n).unlink(missing_ok=True)
        ordered = [n for n in names if n != final] + [n for n in names if n == final]
        for n in ordered:
            os.replace(tmp / n, out / n)
        return [out / n for n in ordered]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ============================================================================ recordings
def _model_config(meta: Mapping):
    from sbsnn.models.config import HybridConfig

    d = meta.get("model_config")
    if not d:
        return None
    try:
        return HybridConfig.from_dict(dict(d))
    except Exception:  # noqa: BLE001 - a foreign config only loses kinds and non-spiking ops
        return None


def _dense_projections(layer_names, preset: str | None) -> tuple[str, ...]:
    """Projections the conversion left dense: none for ``paper``, ``down_proj`` for
    ``w8aspike``; for custom targets, the projection kinds no recorded layer has."""
    from sbsnn.analysis.opcount import DENSE_PROJECTIONS

    if preset == "paper":
        return ()
    if preset == "w8aspike":
        return ("down_proj",)
    spiked = set()
    for n in layer_names:
        for p in DENSE_PROJECTIONS:
            if re.search(rf"(^|\.){p}(\.\d+)?$", n):
                spiked.add(p)
    return tuple(p for p in DENSE_PROJECTIONS if p not in spiked)


def _fidelity_section(fid) -> dict | None:
    """The fidelity figures to report, checked: finite numbers, perplexities >= 1,
    agreement in [0, 1], KL >= 0 (a hand-written or damaged JSON is refused by field)."""
    if fid is None:
        return None
    from sbsnn.errors import InputError

    if not (hasattr(fid, "to_dict") or isinstance(fid, Mapping)):
        raise InputError(f"fidelity must be a Fidelity or its to_dict() (a JSON object), got "
                         f"{type(fid).__name__}")
    d = fid.to_dict() if hasattr(fid, "to_dict") else dict(fid)
    for key, lo, hi in (("float_perplexity", 1.0, None), ("spiking_perplexity", 1.0, None),
                        ("float_nll", 0.0, None), ("spiking_nll", 0.0, None),
                        ("top1_agreement", 0.0, 1.0), ("mean_kl", 0.0, None), ("tokens", 1, None)):
        v = d.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                v < lo or (hi is not None and v > hi)):
            raise InputError(f"fidelity: {key} = {v!r} is not a number in "
                             f"[{lo:g}, {'inf' if hi is None else f'{hi:g}'}]; give the JSON "
                             "Fidelity.to_dict() writes")
    fp, sp = d.get("float_perplexity"), d.get("spiking_perplexity")
    if fp is None and d.get("float_nll") is not None:
        fp = math.exp(d["float_nll"])
    if sp is None and d.get("spiking_nll") is not None:
        sp = math.exp(d["spiking_nll"])
    for key in ("top1_agreement", "mean_kl"):
        if key not in d:
            raise InputError(f"fidelity needs {key!r} (a Fidelity or its to_dict()); got keys "
                             f"{sorted(d)}")
    if fp is None or sp is None:
        raise InputError("fidelity needs float_perplexity and spiking_perplexity (or the NLLs)")
    d.update(float_perplexity=fp, spiking_perplexity=sp, perplexity_ratio=_div(sp, fp))
    return d


def _documents(rec) -> list[dict]:
    """The documents of a document-set recording, in document order, with the rows
    (tokens) each left in its densest layer (``rows``: all its tokens unless the run was
    cut short); [] for a recording of one text."""
    docs = list(getattr(rec, "documents", None) or [])
    if not docs or not rec.layers:
        return []
    layer = max(rec.layers, key=rec.rows)
    rows = {d["index"]: 0 for d in docs}
    cd = rec.call_documents(layer)
    if cd is not None:
        import numpy as np

        offs = np.append(np.asarray(rec.call_offsets(layer)[:], dtype=np.int64), rec.rows(layer))
        cd = np.asarray(cd[:])[:len(offs) - 1]
        for i, n in zip(cd.tolist(), np.diff(offs[:len(cd) + 1]).tolist()):
            rows[int(i)] = rows.get(int(i), 0) + int(n)
    return [{"index": d["index"], "name": d["name"], "tokens": d["tokens"], "chars": d["chars"],
             "rows": rows.get(d["index"], 0)} for d in sorted(docs, key=lambda d: d["index"])]


def _sum_ops(parts: list[dict]) -> dict:
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0) + v
    return out


# ============================================================================ build
def build_report(recording_path, out_dir, profile: str = "horowitz45", fidelity=None, *,
                 window: int = 3, raster_layer: str | None = None, raster_tokens: int = 6,
                 raster_channels: int = 8, title: str | None = None,
                 energy_options: Mapping | None = None) -> dict:
    """Write ``report.json``, ``report.html`` and the PNG plots of a recording into
    ``out_dir`` (atomically, see the module docstring); returns the report dict.

    ``profile``: energy profile of the spiking side (a shipped name or a JSON path;
    baselines are always priced by ``horowitz45``). ``fidelity``: a
    :class:`~sbsnn.analysis.fidelity.Fidelity` or its ``to_dict()`` (float vs spiking
    perplexity, top-1 agreement, KL) to include. ``window``: the fixed window of the
    windowed slot sparsity (3, the paper's). ``raster_layer`` / ``raster_tokens`` /
    ``raster_channels``: what the spike raster shows (default: the first recorded layer,
    its first 6 tokens, its 8 most active channels). ``energy_options``: extra keyword
    arguments of :func:`~sbsnn.analysis.energy.estimate_energy` (e.g. ``weight_memory``).
    """
    from sbsnn.analysis.energy import load_profile
    from sbsnn.checks import check_int
    from sbsnn.errors import SbsnnError
    from sbsnn.sim.recorder import open_recording

    check_int(window, "window", minimum=1, hint=" (the paper's window is 3 steps)")
    check_int(raster_tokens, "raster_tokens", minimum=0)
    check_int(raster_channels, "raster_channels", minimum=1)
    fid = _fidelity_section(fidelity)        # refused before any work
    prof = load_profile(profile)
    base = load_profile(dict(energy_options or {}).get("baseline_profile", "horowitz45"))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from sbsnn.errors import PathNotDirectoryError

        raise PathNotDirectoryError(f"{out}: the output directory is a file; give a directory",
                                    filename=out)
    rec_path = Path(recording_path)
    rec = open_recording(rec_path, warn=False)   # what it would warn about becomes a note
    try:
        report, write = _build(rec, rec_path, out, prof, base, fid, window=window,
                               raster_layer=raster_layer, raster_tokens=raster_tokens,
                               raster_channels=raster_channels, title=title,
                               energy_options=energy_options)
    except OSError as e:       # HDF5 refused a read: a damaged file
        from sbsnn.errors import RecordingError

        if isinstance(e, SbsnnError):
            raise
        raise RecordingError(f"{rec_path}: a dataset of the recording cannot be read ({e}); "
                             "the file is damaged: simulate again") from None
    _write_report(out, write)
    return report


def _build(rec, rec_path, out_dir, prof, base, fid, *, window, raster_layer, raster_tokens,
           raster_channels, title, energy_options):
    """Read the recording: ``(report dict, write(tmp) -> file names)``."""
    from sbsnn import __version__
    from sbsnn.analysis.counters import counters_from_recording
    from sbsnn.analysis.energy import estimate_energy
    from sbsnn.analysis.opcount import nonspiking_ops
    from sbsnn.analysis.sparsity import sparsity_from_recording

    try:
        meta = dict(rec.metadata)
        coding = meta.get("coding") or "ternary"
        cfg = _model_config(meta)
        notes = list(rec.notes)
        if not rec.layers:
            raise ValueError(f"{rec_path}: the recording holds no layer (nothing was simulated)")

        sparsity = sparsity_section(sparsity_from_recording(rec, window=window))
        kinds = {n: v["kind"] for n, v in sparsity["per_layer"].items()}

        counters = counters_from_recording(rec)
        meta_layers = meta.get("layers") or {}
        layers = []
        for name, c in counters.items():
            row = c.to_dict() if hasattr(c, "to_dict") else dict(c)
            info = meta_layers.get(name) or {}
            if "group_size" in info:
                row["group_size"] = int(info["group_size"])
            if "bias" in info:
                row["bias"] = bool(info["bias"])
            layers.append(row)
        tokens = max((r["tokens"] for r in layers), default=0)
        if meta.get("tokens") is not None and tokens != meta["tokens"]:
            notes.append(f"the recording holds {tokens} rows per dense layer but the run's "
                         f"metadata says {meta['tokens']} tokens (an interrupted run or a "
                         f"batch); per-token figures divide by {tokens}")
        dense = _dense_projections(counters, meta.get("preset")) if cfg is not None else ()
        ns = None
        documents = _documents(rec)
        if cfg is not None and tokens:
            # each document is a fresh sequence: its attention sees only its own keys
            lengths = [d["rows"] for d in documents if d["rows"]] if documents else [tokens]
            ns = _sum_ops([nonspiking_ops(cfg, n, dense_projections=dense) for n in lengths])
            ns = {k: v for k, v in ns.items() if not (k.startswith("dense_") and v == 0)}
            dense = tuple(p for p in dense if f"dense_{p}_macs" in ns)
        else:
            notes.append("no model config in the recording: the operations that never spike "
                         "(attention, norms, lm_head) are not counted")
        group_size = int(meta.get("group_size") or 128)
        opts = dict(energy_options or {})
        opts.pop("baseline_profile", None)
        en = estimate_energy(layers, coding, profile=prof, nonspiking=ns, group_size=group_size,
                             baseline_profile=base, **opts)
        energy = energy_section(en, tokens, kinds, dense, profiles=(prof, base))

        raster = None
        name = raster_layer or rec.layers[0]
        if name not in rec.layers:
            raise ValueError(f"raster_layer {name!r} is not in the recording "
                             f"({', '.join(rec.layers[:4])}, ...)")
        n_rows = min(raster_tokens, rec.rows(name))
        if n_rows:
            raster = (name, torch.from_numpy(rec.counts(name)[:n_rows]))
        trace = trace_section(rec)

        metadata = {k: v for k, v in meta.items()}
        metadata.update(
            recording=str(rec_path), recording_complete=bool(rec.complete),
            coding=coding, k=meta.get("k"), preset=meta.get("preset"),
            tokens=meta.get("tokens", tokens), spiking_layers=len(rec.layers),
            layer_names=list(rec.layers), recording_shards=len(getattr(rec, "shards", [rec])))
        if not rec.complete:
            notes.insert(0, "the recording is INCOMPLETE (its run was interrupted): the "
                            "figures cover only what was flushed before")
    finally:
        rec.close()

    report = {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "sbsnn", "version": __version__,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "title": title or "sbsnn report",
        "metadata": metadata,
        "sparsity": sparsity,
        "energy": energy,
        "files": {"json": _REPORT_JSON, "html": _REPORT_HTML, "plots": dict(PLOT_FILES)},
        "notes": notes,
    }
    if fid is not None:
        report["fidelity"] = fid
    if documents:
        report["documents"] = documents
    if raster is None:
        report["files"]["plots"].pop("spike_raster")
    if trace is not None:
        report["trace"] = trace
    else:
        report["files"]["plots"].pop("events_per_step")
        report["files"]["plots"].pop("steps_per_token")
    report = _jsonable(report)

    def write(tmp: Path) -> list[str]:
        from sbsnn.analysis import plots

        files = report["files"]["plots"]
        plots.plot_sparsity_per_layer(report["sparsity"], tmp / files["sparsity_per_layer"])
        plots.plot_count_histograms(report["sparsity"], tmp / files["count_histograms"])
        if raster is not None:
            plots.plot_spike_raster(raster[1], coding, tmp / files["spike_raster"], layer=raster[0],
                                    max_channels=raster_channels)
        plots.plot_energy(report["energy"], tmp / files["energy"])
        if "trace" in report:
            plots.plot_events_per_step(report["trace"], tmp / files["events_per_step"])
            plots.plot_steps_per_token(report["trace"], tmp / files["steps_per_token"])
        (tmp / _REPORT_HTML).write_text(render_html(report), encoding="utf-8")
        (tmp / _REPORT_JSON).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                        encoding="utf-8")
        return [*files.values(), _REPORT_HTML, _REPORT_JSON]

    return report, write


def _write_report(out_dir, write) -> None:
    """The report's files (an OSError here is about the output, never the recording)."""
    from sbsnn.errors import SbsnnError, os_error

    try:
        write_atomically(out_dir, write)
    except OSError as e:
        if isinstance(e, SbsnnError):
            raise
        raise os_error(e, action="writing the report") from None


# ============================================================================ text
def _pct(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def _pj(x) -> str:
    from sbsnn.analysis.energy import format_pj

    return format_pj(x)


def _red(cmp_: Mapping, b: str) -> str:
    r = (cmp_.get(b) or {}).get("reduction")
    return "n/a" if r is None else f"{-100 * r:+.1f} %"


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
        rows.append(("agreement", f"top-1 {_pct(f['top1_agreement'])}   mean KL {f['mean_kl']:.4f} nats"))
    rows.append(("sparsity", f"zero counts {_pct(p['zero_fraction'])}   "
                             f"{p['spikes_per_element']:.2f} spikes/element   "
                             f"{p['window']}-step window {_pct(p['slot_sparsity_window'])}"))
    rows.append(("", "(SpikingBrain-7B, bitwise coding: 69.15 % in a 3-step window, "
                     "1.13 spikes/element)"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {a:<{width}}  {b}" for a, b in rows]
    lines.append(f"  energy of the spiking layers per token ({en['profile']}; baselines "
                 f"{en['baseline_profile']}):")
    head = f"    {'estimate':<28}{'spiking':>11}{'INT8':>11}{'FP16':>11}{'vs INT8':>10}{'vs FP16':>10}"
    lines.append(head)
    for est, e in en["estimates"].items():
        b = e["baselines"]
        lines.append(f"    {e.get('short', est):<28}{_pj(e['snn']['pj_per_token']):>11}"
                     f"{_pj(b['int8_dense']['pj_per_token']):>11}{_pj(b['fp16_dense']['pj_per_token']):>11}"
                     f"{_red(e['comparison'], 'int8_dense'):>10}{_red(e['comparison'], 'fp16_dense'):>10}")
    ns = en.get("nonspiking")
    if ns and ns.get("pj_per_token") is not None:
        lines.append(f"    + operations that never spike ({ns['precision'].upper()}: attention, "
                     f"norms, lm_head): {_pj(ns['pj_per_token'])} per token in every column")
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
    ref = sp["reference"]
    rows += [["zero fraction of counts", _e(_pct(p["zero_fraction"])), ""],
             ["spikes per element", _num(p["spikes_per_element"], "{:.3f}"),
              f"SpikingBrain-7B: {ref['spikes_per_element']} (bitwise)"],
             [f"slot sparsity, {p['window']}-step window", _e(_pct(p["slot_sparsity_window"])),
              "SpikingBrain-7B: 69.15 % (bitwise)"],
             ["silent input channels per call", _e(_pct(p["silent_channel_fraction"])),
              "SpikingBrain-7B: 18.4 % of channels fire no spike"]]
    w(_table(["quantity", "this run", "reference / note"], rows))
    erow = []
    for est, e in en["estimates"].items():
        b = e["baselines"]
        erow.append([_e(e["label"]), _e(_pj(e["snn"]["pj_per_token"])),
                     _e(_pj(b["int8_zero_skip"]["pj_per_token"])),
                     _e(_pj(b["int8_dense"]["pj_per_token"])), _e(_pj(b["fp16_dense"]["pj_per_token"])),
                     _e(_red(e["comparison"], "int8_dense")), _e(_red(e["comparison"], "fp16_dense"))])
    w("<p>Energy of the spiking layers, per token (spiking side priced by "
      f"<code>{_e(en['profile'])}</code>, baselines by <code>{_e(en['baseline_profile'])}</code>):</p>")
    w(_table(["estimate", "spiking", "INT8 zero-skip", "INT8 dense", "FP16 dense",
              "spiking vs INT8", "spiking vs FP16"], erow))
    ns = en.get("nonspiking")
    if ns and ns.get("pj_per_token") is not None:
        dp = ns.get("dense_projections") or []
        w(f"<p>Operations that never spike (attention scores and sums, GLA state, norms, RoPE, "
          f"SwiGLU, residuals, lm_head{', dense ' + ', '.join(dp) if dp else ''}) at "
          f"{_e(ns['precision'].upper())}: {_e(_pj(ns['pj_per_token']))} per token "
          f"({_num(ns['macs'])} MACs, {_num(ns['ops'])} other operations in all), the same "
          f"for the spiking model and every baseline.</p>")
    sf = en.get("spikingbrain_formula")
    if sf:
        w(f"<p>SpikingBrain's formula (Eq. 24) on this run: {sf['spikes_per_element']:.3f} spikes per "
          f"element x {sf['e_add_pj']} pJ = {sf['pj_per_mac_equivalent']:.4f} pJ per MAC-equivalent: "
          f"{100 * sf['reduction_vs_fp16']:.1f} % below an FP16 MAC ({sf['fp16_mac_pj']} pJ), "
          f"{100 * sf['reduction_vs_int8']:.1f} % below an INT8 MAC ({sf['int8_mac_pj']} pJ). The 7B "
          f"model's 1.13 spikes give 0.0339 pJ (-97.7 % / -85.2 %).</p>")

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
            rows.append([_e(est), _e(s)] + [_e(_pj(sc["groups_pj_per_token"].get(g))) for g in groups]
                        + [_e(_pj(sc["pj_per_token"]))])
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
