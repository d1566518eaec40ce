"""Converter tests: SpikingLinear arithmetic, presets, the spiking checkpoint, fidelity.

The references here are written from the documented formulas (SpikingBrain report,
``docs/spiking-checkpoint.md``), not from sbsnn's code:

- weights: per output row and group of ``group_size`` inputs, ``scale = amax|w| / 127``
  (float32), codes ``round(w / scale)`` clamped to [-127, 127];
- inputs: ``V_th = clamp(mean|x| / k, 1e-5, 1e4)`` per token, counts ``round(x / V_th)``
  half to even, unclipped;
- output: ``y = V_th * sum_g scale_g * (codes_g @ counts_g) + b``, here in float64.

Expected module sets for the presets are built from the model *config* by the documented
rule (which layer has which projections), never by asking the converter.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import sbsnn
from sbsnn.converters import (Int8PerTokenHead, SpikingLinear, convert, convert_checkpoint,
                              load_spiking, quantize_weight, save_spiking)
from sbsnn.converters import quant
from sbsnn.converters.quant import (f32_count_bound, group_accumulate, group_accumulate_reference,
                                    linear_from_counts, rescale)
from sbsnn.models import CheckpointError, HybridConfig, HybridForCausalLM, save_pretrained
from sbsnn.neurons import CODINGS, AdaptiveThresholdNeuron, spike_counts_reference

F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "spiking-checkpoint.md"
TINY_HYBRID = REPO / "sbsnn" / "data" / "tiny-hybrid"


pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================ references
def ref_quantize(w: torch.Tensor, gs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (float64, integral) and float32 scales, one group at a time."""
    w = w.detach().to(F32)
    out_f, in_f = w.shape
    G = math.ceil(in_f / gs)
    codes = torch.zeros(out_f, in_f, dtype=F64)
    scales = torch.zeros(out_f, G, dtype=F32)
    for g in range(G):
        blk = w[:, g * gs:(g + 1) * gs]
        s = blk.abs().amax(1) / 127
        scales[:, g] = s
        q = torch.round(blk / torch.where(s > 0, s, 1.0)[:, None])
        q = torch.where(s[:, None] > 0, q, 0.0)
        codes[:, g * gs:(g + 1) * gs] = q.clamp(-127, 127).to(F64)
    return codes, scales


def ref_counts(x: torch.Tensor, k: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The SpikingBrain formula, in the activation's dtype (sbsnn's plain reference)."""
    return spike_counts_reference(x, k)


def ref_spiking_linear(x, w, b, gs, k) -> torch.Tensor:
    """Fake-quantised linear in float64: (counts * V_th) @ (codes * scale).T + b."""
    counts, v = ref_counts(x, k)
    codes, scales = ref_quantize(w, gs)
    per_col = scales.to(F64).repeat_interleave(gs, dim=1)[:, :w.shape[1]]
    y = (counts.to(F64) * v.to(F64)) @ (codes * per_col).T
    return y if b is None else y + b.detach().to(F64)


def sample_input(shape, seed, outliers=True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if outliers:  # a few large activations give large counts, as real ones do
        x = x * torch.where(torch.rand(shape, generator=g) < 0.03, 25.0, 1.0)
    return x


def make_linear(in_f, out_f, bias, seed, dtype=F32) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.1)
        lin.weight[0, :min(in_f, 5)] *= 30  # an outlier row: its groups get a large scale
        if bias:
            lin.bias.copy_(torch.randn(out_f, generator=g))
    return lin.to(dtype)


# ============================================================================ SpikingLinear
SHAPES = [(64, 16), (256, 128), (300, 128), (37, 128), (50, 7)]  # (in_features, group_size)


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("in_f,gs", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_spiking_linear_equals_fake_quant_reference(coding, in_f, gs, bias):
    k = 3.0 if in_f != 50 else 2.5
    lin = make_linear(in_f, 24, bias, seed=in_f + gs)
    x = sample_input((2, 5, in_f), seed=in_f * 7 + gs)
    if coding == "binary":
        x = torch.relu(x)  # binary coding carries non-negative counts only
    sl = SpikingLinear.from_linear(lin, group_size=gs, k=k, coding=coding)
    with torch.no_grad():
        y = sl(x)
    ref = ref_spiking_linear(x, lin.weight, lin.bias, gs, k)
    assert y.shape == (2, 5, 24) and y.dtype == F32
    err = (y.to(F64) - ref).abs()
    bound = 1e-6 * ref.abs() + 1e-9 * ref.abs().max()
    assert bool((err <= bound).all()), f"max rel error {float((err / ref.abs().clamp(min=1e-30)).max()):.3g}"
    # the stored weight is the documented one
    codes, scales = ref_quantize(lin.weight, gs)
    assert sl.weight_codes.dtype == torch.int8 and sl.weight_scales.dtype == F32
    assert torch.equal(sl.weight_codes.to(F64), codes)
    assert torch.equal(sl.weight_scales, scales)
    # and the spikes are the formula's, bit for bit
    counts, v = sl.spike(x)
    rc, rv = ref_counts(x.reshape(-1, in_f), k)
    assert torch.equal(counts.to(F64), rc.to(F64)) and torch.equal(v, rv)


@pytest.mark.parametrize("in_f,gs", [(300, 128), (64, 16)])
def test_spiking_linear_float64_is_exact_to_float64_rounding(in_f, gs):
    lin = make_linear(in_f, 16, True, seed=3, dtype=F64)
    x = sample_input((7, in_f), seed=4).to(F64)
    sl = SpikingLinear.from_linear(lin, group_size=gs, k=3.0)
    with torch.no_grad():
        y = sl(x)
    ref = ref_spiking_linear(x, lin.weight, lin.bias, gs, 3.0)
    assert y.dtype == F64
    assert float(((y - ref).abs() / ref.abs().max()).max()) < 1e-13


def test_spiking_linear_rounds_half_to_even_through_the_layer():
    # mean|x| = 2 and k = 2 give V_th = 1 exactly; identity weight: y == counts * (1/127*127)
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 7.0, 0.0]])
    lin = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(8))
    sl = SpikingLinear.from_linear(lin, group_size=8, k=2.0)
    with torch.no_grad():
        y = sl(x)
    expected = torch.tensor([[0.0, 2, 2, 0, -2, -2, 7, 0]])
    assert torch.allclose(y, expected, rtol=1e-6, atol=1e-7), y


def test_binary_coding_with_negative_input_raises_a_clear_error():
    """Binary spikes are {0, 1}: a negative count cannot be carried. The neuron module
    raises for it; a SpikingLinear with coding='binary' must too instead of silently
    computing with negative counts."""
    lin = make_linear(32, 8, True, seed=5)
    sl = SpikingLinear.from_linear(lin, group_size=16, coding="binary")
    x = sample_input((3, 32), seed=6)
    assert (x < 0).any()
    with pytest.raises(ValueError, match="(?i)binary"):
        with torch.no_grad():
            sl(x)


def test_spiking_linear_rejects_unknown_coding():
    with pytest.raises(ValueError, match="coding"):
        SpikingLinear.from_linear(nn.Linear(8, 8), coding="unary")


# ---------------------------------------------------------------------------- group sums
def _exact_group_sums(counts: torch.Tensor, codes: torch.Tensor, gs: int) -> torch.Tensor:
    G = math.ceil(counts.shape[1] / gs)
    return torch.stack([counts[:, g * gs:(g + 1) * gs].long() @ codes[:, g * gs:(g + 1) * gs].long().T
                        for g in range(G)])


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_group_accumulate_is_the_exact_integer_matmul(data):
    n = data.draw(st.integers(1, 4), label="tokens")
    in_f = data.draw(st.integers(1, 300), label="in")
    out_f = data.draw(st.integers(1, 5), label="out")
    gs = data.draw(st.sampled_from([1, 7, 16, 128]), label="group")
    peak = data.draw(st.sampled_from([1, 100, 1000, 100_000]), label="peak")
    dtype = data.draw(st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64])
                      if peak <= 127 else st.sampled_from([torch.int32, torch.int64]), label="dtype")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(-peak, peak + 1, (n, in_f), generator=g)
    counts[0, 0] = peak if data.draw(st.booleans(), label="+peak") else -peak
    codes = torch.randint(-127, 128, (out_f, in_f), generator=g).to(torch.int8)
    codes[0, 0] = 127
    acc = group_accumulate(counts.to(dtype), codes, gs)
    assert acc.dtype == torch.int64
    assert torch.equal(acc, _exact_group_sums(counts, codes, gs))
    assert torch.equal(acc, group_accumulate_reference(counts.to(dtype), codes, gs))


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_group_accumulate_with_massive_outliers_equals_the_int64_reference(data):
    """Mostly small counts and a few massive ones (as pretrained LLMs' activations give):
    the bounded part goes through float32 GEMMs, the outliers through the integer part."""
    n = data.draw(st.integers(1, 6), label="tokens")
    in_f = data.draw(st.integers(1, 300), label="in")
    out_f = data.draw(st.integers(1, 9), label="out")
    gs = data.draw(st.sampled_from([1, 7, 16, 128, 512]), label="group")
    huge = data.draw(st.sampled_from([f32_count_bound(gs) + 1, 3_565, 40_000, 2**20, 2**40]), label="huge")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(-8, 9, (n, in_f), generator=g)
    channels = torch.randint(0, in_f, (data.draw(st.integers(1, 3), label="outlier channels"),), generator=g)
    for ch in channels.tolist():   # a massive channel: every token, either sign, near `huge`
        counts[:, ch] = torch.randint(huge // 2, huge + 1, (n,), generator=g) * (2 * torch.randint(0, 2, (n,), generator=g) - 1)
    dtype = torch.int64 if huge > 2**31 - 1 else data.draw(st.sampled_from([torch.int32, torch.int64]))
    codes = torch.randint(-128, 128, (out_f, in_f), generator=g).to(torch.int8)
    want = group_accumulate_reference(counts.to(dtype), codes, gs)
    assert torch.equal(want, _exact_group_sums(counts, codes, gs))
    assert torch.equal(group_accumulate(counts.to(dtype), codes, gs), want)
    scales = torch.rand(out_f, want.shape[0], generator=g)
    v_th = torch.rand(n, 1, generator=g)
    bias = torch.randn(out_f, generator=g) if data.draw(st.booleans(), label="bias") else None
    y = linear_from_counts(counts.to(dtype), codes, scales, v_th, bias, gs, F32)
    assert torch.equal(y, rescale(want, scales, v_th, bias, F32))


def test_rescale_adds_the_groups_in_order_in_float64():
    """The formula, term by term: y = ((0 + s0 a0) + s1 a1) + ...; * V_th; + b; one rounding
    to the output dtype. An order-sensitive case: a tiny term after two that cancel."""
    acc = torch.tensor([[[2**40]], [[-(2**40)]], [[1]]], dtype=torch.int64)      # [G=3, N=1, out=1]
    scales = torch.tensor([[1.0, 1.0, 2.0**-30]])
    y = rescale(acc, scales, torch.tensor([[3.0]]), torch.tensor([0.5]), torch.float64)
    assert y.item() == ((0.0 + 2.0**40) - 2.0**40 + 2.0**-30) * 3.0 + 0.5
    # another order would lose the small term: (2**40 + 2**-30) - 2**40 == 0 in float64
    assert (2.0**40 + 2.0**-30) - 2.0**40 == 0.0


def test_linear_from_counts_in_column_blocks_equals_inline(monkeypatch, two_threads, thread_probe):
    """Large calls run as blocks of output columns on sbsnn's workers: the same bits as one
    inline call, and torch's thread count never changes meanwhile."""
    g = torch.Generator().manual_seed(11)
    counts = torch.randint(-20, 21, (37, 300), generator=g, dtype=torch.int32)
    counts[:, 5] = 5000                                     # an outlier channel
    codes = torch.randint(-127, 128, (700, 300), generator=g).to(torch.int8)
    scales, v_th, bias = torch.rand(700, 3, generator=g), torch.rand(37, 1, generator=g), torch.randn(700, generator=g)
    want = rescale(group_accumulate_reference(counts, codes, 128), scales, v_th, bias, F32)
    monkeypatch.setattr(quant, "_PARTS_MIN_MACS", 0)
    calls = []
    real = quant.run_parts
    monkeypatch.setattr(quant, "run_parts", lambda fn, parts, w: calls.append((len(parts), w)) or real(fn, parts, w))
    with thread_probe() as probe, quant.forced_route("float32"):   # the float32 route's blocks
        got = linear_from_counts(counts, codes, scales, v_th, bias, 128, F32)
    assert calls and calls[0][0] > 1 and calls[0][1] == 2    # it really ran in blocks on workers
    assert torch.equal(got, want)
    assert probe.seen == {torch.get_num_threads()}
    monkeypatch.setattr(quant, "workers_for", lambda n: 1)
    with quant.forced_route("float32"):
        assert torch.equal(linear_from_counts(counts, codes, scales, v_th, bias, 128, F32), want)


def test_reduced_float32_matmul_precision_keeps_the_sums_exact():
    """With TF32/bf16 float32 matmuls allowed by the host, the group products run in
    float64 instead (never reduced): still the exact integers."""
    g = torch.Generator().manual_seed(2)
    counts = torch.full((3, 256), 1023, dtype=torch.int32)      # sums near 2**24: bf16 inputs would round
    counts[1] = torch.randint(-1023, 1024, (256,), generator=g)
    codes = torch.randint(-127, 128, (5, 256), generator=g).to(torch.int8)
    want = group_accumulate_reference(counts, codes, 128)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not quant._ieee_float32_matmul(torch.device("cpu"))
        assert torch.equal(group_accumulate(counts, codes, 128), want)
    finally:
        torch.set_float32_matmul_precision(before)
    assert quant._ieee_float32_matmul(torch.device("cpu"))
    assert torch.equal(group_accumulate(counts, codes, 128), want)


def test_group_accumulate_large_counts_take_the_outlier_path_exactly():
    # 1e5 * 127 * 128 > 2**24: float32 could not hold the partial sums, so the counts
    # beyond f32_count_bound go through the integer outlier part.
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(99_000, 100_001, (3, 256), generator=g)
    counts[1] *= -1
    codes = torch.full((4, 256), 127, dtype=torch.int8)
    codes[1] = -127
    codes[2, ::2] = -127
    acc = group_accumulate(counts, codes, 128)
    assert torch.equal(acc, _exact_group_sums(counts, codes, 128))
    assert int(acc.abs().max()) > 2**24


def test_group_accumulate_stays_exact_for_counts_beyond_2_pow_53_over_group():
    """The docstring promises exact integer sums for int64 counts of any size: float64
    stops being exact once count * 127 * group_size passes 2**53 (counts of ~5.5e11 at
    group 128, reachable with a static threshold), so such sums stay in int64."""
    counts = torch.full((1, 128), 2**45, dtype=torch.int64)
    counts[0, ::2] += 1
    codes = torch.full((1, 128), 127, dtype=torch.int8)
    codes[0, 1::3] = -127
    assert torch.equal(group_accumulate(counts, codes, 128), _exact_group_sums(counts, codes, 128))


# ---------------------------------------------------------------------------- clamp stats
def _codes_beyond_127(w: torch.Tensor, gs: int, scale_dtype) -> int:
    """Independent count: |round(w / s)| > 127 with the scale s rounded to scale_dtype."""
    n = 0
    for g in range(math.ceil(w.shape[1] / gs)):
        blk = w[:, g * gs:(g + 1) * gs].float()
        s = (blk.abs().amax(1) / 127).to(scale_dtype).float()[:, None]
        n += int(((torch.round(blk / torch.where(s > 0, s, 1.0)).abs() > 127) & (s > 0)).sum())
    return n


def test_float32_scales_never_clamp():
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(1))
    codes, scales, stats = quantize_weight(w, 128)
    assert stats.clamped == 0 == _codes_beyond_127(w, 128, F32)
    assert stats.codes == w.numel()
    assert int(codes.abs().max()) == 127


@pytest.mark.parametrize("scale_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_narrow_scales_push_codes_past_127_and_are_counted(scale_dtype):
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(2))
    codes, scales, stats = quantize_weight(w, 128, scale_dtype=scale_dtype)
    expected = _codes_beyond_127(w, 128, scale_dtype)
    assert expected > 0
    assert stats.clamped == expected
    assert int(codes.abs().max()) == 127  # clamped, never wrapped
    assert stats.to_dict()["clamped_fraction"] == expected / w.numel()


def test_bfloat16_scales_are_counted_consistently():
    # bf16 keeps 8 significant bits: the rounded scale is at most 2**-9 below amax/127,
    # so amax/scale <= 127.25 rounds to 127 and nothing clamps (fp8 scales above do).
    w = torch.randn(64, 300, generator=torch.Generator().manual_seed(3))
    _, scales, stats = quantize_weight(w, 128, scale_dtype=BF16)
    assert scales.dtype == BF16
    assert stats.clamped == _codes_beyond_127(w, 128, BF16) == 0


def test_conversion_reports_quantization_stats():
    model = HybridForCausalLM(HybridConfig(**TINY)).eval()
    snn = convert(model, "paper")
    q = snn.spiking_config.quantization
    n = sum(m.weight.numel() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name != "lm_head")
    assert q["codes"] == n and q["clamped"] == 0 and q["max_abs_weight_error"] > 0


# ============================================================================ presets
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=8)
# SpikingBrain-76B-like: linear and window attention side by side in every layer, full
# attention in layer 2, MoE with shared experts except in the dense layer 0, sink tokens.
LIKE_76B = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, attn_layers=[0, 1, 2],
                sliding_window=4, rope_theta=10000.0, parallel_mixer=True, full_attn_layers=[2],
                num_experts=3, num_experts_per_tok=2, moe_intermediate_size=16,
                num_shared_experts=2, shared_expert_intermediate_size=24, dense_layers=[0],
                num_sink_tokens=2, linear_attn_gate="one_minus_k", linear_feature_map="sigmoid")
LIKE_76B_LOWRANK = {**LIKE_76B, "linear_attn_gate": "lowrank", "gate_low_rank_dim": 8}

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
SWIGLU = ("gate_proj", "up_proj", "down_proj")


def documented_targets(c: dict) -> tuple[set[str], set[str]]:
    """(every projection the paper preset spikes, the softmax-attention modules), from
    the config by the documented rule."""
    names, attn = set(), set()
    n = c["num_hidden_layers"]
    for i in range(n):
        p = f"model.layers.{i}."
        lowrank = c.get("linear_attn_gate", "lowrank") == "lowrank"
        gla = [p + "{}." + x for x in PROJ] + ([p + "{}.gk_proj.0", p + "{}.gk_proj.1"] if lowrank else [])
        swa = [p + "{}." + x for x in PROJ]
        if c.get("parallel_mixer"):
            names |= {s.format("attn") for s in swa} | {s.format("linear_attn") for s in gla}
            attn.add(p + "attn")
        elif i in c.get("attn_layers", []) or i in c.get("full_attn_layers", []):
            names |= {s.format("attn") for s in swa}
            attn.add(p + "attn")
        else:
            names |= {s.format("attn") for s in gla}
        if c.get("num_experts", 0) and i not in c.get("dense_layers", []):
            names.add(p + "mlp.router")
            for e in range(c["num_experts"]):
                names |= {f"{p}mlp.experts.{e}.{x}" for x in SWIGLU}
            for e in range(c.get("num_shared_experts", 0)):
                names |= {f"{p}mlp.shared_experts.{e}.{x}" for x in SWIGLU}
        else:
            names |= {f"{p}mlp.{x}" for x in SWIGLU}
    return names, attn


# The documented projection names, as a pattern over module names.
PAPER_RE = re.compile(r"^model\.layers\.\d+\.(attn|linear_attn|mlp|mlp\.(experts|shared_experts)\.\d+)\."
                      r"(q_proj|k_proj|v_proj|o_proj|gk_proj\.[01]|gate_proj|up_proj|down_proj|router)$")


def check_preset(model: nn.Module, c: dict, preset: str) -> nn.Module:
    paper, attn = documented_targets(c)
    expected = paper if preset == "paper" else {n for n in paper if not n.endswith(".down_proj")}
    snn = convert(model, preset)
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    assert spiking == expected, (sorted(spiking ^ expected))
    assert set(snn.spiking_config.targets) == expected
    # the regex view agrees: every documented projection of the float model, nothing else
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {n for n in linears if PAPER_RE.match(n)} == paper
    assert linears - paper <= {"lm_head"}
    # untouched: embeddings, head, and (w8aspike) every down_proj
    assert type(snn.model.embeddings) is nn.Embedding
    if snn.lm_head is not None:
        assert type(snn.lm_head) is nn.Linear and "lm_head" not in spiking
    for n in linears - expected:
        assert type(snn.get_submodule(n)) is nn.Linear, n
    if preset == "w8aspike":
        assert any(n.endswith("down_proj") for n in linears - expected)
    # attention hooks: filled on softmax-attention modules for w8aspike only
    hooked = {n for n, m in snn.named_modules() if isinstance(getattr(m, "q_post_rope", None),
                                                             AdaptiveThresholdNeuron)}
    assert hooked == (attn if preset == "w8aspike" else set())
    assert set(snn.spiking_config.attention_hooks) == hooked
    for n in attn:
        m = snn.get_submodule(n)
        if preset == "w8aspike":
            assert isinstance(m.k_cache_quant, Int8PerTokenHead) and isinstance(m.v_cache_quant, Int8PerTokenHead)
            assert m.q_post_rope.k == 3.0 and m.q_post_rope.group_size is None
        else:
            assert all(type(getattr(m, h)) is nn.Identity for h in ("q_post_rope", "k_cache_quant", "v_cache_quant"))
    # the float model is left alone
    assert not any(isinstance(m, SpikingLinear) for m in model.modules())
    return snn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * r if "norm" in name else 0.2 * r)
    return model.eval()


@pytest.mark.parametrize("layout", ["7b", "76b", "76b-lowrank"])
@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
def test_presets_target_the_documented_modules_hybrid(layout, preset):
    c = {"7b": TINY, "76b": LIKE_76B, "76b-lowrank": LIKE_76B_LOWRANK}[layout]
    model = randomize(HybridForCausalLM(HybridConfig(**c)))
    snn = check_preset(model, c, preset)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = snn(ids)
    assert out.shape == (2, 9, 256) and torch.isfinite(out).all()
    if preset == "w8aspike":  # query thresholds are per (batch, head, token)
        for n in documented_targets(c)[1]:
            v_th = snn.get_submodule(n).q_post_rope.v_th
            assert v_th.shape == (2, 4, 9 + c.get("num_sink_tokens", 0), 1)


# ---------------------------------------------------------------------------- Llama / Qwen2
HF_BASE = {"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
           "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
           "max_position_embeddings": 128}
LLAMA = {**HF_BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
         "tie_word_embeddings": False, "attention_bias": False}
QWEN2 = {**HF_BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
         "tie_word_embeddings": True, "use_sliding_window": False}


def write_hf_checkpoint(d: Path, c: dict, seed: int = 0, dtype=F32) -> Path:
    """transformers' LlamaForCausalLM / Qwen2ForCausalLM names and shapes, by hand."""
    g = torch.Generator().manual_seed(seed)
    Hd, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = Hd // c["num_attention_heads"]
    q_out, kv_out = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (V, Hd), "model.norm.weight": (Hd,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (Hd,), p + "post_attention_layernorm.weight": (Hd,),
            p + "self_attn.q_proj.weight": (q_out, Hd), p + "self_attn.k_proj.weight": (kv_out, Hd),
            p + "self_attn.v_proj.weight": (kv_out, Hd), p + "self_attn.o_proj.weight": (Hd, q_out),
            p + "mlp.gate_proj.weight": (I, Hd), p + "mlp.up_proj.weight": (I, Hd),
            p + "mlp.down_proj.weight": (Hd, I)})
        if c["model_type"] == "qwen2":
            shapes.update({p + "self_attn.q_proj.bias": (q_out,), p + "self_attn.k_proj.bias": (kv_out,),
                           p + "self_attn.v_proj.bias": (kv_out,)})
    if not c["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, Hd)
    tensors = {}
    for n, s in shapes.items():
        r = torch.randn(s, generator=g)
        tensors[n] = (1.0 + 0.1 * r if "norm" in n else 0.2 * r).to(dtype)
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(c))
    return d


def hf_documented(c: dict) -> tuple[set[str], set[str]]:
    """The same rule for a Llama/Qwen2 checkpoint, under sbsnn's renamed module names."""
    names, attn = set(), set()
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "attn." + x for x in PROJ} | {p + "mlp." + x for x in SWIGLU}
        attn.add(p + "attn")
    return names, attn


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
def test_presets_target_the_documented_modules_llama_qwen2(tmp_path, arch, preset):
    c = LLAMA if arch == "llama" else QWEN2
    model = sbsnn.load_model(write_hf_checkpoint(tmp_path / arch, c))
    paper, attn = hf_documented(c)
    as_hybrid = {"num_hidden_layers": 2, "attn_layers": [0, 1], "full_attn_layers": [0, 1]}
    assert documented_targets(as_hybrid)[0] == paper  # one rule for both families
    snn = check_preset(model, as_hybrid, preset)
    assert (snn.lm_head is None) == c["tie_word_embeddings"]
    if arch == "qwen2":  # biases survive the conversion
        assert snn.model.layers[0].attn.q_proj.bias is not None
    with torch.no_grad():
        assert torch.isfinite(snn(torch.tensor([[1, 2, 3, 4, 5]]))).all()


# ---------------------------------------------------------------------------- targets
def test_targets_glob_converts_only_the_matching_modules():
    model = HybridForCausalLM(HybridConfig(**TINY)).eval()
    snn = convert(model, targets=["*.q_proj"])
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    assert spiking == {f"model.layers.{i}.attn.q_proj" for i in range(4)}
    assert snn.spiking_config.preset is None and snn.spiking_config.patterns == ["*.q_proj"]
    assert snn.spiking_config.attention_hooks == []
    snn = convert(model, targets=["*.q_proj", "*.mlp.*"], exclude=["model.layers.0.*"])
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    assert spiking == ({f"model.layers.{i}.attn.q_proj" for i in range(1, 4)}
                       | {f"model.layers.{i}.mlp.{x}" for i in range(1, 4) for x in SWIGLU})


def test_unmatched_target_pattern_raises():
    model = HybridForCausalLM(HybridConfig(**TINY))
    with pytest.raises(ValueError, match=re.escape("*.query")):
        convert(model, targets=["*.q_proj", "*.query"])
    with pytest.raises(ValueError, match="preset"):
        convert(model, preset="paper-ish")


class _BertLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attention = nn.Module()
        for n in ("query", "key", "value"):
            setattr(self.attention, n, nn.Linear(d, d))
        self.intermediate = nn.Linear(d, 2 * d)
        self.output = nn.Linear(2 * d, d)

    def forward(self, x):
        a = self.attention
        q, k, v = a.query(x), a.key(x), a.value(x)
        x = x + torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        return x + self.output(torch.relu(self.intermediate(x)))


class _Bert(nn.Module):
    def __init__(self, d=32, n=2):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_BertLayer(d) for _ in range(n))

    def forward(self, x):
        for layer in self.encoder.layer:
            x = layer(x)
        return x


def test_targets_convert_a_user_bert_style_module():
    torch.manual_seed(0)
    bert = _Bert().eval()
    snn = convert(bert, targets=["encoder.layer.*.attention.*", "encoder.layer.1.output"], k=3.0)
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    assert spiking == {f"encoder.layer.{i}.attention.{n}" for i in (0, 1) for n in ("query", "key", "value")} \
        | {"encoder.layer.1.output"}
    assert type(snn.encoder.layer[0].output) is nn.Linear
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        q = snn.encoder.layer[0].attention.query(x)
        ref = ref_spiking_linear(x, bert.encoder.layer[0].attention.query.weight,
                                 bert.encoder.layer[0].attention.query.bias, 128, 3.0)
        out = snn(x)
    assert torch.allclose(q.to(F64), ref, rtol=1e-6, atol=1e-9)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_int8_per_token_head_matches_its_formula():
    x = sample_input((2, 4, 5, 16), seed=9)
    x[0, 1, 2] = 0.0  # an all-zero (token, head) stays zero
    got = Int8PerTokenHead()(x)
    s = x.abs().amax(-1, keepdim=True).to(F64) / 127
    ref = torch.where(s > 0, torch.round(x.to(F64) / torch.where(s > 0, s, 1.0)).clamp(-128, 127) * s, 0.0)
    assert torch.allclose(got.to(F64), ref, rtol=1e-6, atol=0)
    assert torch.equal(got[0, 1, 2], torch.zeros(16))


# ============================================================================ checkpoints
IDS = torch.tensor([[3, 10, 200, 7, 7, 65, 66, 67, 1, 0, 255, 128, 9, 40, 41, 42, 43]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
@pytest.mark.parametrize("layout", ["7b", "76b"])
def test_save_then_load_gives_identical_logits(tmp_path, preset, layout):
    c = TINY if layout == "7b" else LIKE_76B_LOWRANK
    snn = convert(randomize(HybridForCausalLM(HybridConfig(**c)), seed=1), preset, k=2.5, group_size=16)
    out = save_spiking(snn, tmp_path / "snn", max_shard_bytes=20_000 if layout == "7b" else None)
    back = load_spiking(out)
    assert torch.equal(logits(snn), logits(back))
    assert back.spiking_config == snn.spiking_config
    assert {n: type(m) for n, m in back.named_modules()} == {n: type(m) for n, m in snn.named_modules()}
    with pytest.raises(FileExistsError):
        save_spiking(snn, out)


@pytest.fixture(scope="module")
def sb_checkpoint(tmp_path_factory):
    """A bf16 7B-layout checkpoint (library writer) with random biases."""
    d = tmp_path_factory.mktemp("src") / "sb7b"
    save_pretrained(randomize(HybridForCausalLM(HybridConfig(**TINY)), seed=2).to(BF16), d,
                    max_shard_bytes=30_000)
    return d


@pytest.mark.parametrize("preset", ["paper", "w8aspike"])
def test_streaming_conversion_equals_in_memory_conversion(tmp_path, sb_checkpoint, preset):
    scfg = convert_checkpoint(sb_checkpoint, tmp_path / "stream", preset, k=2.5, group_size=16,
                              progress=False)
    mem = convert(sbsnn.load_model(sb_checkpoint), preset, k=2.5, group_size=16)
    save_spiking(mem, tmp_path / "mem")
    streamed = load_spiking(tmp_path / "stream")
    assert torch.equal(logits(streamed), logits(mem))
    assert torch.equal(logits(streamed), logits(load_spiking(tmp_path / "mem")))
    assert scfg == mem.spiking_config == streamed.spiking_config
    assert logits(streamed).dtype == BF16
    shards = sorted(p.name for p in (tmp_path / "stream").glob("*.safetensors"))
    assert len(shards) == TINY["num_hidden_layers"] + 1  # one per block, one for the rest


def test_streaming_conversion_of_llama_equals_in_memory(tmp_path):
    src = write_hf_checkpoint(tmp_path / "llama", LLAMA, seed=3)
    convert_checkpoint(src, tmp_path / "out", "w8aspike", progress=False)
    mem = convert(sbsnn.load_model(src), "w8aspike")
    assert torch.equal(logits(load_spiking(tmp_path / "out")), logits(mem))


def test_streaming_conversion_releases_each_block_after_writing_it(tmp_path, sb_checkpoint, monkeypatch):
    """convert_checkpoint promises peak memory near one layer: once block i's shard is
    written, its SpikingLinear codes and its memory-mapped source tensors must be
    freeable. Watch the converted layers with weak references while the next shards are
    written."""
    import gc
    import weakref

    import sbsnn.converters.stream as stream

    made: list[tuple[str, weakref.ref]] = []
    real_from = SpikingLinear.from_linear.__func__

    def tracking_from(cls, linear, *a, **k):
        m = real_from(cls, linear, *a, **k)
        made.append((len(written), weakref.ref(m)))
        return m

    written: list[str] = []
    alive_at_write: list[int] = []
    real_write = stream._write

    def tracking_write(path, tensors, weight_map):
        gc.collect()
        # modules of blocks whose shards are on disk, allowing the block just written
        # (loop variables may still point at it): at most one block in memory
        alive_at_write.append(sum(1 for shard, ref in made if shard < len(written) - 1 and ref() is not None))
        written.append(path.name)
        return real_write(path, tensors, weight_map)

    monkeypatch.setattr(SpikingLinear, "from_linear", classmethod(tracking_from))
    monkeypatch.setattr(stream, "_write", tracking_write)
    convert_checkpoint(sb_checkpoint, tmp_path / "out", "paper", group_size=16, progress=False)
    assert len(written) == TINY["num_hidden_layers"] + 1
    assert alive_at_write == [0] * len(written), (
        f"SpikingLinear modules of already-written blocks still alive at each shard write: "
        f"{alive_at_write} (the whole model accumulates in memory)")


@pytest.fixture
def spiking_dir(tmp_path, sb_checkpoint):
    convert_checkpoint(sb_checkpoint, tmp_path / "snn", "paper", group_size=16, progress=False)
    return tmp_path / "snn"


def shard_of(d: Path, tensor: str) -> Path:
    return d / json.loads((d / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def test_truncated_shard_is_a_clear_error(spiking_dir):
    shard = shard_of(spiking_dir, "model.layers.1.attn.q_proj.weight_codes")
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=re.escape(shard.name)) as e:
        load_spiking(spiking_dir)
    assert "truncated" in str(e.value)


def test_corrupt_shard_header_is_a_clear_error(spiking_dir):
    shard = shard_of(spiking_dir, "model.layers.2.mlp.up_proj.weight_codes")
    raw = bytearray(shard.read_bytes())
    raw[10:20] = b"\xff" * 10  # inside the JSON header
    shard.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=re.escape(shard.name)):
        load_spiking(spiking_dir)


def test_missing_spiking_config_is_a_clear_error(spiking_dir):
    (spiking_dir / "spiking_config.json").unlink()
    with pytest.raises(CheckpointError, match="spiking_config.json"):
        load_spiking(spiking_dir)


def test_future_format_version_is_a_clear_error(spiking_dir):
    p = spiking_dir / "spiking_config.json"
    d = json.loads(p.read_text())
    d["format_version"] = 99
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="spiking_config.json") as e:
        load_spiking(spiking_dir)
    assert "99" in str(e.value)


def test_float_codes_are_a_clear_error(spiking_dir):
    name = "model.layers.0.attn.k_proj.weight_codes"
    shard = shard_of(spiking_dir, name)
    tensors = dict(sbsnn.models.read_safetensors(shard))
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors[name] = tensors[name].float()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="digest") as e:   # the changed file, first
        load_spiking(spiking_dir)
    assert shard.name in str(e.value)
    with pytest.raises(CheckpointError, match=re.escape(name)) as e:
        load_spiking(spiking_dir, verify=False)
    assert shard.name in str(e.value) and "int8" in str(e.value)


@pytest.mark.parametrize("key,value", [("group_size", 0), ("k", -1.0), ("k", None),
                                       ("coding", "unary")])
def test_invalid_spiking_config_values_are_a_clear_error(spiking_dir, key, value):
    """A hand-edited or corrupted spiking_config.json must fail at load with a
    CheckpointError naming the file, not later (or with ZeroDivisionError/TypeError)."""
    p = spiking_dir / "spiking_config.json"
    d = json.loads(p.read_text())
    d[key] = value
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="spiking_config.json"):
        load_spiking(spiking_dir)


def test_spiking_config_naming_a_module_the_model_lacks_is_a_clear_error(spiking_dir):
    p = spiking_dir / "spiking_config.json"
    d = json.loads(p.read_text())
    d["targets"].append("model.layers.9.attn.q_proj")
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="spiking_config.json"):
        load_spiking(spiking_dir)


# ============================================================================ fidelity
def test_fidelity_of_a_model_with_itself_is_perfect():
    from sbsnn.analysis import fidelity

    model = randomize(HybridForCausalLM(HybridConfig(**TINY)), seed=4)
    model.tokenizer = sbsnn.models.ByteTokenizer()
    f = fidelity(model, model, "To be, or not to be, that is the question." * 8, block_size=64)
    assert f.mean_kl == 0.0 and f.top1_agreement == 1.0
    assert f.float_perplexity == f.spiking_perplexity
    snn = convert(model, "paper", k=2.0)
    g = fidelity(model, snn, "To be, or not to be, that is the question." * 8, block_size=64)
    assert g.mean_kl > 0 and 0.0 <= g.top1_agreement <= 1.0
    assert g.tokens == f.tokens == len("To be, or not to be, that is the question." * 8) - 1


@pytest.fixture(scope="module")
def tiny_hybrid_fidelity():
    if not (TINY_HYBRID / "config.json").exists() or not (TINY_HYBRID / "heldout.txt").exists():
        pytest.skip(f"the embedded model is not there yet ({TINY_HYBRID}/config.json or "
                    "heldout.txt missing; examples/train_tiny.py writes them)")
    from sbsnn.analysis import fidelity

    model = sbsnn.load_model("tiny-hybrid")
    text = (TINY_HYBRID / "heldout.txt").read_text(encoding="utf-8")[:1500]
    results = {k: fidelity(model, convert(model, "paper", k=k), text) for k in (2.0, 3.0, 4.0)}
    print("\ntiny-hybrid fidelity, paper preset, ternary, group 128, first 1500 chars of heldout.txt:")
    for k, f in results.items():
        print(f"  k={k:g}: tokens {f.tokens}, ppl float {f.float_perplexity:.4f}, spiking "
              f"{f.spiking_perplexity:.4f} ({100 * (f.spiking_perplexity / f.float_perplexity - 1):+.2f} %), "
              f"top-1 agreement {f.top1_agreement:.4f}, mean KL {f.mean_kl:.5f} nats")
    return results


def test_tiny_hybrid_spiking_perplexity_stays_close_at_k3(tiny_hybrid_fidelity):
    f = tiny_hybrid_fidelity[3.0]
    for g in tiny_hybrid_fidelity.values():
        assert 0.0 <= g.top1_agreement <= 1.0 and g.mean_kl >= 0.0
        assert g.float_perplexity == f.float_perplexity  # same float model, same text
        assert abs(g.spiking_perplexity / g.float_perplexity - 1) < 0.02
    # Measured (fp16 model of 2026-11-28 22:28, 1500 chars): k=3 +0.64 % perplexity,
    # agreement 0.965, KL 0.0039 nats. For scale: k=1.5 gives +0.06 %, 0.919, 0.017;
    # k=1 gives +5.5 %, 0.885, 0.036. The perplexity bound catches a k=1-like breakage;
    # agreement and KL, which separate the settings much better, catch k<=1.5 quality.
    assert f.spiking_perplexity / f.float_perplexity < 1.02
    assert f.top1_agreement > 0.93
    assert f.mean_kl < 0.01


def test_tiny_hybrid_higher_k_is_closer_to_float(tiny_hybrid_fidelity):
    """SpikingBrain Table 11: larger k (finer spikes), closer to the float model.

    Asserted on KL and top-1 agreement, which fall/rise monotonically on every 1500-char
    slice of heldout.txt (KL ~0.009 / 0.004 / 0.002 at k = 2 / 3 / 4). The perplexity gap
    |ppl_spiking - ppl_float| is 0.01-0.03 here (< 1 %), below its own noise: its
    k-ordering held on only 1 of 4 slices (and not on the whole text), so it is printed
    by the fixture, not asserted."""
    f = tiny_hybrid_fidelity
    assert f[4.0].mean_kl < f[3.0].mean_kl < f[2.0].mean_kl
    assert f[4.0].top1_agreement > f[3.0].top1_agreement > f[2.0].top1_agreement


# ============================================================================ the format doc
def doc_snippet() -> str:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- snippet: read-one-layer -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"{DOC}: the read-one-layer snippet is missing"
    return m.group(1)


def run_snippet(ckpt: Path, layer: str, x: np.ndarray) -> np.ndarray:
    code = doc_snippet()
    assert "sbsnn" not in code and "torch" not in code
    scope = {"ckpt": str(ckpt), "layer": layer, "x": x}
    exec(compile(code, "<docs/spiking-checkpoint.md: read-one-layer>", "exec"), scope)
    return scope["y"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_doc_snippet_reproduces_a_layer_without_sbsnn(tmp_path, sb_checkpoint, dtype):
    if dtype == "float32":
        src = tmp_path / "f32"
        save_pretrained(randomize(HybridForCausalLM(HybridConfig(**{**TINY, "hidden_size": 40,
                                                                    "num_attention_heads": 4})),
                                  seed=5), src)
    else:
        src = sb_checkpoint
    convert_checkpoint(src, tmp_path / "snn", "w8aspike", k=2.5, group_size=16, progress=False)
    model = load_spiking(tmp_path / "snn")
    for layer in ("model.layers.0.attn.q_proj", "model.layers.0.attn.gk_proj.1",
                  "model.layers.3.mlp.up_proj"):
        sl = model.get_submodule(layer)
        x = sample_input((6, sl.in_features), seed=11)
        # sbsnn computes thresholds in the activation dtype; the snippet works in float32
        ref = SpikingLinear(sl.in_features, sl.out_features, sl.bias is not None, sl.group_size, sl.k)
        ref.weight_codes.copy_(sl.weight_codes)
        ref.weight_scales.copy_(sl.weight_scales)
        if sl.bias is not None:
            ref.bias.data.copy_(sl.bias.float())
        with torch.no_grad():
            want = ref(x).numpy()
        y = run_snippet(tmp_path / "snn", layer, x.numpy())
        assert y.shape == want.shape
        assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max(), layer


def test_worker_threads_follow_the_callers_grad_mode(two_threads):
    """Grad mode is thread-local: a spiking layer split over sbsnn's workers must build
    no graph under torch.no_grad (and fail nowhere), and give the same values with grad."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 4096)
    sl = SpikingLinear.from_linear(lin)
    x = torch.randn(64, 512)
    with torch.no_grad():
        y0 = sl(x)
    assert y0.grad_fn is None and not y0.requires_grad
    y1 = sl(x)
    assert torch.equal(y0, y1.detach())
