"""Spiking conversion of the linear-mixer hybrids: a tiny model holding a Gated DeltaNet,
a Mamba-2, a short-convolution, a gated full-attention and a window-attention layer.

- ``paper`` spikes every ``nn.Linear`` but ``lm_head`` (the mixers' ``in_proj*`` and
  ``out_proj`` included), ``w8aspike`` the same minus every ``down_proj``, with the query
  and K/V hooks on the softmax-attention modules only; the recurrences, the convolutions
  and their parameters stay float and untouched;
- the event simulation is bit-identical to the integer path, in one pass and block by
  block through the decoding state (a last block of one token takes the mixers'
  one-token steps), with counters equal to the closed forms (tests/test_sim.py's);
- calibration runs and keeps its budget as the simulator counts it;
- save_spiking / load_spiking round-trip;
- a report builds, valid against its schema, with the mixers' layer kinds and their
  non-spiking operations.
"""

from __future__ import annotations

import pytest
import torch
from test_converters import randomize
from test_report import schema_errors
from test_sim import CountsRecorder, check_counters
from torch import nn

import sbsnn
from sbsnn.analysis.opcount import nonspiking_ops
from sbsnn.analysis.report import build_report
from sbsnn.converters import SpikingLinear, convert, load_spiking, save_spiking
from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM
from sbsnn.neurons import AdaptiveThresholdNeuron
from sbsnn.sim import simulate

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=5,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=10000.0,
             layer_mixers=["gdn", "mamba2", "conv", "full", "swa"], attn_layers=[3, 4],
             full_attn_layers=[3], sliding_window=4, attn_output_gate=True, qk_norm=True,
             gdn=dict(num_key_heads=2, num_value_heads=4, key_head_dim=8, value_head_dim=8,
                      conv_kernel_size=4, layout="qwen3_5"),
             mamba2=dict(num_heads=4, head_dim=8, d_state=8, n_groups=2, d_conv=4, chunk_size=8),
             short_conv=dict(L_cache=3, bias=True))
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind"
MLP = ("gate_proj", "up_proj", "down_proj")
# The documented targets, by hand: every projection of every layer (lm_head never).
PAPER = ({f"model.layers.0.linear_attn.{p}" for p in
          ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")}
         | {"model.layers.1.mamba.in_proj", "model.layers.1.mamba.out_proj",
            "model.layers.2.conv.in_proj", "model.layers.2.conv.out_proj"}
         | {f"model.layers.{i}.attn.{p}" for i in (3, 4) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
         | {f"model.layers.{i}.mlp.{p}" for i in range(5) for p in MLP})
ATTENTION = {"model.layers.3.attn", "model.layers.4.attn"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = randomize(HybridForCausalLM(HybridConfig(**MIXED)), seed=3)
    m.tokenizer = ByteTokenizer()
    return m


def _float_state(model) -> dict[str, torch.Tensor]:
    """Everything of the mixers that is not a projection: convs, decays, norms, D."""
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if any(f".{m}." in n for m in ("linear_attn", "mamba", "conv"))
            and not n.rpartition(".")[0].rpartition(".")[2].startswith(("in_proj", "out_proj"))}


@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
def test_presets_target_every_projection_and_leave_the_recurrences_float(model, preset):
    snn = convert(model, preset, coding="ternary", group_size=16)
    want = PAPER if preset == "paper" else {n for n in PAPER if not n.endswith("down_proj")}
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    assert spiking == want, sorted(spiking ^ want)
    assert set(snn.spiking_config.targets) == want
    assert type(snn.lm_head) is nn.Linear
    hooked = {n for n, m in snn.named_modules()
              if isinstance(getattr(m, "q_post_rope", None), AdaptiveThresholdNeuron)}
    assert hooked == (ATTENTION if preset == "w8aspike" else set())
    # the convolutions stay float nn.Conv1d; decays, norms, D unchanged
    for name in ("model.layers.0.linear_attn.conv1d", "model.layers.1.mamba.conv1d",
                 "model.layers.2.conv.conv"):
        assert type(snn.get_submodule(name)) is nn.Conv1d
    before, after = _float_state(model), _float_state(snn)
    assert before.keys() == after.keys() and len(before) >= 9
    assert all(torch.equal(before[k], after[k]) for k in before)
    ids = torch.tensor([list(TEXT[:12].encode())])
    with torch.no_grad():
        out = snn(ids)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("preset,coding", [("paper", "ternary"), ("w8aspike", "bitwise")])
def test_simulation_equals_integer_path(model, preset, coding):
    snn = convert(model, preset, coding=coding, k=3, group_size=16).eval()
    ids = torch.tensor([list(TEXT[:29].encode())])          # blocks of 4: the last one 1 token
    with torch.no_grad():
        want = snn(ids)[0]
    rec = CountsRecorder()
    res = simulate(snn, ids, backend="torch", record=rec)
    assert torch.equal(res.logits, want), (res.logits - want).abs().max()
    layers = {n: m for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    check_counters(res, rec, coding, layers)
    state = snn.new_state()
    with torch.no_grad():
        want_b = torch.cat([snn(ids[:, s:s + 4], state)[0] for s in range(0, 29, 4)])
    rec = CountsRecorder()
    res = simulate(snn, ids, backend="torch", block_size=4, record=rec)
    assert torch.equal(res.logits, want_b)
    check_counters(res, rec, coding, layers)
    assert all(c.calls == 8 for c in res.layers.values())    # 7 blocks of 4 and 1 token


def test_calibration_keeps_its_budget(model):
    cal = sbsnn.calibrate(model, TEXT, "k=3", coding="ternary", fisher_tokens=32, max_tokens=64)
    r = cal.calibration_report
    sim = simulate(cal, TEXT, backend="torch", block_size=256, max_tokens=64,
                   return_logits=False).totals()
    assert sim["spikes_per_element"] <= r["budget"]
    assert r["spikes_per_element"] == pytest.approx(sim["spikes_per_element"], rel=1e-12)
    assert {n for n, m in cal.named_modules() if isinstance(m, SpikingLinear)} == PAPER
    ids = torch.tensor([list(TEXT.encode())])
    with torch.no_grad():
        want = cal(ids)[0]
    assert torch.equal(simulate(cal, ids, backend="torch").logits, want)


@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
def test_save_then_load_gives_identical_logits(model, tmp_path, preset):
    snn = convert(model, preset, coding="ternary", k=2.5, group_size=16)
    out = save_spiking(snn, tmp_path / "snn", max_shard_bytes=40_000)
    back = load_spiking(out)
    ids = torch.tensor([list(TEXT[:17].encode())])
    with torch.no_grad():
        assert torch.equal(snn(ids), back(ids))
    assert back.spiking_config == snn.spiking_config
    assert {n: type(m) for n, m in back.named_modules()} == {n: type(m) for n, m in snn.named_modules()}


def test_report_shows_the_mixers(model, tmp_path):
    snn = convert(model, "paper", coding="ternary", group_size=16)
    snn.tokenizer = ByteTokenizer()
    rec = tmp_path / "run.h5"
    simulate(snn, TEXT, backend="torch", record=rec, block_size=16)
    report = build_report(rec, tmp_path / "out")
    assert not schema_errors(report)
    kinds = {d["kind"] for d in report["sparsity"]["per_layer"].values()}
    assert kinds == {"GDN", "Mamba-2", "short conv", "full attention", "SWA", "MLP"}
    assert report["sparsity"]["per_layer"]["model.layers.0.linear_attn.out_proj"]["kind"] == "GDN"
    comps = report["energy"]["nonspiking"]["components"]
    want = nonspiking_ops(model.config, len(TEXT))
    for key in ("gdn_write_macs", "gdn_readout_macs", "mamba2_write_macs", "shortconv_macs",
                "shortconv_gate_ops", "attn_out_gate_ops", "attn_qk_macs"):
        assert comps[key]["count"] == want[key] > 0, key
    html = (tmp_path / "out" / "report.html").read_text()
    assert "GDN" in html and "Mamba-2" in html and "short conv" in html


def test_layer_kind_labels_of_the_mixers():
    from sbsnn.analysis.sparsity import layer_kind

    cfg = HybridConfig(**MIXED)
    for cfg_or_none in (cfg, None):       # by the config, or by the module names alone
        assert layer_kind("model.layers.0.linear_attn.in_proj_qkv", cfg_or_none) == "GDN"
        assert layer_kind("model.layers.0.linear_attn.out_proj", cfg_or_none) == "GDN"
        assert layer_kind("model.layers.1.mamba.in_proj", cfg_or_none) == "Mamba-2"
        assert layer_kind("model.layers.2.conv.out_proj", cfg_or_none) == "short conv"
        assert layer_kind("model.layers.2.mlp.up_proj", cfg_or_none) == "MLP"
    assert layer_kind("model.layers.3.attn.q_proj", cfg) == "full attention"
    assert layer_kind("model.layers.4.attn.q_proj", cfg) == "SWA"
    assert layer_kind("model.layers.0.linear_attn.q_proj") == "GLA"   # SpikingBrain's GLA
