"""Energy profiles, the three energy estimates and the non-spiking operation counts.

Expected numbers are written by hand from the formulas (spikingbrain.md section 5 and
the docstring of sbsnn/analysis/energy.py), never computed with the code under test.
"""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from sbsnn.analysis.energy import (BASES, ProfileError, estimate_energy, list_profiles,
                                   load_profile, spikingbrain_energy_per_mac)
from sbsnn.analysis.opcount import nonspiking_ops, visible_keys
from sbsnn.models.config import HybridConfig

SHIPPED = ("horowitz45", "loihi2018", "truenorth2014")


def layer(name="l", n_in=4, n_out=3, tokens=2, nonzero=3, pos=4, neg=1, T=2, calls=1,
          silent=0, **extra):
    """A counters dict as LayerCounters.to_dict() gives it (one global T for all calls)."""
    elements = tokens * n_in
    return {"name": name, "in_features": n_in, "out_features": n_out, "calls": calls,
            "tokens": tokens, "elements": elements, "nonzero": nonzero, "events_pos": pos,
            "events_neg": neg, "time_steps_max": T, "slots": elements * T,
            "silent_channels": silent, "channel_calls": n_in * calls, **extra}


def sram(bits):  # Lemaire's fit, by hand: 1.09e-5 pJ per bit of capacity + 13.2 pJ
    return 1.09e-5 * bits + 13.2


# ----------------------------------------------------------------------------- SpikingBrain
def test_spikingbrain_golden_values():
    r = spikingbrain_energy_per_mac(1.13)
    assert r["pj_per_mac_equivalent"] == pytest.approx(0.0339, abs=1e-12)  # 1.13 x 0.03
    # Reductions as the report prints them (truncated to 0.1 %): -97.7 % and -85.2 %.
    assert r["reduction_vs_fp16_pct_printed"] == 97.7
    assert r["reduction_vs_int8_pct_printed"] == 85.2
    assert r["reduction_vs_fp16"] == pytest.approx(1 - 0.0339 / 1.5)
    assert r["reduction_vs_int8"] == pytest.approx(1 - 0.0339 / 0.23)
    # Direct ratios (MAC / energy) to one decimal: 44.2x and 6.8x ...
    assert round(r["ratio_vs_fp16"], 1) == 44.2
    assert round(r["ratio_vs_int8"], 1) == 6.8
    # ... while the report's 43.48x / 6.76x are 1 / (1 - printed reduction).
    assert round(r["ratio_vs_fp16_printed"], 2) == 43.48
    assert round(r["ratio_vs_int8_printed"], 2) == 6.76
    assert round(1 / (1 - 0.977), 2) == 43.48 and round(1 / (1 - 0.852), 2) == 6.76


def test_estimate_a_per_mac_equivalent_is_the_spikingbrain_formula():
    # 100 elements, 113 events (some negative): 1.13 spikes per element.
    L = layer(n_in=10, n_out=7, tokens=10, nonzero=80, pos=100, neg=13, T=3)
    rep = estimate_energy([L], "bitwise")
    a = rep.totals["estimates"]["a_spikingbrain"]
    assert a["pj_per_mac_equivalent"] == pytest.approx(0.0339)
    assert a["snn"]["total_pj"] == pytest.approx(113 * 7 * 0.03)
    assert a["fp16_dense"]["total_pj"] == pytest.approx(10 * 10 * 7 * 1.5)
    assert a["int8_dense"]["total_pj"] == pytest.approx(10 * 10 * 7 * 0.23)
    assert a["int8_zero_skip"]["total_pj"] == pytest.approx(80 * 7 * 0.23)
    assert a["comparison"]["fp16_dense"]["reduction"] == pytest.approx(1 - 0.0339 / 1.5)
    assert a["comparison"]["int8_dense"]["ratio"] == pytest.approx(0.23 / 0.0339)


# ----------------------------------------------------------------------------- Lemaire (c)
def test_memory_aware_terms_two_layer_hand_example():
    # Layer 1: 4 -> 3, 2 tokens, 1 call, ternary T = 2: theta = 4 + 1 = 5 events, S = 2 x 2
    # token-steps, 2 of 4 channels silent. Layer 2: 3 -> 2, T = 3, theta = 6 + 3 = 9,
    # S = 6, no silent channel, no bias. One group each (group_size 128). Blocks of 8 B.
    L1 = layer("l1", 4, 3, tokens=2, nonzero=3, pos=4, neg=1, T=2, silent=2)
    L2 = layer("l2", 3, 2, tokens=2, nonzero=6, pos=6, neg=3, T=3, silent=0, bias=False)
    rep = estimate_energy([L1, L2], "ternary", block_bytes=8, weight_memory="dram")
    s1, s2 = (L["estimates"]["c_memory"]["snn"] for L in rep.per_layer)

    # Counts, term by term (Lemaire: theta N_out adds and weight reads, theta input reads,
    # theta N_out + T N_out potential reads and writes each, outputs written once).
    assert s1["counts"]["synaptic_ops"] == 15 and s2["counts"]["synaptic_ops"] == 18
    assert s1["counts"]["weight_reads"] == 15 and s2["counts"]["weight_reads"] == 18
    assert s1["counts"]["input_reads"] == 5 and s2["counts"]["input_reads"] == 9
    assert s1["counts"]["accumulator_reads"] == 15 + 4 * 3   # 27
    assert s1["counts"]["accumulator_writes"] == 27
    assert s2["counts"]["accumulator_reads"] == 18 + 6 * 2   # 30
    assert s1["counts"]["output_writes"] == 6 and s2["counts"]["output_writes"] == 4
    # Active rows x ceil(N_out bytes / 8 B): (4 - 2) x 1 and 3 x 1.
    assert s1["counts"]["weight_blocks"] == 2 and s2["counts"]["weight_blocks"] == 3
    assert s1["counts"]["shifts"] == 0  # ternary: every step weighs 1

    # Energies, term by term. SRAM capacities: weight row N_out x 8 bits, potentials
    # G x N_out x 32, inputs N_in x 8, outputs N_out x 16. A 8-byte block = one 64-bit
    # DRAM access = 1300 pJ.
    c1, c2 = s1["components_pj"], s2["components_pj"]
    assert c1["compute"] == pytest.approx(15 * 0.1)
    assert c1["weight_reads"] == pytest.approx(15 * sram(24))
    assert c2["weight_reads"] == pytest.approx(18 * sram(16))
    assert c1["weight_fetch"] == pytest.approx(2 * 1300)
    assert c2["weight_fetch"] == pytest.approx(3 * 1300)
    assert c1["input_reads"] == pytest.approx(5 * sram(32))
    assert c2["input_reads"] == pytest.approx(9 * sram(24))
    assert c1["accumulator_reads"] == pytest.approx(27 * sram(96))
    assert c1["accumulator_writes"] == pytest.approx(27 * sram(96))
    assert c2["accumulator_writes"] == pytest.approx(30 * sram(64))
    assert c1["output_writes"] == pytest.approx(6 * sram(48))
    assert c2["output_writes"] == pytest.approx(4 * sram(32))
    # Threshold (FP16): adds 2 x elements, mults 2 x tokens + elements.
    assert c1["threshold"] == pytest.approx(16 * 0.4 + 12 * 1.1)
    assert c2["threshold"] == pytest.approx(12 * 0.4 + 10 * 1.1)
    # Rescale (FP32): per token and output, G + 1 mults and G - 1 + bias adds.
    assert c1["rescale"] == pytest.approx(6 * 2 * 3.7 + 6 * 1 * 0.9)
    assert c2["rescale"] == pytest.approx(4 * 2 * 3.7 + 4 * 0 * 0.9)
    expected1 = (1.5 + 15 * sram(24) + 2600 + 5 * sram(32) + 2 * 27 * sram(96) + 6 * sram(48)
                 + 16 * 0.4 + 12 * 1.1 + 12 * 3.7 + 6 * 0.9)
    assert s1["total_pj"] == pytest.approx(expected1)
    total = rep.totals["estimates"]["c_memory"]["snn"]
    assert total["total_pj"] == pytest.approx(s1["total_pj"] + s2["total_pj"])
    assert total["counts"]["weight_blocks"] == 5

    # Dense FP16 (ANN side of Lemaire): N_in N_out MACs and weight reads, every row fetched.
    d1 = rep.per_layer[0]["estimates"]["c_memory"]["fp16_dense"]
    assert d1["counts"]["macs"] == 24 and d1["counts"]["weight_reads"] == 24
    assert d1["counts"]["weight_blocks"] == 4          # 4 rows x ceil(3 x 2 B / 8 B)
    assert d1["counts"]["input_reads"] == 8 and d1["counts"]["accumulator_reads"] == 0
    assert d1["total_pj"] == pytest.approx(24 * 1.5 + 24 * sram(48) + 4 * 1300 + 8 * sram(64)
                                           + 6 * sram(48))
    # INT8 zero-skipping: nonzero x N_out MACs, silent channels' rows skipped.
    z1 = rep.per_layer[0]["estimates"]["c_memory"]["int8_zero_skip"]
    assert z1["counts"]["macs"] == 9 and z1["counts"]["weight_reads"] == 9
    assert z1["counts"]["weight_blocks"] == 2


def test_bitwise_shift_is_one_per_accumulator_per_token_step():
    L = layer(n_in=300, n_out=5, tokens=2, nonzero=100, pos=150, neg=50, T=4)  # G = 3
    b = estimate_energy([L], "bitwise").per_layer[0]["estimates"]["b_arithmetic"]["snn"]
    assert b["counts"]["shifts"] == (2 * 4) * 5 * 3
    assert b["components_pj"]["shift"] == pytest.approx(120 * 0.1)
    assert b["components_pj"]["compute"] == pytest.approx(200 * 5 * 0.1)  # INT32 adds
    t = estimate_energy([L], "ternary").per_layer[0]["estimates"]["b_arithmetic"]["snn"]
    assert t["counts"]["shifts"] == 0


def test_hbm_and_sram_weight_tiers():
    L = layer(n_in=4, n_out=40, tokens=1, nonzero=2, pos=2, neg=0, T=1, silent=2)
    hbm = estimate_energy([L], "ternary", block_bytes=32, weight_memory="hbm")
    s = hbm.per_layer[0]["estimates"]["c_memory"]["snn"]
    assert s["counts"]["weight_blocks"] == 2 * 2          # ceil(40 B / 32 B) = 2 per row
    assert s["components_pj"]["weight_fetch"] == pytest.approx(4 * 32 * 8 * 3.97)
    on_chip = estimate_energy([L], "ternary", weight_memory="sram")
    s = on_chip.per_layer[0]["estimates"]["c_memory"]["snn"]
    assert s["counts"]["weight_blocks"] == 0 and s["components_pj"]["weight_fetch"] == 0
    assert s["components_pj"]["weight_reads"] == pytest.approx(80 * sram(4 * 40 * 8))


# ----------------------------------------------------------------------------- events
def test_negative_spikes_are_events_not_dense_macs():
    pos_only = layer(n_in=8, n_out=6, tokens=1, nonzero=3, pos=3, neg=0)
    mixed = layer(n_in=8, n_out=6, tokens=1, nonzero=3, pos=3, neg=2)
    r0, r1 = (estimate_energy([x], "ternary").per_layer[0] for x in (pos_only, mixed))
    assert r1["counts"]["events"] == 5 and r1["counts"]["synaptic_ops"] == 30
    for est in ("a_spikingbrain", "b_arithmetic", "c_memory"):
        assert r1["estimates"][est]["snn"]["counts"]["synaptic_ops"] == 30
    a0 = r0["estimates"]["a_spikingbrain"]["snn"]["total_pj"]
    a1 = r1["estimates"]["a_spikingbrain"]["snn"]["total_pj"]
    assert a0 == pytest.approx(3 * 6 * 0.03) and a1 == pytest.approx(5 * 6 * 0.03)
    # Not charged as dense MACs: 48 MACs at 0.23 pJ would be 11.04 pJ.
    assert a1 < r1["estimates"]["a_spikingbrain"]["int8_dense"]["total_pj"]


def test_fewer_events_than_macs_costs_less_than_dense():
    L = layer(n_in=64, n_out=32, tokens=4, nonzero=20, pos=15, neg=10, T=2)
    rep = estimate_energy([L], "ternary")
    for est in ("a_spikingbrain", "b_arithmetic"):
        t = rep.totals["estimates"][est]
        assert t["snn"]["total_pj"] < t["fp16_dense"]["total_pj"]
        assert t["snn"]["total_pj"] < t["int8_dense"]["total_pj"]
        assert t["comparison"]["fp16_dense"]["reduction"] > 0


def test_zero_events_leave_only_fixed_costs():
    n_in, n_out, tokens = 16, 8, 3
    L = layer(n_in=n_in, n_out=n_out, tokens=tokens, nonzero=0, pos=0, neg=0, T=0, silent=n_in)
    per = estimate_energy([L], "ternary").per_layer[0]["estimates"]
    assert per["a_spikingbrain"]["snn"]["total_pj"] == 0
    b = per["b_arithmetic"]["snn"]
    assert b["components_pj"]["compute"] == 0 and b["components_pj"]["shift"] == 0
    thr = 2 * 48 * 0.4 + (2 * 3 + 48) * 1.1             # per-token threshold, per-element round
    rsc = 24 * 2 * 3.7 + 24 * 1 * 0.9                   # G = 1, bias
    assert b["total_pj"] == pytest.approx(thr + rsc)
    c = per["c_memory"]["snn"]
    for k in ("weight_reads", "weight_fetch", "input_reads", "accumulator_reads"):
        assert c["components_pj"][k] == 0, k           # T = 0 and every channel silent
    assert c["total_pj"] == pytest.approx(thr + rsc + tokens * n_out * sram(n_out * 16))


def test_layer_counters_objects_and_sim_mapping():
    from sbsnn.sim.engine import LayerCounters

    obj = LayerCounters("x", 4, 3, calls=1, tokens=2, elements=8, nonzero=3, events_pos=4,
                        events_neg=1, time_steps_max=2, slots=16, silent_channels=2, channel_calls=4)
    as_dict = estimate_energy([obj.to_dict()], "ternary").to_dict()
    as_obj = estimate_energy({"x": obj}, "ternary").to_dict()
    assert as_dict == as_obj
    json.dumps(as_obj, allow_nan=False)  # JSON-able, no NaN or Infinity
    with pytest.raises(ValueError, match="slots"):
        estimate_energy([{k: v for k, v in obj.to_dict().items() if k != "slots"}], "ternary")


# ----------------------------------------------------------------------------- profiles
def test_every_shipped_constant_has_value_unit_basis_source():
    assert set(SHIPPED) <= set(list_profiles())
    folder = resources.files("sbsnn.analysis").joinpath("profiles")
    for name in SHIPPED:
        raw = json.loads(folder.joinpath(f"{name}.json").read_text())
        assert {"name", "description", "source", "constants", "all_in"} <= set(raw)
        for key, c in raw["constants"].items():
            for f in ("value", "unit", "basis", "source"):
                assert f in c, f"{name}.{key} lacks {f}"
            assert c["basis"] in BASES, f"{name}.{key}"
            assert isinstance(c["value"], (int, float)) and c["source"].strip()
        load_profile(name)  # and the loader accepts it


def test_profile_values_from_the_reference():
    h = load_profile("horowitz45")
    expect = {"int8_add": 0.03, "int32_add": 0.1, "int8_mult": 0.2, "int32_mult": 3.1,
              "fp16_add": 0.4, "fp16_mult": 1.1, "fp32_add": 0.9, "fp32_mult": 3.7,
              "fp32_mac": 4.6, "fp16_mac": 1.5, "int8_mac": 0.23, "int8_mac_int32_acc": 0.3,
              "sram_8kb_read_64b": 10, "sram_32kb_read_64b": 20, "sram_1mb_read_64b": 100}
    for k, v in expect.items():
        assert h.value(k) == pytest.approx(v), k
    for k in ("fp32_mac", "fp16_mac", "int8_mac", "int8_mac_int32_acc"):
        assert h.constants[k].basis == "derived"
    assert h.constants["dram_access_64b"].range == (1300.0, 2600.0)
    loihi = load_profile("loihi2018")
    assert loihi.value("synaptic_op") == 23.6
    assert (loihi.value("neuron_update_active"), loihi.value("neuron_update_inactive")) == (81, 52)
    assert all(c.basis == "simulated" for c in loihi.constants.values())   # pre-silicon
    tn = load_profile("truenorth2014")
    assert tn.all_in and tn.value("synaptic_event") == 26


def test_broken_profile_names_the_file_and_key(tmp_path):
    good = {"name": "t", "description": "d", "source": {"x": 1}, "all_in": False,
            "constants": {"int8_add": {"value": 0.03, "unit": "pJ/op", "basis": "simulated",
                                       "source": "s"}}}
    for drop in ("value", "unit", "basis", "source"):
        bad = json.loads(json.dumps(good))
        del bad["constants"]["int8_add"][drop]
        p = tmp_path / f"no_{drop}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(ProfileError) as e:
            load_profile(p)
        assert str(p) in str(e.value) and "'int8_add'" in str(e.value) and repr(drop) in str(e.value)
    bad = json.loads(json.dumps(good))
    bad["constants"]["int8_add"]["basis"] = "guessed"
    (tmp_path / "basis.json").write_text(json.dumps(bad))
    with pytest.raises(ProfileError, match="int8_add.*basis"):
        load_profile(tmp_path / "basis.json")
    (tmp_path / "nojson.json").write_text("{")
    with pytest.raises(ProfileError, match="nojson.json"):
        load_profile(tmp_path / "nojson.json")
    with pytest.raises(ProfileError, match="horowitz45"):
        load_profile("no-such-profile")


def test_profile_lacking_a_constant_marks_the_estimate_not_applicable(tmp_path):
    only_add = {"name": "only-add", "description": "d", "source": {}, "all_in": False,
                "constants": {"int8_add": {"value": 0.03, "unit": "pJ/op", "basis": "simulated",
                                           "source": "s"}}}
    p = tmp_path / "only_add.json"
    p.write_text(json.dumps(only_add))
    L = layer()
    rep = estimate_energy([L], "ternary", profile=p)
    t = rep.totals["estimates"]
    assert t["a_spikingbrain"]["snn"]["applicable"]
    assert t["a_spikingbrain"]["snn"]["total_pj"] == pytest.approx(5 * 3 * 0.03)
    b = t["b_arithmetic"]["snn"]
    assert not b["applicable"] and b["total_pj"] is None and "int32_add" in b["missing"]
    assert any("b_arithmetic/snn" in n for n in rep.notes)
    json.dumps(rep.to_dict(), allow_nan=False)
    with pytest.raises(ProfileError, match="int32_add"):
        estimate_energy([L], "ternary", profile=p, strict=True)
    with pytest.raises(ProfileError, match="no constant 'fp16_mac'"):
        load_profile(p).value("fp16_mac")


def test_loihi_and_truenorth_recipes():
    L = layer(n_in=4, n_out=3, tokens=2, nonzero=3, pos=4, neg=1, T=2)   # SOP 15, S = 4
    lo = estimate_energy([L], "ternary", profile="loihi2018").totals["estimates"]
    assert lo["a_spikingbrain"]["snn"]["total_pj"] == pytest.approx(15 * 23.6)
    assert lo["b_arithmetic"]["snn"]["total_pj"] == pytest.approx(15 * 23.6 + 4 * 3 * 81)
    assert not lo["c_memory"]["snn"]["applicable"]
    assert lo["a_spikingbrain"]["fp16_dense"]["priced_by"] == "horowitz45"
    lo52 = estimate_energy([L], "ternary", profile="loihi2018", neuron_update="inactive")
    assert lo52.totals["estimates"]["b_arithmetic"]["snn"]["components_pj"]["neuron_update"] == \
        pytest.approx(12 * 52)
    tn = estimate_energy([L], "bitwise", profile="truenorth2014").totals["estimates"]
    for est in ("a_spikingbrain", "b_arithmetic", "c_memory"):
        s = tn[est]["snn"]
        assert s["total_pj"] == pytest.approx(15 * 26)          # all-in: nothing added
        assert s["components_pj"]["compute"] == pytest.approx(390)
        assert all(v == 0 for k, v in s["components_pj"].items() if k != "compute")


def test_nonspiking_priced_apart():
    ops = {"x_macs": 10, "y_ops": 4, "embedding_reads": 7, "total_macs": 10, "total_ops": 4}
    rep = estimate_energy([layer()], "ternary", nonspiking=ops)
    assert rep.nonspiking["total_pj"] == pytest.approx(10 * 1.5 + 4 * 1.1)
    assert rep.nonspiking["unpriced_counts"] == {"embedding_reads": 7}
    snn_a = rep.totals["estimates"]["a_spikingbrain"]["snn"]["total_pj"]
    assert rep.totals["with_nonspiking_pj"]["a_spikingbrain"]["snn"] == pytest.approx(snn_a + 19.4)
    fp32 = estimate_energy([layer()], "ternary", nonspiking=ops, nonspiking_precision="fp32")
    assert fp32.nonspiking["total_pj"] == pytest.approx(10 * 4.6 + 4 * 3.7)
    assert "n/a" not in rep.format().splitlines()[2]


# ----------------------------------------------------------------------------- op counts
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=16)


def test_nonspiking_ops_hand_count():
    # h 32, H 4, Hkv 2, D 8, I 48, V 256; layers 0, 2 GLA, 1, 3 window 4. Six fresh tokens:
    # keys per query 1, 2, 3, 4, 4, 4 = 18 in each window layer.
    cfg = HybridConfig(**TINY)
    ops = nonspiking_ops(cfg, 6, dense_projections=("down_proj",))
    assert ops["attn_qk_macs"] == 2 * (4 * 8) * 18
    assert ops["attn_av_macs"] == 2 * (4 * 8) * 18
    assert ops["attn_softmax_ops"] == 2 * 5 * 4 * 18
    assert ops["attn_scale_ops"] == 2 * 6 * 4 * 8
    assert ops["rope_ops"] == 2 * 6 * 3 * (4 + 2) * 8
    assert ops["gla_state_macs"] == 2 * 6 * 2 * 8 * 8
    assert ops["gla_decay_ops"] == 2 * 6 * 2 * 8 * 8
    assert ops["gla_readout_macs"] == 2 * 6 * 4 * 8 * 8
    assert ops["gla_gate_ops"] == 2 * 6 * 3 * 2 * 8
    assert ops["gla_feature_ops"] == 2 * 6 * (4 + 2) * 8
    # attn_norm + mlp_norm in 4 layers, g_norm over H x D in 2 GLA layers, final norm.
    assert ops["rmsnorm_ops"] == 6 * 4 * (4 * 2 * 32 + 2 * 4 * 8 + 32)
    assert ops["residual_adds_ops"] == 6 * 4 * 2 * 32
    assert ops["swiglu_ops"] == 6 * 4 * 5 * 48
    assert ops["lm_head_macs"] == 6 * 256 * 32
    assert ops["embedding_reads"] == 6 * 32
    assert ops["dense_down_proj_macs"] == 6 * 4 * 48 * 32
    assert ops["total_macs"] == (2 * 2 * 32 * 18 + 2 * 6 * 128 + 2 * 6 * 256 + 6 * 256 * 32
                                 + 6 * 4 * 48 * 32)


def test_nonspiking_ops_moe_with_a_shared_expert_gate():
    # MoE on layers 1-3 (0 dense): 4 experts, top 2, one shared expert; Qwen's gate adds a
    # sigmoid and h multiplies per token and MoE layer.
    moe = dict(TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
               num_shared_experts=1, shared_expert_intermediate_size=24, dense_layers=[0])
    plain = nonspiking_ops(HybridConfig(**moe), 5)
    gated = nonspiking_ops(HybridConfig(**moe, shared_expert_gate=True), 5)
    assert plain["moe_combine_ops"] == 3 * 5 * 2 * 32 * (2 + 1)
    assert gated["moe_combine_ops"] == plain["moe_combine_ops"] + 3 * 5 * (32 + 1)
    assert gated["moe_router_ops"] == plain["moe_router_ops"] == 3 * 5 * 2 * 4


def test_window_attention_uses_min_context_window():
    cfg = HybridConfig(**TINY)                      # window 4
    assert nonspiking_ops(cfg, 1, context=10)["attn_qk_macs"] == 2 * 32 * 4
    assert nonspiking_ops(cfg, 1, context=2)["attn_qk_macs"] == 2 * 32 * 2
    assert nonspiking_ops(cfg, 3, context=10)["attn_av_macs"] == 3 * 2 * 32 * 4
    full = HybridConfig(**{**TINY, "sliding_window": None})
    assert nonspiking_ops(full, 1, context=10)["attn_qk_macs"] == 2 * 32 * 10
    assert nonspiking_ops(full, 6)["attn_qk_macs"] == 2 * 32 * (1 + 2 + 3 + 4 + 5 + 6)
    # Sink keys stay visible beside the window (2 sinks, window 4, 6 tokens):
    # query j sees min(3 + j, 4) window keys plus sinks fallen out of it.
    assert visible_keys(6, 4, None, sinks=2) == sum(
        len({k for k in range(2 + j + 1) if 2 + j - k < 4 or k < 2}) for j in range(6))


def test_spikingbrain_7b_decode_counts_window_4096():
    from sbsnn.models.info import spikingbrain_7b_config

    ops = nonspiking_ops(spikingbrain_7b_config(), 1, context=100_000)
    assert ops["attn_qk_macs"] == 14 * 28 * 128 * 4096
    assert ops["gla_readout_macs"] == 14 * 28 * 128 * 128
    assert ops["lm_head_macs"] == 152064 * 3584
    with pytest.raises(ValueError):
        nonspiking_ops(spikingbrain_7b_config(), 1, context=0)
    with pytest.raises(ValueError, match="unknown projection"):
        nonspiking_ops(spikingbrain_7b_config(), 1, dense_projections=("down",))
    assert math.isfinite(float(ops["total_ops"]))


def test_sram_fit_beyond_one_megabyte_is_flagged():
    big = layer(n_in=4096, n_out=4096, tokens=1, nonzero=10, pos=10, neg=0, T=1)
    rep = estimate_energy([big], "ternary", weight_memory="sram")
    assert any("beyond 1 MB" in n and "weights" in n for n in rep.notes)
    assert not any("beyond 1 MB" in n for n in estimate_energy([layer()], "ternary").notes)
