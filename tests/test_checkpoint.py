"""Checkpoint tests.

The checkpoints here are written by hand from the upstream tensor names and shapes
(SpikingBrain-7B's ``gla_swa`` layout, Llama, Qwen2) with ``safetensors.torch.save_file``,
independently of sbsnn's model code, so loading checks our layout against theirs.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sbsnn.models import (ByteTokenizer, CheckpointError, HybridConfig, HybridForCausalLM,
                          load_checkpoint, load_model, read_safetensors, save_pretrained)

BF16, F32, F64 = torch.bfloat16, torch.float32, torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================ writers
SB7B_TINY = {
    "architectures": ["GLAswaForCausalLM"],
    "attn_mode": "chunk",
    "auto_map": {"AutoConfig": "configuration_gla_swa.GLAswaConfig",
                 "AutoModelForCausalLM": "modeling_gla_swa.GLAswaForCausalLM"},
    "bos_token_id": 1,
    "enable_spike": False,
    "spike_dynamic_scale": True,
    "spike_bitwidth": 4,
    "feature_map": "relu",
    "gate_logit_normalizer": 16,
    "hidden_act": "swish",
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 48,
    "max_position_embeddings": 2048,
    "model_type": "gla_swa",
    "norm_eps": 1e-06,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 2,
    "attn_layers": [1, 3],
    "rope_theta": 10000.0,
    "sliding_window": 4,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_short_conv": False,
    "vocab_size": 256,
}


def _rand(shape, gen, name):
    r = torch.randn(shape, generator=gen, dtype=F32)
    return 1.0 + 0.1 * r if "norm" in name else 0.2 * r


def sb7b_tensors(c: dict, seed: int = 0, dtype=BF16) -> dict[str, torch.Tensor]:
    """SpikingBrain-7B tensor names and shapes, from the upstream checkpoint layout."""
    gen = torch.Generator().manual_seed(seed)
    Hd, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = Hd // c["num_attention_heads"]
    q_out, kv_out = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    shapes = {"model.embeddings.weight": (V, Hd)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "attn_norm.weight": (Hd,), p + "mlp_norm.weight": (Hd,),
            p + "mlp.gate_proj.weight": (I, Hd), p + "mlp.up_proj.weight": (I, Hd),
            p + "mlp.down_proj.weight": (Hd, I),
            p + "attn.q_proj.weight": (q_out, Hd), p + "attn.q_proj.bias": (q_out,),
            p + "attn.k_proj.weight": (kv_out, Hd), p + "attn.k_proj.bias": (kv_out,),
            p + "attn.v_proj.weight": (kv_out, Hd), p + "attn.v_proj.bias": (kv_out,),
            p + "attn.o_proj.weight": (Hd, q_out),
        })
        if i not in c["attn_layers"]:  # GLA layer
            shapes.update({
                p + "attn.gk_proj.0.weight": (16, Hd),
                p + "attn.gk_proj.1.weight": (kv_out, 16), p + "attn.gk_proj.1.bias": (kv_out,),
                p + "attn.g_norm.weight": (hd,),
            })
    shapes["model.norm.weight"] = (Hd,)
    shapes["lm_head.weight"] = (V, Hd)
    return {n: _rand(s, gen, n).to(dtype) for n, s in shapes.items()}


def hf_tensors(c: dict, seed: int = 0, dtype=F32) -> dict[str, torch.Tensor]:
    """Llama / Qwen2 tensor names and shapes (transformers' LlamaForCausalLM layout)."""
    gen = torch.Generator().manual_seed(seed)
    Hd, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = Hd // c["num_attention_heads"]
    q_out, kv_out = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    bias = c["model_type"] == "qwen2"
    shapes = {"model.embed_tokens.weight": (V, Hd)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (Hd,), p + "post_attention_layernorm.weight": (Hd,),
            p + "self_attn.q_proj.weight": (q_out, Hd), p + "self_attn.k_proj.weight": (kv_out, Hd),
            p + "self_attn.v_proj.weight": (kv_out, Hd), p + "self_attn.o_proj.weight": (Hd, q_out),
            p + "mlp.gate_proj.weight": (I, Hd), p + "mlp.up_proj.weight": (I, Hd),
            p + "mlp.down_proj.weight": (Hd, I),
        })
        if bias:
            shapes.update({p + "self_attn.q_proj.bias": (q_out,),
                           p + "self_attn.k_proj.bias": (kv_out,),
                           p + "self_attn.v_proj.bias": (kv_out,)})
    shapes["model.norm.weight"] = (Hd,)
    if not c.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (V, Hd)
    return {n: _rand(s, gen, n).to(dtype) for n, s in shapes.items()}


def write_single(d: Path, tensors: dict, config: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config))
    return d


def write_sharded(d: Path, tensors: dict, config: dict, n: int = 3) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    files = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {name: files[j % n] for j, name in enumerate(names)}
    for f in files:
        save_file({k: tensors[k] for k in names if weight_map[k] == f}, str(d / f),
                  metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    (d / "config.json").write_text(json.dumps(config))
    return d


def header_of(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


IDS = torch.tensor([[3, 10, 200, 7, 7, 65, 66, 67, 1, 0, 255, 128, 9]])


def in_message(excinfo, *parts) -> None:
    msg = str(excinfo.value)
    for p in parts:
        assert str(p) in msg, f"{p!r} not named in: {msg}"


# ============================================================================ SpikingBrain-7B layout
@pytest.mark.parametrize("sharded", [False, True])
def test_sb7b_layout_loads_and_runs(tmp_path, sharded):
    tensors = sb7b_tensors(SB7B_TINY, seed=1)
    writer = write_sharded if sharded else write_single
    d = writer(tmp_path / "sb7b", tensors, SB7B_TINY)
    model = load_model(d, dtype=F32)
    sd = model.state_dict()
    assert set(sd) == set(tensors)
    for name, t in tensors.items():
        assert sd[name].dtype == F32
        assert torch.equal(sd[name], t.float()), name
    assert isinstance(model.tokenizer, ByteTokenizer)
    assert [b.kind for b in model.model.layers] == ["gla", "swa", "gla", "swa"]
    with torch.no_grad():
        logits = model(IDS)
    assert logits.shape == (1, IDS.shape[1], 256)
    assert torch.isfinite(logits).all()
    # Kept in the checkpoint's own dtype when none is asked for.
    native = load_checkpoint(d)
    assert all(p.dtype == BF16 for p in native.parameters())
    with torch.no_grad():
        out = native(IDS)
    assert out.dtype == BF16 and torch.isfinite(out.float()).all()
    # bf16 and f32 runs of the same weights agree roughly.
    assert (out.float() - logits).abs().max() < 0.25 * logits.abs().max()


def test_sb7b_sharded_equals_single(tmp_path):
    tensors = sb7b_tensors(SB7B_TINY, seed=2)
    a = load_model(write_single(tmp_path / "a", tensors, SB7B_TINY), dtype=F32)
    b = load_model(write_sharded(tmp_path / "b", tensors, SB7B_TINY, n=4), dtype=F32)
    with torch.no_grad():
        assert torch.equal(a(IDS), b(IDS))


def test_read_safetensors_values_and_dtypes(tmp_path):
    t = {"a": torch.arange(6, dtype=F32).reshape(2, 3), "b": torch.tensor([1.5, -2.0], dtype=BF16),
         "c": torch.arange(4, dtype=torch.int64), "e": torch.zeros(0, 3, dtype=torch.float16)}
    save_file(t, str(tmp_path / "x.safetensors"))
    got = read_safetensors(tmp_path / "x.safetensors")
    assert set(got) == set(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and torch.equal(got[k], t[k]), k


# ============================================================================ round trips
LAYOUTS = {
    "7b": {},
    "76b": dict(num_hidden_layers=3, attn_layers=[], parallel_mixer=True, full_attn_layers=[1],
                num_sink_tokens=2, linear_attn_gate="one_minus_k", linear_feature_map="sigmoid",
                num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                num_shared_experts=1, dense_layers=[0]),
}


def _random_model(cfg: HybridConfig, seed: int) -> HybridForCausalLM:
    model = HybridForCausalLM(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_rand(p.shape, gen, name))
    return model


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("max_shard_bytes", [None, 8192])
def test_save_pretrained_round_trip(tmp_path, tiny_config, layout, max_shard_bytes):
    cfg = tiny_config(**LAYOUTS[layout])
    cfg.extra["architectures"] = ["SomethingForCausalLM"]
    model = _random_model(cfg, seed=3)
    save_pretrained(model, tmp_path, max_shard_bytes=max_shard_bytes)
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    if max_shard_bytes:
        assert len(shards) > 1 and "model.safetensors" not in shards
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(model.state_dict())
        for f in shards:  # within the limit, unless one tensor alone exceeds it
            _, header = header_of(tmp_path / f)
            header.pop("__metadata__", None)
            data = max(m["data_offsets"][1] for m in header.values())
            assert data <= max_shard_bytes or len(header) == 1, f
    else:
        assert shards == ["model.safetensors"]
    assert not list(tmp_path.glob("*.tmp"))
    assert not list(tmp_path.glob(".sbsnn.partial-*"))
    loaded = load_model(tmp_path)
    saved = loaded.config.to_dict()
    assert saved.pop("torch_dtype", "float32") == "float32"  # recorded as transformers does
    assert saved == cfg.to_dict()
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == \
        ["SomethingForCausalLM"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS), model(IDS), rtol=0, atol=0)


def test_loaded_sb7b_config_round_trips_unknown_keys(tmp_path):
    d = write_single(tmp_path / "in", sb7b_tensors(SB7B_TINY), SB7B_TINY)
    model = load_model(d)
    save_pretrained(model, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    for k, v in SB7B_TINY.items():
        assert saved[k] == v, k


# ============================================================================ Llama / Qwen2
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256,
         "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
         "attention_dropout": 0.0, "pretraining_tp": 1, "max_position_embeddings": 512,
         "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1,
         "eos_token_id": 2}
QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 256,
         "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 1, "hidden_act": "silu",
         "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
         "use_sliding_window": False, "sliding_window": 4, "max_window_layers": 2,
         "attention_dropout": 0.0, "max_position_embeddings": 512,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
         "eos_token_id": 2}
HF_CASES = {"llama": LLAMA, "qwen2": QWEN2, "qwen2-tied": {**QWEN2, "tie_word_embeddings": True}}


def reference_hf_logits(t: dict, c: dict, ids: torch.Tensor) -> torch.Tensor:
    """Llama/Qwen2 forward written from the transformers conventions (float64): RMSNorm,
    rotate-half RoPE (frequencies and angles in float32, as transformers computes them
    whatever the model's dtype), repeat_kv GQA, causal softmax / sqrt(head_dim), SwiGLU."""
    t = {k: v.to(F64) for k, v in t.items()}
    H, Hkv = c["num_attention_heads"], c["num_key_value_heads"]
    D = c["hidden_size"] // H
    eps, L = c["rms_norm_eps"], ids.shape[1]

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x, name):
        y = x @ t[name + ".weight"].T
        return y + t[name + ".bias"] if name + ".bias" in t else y

    inv_freq = 1.0 / c["rope_theta"] ** (torch.arange(0, D, 2, dtype=F32) / D)
    ang = torch.arange(L, dtype=F32)[:, None] * inv_freq
    cos, sin = (torch.cat([ang, ang], -1).cos().to(F64), torch.cat([ang, ang], -1).sin().to(F64))

    def rope(x):  # [B, h, L, D]
        return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    x = t["model.embed_tokens.weight"][ids]
    B = ids.shape[0]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj").view(B, L, H, D).transpose(1, 2))
        k = rope(lin(h, p + "self_attn.k_proj").view(B, L, Hkv, D).transpose(1, 2))
        v = lin(h, p + "self_attn.v_proj").view(B, L, Hkv, D).transpose(1, 2)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        s = (q @ k.transpose(-1, -2)) / D ** 0.5
        a = s.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + lin(a.transpose(1, 2).reshape(B, L, H * D), p + "self_attn.o_proj")
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        x = x + lin(F.silu(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"),
                    p + "mlp.down_proj")
    x = rms(x, t["model.norm.weight"])
    head = t["model.embed_tokens.weight"] if c["tie_word_embeddings"] else t["lm_head.weight"]
    return x @ head.T


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_layout_loads_and_matches_reference(tmp_path, case):
    c = HF_CASES[case]
    tensors = hf_tensors(c, seed=4)
    on_disk = dict(tensors)
    if case == "llama":  # older Llama checkpoints carry this buffer; it must be ignored
        on_disk["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    d = write_single(tmp_path / case, on_disk, c)
    model = load_model(d, dtype=F64)
    assert [b.kind for b in model.model.layers] == ["full"] * c["num_hidden_layers"]
    assert (model.lm_head is None) == c["tie_word_embeddings"]
    ids = torch.cat([IDS, IDS.flip(1)])
    with torch.no_grad():
        got = model(ids)
    assert got.shape == (2, IDS.shape[1], 256) and torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_hf_logits(tensors, c, ids), rtol=1e-10, atol=1e-10)
    # and decoding through the full-attention cache agrees
    state = model.new_state()
    with torch.no_grad():
        steps = [model(ids[:, :4], state)] + [model(ids[:, j:j + 1], state)
                                              for j in range(4, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), got, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_hf_layout_matches_transformers(tmp_path, case):
    transformers = pytest.importorskip("transformers")
    c = HF_CASES[case]
    tensors = hf_tensors(c, seed=5)
    d = write_single(tmp_path / case, tensors, c)
    ours = load_model(d, dtype=F32)
    cls = transformers.LlamaForCausalLM if c["model_type"] == "llama" else transformers.Qwen2ForCausalLM
    conf_cls = transformers.LlamaConfig if c["model_type"] == "llama" else transformers.Qwen2Config
    conf = conf_cls(**{k: v for k, v in c.items() if k not in ("architectures", "torch_dtype")})
    conf._attn_implementation = "eager"
    ref = cls(conf).eval()
    missing, unexpected = ref.load_state_dict(tensors, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing)
    ref.tie_weights()
    ids = torch.cat([IDS, IDS.flip(1)])
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ============================================================================ bad checkpoints
@pytest.fixture
def good(tmp_path):
    """A valid SpikingBrain-7B-layout checkpoint (single file) and its tensors."""
    tensors = sb7b_tensors(SB7B_TINY, seed=6)
    d = write_single(tmp_path / "ckpt", tensors, SB7B_TINY)
    load_model(d)  # sanity: it is good before each test breaks it
    return d, tensors


def test_missing_tensor(good):
    d, tensors = good
    name = "model.layers.2.attn.gk_proj.0.weight"
    tensors.pop(name)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=re.escape(name) + ".*missing") as e:
        load_model(d)
    in_message(e, d)


def test_unexpected_tensor(good):
    d, tensors = good
    name = "model.layers.1.attn.gk_proj.0.weight"  # a GLA tensor on an SWA layer
    tensors[name] = torch.zeros(16, 32, dtype=BF16)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected tensor") as e:
        load_model(d)
    in_message(e, d / "model.safetensors", name)


def test_misshapen_tensor(good):
    d, tensors = good
    name = "model.layers.1.attn.q_proj.weight"
    tensors[name] = torch.zeros(30, 32, dtype=BF16)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape \(30, 32\).*\(32, 32\)") as e:
        load_model(d)
    in_message(e, d / "model.safetensors", name)


def test_integer_weights(good):
    d, tensors = good
    name = "model.norm.weight"
    tensors[name] = torch.ones(32, dtype=torch.int32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="dtype torch.int32") as e:
        load_model(d)
    in_message(e, d / "model.safetensors", name)


def test_truncated_file(good):
    d, _ = good
    f = d / "model.safetensors"
    n, header = header_of(f)
    header.pop("__metadata__", None)
    data_len = f.stat().st_size - 8 - n
    cut = data_len // 2
    f.write_bytes(f.read_bytes()[:8 + n + cut])
    beyond = [k for k, m in header.items() if m["data_offsets"][1] > cut]
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_model(d)
    in_message(e, f)
    assert any(repr(k) in str(e.value) for k in beyond), str(e.value)


def test_file_cut_inside_header(good):
    d, _ = good
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_model(d)
    in_message(e, f)


def test_corrupt_header_json(good):
    d, _ = good
    f = d / "model.safetensors"
    n, _ = header_of(f)
    raw = bytearray(f.read_bytes())
    raw[8:8 + n] = b"\xff\x00garbage" + b"}" * (n - 9)
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt safetensors header") as e:
        load_model(d)
    in_message(e, f)


def rewrite_header(f: Path, header) -> None:
    """Replace the JSON header in place (same length, space-padded), data untouched."""
    n, _ = header_of(f)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    raw = f.read_bytes()
    f.write_bytes(raw[:8] + text.ljust(n, b" ") + raw[8 + n:])


def test_corrupt_header_entry(good):
    """A header entry whose byte range does not fit its shape names the tensor."""
    d, _ = good
    f = d / "model.safetensors"
    _, header = header_of(f)
    header["model.norm.weight"]["shape"] = [31]
    rewrite_header(f, header)
    with pytest.raises(CheckpointError, match="bytes stored for shape") as e:
        load_model(d)
    in_message(e, f, "model.norm.weight")


def test_corrupt_header_negative_offsets(good):
    """Offsets before the data section would read the header's own bytes as weights:
    they must be refused, not loaded as garbage."""
    d, _ = good
    f = d / "model.safetensors"
    _, header = header_of(f)
    header["model.norm.weight"]["data_offsets"] = [-64, 0]  # 32 bf16 = 64 bytes
    rewrite_header(f, header)
    with pytest.raises(CheckpointError) as e:
        read_safetensors(f)
    in_message(e, f, "model.norm.weight")


def test_corrupt_header_not_an_object(good):
    """A header that is valid JSON but not an object is a corrupt header too."""
    d, _ = good
    f = d / "model.safetensors"
    rewrite_header(f, ["model.norm.weight"])
    with pytest.raises(CheckpointError, match="header") as e:
        load_model(d)
    in_message(e, f)


def test_not_safetensors_at_all(good):
    d, _ = good
    f = d / "model.safetensors"
    f.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    in_message(e, f)


@pytest.fixture
def sharded(tmp_path):
    tensors = sb7b_tensors(SB7B_TINY, seed=7)
    d = write_sharded(tmp_path / "sharded", tensors, SB7B_TINY, n=3)
    load_model(d)
    return d, tensors, json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]


def test_missing_shard(sharded):
    d, _, _ = sharded
    shard = d / "model-00002-of-00003.safetensors"
    shard.unlink()
    with pytest.raises(CheckpointError, match="missing") as e:
        load_model(d)
    in_message(e, shard, "model.safetensors.index.json")


def test_tensor_listed_in_index_but_absent_from_shard(sharded):
    d, tensors, weight_map = sharded
    name = "model.layers.0.attn.g_norm.weight"
    shard = weight_map[name]
    save_file({k: tensors[k] for k, s in weight_map.items() if s == shard and k != name},
              str(d / shard))
    with pytest.raises(CheckpointError, match="listed in model.safetensors.index.json") as e:
        load_model(d)
    in_message(e, d / shard, name)


@pytest.mark.parametrize("text", ['{"weight_map": {"a": ', '{"metadata": {}}',
                                  '{"weight_map": ["model.norm.weight"]}'])
def test_corrupt_index(sharded, text):
    d, _, _ = sharded
    index = d / "model.safetensors.index.json"
    index.write_text(text)
    with pytest.raises(CheckpointError, match="index") as e:
        load_model(d)
    in_message(e, index)


def test_unknown_architecture(good):
    d, _ = good
    (d / "config.json").write_text(json.dumps(
        {**SB7B_TINY, "model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="model_type 'mamba'.* is not supported") as e:
        load_model(d)
    in_message(e, d / "config.json", "MambaForCausalLM")


def test_config_not_json(good):
    d, _ = good
    (d / "config.json").write_text('{"model_type": "gla_swa",')
    with pytest.raises(CheckpointError, match="not valid JSON") as e:
        load_model(d)
    in_message(e, d / "config.json")


def test_missing_config(good):
    d, _ = good
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json") as e:
        load_model(d)
    in_message(e, d / "config.json")


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory") as e:
        load_model(tmp_path / "nowhere")
    in_message(e, tmp_path / "nowhere")


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SB7B_TINY))
    with pytest.raises(CheckpointError, match="no weights found") as e:
        load_model(tmp_path)
    in_message(e, tmp_path)


def test_pickle_refused_by_default_and_loaded_on_request(good):
    d, tensors = good
    ref = load_model(d, dtype=F32)
    (d / "model.safetensors").unlink()
    torch.save({k: v.float() for k, v in tensors.items()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle") as e:
        load_model(d)
    in_message(e, "pytorch_model.bin", "allow_pickle=True")
    model = load_model(d, allow_pickle=True)
    with torch.no_grad():
        assert torch.equal(model(IDS), ref(IDS))


def test_pickle_with_code_is_refused_even_when_allowed(good):
    """allow_pickle still means weights_only: a pickle of arbitrary objects fails cleanly."""
    d, _ = good
    (d / "model.safetensors").unlink()
    torch.save({"model.norm.weight": torch.ones(32), "x": Path("/")}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only") as e:
        load_model(d, allow_pickle=True)
    in_message(e, d / "pytorch_model.bin")


# ============================================================================ tied heads
@pytest.mark.parametrize("stored", ["different", "equal", "head-only"])
def test_tied_config_with_a_stored_head_runs_as_transformers_does(tmp_path, stored):
    """``tie_word_embeddings: true`` and an ``lm_head.weight`` in the file: transformers
    5.x (``tie_weights`` in ``from_pretrained``) keeps a stored head that differs from the
    embeddings, ties an equal one, and with no embeddings stored ties them to the head.
    sbsnn must compute what transformers computes, in each case."""
    transformers = pytest.importorskip("transformers")
    c = {**LLAMA, "tie_word_embeddings": True}
    t = hf_tensors({**c, "tie_word_embeddings": False}, seed=6)   # with an lm_head.weight
    if stored == "equal":
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    elif stored == "head-only":
        del t["model.embed_tokens.weight"]
    d = write_single(tmp_path / stored, t, c)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ours = load_model(d)
    with torch.no_grad():
        want = ref(IDS).logits
        got = ours(IDS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    head = t["lm_head.weight"]
    assert torch.equal(ref.lm_head.weight, head)   # transformers used the stored head
    emb = ours.model.embeddings.weight
    assert torch.equal(emb, head if stored == "head-only" else t["model.embed_tokens.weight"])
    assert (ours.lm_head is None) == (stored != "different")
