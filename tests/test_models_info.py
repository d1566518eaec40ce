"""model_info: parameter counts and decode-state bytes from a config, checked against
real (small) models, plus the SpikingBrain-7B / 76B-like figures."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sbsnn.models import CheckpointError, HybridConfig, HybridForCausalLM
from sbsnn.models import info as info_mod
from sbsnn.models.info import (decode_state_bytes, format_info, info_from_path, model_info,
                               parameter_counts, spikingbrain_7b_config,
                               spikingbrain_76b_like_config)

SMALL = dict(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8)

CONFIGS = {
    "hybrid": dict(attn_layers=[1, 3], sliding_window=8),
    "hybrid_tied": dict(attn_layers=[1, 3], sliding_window=8, tie_word_embeddings=True),
    "no_bias_mlp_bias": dict(attn_layers=[1], sliding_window=6, attention_bias=False,
                             mlp_bias=True, gate_low_rank_dim=4),
    "full_attention": dict(attn_layers=[0, 1, 2, 3], sliding_window=None),
    "swa_full_sinks": dict(attn_layers=[1, 2, 3], full_attn_layers=[2], sliding_window=5,
                           num_sink_tokens=3),
    "moe": dict(attn_layers=[1, 3], sliding_window=8, num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, num_shared_experts=2,
                shared_expert_intermediate_size=24, dense_layers=[0], norm_topk_prob=True),
    "parallel_76b_like": dict(attn_layers=[0, 1, 2, 3], parallel_mixer=True,
                              full_attn_layers=[1], sliding_window=6, num_sink_tokens=2,
                              linear_attn_gate="one_minus_k", linear_feature_map="sigmoid",
                              num_experts=3, num_experts_per_tok=1, num_shared_experts=1,
                              moe_intermediate_size=16, dense_layers=[0, 2],
                              tie_word_embeddings=True),
    # Qwen3-Next / Qwen3.5-MoE: one shared expert behind a sigmoid gate of its own.
    "moe_shared_gate": dict(attn_layers=[1, 3], sliding_window=8, num_experts=4,
                            num_experts_per_tok=2, moe_intermediate_size=16, num_shared_experts=1,
                            shared_expert_intermediate_size=24, dense_layers=[2],
                            shared_expert_gate=True, router_float32=True, moe_hidden_act="gelu"),
    # Gemma 3 / Qwen3 options: q/k norms, sandwich norms, o_proj bias, GeGLU, per-kind RoPE.
    "gemma_like": dict(attn_layers=[0, 1, 2, 3], full_attn_layers=[1, 3], sliding_window=5,
                       qk_norm=True, sandwich_norm=True, norm_style="gemma", o_proj_bias=True,
                       hidden_act="gelu_pytorch_tanh", embedding_scale=32 ** 0.5, attn_scale=0.2,
                       tie_word_embeddings=True,
                       rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                        "full_attention": {"rope_type": "linear", "rope_theta": 1e6,
                                                           "factor": 8.0}}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(name: str) -> HybridConfig:
    return HybridConfig(**SMALL, **CONFIGS[name])


# ----------------------------------------------------------------------------- params
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_count_matches_model(name):
    cfg = small_config(name)
    model = HybridForCausalLM(cfg)
    p = parameter_counts(cfg)
    assert p["total"] == sum(q.numel() for q in model.parameters())
    assert p["embeddings"] == model.model.embeddings.weight.numel()
    assert p["lm_head"] == (0 if cfg.tie_word_embeddings else model.lm_head.weight.numel())
    # Active per token: drop (num_experts - top_k) routed experts in each MoE layer.
    inactive = 0
    for i, layer in enumerate(model.model.layers):
        if cfg.is_moe_layer(i):
            expert = sum(q.numel() for q in layer.mlp.experts[0].parameters())
            inactive += (cfg.num_experts - cfg.num_experts_per_tok) * expert
    assert p["active_per_token"] == p["total"] - inactive
    if cfg.num_experts:
        assert p["active_per_token"] < p["total"]
    info = model_info(cfg)
    assert info["params"] == p
    assert info["weight_bytes"] == 2 * p["total"]


def test_layer_table():
    L = model_info(small_config("swa_full_sinks"))["layers"]
    assert L["kinds"] == {"gla": [0], "swa": [1, 3], "full": [2], "parallel": []}
    assert L["counts"] == {"gla": 1, "swa": 2, "full": 1, "parallel": 0}
    assert L["moe"] == [] and L["dense_mlp"] == [0, 1, 2, 3]
    L = model_info(small_config("parallel_76b_like"))["layers"]
    assert L["kinds"]["parallel"] == [0, 1, 2, 3]
    assert L["parallel_full"] == [1] and L["parallel_window"] == [0, 2, 3]
    assert L["moe"] == [1, 3] and L["dense_mlp"] == [0, 2]
    assert L["with_gla_state"] == [0, 1, 2, 3] and L["with_full_cache"] == [1]


# ----------------------------------------------------------------------------- state
def _components(cfg: HybridConfig, state) -> dict[str, int]:
    """Bytes of the real DecodeState split by kind of tensor and layer."""
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    out = {"gla_state_bytes": 0, "window_kv_bytes": 0, "full_kv_bytes": 0, "position_bytes": 0}
    for i, cache in enumerate(state.layers):
        parts = [cache.get("linear", {}), cache.get("attn", {})] if cfg.parallel_mixer else [cache]
        for c in parts:
            if "state" in c:
                out["gla_state_bytes"] += nbytes(c["state"])
            if "k" in c:
                key = "full_kv_bytes" if cfg.window_for(i) is None else "window_kv_bytes"
                out[key] += nbytes(c["k"]) + nbytes(c["v"])
                assert c["pos"].dtype == torch.int64
                out["position_bytes"] += nbytes(c["pos"])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,prompt,steps", [
    ("hybrid", 13, 7),              # window 8 < 20 decoded tokens
    ("hybrid", 3, 2),               # window 8 > 5 tokens: ring allocated whole anyway
    ("no_bias_mlp_bias", 4, 9),
    ("full_attention", 6, 5),       # grows with the context
    ("swa_full_sinks", 9, 6),       # sinks + window 5 + a full layer
    ("moe", 10, 4),
    ("parallel_76b_like", 11, 5),   # parallel GLA + window/full, sinks, MoE
])
def test_state_bytes_match_decode_state(name, prompt, steps, dtype):
    cfg = small_config(name)
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).to(dtype).eval()
    state = model.new_state()
    ids = torch.randint(0, cfg.vocab_size, (1, prompt))
    with torch.no_grad():
        model.prefill(ids, state, block_size=4)
        checked = 0
        for t in range(steps):
            model(torch.randint(0, cfg.vocab_size, (1, 1)), state)
            context = prompt + t + 1
            assert state.seen == context + cfg.num_sink_tokens
            want = decode_state_bytes(cfg, context, dtype)
            assert want["total_bytes"] == state.nbytes(), (name, context)
            got = _components(cfg, state)
            assert {k: want[k] for k in got} == got
            checked += 1
    assert checked == steps
    elem = torch.empty((), dtype=dtype).element_size()
    info = model_info(cfg, dtype_bytes=elem, contexts=(prompt + steps,))
    assert info["state"][0]["total_bytes"] == state.nbytes()


def test_state_formula_pieces():
    cfg = small_config("swa_full_sinks")  # Hkv 2, d 8, window 5, 3 sinks; full layer 2
    s = decode_state_bytes(cfg, 20, 4)
    assert s["gla_state_bytes"] == 2 * 8 * 8 * 4
    assert s["gla_state_bytes_upstream"] == 4 * 8 * 8 * 4
    assert s["window_kv_bytes"] == 2 * (2 * 2 * 8 * (3 + 5) * 4)
    assert s["full_kv_bytes"] == 2 * 2 * 8 * (3 + 20) * 4
    assert s["position_bytes"] == 8 * (2 * (3 + 5) + (3 + 20))
    assert s["window_slots_used"] == 3 + 5 and decode_state_bytes(cfg, 2, 4)["window_slots_used"] == 5
    assert decode_state_bytes(cfg, 0, 4)["total_bytes"] == 0  # nothing before the first token
    assert sum(layer["bytes"] for layer in s["per_layer"]) == s["total_bytes"]
    assert not model_info(cfg)["state_constant"]
    assert model_info(small_config("hybrid"))["state_constant"]


# ----------------------------------------------------------------------------- SpikingBrain
class NoStorage(TorchDispatchMode):
    """Fails the first torch operation that returns a tensor with real storage (on any
    device but ``meta``): inside, nothing may allocate weights or activations."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                raise AssertionError(f"{func} allocated a {tuple(t.shape)} {t.dtype} tensor "
                                     f"on {t.device}")
        return out


def test_no_storage_catches_a_built_model():
    """The check below would fail if info built the model: building one allocates."""
    with pytest.raises(AssertionError, match="allocated"):
        with NoStorage():
            HybridForCausalLM(small_config("hybrid"))
    with NoStorage(), torch.device("meta"):    # a skeleton on the meta device holds no storage
        HybridForCausalLM(small_config("hybrid"))


def test_spikingbrain_7b_numbers():
    cfg = spikingbrain_7b_config()
    with NoStorage():    # no weights allocated
        info = model_info(cfg)  # bf16, contexts 4k and 1M
    P = info["params"]
    # Qwen2.5-7B has 7,615,616,512 parameters; the 14 GLA layers add the low-rank gate
    # (3584*16 + 16*512 + 512 bias) and the 128-wide g_norm each.
    assert P["total"] == 7_615_616_512 + 14 * (3584 * 16 + 16 * 512 + 512 + 128)
    assert 7.55e9 < P["total"] < 7.7e9 and P["active_per_token"] == P["total"]
    L = info["layers"]
    assert L["kinds"]["gla"] == list(range(0, 28, 2))
    assert L["kinds"]["swa"] == list(range(1, 28, 2))
    s4k, s1m = info["state"]
    assert (s4k["context"], s1m["context"]) == (4096, 1_048_576)
    assert s4k["total_bytes"] == s1m["total_bytes"]  # constant memory
    gla = 14 * 4 * 128 * 128 * 4  # GLA states are float32 even in a bf16 model
    swa = 14 * 4096 * (2 * 4 * 128 * 2 + 8)
    assert s1m["total_bytes"] == gla + swa  # ~114 MiB
    assert s1m["gla_state_bytes_upstream"] == 7 * gla  # 28 / 4 heads per group
    assert s1m["full_attention_kv_bytes"] == 28 * 2 * 4 * 128 * 1_048_576 * 2  # 56 GiB
    assert info["state_constant"]


def test_spikingbrain_76b_like_numbers():
    info = model_info(spikingbrain_76b_like_config())
    P = info["params"]
    assert 74e9 < P["total"] < 79e9
    assert 11.5e9 < P["active_per_token"] < 13.5e9
    L = info["layers"]
    assert L["counts"]["parallel"] == 28 and L["parallel_full"] == [6, 13, 20, 27]
    assert L["dense_mlp"] == [0, 1, 2, 4, 6, 8, 10] and len(L["moe"]) == 21
    s4k, s1m = info["state"]
    assert s1m["total_bytes"] > s4k["total_bytes"]  # the 4 full-attention layers grow
    assert s1m["full_kv_bytes"] == 4 * 2 * 4 * 128 * (128 + 1_048_576) * 2


# ----------------------------------------------------------------------------- misc
def test_dtype_arguments():
    cfg = small_config("hybrid")
    a = model_info(cfg, torch.float32)
    assert a["dtype_bytes"] == 4 and a["dtype"] == "float32"
    assert model_info(cfg, "bf16")["dtype_bytes"] == 2
    assert model_info(cfg, 4)["state"] == a["state"]
    with pytest.raises(ValueError):
        model_info(cfg, "no-such-dtype")
    with pytest.raises(ValueError):
        model_info(cfg, 0)


def test_format_info():
    text = format_info(model_info(spikingbrain_7b_config()))
    for s in ("4k", "1M", "GiB", "MiB", "7,616,542,976", "gla", "swa", "0..26 step 2",
              "constant"):
        assert s in text, s
    text = format_info(model_info(spikingbrain_76b_like_config()))
    for s in ("parallel", "MoE", "active per token", "6..27 step 7", "grow"):
        assert s in text, s
    assert format_info(model_info(small_config("parallel_76b_like"), contexts=()))


def test_settings_say_what_runs():
    st = info_mod.settings(small_config("gemma_like"))
    by_kind = {k["kind"]: k for k in st["layer_kinds"]}
    assert by_kind["swa"]["layers"] == [0, 2] and by_kind["swa"]["window"] == 5
    assert by_kind["full"]["layers"] == [1, 3] and by_kind["full"]["window"] is None
    assert by_kind["swa"]["rope"] == {"rope_type": "default", "rope_theta": 1e4}
    assert by_kind["full"]["rope"] == {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}
    assert st["score_scale"] == 0.2 and st["qk_norm"] and st["norm"]["sandwich"]
    text = format_info(model_info(small_config("gemma_like")))
    for piece in ("window 5; RoPE default, base 10000", "full; RoPE linear, base 1e+06, factor 8",
                  "q/k RMSNorm", "(1 + w) (Gemma)", "GeGLU (gelu_pytorch_tanh)", "embeddings x 5.65685",
                  "sandwich"):
        assert piece in text, piece
    text = format_info(model_info(small_config("hybrid")))
    assert "gated linear attention, no RoPE" in text and "SwiGLU (swish)" in text


def test_info_from_path(tmp_path, monkeypatch):
    cfg = small_config("moe")
    d = tmp_path / "ckpt"
    d.mkdir()
    cfg.save(d / "config.json")
    a = info_from_path(d)
    b = info_from_path(d / "config.json")
    assert a["params"] == b["params"] == parameter_counts(cfg)
    assert a["source"].endswith("config.json")
    with pytest.raises(CheckpointError, match="no such file"):
        info_from_path(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        info_from_path(empty)
    (tmp_path / "bad.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="gpt2"):
        info_from_path(tmp_path / "bad.json")
    # Embedded names: missing -> a clear error naming the expected path; present -> read.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(info_mod.EMBEDDED_MODELS, "tiny-hybrid", tmp_path / "not-yet")
    with pytest.raises(CheckpointError, match="not-yet"):
        info_from_path("tiny-hybrid")
    monkeypatch.setitem(info_mod.EMBEDDED_MODELS, "tiny-hybrid", d)
    assert info_from_path("tiny-hybrid")["params"] == a["params"]


def test_embedded_tiny_hybrid_if_present():
    path = info_mod.EMBEDDED_MODELS["tiny-hybrid"]
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} not written yet (examples/train_tiny.py)")
    info = info_from_path("tiny-hybrid")
    assert info["params"]["total"] > 0 and info["state_constant"]
