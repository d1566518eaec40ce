"""Calibration under a spike budget (sbsnn.calibrate, sbsnn convert --calibrate).

The budget holds on the calibration text (measured by the event-driven simulator, not by
calibration's own bookkeeping); smoothing folded into the producers leaves the float
model's logits unchanged, in the embedded model and in a Gemma 3 model built by
transformers; a calibrated checkpoint saves, loads and simulates bit-identically; on the
embedded model calibration at plain k = 3's budget does not lose to plain k = 3 in KL on
text it did not see.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sbsnn
from sbsnn.analysis.fidelity import fidelity
from sbsnn.cli import main
from sbsnn.converters import SpikingLinear, convert, load_spiking, read_spiking_config, save_spiking
from sbsnn.converters.calibration import find_groups, fold, text_blocks
from sbsnn.converters.calibration.allocate import allocate, spent
from sbsnn.converters.calibration.groups import tie_for_producer
from sbsnn.converters.calibration.measure import Tables
from sbsnn.converters.convert import plan
from sbsnn.data import heldout_text
from sbsnn.models.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = heldout_text()
CAL, EVAL = TEXT[: len(TEXT) // 2], TEXT[len(TEXT) // 2:]
SMALL = dict(fisher_tokens=512, max_tokens=1536)


@pytest.fixture(scope="module")
def tiny():
    return sbsnn.load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def calibrated(tiny):
    return sbsnn.calibrate(tiny, CAL, "k=3", coding="ternary", **SMALL)


def _spiking_k(model) -> dict[str, float]:
    return {n: m.k for n, m in model.named_modules() if isinstance(m, SpikingLinear)}


# ============================================================================ the budget
def test_budget_holds_on_the_calibration_text_as_the_simulator_counts(tiny, calibrated):
    r = calibrated.calibration_report
    plain = convert(tiny, "paper", "ternary", 3.0)
    sim_plain = sbsnn.simulate(plain, CAL, block_size=256, max_tokens=SMALL["max_tokens"],
                               return_logits=False).totals()
    sim_cal = sbsnn.simulate(calibrated, CAL, block_size=256, max_tokens=SMALL["max_tokens"],
                             return_logits=False).totals()
    # the budget is what plain k = 3 spends there, as the simulator counts it ...
    assert r["budget"] == pytest.approx(sim_plain["spikes_per_element"], rel=1e-12)
    # ... and the calibrated model spends at most that, by the same count
    assert sim_cal["spikes_per_element"] <= r["budget"]
    assert r["spikes_per_element"] == pytest.approx(sim_cal["spikes_per_element"], rel=1e-12)
    # per-layer k really differ (allocation happened), and the record says so
    ks = _spiking_k(calibrated)
    assert len(set(ks.values())) > 1
    assert {n: calibrated.spiking_config.k_of(n) for n in ks} == ks


@pytest.mark.parametrize("coding, budget", [("bitwise", 1.0), ("twos_complement", 2.0)])
def test_budget_holds_for_other_codings_and_a_numeric_budget(tiny, coding, budget):
    snn = sbsnn.calibrate(tiny, CAL, budget, coding=coding, fisher_tokens=256, max_tokens=1024)
    sim = sbsnn.simulate(snn, CAL, block_size=256, max_tokens=1024, return_logits=False).totals()
    assert sim["spikes_per_element"] <= budget
    assert snn.calibration_report["spikes_per_element"] == pytest.approx(sim["spikes_per_element"],
                                                                         rel=1e-12)
    assert snn.calibration_report["budget"] == budget
    assert snn.spiking_config.coding == coding


def test_layer_records_are_per_layer_and_consistent(calibrated):
    r = calibrated.calibration_report
    names = set(_spiking_k(calibrated))
    assert set(r["layers"]) == names
    for n, d in r["layers"].items():
        assert d["after"]["k"] == pytest.approx(calibrated.get_submodule(n).k)
        assert d["before"]["k"] == pytest.approx(r["plain_k"])
        assert 0 < d["after"]["local_error"] < 1 and 0 < d["before"]["local_error"] < 1
    consumers = [c for g in r["groups"] for c in g["consumers"]]
    assert sorted(consumers) == sorted(names)     # every spiking layer in exactly one group


# ============================================================================ fidelity
def test_calibration_does_not_lose_to_plain_k3_in_kl_on_held_out_text(tiny, calibrated):
    plain = convert(tiny, "paper", "ternary", 3.0)
    f_plain = fidelity(tiny, plain, EVAL)
    f_cal = fidelity(tiny, calibrated, EVAL)
    assert f_cal.mean_kl <= f_plain.mean_kl


def test_the_float_model_is_not_modified(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    sbsnn.calibrate(tiny, CAL, "k=3", fisher_tokens=256, max_tokens=512)
    after = tiny.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad or p.grad is None for p in tiny.parameters())


# ============================================================================ folding
def _fold_all(model, seed=0):
    names = plan(model, "paper", "ternary", 3.0, 128, None, None).targets
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    groups = find_groups(model, names, ids)
    gen = torch.Generator().manual_seed(seed)
    kinds = set()
    for g in groups:
        if g.foldable:
            s = torch.exp(torch.randn(g.in_features, generator=gen, dtype=torch.float64))
            fold(model, g, tie_for_producer(g, s))
            kinds.add(g.kind)
    return ids, kinds


def _check_fold_preserves_logits(model, expect_kinds):
    import copy

    work = copy.deepcopy(model)
    ids, kinds = _fold_all(work)
    assert expect_kinds <= kinds
    with torch.no_grad():
        ref, got = model(ids), work(ids)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    # the smoothing did act: the weights the consumers read changed
    changed = [n for n, p in work.named_parameters()
               if not torch.allclose(p, model.get_parameter(n), rtol=1e-3, atol=1e-6)]
    assert changed


def test_folded_smoothing_leaves_the_embedded_models_logits_unchanged(tiny):
    _check_fold_preserves_logits(tiny, {"norm", "v_rows", "up_rows", "gate_rows", "g_norm"})


def test_folded_smoothing_leaves_a_gemma3_models_logits_unchanged(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=97, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    model = sbsnn.load_model(tmp_path)
    assert model.model.layers[0].attn_norm.style == "gemma"   # the (1 + w) norm is folded
    _check_fold_preserves_logits(model, {"norm", "v_rows", "up_rows"})
    ids = torch.arange(20)[None] % 97
    with torch.no_grad():
        ref = hf(ids).logits
    import copy
    work = copy.deepcopy(model)
    _fold_all(work)
    with torch.no_grad():
        got = work(ids)
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5   # against transformers


def test_gqa_smoothing_must_be_shared_by_the_query_heads_of_a_kv_head(tiny):
    import copy

    work = copy.deepcopy(tiny)
    names = plan(work, "paper", "ternary", 3.0, 128, None, None).targets
    groups = find_groups(work, names, torch.zeros(1, 8, dtype=torch.long))
    g = next(g for g in groups if g.kind == "v_rows")
    with pytest.raises(ValueError, match="GQA"):
        fold(work, g, torch.linspace(0.5, 2, g.in_features))


# ============================================================================ checkpoints
def test_calibrated_checkpoint_saves_loads_and_simulates_bit_identically(calibrated, tmp_path):
    save_spiking(calibrated, tmp_path / "cal")
    back = load_spiking(tmp_path / "cal")
    assert _spiking_k(back) == _spiking_k(calibrated)
    scfg = read_spiking_config(tmp_path / "cal")
    assert scfg.calibration["spike_budget"] == calibrated.calibration_report["budget"]
    ids = torch.tensor([calibrated.tokenizer.encode(EVAL[:300])])
    with torch.no_grad():
        mem, disk = calibrated(ids), back(ids)
    assert torch.equal(mem, disk)
    sim = sbsnn.simulate(back, ids)              # event path, one pass
    assert torch.equal(sim.logits, disk[0])


def test_spiking_config_layer_k_is_validated(calibrated, tmp_path):
    d = save_spiking(calibrated, tmp_path / "cal")
    p = d / "spiking_config.json"
    doc = json.loads(p.read_text())
    name = next(iter(doc["layer_k"]))
    for bad, match in (({**doc["layer_k"], name: -1.0}, "layer_k"),
                       ({**doc["layer_k"], "model.layers.9.nope": 3.0}, "layer_k"),
                       ({**doc["layer_k"], name: "x"}, "layer_k")):
        p.write_text(json.dumps({**doc, "layer_k": bad}))
        with pytest.raises((CheckpointError, ValueError), match=match):
            load_spiking(d)


def test_format_1_checkpoints_without_layer_k_still_load(tiny, tmp_path):
    snn = convert(tiny, "paper", "ternary", 2.5)
    d = save_spiking(snn, tmp_path / "v1")
    p = d / "spiking_config.json"
    doc = json.loads(p.read_text())
    for key in ("layer_k", "calibration"):
        doc.pop(key, None)
    doc["format_version"] = 1
    p.write_text(json.dumps(doc))
    back = load_spiking(d)
    assert set(_spiking_k(back).values()) == {2.5}


# ============================================================================ allocation
@st.composite
def _tables(draw):
    n_groups = draw(st.integers(1, 3))
    out, elements = {}, {}
    kgrid = np.array([1.0, 2.0, 4.0, 8.0])
    for g in range(n_groups):
        C = draw(st.integers(1, 2))
        # distortion falls and spikes rise with k, as measured tables do
        d0 = np.array(draw(st.lists(st.floats(0.1, 10), min_size=C, max_size=C)))
        s0 = np.array(draw(st.lists(st.floats(0.1, 2), min_size=C, max_size=C)))
        dist = d0[:, None] / kgrid[None] ** draw(st.floats(1.0, 2.0))
        spk = s0[:, None] * kgrid[None] ** draw(st.floats(0.5, 1.0))
        out[f"g{g}"] = Tables(kgrid=kgrid, distortion=dist, spikes=spk, tokens=1)
        elements[f"g{g}"] = draw(st.integers(1, 5))
    return out, elements


@settings(max_examples=60, deadline=None)
@given(_tables(), st.floats(0.2, 1.5))
def test_allocation_is_optimal_at_its_own_spending(te, frac):
    """A Lagrangian choice minimises distortion among all choices spending no more than it
    does (checked by brute force over every combination)."""
    tables, elements = te
    lo = spent(tables, elements, {g: (int(np.argmin(t.spikes[:, 0])), 0) for g, t in tables.items()})
    budget = lo * (1 + 4 * frac)
    choices = allocate(tables, elements, budget)
    pick = {g: (c.candidate, int(np.searchsorted(tables[g].kgrid, c.k))) for g, c in choices.items()}
    mine_s = spent(tables, elements, pick)
    mine_d = sum(tables[g].distortion[c, i] for g, (c, i) in pick.items())
    assert mine_s <= budget * (1 + 1e-12)
    options = [[(c, i) for c in range(t.distortion.shape[0]) for i in range(4)] for t in tables.values()]
    for combo in itertools.product(*options):
        p = dict(zip(tables, combo))
        if spent(tables, elements, p) <= mine_s * (1 + 1e-12):
            assert sum(tables[g].distortion[c, i] for g, (c, i) in p.items()) >= mine_d * (1 - 1e-9)


# ============================================================================ input checks
@pytest.mark.parametrize("budget, match", [(0, "spike_budget"), (-1, "spike_budget"),
                                           (math.inf, "spike_budget"), ("k=0", "k"),
                                           ("fast", "spike budget"), (True, "spike_budget"),
                                           ("3 4", "'3 4'"), ("k=3 4", "'k=3 4'"),
                                           ("k=1e6", "bound is 1000")])
def test_bad_budgets_are_refused_by_name(tiny, budget, match):
    with pytest.raises(ValueError, match=match):
        sbsnn.calibrate(tiny, CAL, budget)


def test_a_budget_is_parsed_once_to_a_typed_value():
    from sbsnn.converters.calibration import SpikeBudget

    assert SpikeBudget.parse(" k = 2.5 ") == SpikeBudget.at_k(2.5) == SpikeBudget(plain_k=2.5)
    assert SpikeBudget.parse("1.75") == SpikeBudget.of(1.75) == SpikeBudget(spikes_per_element=1.75)
    assert SpikeBudget.of(SpikeBudget.at_k(3)) == SpikeBudget(plain_k=3.0)
    with pytest.raises(ValueError, match="exactly one"):
        SpikeBudget(spikes_per_element=1.0, plain_k=3.0)


def test_bad_options_are_refused_by_name(tiny):
    with pytest.raises(ValueError, match="coding"):
        sbsnn.calibrate(tiny, CAL, "k=3", coding="morse")
    with pytest.raises(ValueError, match="fisher_tokens"):
        sbsnn.calibrate(tiny, CAL, "k=3", fisher_tokens=0)
    with pytest.raises(ValueError, match="fewer than two tokens"):
        sbsnn.calibrate(tiny, "a", "k=3")
    with pytest.raises(ValueError, match="strings"):
        sbsnn.calibrate(tiny, [b"bytes"], "k=3")


def test_a_spiking_model_given_as_the_float_one_is_refused_in_those_words(tiny):
    with pytest.raises(ValueError, match="needs the float model"):
        sbsnn.calibrate(convert(tiny), CAL, "k=3")


def test_a_budget_below_what_the_smallest_k_spends_is_refused(tiny):
    with pytest.raises(ValueError, match="budget"):
        sbsnn.calibrate(tiny, CAL, 1e-4, fisher_tokens=256, max_tokens=512)


def test_text_blocks_follow_documents_and_the_token_limit(tiny):
    blocks = text_blocks(tiny, ["a" * 300, "b" * 300, "c" * 300], max_tokens=700, block_size=256)
    assert [sum(b.shape[1] for b in doc) for doc in blocks] == [300, 300, 100]
    assert [b.shape[1] for b in blocks[0]] == [256, 44]


# ============================================================================ CLI
def test_cli_convert_calibrate_writes_checkpoint_and_report(tmp_path, capsys):
    cal, ev = tmp_path / "cal.txt", tmp_path / "eval.txt"
    cal.write_text(CAL)
    ev.write_text(EVAL[:1200])
    out = tmp_path / "out"
    assert main(["convert", "tiny-hybrid", str(out), "--calibrate", str(cal), "--spike-budget",
                 "k=3", "--calibration-tokens", "1024", "--eval", str(ev), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "0.attn.q_proj" in text and "overall on" in text and "calibrated" in text
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["overall"]["before"]["tokens"] == rep["overall"]["after"]["tokens"] > 1000
    assert rep["spikes_per_element"] <= rep["budget"]
    assert set(rep["layers"]) == set(_spiking_k(load_spiking(out)))
    assert "held out" in rep["overall"]["text"]
    assert rep["refinement"] is None and rep["methods"]["refine_epochs"] == 0


def test_cli_convert_calibrate_refines_and_removes_its_state_file(tmp_path, capsys):
    cal = tmp_path / "cal.txt"
    cal.write_text(CAL)
    state, out = tmp_path / "refine.pt", tmp_path / "out"
    assert main(["convert", "tiny-hybrid", str(out), "--calibrate", str(cal),
                 "--calibration-tokens", "768", "--refine-epochs", "2", "--refine-state",
                 str(state), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "refined" in text and "2 epochs" in text
    rep = json.loads((out / "calibration.json").read_text())
    assert rep["refinement"]["epochs"] == 2 and len(rep["refinement"]["kl_per_epoch"]) == 2
    assert read_spiking_config(out).calibration["refine_epochs"] == 2
    assert not state.exists()     # removed once calibration returned


@pytest.mark.parametrize("argv, match", [
    (["--spike-budget", "1.0"], "--spike-budget needs --calibrate"),
    (["--calib", "x.txt"], "renamed --eval"),
    (["--calibrate", "missing.txt"], "missing.txt"),
    (["--refine-epochs", "2"], "--refine-epochs needs --calibrate"),
    (["--refine-state", "s.pt"], "--refine-state needs --calibrate"),
    (["--calibrate", "CAL", "--refine-epochs", "1000000000000"], "--refine-epochs 1000000000000 is refused"),
    (["--calibrate", "CAL", "--spike-budget", "3 4"], "spike budget '3 4'"),
])
def test_cli_convert_refuses_calibration_misuse_by_name(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    (tmp_path / "cal.txt").write_text(CAL[:1500])
    argv = [str(tmp_path / "cal.txt") if a == "CAL" else a for a in argv]
    assert main(["convert", "tiny-hybrid", str(out), "--quiet", *argv]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_sweep_with_spike_budgets_adds_calibrated_rows_and_the_spike_plot(tmp_path, capsys):
    cal, ev = tmp_path / "cal.txt", tmp_path / "eval.txt"
    cal.write_text(CAL[:1500])
    ev.write_text(EVAL[:800])
    out = tmp_path / "sweep"
    assert main(["sweep", "tiny-hybrid", "--k", "3", "--text", str(ev), "--calibrate", str(cal),
                 "--spike-budget", "2.5", "--calibration-tokens", "768", "--out", str(out),
                 "--quiet"]) == 0
    doc = json.loads((out / "sweep.json").read_text())
    methods = [r["method"] for r in doc["rows"]]
    assert methods == ["plain", "calibrated"]
    cal_row = doc["rows"][1]
    assert cal_row["spike_budget"] == 2.5 and cal_row["reference"] is None
    assert cal_row["calibration"]["spikes_per_element"] <= 2.5
    assert (out / "sweep_spikes.png").stat().st_size > 1000
    assert "cal 2.5/el" in capsys.readouterr().out
    assert main(["sweep", "tiny-hybrid", "--spike-budget", "2", "--out", str(out), "--quiet"]) == 2


def test_the_format_docs_snippet_reads_a_calibrated_layer_with_its_own_k(calibrated, tmp_path):
    """docs/spiking-checkpoint.md's numpy reader (no sbsnn) gives a calibrated layer's
    output: it must take the layer's k from layer_k."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "spiking-checkpoint.md").read_text()
    code = re.search(r"<!-- snippet: read-one-layer -->\s*```python\n(.*?)```", doc, re.S).group(1)
    d = save_spiking(calibrated, tmp_path / "cal")
    scfg = read_spiking_config(d)
    layer = next(n for n in scfg.targets if n in scfg.layer_k)
    sl = calibrated.get_submodule(layer)
    x = torch.randn(5, sl.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = sl(x).numpy()
    scope = {"ckpt": str(d), "layer": layer, "x": x.numpy()}
    exec(compile(code, "<docs snippet>", "exec"), scope)
    assert np.abs(scope["y"] - want).max() <= 1e-5 * np.abs(want).max()
