"""Hostile configs, second pass: sbsnn reads a config.json as the reference does.

The reference is what a user runs: ``AutoConfig`` and ``AutoModelForCausalLM`` of the
pinned ``transformers``.

- an explicit ``null`` is refused exactly where transformers refuses it, and where it
  accepts one sbsnn derives the same value (it used to read every null as "absent");
- every parameter-free activation of transformers' ``ACT2FN`` runs, to the bit; one
  with learned parameters is refused by name;
- a ``mistral`` config with ``layer_types`` (the Ministral layout) runs as
  ``AutoModelForCausalLM`` runs it;
- the directory transformers saves after loading a GGUF (``quantization_config`` with
  ``quant_method: gguf``, float tensors) loads as the float model it is; other
  quantizations are still refused;
- a size left out of config.json is named as the cause of the shape mismatch it makes.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import sbsnn
from sbsnn.errors import CheckpointError, ConfigError
from sbsnn.models import HybridConfig

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

SMALL = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128)
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]
NULL_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
             "rms_norm_eps", "initializer_range", "tie_word_embeddings", "sliding_window",
             "query_pre_attn_scalar", "use_sliding_window", "max_window_layers", "mlp_bias",
             "hidden_activation"]


def _reference_accepts(model_type: str, d: dict) -> tuple[bool, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            c = AutoConfig.for_model(model_type, **{k: v for k, v in d.items() if k != "model_type"})
            with torch.no_grad():         # built and run: some nulls fail only in forward
                AutoModelForCausalLM.from_config(c)(torch.arange(8)[None])
        except Exception:  # noqa: BLE001 - any refusal by the reference
            return False, None
    return True, c


@pytest.mark.parametrize("model_type", FAMILIES)
def test_an_explicit_null_is_read_as_transformers_reads_it(model_type):
    base = AutoConfig.for_model(model_type, **SMALL).to_dict()
    HybridConfig.from_dict(json.loads(json.dumps(base)))          # the file itself reads
    checked = 0
    for key in NULL_KEYS:
        if key not in base:
            continue
        d = json.loads(json.dumps(base))
        d[key] = None
        ok, ref = _reference_accepts(model_type, d)
        if not ok:
            with pytest.raises(ConfigError, match=repr(key)):
                HybridConfig.from_dict(d)
        else:
            cfg = HybridConfig.from_dict(d)
            if key in ("num_key_value_heads", "head_dim"):
                assert getattr(cfg, key) == getattr(ref, key), key
        checked += 1
    assert checked >= 10


def test_rms_norm_eps_null_no_longer_runs_with_a_guessed_eps():
    d = AutoConfig.for_model("llama", **SMALL).to_dict()
    d["rms_norm_eps"] = None
    with pytest.raises(ConfigError, match="'rms_norm_eps' = None is null"):
        HybridConfig.from_dict(d)


def _pair(tmp_path, model_type: str, **kw):
    torch.manual_seed(0)
    c = AutoConfig.for_model(model_type, **{**SMALL, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = AutoModelForCausalLM.from_config(c).eval()
    ref.save_pretrained(tmp_path / model_type)
    return ref, tmp_path / model_type


def _same_logits(ref, path, n: int = 40):
    ids = (torch.arange(n) * 7 % SMALL["vocab_size"])[None]
    with torch.no_grad():
        want = ref(ids).logits[0]
        got = sbsnn.load_model(path)(ids)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("act", ["relu", "gelu_new", "quick_gelu", "relu2", "gelu_fast", "mish"])
def test_activations_transformers_implements_run_as_it_runs_them(tmp_path, act):
    ref, path = _pair(tmp_path, "llama", hidden_act=act)
    _same_logits(ref, path)


def test_an_activation_with_learned_parameters_is_refused_by_name():
    d = AutoConfig.for_model("llama", **SMALL).to_dict()
    d["hidden_act"] = "prelu"
    with pytest.raises(ConfigError, match="'hidden_act' = 'prelu'"):
        HybridConfig.from_dict(d)


def test_a_mistral_config_with_layer_types_runs_as_automodel_runs_it(tmp_path):
    ref, path = _pair(tmp_path, "mistral", num_hidden_layers=4, sliding_window=6,
                      layer_types=["sliding_attention", "full_attention"] * 2)
    assert type(ref).__name__ == "MistralForCausalLM"
    _same_logits(ref, path, n=30)            # longer than the window: the layout matters
    d = json.loads((path / "config.json").read_text())
    d["layer_types"] = ["sliding_attention"]                       # not one per layer
    with pytest.raises(ConfigError, match="'layer_types'"):
        HybridConfig.from_dict(d)


def test_a_directory_transformers_saved_from_a_gguf_loads_as_float(tmp_path):
    ref, path = _pair(tmp_path, "llama")
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf"}
    (path / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = AutoModelForCausalLM.from_pretrained(path).eval()     # the reference loads it
    _same_logits(again, path)
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="quantization_config"):
        sbsnn.load_model(path)


def test_a_size_left_out_is_named_as_the_cause(tmp_path):
    _, path = _pair(tmp_path, "llama")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["num_attention_heads"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"leaves out num_attention_heads \(default 32\)"):
        sbsnn.load_model(path)
