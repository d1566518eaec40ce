"""GGUF input: sbsnn.models.gguf.read_gguf against the gguf package's own dequantization
and against what transformers builds from the same file (config, tensors, tokenizer)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

import gguf_files as gf  # noqa: E402  (tests/ helper)

from sbsnn.models.errors import CheckpointError  # noqa: E402
from sbsnn.models.gguf import is_gguf, read_gguf  # noqa: E402
from sbsnn.models.tokenizer import HFTokenizer  # noqa: E402

Q = gguf.GGMLQuantizationType


def _transformers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def reference(path):
    """What transformers builds from ``path``: (config dict, tensors, tokenizer)."""
    _transformers()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return cfg.to_dict(), tensors, tok


def assert_config_equal(mine: dict, theirs: dict):
    for key, value in mine.items():
        if key == "architectures":  # transformers' GGUF config leaves it unset
            continue
        assert key in theirs, key
        assert theirs[key] == value, (key, value, theirs[key])


def raw(path, name):
    """gguf's own dequantization of one tensor of the file (numpy order = torch order)."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))


# ----------------------------------------------------------------------------- tensor types
TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_each_tensor_type_loads_to_gguf_dequantization(tmp_path, qtype):
    meta = gf.model_meta("llama", hidden=256, heads=4, kv_heads=2, layers=1, ffn=256,
                         vocab=gf.spm_vocab())
    tensors = gf.model_tensors("llama", meta, qtype=Q.F16)
    x = np.random.default_rng(1).standard_normal((256, 256)).astype(np.float32)
    tensors["blk.0.ffn_up.weight"] = (x, qtype)
    path = gf.write_gguf(tmp_path / "m.gguf", "llama", meta, tensors)
    ck = read_gguf(path)
    got = ck.tensors["model.layers.0.mlp.up_proj.weight"]
    assert got.dtype == torch.float32 and got.shape == (256, 256)
    assert torch.equal(got, raw(path, "blk.0.ffn_up.weight"))
    assert ck.origin["model.layers.0.mlp.up_proj.weight"] == "blk.0.ffn_up.weight"
    if qtype not in (Q.Q4_K, Q.Q5_K, Q.Q6_K):  # gguf quantized x itself: close to x
        tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 0.03}.get(qtype, 0.5)
        assert (got - torch.from_numpy(x)).abs().max() <= tol
    else:  # random blocks: still finite and not all zero
        assert torch.isfinite(got).all() and got.abs().max() > 0


def test_unsupported_tensor_type_is_refused_by_tensor_and_type(tmp_path):
    meta = gf.model_meta("llama", hidden=256, heads=4, kv_heads=2, layers=1, ffn=256,
                         vocab=gf.spm_vocab())
    tensors = gf.model_tensors("llama", meta, qtype=Q.F16)
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in meta.items():
        _add(w, k, v)
    for name, (x, t) in tensors.items():
        if name == "blk.0.ffn_up.weight":  # 110-byte Q3_K blocks, random
            w.add_tensor(name, np.random.default_rng(0).integers(0, 256, (256, 110), np.uint8),
                         raw_dtype=Q.Q3_K)
        else:
            w.add_tensor(name, x.astype(np.float16 if t == Q.F16 else np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(CheckpointError, match=r"blk\.0\.ffn_up\.weight.*Q3_K"):
        read_gguf(path)


def _add(w, k, v):
    T = gguf.GGUFValueType
    if isinstance(v, bool):
        w.add_bool(k, v)
    elif isinstance(v, int):
        w.add_uint32(k, v)
    elif isinstance(v, float):
        w.add_float32(k, v)
    elif isinstance(v, str):
        w.add_string(k, v)
    elif v and isinstance(v[0], float):
        w.add_key_value(k, v, T.ARRAY, sub_type=T.FLOAT32)
    elif v and isinstance(v[0], int):
        w.add_key_value(k, v, T.ARRAY, sub_type=T.INT32)
    else:
        w.add_array(k, v)


# ----------------------------------------------------------------------------- architectures
ARCHS = {
    # GQA (4 query heads over 2 kv heads): the q and k un-permutations differ
    "llama-gqa": dict(arch="llama", heads=4, kv_heads=2, tied=False),
    "llama-mha-bpe": dict(arch="llama", heads=4, kv_heads=4, theta=500000.0,
                          vocab=gf.bpe_vocab("llama-bpe", add_bos=True)),
    "qwen2": dict(arch="qwen2", heads=4, kv_heads=2, theta=1e6, tied=False),
    # head_dim 128 apart from hidden/heads = 16
    "qwen3": dict(arch="qwen3", heads=4, kv_heads=2, head_dim=128, theta=1e6),
    # seven layers: sliding and global ones, a window shorter than a prompt
    "gemma3": dict(arch="gemma3", heads=4, kv_heads=1, head_dim=256, layers=7, window=8,
                   theta=1e6),
}


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    out = {}
    for name, kw in ARCHS.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = gf.write_model(d / "model.gguf", **kw)
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_matches_transformers(arch_files, name):
    path = arch_files[name]
    ck = read_gguf(path)
    cfg, tensors, tok = reference(path)
    assert_config_equal(ck.config, cfg)
    assert ck.config["model_type"] == {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                                       "gemma3": "gemma3_text"}[ARCHS[name]["arch"]]
    assert set(ck.tensors) == set(tensors)
    for k, v in ck.tensors.items():
        assert v.dtype == torch.float32
        assert torch.equal(v, tensors[k].float()), k
    assert ("lm_head.weight" in ck.tensors) == (not ARCHS[name].get("tied", True))
    for text in gf.TEXTS:
        ids = tok(text).input_ids
        assert ck.tokenizer.encode(text) == ids, text
        assert ck.tokenizer.decode(ids) == tok.decode(ids)
    # the whole tokenizer, merges and added tokens included, serialises the same
    assert json.loads(ck.tokenizer_json()) == json.loads(tok.backend_tokenizer.to_str())


def test_llama_qk_are_unpermuted_and_gemma_norms_lose_their_offset(arch_files):
    ck = read_gguf(arch_files["llama-gqa"])
    for n, heads in (("q", 4), ("k", 2)):
        stored = raw(arch_files["llama-gqa"], f"blk.0.attn_{n}.weight")
        got = ck.tensors[f"model.layers.0.self_attn.{n}_proj.weight"]
        assert not torch.equal(got, stored)
        assert torch.equal(torch.from_numpy(gf.llama_permute(got.numpy(), heads)), stored)
    ck = read_gguf(arch_files["gemma3"])
    for g, hf in (("blk.2.ffn_norm.weight", "model.layers.2.pre_feedforward_layernorm.weight"),
                  ("blk.2.attn_k_norm.weight", "model.layers.2.self_attn.k_norm.weight"),
                  ("output_norm.weight", "model.norm.weight")):
        assert torch.equal(ck.tensors[hf], raw(arch_files["gemma3"], g) - 1.0)
    assert ck.config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"] + \
        ["sliding_attention"]
    assert ck.config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert ck.config["query_pre_attn_scalar"] == 256


def test_tokenizer_json_round_trips_with_special_tokens(arch_files, tmp_path):
    ck = read_gguf(arch_files["gemma3"])
    (tmp_path / "tokenizer.json").write_text(ck.tokenizer_json())
    tok = HFTokenizer(tmp_path / "tokenizer.json")
    for text in gf.TEXTS:
        assert tok.encode(text) == ck.tokenizer.encode(text)
    assert tok.encode("Hi")[0] == ck.config["bos_token_id"] == 2  # tokenizer.json dirs add BOS now


# ----------------------------------------------------------------------------- refusals
def _variant(tmp_path, arch="llama", extra=None, drop=(), tensors=None, vocab=None, **kw):
    meta = gf.model_meta(arch, vocab=vocab or (gf.gemma_vocab() if arch == "gemma3"
                                               else gf.spm_vocab()), **kw)
    meta.update(extra or {})
    for k in drop:
        meta.pop(k)
    ts = gf.model_tensors(arch, meta)
    ts.update(tensors or {})
    return gf.write_gguf(tmp_path / "v.gguf", arch, meta, ts)


@pytest.mark.parametrize("key,value", [
    ("llama.logit_scale", 0.5),                 # a real llama.cpp key that scales the logits
    ("llama.attention.wobble", 3.0),            # invented
    ("llama.expert_count", 8),                  # mixture of experts
    ("llama.rope.scaling.type", "yarn"),
    ("sbsnn.magic", 1),                         # outside every known namespace
    ("tokenizer.ggml.add_sep_token", True),
    ("tokenizer.ggml.remove_extra_whitespaces", True),
])
def test_unknown_or_unsupported_metadata_is_refused_by_name(tmp_path, key, value):
    path = _variant(tmp_path, extra={key: value})
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    msg = str(e.value)
    assert str(path) in msg and key in msg and repr(value) in msg


@pytest.mark.parametrize("key,value", [
    ("general.author", "someone"), ("general.license", "apache-2.0"),
    ("tokenizer.chat_template", "{{ messages }}"), ("llama.rope.scaling.type", "none"),
    ("tokenizer.ggml.eot_token_id", 2), ("llama.attention.key_length", 16),
])
def test_harmless_metadata_loads(tmp_path, key, value):
    ck = read_gguf(_variant(tmp_path, extra={key: value}))
    assert ck.config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}


def test_linear_rope_scaling_is_used(tmp_path):
    ck = read_gguf(_variant(tmp_path, extra={"llama.rope.scaling.type": "linear",
                                             "llama.rope.scaling.factor": 4.0}))
    assert ck.config["rope_parameters"] == {"rope_type": "linear", "rope_theta": 10000.0,
                                            "factor": 4.0}


def test_gemma3_linear_rope_scaling_applies_to_global_layers_only(tmp_path):
    ck = read_gguf(_variant(tmp_path, "gemma3", heads=4, kv_heads=1, head_dim=256, layers=6,
                            window=8, theta=1e6, extra={"gemma3.rope.scaling.type": "linear",
                                                        "gemma3.rope.scaling.factor": 8.0}))
    assert ck.config["rope_parameters"] == {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}


def _llama3_factors(head_dim, theta, factor=8.0, low=1.0, high=4.0, orig=8192):
    """llama.cpp's convert_hf_to_gguf rope_freqs for a llama3 rope_scaling."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for f in freqs.tolist():
        w = 2 * math.pi / f
        if w < orig / high:
            out.append(1.0)
        elif w > orig / low:
            out.append(factor)
        else:
            s = (orig / w - low) / (high - low)
            out.append(1 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32), freqs


def test_llama3_frequency_factors_become_transformers_llama3_rope(tmp_path):
    _transformers()
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    factors, freqs = _llama3_factors(64, 500000.0)
    ck = read_gguf(_variant(tmp_path, hidden=256, heads=4, kv_heads=2, layers=1, ffn=256,
                            theta=500000.0,
                            tensors={"rope_freqs.weight": (factors[None, :], Q.F32)}))
    p = ck.config["rope_parameters"]
    assert p == {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_parameters=p,
                      max_position_embeddings=256)
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    # llama.cpp's angle is pos * freq / factor: transformers' inv_freq must be the same
    torch.testing.assert_close(inv, freqs / torch.from_numpy(factors), rtol=1e-6, atol=0)
    assert "rope_freqs.weight" not in ck.origin.values()


def test_frequency_factors_no_llama3_rope_explains_are_refused(tmp_path):
    factors, _ = _llama3_factors(64, 500000.0)
    factors[20] = 3.3  # not on the llama3 curve
    path = _variant(tmp_path, hidden=256, heads=4, kv_heads=2, layers=1, ffn=256,
                    theta=500000.0, tensors={"rope_freqs.weight": (factors[None, :], Q.F32)})
    with pytest.raises(CheckpointError, match="rope_freqs.weight"):
        read_gguf(path)


@pytest.mark.parametrize("case", ["arch", "tokenizer", "mistral", "gemma-window",
                                  "qwen3-head-dim", "unexpected-tensor", "missing-tensor",
                                  "shape"])
def test_unsupported_files_are_refused_by_name(tmp_path, case):
    if case == "arch":
        meta = gf.model_meta("phi3", vocab=gf.spm_vocab())
        path = gf.write_gguf(tmp_path / "v.gguf", "phi3", meta, {})
        match = "general.architecture='phi3'"
    elif case == "tokenizer":
        path = _variant(tmp_path, extra={"tokenizer.ggml.model": "bert"})
        match = "tokenizer.ggml.model='bert'"
    elif case == "mistral":
        path = _variant(tmp_path, extra={"general.name": "mistral"})
        match = "general.name='mistral'"
    elif case == "gemma-window":
        path = _variant(tmp_path, "gemma3", heads=4, kv_heads=1, head_dim=256, layers=6)
        match = "gemma3.attention.sliding_window"
    elif case == "qwen3-head-dim":
        path = _variant(tmp_path, "qwen3", vocab=gf.bpe_vocab(), theta=1e6,
                        drop=("qwen3.attention.key_length", "qwen3.attention.value_length"))
        match = "qwen3.attention.key_length"
    elif case == "unexpected-tensor":
        path = _variant(tmp_path, tensors={"blk.0.attn_q.bias": (np.zeros((64, 1), np.float32), Q.F32)})
        match = r"blk\.0\.attn_q\.bias"
    elif case == "missing-tensor":
        meta = gf.model_meta("llama", vocab=gf.spm_vocab())
        ts = gf.model_tensors("llama", meta)
        del ts["blk.1.ffn_down.weight"]
        path = gf.write_gguf(tmp_path / "v.gguf", "llama", meta, ts)
        match = r"model\.layers\.1\.mlp\.down_proj\.weight"
    else:  # metadata that disagrees with the tensors
        meta = gf.model_meta("llama", vocab=gf.spm_vocab())
        ts = gf.model_tensors("llama", meta)
        meta["llama.feed_forward_length"] = 128
        path = gf.write_gguf(tmp_path / "v.gguf", "llama", meta, ts)
        match = r"blk\.0\.ffn_gate\.weight has shape \(96, 64\), expected \(128, 64\)"
    with pytest.raises(CheckpointError, match=match) as e:
        read_gguf(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_file_is_one_clear_error(tmp_path, arch_files, keep):
    data = arch_files["llama-gqa"].read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError) as e:
        read_gguf(path)
    msg = str(e.value)
    assert str(path) in msg and "truncated or corrupt" in msg and "\n" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_not_a_gguf_and_missing_file(tmp_path, arch_files):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(arch_files["llama-gqa"].read_bytes()[:64])
    assert is_gguf(arch_files["llama-gqa"]) and is_gguf(renamed)
    assert not is_gguf(fake) and not is_gguf(tmp_path / "none.gguf") and not is_gguf(tmp_path)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        read_gguf(fake)
    with pytest.raises(CheckpointError, match="file not found"):
        read_gguf(tmp_path / "none.gguf")


def test_missing_gguf_package_names_the_extra(monkeypatch, arch_files):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"pip install 'sbsnn\[gguf\]'"):
        read_gguf(arch_files["llama-gqa"])


def test_progress_bar(arch_files, capsys):
    read_gguf(arch_files["llama-gqa"], progress=True)
    assert "dequantizing model.gguf" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def real(real_gguf):
    return real_gguf, read_gguf(real_gguf)


PARAGRAPH = (
    "The history of natural language processing generally started in the 1950s, although "
    "work can be found from earlier periods. In 1950, Alan Turing published an article "
    "titled \"Computing Machinery and Intelligence\" which proposed what is now called the "
    "Turing test as a criterion of intelligence. The Georgetown experiment in 1954 involved "
    "fully automatic translation of more than sixty Russian sentences into English; the "
    "authors claimed that within three or five years, machine translation would be a solved "
    "problem.\n\nLittle further research in machine translation was conducted until the late "
    "1980s, when the first statistical machine translation systems were developed.")


@pytest.mark.real
def test_real_gemma_tensors_and_config_equal_transformers(real):
    _transformers()
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    path, ck = real
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    assert_config_equal(ck.config, cfg.to_dict())
    assert ck.config["layer_types"].count("full_attention") == 3
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    ref = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    assert set(ck.tensors) == set(ref)
    for k, v in ck.tensors.items():
        assert torch.equal(v, ref[k].float()), k


@pytest.mark.real
def test_real_gemma_tokenizer_equals_transformers(real):
    _transformers()
    from transformers import AutoTokenizer
    path, ck = real
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in [PARAGRAPH] + gf.TEXTS:
        ids = tok(text).input_ids
        assert ck.tokenizer.encode(text) == ids
        assert ck.tokenizer.decode(ids) == tok.decode(ids)
    assert ck.tokenizer.encode(PARAGRAPH)[0] == 2 and len(ck.tokenizer.encode(PARAGRAPH)) > 100
    assert json.loads(ck.tokenizer_json()) == json.loads(tok.backend_tokenizer.to_str())
