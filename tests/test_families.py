"""Every supported family loads as transformers runs it.

Random models are built with transformers' own classes (unusual sizes: GQA, head_dim
apart from hidden / heads, windows shorter than the sequence, mixed layer types, tied
and untied heads, biases, RoPE variants), saved with ``save_pretrained`` and loaded by
sbsnn; logits must agree to float32 rounding and greedy continuations must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sbsnn.models import load_model
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.rope import RopeSpec, apply_rope

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

V = 97
COMMON = dict(vocab_size=V, hidden_size=48, intermediate_size=72, num_hidden_layers=4,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
CASES = {
    "llama-llama3-bias-untied": ("LlamaConfig", dict(COMMON, head_dim=12, attention_bias=True,
                                                     mlp_bias=True, rope_parameters=LLAMA3)),
    "llama-yarn-tied": ("LlamaConfig", dict(COMMON, tie_word_embeddings=True, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 64})),
    "llama-linear-mha": ("LlamaConfig", dict(COMMON, num_key_value_heads=6, rope_parameters={
        "rope_type": "linear", "rope_theta": 100000.0, "factor": 2.0})),
    "llama-dynamic": ("LlamaConfig", dict(COMMON, max_position_embeddings=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
    "mistral-window": ("MistralConfig", dict(COMMON, head_dim=16, sliding_window=5)),
    "mistral-full": ("MistralConfig", dict(COMMON, sliding_window=None)),
    "qwen2-max-window-layers": ("Qwen2Config", dict(COMMON, use_sliding_window=True, sliding_window=6,
                                                    max_window_layers=2)),
    "qwen2-tied-full": ("Qwen2Config", dict(COMMON, tie_word_embeddings=True, num_key_value_heads=1)),
    "qwen3-layer-types": ("Qwen3Config", dict(COMMON, head_dim=20, attention_bias=True,
                                              use_sliding_window=True, sliding_window=7,
                                              layer_types=["full_attention", "sliding_attention",
                                                           "full_attention", "sliding_attention"])),
    "qwen3-tied": ("Qwen3Config", dict(COMMON, head_dim=8, tie_word_embeddings=True)),
    "gemma3": ("Gemma3TextConfig", dict(COMMON, head_dim=24, sliding_window=5,
                                        query_pre_attn_scalar=20,
                                        layer_types=["sliding_attention", "full_attention",
                                                     "sliding_attention", "full_attention"])),
    "gemma3-softcap-untied-yarn": ("Gemma3TextConfig", dict(
        COMMON, head_dim=16, sliding_window=3, final_logit_softcapping=5.0,
        tie_word_embeddings=False, rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
            "full_attention": {"rope_type": "yarn", "rope_theta": 100000.0, "factor": 2.0,
                               "original_max_position_embeddings": 128}})),
}


def hf_model(config_cls: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # norms and biases away from their init, so that they matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    cls, kw = CASES[request.param]
    model = hf_model(cls, **kw)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d)
    return request.param, model, d


def test_logits_equal_transformers(saved):
    name, ref, d = saved
    ours = load_model(d)
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(ids).logits, ours(ids)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5, name
    # The tied / untied head and the layer kinds are the ones transformers built.
    assert (ours.lm_head is None) == ref.config.tie_word_embeddings
    types = getattr(ref.config, "layer_types", None)
    if types is not None and getattr(ref.config, "sliding_window", None) is not None:
        assert [b.kind for b in ours.model.layers] == [
            "swa" if t == "sliding_attention" else "full" for t in types]


def test_decoding_in_blocks_equals_one_pass(saved):
    name, ref, d = saved
    if name == "llama-dynamic":
        pytest.skip("dynamic RoPE depends on the length seen so far, as in transformers")
    ours = load_model(d)
    ids = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(2))
    state = ours.new_state()
    with torch.no_grad():
        whole = ours(ids)
        parts = torch.cat([ours(ids[:, s:s + 7], state) for s in range(0, 30, 7)], 1)
    assert rel_err(parts, whole) < 1e-5


def test_greedy_tokens_equal_transformers(saved):
    name, ref, d = saved
    ours = load_model(d)
    prompt = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(3))
    ref.generation_config.eos_token_id = None  # 32 tokens whatever they are, on both sides
    want = ref.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    assert len(want) == 32
    got = list(ours.stream_ids(prompt[0].tolist(), 32, temperature=0))
    assert got == want, name


def test_window_and_full_layers_keep_the_decode_state_bounded(saved):
    name, _, d = saved
    ours = load_model(d)
    state = ours.new_state()
    with torch.no_grad():
        ours(torch.zeros(1, 12, dtype=torch.long), state)
        first = [c["k"].shape[2] for c, b in zip(state.layers, ours.model.layers) if b.kind == "swa"]
        ours(torch.zeros(1, 20, dtype=torch.long), state)
        later = [c["k"].shape[2] for c, b in zip(state.layers, ours.model.layers) if b.kind == "swa"]
    assert first == later  # window rings never grow


# ----------------------------------------------------------------------------- RoPE
def _hf_config(rope_parameters, head_dim=16, max_pos=64, layer_type=None):
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=head_dim,
                                   max_position_embeddings=max_pos,
                                   rope_parameters=dict(rope_parameters))
    return cfg


ROPES = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "default-partial": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 1.3},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
             "original_max_position_embeddings": 16},
    "yarn-attention-factor": {"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
                              "original_max_position_embeddings": 32, "attention_factor": 0.7,
                              "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                    "original_max_position_embeddings": 32, "mscale": 0.8, "mscale_all_dim": 0.5},
    "llama3": LLAMA3,
    "llama3-partial": {**LLAMA3, "partial_rotary_factor": 0.75},
}


@pytest.mark.parametrize("case", sorted(ROPES))
@pytest.mark.parametrize("seq_len", [None, 40, 200])
def test_rope_frequencies_equal_transformers(case, seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = ROPES[case]
    cfg = _hf_config(params)
    rtype = params["rope_type"]
    if rtype == "default":  # Phi-3's default reads partial_rotary_factor (Llama's ignores it)
        fn = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding.compute_default_rope_parameters
    else:
        fn = ROPE_INIT_FUNCTIONS[rtype]
    spec = RopeSpec.from_parameters(params, head_dim=16, max_position_embeddings=64)
    if rtype == "dynamic" and seq_len is not None and seq_len > 64:
        # transformers' forward passes max(position) + 1 as a 0-d tensor
        want, want_scale = fn(cfg, seq_len=torch.tensor(seq_len))
    else:  # what transformers holds below max_position_embeddings
        want, want_scale = fn(cfg)
    got, scale = spec.inv_freq(seq_len)
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(got, want), case
    assert scale == pytest.approx(want_scale, rel=0, abs=0)
    assert spec.rotary_dim == int(16 * params.get("partial_rotary_factor", 1.0))


def test_partial_rotary_applies_like_transformers():
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    spec = RopeSpec.from_parameters(ROPES["default-partial"], head_dim=16, max_position_embeddings=64)
    pos = torch.arange(9)
    cos, sin = spec.cos_sin(pos, torch.float32)
    q, k = torch.randn(2, 3, 9, 16), torch.randn(2, 1, 9, 16)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.equal(apply_rope(q, cos, sin), want_q)
    assert torch.equal(apply_rope(k, cos, sin), want_k)
    assert torch.equal(apply_rope(q, cos, sin)[..., 8:], q[..., 8:])  # the rest passes through


@pytest.mark.parametrize("params,match", [
    ({"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0], "long_factor": [1.0],
      "original_max_position_embeddings": 8}, "rope_type 'longrope' is not supported"),
    ({"rope_type": "linear", "rope_theta": 1e4}, r"needs \['factor'\]"),
    ({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8, "smoothness": 2.0},
     "'smoothness' = 2.0 is not understood"),
])
def test_rope_refuses_what_it_does_not_compute(params, match):
    with pytest.raises(CheckpointError, match=match):
        RopeSpec.from_parameters(params, head_dim=16, max_position_embeddings=64)


# ----------------------------------------------------------------------------- config keys
def _llama_dir(tmp_path, **config_changes):
    model = hf_model("LlamaConfig", **COMMON)
    model.save_pretrained(tmp_path)
    p = tmp_path / "config.json"
    c = json.loads(p.read_text())
    c.update(config_changes)
    for k, v in list(c.items()):
        if v is _DROP:
            del c[k]
    p.write_text(json.dumps(c))
    return model, tmp_path


_DROP = object()


def test_unknown_key_that_changes_the_math_is_refused_by_name(tmp_path):
    _, d = _llama_dir(tmp_path, attention_temperature=0.5)
    with pytest.raises(CheckpointError, match=r"'attention_temperature' = 0.5 is not understood") as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)


@pytest.mark.parametrize("key,value", [("quantization_config", {"quant_method": "gptq", "bits": 4}),
                                       ("is_encoder_decoder", True),
                                       ("rope_scaling", {"rope_type": "longrope"})])
def test_keys_harmless_only_at_one_value_are_refused_otherwise(tmp_path, key, value):
    _, d = _llama_dir(tmp_path, **{key: value})
    with pytest.raises(CheckpointError, match=key if key != "rope_scaling" else "longrope"):
        load_model(d)


@pytest.mark.parametrize("key,value", [("num_hidden_layers", 2 ** 60), ("vocab_size", 2 ** 40),
                                       ("hidden_size", 2 ** 31), ("num_attention_heads", 10 ** 9)])
def test_absurd_sizes_are_refused_with_the_bound(tmp_path, key, value):
    """A damaged config's sizes are refused by name before anything is built (2**60
    layers used to hang building the model; a 2**40 vocabulary would allocate)."""
    from sbsnn.models.config import SIZE_BOUNDS

    _, d = _llama_dir(tmp_path, **{key: value})
    with pytest.raises(CheckpointError, match=rf"'{key}' = {value} is refused: the bound is "
                                              rf"{SIZE_BOUNDS[key][0]:,}") as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)


def test_absurd_sizes_in_sbsnn_own_config_are_refused():
    from sbsnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"num_hidden_layers = 20,000 is refused: the bound is 10,000"):
        HybridConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=20_000,
                     num_attention_heads=2, num_key_value_heads=2, attn_layers=[],
                     sliding_window=None, norm_eps=1e-6, attention_bias=False)


def test_harmless_keys_load(tmp_path):
    ref, d = _llama_dir(tmp_path, use_cache=False, temperature=0.7, pretraining_tp=1,
                        architectures=["LlamaForCausalLM"], _name_or_path="somewhere")
    ids = torch.arange(20)[None] % V
    with torch.no_grad():
        assert rel_err(load_model(d)(ids), ref(ids).logits) < 1e-5


def test_current_rope_layout_is_read_not_defaulted(tmp_path):
    """The bug this issue started from: rope_parameters with no top-level rope_theta."""
    ref, d = _llama_dir(tmp_path, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                        rope_theta=_DROP)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    ours = load_model(d)
    assert ours.config.rope_for(0).rope_theta == 100000.0
    ids = torch.arange(30)[None] % V
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) < 1e-5


def test_conflicting_rope_theta_is_refused(tmp_path):
    _, d = _llama_dir(tmp_path, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                      rope_theta=10000.0)
    with pytest.raises(CheckpointError, match="'rope_theta' = 10000.0 disagrees"):
        load_model(d)


def test_partial_rotary_in_a_family_that_cannot_apply_it_is_refused(tmp_path):
    _, d = _llama_dir(tmp_path, rope_parameters={"rope_theta": 1e4, "rope_type": "default",
                                                 "partial_rotary_factor": 0.5})
    with pytest.raises(CheckpointError, match="partial_rotary_factor = 0.5"):
        load_model(d)


OLD_LAYOUTS = {
    # transformers 4.x wrote these; transformers 5 still reads them.
    "llama3-rope_scaling": ("LlamaConfig", dict(COMMON, rope_parameters=LLAMA3),
                            {"rope_parameters": _DROP, "rope_theta": 50000.0,
                             "rope_scaling": {k: v for k, v in LLAMA3.items() if k != "rope_theta"}}),
    "qwen2-use_sliding_window": ("Qwen2Config", dict(COMMON, use_sliding_window=True, sliding_window=5,
                                                     max_window_layers=1),
                                 {"layer_types": _DROP, "rope_parameters": _DROP,
                                  "rope_theta": 10000.0}),
    "gemma3-local-base": ("Gemma3TextConfig", dict(COMMON, head_dim=16, sliding_window=4),
                          {"layer_types": _DROP, "rope_parameters": _DROP, "rope_theta": 1e6,
                           "rope_local_base_freq": 1e4, "sliding_window_pattern": 3,
                           "_sliding_window_pattern": 3}),
}


@pytest.mark.parametrize("case", sorted(OLD_LAYOUTS))
def test_older_config_layout_reads_as_transformers_reads_it(tmp_path, case):
    cls, kw, changes = OLD_LAYOUTS[case]
    hf_model(cls, **kw).save_pretrained(tmp_path)
    p = tmp_path / "config.json"
    c = json.loads(p.read_text())
    c.update(changes)
    c = {k: v for k, v in c.items() if v is not _DROP}
    p.write_text(json.dumps(c))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_model(tmp_path)
    ids = torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) < 1e-5
    if case.startswith("gemma3"):  # the pattern came from sliding_window_pattern (3)
        assert [b.kind for b in ours.model.layers] == ["swa", "swa", "full", "swa"]


def test_tied_config_with_a_different_stored_head_uses_the_stored_head(tmp_path):
    """transformers ties only equal tensors; a stored lm_head that differs wins."""
    ref, d = _llama_dir(tmp_path, tie_word_embeddings=True)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    ours = load_model(d)
    assert ours.lm_head is not None
    ids = torch.arange(16)[None] % V
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) < 1e-5


def test_unsupported_model_types_are_refused_by_name(tmp_path):
    for mt, hint in (("gemma2", "Gemma 2 is not supported"), ("mamba", "sbsnn reads")):
        with pytest.raises(CheckpointError, match=f"model_type '{mt}'.*{hint}"):
            HybridConfig.from_dict({"model_type": mt})


def test_hf_config_round_trips_through_save(tmp_path):
    _, d = _llama_dir(tmp_path)
    from sbsnn.models import save_pretrained

    model = load_model(d)
    save_pretrained(model, tmp_path / "again")
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    original = json.loads((d / "config.json").read_text())
    assert again == original
    ids = torch.arange(12)[None] % V
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "again")(ids), model(ids))


# ----------------------------------------------------------------------------- package
def test_submodules_on_attribute_access_in_a_fresh_interpreter():
    code = ("import sys, sbsnn; assert 'sbsnn.analysis' not in sys.modules; "
            "f = sbsnn.analysis.fidelity; n = sbsnn.neurons.adaptive_threshold; "
            "s = sbsnn.sim.simulate; c = sbsnn.converters.convert; m = sbsnn.models.load_model; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
