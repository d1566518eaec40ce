"""Sparsity metrics against hand computations; counters rebuilt from a recording."""

import pytest
import torch

from sbsnn.analysis import SparsityCollector, counters_from_recording, sparsity
from sbsnn.analysis.sparsity import layer_kind
from sbsnn.converters import convert
from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM
from sbsnn.sim import load_recording, simulate

C = torch.tensor([[0, 1, -2, 9], [0, 0, 3, -1]])
CALLS = [("model.layers.0.mlp.up_proj", C), ("model.layers.0.mlp.up_proj", C[:1])]


def test_ternary_metrics_by_hand():
    m = sparsity(CALLS, "ternary").pooled
    # spikes |c|: call 1: 0+1+2+9+0+0+3+1 = 16; call 2: 0+1+2+9 = 12; 12 elements.
    assert m["elements"] == 12 and m["calls"] == 2 and m["tokens"] == 3
    assert m["zero_fraction"] == pytest.approx(4 / 12)
    assert m["spikes_per_element"] == pytest.approx(28 / 12)
    # global T = 9 in both calls: slots 8*9 + 4*9.
    assert m["slot_sparsity_global"] == pytest.approx(1 - 28 / 108)
    # ternary per-element T is |c| itself: every slot fires.
    assert m["slot_sparsity_per_element"] == pytest.approx(0.0)
    # window 3: min(|c|, 3) = 0+1+2+3+0+0+3+1 + 0+1+2+3 = 16.
    assert m["slot_sparsity_window"] == pytest.approx(1 - 16 / 36)
    assert m["fits_window"] == pytest.approx(10 / 12)          # all but the two 9s
    assert m["silent_channel_fraction"] == pytest.approx(2 / 8)  # column 0, in each call
    assert m["abs_count_histogram"][:4] == [4, 3, 2, 1] and m["abs_count_histogram"][9] == 2


def test_bitwise_metrics_by_hand():
    m = sparsity(CALLS, "bitwise").pooled
    # popcounts: 0,1,1,2 (9 = 1001), 0,0,2 (3 = 11),1 | 0,1,1,2 -> 7 + 4 = 11.
    assert m["spikes_per_element"] == pytest.approx(11 / 12)
    # T = bit length of 9 = 4 in both calls.
    assert m["slot_sparsity_global"] == pytest.approx(1 - 11 / 48)
    # per-element T: max(1, bit length): 1,1,2,4, 1,1,2,1 | 1,1,2,4 -> 21 slots.
    assert m["slot_sparsity_per_element"] == pytest.approx(1 - 11 / 21)
    assert m["slot_sparsity_window"] == pytest.approx(1 - 11 / 36)
    assert m["spikes_histogram"][:3] == [4, 5, 3]  # 0 spikes: the zeros; 2: 9, 3 and 9


def test_layer_kinds_follow_the_config():
    cfg = HybridConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, attn_layers=[1],
                       sliding_window=4)
    assert layer_kind("model.layers.0.attn.q_proj", cfg) == "GLA"
    assert layer_kind("model.layers.1.attn.o_proj", cfg) == "SWA"
    assert layer_kind("model.layers.1.mlp.down_proj", cfg) == "MLP"
    assert layer_kind("model.layers.1.mlp.experts.3.up_proj", cfg) == "MoE"
    assert layer_kind("lm_head", cfg) == "other"


@pytest.mark.parametrize("coding", ["ternary", "bitwise", "twos_complement"])
def test_counters_and_sparsity_from_a_recording_equal_the_live_ones(tmp_path, coding):
    torch.manual_seed(0)
    cfg = HybridConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, attn_layers=[1],
                       sliding_window=4)
    model = HybridForCausalLM(cfg).eval()
    model.tokenizer = ByteTokenizer()
    snn = convert(model, group_size=16, coding=coding)
    text = "Now is the winter of our discontent, made glorious summer."
    live = simulate(snn, text, backend="torch", record=tmp_path / "s.h5", block_size=16)
    collector = SparsityCollector(coding, cfg)
    simulate(snn, text, backend="torch", record=collector, block_size=16)
    with load_recording(tmp_path / "s.h5") as rec:
        rebuilt = counters_from_recording(rec)
        from sbsnn.analysis import sparsity_from_recording
        from_file = sparsity_from_recording(rec)
    assert {n: c.to_dict() for n, c in rebuilt.items()} == {n: c.to_dict() for n, c in live.layers.items()}
    assert from_file.to_dict() == collector.report().to_dict()
    assert from_file.pooled["spikes_per_element"] == pytest.approx(live.totals()["spikes_per_element"])
