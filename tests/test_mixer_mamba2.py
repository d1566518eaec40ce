"""Mamba-2 (SSD) mixer: the chunked and recurrent forms agree, the causal conv's prompt
and step forms agree, and the module equals transformers' Granite 4.0-H, Falcon-H1,
Bamba and Nemotron-H mixers (torch paths) in prefill and token-by-token decoding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.models.mamba2 import (GatedRMSNorm, Mamba2Mixer, ssd_chunked, ssd_recurrent,
                                 state_nbytes)

transformers = pytest.importorskip("transformers")
from transformers.cache_utils import Cache, LinearAttentionLayer  # noqa: E402


def _inputs(b, L, H, P, G, N, dtype, seed=0, state=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, B, C = r(b, L, H, P), r(b, L, G, N), r(b, L, G, N)
    dt = torch.nn.functional.softplus(r(b, L, H) - 1)
    A = -torch.exp(r(H))
    D = r(H)
    s0 = r(b, H, P, N) if state else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return tuple(cast(t) for t in (x, dt, A, B, C, D, s0))


def _close(got, ref, rel):
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if ref.numel() == 0:
        return
    got, ref = got.detach(), ref.detach()
    scale = ref.abs().max().clamp(min=1e-30)
    assert (got - ref).abs().max() <= rel * scale, float((got - ref).abs().max() / scale)


# ---- the two forms of the recurrence ------------------------------------------------

@pytest.mark.parametrize("L, dtype, tol, seed",
                         [(L, torch.float64, 1e-12, 0) for L in (0, 1, 15, 16, 17, 50, 83)]
                         + [(83, torch.float32, 1e-5, 1)])
def test_chunked_equals_recurrent(L, dtype, tol, seed):
    x, dt, A, B, C, D, s0 = _inputs(2, L, 4, 6, 2, 8, dtype, seed=seed)
    y1, s1 = ssd_recurrent(x, dt, A, B, C, D, s0)
    y2, s2 = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=16)
    _close(y2, y1, tol)
    _close(s2, s1, tol)


def test_chunked_strong_decay_stays_finite():
    """Decays of exp(-1e4) per token: pairwise decays are summed, never differenced."""
    x, dt, A, B, C, D, s0 = _inputs(1, 40, 4, 6, 2, 8, torch.float64, seed=2)
    A = A * 1e4
    y1, s1 = ssd_recurrent(x, dt, A, B, C, D, s0)
    y2, s2 = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=16)
    assert torch.isfinite(y2).all()
    _close(y2, y1, 1e-12)
    _close(s2, s1, 1e-12)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), L=st.integers(1, 70), G=st.sampled_from([1, 2, 3]),
       hpg=st.integers(1, 3), P=st.integers(1, 7), N=st.integers(1, 9),
       chunk=st.sampled_from([1, 4, 7, 16, 64]), seed=st.integers(0, 1000),
       state=st.booleans())
def test_forms_agree_over_random_shapes(b, L, G, hpg, P, N, chunk, seed, state):
    x, dt, A, B, C, D, s0 = _inputs(b, L, G * hpg, P, G, N, torch.float64, seed, state)
    y1, s1 = ssd_recurrent(x, dt, A, B, C, D, s0)
    y2, s2 = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=chunk)
    _close(y2, y1, 1e-11)
    _close(s2, s1, 1e-11)


def test_chunked_split_prompt_equals_one_pass():
    x, dt, A, B, C, D, _ = _inputs(2, 83, 4, 6, 2, 8, torch.float64, seed=3)
    y, s = ssd_chunked(x, dt, A, B, C, D, chunk_size=16)
    ya, sa = ssd_chunked(x[:, :37], dt[:, :37], A, B[:, :37], C[:, :37], D, chunk_size=16)
    yb, sb = ssd_chunked(x[:, 37:], dt[:, 37:], A, B[:, 37:], C[:, 37:], D, sa, chunk_size=16)
    _close(torch.cat([ya, yb], 1), y, 1e-12)
    _close(sb, s, 1e-12)


def test_gated_norm_orders_differ_and_group():
    g = torch.Generator().manual_seed(5)
    y, z = torch.randn(3, 24, generator=g), torch.randn(3, 24, generator=g)
    before, after = GatedRMSNorm(24, 2, norm_before_gate=False), GatedRMSNorm(24, 2, norm_before_gate=True)
    silu = torch.nn.functional.silu(z)
    gy = (y * silu).view(3, 2, 12)
    _close(before(y, z), (gy * torch.rsqrt(gy.pow(2).mean(-1, keepdim=True) + 1e-6)).view(3, 24), 1e-6)
    ny = y.view(3, 2, 12)
    _close(after(y, z), (ny * torch.rsqrt(ny.pow(2).mean(-1, keepdim=True) + 1e-6)).view(3, 24) * silu, 1e-6)


# ---- the module ---------------------------------------------------------------------

def _small_mixer(**kw):
    opts = dict(hidden_size=40, num_heads=4, head_dim=6, d_state=8, n_groups=2, d_conv=4,
                chunk_size=16)
    opts.update(kw)
    m = Mamba2Mixer(**opts)
    _randomize(m, 6)
    return m


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "A_log":
                p.copy_(torch.empty(p.shape).uniform_(-1.0, 1.5, generator=g))
            elif name == "dt_bias":
                p.copy_(torch.randn(p.shape, generator=g) - 1.0)
            elif name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)


def test_prompt_then_decode_equals_one_pass():
    m = _small_mixer().double()
    x = torch.randn(2, 83, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    full = m(x)
    state = {}
    outs = [m(x[:, :21], state), m(x[:, 21:50], state)]      # two prompt pieces, then steps
    outs += [m(x[:, t:t + 1], state) for t in range(50, 83)]
    _close(torch.cat(outs, 1), full, 1e-12)


def test_state_bytes_constant_while_decoding_1k_tokens():
    m = _small_mixer()
    state = {}
    x = torch.randn(1, 1, 40)
    with torch.no_grad():
        m(torch.randn(1, 5, 40), state)
        expected = m.state_bytes()
        assert state_nbytes(state) == expected == 4 * (56 * 3 + 4 * 6 * 8)  # conv: K - 1 inputs
        for _ in range(1000):
            m(x, state)
            assert state_nbytes(state) == expected
    assert m.state_bytes(batch_size=3, dtype=torch.bfloat16) == 3 * (56 * 3 * 2 + 4 * 6 * 8 * 4)


def test_module_refuses_bad_shapes():
    with pytest.raises(ValueError, match="multiple of n_groups"):
        Mamba2Mixer(40, num_heads=3, head_dim=6, d_state=8, n_groups=2)
    with pytest.raises(ValueError, match="activation"):
        Mamba2Mixer(40, num_heads=4, head_dim=6, d_state=8, activation="prelu")


# ---- against transformers -----------------------------------------------------------

def _run_hf(hf, x, prefill):
    """transformers' mixer: one pass without a cache; and a cached prefill of `prefill`
    tokens followed by token-by-token decoding. Returns both outputs and the cache."""
    with torch.no_grad():
        full = hf(x)
        cache = Cache(layers=[LinearAttentionLayer()])
        outs = [hf(x[:, :prefill], cache=cache)]
        outs += [hf(x[:, t:t + 1], cache=cache) for t in range(prefill, x.shape[1])]
    return full, torch.cat(outs, 1), cache.layers[0]


def _run_ours(m, x, prefill):
    with torch.no_grad():
        full = m(x)
        state = {}
        outs = [m(x[:, :prefill], state)]
        outs += [m(x[:, t:t + 1], state) for t in range(prefill, x.shape[1])]
    return full, torch.cat(outs, 1), state


def _compare(hf, ours, hidden, prefill=50, L=83):
    _randomize(hf, 8)
    missing = ours.load_state_dict(hf.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, L, hidden, generator=torch.Generator().manual_seed(9))
    hf_full, hf_dec, layer = _run_hf(hf, x, prefill)
    full, dec, state = _run_ours(ours, x, prefill)
    _close(full, hf_full, 1e-5)
    _close(dec, hf_dec, 1e-5)
    _close(dec, full, 1e-5)
    # transformers keeps K columns; the last K - 1 are the inputs a later step reads
    assert state["conv_state"].shape == layer.conv_states[0][..., 1:].shape
    _close(state["conv_state"], layer.conv_states[0][..., 1:], 1e-6)
    _close(state["ssm_state"], layer.recurrent_states[0], 1e-5)
    assert state_nbytes(state) == ours.state_bytes(batch_size=2)


@pytest.mark.parametrize("hidden,head_dim,expand", [(12, 6, 2), (40, 20, 2)])
def test_equals_granitemoehybrid(hidden, head_dim, expand):
    from transformers import GraniteMoeHybridConfig
    from transformers.models.granitemoehybrid.modeling_granitemoehybrid import (
        GraniteMoeHybridMambaLayer)
    cfg = GraniteMoeHybridConfig(
        hidden_size=hidden, mamba_n_heads=4, mamba_d_head=head_dim, mamba_expand=expand,
        mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=16,
        mamba_conv_bias=True, mamba_proj_bias=True, rms_norm_eps=1e-5,
        num_hidden_layers=1, layer_types=["mamba"], num_attention_heads=4,
        num_key_value_heads=2)
    hf = GraniteMoeHybridMambaLayer(cfg, 0)
    ours = Mamba2Mixer(
        cfg.hidden_size, cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_d_state,
        n_groups=cfg.mamba_n_groups, d_conv=cfg.mamba_d_conv, chunk_size=cfg.mamba_chunk_size,
        activation=cfg.hidden_act, conv_bias=cfg.mamba_conv_bias, bias=cfg.mamba_proj_bias,
        norm_eps=cfg.rms_norm_eps, rms_norm=True, norm_before_gate=False,
        time_step_limit=cfg.time_step_limit)
    _compare(hf, ours, hidden)


def _falcon(rms_norm, norm_before_gate, limit=(0.0, math.inf)):
    from transformers import FalconH1Config
    from transformers.models.falcon_h1.modeling_falcon_h1 import (FalconH1Mixer,
                                                                  compute_mup_vector)
    cfg = FalconH1Config(
        hidden_size=40, mamba_n_heads=4, mamba_d_head=6, mamba_d_ssm=24, mamba_n_groups=2,
        mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=16, mamba_rms_norm=rms_norm,
        mamba_norm_before_gate=norm_before_gate, ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 0.9],
        ssm_in_multiplier=0.7, projectors_bias=True, mamba_proj_bias=False,
        time_step_limit=limit, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)
    hf = FalconH1Mixer(cfg, 0)
    # FalconH1Model registers the muP vector on each mixer (a non-persistent buffer).
    hf.register_buffer("mup_vector", compute_mup_vector(cfg), persistent=False)
    ours = Mamba2Mixer(
        cfg.hidden_size, cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_d_state,
        n_groups=cfg.mamba_n_groups, d_conv=cfg.mamba_d_conv, chunk_size=cfg.mamba_chunk_size,
        activation=cfg.hidden_act, conv_bias=cfg.mamba_conv_bias, bias=cfg.mamba_proj_bias,
        out_bias=cfg.projectors_bias, norm_eps=cfg.rms_norm_eps, rms_norm=cfg.mamba_rms_norm,
        norm_before_gate=cfg.mamba_norm_before_gate, time_step_limit=cfg.time_step_limit,
        in_multiplier=cfg.ssm_in_multiplier, zxbcdt_multipliers=cfg.ssm_multipliers)
    return hf, ours


@pytest.mark.parametrize("rms_norm,norm_before_gate", [(True, True), (True, False),
                                                        (False, True)])
def test_equals_falcon_h1(rms_norm, norm_before_gate):
    hf, ours = _falcon(rms_norm, norm_before_gate)
    assert ("norm.weight" in dict(ours.named_parameters())) == rms_norm
    _compare(hf, ours, 40)


def test_equals_bamba():
    from transformers import BambaConfig
    from transformers.models.bamba.modeling_bamba import BambaMixer
    cfg = BambaConfig(hidden_size=12, mamba_n_heads=4, mamba_d_head=6, mamba_expand=2,
                      mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=16,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    hf = BambaMixer(cfg, 0)
    ours = Mamba2Mixer(
        cfg.hidden_size, cfg.mamba_n_heads, cfg.mamba_d_head, cfg.mamba_d_state,
        n_groups=cfg.mamba_n_groups, d_conv=cfg.mamba_d_conv, chunk_size=cfg.mamba_chunk_size,
        activation=cfg.hidden_act, conv_bias=cfg.mamba_conv_bias, bias=cfg.mamba_proj_bias,
        norm_eps=cfg.rms_norm_eps, time_step_limit=cfg.time_step_limit)
    _compare(hf, ours, 12)


def test_equals_nemotron_h_with_active_time_step_min():
    """Nemotron-H clamps dt to >= time_step_min on prompts (not in decoding steps); a
    large minimum makes the clamp bite, and both paths still match."""
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer
    cfg = NemotronHConfig(hidden_size=40, mamba_num_heads=4, mamba_head_dim=6,
                          ssm_state_size=8, n_groups=2, conv_kernel=4, chunk_size=16,
                          time_step_min=0.4, use_bias=True, use_conv_bias=True,
                          num_hidden_layers=1, layers_block_type=["mamba"],
                          num_attention_heads=4, num_key_value_heads=2, head_dim=10)
    hf = NemotronHMamba2Mixer(cfg, 0)
    ours = Mamba2Mixer(
        cfg.hidden_size, cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size,
        n_groups=cfg.n_groups, d_conv=cfg.conv_kernel, chunk_size=cfg.chunk_size,
        activation=cfg.mamba_hidden_act, conv_bias=cfg.use_conv_bias, bias=cfg.use_bias,
        norm_eps=cfg.layer_norm_epsilon, time_step_limit=(cfg.time_step_min, math.inf))
    _compare_clamped(hf, ours, 40)


def _compare_clamped(hf, ours, hidden):
    _randomize(hf, 10)
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 83, hidden, generator=torch.Generator().manual_seed(11))
    hf_full, hf_dec, _ = _run_hf(hf, x, 50)
    full, dec, _ = _run_ours(ours, x, 50)
    _close(full, hf_full, 1e-5)
    _close(dec, hf_dec, 1e-5)
    # The clamp is active: without it the prompt output differs.
    ours.time_step_limit = (0.0, math.inf)
    with torch.no_grad():
        assert (ours(x) - full).abs().max() > 1e-3


def test_bfloat16_keeps_a_float32_ssm_state():
    m = _small_mixer()
    x = torch.randn(1, 40, 40, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        ref = m(x)
        mb = _small_mixer().to(torch.bfloat16)
        state = {}
        out = torch.cat([mb(x[:, :30].bfloat16(), state)]
                        + [mb(x[:, t:t + 1].bfloat16(), state) for t in range(30, 40)], 1)
    assert out.dtype == torch.bfloat16
    assert state["conv_state"].dtype == torch.bfloat16 and state["ssm_state"].dtype == torch.float32
    assert state_nbytes(state) == mb.state_bytes(dtype=torch.bfloat16)
    _close(out.float(), ref, 5e-2)
