"""Model-level tests: GLA forms, window attention, prompt-then-decode, decode state,
generation, config."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.models import ByteTokenizer, CheckpointError, HybridConfig, HybridForCausalLM
from sbsnn.models.attention import WindowAttention
from sbsnn.models.gla import GatedLinearAttention, gla_chunked, gla_recurrent

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter a clearly non-trivial value (norm weights around 1), so that a
    wrong mask, position or state shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * r)
            else:
                p.copy_(std * r)
    return model


def make_model(cfg: HybridConfig, seed: int = 0) -> HybridForCausalLM:
    torch.manual_seed(seed)
    return randomize_(HybridForCausalLM(cfg), seed).to(F64).eval()


def gla_inputs(B, Hkv, G, L, dk, dv, gate_scale, seed, with_state):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hkv, G, L, dk, generator=gen, dtype=F64)
    k = torch.randn(B, Hkv, L, dk, generator=gen, dtype=F64)
    v = torch.randn(B, Hkv, L, dv, generator=gen, dtype=F64)
    # logsigmoid of (possibly) large negative numbers: strongly decaying gates.
    g = F.logsigmoid(gate_scale * torch.randn(B, Hkv, L, dk, generator=gen, dtype=F64) - gate_scale)
    s0 = torch.randn(B, Hkv, dk, dv, generator=gen, dtype=F64) if with_state else None
    return q, k, v, g, s0


# ============================================================================ GLA
@settings(deadline=None, max_examples=40)
@given(L=st.sampled_from([1, 2, 5, 7, 16, 17, 33, 50]),
       chunk=st.sampled_from([1, 3, 4, 8, 16]),
       Hkv=st.integers(1, 2), G=st.integers(1, 3), dk=st.sampled_from([1, 4, 8]),
       dv=st.sampled_from([1, 3, 8]), gate_scale=st.sampled_from([0.5, 5.0, 1e3, 1e6]),
       with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_gla_chunked_equals_recurrent(L, chunk, Hkv, G, dk, dv, gate_scale, with_state, seed):
    q, k, v, g, s0 = gla_inputs(2, Hkv, G, L, dk, dv, gate_scale, seed, with_state)
    o_r, s_r = gla_recurrent(q, k, v, g, s0)
    o_c, s_c = gla_chunked(q, k, v, g, s0, chunk_size=chunk)
    assert o_c.shape == o_r.shape == (2, Hkv, G, L, dv)
    assert torch.isfinite(o_c).all() and torch.isfinite(s_c).all()
    assert torch.isfinite(o_r).all() and torch.isfinite(s_r).all()
    assert rel_err(o_c, o_r) < 1e-6
    assert rel_err(s_c, s_r) < 1e-6 or s_r.norm() < 1e-200


def test_gla_chunked_continues_from_state():
    """Chunked over a prefix, then over the rest from its state, equals one pass."""
    q, k, v, g, s0 = gla_inputs(1, 2, 2, 41, 8, 8, 1.0, 3, True)
    o_all, s_all = gla_chunked(q, k, v, g, s0, chunk_size=8)
    o1, s1 = gla_chunked(q[..., :19, :], k[..., :19, :], v[..., :19, :], g[..., :19, :], s0,
                         chunk_size=8)
    o2, s2 = gla_recurrent(q[..., 19:, :], k[..., 19:, :], v[..., 19:, :], g[..., 19:, :], s1)
    assert rel_err(torch.cat([o1, o2], dim=3), o_all) < 1e-12
    assert rel_err(s2, s_all) < 1e-12


def test_gla_chunked_fully_forgetting_gate():
    """g = -inf (decay factor exp(g) = 0: forget everything) is a valid gate; the module
    docstring promises no overflow 'however strongly the gates decay'. The recurrent
    form gives the exact answer (each output sees only its own token)."""
    q, k, v, g, _ = gla_inputs(1, 1, 2, 20, 4, 4, 1.0, 5, False)
    g = torch.full_like(g, float("-inf"))
    o_r, _ = gla_recurrent(q, k, v, g)
    want = torch.einsum("bhgtk,bhtk,bhtv->bhgtv", q * 4 ** -0.5, k, v)
    assert rel_err(o_r, want) < 1e-12
    o_c, s_c = gla_chunked(q, k, v, g, chunk_size=8)
    assert torch.isfinite(o_c).all(), "gla_chunked gives NaN for a gate of -inf"
    assert rel_err(o_c, want) < 1e-12


def naive_gla_upstream(q, k, v, g, s0=None):
    """Upstream layout: q [B, L, H, dk]; k, g [B, L, Hkv, dk]; v [B, L, Hkv, dv].
    k, v, g are repeated per query head (repeat_kv: query head h uses kv head h // G),
    and every query head runs its own explicit state."""
    B, L, H, dk = q.shape
    Hkv, dv = k.shape[2], v.shape[-1]
    G = H // Hkv
    rep = lambda t: t.repeat_interleave(G, dim=2)  # noqa: E731  (= repeat_kv)
    k, v, g = rep(k), rep(v), rep(g)
    out = torch.zeros(B, L, H, dv, dtype=q.dtype)
    finals = torch.zeros(B, H, dk, dv, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(dk, dv, dtype=q.dtype) if s0 is None else s0[b, h // G].clone()
            for t in range(L):
                S = torch.exp(g[b, t, h])[:, None] * S + torch.outer(k[b, t, h], v[b, t, h])
                out[b, t, h] = (q[b, t, h] * dk ** -0.5) @ S
            finals[b, h] = S
    return out, finals


@pytest.mark.parametrize("Hkv,G,with_state", [(1, 1, False), (2, 3, False), (2, 2, True)])
def test_gla_recurrent_matches_naive_per_head_loop(Hkv, G, with_state):
    B, L, dk, dv = 2, 9, 4, 3
    gen = torch.Generator().manual_seed(Hkv * 10 + G)
    q = torch.randn(B, L, Hkv * G, dk, generator=gen, dtype=F64)
    k = torch.randn(B, L, Hkv, dk, generator=gen, dtype=F64)
    v = torch.randn(B, L, Hkv, dv, generator=gen, dtype=F64)
    g = F.logsigmoid(torch.randn(B, L, Hkv, dk, generator=gen, dtype=F64))
    s0 = torch.randn(B, Hkv, dk, dv, generator=gen, dtype=F64) if with_state else None
    want, want_states = naive_gla_upstream(q, k, v, g, s0)
    # Library layout: query head h = kv_head * G + group (the same as repeat_kv).
    ql = q.view(B, L, Hkv, G, dk).permute(0, 2, 3, 1, 4)
    kl, vl, gl = (t.transpose(1, 2) for t in (k, v, g))
    o, s = gla_recurrent(ql, kl, vl, gl, s0)
    got = o.permute(0, 3, 1, 2, 4).reshape(B, L, Hkv * G, dv)
    assert rel_err(got, want) < 1e-12
    # One shared state per kv head is exactly each query head's own state.
    for h in range(Hkv * G):
        assert rel_err(s[:, h // G], want_states[:, h]) < 1e-12
    oc, _ = gla_chunked(ql, kl, vl, gl, s0, chunk_size=4)
    assert rel_err(oc.permute(0, 3, 1, 2, 4).reshape(B, L, Hkv * G, dv), want) < 1e-12


def test_gla_layer_matches_fla_formula():
    """GatedLinearAttention = fla's GLA as SpikingBrain-7B configures it: ReLU feature
    map on q and k, gate logsigmoid(gk_proj(x))/16, per-head RMSNorm, o_proj."""
    torch.manual_seed(0)
    hidden, H, Hkv, D, L = 16, 4, 2, 8, 11
    layer = randomize_(GatedLinearAttention(hidden, H, Hkv, D, norm_eps=1e-6), 1).to(F64)
    x = torch.randn(1, L, hidden, dtype=F64)
    q = F.relu(layer.q_proj(x)).view(1, L, H, D)
    k = F.relu(layer.k_proj(x)).view(1, L, Hkv, D)
    v = layer.v_proj(x).view(1, L, Hkv, D)
    g = (F.logsigmoid(layer.gk_proj[1](layer.gk_proj[0](x))) / 16.0).view(1, L, Hkv, D)
    o, _ = naive_gla_upstream(q, k, v, g)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.g_norm.weight
    want = layer.o_proj(o.reshape(1, L, H * D))
    with torch.no_grad():
        assert rel_err(layer(x), want) < 1e-12


# ============================================================================ window attention
@pytest.mark.parametrize("W,sinks", [(1, 0), (4, 0), (5, 0), (4, 2)])
def test_window_mask_shows_exactly_window_keys(W, sinks):
    attn = WindowAttention(8, 2, 1, 4, window=W, rope_theta=1e4, num_sinks=sinks)
    L = 20
    pos = torch.arange(L)
    m = attn.visible(pos, pos)
    for i in range(L):
        want = {j for j in range(L) if j <= i and (i - j < W or j < sinks)}
        assert set(m[i].nonzero().flatten().tolist()) == want
    if sinks == 0:
        assert m.sum(1).tolist() == [min(i + 1, W) for i in range(L)]


@pytest.mark.parametrize("W", [1, 3, 6])
def test_window_attention_module_ignores_tokens_beyond_window(W):
    torch.manual_seed(0)
    attn = randomize_(WindowAttention(16, 4, 2, 4, window=W, rope_theta=1e4), 2).to(F64)
    L, i = 16, 12
    x = torch.randn(1, L, 16, dtype=F64)
    with torch.no_grad():
        base = attn(x)
        far, near = x.clone(), x.clone()
        far[:, i - W] += 3.0
        near[:, i - W + 1] += 3.0
        out_far, out_near = attn(far), attn(near)
    assert torch.allclose(out_far[:, i], base[:, i], rtol=0, atol=1e-13)
    assert (out_near[:, i] - base[:, i]).abs().max() > 1e-4
    # Positions at or beyond i - W + W = i see the far token no more either.
    assert torch.allclose(out_far[:, i:], base[:, i:], rtol=0, atol=1e-13)


@pytest.mark.parametrize("W", [2, 5])
def test_swa_model_ignores_tokens_beyond_window(tiny_config, W):
    cfg = tiny_config(num_hidden_layers=1, attn_layers=[0], sliding_window=W)
    model = make_model(cfg, seed=1)
    assert model.model.layers[0].kind == "swa"
    L, i = 14, 11
    ids = torch.randint(0, 256, (1, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids)
        for j, influences in ((i - W, False), (i - W + 1, True)):
            pert = ids.clone()
            pert[0, j] = (pert[0, j] + 97) % 256
            out = model(pert)
            diff = (out[0, i] - base[0, i]).abs().max().item()
            if influences:
                assert diff > 1e-4, f"token {j} inside the window had no influence on {i}"
            else:
                assert diff < 1e-12, f"token {j} beyond the window influenced {i}"


# ============================================================================ decoding
LAYOUTS = {
    "7b": dict(),
    "7b-sinks": dict(num_sink_tokens=2),
    "76b": dict(num_hidden_layers=3, attn_layers=[], parallel_mixer=True,
                full_attn_layers=[1], num_sink_tokens=2, linear_attn_gate="one_minus_k",
                linear_feature_map="sigmoid", num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, num_shared_experts=1,
                shared_expert_intermediate_size=24, dense_layers=[0], norm_topk_prob=True),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_prompt_then_decode_equals_full_forward(tiny_config, layout):
    cfg = tiny_config(**LAYOUTS[layout])
    model = make_model(cfg, seed=2)
    W = cfg.sliding_window
    L, P = 6 * W + 3, 5  # decode well past several windows (and several GLA chunks)
    ids = torch.randint(0, 256, (2, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state()
        got = [model(ids[:, :P], state)]
        for t in range(P, L):
            got.append(model(ids[:, t:t + 1], state))
    got = torch.cat(got, dim=1)
    assert got.shape == full.shape == (2, L, cfg.vocab_size)
    torch.testing.assert_close(got, full, rtol=1e-9, atol=1e-9)
    assert state.seen == L + cfg.num_sink_tokens


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("block", [1, 3, 7])
def test_prefill_in_blocks_equals_full_forward(tiny_config, layout, block):
    cfg = tiny_config(**LAYOUTS[layout])
    model = make_model(cfg, seed=3)
    L = 23
    ids = torch.randint(0, 256, (1, L), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state()
        last = model.prefill(ids, state, block_size=block)
        torch.testing.assert_close(last, full[:, -1], rtol=1e-9, atol=1e-9)
        # and decoding continues correctly from the block-built state
        nxt = torch.tensor([[42]])
        ref = model(torch.cat([ids, nxt], dim=1))[:, -1]
        torch.testing.assert_close(model(nxt, state)[:, -1], ref, rtol=1e-9, atol=1e-9)


def _decode_sizes(model, steps_marks):
    state = model.new_state()
    sizes = {}
    with torch.no_grad():
        model(torch.tensor([[1]]), state)
        for n in range(1, max(steps_marks) + 1):
            model(torch.tensor([[(n * 7) % 256]]), state)
            if n in steps_marks:
                sizes[n] = state.nbytes()
    return sizes


def test_decode_state_does_not_grow(tiny_config):
    cfg = tiny_config()
    W = cfg.sliding_window
    model = make_model(cfg, seed=4)
    sizes = _decode_sizes(model, {2 * W, 10 * W})
    assert sizes[2 * W] > 0
    assert sizes[10 * W] == sizes[2 * W]


def test_full_attention_cache_grows(tiny_config):
    cfg = tiny_config(full_attn_layers=[1])
    W = cfg.sliding_window
    model = make_model(cfg, seed=4)
    sizes = _decode_sizes(model, {2 * W, 10 * W})
    assert sizes[10 * W] > sizes[2 * W]


# ============================================================================ generation
@pytest.fixture
def byte_model(tiny_config):
    model = HybridForCausalLM(tiny_config()).eval()
    randomize_(model, 5)
    model.tokenizer = ByteTokenizer()
    return model


def test_generate_deterministic_and_streaming(byte_model):
    out = byte_model.generate("Hello", max_new_tokens=12, seed=7)
    assert isinstance(out, str) and out
    assert byte_model.generate("Hello", max_new_tokens=12, seed=7) == out
    pieces = list(byte_model.stream("Hello", max_new_tokens=12, seed=7))
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == out
    seen = []
    assert byte_model.generate("Hello", max_new_tokens=12, seed=7, on_text=seen.append) == out
    assert "".join(seen) == out


def test_generate_greedy_follows_argmax(byte_model):
    ids = list(b"abc")
    toks = list(byte_model.stream_ids(ids, max_new_tokens=5, temperature=0))
    seq = ids[:]
    with torch.no_grad():
        for t in toks:
            assert t == int(byte_model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(t)


def test_generate_empty_prompt_is_a_clear_error(byte_model):
    with pytest.raises(ValueError, match="empty"):
        byte_model.generate("", max_new_tokens=3, seed=0)


def test_generate_without_tokenizer_is_a_clear_error(tiny_config):
    model = HybridForCausalLM(tiny_config())
    with pytest.raises(RuntimeError, match="tokenizer"):
        model.generate("hi", max_new_tokens=2)


# ============================================================================ config
SB7B_CONFIG = {
    "architectures": ["GLAswaForCausalLM"],
    "attn_mode": "chunk",
    "auto_map": {"AutoConfig": "configuration_gla_swa.GLAswaConfig",
                 "AutoModelForCausalLM": "modeling_gla_swa.GLAswaForCausalLM"},
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "enable_spike": False,
    "spike_dynamic_scale": True,
    "spike_bitwidth": 4,
    "hidden_act": "swish",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 131072,
    "model_type": "gla_swa",
    "norm_eps": 1e-06,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "attn_layers": list(range(1, 28, 2)),
    "rope_theta": 1000000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_short_conv": False,
    "vocab_size": 152064,
}


def test_config_from_sb7b_json_keeps_harmless_keys(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(SB7B_CONFIG))
    cfg = HybridConfig.from_json(p)
    assert cfg.model_type == "gla_swa"
    assert cfg.head_dim == 128 and cfg.num_key_value_heads == 4
    assert [cfg.layer_kind(i) for i in range(4)] == ["gla", "swa", "gla", "swa"]
    assert cfg.window_for(1) == 4096
    for k in ("architectures", "auto_map", "spike_dynamic_scale",
              "spike_bitwidth", "torch_dtype", "use_cache"):
        assert cfg.extra[k] == SB7B_CONFIG[k]
    d = cfg.to_dict()
    for k, v in SB7B_CONFIG.items():
        assert d[k] == v, k
    assert HybridConfig.from_dict(json.loads(json.dumps(d))) == cfg
    cfg.save(tmp_path / "again.json")
    assert HybridConfig.from_json(tmp_path / "again.json") == cfg


@pytest.mark.parametrize("change,match", [
    (dict(num_attention_heads=6, num_key_value_heads=4), r"multiple of num_key_value_heads"),
    (dict(attn_layers=[1, 28]), r"'attn_layers' = \[1, 28\]"),
    (dict(attn_layers=[-1, 3]), r"'attn_layers' = \[-1, 3\]"),
    (dict(use_short_conv=True), r"use_short_conv"),
    (dict(enable_spike=True), r"'enable_spike' = True"),
    (dict(attn_layers=[0, 2]), r"'attn_layers' = \[0, 2\].*GLAswaConfig derives"),
    (dict(some_new_gate=0.5), r"'some_new_gate' = 0.5 is not understood"),
    (dict(hidden_act="xielu"), r"hidden_act"),   # learned parameters: not implemented
    (dict(sliding_window=0), r"sliding_window"),
    (dict(num_key_value_heads=0), r"num_key_value_heads"),
])
def test_config_invalid_values_are_named(tmp_path, change, match):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**SB7B_CONFIG, **change}))
    with pytest.raises(CheckpointError, match=match) as e:
        HybridConfig.from_json(p)
    assert str(p) in str(e.value)


def test_config_translates_llama():
    cfg = HybridConfig.from_dict({
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu"})
    assert [cfg.layer_kind(i) for i in range(3)] == ["full"] * 3
    assert all(cfg.window_for(i) is None for i in range(3))
    assert cfg.norm_eps == 1e-5 and cfg.rope_theta == 500000.0
    assert cfg.attention_bias is False
    assert math.isclose(HybridConfig.from_dict({**cfg.to_dict()}).norm_eps, 1e-5)


@pytest.mark.parametrize("key", ["rope_theta", "sliding_window", "attn_layers", "norm_eps"])
def test_own_config_never_defaults_what_the_trained_model_depends_on(tmp_path, key):
    d = HybridConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, attn_layers=[1],
                     sliding_window=8, rope_theta=1e4).to_dict()
    del d[key]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=f"config key '{key}' is missing") as e:
        HybridConfig.from_json(p)
    assert str(p) in str(e.value)
