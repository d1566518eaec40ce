"""Hostile configs (issue 20, slice "configs"): config.json files a user may hold, read as
the reference reads them.

The reference is ``transformers`` (``AutoConfig`` + ``AutoModelForCausalLM``): sbsnn
loads what it loads, with the same logits, and refuses by name (file and key) what it
refuses or would compute differently. Random tiny models are built with transformers'
own classes, saved with ``save_pretrained``, then their config.json is edited.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from sbsnn.errors import SbsnnError
from sbsnn.models import load_model

transformers = pytest.importorskip("transformers")
from test_families import hf_model, rel_err  # noqa: E402  (tests/: the same reference models)

pytestmark = pytest.mark.usefixtures("one_thread")
logging.getLogger("transformers").setLevel(logging.ERROR)

V = 97
COMMON = dict(vocab_size=V, hidden_size=48, intermediate_size=72, num_hidden_layers=4,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)
FAMILIES = {
    "llama": ("LlamaConfig", dict(COMMON, attention_bias=True)),
    "mistral": ("MistralConfig", dict(COMMON, head_dim=12, sliding_window=5)),
    "qwen2": ("Qwen2Config", dict(COMMON, use_sliding_window=True, sliding_window=5,
                                  max_window_layers=2)),
    "qwen3": ("Qwen3Config", dict(COMMON, head_dim=16)),
    "gemma3_text": ("Gemma3TextConfig", dict(COMMON, head_dim=16, sliding_window=5,
                                             final_logit_softcapping=20.0)),
}
# Keys sbsnn reads that save_pretrained no longer writes (the older layout).
OLDER_KEYS = {
    "llama": ("rope_scaling", "rope_theta", "partial_rotary_factor",
              "original_max_position_embeddings"),
    "mistral": ("rope_scaling", "rope_theta", "partial_rotary_factor",
                "original_max_position_embeddings", "layer_types"),
    "qwen2": ("rope_scaling", "rope_theta", "partial_rotary_factor",
              "original_max_position_embeddings"),
    "qwen3": ("rope_scaling", "rope_theta", "partial_rotary_factor",
              "original_max_position_embeddings"),
    "gemma3_text": ("rope_scaling", "rope_theta", "partial_rotary_factor",
                    "original_max_position_embeddings", "rope_local_base_freq",
                    "sliding_window_pattern", "_sliding_window_pattern", "hidden_act"),
}


IDS = torch.randint(0, V, (1, 12), generator=torch.Generator().manual_seed(1))


def reference(d: Path):
    """transformers' logits for the checkpoint in ``d``, or the exception it raises."""
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        with torch.no_grad():
            return model(IDS).logits
    except Exception as e:  # noqa: BLE001 - any refusal of the reference counts
        return e


def ours(d: Path):
    try:
        model = load_model(d)
    except SbsnnError as e:
        return e
    with torch.no_grad():
        return model(IDS)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    out = {}
    for fam, (cls, kw) in FAMILIES.items():
        d = tmp_path_factory.mktemp(fam)
        hf_model(cls, **kw).save_pretrained(d)
        out[fam] = d
    return out


_DROP = object()   # a key to remove


def edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` in ``dst`` whose config.json has ``changes``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copyfile(f, dst / f.name)
    c = json.loads((src / "config.json").read_text())
    c.update(changes)
    c = {k: v for k, v in c.items() if v is not _DROP}
    (dst / "config.json").write_text(json.dumps(c))
    return dst


# ----------------------------------------------------------------------------- explicit null
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_explicit_null_is_read_as_transformers_reads_it(family, family_dirs, tmp_path):
    """Every key of the family's config (and every older key sbsnn reads), set to null:
    sbsnn refuses it by name exactly when transformers refuses it, and otherwise computes
    transformers' logits (null is not quietly read as "absent" where the reference reads
    it otherwise)."""
    src = family_dirs[family]
    keys = sorted(set(json.loads((src / "config.json").read_text())) | set(OLDER_KEYS[family]))
    wrong = []
    for key in keys:
        d = edited(src, tmp_path / key, **{key: None})
        want, got = reference(d), ours(d)
        if isinstance(want, Exception):
            if not isinstance(got, Exception):
                wrong.append(f"{key}: loaded, transformers refuses ({type(want).__name__}: "
                             f"{str(want)[:80]})")
            elif f"'{key}'" not in str(got) or str(d / "config.json") not in str(got):
                wrong.append(f"{key}: refused without naming the file and key: {got}")
        elif isinstance(got, Exception):
            wrong.append(f"{key}: refused, transformers loads it: {got}")
        elif got.shape != want.shape or rel_err(got, want) > 1e-5:
            wrong.append(f"{key}: logits differ from transformers'")
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------------- activations
def test_every_activation_equals_transformers_act2fn():
    """Each hidden_act sbsnn runs is transformers' ACT2FN entry to float rounding; every
    ACT2FN entry is either run or refused by name."""
    from transformers.activations import ACT2FN

    from sbsnn.models.layers import ACTIVATIONS, UNSUPPORTED_ACTIVATIONS

    assert set(ACTIVATIONS) | set(UNSUPPORTED_ACTIVATIONS) == set(ACT2FN)
    x = torch.linspace(-12, 12, 4001, dtype=torch.float32)
    for name, fn in ACTIVATIONS.items():
        want = ACT2FN[name](x)
        assert torch.allclose(fn(x), want, rtol=1e-6, atol=1e-6), name


@pytest.mark.parametrize("act", ["relu", "gelu_new", "gelu_fast", "quick_gelu", "relu2", "mish",
                                 "tanh", "sigmoid", "gelu", "leaky_relu"])
def test_family_with_another_activation_loads_with_transformers_logits(act, tmp_path):
    cls, kw = ("Gemma3TextConfig", dict(FAMILIES["gemma3_text"][1], hidden_activation=act)) \
        if act in ("gelu", "leaky_relu") else ("LlamaConfig", dict(COMMON, hidden_act=act))
    hf_model(cls, **kw).save_pretrained(tmp_path)
    want, got = reference(tmp_path), ours(tmp_path)
    assert not isinstance(got, Exception), got
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("act,why", [("prelu", "learned slope"), ("xielu", "learned parameters"),
                                     ("swishy", "not an activation transformers implements"),
                                     (3, "not an activation transformers implements")])
def test_unknown_or_learned_activation_is_refused_by_name(act, why, family_dirs, tmp_path):
    d = edited(family_dirs["llama"], tmp_path, hidden_act=act)
    with pytest.raises(SbsnnError, match=rf"'hidden_act' = {act!r} is .*{why}") as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)


# ----------------------------------------------------------------------------- Ministral
MINISTRAL_TYPES = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]


@pytest.mark.parametrize("changes", [dict(layer_types=MINISTRAL_TYPES),
                                     dict(layer_types=None),
                                     dict(layer_types=["full_attention"] * 4),
                                     dict(layer_types=MINISTRAL_TYPES, sliding_window=3)])
def test_mistral_with_layer_types_runs_as_ministral(changes, family_dirs, tmp_path):
    """AutoConfig reads a mistral config holding layer_types as Ministral: the window
    applies to the sliding_attention layers only (null layer_types: derived)."""
    d = edited(family_dirs["mistral"], tmp_path, **changes)
    ref = transformers.AutoModelForCausalLM.from_pretrained(d)
    assert type(ref).__name__ == "MinistralForCausalLM"
    want, got = reference(d), ours(d)
    assert not isinstance(got, Exception), got
    assert rel_err(got, want) < 1e-5
    types = ref.config.layer_types
    kinds = [b.kind for b in load_model(d).model.layers]
    window = ref.config.sliding_window
    assert kinds == ["swa" if t == "sliding_attention" and window else "full" for t in types]


@pytest.mark.parametrize("changes,key", [
    (dict(layer_types=MINISTRAL_TYPES, head_dim=None), "head_dim"),
    (dict(layer_types=MINISTRAL_TYPES, sliding_window=None), "sliding_window"),
    (dict(layer_types=["full_attention"] * 4, sliding_window=None), "sliding_window"),
    (dict(layer_types=None, sliding_window=None), "sliding_window"),
    (dict(layer_types=["sliding_attention"] * 3), "layer_types"),
    (dict(layer_types=["local"] * 4), "layer_types")])
def test_ministral_layouts_transformers_refuses_are_refused_by_name(changes, key, family_dirs,
                                                                    tmp_path):
    for head_dim in ((None, _DROP) if changes.get("head_dim", 0) is None else (12,)):
        d = edited(family_dirs["mistral"], tmp_path / str(head_dim is None),
                   **{**changes, "head_dim": head_dim})  # a null head_dim, and a missing one
        assert isinstance(reference(d), Exception)
        with pytest.raises(SbsnnError, match=f"'{key}'") as e:
            load_model(d)
        assert str(d / "config.json") in str(e.value)


# ----------------------------------------------------------------------------- GGUF round trip
def test_directory_saved_from_a_gguf_loads_as_a_float_model(family_dirs, tmp_path):
    """transformers, loading a GGUF, keeps quantization_config {quant_method: gguf} in the
    config it saves beside float tensors; it loads that directory as a float model."""
    d = edited(family_dirs["qwen2"], tmp_path, quantization_config={"quant_method": "gguf"})
    want, got = reference(d), ours(d)
    assert not isinstance(want, Exception), want
    assert not isinstance(got, Exception), got
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("method", ["gptq", "awq", "bitsandbytes", "fp8", None])
def test_real_quantization_configs_stay_refused_by_name(method, family_dirs, tmp_path):
    q = {"quant_method": method, "bits": 4} if method else {"bits": 4}
    d = edited(family_dirs["llama"], tmp_path, quantization_config=q)
    with pytest.raises(SbsnnError, match=r"'quantization_config' = .*dequantize") as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)


# ----------------------------------------------------------------------------- the cause, by name
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("key,value,match", [
    ("num_attention_heads", _DROP, "'num_attention_heads' is missing"),
    ("hidden_size", _DROP, "'hidden_size' is missing"),
    ("vocab_size", _DROP, "'vocab_size' is missing"),
    ("intermediate_size", _DROP, "'intermediate_size' is missing"),
    ("num_hidden_layers", _DROP, "'num_hidden_layers' is missing"),
    ("num_attention_heads", 0, "'num_attention_heads' = 0 must be a positive integer"),
    ("hidden_size", -48, "'hidden_size' = -48 must be a positive integer"),
    ("num_key_value_heads", 4, "'num_key_value_heads' = 4 does not divide"),
    ("num_attention_heads", 5, "'num_attention_heads'|'hidden_size'|'num_key_value_heads'"),
])
def test_missing_or_inconsistent_sizes_are_refused_by_name_before_tensors(
        family, key, value, match, family_dirs, tmp_path):
    """The config's cause is named, not a tensor shape it leads to; the weights are not
    read (here they are not even a safetensors file)."""
    changes = {key: value}
    if family == "gemma3_text" and key == "num_hidden_layers":
        changes["layer_types"] = _DROP
    d = edited(family_dirs[family], tmp_path, **changes)
    (d / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(SbsnnError, match=match) as e:
        load_model(d)
    assert str(d / "config.json") in str(e.value)
    assert "model.safetensors" not in str(e.value)
