"""GGUF files of the hybrid architectures (qwen35, qwen35moe, qwen3next, granitehybrid dense
and MoE, falcon-h1, lfm2, lfm2moe): a small random transformers model of each family is
written the way llama.cpp's
converter writes it (tests/gguf_files.hybrid_tensors), read back with sbsnn's read_gguf,
and checked against transformers itself: every tensor, and the logits of the model built
from the returned config dict and tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

import gguf_files as gf  # noqa: E402  (tests/ helper)

from sbsnn.models.errors import CheckpointError  # noqa: E402
from sbsnn.models.gguf import ARCHITECTURES, read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
transformers.logging.set_verbosity_error()


def _vocab():
    return gf.bpe_vocab()


def _n_vocab():
    return len(_vocab()["tokenizer.ggml.tokens"])


def _configs():
    T = transformers
    V = _n_vocab()
    return {
        # GDN value heads 3x the key heads; partial RoPE 1/2; pattern lin lin full lin
        "qwen35": lambda: T.Qwen3_5ForCausalLM(T.Qwen3_5TextConfig(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_key_head_dim=8, linear_value_head_dim=12, linear_num_key_heads=2,
            linear_num_value_heads=6, linear_conv_kernel_dim=3,
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0,
                             "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
                             "mrope_interleaved": True},
            layer_types=["linear_attention", "linear_attention", "full_attention",
                         "linear_attention"], tie_word_embeddings=False)),
        # value heads 2x key heads; MoE with shared expert; lin full lin
        "qwen3next": lambda: T.Qwen3NextForCausalLM(T.Qwen3NextConfig(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            linear_key_head_dim=8, linear_value_head_dim=12, linear_num_key_heads=2,
            linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=32, shared_expert_intermediate_size=48,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            tie_word_embeddings=True)),
        # Mamba-2 with 2 groups; starts with attention; muP-style multipliers
        "granitehybrid": lambda: T.GraniteMoeHybridForCausalLM(T.GraniteMoeHybridConfig(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=0,
            shared_intermediate_size=80, mamba_n_heads=8, mamba_n_groups=2,
            mamba_d_state=16, mamba_d_head=16, mamba_d_conv=3, position_embedding_type="nope",
            embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.2,
            logits_scaling=2.0, layer_types=["attention", "mamba", "mamba"])),
        # d_ssm not 2*hidden, 3 groups, gated norm, every multiplier non-trivial
        "falcon-h1": lambda: T.FalconH1ForCausalLM(T.FalconH1Config(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=24, mamba_d_ssm=96,
            mamba_n_heads=6, mamba_n_groups=3, mamba_d_state=16, mamba_rms_norm=True,
            mamba_norm_before_gate=False, lm_head_multiplier=0.5, embedding_multiplier=2.0,
            mlp_multipliers=[0.7, 1.3], key_multiplier=0.9, attention_out_multiplier=1.1,
            attention_in_multiplier=0.8, ssm_multipliers=[0.6, 1.2, 0.9, 1.4, 0.5],
            ssm_in_multiplier=1.5, ssm_out_multiplier=0.75)),
        # conv first; attention in the middle; tied head
        "lfm2": lambda: T.Lfm2ForCausalLM(T.Lfm2Config(
            vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, conv_L_cache=4,
            layer_types=["conv", "full_attention", "conv"], block_auto_adjust_ff_dim=False)),
        # Granite 4.0-H Tiny's shape: experts of intermediate_size plus the shared MLP
        "granitehybrid-moe": lambda: T.GraniteMoeHybridForCausalLM(T.GraniteMoeHybridConfig(
            vocab_size=V, hidden_size=64, intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
            num_experts_per_tok=2, shared_intermediate_size=48, mamba_n_heads=8,
            mamba_n_groups=1, mamba_d_state=16, mamba_d_head=16, mamba_d_conv=4,
            position_embedding_type="nope", embedding_multiplier=2.0, residual_multiplier=0.7,
            attention_multiplier=0.3, logits_scaling=1.5,
            layer_types=["mamba", "attention", "mamba"])),
        # qwen35's GDN (value heads 2x key heads, tiled) with experts and a gated shared one
        "qwen35moe": lambda: T.Qwen3_5MoeForCausalLM(T.Qwen3_5MoeTextConfig(
            vocab_size=V, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_key_head_dim=8, linear_value_head_dim=12,
            linear_num_key_heads=2, linear_num_value_heads=4, linear_conv_kernel_dim=3,
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            rope_parameters={"rope_type": "default", "rope_theta": 5000.0,
                             "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
                             "mrope_interleaved": True},
            layer_types=["linear_attention", "linear_attention", "full_attention"],
            tie_word_embeddings=False)),
        # one dense layer, then sigmoid-routed experts with a (random) expert bias
        "lfm2moe": lambda: T.Lfm2MoeForCausalLM(T.Lfm2MoeConfig(
            vocab_size=V, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, conv_L_cache=4,
            num_dense_layers=1, num_experts=4, num_experts_per_tok=2,
            layer_types=["conv", "full_attention", "conv"])),
    }


def _arch(case: str) -> str:
    """The GGUF architecture of a test case (granitehybrid-moe: granitehybrid)."""
    return case.removesuffix("-moe")


def _randomize(model):
    """Random weights (not transformers' structured init); norm weights on a 2^-8 grid so
    that llama.cpp's 1 + w for Qwen comes back exactly."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=g) * 15 + 1))
            elif "norm" in name:
                p.copy_(torch.round(torch.randn(p.shape, generator=g) * 0.2 * 256) / 256)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim == 1 else 0.15))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):  # LFM2-MoE's routing bias: a buffer
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return model.eval()


_CACHE: dict = {}


def _model(arch):
    if arch not in _CACHE:
        torch.manual_seed(0)
        _CACHE[arch] = _randomize(_configs()[arch]())
    return _CACHE[arch]


def _expected(arch, model) -> dict:
    """The Hugging Face tensors a reader must return: the state dict, except that
    falcon-h1's muP multipliers are folded into the weights (llama.cpp applies none)."""
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    if arch != "falcon-h1":
        return sd
    c = model.config
    out = dict(sd)
    out["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"] * c.embedding_multiplier
    out["lm_head.weight"] = sd["lm_head.weight"] * c.lm_head_multiplier
    written = gf.hybrid_tensors(arch, model)
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for hf, g in (("feed_forward.gate_proj.weight", "ffn_gate.weight"),
                      ("feed_forward.down_proj.weight", "ffn_down.weight"),
                      ("self_attn.q_proj.weight", "attn_q.weight"),
                      ("self_attn.k_proj.weight", "attn_k.weight"),
                      ("self_attn.v_proj.weight", "attn_v.weight"),
                      ("self_attn.o_proj.weight", "attn_output.weight"),
                      ("mamba.in_proj.weight", "ssm_in.weight"),
                      ("mamba.out_proj.weight", "ssm_out.weight")):
            out[p + hf] = written[b + g]
    return out


# Keys whose value in the file legitimately differs from the model's config: the muP
# multipliers falcon-h1's converter folds into the weights, the context length a RoPE-less
# Granite file states (2**20), and the token ids, which come from the tokenizer.
_DIFFERENT = {"falcon-h1": {"lm_head_multiplier", "embedding_multiplier", "mlp_multipliers",
                            "key_multiplier", "attention_out_multiplier",
                            "attention_in_multiplier", "ssm_multipliers", "ssm_in_multiplier",
                            "ssm_out_multiplier"},
              "granitehybrid": {"max_position_embeddings"}}


def _assert_config(arch: str, mine: dict, theirs: dict):
    """Every key the reader writes has the model's config value (floats to float32)."""
    assert mine["model_type"] == theirs["model_type"]
    for key, value in mine.items():
        if key in ("architectures", "bos_token_id", "eos_token_id", "pad_token_id") \
                or key in _DIFFERENT.get(arch, ()):
            continue
        assert key in theirs, key
        if isinstance(value, float):
            assert math.isclose(value, theirs[key], rel_tol=1e-6), (key, value, theirs[key])
        elif key == "rope_parameters":
            assert value.keys() == theirs[key].keys(), (value, theirs[key])
            for k, v in value.items():
                assert v == (pytest.approx(theirs[key][k], rel=1e-6) if isinstance(v, float)
                             else theirs[key][k]), (k, v, theirs[key][k])
        else:
            assert value == theirs[key] or list(value) == list(theirs[key]), \
                (key, value, theirs[key])


def _build(cfg: dict, tensors: dict):
    from transformers import AutoConfig, AutoModelForCausalLM
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    config = AutoConfig.for_model(cfg["model_type"], **kw)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set()), missing
    return model.eval()


def _ids():
    return torch.randint(0, _n_vocab(), (1, 80), generator=torch.Generator().manual_seed(2))


ARCHS = ["qwen35", "qwen3next", "granitehybrid", "falcon-h1", "lfm2"]
MOE = ["granitehybrid-moe", "qwen35moe", "lfm2moe"]  # the MoE hybrids (cases)
CASES = ARCHS + MOE


def test_architectures_listed():
    assert {_arch(c) for c in CASES} <= set(ARCHITECTURES)


def _write(tmp_path, case, **kw):
    return gf.write_hybrid(tmp_path / f"{case}.gguf", _arch(case), _model(case),
                           vocab=_vocab(), **kw)


@pytest.mark.parametrize("case", CASES)
def test_hybrid_roundtrip_f32(tmp_path, case):
    """Every tensor back bit for bit (A_log: -exp of it is the file's ssm_a bit for bit);
    the model built from the config dict gives the original's logits."""
    arch, model = _arch(case), _model(case)
    path, written = _write(tmp_path, case)
    ck = read_gguf(path)
    want = _expected(arch, model)
    if model.config.tie_word_embeddings:
        want.pop("lm_head.weight")
    assert set(ck.tensors) == set(want)
    for name, w in want.items():
        got = ck.tensors[name]
        assert got.dtype == torch.float32 and got.shape == w.shape, name
        if name.endswith("A_log"):
            assert torch.equal(-torch.exp(got), -torch.exp(w)), name
            assert torch.allclose(got, w, rtol=0, atol=4e-7), name
        else:
            assert torch.equal(got, w), name
    cfg = ck.config
    _assert_config(arch, cfg, model.config.to_dict())
    rebuilt = _build(cfg, ck.tensors)
    ids = _ids()
    with torch.no_grad():
        a = model(ids).logits
        b = rebuilt(ids).logits
    torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-5)


def test_granite_layer_types(tmp_path):
    path, _ = _write(tmp_path, "granitehybrid")
    cfg = read_gguf(path).config
    assert cfg["layer_types"] == ["full_attention", "linear_attention", "linear_attention"]
    assert cfg["position_embedding_type"] == "nope"
    assert cfg["mamba_n_groups"] == 2 and cfg["mamba_expand"] == 2
    assert math.isclose(cfg["attention_multiplier"], 0.2, rel_tol=1e-6)
    assert math.isclose(cfg["logits_scaling"], 2.0, rel_tol=1e-6)
    assert cfg["num_local_experts"] == 0


def test_moe_configs(tmp_path):
    """What the MoE metadata becomes (the round trip checks it against the model too)."""
    g = read_gguf(_write(tmp_path, "granitehybrid-moe")[0]).config
    assert (g["num_local_experts"], g["num_experts_per_tok"], g["intermediate_size"],
            g["shared_intermediate_size"]) == (4, 2, 32, 48)
    q = read_gguf(_write(tmp_path, "qwen35moe")[0]).config
    assert q["model_type"] == "qwen3_5_moe_text" and "intermediate_size" not in q
    assert (q["num_experts"], q["num_experts_per_tok"], q["moe_intermediate_size"],
            q["shared_expert_intermediate_size"]) == (4, 2, 32, 48)
    lf = read_gguf(_write(tmp_path, "lfm2moe")[0]).config
    assert (lf["num_experts"], lf["num_experts_per_tok"], lf["moe_intermediate_size"],
            lf["num_dense_layers"], lf["use_expert_bias"]) == (4, 2, 32, 1, True)
    assert lf["norm_topk_prob"] is True and lf["routed_scaling_factor"] == 1.0


def _q8_names(tensors: dict, expert_names=False) -> set:
    """The GGUF matrices Q8_0 can hold (rows a multiple of its 32-value block)."""
    keys = ("ffn_up.", "attn_v.", "token_embd.weight", "shortconv.in_proj")
    if expert_names:
        keys += ("_exps.", "_shexp.", "ffn_gate_inp.")
    return {n for n, t in tensors.items()
            if t.ndim >= 2 and t.shape[-1] % 32 == 0 and any(k in n for k in keys)}


@pytest.mark.parametrize("case", ARCHS)
def test_hybrid_q8_0(tmp_path, case):
    """Plain matrices stored as Q8_0 come back as gguf's dequantization of them."""
    plain = _q8_names(gf.hybrid_tensors(_arch(case), _model(case)))
    assert plain
    path, _ = _write(tmp_path, case, quantize={n: Q.Q8_0 for n in plain})
    ck = read_gguf(path)
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    inverse = {v: k for k, v in ck.origin.items()}  # single-source tensors only
    plain = {n for n in plain if n in inverse}
    assert plain
    for name in plain:
        t = reader[name]
        assert t.tensor_type == Q.Q8_0
        want = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type),
                                         np.float32))
        hf = inverse[name]
        assert torch.equal(ck.tensors[hf], want.reshape(ck.tensors[hf].shape)), name


@pytest.mark.parametrize("case", MOE)
def test_moe_q8_0(tmp_path, case):
    """Experts (stacked 3-D), router, shared expert stored as Q8_0: the file reads as the
    F32 file of gguf's dequantization of each of them (the gate and up stacks
    concatenated into gate_up_proj, as from F32), and transformers runs it."""
    arch, model = _arch(case), _model(case)
    tensors = gf.hybrid_tensors(arch, model)
    quant = _q8_names(tensors, expert_names=True)
    assert any("_exps." in n for n in quant) and any("ffn_gate_inp." in n for n in quant)
    path, _ = _write(tmp_path, case, quantize={n: Q.Q8_0 for n in quant})
    reader = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert all(reader[n].tensor_type == Q.Q8_0 for n in quant)
    # the same file in F32 holding the dequantized values
    data = {n: (np.array(gguf.quants.dequantize(reader[n].data, Q.Q8_0), np.float32)
                .reshape(t.shape) if n in quant else t.numpy(), Q.F32)
            for n, t in tensors.items()}
    meta = dict(gf.hybrid_meta(arch, model.config), **_vocab())
    f32 = gf.write_gguf(tmp_path / "dequantized.gguf", arch, meta, data)
    got, want = read_gguf(path), read_gguf(f32)
    assert set(got.tensors) == set(want.tensors)
    changed = 0
    for name, w in want.tensors.items():
        assert torch.equal(got.tensors[name], w), name
        changed += not torch.equal(w, _expected(arch, model)[name])
    assert changed >= len(quant) // 2  # the quantization did change the values read
    with torch.no_grad():  # (random routers flip under rounding: no closeness to claim)
        assert torch.isfinite(_build(got.config, got.tensors)(_ids()).logits).all()


@pytest.mark.parametrize("case", CASES)
def test_hybrid_refuses_unknown_key(tmp_path, case):
    key = f"{_arch(case)}.attention.temperature_scale"
    path, _ = _write(tmp_path, case, extra_meta={key: 0.5})
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        read_gguf(path)


@pytest.mark.parametrize("case", CASES)
def test_hybrid_refuses_stray_tensor(tmp_path, case):
    stray = {"blk.0.ssm_x.weight": (np.ones((4, 64), np.float32), Q.F32)}
    path, _ = _write(tmp_path, case, extra_tensors=stray)
    with pytest.raises(CheckpointError, match=r"unexpected tensor blk\.0\.ssm_x\.weight"):
        read_gguf(path)


def test_qwen35_refuses_mtp(tmp_path):
    for case in ("qwen35", "qwen35moe"):
        path, _ = _write(tmp_path, case, extra_meta={f"{case}.nextn_predict_layers": 1})
        with pytest.raises(CheckpointError, match="nextn_predict_layers"):
            read_gguf(path)


# (case, extra metadata, what the refusal names): keys whose value the transformers model
# cannot run as llama.cpp would, or that contradict the file's tensors
_MOE_REFUSALS = [
    ("granitehybrid", {"expert_count": 4}, r"unexpected tensor blk\.0\.ffn_gate\.weight"),
    ("granitehybrid-moe", {"expert_gating_func": 2}, r"granitehybrid\.expert_gating_func=2"),
    ("granitehybrid-moe", {"expert_feed_forward_length": 64},
     r"granitehybrid\.expert_feed_forward_length=64"),
    ("granitehybrid-moe", {"expert_used_count": 5}, r"granitehybrid\.expert_used_count=5"),
    ("granitehybrid-moe", {"expert_weights_scale": 2.5}, r"granitehybrid\.expert_weights_scale"),
    ("qwen35moe", {"expert_count": 0}, r"qwen35moe\.expert_count=0"),
    ("qwen35moe", {"expert_gating_func": 2}, r"qwen35moe\.expert_gating_func=2"),
    ("qwen35moe", {"expert_used_count": 0}, r"qwen35moe\.expert_used_count=0"),
    ("lfm2moe", {"expert_gating_func": 1}, r"lfm2moe\.expert_gating_func=1"),
    ("lfm2moe", {"leading_dense_block_count": 4}, r"lfm2moe\.leading_dense_block_count=4"),
    ("lfm2moe", {"leading_dense_block_count": 2}, r"unexpected tensor blk\.1\."),
    ("lfm2moe", {"expert_weights_norm": False}, r"lfm2moe\.expert_weights_norm"),
    ("lfm2moe", {"expert_feed_forward_length": 64}, r"blk\.1\.ffn_gate_exps\.weight has shape"),
]


@pytest.mark.parametrize("case,extra,match", _MOE_REFUSALS)
def test_moe_refusals(tmp_path, case, extra, match):
    arch = _arch(case)
    path, _ = _write(tmp_path, case, extra_meta={f"{arch}.{k}": v for k, v in extra.items()})
    with pytest.raises(CheckpointError, match=match):
        read_gguf(path)


def _drop_key(tmp_path, case: str, key: str):
    path, _ = _write(tmp_path, case)
    raw = gf.RawGGUF.parse(path.read_bytes())
    raw.kvs = [kv for kv in raw.kvs if kv[0] != key]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(raw.to_bytes())
    return bad


@pytest.mark.parametrize("case,key", [
    ("falcon-h1", "falcon-h1.ssm.group_count"),
    ("lfm2moe", "lfm2moe.expert_gating_func"),
    ("lfm2moe", "lfm2moe.leading_dense_block_count"),
    ("qwen35moe", "qwen35moe.expert_feed_forward_length"),
    ("granitehybrid-moe", "granitehybrid.expert_used_count")])
def test_missing_key_refused(tmp_path, case, key):
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.") + " is missing"):
        read_gguf(_drop_key(tmp_path, case, key))


def test_moe_refuses_a_missing_expert_bias(tmp_path):
    """LFM2-MoE: exp_probs_b on some MoE layers and not others is refused, not guessed."""
    model = _model("lfm2moe")
    tensors = gf.hybrid_tensors("lfm2moe", model)
    assert tensors.pop("blk.2.exp_probs_b.bias") is not None
    meta = dict(gf.hybrid_meta("lfm2moe", model.config), **_vocab())
    path = gf.write_gguf(tmp_path / "bad.gguf", "lfm2moe", meta,
                         {n: (t.numpy(), Q.F32) for n, t in tensors.items()})
    with pytest.raises(CheckpointError, match=r"tensor blk\.2\.exp_probs_b\.bias .*missing"):
        read_gguf(path)


# ----------------------------------------------------------------------------- sbsnn's model
@pytest.mark.parametrize("case", CASES)
def test_sbsnn_loads_the_gguf_as_the_safetensors_checkpoint(tmp_path, case):
    """The GGUF file and the save_pretrained directory of one model load in sbsnn to the
    same logits (F32 file: to float rounding), with the same layer kinds and head."""
    from sbsnn.models import load_model

    model = _model(case)
    path, _ = _write(tmp_path, case)
    model.save_pretrained(tmp_path / "hf")
    from_gguf, from_dir = load_model(path), load_model(tmp_path / "hf")
    assert [b.kind for b in from_gguf.model.layers] == [b.kind for b in from_dir.model.layers]
    assert (from_gguf.lm_head is None) == (from_dir.lm_head is None)
    ids = _ids()
    with torch.no_grad():
        a, b = from_dir(ids), from_gguf(ids)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5
    with torch.no_grad():  # and both equal transformers
        ref = model(ids).logits
    assert float((a - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_sbsnn_loads_a_quantized_gguf_as_the_model_of_its_dequantized_weights(tmp_path, arch):
    """Matrices stored as Q8_0: sbsnn's model from the file gives the logits of the
    transformers model whose weights are gguf's own dequantization of them, saved with
    save_pretrained and loaded by sbsnn (to float rounding)."""
    import copy

    from sbsnn.models import load_model

    model = _model(arch)
    written = gf.hybrid_tensors(arch, model)
    f32, _ = gf.write_hybrid(tmp_path / "f32.gguf", arch, model, vocab=_vocab())
    names = {v: k for k, v in read_gguf(f32).origin.items()}      # GGUF name -> HF name
    sd = model.state_dict()
    # the matrices the converter stores as they are (no permutation, no folded multiplier)
    plain = {n for n, t in written.items()
             if t.ndim == 2 and t.shape[1] % 32 == 0 and n in names
             and torch.equal(torch.as_tensor(np.asarray(t)).reshape(-1), sd[names[n]].reshape(-1))}
    assert plain
    path, _ = gf.write_hybrid(tmp_path / f"{arch}.gguf", arch, model, vocab=_vocab(),
                              quantize={n: Q.Q8_0 for n in plain})
    dequantized = copy.deepcopy(model)
    sd = dequantized.state_dict()
    changed = 0
    for t in gguf.GGUFReader(path).tensors:
        if t.name in plain and t.name in names:
            w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
            hf = names[t.name]
            with torch.no_grad():
                sd[hf].copy_(torch.from_numpy(w).reshape(sd[hf].shape))
            changed += 1
    assert changed
    if dequantized.config.tie_word_embeddings:
        dequantized.tie_weights()
    dequantized.save_pretrained(tmp_path / "hf")
    ids = _ids()
    with torch.no_grad():
        want = load_model(tmp_path / "hf")(ids)
        got = load_model(path)(ids)
        original = model(ids).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    assert not torch.allclose(got, original, rtol=0, atol=1e-7)   # the quantization is seen


def test_granite_experts_under_two_names_refused():
    """transformers 5's expert names and the checkpoint's for the same weights: refused
    (sbsnn keeps one), naming both."""
    from sbsnn.models.families import split_granite_fused

    p = "model.layers.0.block_sparse_moe."
    raw = {p + "experts.gate_up_proj": torch.zeros(2, 8, 4), p + "input_linear.weight":
           torch.zeros(2, 8, 4)}
    with pytest.raises(CheckpointError, match=r"experts\.gate_up_proj.*input_linear"):
        split_granite_fused(raw, {k: "f.safetensors" for k in raw})
    raw = {p + "experts.gate_up_proj": torch.arange(2 * 8 * 4.0).reshape(2, 8, 4)}
    out, _, made = split_granite_fused(raw, {k: "f.safetensors" for k in raw})
    assert torch.equal(out["model.layers.0.mlp.experts.1.up_proj.weight"], raw[p + "experts.gate_up_proj"][1, 4:])
    assert made["model.layers.0.mlp.experts.1.up_proj.weight"] == p + "experts.gate_up_proj[1][4:]"
