"""LFM2's gated short convolution: the prompt and token-by-token forms agree, decoding
continues a prompt exactly, and the module equals transformers' Lfm2ShortConv."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.models.short_conv import (ShortConv, causal_conv1d, causal_conv1d_recurrent,
                                     causal_conv1d_step, conv_state_zeros)

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def conv_inputs(B, D, L, K, dtype, seed=0, state=True, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, L, generator=g, dtype=dtype)
    w = torch.randn(D, K, generator=g, dtype=dtype)
    b = torch.randn(D, generator=g, dtype=dtype) if bias else None
    s = torch.randn(B, D, K - 1, generator=g, dtype=dtype) if state else None
    return x, w, b, s


# ---------------------------------------------------------------- the two forms


@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("L", [1, 3, 37, 83])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_prompt_form_equals_recurrent_float64(K, L, activation):
    x, w, b, s = conv_inputs(2, 9, L, K, torch.float64, seed=K * 100 + L)
    z1, s1 = causal_conv1d(x, w, b, s, activation)
    z2, s2 = causal_conv1d_recurrent(x, w, b, s, activation)
    assert z1.shape == (2, 9, L) and s1.shape == s2.shape == (2, 9, K - 1)
    torch.testing.assert_close(z1, z2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


@pytest.mark.parametrize("K", [3, 5])
@pytest.mark.parametrize("bias", [False, True])
def test_prompt_form_equals_recurrent_float32(K, bias):
    x, w, b, s = conv_inputs(3, 36, 83, K, torch.float32, seed=K, bias=bias)
    z1, s1 = causal_conv1d(x, w, b, s)
    z2, s2 = causal_conv1d_recurrent(x, w, b, s)
    assert rel(z1, z2) < 1e-5
    assert torch.equal(s1, s2)


def test_short_prompt_keeps_part_of_the_old_state():
    # L < K - 1: the state it leaves is the tail of (old state, prompt).
    x, w, b, s = conv_inputs(1, 4, 2, 5, torch.float64)
    _, s1 = causal_conv1d(x, w, b, s)
    torch.testing.assert_close(s1, torch.cat([s[:, :, 2:], x], dim=-1), rtol=0, atol=0)
    z0, s0 = causal_conv1d(x[:, :, :0], w, b, s)
    assert z0.shape == (1, 4, 0) and torch.equal(s0, s)


def test_no_state_is_zero_state_and_definition():
    # Zero state = zero padding on the left: the textbook causal depthwise convolution.
    x, w, b, _ = conv_inputs(2, 5, 11, 3, torch.float64, state=False)
    z, _ = causal_conv1d(x, w, b)
    z0, _ = causal_conv1d(x, w, b, conv_state_zeros(2, 5, 3, torch.float64))
    torch.testing.assert_close(z, z0, rtol=0, atol=0)
    ref = torch.zeros_like(x)
    for t in range(11):
        for j in range(3):
            if t - 2 + j >= 0:
                ref[:, :, t] += w[:, j] * x[:, :, t - 2 + j]
    torch.testing.assert_close(z, ref + b[:, None], rtol=1e-12, atol=1e-12)


def test_prompt_split_anywhere_equals_one_pass():
    x, w, b, s = conv_inputs(2, 7, 50, 4, torch.float64, seed=3)
    z, s_end = causal_conv1d(x, w, b, s)
    state, outs = s, []
    for lo, hi in [(0, 1), (1, 2), (2, 19), (19, 20), (20, 50)]:
        zi, state = causal_conv1d(x[:, :, lo:hi], w, b, state)
        outs.append(zi)
    torch.testing.assert_close(torch.cat(outs, -1), z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, s_end, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), D=st.integers(1, 12), L=st.integers(0, 40), K=st.integers(1, 6),
       bias=st.booleans(), state=st.booleans(), silu=st.booleans(), seed=st.integers(0, 2**16))
def test_forms_agree_on_random_shapes(B, D, L, K, bias, state, silu, seed):
    x, w, b, s = conv_inputs(B, D, L, K, torch.float64, seed, state=state, bias=bias)
    act = "silu" if silu else None
    z1, s1 = causal_conv1d(x, w, b, s, act)
    z2, s2 = causal_conv1d_recurrent(x, w, b, s, act)
    torch.testing.assert_close(z1, z2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_bad_shapes_and_activation_refused():
    x, w, b, s = conv_inputs(2, 4, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="conv state"):
        causal_conv1d(x, w, b, s[:, :, :1])
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, w[:3], b, s)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, b, s, "relu")
    with pytest.raises(ValueError, match="conv state"):
        causal_conv1d_step(x[:, :, 0], s[:1], w, b)
    with pytest.raises(ValueError, match="L_cache"):
        ShortConv(8, L_cache=0)


# ---------------------------------------------------------------- the module


def random_module(hidden=36, K=3, bias=True, seed=0, dtype=torch.float32) -> ShortConv:
    torch.manual_seed(seed)
    m = ShortConv(hidden, L_cache=K, bias=bias).to(dtype)
    with torch.no_grad():  # biases and conv weights of the scale trained models have
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("K", [1, 3, 5])
def test_module_prefill_then_decode_equals_one_pass(K):
    m = random_module(K=K, dtype=torch.float64)
    x = torch.randn(2, 90, 36, dtype=torch.float64)
    full = m(x)
    cache: dict = {}
    parts = [m(x[:, :40], cache), m(x[:, 40:47], cache)]      # prefill, then a chunk
    parts += [m(x[:, t:t + 1], cache) for t in range(47, 90)]  # then token by token
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-12, atol=1e-12)
    assert cache["conv"].shape == (2, 36, K - 1)


def test_state_bytes_constant_while_decoding_1k_tokens():
    m = random_module(hidden=36, K=5)
    cache: dict = {}
    with torch.no_grad():
        m(torch.randn(1, 17, 36), cache)
        sizes = set()
        for _ in range(1000):
            m(torch.randn(1, 1, 36), cache)
            sizes.add(cache["conv"].nbytes)
    assert sizes == {m.state_bytes()} == {36 * 4 * 4}
    assert m.state_bytes(batch_size=3, dtype_bytes=2) == 3 * 36 * 4 * 2


def test_parameter_names_are_transformers():
    m = ShortConv(36, L_cache=3, bias=True)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "in_proj.weight": (108, 36), "in_proj.bias": (108,), "conv.weight": (36, 1, 3),
        "conv.bias": (36,), "out_proj.weight": (36, 36), "out_proj.bias": (36,)}
    assert set(ShortConv(36, bias=False).state_dict()) == {
        "in_proj.weight", "conv.weight", "out_proj.weight"}


# ---------------------------------------------------------------- vs transformers


def transformers_pair(K: int, bias: bool, moe: bool = False):
    """transformers' (Lfm2 or Lfm2Moe) ShortConv at hidden 36, its config, and ours with
    the same weights copied by name."""
    tf = pytest.importorskip("transformers")
    if moe:
        from transformers.models.lfm2_moe.modeling_lfm2_moe import Lfm2MoeShortConv as Ref
        cfg = tf.Lfm2MoeConfig(hidden_size=36, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, conv_L_cache=K, conv_bias=bias,
                               layer_types=["full_attention", "conv"], vocab_size=64)
    else:
        from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv as Ref
        cfg = tf.Lfm2Config(hidden_size=36, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, conv_L_cache=K, conv_bias=bias,
                            full_attn_idxs=[0], vocab_size=64)
    assert cfg.layer_types == ["full_attention", "conv"]
    torch.manual_seed(K + 10 * bias)
    ref = Ref(cfg, layer_idx=1).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = ShortConv(36, L_cache=K, bias=bias).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return cfg, ref, ours


@pytest.mark.parametrize("K,bias,moe", [(3, False, False), (3, True, False),
                                        (5, True, False), (5, False, False), (3, True, True)])
def test_equals_transformers_prefill_and_decode(K, bias, moe):
    from transformers import DynamicCache
    cfg, ref, ours = transformers_pair(K, bias, moe)
    x = torch.randn(2, 83 + 24, 36)
    with torch.no_grad():
        # No cache: the plain prompt forward.
        assert rel(ours(x[:, :83]), ref(x[:, :83])) < 1e-5
        # Prefill 83 tokens through transformers' cache, then 24 tokens one by one.
        tcache, cache = DynamicCache(config=cfg), {}
        assert rel(ours(x[:, :83], cache), ref(x[:, :83], cache=tcache)) < 1e-5
        for t in range(83, 83 + 24):
            y_ref = ref(x[:, t:t + 1], cache=tcache)
            assert rel(ours(x[:, t:t + 1], cache), y_ref) < 1e-5, t
            # transformers keeps K columns; the convolution reads only the last K - 1.
            theirs = tcache.layers[1].conv_states[0]
            assert theirs.shape[-1] == K
            torch.testing.assert_close(cache["conv"], theirs[:, :, 1:], rtol=1e-6, atol=1e-6)


def test_equals_transformers_short_prompt_and_chunked_continuation():
    # A prompt shorter than the kernel, then a multi-token continuation from the cache.
    from transformers import DynamicCache
    cfg, ref, ours = transformers_pair(5, True)
    x = torch.randn(1, 2 + 9 + 1, 36)
    tcache, cache = DynamicCache(config=cfg), {}
    with torch.no_grad():
        for lo, hi in [(0, 2), (2, 11), (11, 12)]:
            assert rel(ours(x[:, lo:hi], cache), ref(x[:, lo:hi], cache=tcache)) < 1e-5


def test_equals_transformers_with_padding_mask():
    _, ref, ours = transformers_pair(3, True)
    x = torch.randn(2, 81, 36)
    mask = torch.ones(2, 81, dtype=torch.long)
    mask[1, :6] = 0                                           # left padding
    with torch.no_grad():
        assert rel(ours(x, attention_mask=mask), ref(x, attention_mask=mask)) < 1e-5
