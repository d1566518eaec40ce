"""Reports (sbsnn.analysis.report), plots and the k sweep.

The expected numbers are computed here by hand from small count tensors written into a
recording with the Recorder, from the definitions in ``docs/report.md`` and the
SpikingBrain reference (spikes: |c| for ternary, popcount(|c|) for bitwise; T of a call =
max|c| (ternary) or bit_length(max|c|) (bitwise); Eq. 24: synaptic ops x 0.03 pJ; dense
MACs x 0.23 pJ (INT8) or 1.5 pJ (FP16)), never by calling the metric code under test.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from sbsnn.analysis.report import build_report, format_summary, load_schema
from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM
from sbsnn.sim.recorder import Recorder

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=16)

# Two layers, three calls each of 2 + 1 + 1 = 4 tokens (a 4-token text in blocks).
Q, G = "model.layers.0.attn.q_proj", "model.layers.1.mlp.gate_proj"
CALLS = {
    Q: [torch.tensor([[0, 1, -2, 0, 5], [3, 0, 0, -1, 0]]),
        torch.tensor([[0, 0, 0, 0, 0]]),
        torch.tensor([[-7, 2, 0, 0, 1]])],
    G: [torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]),
        torch.tensor([[0, -3, 0, 4]]),
        torch.tensor([[2, 0, 0, 0]])],
}
OUT = {Q: 6, G: 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def spikes(c: int, coding: str) -> int:
    return abs(c) if coding == "ternary" else bin(abs(c)).count("1")


def steps(call: torch.Tensor, coding: str) -> int:
    m = int(call.abs().max())
    return m if coding == "ternary" else max(1, m.bit_length())


def make_recording(path: Path, coding: str = "ternary", preset: str | None = "paper") -> Path:
    cfg = HybridConfig(**TINY)
    meta = {"coding": coding, "k": 3.0, "preset": preset, "group_size": 128, "tokens": 4,
            "model_config": cfg.to_dict(),
            "layers": {n: {"in_features": CALLS[n][0].shape[1], "out_features": OUT[n],
                           "group_size": 128, "bias": n == Q} for n in CALLS}}
    with Recorder(path, metadata=meta) as rec:
        for i in range(3):
            for n in CALLS:
                c = CALLS[n][i]
                rec.write(n, c.to(torch.int8), torch.ones(c.shape[0], 1))
            rec.flush()
    return path


def hand_metrics(calls: list[torch.Tensor], coding: str, window: int = 3) -> dict:
    elements = zeros = spk = slots = win = silent = chans = 0
    hist = {}
    for call in calls:
        T = steps(call, coding)
        for row in call.tolist():
            for c in row:
                s = spikes(c, coding)
                elements += 1
                zeros += c == 0
                spk += s
                win += min(s, window)
                hist[abs(c)] = hist.get(abs(c), 0) + 1
        slots += call.numel() * T
        silent += sum(1 for j in range(call.shape[1]) if not call[:, j].any())
        chans += call.shape[1]
    return {"elements": elements, "zero_fraction": zeros / elements,
            "spikes_per_element": spk / elements, "slot_sparsity_global": 1 - spk / slots,
            "slot_sparsity_window": 1 - win / (elements * window),
            "silent_channel_fraction": silent / chans, "spikes": spk, "abs_hist": hist}


# ============================================================================ schema
def _validate_subset(inst, schema, root, path="$"):
    """A validator for the JSON Schema subset report_schema.json uses (when jsonschema is
    not installed): type, enum, required, properties, additionalProperties, items,
    minimum, maximum, minItems, maxItems, minProperties, minLength, pattern, $ref, allOf,
    oneOf."""
    errors = []
    if "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/$defs/"), ref
        return _validate_subset(inst, root["$defs"][ref[8:]], root, path)
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        ok = {"object": lambda x: isinstance(x, dict), "array": lambda x: isinstance(x, list),
              "string": lambda x: isinstance(x, str), "boolean": lambda x: isinstance(x, bool),
              "null": lambda x: x is None,
              "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
              "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)}
        if not any(ok[t](inst) for t in types):
            return [f"{path}: {type(inst).__name__} is not {types}"]
    if "enum" in schema and inst not in schema["enum"]:
        errors.append(f"{path}: {inst!r} not in {schema['enum']}")
    if isinstance(inst, (int, float)) and not isinstance(inst, bool):
        if "minimum" in schema and inst < schema["minimum"]:
            errors.append(f"{path}: {inst} < {schema['minimum']}")
        if "maximum" in schema and inst > schema["maximum"]:
            errors.append(f"{path}: {inst} > {schema['maximum']}")
    if isinstance(inst, str):
        if len(inst) < schema.get("minLength", 0):
            errors.append(f"{path}: too short")
        if "pattern" in schema and not re.search(schema["pattern"], inst):
            errors.append(f"{path}: {inst!r} does not match {schema['pattern']}")
    if isinstance(inst, dict):
        for r in schema.get("required", []):
            if r not in inst:
                errors.append(f"{path}: missing {r!r}")
        if len(inst) < schema.get("minProperties", 0):
            errors.append(f"{path}: too few properties")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for k, v in inst.items():
            if k in props:
                errors += _validate_subset(v, props[k], root, f"{path}.{k}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {k!r}")
            elif isinstance(extra, dict):
                errors += _validate_subset(v, extra, root, f"{path}.{k}")
    if isinstance(inst, list):
        if len(inst) < schema.get("minItems", 0) or len(inst) > schema.get("maxItems", math.inf):
            errors.append(f"{path}: wrong number of items")
        if "items" in schema:
            for i, v in enumerate(inst):
                errors += _validate_subset(v, schema["items"], root, f"{path}[{i}]")
    for sub in schema.get("allOf", []):
        errors += _validate_subset(inst, sub, root, path)
    if "oneOf" in schema:
        n = sum(not _validate_subset(inst, s, root, path) for s in schema["oneOf"])
        if n != 1:
            errors.append(f"{path}: matches {n} of oneOf")
    return errors


def schema_errors(report: dict) -> list[str]:
    schema = load_schema()
    try:
        import jsonschema
    except ImportError:
        return _validate_subset(report, schema, schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    return [f"{e.json_path}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(report)]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "action", "poster"):
                self.refs.append(v)


# ============================================================================ tests
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    rec = make_recording(d / "spikes.h5")
    fid = {"tokens": 3, "float_nll": 1.0, "spiking_nll": 1.25, "top1_agreement": 2 / 3,
           "mean_kl": 0.125, "chars": 4}
    report = build_report(rec, d / "out", fidelity=fid)
    return d / "out", report


def test_report_metrics_match_hand_computation(built):
    out, report = built
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    sp = report["sparsity"]
    assert sp["coding"] == "ternary" and sp["window"] == 3
    for name in CALLS:
        exp, got = hand_metrics(CALLS[name], "ternary"), sp["per_layer"][name]
        for key in ("zero_fraction", "spikes_per_element", "slot_sparsity_global",
                    "slot_sparsity_window", "silent_channel_fraction"):
            assert got[key] == pytest.approx(exp[key], abs=1e-12), (name, key)
        assert got["elements"] == exp["elements"]
        for v, n in exp["abs_hist"].items():
            assert got["abs_count_histogram"][v] == n
    assert sp["per_layer"][Q]["kind"] == "GLA" and sp["per_layer"][G]["kind"] == "MLP"
    pooled = hand_metrics(CALLS[Q] + CALLS[G], "ternary")
    assert sp["pooled"]["zero_fraction"] == pytest.approx(pooled["zero_fraction"])
    assert sp["pooled"]["spikes_per_element"] == pytest.approx(pooled["spikes_per_element"])
    assert sp["pooled"]["slot_sparsity_window"] == pytest.approx(pooled["slot_sparsity_window"])

    en = report["energy"]
    a = en["estimates"]["a_spikingbrain"]
    tokens = 4
    sop = sum(hand_metrics(CALLS[n], "ternary")["spikes"] * OUT[n] for n in CALLS)
    macs = sum(tokens * CALLS[n][0].shape[1] * OUT[n] for n in CALLS)
    assert en["tokens"] == tokens
    assert en["counts"]["synaptic_ops"] == sop and en["counts"]["dense_macs"] == macs
    assert a["snn"]["total_pj"] == pytest.approx(sop * 0.03)
    assert a["snn"]["pj_per_token"] == pytest.approx(sop * 0.03 / tokens)
    assert a["baselines"]["int8_dense"]["total_pj"] == pytest.approx(macs * 0.23)
    assert a["baselines"]["fp16_dense"]["total_pj"] == pytest.approx(macs * 1.5)
    assert a["comparison"]["fp16_dense"]["reduction"] == pytest.approx(1 - sop * 0.03 / (macs * 1.5))
    assert a["comparison"]["int8_dense"]["reduction"] == pytest.approx(1 - sop * 0.03 / (macs * 0.23))
    nz = sum(int((c != 0).sum()) * OUT[n] for n in CALLS for c in CALLS[n])
    assert a["baselines"]["int8_zero_skip"]["total_pj"] == pytest.approx(nz * 0.23)
    for est in en["estimates"].values():     # per token = total / tokens, components add up
        for sc in [est["snn"], *est["baselines"].values()]:
            assert sc["pj_per_token"] == pytest.approx(sc["total_pj"] / tokens)
            assert sum(sc["components_pj"].values()) == pytest.approx(sc["total_pj"])
    sf = en["spikingbrain_formula"]
    assert sf["pj_per_mac_equivalent"] == pytest.approx(pooled["spikes_per_element"] * 0.03)
    # non-spiking operations: counted from the model config, the same in every column
    ns = en["nonspiking"]
    assert ns["total_pj"] == pytest.approx(sum(c["pj"] for c in ns["components"].values()))
    assert ns["components"]["lm_head_macs"]["count"] == tokens * 256 * 32
    assert ns["dense_projections"] == []
    # constants: value, unit, basis, source, as in the shipped profile
    prof = json.loads((REPO / "sbsnn/analysis/profiles/horowitz45.json").read_text())
    vals = en["constants"]["spiking"]["values"]
    assert vals["int8_add"]["value"] == 0.03
    for key, c in prof["constants"].items():
        assert {k: vals[key][k] for k in ("value", "unit", "basis", "source")} == \
               {k: c[k] for k in ("value", "unit", "basis", "source")}
    f = report["fidelity"]
    assert f["float_perplexity"] == pytest.approx(math.e)
    assert f["perplexity_ratio"] == pytest.approx(math.exp(0.25))
    assert report["metadata"]["recording_complete"] is True
    assert report["metadata"]["tokens"] == 4 and report["metadata"]["spiking_layers"] == 2


def test_bitwise_metrics_match_hand_computation(tmp_path):
    rec = make_recording(tmp_path / "b.h5", coding="bitwise", preset="w8aspike")
    report = build_report(rec, tmp_path / "out")
    ns = report["energy"]["nonspiking"]                 # w8aspike leaves down_proj dense
    assert ns["dense_projections"] == ["down_proj"]
    assert ns["components"]["dense_down_proj_macs"]["count"] == 4 * 4 * 48 * 32
    sp = report["sparsity"]
    for name in CALLS:
        exp, got = hand_metrics(CALLS[name], "bitwise"), sp["per_layer"][name]
        for key in ("spikes_per_element", "slot_sparsity_global", "slot_sparsity_window"):
            assert got[key] == pytest.approx(exp[key], abs=1e-12), (name, key)
    sop = sum(hand_metrics(CALLS[n], "bitwise")["spikes"] * OUT[n] for n in CALLS)
    assert report["energy"]["estimates"]["a_spikingbrain"]["snn"]["total_pj"] == pytest.approx(sop * 0.03)
    assert "fidelity" not in report
    assert not schema_errors(report)


def test_report_validates_against_schema(built):
    out, report = built
    errors = schema_errors(json.loads((out / "report.json").read_text()))
    assert not errors, errors[:5]
    schema = load_schema()
    assert schema["properties"]["schema_version"]["enum"] == [report["schema_version"]]
    # the fallback validator agrees (and catches a broken report)
    assert not _validate_subset(report, schema, schema)
    bad = json.loads(json.dumps(report))
    del bad["sparsity"]["pooled"]["zero_fraction"]
    bad["energy"]["constants"]["spiking"]["values"]["int8_add"].pop("source")
    assert len(schema_errors(bad)) >= 2 and len(_validate_subset(bad, schema, schema)) >= 2


def test_html_references_only_files_it_wrote(built):
    out, report = built
    page = (out / "report.html").read_text(encoding="utf-8")
    p = _Refs()
    p.feed(page)
    assert p.refs, "the page shows no image"
    for ref in p.refs:
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I), ref      # no scheme: relative
        assert "/" not in ref and "\\" not in ref and ref != ".."
        assert (out / ref).is_file(), ref
    assert set(p.refs) == set(report["files"]["plots"].values())
    for png in report["files"]["plots"].values():
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert "script" not in p.tags and "link" not in p.tags
    assert not re.search(r"https?://", page, re.I) and "url(" not in page and "@import" not in page
    for text in ("zero_fraction", "slot_sparsity_window", "Horowitz, ISSCC 2014", "pJ/op",
                 "simulated", "Lemaire"):
        assert text in page, text                                   # definitions and sources
    leftovers = [f for f in os.listdir(out) if f.startswith(".")]
    assert not leftovers


def test_format_summary_and_cli(built, tmp_path, capsys):
    from sbsnn.cli import main

    out, report = built
    text = format_summary(report, out / "report.html")
    for s in ("perplexity", "zero counts", "vs INT8", "vs FP16", "(a) SpikingBrain Eq. 24"):
        assert s in text
    rec = make_recording(tmp_path / "r.h5")
    assert main(["report", str(rec), "--out", str(tmp_path / "cli"), "--profile", "loihi2018"]) == 0
    printed = capsys.readouterr().out
    assert "loihi2018" in printed and "report.html" in printed
    rep = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert rep["energy"]["profile"] == "loihi2018" and rep["energy"]["baseline_profile"] == "horowitz45"
    assert rep["energy"]["estimates"]["c_memory"]["snn"]["applicable"] is False
    assert not schema_errors(rep)


def test_profile_from_a_file(tmp_path):
    prof = json.loads((REPO / "sbsnn/analysis/profiles/horowitz45.json").read_text())
    prof["name"] = "my-chip"
    prof["constants"]["int8_add"].update(value=0.06, source="my measurement")
    (tmp_path / "chip.json").write_text(json.dumps(prof))
    rec = make_recording(tmp_path / "p.h5")
    report = build_report(rec, tmp_path / "out", profile=str(tmp_path / "chip.json"))
    en = report["energy"]
    assert en["profile"] == "my-chip" and en["constants"]["spiking"]["profile"] == "my-chip"
    assert en["constants"]["spiking"]["values"]["int8_add"]["source"] == "my measurement"
    sop = en["counts"]["synaptic_ops"]
    assert en["estimates"]["a_spikingbrain"]["snn"]["total_pj"] == pytest.approx(sop * 0.06)
    assert "my measurement" in (tmp_path / "out" / "report.html").read_text()


def test_incomplete_recording_is_flagged(tmp_path):
    rec = Recorder(tmp_path / "i.h5", metadata=json.loads(json.dumps({
        "coding": "ternary", "tokens": 8,
        "layers": {Q: {"in_features": 5, "out_features": 6, "group_size": 128, "bias": True}}})))
    rec.write(Q, CALLS[Q][0].to(torch.int8), torch.ones(2, 1))
    rec.flush()
    rec.close(complete=False)
    report = build_report(tmp_path / "i.h5", tmp_path / "out")
    assert report["metadata"]["recording_complete"] is False
    assert any("INCOMPLETE" in n for n in report["notes"])
    assert report["energy"]["nonspiking"] is None        # no model config: not counted
    assert "INCOMPLETE" in format_summary(report)
    assert not schema_errors(report)


_KILL = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import sbsnn.analysis.report as report
    # SIGKILL while the finished files are moved into place, after two of them
    real, n, out = os.replace, [0], Path(sys.argv[2]).resolve()
    def replace(a, b):
        if Path(b).resolve().parent == out:
            n[0] += 1
            if n[0] > 2:
                os.kill(os.getpid(), signal.SIGKILL)
        real(a, b)
    os.replace = replace
    report.build_report(sys.argv[1], sys.argv[2])
""")


def test_killed_report_leaves_no_complete_looking_report(tmp_path):
    rec = make_recording(tmp_path / "k.h5")
    out = tmp_path / "out"
    build_report(rec, out)                      # a previous, complete report
    r = subprocess.run([sys.executable, "-c", _KILL, str(rec), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    # killed while moving files in: the old report.json went first, the new one comes last
    assert not (out / "report.json").exists()
    assert not (out / "report.html").exists()


def test_interrupted_report_keeps_the_previous_one(tmp_path, monkeypatch):
    import sbsnn.analysis.plots as plots

    rec = make_recording(tmp_path / "f.h5")
    out = tmp_path / "out"
    build_report(rec, out)
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_energy", boom)     # interrupted while writing
    with pytest.raises(KeyboardInterrupt):
        build_report(rec, out)
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # no temp dir left
    with pytest.raises(KeyboardInterrupt):
        build_report(rec, tmp_path / "fresh")
    assert os.listdir(tmp_path / "fresh") == []


def test_spike_raster_and_plots_accept_plain_data(tmp_path):
    from sbsnn.analysis import plots

    counts = torch.tensor([[0, 3, -2, 1], [-1, 0, 2, 0], [4, -4, 0, 0]])
    p = plots.plot_spike_raster(counts, "ternary", tmp_path / "r.png", layer="x", max_channels=3)
    assert p.read_bytes()[:8] == PNG_MAGIC
    p = plots.plot_spike_raster(counts, "bitwise", tmp_path / "b.png", channels=[0, 1])
    assert p.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plots.plot_spike_raster(torch.zeros(0, 3, dtype=torch.int64), "ternary", tmp_path / "e.png")


# ============================================================================ sweep
def test_sweep_rows_and_files(tmp_path):
    from sbsnn.analysis import SparsityCollector
    from sbsnn.runs.sweep import format_sweep, save_sweep, sweep
    from sbsnn.converters import convert
    from sbsnn.sim import simulate

    torch.manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY)).eval()
    model.tokenizer = ByteTokenizer()
    text = "To be, or not to be, that is the question."
    rows = sweep(model, text, ks=(2, 3))
    assert [r["k"] for r in rows] == [2.0, 3.0]
    for r in rows:
        assert r["perplexity_ratio"] == pytest.approx(r["spiking_perplexity"] / r["float_perplexity"])
        assert 0 <= r["top1_agreement"] <= 1 and r["mean_kl"] >= 0
        assert r["tokens"] == len(text)
        e = r["energy"]
        assert e["reduction_vs_fp16"] == pytest.approx(1 - e["snn_pj"] / e["fp16_dense_pj"])
    assert rows[1]["reference"]["sparsity"] == 0.692 and rows[1]["reference"]["avg_score"] == 0.6875
    assert rows[0]["sparsity"]["zero_fraction"] > rows[1]["sparsity"]["zero_fraction"]
    # the hooks see the counts the event-driven simulation sees
    col = SparsityCollector("ternary", model.config)
    snn = convert(model, preset="paper", coding="ternary", k=3.0)
    sim = simulate(snn, text, backend="torch", record=col, block_size=256, return_logits=False)
    pooled = col.report().pooled
    for key, v in rows[1]["sparsity"].items():
        assert v == pytest.approx(pooled[key]), key
    t = sim.totals()
    assert rows[1]["energy"]["snn_pj"] == pytest.approx(t["synaptic_ops"] * 0.03)
    table = format_sweep(rows)
    assert "0.692" in table and "0.6875" in table
    doc = save_sweep(rows, tmp_path / "sw", {"text": "inline"})
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text()) == doc
    assert (tmp_path / "sw" / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert doc["reference"]["sparsity"] == [0.730, 0.709, 0.692, 0.677, 0.664]


def test_sweep_cli(tmp_path, capsys):
    from sbsnn.cli import main
    from sbsnn.models import save_pretrained

    torch.manual_seed(1)
    save_pretrained(HybridForCausalLM(HybridConfig(**TINY)).eval(), tmp_path / "ckpt")
    (tmp_path / "t.txt").write_text("Friends, Romans, countrymen, lend me your ears.")
    assert main(["sweep", str(tmp_path / "ckpt"), "--k", "2.5", "4", "--text", str(tmp_path / "t.txt"),
                 "--out", str(tmp_path / "o"), "--max-chars", "30", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "7B spars." in printed and "0.709" in printed and "sweep.png" in printed
    doc = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [r["k"] for r in doc["rows"]] == [2.5, 4.0] and doc["rows"][0]["chars"] == 30


# ----------------------------------------------------------------------- traced runs
def test_a_traced_run_reports_events_per_step_and_steps_per_token(tmp_path):
    from sbsnn.converters import convert
    from sbsnn.sim import TraceSpec, simulate

    torch.manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**TINY)).eval()
    snn = convert(model, "paper", coding="ternary", group_size=16)
    snn.tokenizer = ByteTokenizer()
    rec = tmp_path / "traced.h5"
    res = simulate(snn, "To be, or not to be, that is the question", backend="torch", record=rec,
                   block_size=16, trace=TraceSpec(("model.layers.1.*",), tokens=8))
    report = build_report(rec, tmp_path / "out")
    assert not schema_errors(report)
    tr = report["trace"]["layers"]
    assert list(tr) == list(res.traces)
    for name, d in tr.items():
        c = res.layers[name]
        assert sum(d["events_pos_per_step"]) == c.events_pos and sum(d["events_neg_per_step"]) == c.events_neg
        assert d["events_per_step"] == [a + b for a, b in zip(d["events_pos_per_step"], d["events_neg_per_step"])]
        assert len(d["events_per_step"]) == d["steps_max"] == c.time_steps_max
        assert sum(d["steps_per_token_histogram"]) == d["tokens"] == c.tokens
        spt = res.traces[name].steps_per_token()
        assert d["steps_per_token_histogram"] == torch.bincount(spt).tolist()
        assert d["steps_per_token_max"] == int(spt.max()) and d["calls"] == c.calls
        assert d["output_tokens"] == 8 and d["silent_tokens"] == int((spt == 0).sum())
    plots = report["files"]["plots"]
    for key in ("events_per_step", "steps_per_token"):
        assert (tmp_path / "out" / plots[key]).read_bytes()[:8] == PNG_MAGIC
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Time-resolved trace" in html and "model.layers.1.attn.q_proj" in html


def test_an_untraced_run_has_no_trace_section_or_plots(built):
    out, report = built
    assert "trace" not in report
    assert not set(report["files"]["plots"]) & {"events_per_step", "steps_per_token"}
    assert not (out / "events_per_step.png").exists()


def test_plots_and_sections_never_import_the_report():
    """report -> plots -> sections and report -> sections: imports run one way."""
    import ast

    for mod in ("plots.py", "sections.py"):
        tree = ast.parse((REPO / "sbsnn" / "analysis" / mod).read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(n.startswith("sbsnn.analysis.report") for n in names), (mod, names)
        if mod == "sections.py":
            assert not any(n.startswith("sbsnn.analysis.plots") for n in names)
    code = ("import sys, sbsnn.analysis.plots; "
            "assert 'sbsnn.analysis.report' not in sys.modules, 'plots pulled in the report'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
