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
                "original_max_position_embeddings"),
    "qwen2": ("rope_scaling", "rope_theta", "partial_rotary_factor",
              "original_max_position_embeddings"),
    "qwen3": ("rope_scaling", "rope_theta", "partial_rotary_factor",
              "original_max_position_embeddings"),
    "gemma3_text": ("rope_scaling", "rope_theta", "partial_rotary_factor",
                    "original_max_position_embeddings", "rope_local_base_freq",
                    "sliding_window_pattern", "_sliding_window_pattern", "hidden_act"),
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


def edited(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` in ``dst`` whose config.json has ``changes``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json":
            shutil.copyfile(f, dst / f.name)
    c = json.loads((src / "config.json").read_text())
    c.update(changes)
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
