"""LFM2's gated short convolution: the prompt and token-by-token forms agree, decoding
continues a prompt exactly, and the module equals transformers' Lfm2ShortConv."""

from __future__ import annotations

import pytest
import torch

from sbsnn.models.short_conv import ShortConv

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


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


def test_kernel_of_zero_length_is_refused():
    with pytest.raises(ValueError, match="L_cache"):
        ShortConv(8, L_cache=0)


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
