"""Gated DeltaNet: the chunked and recurrent forms of the rule agree, the conv state
carries a prompt into decoding, and the layer equals transformers' Qwen3-Next and
Qwen3.5 layers (weights copied by name) over a prefill and token-by-token decoding."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.models.gated_deltanet import (
    GatedDeltaNet,
    cache_bytes,
    gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
    l2norm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# Small unusual sizes: 2 key heads, 4 value heads (2 per key head), head dims apart
# from hidden / heads and from each other.
SIZES = {"hidden_size": 48, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
         "linear_key_head_dim": 12, "linear_value_head_dim": 20, "linear_conv_kernel_dim": 4}


def rule_inputs(B, Hk, r, L, dk, dv, dtype, seed, decay=2.0, with_state=True):
    gen = torch.Generator().manual_seed(seed)
    Hv = Hk * r

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q, k = l2norm(rand(B, Hk, L, dk)), l2norm(rand(B, Hk, L, dk))
    v = rand(B, Hv, L, dv)
    g = -torch.rand(B, Hv, L, generator=gen, dtype=dtype) * decay
    beta = torch.rand(B, Hv, L, generator=gen, dtype=dtype)
    s0 = rand(B, Hv, dk, dv) if with_state else None
    return q, k, v, g, beta, s0


def assert_close(a, b, rtol):
    scale = b.abs().max().clamp_min(1e-30)
    err = (a - b).abs().max() / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.1g}"


@pytest.mark.parametrize("L", [1, 63, 64, 150])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_recurrent_float64(L, with_state):
    q, k, v, g, beta, s0 = rule_inputs(2, 2, 2, L, 12, 20, torch.float64, L, with_state=with_state)
    o_r, s_r = gated_delta_rule_recurrent(q, k, v, g, beta, s0)
    o_c, s_c = gated_delta_rule_chunked(q, k, v, g, beta, s0)
    assert o_c.shape == o_r.shape == (2, 4, L, 20) and s_c.shape == (2, 4, 12, 20)
    assert_close(o_c, o_r, 1e-12)
    assert_close(s_c, s_r, 1e-12)


def test_chunked_equals_recurrent_float32():
    q, k, v, g, beta, s0 = rule_inputs(1, 2, 3, 200, 16, 8, torch.float32, 7)
    o_r, s_r = gated_delta_rule_recurrent(q, k, v, g, beta, s0)
    o_c, s_c = gated_delta_rule_chunked(q, k, v, g, beta, s0)
    assert_close(o_c, o_r, 1e-5)
    assert_close(s_c, s_r, 1e-5)


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 40), chunk=st.sampled_from([1, 3, 8, 16]), Hk=st.integers(1, 3),
       r=st.integers(1, 3), dk=st.integers(1, 9), dv=st.integers(1, 7),
       decay=st.sampled_from([0.0, 0.5, 8.0, 200.0]), with_state=st.booleans(),
       seed=st.integers(0, 2**16))
def test_chunked_equals_recurrent_random_shapes(L, chunk, Hk, r, dk, dv, decay, with_state, seed):
    q, k, v, g, beta, s0 = rule_inputs(2, Hk, r, L, dk, dv, torch.float64, seed, decay, with_state)
    o_r, s_r = gated_delta_rule_recurrent(q, k, v, g, beta, s0)
    o_c, s_c = gated_delta_rule_chunked(q, k, v, g, beta, s0, chunk_size=chunk)
    assert_close(o_c, o_r, 1e-10)
    assert_close(s_c, s_r, 1e-10)


def test_rule_matches_transformers_reference():
    """The definition agrees with transformers' torch recurrent fallback (float32 there)."""
    from transformers.models.qwen3_next.modeling_qwen3_next import (
        torch_chunk_gated_delta_rule,
        torch_recurrent_gated_delta_rule,
    )
    q, k, v, g, beta, s0 = rule_inputs(2, 2, 2, 90, 12, 20, torch.float32, 3)
    args = [x.transpose(1, 2) for x in (q, k, v, g, beta)]
    o, s = gated_delta_rule_recurrent(q, k, v, g, beta, s0)
    for fn in (torch_recurrent_gated_delta_rule, torch_chunk_gated_delta_rule):
        o_t, s_t = fn(*args[:3], g=args[3], beta=args[4], initial_state=s0, output_final_state=True)
        assert_close(o, o_t.transpose(1, 2), 1e-5)
        assert_close(s, s_t, 1e-5)


def test_chunked_continues_from_state():
    q, k, v, g, beta, s0 = rule_inputs(1, 2, 2, 100, 12, 20, torch.float64, 11)
    o_all, s_all = gated_delta_rule_chunked(q, k, v, g, beta, s0)
    cut = 70
    o1, s1 = gated_delta_rule_chunked(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], g[..., :cut],
                                      beta[..., :cut], s0)
    o2, s2 = gated_delta_rule_recurrent(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], g[..., cut:],
                                        beta[..., cut:], s1)
    assert_close(torch.cat([o1, o2], dim=2), o_all, 1e-12)
    assert_close(s2, s_all, 1e-12)


def make_layer(layout, dtype=torch.float64, seed=0, **overrides):
    sizes = {**SIZES, **overrides}
    torch.manual_seed(seed)
    layer = GatedDeltaNet(sizes["hidden_size"], sizes["linear_num_key_heads"],
                          sizes["linear_num_value_heads"], sizes["linear_key_head_dim"],
                          sizes["linear_value_head_dim"], sizes["linear_conv_kernel_dim"],
                          layout=layout, chunk_size=16)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() < 2 else p.shape[-1] ** -0.5))
    return layer.to(dtype)


@pytest.mark.parametrize("layout", ["qwen3_next", "qwen3_5"])
def test_layer_prompt_then_decode_equals_one_pass(layout):
    layer = make_layer(layout)
    x = torch.randn(2, 70, SIZES["hidden_size"], dtype=torch.float64)
    with torch.no_grad():
        y_all = layer(x)
        cache: dict = {}
        parts = [layer(x[:, :37], cache)]
        parts += [layer(x[:, t:t + 1], cache) for t in range(37, 50)]
        parts.append(layer(x[:, 50:], cache))                 # a second prompt after decoding
    assert_close(torch.cat(parts, dim=1), y_all, 1e-12)


@pytest.mark.parametrize("layout", ["qwen3_next", "qwen3_5"])
def test_state_bytes_constant_while_decoding(layout):
    layer = make_layer(layout, dtype=torch.float32)
    x = torch.randn(1, 1024, SIZES["hidden_size"])
    expected = layer.state_bytes(1, torch.float32)
    c = SIZES
    conv_dim = 2 * c["linear_num_key_heads"] * c["linear_key_head_dim"] \
        + c["linear_num_value_heads"] * c["linear_value_head_dim"]
    assert expected == 4 * (conv_dim * 3 + 4 * 12 * 20)
    assert layer.state_bytes(3, torch.bfloat16) == 3 * (2 * conv_dim * 3 + 4 * 4 * 12 * 20)
    cache: dict = {}
    seen = set()
    with torch.no_grad():
        layer(x[:, :5], cache)
        for t in range(5, x.shape[1]):
            layer(x[:, t:t + 1], cache)
            seen.add(cache_bytes(cache))
    assert seen == {expected}


# ---- equality with transformers' own layers ----------------------------------------

def hf_layer(layout):
    if layout == "qwen3_next":
        from transformers import Qwen3NextConfig
        from transformers.models.qwen3_next.modeling_qwen3_next import (
            Qwen3NextGatedDeltaNet as cls,
        )
        config = Qwen3NextConfig(**SIZES, num_hidden_layers=1, layer_types=["linear_attention"],
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                 intermediate_size=32, vocab_size=64, num_experts=2,
                                 num_experts_per_tok=1, moe_intermediate_size=16,
                                 shared_expert_intermediate_size=16, rms_norm_eps=1e-5)
    else:
        from transformers import Qwen3_5TextConfig
        from transformers.models.qwen3_5.modeling_qwen3_5 import (
            Qwen3_5GatedDeltaNet as cls,
        )
        config = Qwen3_5TextConfig(**SIZES, num_hidden_layers=1, layer_types=["linear_attention"],
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   intermediate_size=32, vocab_size=64, rms_norm_eps=1e-5)
    return config, cls(config, layer_idx=0).eval()


@pytest.mark.parametrize("layout", ["qwen3_next", "qwen3_5"])
def test_layer_equals_transformers(layout):
    from transformers import DynamicCache

    config, ref = hf_layer(layout)
    layer = GatedDeltaNet(config.hidden_size, config.linear_num_key_heads,
                          config.linear_num_value_heads, config.linear_key_head_dim,
                          config.linear_value_head_dim, config.linear_conv_kernel_dim,
                          norm_eps=config.rms_norm_eps, activation=config.hidden_act,
                          layout=layout)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():   # random everywhere, the norm weight and dt_bias too
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() < 2 else p.shape[-1] ** -0.5))
    missing = layer.load_state_dict(ref.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    assert sorted(layer.state_dict()) == sorted(ref.state_dict())

    prompt, steps = 83, 12
    x = torch.randn(2, prompt + steps, config.hidden_size)
    with torch.no_grad():
        assert_close(layer(x), ref(x), 1e-5)                  # one pass, no cache
        hf_cache = DynamicCache(config=config)
        cache: dict = {}
        assert_close(layer(x[:, :prompt], cache), ref(x[:, :prompt], cache=hf_cache), 1e-5)
        for t in range(prompt, prompt + steps):
            xt = x[:, t:t + 1]
            assert_close(layer(xt, cache), ref(xt, cache=hf_cache), 1e-5)
        K = config.linear_conv_kernel_dim
        assert_close(cache["conv_state"], hf_cache.layers[0].conv_states[0][..., -(K - 1):], 1e-6)
        assert_close(cache["recurrent_state"], hf_cache.layers[0].recurrent_states[0], 1e-5)


def test_refuses_bad_shapes():
    with pytest.raises(ValueError, match="multiple"):
        GatedDeltaNet(48, 3, 4, 12, 20)
    with pytest.raises(ValueError, match="layout"):
        GatedDeltaNet(48, 2, 4, 12, 20, layout="qwen3")
    with pytest.raises(ValueError, match="activation"):
        GatedDeltaNet(48, 2, 4, 12, 20, activation="prelu")
