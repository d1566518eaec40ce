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

import functools
import json
import math
import re
import time
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from sbsnn import __version__
from sbsnn.analysis import plots
from sbsnn.analysis.counters import counters_from_recording
from sbsnn.analysis.energy import estimate_energy, load_profile
from sbsnn.analysis.fidelity import recovery
from sbsnn.analysis.neurobench_metrics import neurobench_from_recording
from sbsnn.analysis.opcount import DENSE_PROJECTIONS, nonspiking_ops
from sbsnn.analysis.report_render import PLOT_CAPTIONS, format_summary, render_html
from sbsnn.analysis.sections import (BASELINE_INFO, ESTIMATE_INFO, FIDELITY_DEFINITIONS,
                                     METRIC_DEFINITIONS, _div, energy_section,
                                     neurobench_section, sparsity_section, trace_section)
from sbsnn.analysis.sparsity import sparsity_from_recording
from sbsnn.checks import check_int, check_window
from sbsnn.errors import InputError, PathNotDirectoryError, RecordingError, SbsnnError, os_error
from sbsnn.fsutil import jsonable
from sbsnn.fsutil import write_atomically as _write_atomically
from sbsnn.models.config import HybridConfig
from sbsnn.sim.recorder import open_recording

__all__ = ["ESTIMATE_INFO", "BASELINE_INFO", "METRIC_DEFINITIONS", "PLOT_CAPTIONS", "PLOT_FILES",
           "SCHEMA_VERSION", "build_report", "energy_section", "format_summary", "load_schema",
           "render_html", "sparsity_section", "write_atomically"]

SCHEMA_VERSION = "1.3"
PLOT_FILES = {
    "sparsity_per_layer": "sparsity_per_layer.png",
    "count_histograms": "count_histograms.png",
    "spike_raster": "spike_raster.png",
    "energy": "energy.png",
    "events_per_step": "events_per_step.png",        # only with a traced recording
    "steps_per_token": "steps_per_token.png",        # only with a traced recording
}
_REPORT_JSON, _REPORT_HTML = "report.json", "report.html"


# ============================================================================ helpers
def load_schema() -> dict:
    """The JSON Schema of ``report.json`` (``sbsnn/analysis/report_schema.json``)."""
    return json.loads(resources.files("sbsnn.analysis").joinpath("report_schema.json")
                      .read_text(encoding="utf-8"))


# The report's files: report.json moved in last, and the old report.json and report.html
# removed before anything is moved (see the module docstring).
write_atomically = functools.partial(_write_atomically, final=_REPORT_JSON,
                                     remove_first=(_REPORT_JSON, _REPORT_HTML))


# ============================================================================ recordings
def _model_config(meta: Mapping):
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
    for key in ("float_top1_accuracy", "spiking_top1_accuracy"):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 <= v <= 1):
            raise InputError(f"fidelity: {key} = {v!r} is not a fraction in [0, 1]")
    ci = d.get("perplexity_ratio_interval")
    if ci is not None and not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0 for v in ci) and ci[0] <= ci[1]):
        raise InputError(f"fidelity: perplexity_ratio_interval = {ci!r} is not [low, high] "
                         "(two positive numbers, low <= high) or null")
    d.update(float_perplexity=fp, spiking_perplexity=sp, perplexity_ratio=_div(sp, fp))
    if d.get("float_nll") is None:
        d["float_nll"], d["spiking_nll"] = math.log(fp), math.log(sp)
    if ci is not None:
        d["perplexity_ratio_interval"] = [float(ci[0]), float(ci[1])]
    d["recovery"] = recovery(d)
    d["definitions"] = dict(FIDELITY_DEFINITIONS)
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
    check_window(window)
    check_int(raster_tokens, "raster_tokens", minimum=0)
    check_int(raster_channels, "raster_channels", minimum=1)
    fid = _fidelity_section(fidelity)        # refused before any work
    prof = load_profile(profile)
    base = load_profile(dict(energy_options or {}).get("baseline_profile", "horowitz45"))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
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
        if isinstance(e, SbsnnError):
            raise
        raise RecordingError(f"{rec_path}: a dataset of the recording cannot be read ({e}); "
                             "the file is damaged: simulate again") from None
    _write_report(out, write)
    return report


def _build(rec, rec_path, out_dir, prof, base, fid, *, window, raster_layer, raster_tokens,
           raster_channels, title, energy_options):
    """Read the recording: ``(report dict, write(tmp) -> file names)``."""
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
        nb, nb_notes = neurobench_from_recording(rec)
        notes += nb_notes
        if nb is not None:
            nb = neurobench_section(nb, sparsity, energy)

        metadata = {k: v for k, v in meta.items()}
        # the per-column weight counts served the NeuroBench section; the layers keep their shapes
        if isinstance(meta.get("layers"), Mapping):
            metadata["layers"] = {n: {k: v for k, v in d.items() if k != "column_nonzero"}
                                  for n, d in meta["layers"].items()}
        metadata.update(
            recording=str(rec_path), recording_complete=bool(rec.complete),
            coding=coding, k=meta.get("k"), preset=meta.get("preset"),
            tokens=meta.get("tokens", tokens), spiking_layers=len(rec.layers),
            layer_names=list(rec.layers), recording_shards=len(getattr(rec, "shards", [rec])))
        prefix = meta.get("prefix")
        if isinstance(prefix, dict):
            notes.append(f"every document starts from the state after a constant prefix of "
                         f"{prefix.get('tokens')} token(s), computed once in float at "
                         "conversion: the prefix tokens are not simulated, so the sparsity, "
                         "energy and per-token figures cover the documents' own tokens only "
                         "(their attention over the prefix's keys is not counted either)")
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
    if nb is not None:
        report["neurobench"] = nb
    if trace is not None:
        report["trace"] = trace
    else:
        report["files"]["plots"].pop("events_per_step")
        report["files"]["plots"].pop("steps_per_token")
    report = jsonable(report)

    def write(tmp: Path) -> list[str]:
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
    try:
        write_atomically(out_dir, write)
    except OSError as e:
        if isinstance(e, SbsnnError):
            raise
        raise os_error(e, action="writing the report") from None
