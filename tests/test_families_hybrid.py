"""The linear-mixer hybrid families load as transformers runs them.

Random models built with transformers' own classes at unusual sizes (head widths apart
from hidden / heads, several value heads per key head, layer patterns that start with
each kind, tied and untied heads, vision-language wrappers), saved with
``save_pretrained`` and loaded by sbsnn: float32 logits over more tokens than one chunk
within 1e-5 relative, 32 greedy tokens equal when decoding token by token, and the
linear layers' decoding state constant in size.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from sbsnn.models import load_model
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.layers import MoE

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

V = 101
SEQ = 80        # more than one chunk of every chunked form (GDN: 64)

_QWEN3_5 = dict(vocab_size=V, hidden_size=48, intermediate_size=72, num_hidden_layers=4,
                num_attention_heads=3, num_key_value_heads=1, head_dim=24,
                linear_num_key_heads=2, linear_num_value_heads=6, linear_key_head_dim=12,
                linear_value_head_dim=10, linear_conv_kernel_dim=3, max_position_embeddings=512)
_LINEAR_FIRST = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
_FULL_FIRST = ["full_attention", "linear_attention", "linear_attention", "full_attention"]


def _qwen3_5_vl(**text):
    return dict(text_config=dict(_QWEN3_5, **text),
                vision_config=dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2,
                                   out_hidden_size=48, patch_size=4, temporal_patch_size=2,
                                   spatial_merge_size=2, num_position_embeddings=16))


def _gemma3_vl(**text):
    return dict(text_config=dict(vocab_size=V, hidden_size=48, intermediate_size=72,
                                 num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, sliding_window=6,
                                 max_position_embeddings=512, **text),
                vision_config=dict(model_type="siglip_vision_model", hidden_size=16,
                                   intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, image_size=28, patch_size=14),
                mm_tokens_per_image=4, image_token_index=V - 1, boi_token_index=V - 3,
                eoi_token_index=V - 2)

# granitemoehybrid: head_dim 10 (hidden / heads is 12), Mamba width 2 * 48 = 4 heads of 24
# in 2 groups, chunks of 32 (the 80-token prompt spans three), muP scalars away from 1.
_GRANITE = dict(vocab_size=V, hidden_size=48, intermediate_size=20, shared_intermediate_size=28,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=10,
                mamba_n_heads=4, mamba_d_head=24, mamba_d_state=8, mamba_n_groups=2,
                mamba_d_conv=3, mamba_chunk_size=32, mamba_proj_bias=True,
                embedding_multiplier=3.0, residual_multiplier=0.4, logits_scaling=2.5,
                attention_multiplier=0.07, max_position_embeddings=512)
# falcon_h1: head_dim 10, Mamba width mamba_d_ssm 24 (not 2 * hidden), 2 groups, every
# muP multiplier away from 1.
_FALCON_H1 = dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=10, mamba_n_heads=4,
                  mamba_d_head=6, mamba_d_ssm=24, mamba_d_state=8, mamba_n_groups=2,
                  mamba_d_conv=4, mamba_chunk_size=32, ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 0.9],
                  ssm_in_multiplier=0.7, ssm_out_multiplier=0.6, attention_in_multiplier=1.3,
                  attention_out_multiplier=0.8, key_multiplier=0.5, mlp_multipliers=[1.4, 0.6],
                  embedding_multiplier=2.0, lm_head_multiplier=0.3, max_position_embeddings=512)

# bamba: Mamba width 2 * 48 = 4 heads of 24 in 2 groups, chunks of 32; attention with
# partial RoPE (BambaConfig's fixed 0.5, or rope_parameters' own factor).
_BAMBA = dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_state=8,
              mamba_n_groups=2, mamba_chunk_size=32, max_position_embeddings=512)
# nemotron_h: head_dim 10 (hidden / heads is 12), Mamba width 4 heads of 20 = 80 (not
# expand * hidden = 96) in 2 groups, chunks of 32, 4 gateless relu2 experts in 2 groups
# (every group kept), the shared MLP wider than the experts.
_NEMOTRON_H = dict(vocab_size=V, hidden_size=48, intermediate_size=40, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=10, mamba_num_heads=4, mamba_head_dim=20,
                   ssm_state_size=8, n_groups=2, chunk_size=32, n_routed_experts=4,
                   num_experts_per_tok=2, moe_intermediate_size=12,
                   moe_shared_expert_intermediate_size=16, n_group=2, topk_group=2,
                   max_position_embeddings=512)

# LFM2: head_dim 20 apart from hidden / heads = 12, two query heads per key/value head;
# the MLP width derived (auto-adjust: int(int(2 * 100 / 3) * 1.3) = 85, rounded up to 96).
_LFM2 = dict(vocab_size=V, hidden_size=48, intermediate_size=100, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=20, block_multiple_of=16,
             block_ffn_dim_multiplier=1.3, max_position_embeddings=512)
_LFM2_MOE = dict(vocab_size=V, hidden_size=48, intermediate_size=40, moe_intermediate_size=24,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=20,
                 num_experts=6, num_experts_per_tok=2, max_position_embeddings=512)


# Qwen3-Next: three value heads per key head, head_dim apart from hidden / heads, experts
# narrower than the dense MLP and the shared expert wider.
_QWEN3_NEXT = dict(_QWEN3_5, num_experts=5, num_experts_per_tok=2, moe_intermediate_size=20,
                   shared_expert_intermediate_size=28)


def _qwen3_5_moe(**text):
    kw = {k: v for k, v in _QWEN3_NEXT.items() if k != "intermediate_size"}
    return dict(kw, **text)


# name -> (config class, model class, config kwargs)
CASES = {
    "qwen3_5-linear-first-untied": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM",
                                    dict(_QWEN3_5, layer_types=_LINEAR_FIRST)),
    "qwen3_5-full-first-tied-rope": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(
        _QWEN3_5, layer_types=_FULL_FIRST, tie_word_embeddings=True, hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0,
                         "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 2],
                         "mrope_interleaved": True})),
    "qwen3_5-vl": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration",
                   _qwen3_5_vl(full_attention_interval=2)),
    "gemma3-vl": ("Gemma3Config", "Gemma3ForConditionalGeneration", _gemma3_vl()),
    # granitemoehybrid
    "granite-moe-mamba-first-nope-untied": (
        "GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
        dict(_GRANITE, num_local_experts=3, num_experts_per_tok=2,
             layer_types=["mamba", "attention", "mamba", "attention"])),
    "granite-dense-attention-first-rope-tied": (
        "GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
        dict(_GRANITE, num_local_experts=0, position_embedding_type="rope", hidden_act="gelu",
             tie_word_embeddings=True, attention_bias=True, mamba_conv_bias=False,
             layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"],
             rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    # falcon_h1
    "falcon_h1-gated-norm-untied": (
        "FalconH1Config", "FalconH1ForCausalLM",
        dict(_FALCON_H1, mamba_rms_norm=True, mamba_norm_before_gate=False, projectors_bias=True,
             rope_parameters={"rope_type": "default", "rope_theta": 700.0})),
    "falcon_h1-no-norm-tied-biases": (
        "FalconH1Config", "FalconH1ForCausalLM",
        dict(_FALCON_H1, mamba_rms_norm=False, mamba_d_ssm=None, mamba_d_head=24,
             tie_word_embeddings=True, attention_bias=True, mlp_bias=True, mamba_proj_bias=True)),
    # lfm2
    "lfm2-conv-first-untied-bias": ("Lfm2Config", "Lfm2ForCausalLM", dict(
        _LFM2, layer_types=["conv", "full_attention", "conv", "conv"], conv_bias=True,
        tie_word_embeddings=False)),
    "lfm2-attn-first-tied-idxs": ("Lfm2Config", "Lfm2ForCausalLM", dict(
        _LFM2, full_attn_idxs=[0, 3], block_auto_adjust_ff_dim=False, conv_L_cache=4,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0})),
    "lfm2_moe-attn-first-untied-bias": ("Lfm2MoeConfig", "Lfm2MoeForCausalLM", dict(
        _LFM2_MOE, layer_types=["full_attention", "conv", "conv", "full_attention"],
        num_dense_layers=1, routed_scaling_factor=1.7, tie_word_embeddings=False)),
    "lfm2_moe-conv-first-tied-plain": ("Lfm2MoeConfig", "Lfm2MoeForCausalLM", dict(
        _LFM2_MOE, layer_types=["conv", "full_attention", "conv", "conv"], num_dense_layers=2,
        use_expert_bias=False, norm_topk_prob=False, conv_bias=True)),
    # qwen3_next
    # MoE on layers 1 and 5 (decoder_sparse_step 2: 1, 3, 5; mlp_only_layers takes 3 out),
    # full attention every third layer (2, 5): starts with GDN
    "qwen3_next-moe-step-linear-first-untied": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        _QWEN3_NEXT, num_hidden_layers=6, full_attention_interval=3, decoder_sparse_step=2,
        mlp_only_layers=[3])),
    # MoE on every layer, top 3 of 5 not renormalised, gelu (experts, MLP and conv), tied
    "qwen3_next-moe-full-first-tied": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        _QWEN3_NEXT, layer_types=_FULL_FIRST, tie_word_embeddings=True, hidden_act="gelu",
        num_experts_per_tok=3, norm_topk_prob=False, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0,
                         "partial_rotary_factor": 0.5})),
    "qwen3_next-dense": ("Qwen3NextConfig", "Qwen3NextForCausalLM",
                         dict(_QWEN3_NEXT, num_experts=0, layer_types=_LINEAR_FIRST)),
    "qwen3_5_moe-text": ("Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM",
                         _qwen3_5_moe(layer_types=_FULL_FIRST)),
    "qwen3_5_moe-vl": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration",
                       dict(_qwen3_5_vl(), text_config=_qwen3_5_moe(full_attention_interval=2))),
    # bamba
    "bamba-mamba-first-untied-biases": ("BambaConfig", "BambaForCausalLM", dict(
        _BAMBA, attn_layer_indices=[1, 3], attention_bias=True, mlp_bias=True,
        mamba_proj_bias=True)),
    "bamba-attn-first-tied-headdim-full-rope": ("BambaConfig", "BambaForCausalLM", dict(
        _BAMBA, attn_layer_indices=[0, 3], head_dim=14, tie_word_embeddings=True,
        hidden_act="gelu", mamba_conv_bias=False, mamba_d_conv=3,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                         "partial_rotary_factor": 1.0})),
    # nemotron_h: patterns starting with each of its four kinds
    "nemotron_h-moe-first-untied": ("NemotronHConfig", "NemotronHForCausalLM", dict(
        _NEMOTRON_H, hybrid_override_pattern="EM*-M", routed_scaling_factor=1.7,
        use_bias=True)),
    "nemotron_h-mamba-first-tied-dense": ("NemotronHConfig", "NemotronHForCausalLM", dict(
        _NEMOTRON_H, layers_block_type=["linear_attention", "mlp", "full_attention", "mlp"],
        tie_word_embeddings=True, mlp_bias=True, n_groups=4, conv_kernel=3,
        use_conv_bias=False, mamba_hidden_act="gelu")),
    "nemotron_h-attn-first-plain-topk": ("NemotronHConfig", "NemotronHForCausalLM", dict(
        _NEMOTRON_H, hybrid_override_pattern="*EM", n_group=1, topk_group=1,
        norm_topk_prob=False, num_experts_per_tok=3, mlp_hidden_act="silu")),
    "nemotron_h-mlp-first": ("NemotronHConfig", "NemotronHForCausalLM", dict(
        _NEMOTRON_H, hybrid_override_pattern="-M*E", num_key_value_heads=4)),
}
# The kinds sbsnn must build for each case.
KINDS = {
    "qwen3_5-linear-first-untied": ["gdn", "full", "gdn", "full"],
    "qwen3_5-full-first-tied-rope": ["full", "gdn", "gdn", "full"],
    "qwen3_5-vl": ["gdn", "full", "gdn", "full"],
    "gemma3-vl": ["swa", "swa", "swa"],
    # granitemoehybrid
    "granite-moe-mamba-first-nope-untied": ["mamba2", "full", "mamba2", "full"],
    "granite-dense-attention-first-rope-tied": ["full", "mamba2", "mamba2", "full"],
    # falcon_h1
    "falcon_h1-gated-norm-untied": ["attn+mamba2"] * 3,
    "falcon_h1-no-norm-tied-biases": ["attn+mamba2"] * 3,
    # lfm2
    "lfm2-conv-first-untied-bias": ["conv", "full", "conv", "conv"],
    "lfm2-attn-first-tied-idxs": ["full", "conv", "conv", "full"],
    "lfm2_moe-attn-first-untied-bias": ["full", "conv", "conv", "full"],
    "lfm2_moe-conv-first-tied-plain": ["conv", "full", "conv", "conv"],
    # qwen3_next
    "qwen3_next-moe-step-linear-first-untied": ["gdn", "gdn", "full", "gdn", "gdn", "full"],
    "qwen3_next-moe-full-first-tied": ["full", "gdn", "gdn", "full"],
    "qwen3_next-dense": ["gdn", "full", "gdn", "full"],
    "qwen3_5_moe-text": ["full", "gdn", "gdn", "full"],
    "qwen3_5_moe-vl": ["gdn", "full", "gdn", "full"],
    # bamba
    "bamba-mamba-first-untied-biases": ["mamba2", "full", "mamba2", "full"],
    "bamba-attn-first-tied-headdim-full-rope": ["full", "mamba2", "mamba2", "full"],
    # nemotron_h ("mlp": an MLP or MoE layer, no mixer)
    "nemotron_h-moe-first-untied": ["mlp", "mamba2", "full", "mlp", "mamba2"],
    "nemotron_h-mamba-first-tied-dense": ["mamba2", "mlp", "full", "mlp"],
    "nemotron_h-attn-first-plain-topk": ["full", "mlp", "mamba2"],
    "nemotron_h-mlp-first": ["mlp", "mamba2", "full", "mlp"],
}
# The layers that hold an MoE block (the others a dense MLP), where the case has any.
MOE_LAYERS = {
    "qwen3_next-moe-step-linear-first-untied": [1, 5],
    "qwen3_next-moe-full-first-tied": [0, 1, 2, 3],
    "qwen3_next-dense": [],
    "qwen3_5_moe-text": [0, 1, 2, 3],
    "qwen3_5_moe-vl": [0, 1, 2, 3],
}


def hf_model(config_cls: str, model_cls: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(**kw)
    model = getattr(transformers, model_cls)(cfg).to(torch.float32).eval()
    with torch.no_grad():  # norms, biases and decays away from their init, so they matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith("bias") or name.endswith("dt_bias"):
                p.normal_(0, 0.3)
            elif name.endswith("conv1d.weight"):  # init std 0.02 leaves the recurrence ~1e-7
                p.normal_(0, 0.5)
        for name, b in model.named_buffers():  # routing biases choose other experts
            if name.endswith("expert_bias"):
                b.normal_(0, 0.3)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


_SAVED: dict = {}


def _save_case(name: str, tmp_path_factory):
    """(name, transformers model, its save_pretrained directory), built once per case."""
    if name not in _SAVED:
        cfg_cls, model_cls, kw = CASES[name]
        model = hf_model(cfg_cls, model_cls, **kw)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        _SAVED[name] = (name, model, d)
    return _SAVED[name]


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    return _save_case(request.param, tmp_path_factory)


LINEAR = ("gdn", "mamba2", "conv", "attn+mamba2")    # kinds holding a linear mixer


def cases_of(*prefixes: str, vl: bool = False) -> list[str]:
    """The cases of the families named by ``prefixes`` (or the vision-language ones)."""
    return [n for n in sorted(CASES) if (n.endswith("-vl") if vl else n.startswith(prefixes))]


@pytest.fixture
def case(request, tmp_path_factory):
    return _save_case(request.param, tmp_path_factory)


def _load(d):
    with pytest.warns(UserWarning, match="vision tower") if _is_vl(d) else _nothing():
        return load_model(d)


def _is_vl(d) -> bool:
    return "text_config" in json.loads((d / "config.json").read_text())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_logits_equal_transformers(saved):
    name, ref, d = saved
    ours = _load(d)
    ids = torch.randint(0, V - 3, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(ids).logits, ours(ids)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5, name
    assert [b.kind for b in ours.model.layers] == KINDS[name]
    if name in MOE_LAYERS:      # as the case means it, and as transformers built it
        moe = [i for i, b in enumerate(ours.model.layers) if isinstance(b.mlp, MoE)]
        ref_layers = getattr(ref.model, "language_model", ref.model).layers
        assert moe == MOE_LAYERS[name] == [
            i for i, lay in enumerate(ref_layers) if "SparseMoe" in type(lay.mlp).__name__]
    # tied as transformers ties it (NemotronH ties nothing, whatever its config says)
    tied = ref.get_output_embeddings().weight.data_ptr() == ref.get_input_embeddings().weight.data_ptr()
    assert (ours.lm_head is None) == tied


def test_greedy_tokens_equal_transformers_decoding_token_by_token(saved):
    name, ref, d = saved
    ours = _load(d)
    prompt = torch.randint(0, V - 3, (1, 6), generator=torch.Generator().manual_seed(3))
    ref.generation_config.eos_token_id = None  # 32 tokens whatever they are, on both sides
    want = ref.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    assert len(want) == 32
    got = list(ours.stream_ids(prompt[0].tolist(), 32, temperature=0))
    assert got == want, name


def test_prompt_in_parts_equals_one_pass(saved):
    """Chunked prompt, then blocks of 7, then single tokens: one set of logits."""
    name, _, d = saved
    ours = _load(d)
    ids = torch.randint(0, V - 3, (1, SEQ), generator=torch.Generator().manual_seed(2))
    state = ours.new_state()
    with torch.no_grad():
        whole = ours(ids)
        parts = [ours(ids[:, :50], state)]
        parts += [ours(ids[:, s:s + 7], state) for s in range(50, 71, 7)]
        parts += [ours(ids[:, s:s + 1], state) for s in range(71, SEQ)]
    assert rel_err(torch.cat(parts, 1), whole) < 1e-5, name


_WITH_LINEAR = [n for n in sorted(CASES) if set(KINDS[n]) & set(LINEAR)]
# 1,000 decoded tokens for the first case of each family, 100 for its other cases.
_THOUSAND = {next(n for n in _WITH_LINEAR if n.split("-")[0] == f)
             for f in {n.split("-")[0] for n in _WITH_LINEAR}}


@pytest.mark.parametrize("case", _WITH_LINEAR, indirect=True)
def test_linear_layers_state_is_constant_while_decoding(case):
    name, _, d = case
    ours = _load(d)
    linear = [i for i, b in enumerate(ours.model.layers) if b.kind in LINEAR]
    assert linear
    state = ours.new_state()

    def nbytes(i):  # the linear mixer's state (beside attention's cache in "attn+mamba2")
        s = state.layers[i]
        s = s["mamba"] if ours.model.layers[i].kind == "attn+mamba2" else s
        return sum(t.numel() * t.element_size() for t in s.values() if isinstance(t, torch.Tensor))

    with torch.no_grad():
        ours(torch.zeros(1, 3, dtype=torch.long), state)
        first = [nbytes(i) for i in linear]
        tok = torch.zeros(1, 1, dtype=torch.long)
        for _ in range(1000 if name in _THOUSAND else 100):
            ours(tok, state)
        later = [nbytes(i) for i in linear]
    assert first == later and all(first)
    for i in linear:
        mixer = getattr(ours.model.layers[i], ours.model.layers[i].mixer_name)
        assert nbytes(i) == mixer.state_bytes(1, torch.float32)


# ----------------------------------------------------------------------------- refusals
def _config_dir(tmp_path, name, **changes):
    cfg_cls, model_cls, kw = CASES[name]
    model = hf_model(cfg_cls, model_cls, **kw)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value in changes.items():
        target = cfg["text_config"] if key.startswith("text.") else cfg
        target[key.removeprefix("text.")] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("name,key,value", [
    ("qwen3_5-linear-first-untied", "linear_use_bias", True),       # invented: would change the math
    ("qwen3_5-vl", "text.linear_gate_scale", 2.0),                  # inside text_config
    ("gemma3-vl", "text.final_logit_softcapping", 30.0),            # the wrapper ignores it
    ("qwen3_5-linear-first-untied", "layer_types", ["mamba"] * 4),
    # granitemoehybrid
    ("granite-moe-mamba-first-nope-untied", "mamba_dt_scale", 2.0),       # invented
    ("granite-moe-mamba-first-nope-untied", "position_embedding_type", "alibi"),
    ("granite-moe-mamba-first-nope-untied", "layer_types", ["mamba", "sliding_attention"] * 2),
    ("granite-moe-mamba-first-nope-untied", "residual_multiplier", None),
    ("granite-moe-mamba-first-nope-untied", "mamba_n_groups", 3),          # 4 heads
    ("granite-moe-mamba-first-nope-untied", "normalization_function", "layernorm"),  # RMSNorm built
    # falcon_h1
    ("falcon_h1-gated-norm-untied", "ssm_gate_multiplier", 1.5),           # invented
    ("falcon_h1-gated-norm-untied", "ssm_multipliers", [1.0] * 6),
    ("falcon_h1-gated-norm-untied", "attn_layer_indices", [0]),
    ("falcon_h1-gated-norm-untied", "mamba_use_mlp", False),
    ("falcon_h1-gated-norm-untied", "key_multiplier", None),
    # lfm2
    ("lfm2-conv-first-untied-bias", "conv_activation", "silu"),     # invented
    ("lfm2-conv-first-untied-bias", "block_dim", 64),               # restates hidden_size, wrongly
    ("lfm2-conv-first-untied-bias", "use_pos_enc", False),          # transformers applies RoPE
    ("lfm2-conv-first-untied-bias", "full_attn_idxs", [0]),         # disagrees with layer_types
    ("lfm2-attn-first-tied-idxs", "layer_types", ["sliding_attention"] * 4),
    ("lfm2_moe-attn-first-untied-bias", "router_jitter", 0.1),      # invented
    ("lfm2_moe-attn-first-untied-bias", "layer_types", None),       # Lfm2MoeConfig derives none
    ("lfm2_moe-attn-first-untied-bias", "block_auto_adjust_ff_dim", True),  # an LFM2 key only
    # qwen3_next
    ("qwen3_next-moe-full-first-tied", "shared_expert_scale", 0.5),  # invented
    ("qwen3_next-moe-full-first-tied", "decoder_sparse_step", 0),
    ("qwen3_next-moe-full-first-tied", "num_experts_per_tok", 6),     # more than the 5 experts
    ("qwen3_next-moe-full-first-tied", "mlp_only_layers", [1.0]),
    ("qwen3_next-moe-full-first-tied", "num_experts", None),          # the reference refuses null
    ("qwen3_5_moe-text", "norm_topk_prob", False),      # not read there: it always renormalises
    ("qwen3_5_moe-text", "decoder_sparse_step", 2),     # not read there: every layer is MoE
    ("qwen3_5_moe-text", "num_experts", 0),             # would build an MoE with no expert
    # bamba
    ("bamba-mamba-first-untied-biases", "mamba_dt_scale", 2.0),        # invented
    ("bamba-mamba-first-untied-biases", "layer_types", ["mamba"] * 4),  # transformers fails on it
    ("bamba-mamba-first-untied-biases", "attn_layer_indices", [1, 7]),  # layer 7 of 4
    ("bamba-mamba-first-untied-biases", "partial_rotary_factor", 0.25),  # BambaConfig uses 0.5
    ("bamba-mamba-first-untied-biases", "time_step_limit", None),      # fails on a prompt
    ("bamba-mamba-first-untied-biases", "head_dim", None),             # its attention fails
    ("bamba-attn-first-tied-headdim-full-rope", "head_dim", 10),       # 5 rotary channels
    # nemotron_h
    ("nemotron_h-moe-first-untied", "moe_router_jitter", 0.1),         # invented
    ("nemotron_h-moe-first-untied", "residual_in_fp32", True),         # transformers ignores it
    ("nemotron_h-moe-first-untied", "topk_group", 1),                  # group-limited routing
    ("nemotron_h-moe-first-untied", "moe_latent_size", 8),
    ("nemotron_h-moe-first-untied", "n_shared_experts", 2),            # transformers builds one
    ("nemotron_h-moe-first-untied", "sliding_window", 4),              # transformers ignores it
    ("nemotron_h-moe-first-untied", "hybrid_override_pattern", "MM*-M"),  # disagrees
    ("nemotron_h-moe-first-untied", "num_hidden_layers", 9),           # 5 layers listed
    ("nemotron_h-moe-first-untied", "time_step_limit", [0.0, 0.1]),    # not what it clamps to
    ("nemotron_h-moe-first-untied", "mamba_ssm_cache_dtype", "bfloat16"),
    ("nemotron_h-moe-first-untied", "mlp_bias", True),                 # shared MLP biases
    ("nemotron_h-moe-first-untied", "mamba_n_groups", 4),              # older name, disagrees
    ("nemotron_h-mamba-first-tied-dense", "layers_block_type", ["mamba"] * 4),
    ("nemotron_h-moe-first-untied", "norm_eps", 1e-3),    # restates layer_norm_epsilon, wrongly
])
def test_keys_that_would_change_the_math_are_refused_by_name(tmp_path, name, key, value):
    d = _config_dir(tmp_path, name, **{key: value})
    with pytest.raises(CheckpointError, match=repr(key.removeprefix("text."))):
        load_model(d)


def test_value_heads_not_a_multiple_of_key_heads_are_refused(tmp_path):
    cfg = dict(_QWEN3_5, model_type="qwen3_5_text", linear_num_value_heads=5)
    with pytest.raises(CheckpointError, match="linear_num_value_heads"):
        HybridConfig.from_dict(cfg)


@pytest.mark.parametrize("case", cases_of(vl=True), indirect=True)
def test_vision_language_config_says_what_it_leaves_out(case):
    name, _, d = case
    cfg = HybridConfig.from_json(d / "config.json")
    assert any("vision tower" in n and "vision_config" in n for n in cfg.notes)
    # the config written back is the file read (the checkpoint stays the same model)
    assert cfg.to_dict() == json.loads((d / "config.json").read_text())


# ----------------------------------------------------------------------------- Mamba-2 hybrids
@pytest.mark.parametrize("case", cases_of("granite"), indirect=True)
def test_granite_fused_experts_are_split_onto_linear_layers(case):
    """Granite's stacked expert tensors and fused shared MLP land on one nn.Linear per
    projection, each equal to its slice of the file's tensor."""
    name, ref, d = case
    ours = _load(d)
    hf_layer, layer = ref.model.layers[0], ours.model.layers[0]
    shared = hf_layer.shared_mlp.input_linear.weight
    ours_shared = layer.mlp.shared_experts[0] if ref.config.num_local_experts else layer.mlp
    half = shared.shape[0] // 2
    assert torch.equal(ours_shared.gate_proj.weight, shared[:half])
    assert torch.equal(ours_shared.up_proj.weight, shared[half:])
    assert isinstance(ours_shared.down_proj, torch.nn.Linear)
    if ref.config.num_local_experts:
        experts = hf_layer.block_sparse_moe.experts
        for e, expert in enumerate(layer.mlp.experts):
            inter = experts.gate_up_proj.shape[1] // 2
            assert torch.equal(expert.gate_proj.weight, experts.gate_up_proj[e, :inter])
            assert torch.equal(expert.up_proj.weight, experts.gate_up_proj[e, inter:])
            assert torch.equal(expert.down_proj.weight, experts.down_proj[e])
        assert torch.equal(layer.mlp.router.weight, hf_layer.block_sparse_moe.router.weight)


@pytest.mark.parametrize("case", cases_of("granite", "falcon_h1", "bamba", "nemotron_h"), indirect=True)
def test_mamba_hybrid_saved_by_sbsnn_loads_as_the_same_model(case, tmp_path):
    """sbsnn's own save (its module names, the family's config.json) reads back equal."""
    from sbsnn.models.checkpoint import save_pretrained

    name, _, d = case
    ours = _load(d)
    save_pretrained(ours, tmp_path)
    again = load_model(tmp_path)
    ids = torch.randint(0, V - 3, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_granite_fused_tensor_of_a_wrong_shape_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _config_dir(tmp_path, "granite-moe-mamba-first-nope-untied")
    tensors = load_file(d / "model.safetensors")
    key = "model.layers.1.block_sparse_moe.input_linear.weight"
    tensors[key] = tensors[key][:, 1:].contiguous()  # odd rows: no gate/up halves
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape(repr(key))):
        load_model(d)


# ----------------------------------------------------------------------------- nemotron_h
@pytest.mark.parametrize("case", cases_of("nemotron_h"), indirect=True)
def test_nemotron_h_layers_are_one_sublayer_with_gateless_mlps(case):
    """Each block holds one norm and one sub-layer; the MLP and MoE layers are where the
    pattern puts them, their MLPs and experts up/down only, the router's bias loaded."""
    from sbsnn.models.layers import MLP

    name, ref, d = case
    ours = _load(d)
    for b, r in zip(ours.model.layers, ref.model.layers):
        assert {n for n, _ in b.named_children()} == {
            "norm", {"linear_attention": "mamba", "full_attention": "attn"}.get(r.block_type, "mlp")}
        if r.block_type == "moe":
            assert isinstance(b.mlp, MoE) and all(isinstance(e, MLP) for e in b.mlp.experts)
            assert torch.equal(b.mlp.expert_bias, r.mixer.gate.e_score_correction_bias)
            for e, expert in enumerate(b.mlp.experts):
                assert torch.equal(expert.up_proj.weight, r.mixer.experts.up_proj[e])
        elif r.block_type == "mlp":
            assert isinstance(b.mlp, MLP) and not hasattr(b.mlp, "gate_proj")


def test_nemotron_h_older_layout_reads_as_transformers_reads_it(tmp_path):
    """NVIDIA's config layout: hybrid_override_pattern, num_hidden_layers and the older
    mamba_* names instead of layers_block_type, n_groups, chunk_size, ...; fused experts
    (transformers 5's own layout). transformers and sbsnn load it as the same model."""
    name = "nemotron_h-moe-first-untied"
    ref = hf_model(*CASES[name][:2], **CASES[name][2])
    ref.save_pretrained(tmp_path, save_original_format=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for new, old in (("n_groups", "mamba_n_groups"), ("chunk_size", "mamba_chunk_size"),
                     ("conv_kernel", "mamba_d_conv"), ("use_conv_bias", "mamba_conv_bias"),
                     ("time_step_min", "mamba_dt_min"), ("expand", "mamba_expand")):
        cfg[old] = cfg.pop(new)
    cfg["hybrid_override_pattern"] = "EM*-M"
    cfg["num_hidden_layers"] = 5
    del cfg["layers_block_type"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from sbsnn.models.checkpoint import read_state_dict

    assert any(k.endswith("mixer.experts.up_proj") for k in read_state_dict(tmp_path)[0])
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_model(tmp_path)
    ids = torch.randint(0, V - 3, (2, SEQ), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.equal(again(ids).logits, want)     # transformers reads the same model
        assert rel_err(ours(ids), want) < 1e-5


def test_nemotron_h_clamps_dt_on_prompts_at_time_step_min(tmp_path):
    """NemotronH clamps dt to (time_step_min, inf) on a prompt (and ignores
    time_step_limit); at 0.6 the clamp binds for many tokens, and sbsnn follows."""
    name = "nemotron_h-mamba-first-tied-dense"
    ref = hf_model(*CASES[name][:2], **dict(CASES[name][2], time_step_min=0.6))
    ref.save_pretrained(tmp_path / "clamped")
    ours = load_model(tmp_path / "clamped")
    loose = load_model(_config_dir(tmp_path / "loose", name, time_step_min=0.0))
    loose.load_state_dict(ours.state_dict())
    ids = torch.randint(0, V - 3, (2, SEQ), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(ids).logits
        assert rel_err(ours(ids), want) < 1e-5
        assert rel_err(loose(ids), want) > 1e-4      # the clamp changes the logits (10x the tolerance)


# ----------------------------------------------------------------------------- LFM2
@pytest.mark.parametrize("size,auto,mult,multiple", [
    (100, True, 1.3, 16), (12288, True, 1.0, 256), (10752, False, 1.0, 256),
    (97, True, 0.7, 7), (5, True, 1.0, 1), (100, True, 1.5, 1), (300, True, 2, 64),
    (64, False, 3.5, 0)])
def test_lfm2_mlp_width_is_lfm2mlps(size, auto, mult, multiple):
    """The width sbsnn reads is the one transformers' Lfm2MLP builds."""
    kw = dict(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
              vocab_size=V, intermediate_size=size, block_auto_adjust_ff_dim=auto,
              block_ffn_dim_multiplier=mult, block_multiple_of=multiple)
    want = transformers.models.lfm2.modeling_lfm2.Lfm2MLP(transformers.Lfm2Config(**kw))
    got = HybridConfig.from_dict(dict(kw, model_type="lfm2"))
    assert got.intermediate_size == want.w1.out_features


def test_lfm2_older_key_names_read_as_transformers_reads_them(tmp_path):
    """Liquid AI's configs: ``block_ff_dim`` and ``tie_embedding`` override
    ``intermediate_size`` and ``tie_word_embeddings``; the keys transformers ignores
    restate read values or training settings. transformers and sbsnn load the edited
    file as the same model (the original one)."""
    name = "lfm2-conv-first-untied-bias"
    ref = hf_model(*CASES[name][:2], **CASES[name][2])
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(intermediate_size=7, block_ff_dim=100, tie_word_embeddings=True,
               tie_embedding=False, block_dim=48, conv_dim=48, conv_dim_out=48, num_heads=4,
               block_norm_eps=1e-5, theta=1e6, use_pos_enc=True, block_use_swiglu=True,
               block__name_mlp="parallel_mlp_merged", block_use_xavier_init=True,
               conv_use_xavier_init=True, block_mlp_init_scale=1.0, block_out_init_scale=1.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_model(tmp_path)
    ids = torch.randint(0, V - 3, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.equal(again(ids).logits, want)     # transformers reads the same model
        assert rel_err(ours(ids), want) < 1e-5
    assert ours.lm_head is not None and ours.config.intermediate_size == 96


@pytest.mark.parametrize("case", cases_of("lfm2_moe"), indirect=True)
def test_lfm2_moe_layers_are_dense_then_experts(case):
    name, ref, d = case
    ours = _load(d)
    k = ref.config.num_dense_layers
    assert [type(b.mlp).__name__ for b in ours.model.layers] == ["SwiGLU"] * k + ["MoE"] * (4 - k)
    for b, r in zip(ours.model.layers[k:], ref.model.layers[k:]):
        assert hasattr(b.mlp, "expert_bias") == ref.config.use_expert_bias
        if ref.config.use_expert_bias:
            assert torch.equal(b.mlp.expert_bias, r.feed_forward.expert_bias)


# ----------------------------------------------------------------------------- qwen3_next
def _saved_fused(tmp_path, name="qwen3_next-moe-step-linear-first-untied"):
    """A case saved in transformers 5's own layout: experts fused into 3-D tensors."""
    cfg_cls, model_cls, kw = CASES[name]
    model = hf_model(cfg_cls, model_cls, **kw)
    model.save_pretrained(tmp_path, save_original_format=False)
    return model, tmp_path


@pytest.mark.parametrize("name", ["qwen3_next-moe-step-linear-first-untied", "qwen3_5_moe-vl"])
def test_fused_experts_load_as_transformers_runs_them(tmp_path, name):
    ref, d = _saved_fused(tmp_path, name)
    from sbsnn.models.checkpoint import read_state_dict

    raw, _ = read_state_dict(d)
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in raw)     # the layout under test
    assert not any(".experts.0." in k for k in raw)
    ours = _load(d)
    ids = torch.randint(0, V - 3, (2, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) < 1e-5


def test_split_fused_experts_gives_each_expert_its_rows_as_views():
    from sbsnn.models.families import split_fused_experts

    gate_up, down = torch.randn(3, 8, 5), torch.randn(3, 5, 4)
    raw = {"m.layers.2.mlp.experts.gate_up_proj": gate_up, "m.layers.2.mlp.experts.down_proj": down,
           "m.norm.weight": torch.ones(5)}
    origin = {k: f"f{i}" for i, k in enumerate(raw)}
    out, where, made = split_fused_experts(raw, origin)
    assert set(out) == {"m.norm.weight"} | {f"m.layers.2.mlp.experts.{e}.{p}.weight"
                                             for e in range(3) for p in ("gate_proj", "up_proj", "down_proj")}
    for e in range(3):
        p = f"m.layers.2.mlp.experts.{e}."
        assert torch.equal(out[p + "gate_proj.weight"], gate_up[e, :4])
        assert torch.equal(out[p + "up_proj.weight"], gate_up[e, 4:])
        assert torch.equal(out[p + "down_proj.weight"], down[e])
        assert out[p + "up_proj.weight"].data_ptr() == gate_up[e, 4:].data_ptr()   # no copy
        assert where[p + "up_proj.weight"] == "f0" and where[p + "down_proj.weight"] == "f1"
        assert made[p + "up_proj.weight"] == f"m.layers.2.mlp.experts.gate_up_proj[{e}][4:]"
    assert "m.layers.2.mlp.experts.gate_up_proj" in raw      # the caller's dict is left alone
    bad = "m.mlp.experts.gate_up_proj"
    with pytest.raises(CheckpointError, match=r"'m\.mlp\.experts\.gate_up_proj' has shape \(3, 7, 5\)"):
        split_fused_experts({bad: torch.zeros(3, 7, 5)}, {bad: "f"})


def test_fused_and_per_expert_weights_together_are_refused(tmp_path):
    _, d = _saved_fused(tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    tensors["model.layers.1.mlp.experts.0.up_proj.weight"] = torch.zeros(20, 48)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.experts\.gate_up_proj' "
                                              r"\(fused experts\) and 'model\.layers\.1\.mlp\."
                                              r"experts\.0\.up_proj\.weight'"):
        load_model(d)


def test_expert_shape_mismatch_names_the_fused_tensor_and_its_config_key(tmp_path):
    _, d = _saved_fused(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["moe_intermediate_size"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"experts\.(gate_up_proj\[0\]\[:20\]|down_proj\[0\])' "
                                              r"has shape .*'moe_intermediate_size' = 16"):
        load_model(d)


def test_absent_keys_take_qwen3_next_config_defaults():
    """A config with only the sizes: every MoE and layer default as Qwen3NextConfig fills it."""
    sizes = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=8,
                 num_attention_heads=4)
    ref = transformers.Qwen3NextConfig(**sizes)
    ours = HybridConfig.from_dict(dict(sizes, model_type="qwen3_next"))
    assert (ours.num_experts, ours.num_experts_per_tok, ours.moe_intermediate_size,
            ours.shared_expert_intermediate_size, ours.norm_topk_prob, ours.head_dim,
            ours.num_key_value_heads) == (
        ref.num_experts, ref.num_experts_per_tok, ref.moe_intermediate_size,
        ref.shared_expert_intermediate_size, ref.norm_topk_prob, ref.head_dim,
        ref.num_key_value_heads)
    assert ours.layer_mixers == [{"linear_attention": "gdn", "full_attention": "full"}[t]
                                 for t in ref.layer_types]
    assert ours.dense_layers == [] and ours.gdn["num_value_heads"] == ref.linear_num_value_heads
    assert ours.rope_parameters["partial_rotary_factor"] == ref.rope_parameters["partial_rotary_factor"]
    mtp = HybridConfig.from_dict(dict(sizes, model_type="qwen3_next", mtp_num_hidden_layers=1))
    assert mtp.extra["mtp_num_hidden_layers"] == 1     # its mtp.* tensors are skipped
    dense = HybridConfig.from_dict(dict(sizes, model_type="qwen3_next", num_experts=0))
    assert dense.num_experts == 0 and not any(dense.is_moe_layer(i) for i in range(8))


def test_spiking_checkpoint_of_a_qwen3_next_moe_round_trips(tmp_path):
    from sbsnn.converters import convert, load_spiking, save_spiking

    cfg_cls, model_cls, kw = CASES["qwen3_next-moe-full-first-tied"]
    hf_model(cfg_cls, model_cls, **kw).save_pretrained(tmp_path / "float")
    snn = convert(load_model(tmp_path / "float"), "paper", "ternary", 3.0, group_size=16)
    names = snn.spiking_config.targets
    assert "model.layers.0.mlp.shared_expert_gate" in names and "model.layers.0.mlp.router" in names
    assert "model.layers.1.linear_attn.in_proj_qkvz" in names
    back = load_spiking(save_spiking(snn, tmp_path / "snn"))
    ids = torch.randint(0, V - 3, (1, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(back(ids), snn(ids))


@pytest.mark.parametrize("name", ["qwen3_5_moe-text", "qwen3_5_moe-vl"])
def test_shape_mismatch_names_only_sizes_the_family_leaves_out(tmp_path, name):
    """Qwen3.5-MoE has no intermediate_size; the text model of a vision-language config
    is its text_config: neither is named as a size config.json left out."""
    d = _config_dir(tmp_path, name, **{("text." if name.endswith("vl") else "") +
                                       "shared_expert_intermediate_size": 16})
    with pytest.raises(CheckpointError, match="shared_expert_intermediate_size' = 16") as e:
        load_model(d)
    assert "leaves out" not in str(e.value)


# ----------------------------------------------------------------------------- every family
def test_info_counts_parameters_and_state_as_the_model_holds_them(saved):
    """``sbsnn info``'s numbers for each family equal the loaded model's: parameters
    (transformers' count too) and the decoding state after a prompt and some tokens."""
    from sbsnn.models.info import decode_state_bytes, parameter_counts

    name, ref, d = saved
    ours = _load(d)
    params = parameter_counts(ours.config)
    assert params["total"] == sum(p.numel() for p in ours.parameters())
    assert params["total"] == sum(p.numel() for n, p in ref.named_parameters()
                                  if not n.startswith(("model.visual.", "model.vision_tower.",
                                                       "model.multi_modal_projector.")))
    state = ours.new_state()
    with torch.no_grad():
        ours(torch.zeros(1, 9, dtype=torch.long), state)
        for _ in range(4):
            ours(torch.zeros(1, 1, dtype=torch.long), state)
    assert decode_state_bytes(ours.config, 13, torch.float32)["total_bytes"] == state.nbytes()


def test_spiking_conversion_simulates_bit_identical_to_the_integer_path(saved):
    """The paper preset converts every projection of each family (never lm_head); the
    event simulation equals the integer path bit for bit; the report's non-spiking
    operations count each mixer kind the family holds."""
    from sbsnn.analysis.opcount import nonspiking_ops
    from sbsnn.converters import SpikingLinear, convert
    from sbsnn.sim import simulate

    name, _, d = saved
    ours = _load(d)
    snn = convert(ours, preset="paper", k=3.0)
    spiking = {n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    linears = {n for n, m in ours.named_modules() if isinstance(m, torch.nn.Linear)}
    assert spiking == linears - {"lm_head"}
    ids = torch.randint(0, V - 3, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = snn(ids)
    got = simulate(snn, ids).logits
    assert torch.equal(got, want[0]), name
    ops = nonspiking_ops(ours.config, tokens=40)
    kinds = {b.kind for b in ours.model.layers}
    for kind, key in (("gdn", "gdn_decay_ops"), ("mamba2", "mamba2_decay_ops"),
                      ("attn+mamba2", "mamba2_decay_ops"), ("conv", "shortconv_macs")):
        if kind in kinds:
            assert ops.get(key, 0) > 0, (name, key)


# ----------------------------------------------------------------------------- published configs
# config.json files as their checkpoints publish them (every key, every value; the sizes
# are the real ones: nothing is built but transformers' model on the meta device). Each
# names where it was read.

# NVIDIA-Nemotron-3-Nano-30B-A3B (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16), its
# config.json as quoted verbatim in a bring-up note on GitHub ("## 3. Verbatim
# config.json"): norm_eps restating layer_norm_epsilon, RoPE keys for a NoPE attention.
_NEMOTRON_3_NANO = {
    "architectures": ["NemotronHForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_nemotron_h.NemotronHConfig",
                 "AutoModel": "modeling_nemotron_h.NemotronHForCausalLM",
                 "AutoModelForCausalLM": "modeling_nemotron_h.NemotronHForCausalLM"},
    "bos_token_id": 1, "chunk_size": 128, "conv_kernel": 4, "eos_token_id": 2, "expand": 2,
    "head_dim": 128, "hidden_dropout": 0.0, "hidden_size": 2688,
    "hybrid_override_pattern": "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    "initializer_range": 0.02, "intermediate_size": 1856, "layer_norm_epsilon": 1e-05,
    "mamba_head_dim": 64, "mamba_hidden_act": "silu", "mamba_num_heads": 64,
    "mamba_proj_bias": False, "mamba_ssm_cache_dtype": "float32",
    "max_position_embeddings": 262144, "mlp_bias": False, "mlp_hidden_act": "relu2",
    "model_type": "nemotron_h", "moe_intermediate_size": 1856,
    "moe_shared_expert_intermediate_size": 3712, "n_group": 1, "n_groups": 8,
    "n_routed_experts": 128, "n_shared_experts": 1, "norm_eps": 1e-05, "norm_topk_prob": True,
    "num_attention_heads": 32, "num_experts_per_tok": 6, "num_hidden_layers": 52,
    "num_key_value_heads": 2, "num_logits_to_keep": 1, "pad_token_id": 0,
    "partial_rotary_factor": 1.0, "rescale_prenorm_residual": True, "residual_in_fp32": False,
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "sliding_window": None,
    "ssm_state_size": 128, "tie_word_embeddings": False, "time_step_floor": 0.0001,
    "time_step_max": 0.1, "time_step_min": 0.001, "topk_group": 1, "torch_dtype": "bfloat16",
    "transformers_version": "4.55.4", "use_bias": False, "use_cache": True,
    "use_conv_bias": True, "use_mamba_kernels": True, "vocab_size": 131072}

_LFM2_LAYERS = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv",
                "conv", "full_attention", "conv", "full_attention", "conv", "full_attention",
                "conv", "full_attention", "conv"]
# FlameF0X/LFM2.5-1.2B-Distilled-Claude-4.6 (an Unsloth fine-tune of
# LiquidAI/LFM2.5-1.2B-Thinking), its config.json as fetched with curl from
# huggingface.co in a quantization log on GitHub: Liquid AI's older keys, rope_parameters,
# and Unsloth's model_name / unsloth_version.
_LFM2_5_FINETUNE = {
    "architectures": ["Lfm2ForCausalLM"], "block_auto_adjust_ff_dim": True, "block_dim": 2048,
    "block_ffn_dim_multiplier": 1.0, "block_mlp_init_scale": 1.0, "block_multiple_of": 256,
    "block_norm_eps": 1e-05, "block_out_init_scale": 1.0, "block_use_swiglu": True,
    "block_use_xavier_init": True, "bos_token_id": 1, "conv_L_cache": 3, "conv_bias": False,
    "conv_dim": 2048, "conv_use_xavier_init": True, "torch_dtype": "float16", "eos_token_id": 7,
    "full_attn_idxs": None, "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 12288, "layer_types": _LFM2_LAYERS, "max_position_embeddings": 128000,
    "model_name": "LiquidAI/LFM2.5-1.2B-Thinking", "model_type": "lfm2", "norm_eps": 1e-05,
    "num_attention_heads": 32, "num_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pad_token_id": 0,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "unsloth_version": "2026.4.4", "use_cache": False,
    "use_pos_enc": True, "vocab_size": 65536}
# LFM2-1.2B as FastFlowLM's LFM2-1.2B-NPU2 container ships it (quoted verbatim in a test on
# GitHub): the original LFM2 layout, full_attn_idxs and block_ff_dim (which overrides
# intermediate_size), head_dim.
_LFM2_1_2B_NPU2 = {
    "architectures": ["Lfm2ForCausalLM"], "block_auto_adjust_ff_dim": True, "block_dim": 2048,
    "block_ff_dim": 12288, "block_ffn_dim_multiplier": 1.0, "block_mlp_init_scale": 1.0,
    "block_multiple_of": 256, "block_norm_eps": 1e-05, "block_out_init_scale": 1.0,
    "block_use_swiglu": True, "block_use_xavier_init": True, "bos_token_id": 1,
    "conv_L_cache": 3, "conv_bias": False, "conv_dim": 2048, "conv_dim_out": 2048,
    "conv_use_xavier_init": True, "eos_token_id": 7, "intermediate_size": 8192,
    "full_attn_idxs": [2, 5, 8, 10, 12, 14], "hidden_size": 2048, "initializer_range": 0.02,
    "max_position_embeddings": 128000, "model_type": "lfm2", "norm_eps": 1e-05,
    "num_attention_heads": 32, "head_dim": 64, "num_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pad_token_id": 0, "rope_theta": 1000000.0,
    "torch_dtype": "bfloat16", "use_cache": True, "use_pos_enc": True, "vocab_size": 65536}

PUBLISHED = {
    "nemotron-3-nano-30b-a3b": _NEMOTRON_3_NANO,
    "lfm2.5-1.2b-unsloth-finetune": _LFM2_5_FINETUNE,
    "lfm2-1.2b-npu2": _LFM2_1_2B_NPU2,
}


def _hf_meta_model(d):
    """transformers' config class reading ``d`` (AutoConfig.for_model) and its model
    built on the meta device (shapes, no memory)."""
    d = dict(d)
    hf = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    return hf, model


def _hf_kind(layer) -> str:
    """The layer kind of one of transformers' decoder layers, from the modules it holds."""
    names = [type(m).__name__ for m in layer.children()]
    has = lambda s: any(s in n for n in names)     # noqa: E731
    if has("Mamba") and has("Attention"):
        return "attn+mamba2"
    if has("Mamba"):
        return "mamba2"
    if has("ShortConv"):
        return "conv"
    if has("Attention"):
        return "swa" if getattr(layer, "attention_type", None) == "sliding_attention" else "full"
    return "mlp"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_read_as_transformers_reads_them(name):
    """Each published config.json loads in sbsnn and in transformers, and sbsnn derives
    what transformers builds from it: the layer kinds, the embedding, and every
    parameter (sbsnn info's count equals the meta-device model's)."""
    from sbsnn.models.info import parameter_counts

    d = PUBLISHED[name]
    ours = HybridConfig.from_dict(json.loads(json.dumps(d)), name)
    hf, model = _hf_meta_model(d)
    layers = model.model.layers
    assert ours.num_hidden_layers == len(layers)
    assert ours.layer_mixers == [_hf_kind(layer) for layer in layers]
    assert tuple(model.get_input_embeddings().weight.shape) == (ours.vocab_size, ours.hidden_size)
    assert parameter_counts(ours)["total"] == sum(p.numel() for p in model.parameters())


# The config.json of a released Qwen3.5-MoE checkpoint (InternScience/Agents-A1, a
# Qwen3.5-35B-A3B finetune, as printed in a public agent log): every key as published,
# the sizes shrunk to a tiny model. Its text_config carries keys transformers' classes
# do not read (attn_output_gate, mamba_ssm_dtype, mtp_*, an empty mlp_only_layers).
def _published_qwen3_5_moe() -> dict:
    lt = ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 2
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "image_token_id": V - 5,
        "model_type": "qwen3_5_moe",
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "attn_output_gate": True,
            "dtype": "bfloat16", "eos_token_id": V - 7, "full_attention_interval": 4,
            "head_dim": 16, "hidden_act": "silu", "hidden_size": 48, "initializer_range": 0.02,
            "layer_types": lt, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 8,
            "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_value_head_dim": 8,
            "max_position_embeddings": 262144, "mlp_only_layers": [],
            "model_type": "qwen3_5_moe_text", "moe_intermediate_size": 24,
            "mtp_num_hidden_layers": 1, "mtp_use_dedicated_embeddings": False,
            "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
            "num_hidden_layers": len(lt), "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
            "router_aux_loss_coef": 0.001, "shared_expert_intermediate_size": 24,
            "use_cache": True, "vocab_size": V, "mamba_ssm_dtype": "float32",
            "rope_parameters": {"mrope_interleaved": True, "mrope_section": [1, 1, 0],
                                "rope_type": "default", "rope_theta": 10000000,
                                "partial_rotary_factor": 0.25}},
        "tie_word_embeddings": False,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": V - 4,
        "vision_config": {"deepstack_visual_indexes": [], "depth": 1, "hidden_act": "gelu_pytorch_tanh",
                          "hidden_size": 16, "in_channels": 3, "initializer_range": 0.02,
                          "intermediate_size": 24, "model_type": "qwen3_5_moe", "num_heads": 2,
                          "num_position_embeddings": 16, "out_hidden_size": 48, "patch_size": 4,
                          "spatial_merge_size": 2, "temporal_patch_size": 2},
        "vision_end_token_id": V - 2,
        "vision_start_token_id": V - 3,
    }


def test_a_published_qwen3_5_moe_config_loads_as_transformers_runs_it(tmp_path):
    cfg = _published_qwen3_5_moe()
    ref = hf_model("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration",
                   **{k: v for k, v in cfg.items() if k not in ("model_type", "architectures",
                                                                "transformers_version")})
    ref.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["text_config"].update({k: v for k, v in cfg["text_config"].items()
                                 if k not in saved["text_config"]})   # keys transformers drops
    saved["vision_config"].update(deepstack_visual_indexes=[], model_type="qwen3_5_moe")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    ours = _load(tmp_path)
    assert [b.kind for b in ours.model.layers] == ["gdn", "gdn", "gdn", "full"] * 2
    ids = torch.randint(0, V - 8, (1, SEQ), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert rel_err(ours(ids), ref(ids).logits) < 1e-5


@pytest.mark.parametrize("key,value", [("attn_output_gate", False), ("mamba_ssm_dtype", "bfloat16"),
                                       ("mlp_only_layers", [1])])
def test_published_keys_are_refused_at_a_value_the_model_does_not_compute(key, value):
    cfg = _published_qwen3_5_moe()
    cfg["text_config"][key] = value
    with pytest.raises(CheckpointError, match=repr(key)):
        HybridConfig.from_dict(cfg)


@pytest.mark.parametrize("name", ["qwen3_5-linear-first-untied", "qwen3_next-dense"])
def test_released_qwen_keys_the_models_never_read_are_harmless_at_their_value(name, tmp_path):
    """attn_output_gate true, mamba_ssm_dtype float32, use_sliding_window false and the
    multi-token-prediction keys (Qwen3.5 and Qwen3-Next releases carry them): the model
    loads as without them; another value of the first three is refused."""
    d = _config_dir(tmp_path, name, attn_output_gate=True, mamba_ssm_dtype="float32",
                    use_sliding_window=False, mtp_num_hidden_layers=1,
                    mtp_use_dedicated_embeddings=False)
    ours = load_model(d)
    assert ours.config.attn_output_gate is True
    for key, value in (("attn_output_gate", False), ("use_sliding_window", True)):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        with pytest.raises(CheckpointError, match=repr(key)):
            HybridConfig.from_dict(cfg)


# google/gemma-3-4b-it's text_config as the helper that audited published configs found
# it quoted in two GitHub test fixtures: only five keys; the rest are Gemma3TextConfig's
# defaults (262,208 tokens, 8 heads, 4 key/value heads of 256, ...).
_GEMMA3_4B_TEXT = {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                   "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                   "sliding_window": 1024}


def test_gemma3_vision_language_text_sizes_left_out_take_transformers_defaults():
    d = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
         "text_config": dict(_GEMMA3_4B_TEXT), "boi_token_index": 255999,
         "eoi_token_index": 256000, "image_token_index": 262144, "mm_tokens_per_image": 256,
         "initializer_range": 0.02,
         "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                           "model_type": "siglip_vision_model", "num_attention_heads": 16,
                           "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}}
    ours = HybridConfig.from_dict(d)
    theirs = transformers.Gemma3Config(**{k: v for k, v in d.items() if k != "model_type"}).text_config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "sliding_window"):
        assert getattr(ours, key) == getattr(theirs, key), key
    kinds = [ours.layer_kind(i) for i in range(ours.num_hidden_layers)]
    assert kinds == ["swa" if t == "sliding_attention" else "full" for t in theirs.layer_types]


def test_a_gemma3_default_that_disagrees_with_the_weights_is_named(tmp_path):
    """A size left out and defaulted wrongly fails on the tensor it shapes, naming the
    key and its default (never a silent other model)."""
    d = _config_dir(tmp_path, "gemma3-vl")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["text_config"]["vocab_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vocab_size.*262208|vocab_size \\(default 262208\\)"):
        load_model(d)
