"""The one depthwise causal convolution of the linear mixers
(:mod:`sbsnn.models.causal_conv`): the prompt form and the one-token steps equal the
plain per-token reference and the definition, decoding continues a prompt exactly, and
bad shapes are refused. The mixers' own tests compare each mixer with transformers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.models.causal_conv import (causal_conv1d, causal_conv1d_recurrent, causal_conv1d_step,
                                      conv_state_zeros)

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
        causal_conv1d(x, w, b, s, "no_such_activation")
    with pytest.raises(ValueError, match="conv state"):
        causal_conv1d_step(x[:, :, 0], s[:1], w, b)


@pytest.mark.parametrize("activation", ["gelu", "relu2"])
def test_any_model_activation_applies_after_the_sum(activation):
    """The models' conv may apply any hidden_act (Qwen3.5's GDN applies its hidden_act)."""
    from sbsnn.models.layers import ACTIVATIONS

    x, w, b, s = conv_inputs(2, 5, 9, 3, torch.float64, seed=7)
    z, _ = causal_conv1d(x, w, b, s, activation)
    raw, _ = causal_conv1d(x, w, b, s, None)
    torch.testing.assert_close(z, ACTIVATIONS[activation](raw), rtol=0, atol=0)


def test_weights_as_conv1d_keeps_them_and_half_inputs_compute_in_the_weights_dtype():
    x, w, b, s = conv_inputs(1, 4, 6, 3, torch.float32, seed=8)
    z3, s3 = causal_conv1d(x, w[:, None, :], b, s)
    z2, s2 = causal_conv1d(x, w, b, s)
    assert torch.equal(z3, z2) and torch.equal(s3, s2)
    zh, sh = causal_conv1d(x.bfloat16(), w, b, s)
    assert zh.dtype == sh.dtype == torch.bfloat16
    torch.testing.assert_close(zh, causal_conv1d(x.bfloat16().float(), w, b, s.bfloat16().float())[0]
                               .bfloat16(), rtol=0, atol=0)
