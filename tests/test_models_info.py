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
    # Linear-mixer hybrids (layer_mixers): Gated DeltaNet, Mamba-2, short convolution and
    # gated attention (Qwen3.5-like), and the other layouts and options of each mixer.
    "mixers_qwen3_5_like": dict(
        layer_mixers=["gdn", "mamba2", "conv", "full"], attn_layers=[3], full_attn_layers=[3],
        sliding_window=None, attn_output_gate=True, qk_norm=True,
        gdn=dict(num_key_heads=2, num_value_heads=4, key_head_dim=8, value_head_dim=6,
                 conv_kernel_size=4, layout="qwen3_5"),
        mamba2=dict(num_heads=4, head_dim=8, d_state=6, n_groups=2, d_conv=4, chunk_size=8),
        short_conv=dict(L_cache=3, bias=False)),
    "mixers_other_options": dict(
        layer_mixers=["gdn", "swa", "mamba2", "conv"], attn_layers=[1], sliding_window=5,
        gdn=dict(num_key_heads=1, num_value_heads=2, key_head_dim=8, value_head_dim=8,
                 conv_kernel_size=3, layout="qwen3_next"),
        mamba2=dict(num_heads=2, head_dim=8, d_state=4, n_groups=1, d_conv=3, chunk_size=4,
                    rms_norm=False, bias=True, conv_bias=False),
        short_conv=dict(L_cache=4, bias=True)),
}
MIXER_MODULES = {"gdn": "linear_attn", "mamba2": "mamba", "conv": "conv"}


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


# ----------------------------------------------------------------------------- linear mixers
def _mixer_bytes(cfg: HybridConfig, state) -> dict[str, int]:
    """Bytes of the real DecodeState's linear-mixer caches, by kind."""
    out = {f"{k}_state_bytes": 0 for k in MIXER_MODULES}
    for i, cache in enumerate(state.layers):
        kind = cfg.layer_kind(i)
        if kind in MIXER_MODULES:
            out[f"{kind}_state_bytes"] += sum(t.numel() * t.element_size() for t in cache.values())
    return out


@pytest.mark.parametrize("name", ["mixers_qwen3_5_like", "mixers_other_options"])
def test_linear_mixer_parameters_by_part(name):
    cfg = small_config(name)
    model = HybridForCausalLM(cfg)
    p = parameter_counts(cfg)
    for kind, attr in MIXER_MODULES.items():
        want = sum(q.numel() for i, layer in enumerate(model.model.layers)
                   if cfg.layer_kind(i) == kind for q in getattr(layer, attr).parameters())
        assert p[kind] == want > 0, kind
    attn = sum(q.numel() for layer in model.model.layers if hasattr(layer, "attn")
               for q in layer.attn.parameters())
    assert p["attention"] == attn and p["gla"] == 0
    assert p["total"] == sum(q.numel() for q in model.parameters())


def test_linear_mixer_parameter_formulas_by_hand():
    # h 32. GDN (qwen3_5): Hk 2 x dk 8, Hv 4 x dv 6, conv 4: conv channels 2*16 + 24 = 56;
    # in_proj_qkv 32*56, z 32*24, b and a 32*4 each, conv 56*4, dt_bias + A_log 2*4,
    # norm 6, out_proj 24*32.
    p = parameter_counts(small_config("mixers_qwen3_5_like"))
    assert p["gdn"] == 32 * 56 + 32 * 24 + 2 * 32 * 4 + 56 * 4 + 2 * 4 + 6 + 24 * 32
    # Mamba-2: H 4 x P 8 (d_inner 32), N 6, G 2: conv channels 32 + 2*2*6 = 56; in_proj
    # 32 -> 32 + 56 + 4 (no bias), conv 56*4 + bias 56, dt_bias, A_log, D 3*4, norm 32,
    # out_proj 32*32.
    assert p["mamba2"] == 32 * 92 + 56 * 4 + 56 + 3 * 4 + 32 + 32 * 32
    # short conv, kernel 3, no biases: in_proj 32 -> 96, conv 32*3, out_proj 32*32.
    assert p["conv"] == 32 * 96 + 32 * 3 + 32 * 32
    # gated attention: q_proj 32 -> 2*4*8 (query and gate), k, v 32 -> 16, o 32 -> 32
    # (biases on q, k, v), q/k norms 8 each.
    assert p["attention"] == (32 * 64 + 64) + 2 * (32 * 16 + 16) + 32 * 32 + 2 * 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,prompt,steps", [
    ("mixers_qwen3_5_like", 9, 4),    # gdn, mamba2, conv and a growing full-attention layer
    ("mixers_other_options", 2, 6),   # fewer prompt tokens than the conv kernels; window 5
])
def test_linear_mixer_state_bytes_match_decode_state(name, prompt, steps, dtype):
    cfg = small_config(name)
    torch.manual_seed(0)
    model = HybridForCausalLM(cfg).to(dtype).eval()
    state = model.new_state()
    with torch.no_grad():
        model.prefill(torch.randint(0, cfg.vocab_size, (1, prompt)), state, block_size=4)
        for t in range(steps):
            model(torch.randint(0, cfg.vocab_size, (1, 1)), state)
            context = prompt + t + 1
            want = decode_state_bytes(cfg, context, dtype)
            assert want["total_bytes"] == state.nbytes(), (name, context)
            assert {k: want[k] for k in _mixer_bytes(cfg, state)} == _mixer_bytes(cfg, state)
            got = _components(cfg, state)
            assert {k: want[k] for k in got} == got
    # the mixers' own state_bytes, layer by layer
    per = decode_state_bytes(cfg, prompt + steps, dtype)["per_layer"]
    for i, layer in enumerate(model.model.layers):
        kind = cfg.layer_kind(i)
        if kind in MIXER_MODULES:
            mixer = getattr(layer, MIXER_MODULES[kind])
            assert per[i] == {"layer": i, "kind": kind, "bytes": mixer.state_bytes(1, dtype)}


def test_linear_mixer_state_by_hand():
    # float32; GDN conv 56 channels x 3 kept inputs + 4 value heads x 8 x 6 recurrent;
    # Mamba-2 conv 56 channels x 3 (d_conv - 1) + 4 heads x 8 x 6 SSM; short conv 32 x 2;
    # full attention: 2 kv heads x 8, keys and values, 100 slots, + int64 positions.
    s = decode_state_bytes(small_config("mixers_qwen3_5_like"), 100, 4)
    assert s["gdn_state_bytes"] == (56 * 3 + 4 * 8 * 6) * 4
    assert s["mamba2_state_bytes"] == (56 * 3 + 4 * 8 * 6) * 4
    assert s["conv_state_bytes"] == 32 * 2 * 4
    assert s["full_kv_bytes"] == 2 * 2 * 8 * 100 * 4 and s["position_bytes"] == 100 * 8
    assert s["window_kv_bytes"] == 0 == s["gla_state_bytes"]
    # bf16: conv windows in bf16, the recurrent and SSM states in float32
    b = decode_state_bytes(small_config("mixers_qwen3_5_like"), 100, "bf16")
    assert b["gdn_state_bytes"] == 56 * 3 * 2 + 4 * 8 * 6 * 4
    assert b["mamba2_state_bytes"] == 56 * 3 * 2 + 4 * 8 * 6 * 4
    assert b["conv_state_bytes"] == 32 * 2 * 2
    assert decode_state_bytes(small_config("mixers_qwen3_5_like"), 0, 4)["total_bytes"] == 0
    # no growing cache: constant from 4k to 1M tokens; the mixers are sized on the meta
    # device, nothing allocated
    with NoStorage():
        info = model_info(small_config("mixers_other_options"))
    assert info["state_constant"] and info["state"][0]["total_bytes"] == info["state"][1]["total_bytes"]
    with pytest.raises(ValueError, match="Gated DeltaNet"):
        decode_state_bytes(small_config("mixers_qwen3_5_like"), 10, 1)


def test_linear_mixer_layer_table():
    L = model_info(small_config("mixers_other_options"))["layers"]
    assert L["kinds"] == {"gla": [], "swa": [1], "full": [], "parallel": [], "gdn": [0],
                          "mamba2": [2], "conv": [3]}
    assert L["with_gdn_state"] == [0] and L["with_mamba2_state"] == [2]
    assert L["with_conv_state"] == [3] and L["with_window_cache"] == [1]


def test_info_cli_prints_the_linear_mixers(tmp_path, capsys):
    from sbsnn.cli import main

    d = tmp_path / "ckpt"
    d.mkdir()
    small_config("mixers_qwen3_5_like").save(d / "config.json")
    assert main(["info", str(d), "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    # float32 state at 4k tokens: GDN (56*3 + 4*8*6)*4 = 1440 B, Mamba-2 (56*3 + 192)*4 =
    # 1440 B, short conv 32*2*4 = 256 B, full-attention K/V 2*2*8*4096*4 = 512 KiB and
    # positions 4096*8 = 32 KiB: 560192 B = 547.06 KiB. At 1M: 128 + 8 MiB + 3136 B.
    for piece in ("gdn", "mamba2", "conv", "Gated DeltaNet, 2 key heads x 8, 4 value heads x 6",
                  "Mamba-2 (SSD), 4 heads x 8, state 6, 2 groups", "short convolution, kernel 3",
                  "output gate", "GDN mixers", "Mamba-2 mixers", "short-conv mixers",
                  "GDN conv + recurrent state", "Mamba-2 conv + SSM state", "short-conv window",
                  "4k", "1M", "1.41 KiB", "256 B", "547.06 KiB", "136.00 MiB"):
        assert piece in out, piece


def test_qwen3_5_checkpoint_from_transformers(tmp_path):
    """A Qwen3.5 checkpoint written by transformers itself: ``sbsnn info``'s parameter
    count equals transformers' model's, and the state bytes sbsnn's decoding holds."""
    transformers = pytest.importorskip("transformers")
    from test_families_hybrid import _LINEAR_FIRST, _QWEN3_5

    from sbsnn.models import load_model

    torch.manual_seed(0)
    hf = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(
        **_QWEN3_5, layer_types=_LINEAR_FIRST)).float()
    hf.save_pretrained(tmp_path / "q")
    info = info_from_path(tmp_path / "q", dtype_bytes=4)
    assert info["params"]["total"] == sum(p.numel() for p in hf.parameters())
    assert info["layers"]["kinds"]["gdn"] == [0, 2] and info["layers"]["kinds"]["full"] == [1, 3]
    model = load_model(tmp_path / "q", dtype=torch.float32)
    state = model.new_state()
    with torch.no_grad():
        model.prefill(torch.randint(0, model.config.vocab_size, (1, 7)), state)
        model(torch.randint(0, model.config.vocab_size, (1, 1)), state)
    assert decode_state_bytes(model.config, 8, 4)["total_bytes"] == state.nbytes()
