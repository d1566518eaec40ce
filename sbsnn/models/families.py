"""Reading ``config.json`` of every supported family into a
:class:`~sbsnn.models.config.HybridConfig` (which imports this module: this one knows it
only as the ``config_class`` it is given).

One reader per ``model_type``. Each key of the file is either

* implemented: read, checked and translated into HybridConfig's fields;
* harmless: on the short lists below (``HARMLESS``, ``GENERATION_KEYS``, and per family
  the keys its reference implementation itself ignores), known not to change the forward
  pass; kept in ``extra`` and written back;
* or refused, with an error naming the file, the key and its value.

A key that is absent takes the default of the family's reference implementation (the
``transformers`` config class of that family, or SpikingBrain's ``GLAswaConfig``), as
that implementation would; for sbsnn's own ``sbsnn_hybrid`` the fields a trained model
depends on are required. Both layouts ``transformers`` writes and reads are understood:
the current one (``rope_parameters``, ``layer_types``) and the older one (``rope_theta``,
``rope_scaling``, ``use_sliding_window``, ``max_window_layers``, Gemma's
``rope_local_base_freq`` and ``sliding_window_pattern``). The lists are documented in
``docs/checkpoints.md``.

Tensor names of each family are mapped onto sbsnn's module names by :func:`rename_key`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from sbsnn.models.errors import CheckpointError, ConfigError
from sbsnn.models.layers import ACTIVATIONS, activation_refusal

# Layer kinds of sbsnn -> the layer_types names of transformers.
LAYER_TYPES = {"full": "full_attention", "swa": "sliding_attention"}

# Sizes beyond these are refused by name rather than attempted: a damaged config.json
# (or a fuzzed one) with 2**60 layers would otherwise hang building the model.
SIZE_BOUNDS: dict[str, tuple[int, str]] = {
    "num_hidden_layers": (10_000, "published LLMs have at most a few hundred layers"),
    "hidden_size": (1 << 20, "published LLMs are at most a few tens of thousands wide"),
    "intermediate_size": (1 << 22, "published LLMs' feed-forward layers are below a million wide"),
    "moe_intermediate_size": (1 << 22, "published LLMs' experts are below a million wide"),
    "shared_expert_intermediate_size": (1 << 22, "published LLMs' experts are below a million wide"),
    "vocab_size": (1 << 24, "published tokenizers have at most about a million tokens"),
    "num_attention_heads": (1 << 16, "published LLMs have at most a few hundred heads"),
    "num_key_value_heads": (1 << 16, "published LLMs have at most a few hundred heads"),
    "head_dim": (1 << 16, "published LLMs' heads are at most a few hundred wide"),
    "num_experts": (1 << 20, "published mixtures have at most a few thousand experts"),
}

# Keys that never change the forward pass (bookkeeping, training-only settings, token
# ids used for generation, kernel choices).
HARMLESS = frozenset({
    "_name_or_path", "_model_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
    "model_type", "use_cache", "initializer_range", "attention_dropout", "hidden_dropout",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "id2label", "label2id", "problem_type", "finetuning_task", "task_specific_params", "prefix",
    "tokenizer_class", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
    "sep_token_id", "decoder_start_token_id", "chunk_size_feed_forward", "pretraining_tp",
    "attn_implementation", "_attn_implementation", "_attn_implementation_autoset",
    "max_position_embeddings", "use_bfloat16", "pruned_heads", "is_decoder",
    "cross_attention_hidden_size", "tf_legacy_loss", "_commit_hash",
    "unsloth_version",      # the version of Unsloth that saved a fine-tune (bookkeeping)
})
# Generation defaults some configs carry (sbsnn generate takes its own options).
GENERATION_KEYS = frozenset({
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "begin_suppress_tokens", "max_new_tokens",
})
# Keys harmless only at one value (the model would compute differently otherwise).
MUST_EQUAL = {
    "is_encoder_decoder": (False, None),
    "add_cross_attention": (False, None),
    "tie_encoder_decoder": (False, None),
    "quantization_config": (None,),
}

_REQUIRED = object()

# Keys whose explicit ``null`` the reference refuses: the fields transformers 5.24 types
# without ``None`` (its strict config dataclasses reject null there), and the keys its
# model reads where null breaks it. For the other keys null is read as transformers reads
# it: as the default where its config fills one in (``num_key_value_heads`` -> the
# number of heads, ``head_dim`` -> hidden / heads, ``layer_types`` -> derived, the RoPE
# keys -> absent), and as a value where null means something (``sliding_window``: no
# window; ``final_logit_softcapping``: none; token ids: none).
_HF_NOT_NULL = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
    "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder"})
NOT_NULL: dict[str, frozenset[str]] = {
    "llama": _HF_NOT_NULL | {"hidden_act", "attention_bias", "mlp_bias"},
    "mistral": _HF_NOT_NULL | {"hidden_act", "num_key_value_heads", "attention_dropout"},
    # Qwen2Config has no head_dim field; Qwen2Attention reads getattr(config, "head_dim")
    "qwen2": _HF_NOT_NULL | {"hidden_act", "use_sliding_window", "max_window_layers",
                             "attention_dropout", "head_dim"},
    "qwen3": _HF_NOT_NULL | {"hidden_act", "head_dim", "attention_bias", "use_sliding_window",
                             "max_window_layers", "attention_dropout"},
    "gemma3_text": _HF_NOT_NULL | {"hidden_activation", "num_key_value_heads", "head_dim",
                                   "attention_bias", "query_pre_attn_scalar"},
    "qwen3_5_text": _HF_NOT_NULL | {"hidden_act", "num_key_value_heads", "head_dim",
                                    "attention_bias", "attention_dropout",
                                    "linear_conv_kernel_dim", "linear_key_head_dim",
                                    "linear_value_head_dim", "linear_num_key_heads",
                                    "linear_num_value_heads"},
    # the muP scalars and Mamba sizes multiply or size something in the model: null breaks it
    "granitemoehybrid": _HF_NOT_NULL | {
        "hidden_act", "head_dim", "attention_bias", "shared_intermediate_size",
        "embedding_multiplier", "logits_scaling", "residual_multiplier", "attention_multiplier",
        "num_local_experts", "num_experts_per_tok", "mamba_n_heads", "mamba_n_groups",
        "mamba_d_state", "mamba_d_head", "mamba_d_conv", "mamba_expand", "mamba_chunk_size",
        "mamba_conv_bias", "mamba_proj_bias", "time_step_limit"},
    "falcon_h1": _HF_NOT_NULL | {
        "hidden_act", "head_dim", "attention_bias", "mlp_bias", "lm_head_multiplier",
        "embedding_multiplier", "key_multiplier", "attention_in_multiplier",
        "attention_out_multiplier", "ssm_in_multiplier", "ssm_out_multiplier", "mamba_n_heads",
        "mamba_n_groups", "mamba_d_state", "mamba_d_head", "mamba_d_conv", "mamba_expand",
        "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias", "mamba_norm_before_gate",
        "mamba_rms_norm", "projectors_bias", "time_step_limit"},
    # (a null head_dim is refused by read_lfm2: Lfm2Config keeps it, Lfm2Attention fails)
    "lfm2": (_HF_NOT_NULL - {"rms_norm_eps"}) | {
        "num_key_value_heads", "norm_eps", "conv_bias", "conv_L_cache", "block_multiple_of",
        "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim", "block_ff_dim", "tie_embedding"},
    "lfm2_moe": (_HF_NOT_NULL - {"rms_norm_eps"}) | {
        "num_key_value_heads", "norm_eps", "conv_bias", "conv_L_cache", "tie_embedding",
        "moe_intermediate_size", "num_dense_layers", "num_experts_per_tok", "num_experts",
        "use_expert_bias", "routed_scaling_factor", "norm_topk_prob", "output_router_logits"},
}
_MAMBA_NOT_NULL = frozenset({"mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_head",
                             "mamba_d_conv", "mamba_expand", "mamba_chunk_size", "mamba_conv_bias",
                             "mamba_proj_bias", "time_step_limit"})
# Bamba: null sizes break BambaConfig or its mixer (a null time_step_limit fails on the
# first prompt); NemotronHConfig types every field it reads without None.
NOT_NULL["bamba"] = _HF_NOT_NULL | _MAMBA_NOT_NULL | {"hidden_act", "attention_bias", "mlp_bias",
                                                     "head_dim"}
NOT_NULL["nemotron_h"] = (_HF_NOT_NULL - {"rms_norm_eps", "num_hidden_layers"}) | {
    "num_key_value_heads", "head_dim", "layer_norm_epsilon", "mlp_hidden_act", "mlp_bias",
    "mamba_hidden_act", "ssm_state_size", "mamba_num_heads", "mamba_head_dim", "n_groups",
    "conv_kernel", "chunk_size", "use_conv_bias", "use_bias", "time_step_min",
    "n_routed_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
    "moe_shared_expert_intermediate_size", "routed_scaling_factor", "n_group", "topk_group",
    "norm_topk_prob", "n_shared_experts", "residual_in_fp32", "attention_bias",
    "mamba_proj_bias", "mamba_ssm_cache_dtype", "time_step_limit"}
_QWEN_MOE_NOT_NULL = frozenset({"num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                "shared_expert_intermediate_size", "output_router_logits",
                                "router_aux_loss_coef"})
NOT_NULL["qwen3_next"] = NOT_NULL["qwen3_5_text"] | _QWEN_MOE_NOT_NULL | {
    "decoder_sparse_step", "norm_topk_prob"}
NOT_NULL["qwen3_5_moe_text"] = (NOT_NULL["qwen3_5_text"] - {"intermediate_size"}) | _QWEN_MOE_NOT_NULL
# The reference of each family, named in refusals.
REFERENCE = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
             "qwen3": "Qwen3Config", "gemma3_text": "Gemma3TextConfig",
             "gemma3": "Gemma3Config", "qwen3_5_text": "Qwen3_5TextConfig",
             "qwen3_5": "Qwen3_5Config", "granitemoehybrid": "GraniteMoeHybridConfig",
             "falcon_h1": "FalconH1Config", "lfm2": "Lfm2Config", "lfm2_moe": "Lfm2MoeConfig",
             "qwen3_next": "Qwen3NextConfig", "qwen3_5_moe_text": "Qwen3_5MoeTextConfig",
             "qwen3_5_moe": "Qwen3_5MoeConfig", "bamba": "BambaConfig",
             "nemotron_h": "NemotronHConfig",
             "gla_swa": "SpikingBrain's GLAswaConfig", "sbsnn_hybrid": "sbsnn's HybridConfig"}
# The sizes that define every tensor's shape: a config without them is refused (the
# reference would take its family's default, say 32 heads, and fail on a shape, or, for
# the number of heads, silently compute another model).
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")

# HybridConfig fields a family's config class does not have (the reader sets them to an
# unused valid value): never named as "left out of config.json".
NOT_CONFIG_KEYS = {"qwen3_5_moe_text": frozenset({"intermediate_size"}),
                   "qwen3_5_moe": frozenset({"intermediate_size"}),
                   "nemotron_h": frozenset({"num_hidden_layers"})}

# ----------------------------------------------------------------------------- tensor names
_COMMON_RENAMES = [
    (re.compile(r"^model\.embed_tokens\."), "model.embeddings."),
    (re.compile(r"\.self_attn\."), ".attn."),
    (re.compile(r"\.input_layernorm\."), ".attn_norm."),
]
_LLAMA_RENAMES = _COMMON_RENAMES + [(re.compile(r"\.post_attention_layernorm\."), ".mlp_norm.")]
_GEMMA_RENAMES = _COMMON_RENAMES + [
    (re.compile(r"\.post_attention_layernorm\."), ".post_attn_norm."),
    (re.compile(r"\.pre_feedforward_layernorm\."), ".mlp_norm."),
    (re.compile(r"\.post_feedforward_layernorm\."), ".post_mlp_norm."),
]
# Vision-language checkpoints keep their language model under model.language_model
# (transformers 5) or language_model.model (the layout released Gemma 3 and LLaVA-style
# checkpoints use, and transformers writes back), the head as lm_head or
# language_model.lm_head; transformers reads both, and so does sbsnn.
_LANGUAGE_MODEL = [(re.compile(r"^model\.language_model\."), "model."),
                   (re.compile(r"^language_model\.model\."), "model."),
                   (re.compile(r"^language_model\.lm_head\."), "lm_head.")]
_GRANITE_RENAMES = _LLAMA_RENAMES + [   # the router: checkpoint name, then transformers 5's
    (re.compile(r"\.block_sparse_moe\.router\.(layer\.)?"), ".mlp.router.")]
_FALCON_H1_RENAMES = _COMMON_RENAMES + [
    (re.compile(r"^model\.final_layernorm\."), "model.norm."),
    (re.compile(r"\.pre_ff_layernorm\."), ".mlp_norm."),
    (re.compile(r"\.feed_forward\."), ".mlp."),
]
# LFM2 (and LFM2-MoE): operator_norm before the mixer, ffn_norm before feed_forward (w1
# gate, w3 up, w2 down; LFM2-MoE: experts.E.w1/w3/w2, the router gate, expert_bias),
# attention's out_proj and q/k_layernorm, the final norm embedding_norm. Only the
# attention's out_proj is renamed: a conv layer's conv.out_proj is ShortConv's own name.
_LFM2_RENAMES = _COMMON_RENAMES + [
    (re.compile(r"\.operator_norm\."), ".attn_norm."),
    (re.compile(r"\.ffn_norm\."), ".mlp_norm."),
    (re.compile(r"\.feed_forward\."), ".mlp."),
    (re.compile(r"(\.mlp\.(?:experts\.\d+\.)?)w1\."), r"\1gate_proj."),
    (re.compile(r"(\.mlp\.(?:experts\.\d+\.)?)w3\."), r"\1up_proj."),
    (re.compile(r"(\.mlp\.(?:experts\.\d+\.)?)w2\."), r"\1down_proj."),
    (re.compile(r"\.mlp\.gate\."), ".mlp.router."),
    (re.compile(r"\.attn\.out_proj\."), ".attn.o_proj."),
    (re.compile(r"\.attn\.q_layernorm\."), ".attn.q_norm."),
    (re.compile(r"\.attn\.k_layernorm\."), ".attn.k_norm."),
    (re.compile(r"^model\.embedding_norm\."), "model.norm."),
]
# The Qwen MoE block (Qwen3-Next, Qwen3.5-MoE): router mlp.gate, one shared expert
# mlp.shared_expert (its gate mlp.shared_expert_gate keeps its name). Experts stored fused
# (transformers 5's own layout) are split first (split_fused_experts).
_QWEN_MOE_RENAMES = [(re.compile(r"\.mlp\.gate\."), ".mlp.router."),
                     (re.compile(r"\.mlp\.shared_expert\."), ".mlp.shared_experts.0.")]
# Nemotron-H: NVIDIA's checkpoints keep the model under backbone. (transformers renames
# it); every block has one norm (sbsnn's ``norm`` too) and one ``mixer``, which is the
# Mamba-2 mixer, the attention or the MLP / MoE as its tensors' names tell (the MoE's
# router mixer.gate with its e_score_correction_bias, one shared MLP).
_NEMOTRON_H_RENAMES = [
    (re.compile(r"^backbone\."), "model."),
    (re.compile(r"^model\.norm_f\."), "model.norm."),
    (re.compile(r"\.mixer\.(?=(?:in_proj|conv1d|out_proj|norm)\.|(?:dt_bias|A_log|D)$)"), ".mamba."),
    (re.compile(r"\.mixer\.(?=[qkvo]_proj\.)"), ".attn."),
    (re.compile(r"\.mixer\.gate\.weight$"), ".mlp.router.weight"),
    (re.compile(r"\.mixer\.gate\.e_score_correction_bias$"), ".mlp.expert_bias"),
    (re.compile(r"\.mixer\.shared_experts\."), ".mlp.shared_experts.0."),
    (re.compile(r"\.mixer\.(?=up_proj\.|down_proj\.|experts\.)"), ".mlp."),
]
RENAMES = {"granitemoehybrid": _GRANITE_RENAMES, "falcon_h1": _FALCON_H1_RENAMES,
           "bamba": _FALCON_H1_RENAMES, "nemotron_h": _NEMOTRON_H_RENAMES,
           "llama": _LLAMA_RENAMES, "mistral": _LLAMA_RENAMES, "qwen2": _LLAMA_RENAMES,
           "qwen3": _LLAMA_RENAMES, "gemma3_text": _GEMMA_RENAMES,
           "gemma3": _LANGUAGE_MODEL + _GEMMA_RENAMES, "qwen3_5_text": _LANGUAGE_MODEL + _LLAMA_RENAMES,
           "qwen3_5": _LANGUAGE_MODEL + _LLAMA_RENAMES, "lfm2": _LFM2_RENAMES,
           "lfm2_moe": _LFM2_RENAMES, "qwen3_next": _LLAMA_RENAMES + _QWEN_MOE_RENAMES,
           "qwen3_5_moe_text": _LANGUAGE_MODEL + _LLAMA_RENAMES + _QWEN_MOE_RENAMES,
           "qwen3_5_moe": _LANGUAGE_MODEL + _LLAMA_RENAMES + _QWEN_MOE_RENAMES}
# Tensors a family's checkpoints hold that its causal LM does not load: the vision tower
# and projector of vision-language checkpoints, Qwen3.5's multi-token-prediction head
# (transformers' _keys_to_ignore_on_load_unexpected). Matched against the file's names.
SKIPPED_TENSORS = {
    "gemma3": re.compile(r"^(model\.)?(vision_tower|multi_modal_projector)\."),
    "qwen3_5": re.compile(r"^(model\.visual\.|mtp\.)"),
    "qwen3_5_text": re.compile(r"^(model\.visual\.|mtp\.)"),
    "qwen3_next": re.compile(r"^mtp\."),
    "qwen3_5_moe": re.compile(r"^(model\.visual\.|mtp\.)"),
    "qwen3_5_moe_text": re.compile(r"^(model\.visual\.|mtp\.)"),
    "nemotron_h": re.compile(r"^mtp\."),
}


_FUSED_EXPERTS = re.compile(r"^(.+\.(?:mlp|feed_forward)\.experts)\.(gate_up_proj|down_proj)$")


def split_fused_experts(raw: dict[str, Any], origin: dict[str, Any]
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Experts stored as transformers 5 holds them (``save_pretrained(...,
    save_original_format=False)``, or a file written from its state dict), one 3-D tensor
    per kind (under ``mlp``, LFM2-MoE's under ``feed_forward``):
    ``mlp.experts.gate_up_proj [E, 2I, H]`` (each expert's gate rows, then its
    up rows, as the reference's ``chunk(2)`` splits them) and ``mlp.experts.down_proj
    [E, H, I]`` -> the per-expert ``mlp.experts.{e}.gate_proj / up_proj / down_proj
    .weight`` that transformers' ``save_pretrained`` writes by default and sbsnn's
    ``nn.Linear`` experts load (views, no copy). Returns new ``raw`` and ``origin`` and,
    for each tensor made, where it came from (named in errors)."""
    if not any(_FUSED_EXPERTS.search(k) for k in raw):
        return raw, origin, {}
    raw, origin, made = dict(raw), dict(origin), {}
    for key in [k for k in raw if _FUSED_EXPERTS.search(k)]:
        prefix, kind = _FUSED_EXPERTS.search(key).groups()
        t, file = raw.pop(key), origin.pop(key)
        if t.dim() != 3 or (kind == "gate_up_proj" and t.shape[1] % 2):
            raise CheckpointError(
                f"{file}: tensor {key!r} has shape {tuple(t.shape)}; fused experts are "
                + ("[experts, 2 * moe_intermediate_size, hidden_size] (gate rows, then up rows)"
                   if kind == "gate_up_proj" else "[experts, hidden_size, moe_intermediate_size]"))
        half = t.shape[1] // 2
        for e in range(t.shape[0]):
            parts = ({"gate_proj": t[e, :half], "up_proj": t[e, half:]}
                     if kind == "gate_up_proj" else {"down_proj": t[e]})
            for proj, w in parts.items():
                name = f"{prefix}.{e}.{proj}.weight"
                if name in raw:
                    raise CheckpointError(
                        f"{file}: tensor {key!r} (fused experts) and {name!r} (expert {e} on "
                        f"its own, in {origin[name]}) are the same weights; keep one layout")
                raw[name], origin[name] = w, file
                made[name] = f"{key}[{e}]" + (("[:%d]" % half if proj == "gate_proj" else
                                               "[%d:]" % half) if kind == "gate_up_proj" else "")
    return raw, origin, made


_NEMOTRON_FUSED = re.compile(r"^(.+\.mixer\.experts)\.(up_proj|down_proj)$")


def split_nemotron_experts(raw: dict[str, Any], origin: dict[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Nemotron-H's experts as transformers 5 holds them (``save_original_format=False``):
    ``mixer.experts.up_proj [E, I, H]`` and ``mixer.experts.down_proj [E, H, I]`` -> the
    per-expert ``mixer.experts.{e}.up_proj / down_proj .weight`` its ``save_pretrained``
    writes by default (views, no copy), in :func:`split_fused_experts`' protocol."""
    fused = [k for k in raw if _NEMOTRON_FUSED.match(k)]
    if not fused:
        return raw, origin, {}
    raw, origin, made = dict(raw), dict(origin), {}
    for key in fused:
        prefix, proj = _NEMOTRON_FUSED.match(key).groups()
        t, file = raw.pop(key), origin.pop(key)
        if t.dim() != 3:
            raise CheckpointError(f"{file}: tensor {key!r} has shape {tuple(t.shape)}; fused "
                                  "experts are [experts, out_features, in_features]")
        for e in range(t.shape[0]):
            name = f"{prefix}.{e}.{proj}.weight"
            if name in raw:
                raise CheckpointError(
                    f"{file}: tensor {key!r} (fused experts) and {name!r} (expert {e} on "
                    f"its own, in {origin[name]}) are the same weights; keep one layout")
            raw[name], origin[name], made[name] = t[e], file, f"{key}[{e}]"
    return raw, origin, made


def rename_key(key: str, model_type: str) -> str:
    """A tensor name of ``model_type``'s checkpoints -> sbsnn's module name (sbsnn's own
    names pass through unchanged)."""
    for pattern, repl in RENAMES.get(model_type, ()):
        key = pattern.sub(repl, key)
    return key


# Granite's fused MLP tensors (transformers writes them under these legacy names): the
# experts of a layer stacked ``[E, 2I, H]`` (gate rows, then up rows) and ``[E, H, I]``,
# and the shared MLP's ``[2I, H]`` / ``[H, I]``. sbsnn keeps one nn.Linear per projection
# (each can become a spiking layer), so they are split on loading.
_GRANITE_FUSED = re.compile(r"^(model\.layers\.\d+\.)(block_sparse_moe|shared_mlp)\."
                            r"(input_linear|output_linear)\.weight$")
# transformers 5's names of the experts' input_linear / output_linear (same layouts)
_GRANITE_EXPERTS_5 = re.compile(r"^(model\.layers\.\d+\.block_sparse_moe\.)experts\."
                                r"(gate_up_proj|down_proj)$")


def split_granite_fused(raw: dict[str, Any], origin: dict[str, Any]
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Granite's fused MLP tensors -> one gate / up / down weight per expert and for the
    shared MLP (slices, no copies), in :func:`split_fused_experts`' protocol. The shared
    MLP is ``mlp.shared_experts.0`` in a model with routed experts (the file holds
    ``block_sparse_moe`` tensors), else the layer's whole ``mlp``. The experts may also
    be under transformers 5's names (``block_sparse_moe.experts.gate_up_proj`` /
    ``down_proj``, as its state dict and sbsnn's GGUF reader name them)."""
    named = {}  # checkpoint name -> the name the file gave it (shown in errors)
    if any(_GRANITE_EXPERTS_5.match(k) for k in raw):
        raw, origin = dict(raw), dict(origin)
        for key in [k for k in raw if _GRANITE_EXPERTS_5.match(k)]:
            prefix, kind = _GRANITE_EXPERTS_5.match(key).groups()
            old = prefix + ("input_linear" if kind == "gate_up_proj" else "output_linear") + ".weight"
            if old in raw:
                raise CheckpointError(f"{origin[key]}: tensors {key!r} and {old!r} are the same "
                                      "weights under two names; keep one layout")
            raw[old], origin[old], named[old] = raw.pop(key), origin.pop(key), key
    fused = [k for k in raw if _GRANITE_FUSED.match(k)]
    if not fused:
        return raw, origin, {}
    moe = any(_GRANITE_FUSED.match(k).group(2) == "block_sparse_moe" for k in fused)
    raw, origin, made = dict(raw), dict(origin), {}
    for key in fused:
        prefix, block, which = _GRANITE_FUSED.match(key).groups()
        t, file, shown_key = raw.pop(key), origin.pop(key), named.get(key, key)
        stacked = block == "block_sparse_moe"
        if t.dim() != (3 if stacked else 2) or (which == "input_linear" and t.shape[-2] % 2):
            raise CheckpointError(
                f"{file}: tensor {shown_key!r} has shape {tuple(t.shape)}; transformers' Granite layout is "
                + ("[experts, 2 * intermediate_size, hidden_size] (gate rows, then up rows)"
                   if stacked and which == "input_linear" else
                   "[experts, hidden_size, intermediate_size]" if stacked else
                   "[2 * shared_intermediate_size, hidden_size] (gate rows, then up rows)"
                   if which == "input_linear" else "[hidden_size, shared_intermediate_size]"))
        if stacked:
            mlps = [(f"{prefix}mlp.experts.{e}.", t[e], f"{shown_key}[{e}]")
                    for e in range(t.shape[0])]
        else:
            mlps = [(f"{prefix}mlp.shared_experts.0." if moe else f"{prefix}mlp.", t, shown_key)]
        for name, w, shown in mlps:
            if which == "output_linear":
                parts = [("down_proj", w, shown)]
            else:
                half = w.shape[0] // 2
                parts = [("gate_proj", w[:half], f"{shown}[:{half}]"),
                         ("up_proj", w[half:], f"{shown}[{half}:]")]
            for proj, part, what in parts:
                raw[f"{name}{proj}.weight"] = part
                origin[f"{name}{proj}.weight"] = file
                made[f"{name}{proj}.weight"] = what
    return raw, origin, made


# Per-family changes to the tensors as read, before they are renamed (fill_state).
TENSOR_TRANSFORMS = {"qwen3_next": split_fused_experts, "qwen3_5_moe_text": split_fused_experts,
                     "qwen3_5_moe": split_fused_experts, "lfm2_moe": split_fused_experts,
                     "granitemoehybrid": split_granite_fused, "nemotron_h": split_nemotron_experts}


# ----------------------------------------------------------------------------- key reader
class ConfigKeys:
    """A config dict whose keys are taken one by one; :meth:`finish` refuses the rest."""

    def __init__(self, d: dict[str, Any], source: str, model_type: str,
                 fields: frozenset[str] = frozenset()):
        self.d, self.source, self.model_type = d, source, model_type
        self.fields = fields    # the config class's field names (sbsnn's own layout reads them)
        self.used: set[str] = set()
        self.ignored_by_reference: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.d

    def take(self, key: str, default: Any = _REQUIRED) -> Any:
        self.used.add(key)
        if key in self.d:
            return self.d[key]
        if default is _REQUIRED:
            raise ConfigError(f"{self.source}: config key {key!r} is missing; a "
                                  f"{self.model_type} model depends on it, so sbsnn will not guess it")
        return default

    def take_or(self, key: str, default: Any) -> Any:
        """Like :meth:`take`, but an explicit null also means the default (as the
        reference's ``x or default`` / ``if x is None`` does). Keys whose null the
        reference refuses were refused before (:meth:`refuse_nulls`)."""
        v = self.take(key, None)
        return default if v is None else v

    def refuse_nulls(self, keys: frozenset[str]) -> None:
        """Refuse an explicit null for any of ``keys`` (the reference refuses it; reading it
        as "absent" would run the model with a default the file did not ask for)."""
        for key in sorted(keys):
            if key in self.d and self.d[key] is None:
                ref = REFERENCE.get(self.model_type, self.model_type)
                raise ConfigError(
                    f"{self.source}: config key {key!r} is null; transformers' {ref} refuses "
                    "null there (it is not read as the default): give its value, or remove "
                    "the key to take the family's default")

    def refuse(self, key: str, why: str) -> None:
        raise ConfigError(f"{self.source}: config key {key!r} = {self.d.get(key)!r} {why}")

    def finish(self, extra_harmless: frozenset[str] = frozenset()) -> dict[str, Any]:
        """Check the keys not taken; return the harmless ones (kept in ``extra``)."""
        extra = {}
        for key, value in self.d.items():
            if key in self.used:
                continue
            if key == "quantization_config" and _gguf_dequantized(value):
                pass    # transformers' GGUF loader dequantized the weights: float tensors
            elif key in MUST_EQUAL:
                if value not in MUST_EQUAL[key]:
                    self.refuse(key, f"changes how the model computes and is not supported "
                                     f"(sbsnn needs {MUST_EQUAL[key][0]!r}); "
                                     + ("dequantize the weights first (or load the GGUF file)"
                                        if key == "quantization_config" else "remove or fix it"))
            elif key not in HARMLESS and key not in GENERATION_KEYS and key not in extra_harmless:
                self.refuse(key, f"is not understood by sbsnn for model_type {self.model_type!r}; "
                                 "it may change the forward pass, so the checkpoint is refused rather "
                                 "than run without it (see docs/checkpoints.md for the keys sbsnn "
                                 "reads and those it knows to be harmless)")
            extra[key] = value
        return extra


def _gguf_dequantized(value: Any) -> bool:
    """``quantization_config`` as transformers leaves it in a directory saved from a GGUF
    (``from_pretrained(..., gguf_file=...)`` then ``save_pretrained``): the tensors were
    dequantized to floats when loaded, and transformers loads them back as a float model
    (its GGUF quantizer does nothing without a ``gguf_file``). Floating tensors are
    checked when the weights are read; any other quant_method (gptq, awq, bitsandbytes,
    ...) stays refused by name."""
    return isinstance(value, dict) and value.get("quant_method") == "gguf"


def _positive_int(r: ConfigKeys, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        r.refuse(key, "must be a positive integer")
    if key in SIZE_BOUNDS and value > SIZE_BOUNDS[key][0]:
        bound, why = SIZE_BOUNDS[key]
        r.refuse(key, f"is refused: the bound is {bound:,} ({why}); the config is damaged "
                      "or not a language model's")
    return value


def _bool(r: ConfigKeys, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        r.refuse(key, "must be true or false")
    return value


# ----------------------------------------------------------------------------- RoPE
def _rope_parameters(r: ConfigKeys, *, default_theta: float, nested_defaults: dict | None = None,
                     default_partial: float | None = None, text_only_keys: frozenset = frozenset()
                     ) -> dict:
    """``rope_parameters`` in transformers' current layout, from either layout.

    Flat families: ``rope_scaling`` (older name; the reference prefers it when set) or
    ``rope_parameters``, with ``rope_theta`` and ``partial_rotary_factor`` filled in from
    the top level. ``nested_defaults`` (Gemma 3): one dict per layer type, the older keys
    ``rope_theta`` / ``rope_local_base_freq`` / ``rope_scaling`` giving the global theta,
    the local theta and the global scaling.
    """
    rp = r.take("rope_parameters", None)
    rs = r.take("rope_scaling", None)
    for key, v in (("rope_parameters", rp), ("rope_scaling", rs)):
        if v is not None and not isinstance(v, dict):
            r.refuse(key, "must be an object or null")
    theta = r.take("rope_theta", None)
    prf = r.take("partial_rotary_factor", None)
    omax = r.take("original_max_position_embeddings", None)
    if nested_defaults is None:
        if rp and rs and _strip(rp) != _strip(rs):
            r.refuse("rope_scaling", f"disagrees with rope_parameters = {rp!r}; which one holds?")
        params = dict(rs or rp or {})
        if theta is not None and "rope_theta" in params and params["rope_theta"] != theta:
            r.refuse("rope_theta", f"disagrees with rope_parameters' rope_theta "
                                   f"{params['rope_theta']!r}; which one holds?")
        params.setdefault("rope_theta", default_theta if theta is None else theta)
        if prf is None:
            prf = default_partial
        if prf is not None:
            params.setdefault("partial_rotary_factor", prf)
        for key in text_only_keys:      # multimodal position layouts, equal for text
            params.pop(key, None)
        return _standardize(params, omax, r, partial_ok=default_partial is not None)
    local = r.take("rope_local_base_freq", None)
    out = {}
    given = rp or {}
    if given and not set(given) <= set(LAYER_TYPES.values()):
        r.refuse("rope_parameters", f"must hold one entry per layer type "
                                    f"({', '.join(LAYER_TYPES.values())}) for {r.model_type}")
    for layer_type, d_theta in nested_defaults.items():
        params = dict(given.get(layer_type) or {"rope_type": "default"})
        if layer_type == "full_attention":
            if rs is not None:
                params.update(rs)
            params.setdefault("rope_theta", d_theta if theta is None else theta)
        else:
            params.setdefault("rope_theta", d_theta if local is None else local)
        if prf is not None:
            params.setdefault("partial_rotary_factor", prf)
        out[layer_type] = _standardize(params, omax, r)
    return out


def _strip(p: dict) -> dict:
    p = dict(p)
    p.setdefault("rope_type", p.pop("type", "default"))
    p.pop("type", None)
    return p


def _standardize(params: dict, omax: Any, r: ConfigKeys, partial_ok: bool = False) -> dict:
    params = _strip(params)
    prf = params.get("partial_rotary_factor")
    if prf is not None and prf != 1 and not partial_ok:
        raise ConfigError(
            f"{r.source}: partial_rotary_factor = {prf!r}: transformers' {r.model_type} rotates "
            "every channel of a head (its apply_rotary_pos_emb has no pass-through part), so "
            "this config does not run there; sbsnn refuses it rather than guess")
    if params["rope_type"] in ("llama3", "yarn"):
        if omax is not None:
            params["original_max_position_embeddings"] = omax
        params.setdefault("original_max_position_embeddings", r.d.get("max_position_embeddings"))
    return params


# ----------------------------------------------------------------------------- layers
def _layer_types(r: ConfigKeys, n: int, derived: list[str]) -> list[str]:
    """``layer_types`` as given (checked) or as the reference derives it."""
    lt = r.take("layer_types", None)
    if lt is None:
        return derived
    allowed = set(LAYER_TYPES.values())
    if not isinstance(lt, list) or len(lt) != n or not all(t in allowed for t in lt):
        r.refuse("layer_types", f"must list one of {sorted(allowed)} for each of the {n} layers")
    return lt


def _placement(layer_types: list[str], window: int | None, r: ConfigKeys) -> dict[str, Any]:
    """HybridConfig's layer fields for an all-softmax model."""
    n = len(layer_types)
    sliding = [i for i, t in enumerate(layer_types) if t == "sliding_attention"]
    if sliding and window is None:
        key = "sliding_window" if r.d.get("sliding_window", 0) is None else "layer_types"
        r.refuse(key, f"leaves the sliding_attention layers {sliding} of layer_types without a "
                      "window (sliding_window null, or use_sliding_window false): the reference "
                      "fails on it; give sliding_window or type those layers full_attention")
    if sliding and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        r.refuse("sliding_window", "must be a positive integer")
    return {"attn_layers": list(range(n)),
            "full_attn_layers": [i for i in range(n) if i not in sliding],
            "sliding_window": window if sliding else None}


def _decoder_common(r: ConfigKeys, defaults: dict[str, Any], *, eps_key: str = "rms_norm_eps",
                    sizes: tuple[str, ...] = REQUIRED_SIZES) -> dict[str, Any]:
    """The keys every Hugging Face decoder family shares (``eps_key``: the family's name
    for the norms' epsilon; ``sizes``: the required sizes the family reads by name)."""
    out: dict[str, Any] = {"model_type": r.model_type}
    for key in sizes:
        out[key] = _positive_int(r, key, r.take(key))
    heads = out["num_attention_heads"]
    # absent: the family's default; null: the number of heads (the config's __post_init__)
    kv = r.take("num_key_value_heads", defaults.get("num_key_value_heads"))
    out["num_key_value_heads"] = _positive_int(r, "num_key_value_heads", heads if kv is None else kv)
    hd = r.take("head_dim", defaults.get("head_dim"))
    if hd is None:
        if out["hidden_size"] % heads:
            r.refuse("hidden_size", f"is not a multiple of num_attention_heads ({heads}) and the "
                                    "config gives no head_dim; give head_dim (the width of one head)")
        hd = out["hidden_size"] // heads
    out["head_dim"] = _positive_int(r, "head_dim", hd)
    if heads % out["num_key_value_heads"]:
        r.refuse("num_key_value_heads", f"does not divide num_attention_heads ({heads}): each "
                                        "key/value head serves a whole group of query heads")
    out["max_position_embeddings"] = r.take("max_position_embeddings",
                                            defaults["max_position_embeddings"])
    eps = r.take(eps_key, defaults.get(eps_key, 1e-6))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        r.refuse(eps_key, "must be a non-negative number")
    out["norm_eps"] = float(eps)
    out["tie_word_embeddings"] = _bool(r, "tie_word_embeddings",
                                       r.take("tie_word_embeddings", defaults["tie_word_embeddings"]))
    out["initializer_range"] = r.take("initializer_range", 0.02)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        out[key] = r.take(key, defaults.get(key))
    return out


def _hidden_act(r: ConfigKeys, key: str, default: str) -> str:
    act = r.take(key, default)
    if not isinstance(act, str) or act not in ACTIVATIONS:
        r.refuse(key, activation_refusal(act))
    return act


# ----------------------------------------------------------------------------- families
_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=None, head_dim=None,
              max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
              eos_token_id=2)
_MISTRAL = dict(_LLAMA, intermediate_size=14336, num_key_value_heads=8,
                max_position_embeddings=4096 * 32)
_QWEN2 = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=32, head_dim=None,
              max_position_embeddings=32768, tie_word_embeddings=False)
_QWEN3 = dict(_QWEN2, head_dim=128)
_GEMMA3 = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
               num_attention_heads=8, num_key_value_heads=4, head_dim=256,
               max_position_embeddings=131072, tie_word_embeddings=True, pad_token_id=0,
               eos_token_id=1, bos_token_id=2)


def read_llama(r: ConfigKeys) -> dict[str, Any]:
    out = _decoder_common(r, _LLAMA)
    out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    out.update(attention_bias=bias, o_proj_bias=bias,
               mlp_bias=_bool(r, "mlp_bias", r.take("mlp_bias", False)), norm_style="llama",
               rope_parameters=_rope_parameters(r, default_theta=10000.0))
    n = out["num_hidden_layers"]
    out.update(_placement(["full_attention"] * n, None, r))
    return out


def read_mistral(r: ConfigKeys) -> dict[str, Any]:
    """Mistral, and the Ministral layout: transformers' AutoConfig reads a ``mistral``
    config that has a ``layer_types`` key (even null) as ``ministral`` (MinistralConfig,
    MinistralForCausalLM): sliding_window applies to the layers typed sliding_attention,
    the others attend to everything; null layer_types is derived from sliding_window.
    Ministral's attention reads head_dim as given (it does not derive it), so there a
    missing or null head_dim is refused, as the reference fails on it."""
    ministral = r.has("layer_types")
    if ministral and r.d.get("head_dim") is None:
        r.used.add("head_dim")
        raise ConfigError(
            f"{r.source}: config key 'head_dim' is {'null' if r.has('head_dim') else 'missing'}; "
            "with layer_types present transformers reads this mistral config as Ministral, "
            "whose attention needs head_dim (it does not derive it from hidden_size): give "
            "head_dim (hidden_size / num_attention_heads for the usual layout)")
    out = _decoder_common(r, _MISTRAL)
    out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")
    out.update(attention_bias=False, o_proj_bias=False, mlp_bias=False, norm_style="llama",
               rope_parameters=_rope_parameters(r, default_theta=10000.0))
    n = out["num_hidden_layers"]
    window = r.take("sliding_window", 4096)     # null: no window (full attention)
    if ministral and window is None:
        r.refuse("sliding_window", "is refused: with layer_types present transformers reads this "
                                   "mistral config as Ministral, which builds a sliding-window mask "
                                   "for every model and fails without a window; give sliding_window, "
                                   "or remove layer_types (Mistral reads null as full attention)")
    derived = ["full_attention" if window is None else "sliding_attention"] * n
    out.update(_placement(_layer_types(r, n, derived) if ministral else derived, window, r))
    return out


def _read_qwen(r: ConfigKeys, defaults: dict, qwen3: bool) -> dict[str, Any]:
    out = _decoder_common(r, defaults)
    out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")
    if qwen3:
        bias = _bool(r, "attention_bias", r.take("attention_bias", False))
        out.update(attention_bias=bias, o_proj_bias=bias, qk_norm=True)
    else:  # Qwen2Attention: q/k/v biases always, none on o_proj
        out.update(attention_bias=True, o_proj_bias=False)
        r.ignored_by_reference.add("attention_bias")
    out.update(mlp_bias=False, norm_style="llama",
               rope_parameters=_rope_parameters(r, default_theta=10000.0))
    n = out["num_hidden_layers"]
    use_sw = _bool(r, "use_sliding_window", r.take("use_sliding_window", False))
    window = r.take("sliding_window", 4096) if use_sw else None  # as Qwen2Config does
    r.used.add("sliding_window")
    mwl = r.take("max_window_layers", 28)
    derived = ["sliding_attention" if window is not None and i >= mwl else "full_attention"
               for i in range(n)]
    out.update(_placement(_layer_types(r, n, derived), window, r))
    return out


def read_qwen2(r: ConfigKeys) -> dict[str, Any]:
    return _read_qwen(r, _QWEN2, qwen3=False)


def read_qwen3(r: ConfigKeys) -> dict[str, Any]:
    return _read_qwen(r, _QWEN3, qwen3=True)


def read_gemma3_text(r: ConfigKeys) -> dict[str, Any]:
    out = _decoder_common(r, _GEMMA3)
    act = _hidden_act(r, "hidden_activation", "gelu_pytorch_tanh")
    if r.has("hidden_act") and r.take("hidden_act") not in (None, act):
        r.refuse("hidden_act", f"disagrees with hidden_activation {act!r} (Gemma 3 uses "
                               "hidden_activation and ignores hidden_act)")
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    if r.take("use_bidirectional_attention", False):
        r.refuse("use_bidirectional_attention", "(bidirectional attention, an encoder use of "
                                                "Gemma 3) is not supported; sbsnn runs causal LMs")
    if r.take("attn_logit_softcapping", None) is not None:
        r.refuse("attn_logit_softcapping", "is ignored by transformers' Gemma 3 attention; sbsnn "
                                           "refuses rather than guess whether it should apply")
    cap = r.take("final_logit_softcapping", None)
    scalar = r.take("query_pre_attn_scalar", 256)
    if isinstance(scalar, bool) or not isinstance(scalar, (int, float)) or not scalar > 0:
        r.refuse("query_pre_attn_scalar", "must be a positive number")
    n = out["num_hidden_layers"]
    pattern = r.take("sliding_window_pattern", 6)
    if pattern is None and r.d.get("layer_types") is not None:
        derived = []    # the pattern is used only to derive absent layer_types
    else:
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            r.refuse("sliding_window_pattern", "must be a positive integer")
        derived = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    layer_types = _layer_types(r, n, derived)
    if r.has("_sliding_window_pattern"):  # written by transformers' to_dict, read by nothing
        p2 = r.take("_sliding_window_pattern")
        if not r.has("layer_types") and p2 != pattern:
            r.refuse("_sliding_window_pattern", f"disagrees with the pattern in force ({pattern}); "
                                                "give layer_types")
    window = r.take("sliding_window", 4096)
    out.update(hidden_act=act, attention_bias=bias, o_proj_bias=bias, mlp_bias=False,
               norm_style="gemma", qk_norm=True, sandwich_norm=True,
               embedding_scale=float(out["hidden_size"]) ** 0.5, attn_scale=float(scalar) ** -0.5,
               final_logit_softcapping=cap,
               rope_parameters=_rope_parameters(
                   r, default_theta=1e6,
                   nested_defaults={"sliding_attention": 10000.0, "full_attention": 1_000_000.0}))
    out.update(_placement(layer_types, window, r))
    return out


# SpikingBrain's GLAswaConfig defaults (its reference config class).
_GLA_SWA = dict(vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, intermediate_size=18944, hidden_act="swish",
                max_position_embeddings=4096 * 32, sliding_window=4096, norm_eps=1e-6,
                rope_theta=1_000_000.0, gate_logit_normalizer=16, gate_low_rank_dim=16,
                tie_word_embeddings=False, initializer_range=0.02, bos_token_id=151643,
                eos_token_id=151643, pad_token_id=None)


# SpikingBrain ships "swish"; its reference is not transformers, so the wider ACT2FN set
# of the Hugging Face families is not assumed for it.
GLA_SWA_ACTIVATIONS = ("swish", "silu", "gelu", "gelu_pytorch_tanh")


def read_gla_swa(r: ConfigKeys) -> dict[str, Any]:
    """SpikingBrain-7B. Its GLAswaConfig derives head_dim (hidden / heads) and the layer
    pattern (odd layers SWA) instead of reading them; stored values must agree."""
    out: dict[str, Any] = {"model_type": "gla_swa"}
    for key, default in _GLA_SWA.items():
        out[key] = r.take(key, _REQUIRED if key in REQUIRED_SIZES else default)
    for key in REQUIRED_SIZES:
        out[key] = _positive_int(r, key, out[key])
    n = out["num_hidden_layers"]
    heads = out["num_attention_heads"]
    kv = out["num_key_value_heads"] = _positive_int(r, "num_key_value_heads", out["num_key_value_heads"])
    if heads % kv:
        r.refuse("num_key_value_heads", f"is refused: num_attention_heads ({heads}) must be a "
                                        f"multiple of num_key_value_heads ({kv})")
    if out["hidden_act"] not in GLA_SWA_ACTIVATIONS:
        r.refuse("hidden_act", f"is not one SpikingBrain's MLP is known to run (sbsnn reads "
                               f"gla_swa with {', '.join(GLA_SWA_ACTIVATIONS)})")
    if out["hidden_size"] % heads:
        r.refuse("hidden_size", f"is not a multiple of num_attention_heads ({heads}); "
                                "GLAswaConfig derives the head width from their ratio")
    derived = {"head_dim": out["hidden_size"] // heads, "attn_layers": list(range(1, n, 2)),
               "attn_type_list": [i % 2 for i in range(n)]}
    for key, value in derived.items():
        if r.has(key) and r.take(key) != value:
            r.refuse(key, f"disagrees with what SpikingBrain's GLAswaConfig derives ({value!r}); "
                          "its model ignores the stored value")
    out.update(head_dim=derived["head_dim"], attn_layers=derived["attn_layers"])
    for key, ok in (("use_short_conv", (False,)), ("elementwise_affine", (True,)),
                    ("enable_spike", (False, None)), ("feature_map", ("relu", None))):
        if r.take(key, ok[0]) not in ok:
            r.refuse(key, f"is not supported (sbsnn reads the float model with {key}={ok[0]})")
    for key in ("attn_mode", "conv_size", "fuse_cross_entropy", "spike_dynamic_scale",
                "spike_bitwidth"):
        r.ignored_by_reference.add(key)  # kernel choices; spike settings with enable_spike off
    out.update(attention_bias=True, o_proj_bias=False, mlp_bias=False, norm_style="fla")
    return out


_OWN_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "attn_layers", "sliding_window",
                 "norm_eps", "attention_bias")


def read_sbsnn_hybrid(r: ConfigKeys) -> dict[str, Any]:
    """sbsnn's own layout: HybridConfig's fields. Those a trained model depends on are
    required (sbsnn always writes them); the rest default to sbsnn 0.1's behaviour."""
    names = set(r.fields) - {"extra", "source_config", "notes"}
    out = {}
    for key in _OWN_REQUIRED:
        out[key] = r.take(key)
    if not r.has("rope_theta") and r.d.get("rope_parameters") is None:
        r.take("rope_theta")  # raises: the RoPE base is not guessed
    for key in sorted(names - set(out)):
        if r.has(key):
            out[key] = r.take(key)
    return out


# ----------------------------------------------------------------------------- multimodal
def _text_part(r: ConfigKeys, text_type: str, read: Callable[[ConfigKeys], dict[str, Any]],
               own_keys: frozenset[str], size_defaults: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The language model of a vision-language config: ``text_config`` read by the text
    family's reader (as its own file, keys checked the same way); the top level's
    ``own_keys`` (vision settings, image token ids) describe the vision tower, which
    sbsnn leaves out, and the note saying so is kept in ``notes``."""
    text = r.take("text_config", None)
    if text is None:
        text = {}
    if not isinstance(text, dict):
        r.refuse("text_config", "must be an object (the language model's config)")
    text = dict(text)
    if text.get("model_type", text_type) != text_type:
        raise ConfigError(f"{r.source}: text_config's model_type {text['model_type']!r} is not "
                          f"{text_type!r}, the language model a {r.model_type} checkpoint holds")
    text["model_type"] = text_type
    for key in REQUIRED_SIZES if size_defaults else ():
        text.setdefault(key, size_defaults[key])
    sub = ConfigKeys(text, f"{r.source} (text_config)", text_type, r.fields)
    sub.refuse_nulls(NOT_NULL.get(text_type, frozenset()))
    out = read(sub)
    sub.finish(frozenset(sub.ignored_by_reference))
    r.ignored_by_reference.update(own_keys)
    vision = [k for k in r.d if k in own_keys and k.startswith("vision")]
    out["model_type"] = r.model_type
    out["notes"] = [f"{r.source}: a vision-language {r.model_type} checkpoint: sbsnn loads its "
                    f"language model (text_config) and leaves the vision tower out"
                    + (f" ({', '.join(sorted(vision))})" if vision else "")
                    + "; images cannot be given"]
    return out


_GEMMA3_VISION_KEYS = frozenset({"vision_config", "mm_tokens_per_image", "boi_token_index",
                                 "eoi_token_index", "image_token_index", "image_token_id",
                                 "boi_token_id", "eoi_token_id"})


def read_gemma3(r: ConfigKeys) -> dict[str, Any]:
    """Gemma 3's vision-language config (Gemma3ForConditionalGeneration): its text model,
    as Gemma3ForConditionalGeneration runs it on text: the head tied as the top level's
    ``tie_word_embeddings`` says, and no final soft-capping (that class does not apply
    text_config's ``final_logit_softcapping``; a non-null value is refused, since
    Gemma3ForCausalLM would apply it).

    The released configs (gemma-3-4b-it, ...) leave most sizes out of ``text_config``,
    which then take Gemma3TextConfig's defaults, as transformers takes them. Elsewhere
    sbsnn requires the sizes; here a wrong default cannot compute another model: the
    embeddings fix the vocabulary, the per-head q/k norms the head width, q_proj and
    k_proj the numbers of heads, the layer tensors the depth, and a mismatch is refused
    naming the tensor and the defaulted key."""
    out = _text_part(r, "gemma3_text", read_gemma3_text, _GEMMA3_VISION_KEYS,
                     size_defaults=_GEMMA3)
    if out.get("final_logit_softcapping") is not None:
        raise ConfigError(
            f"{r.source}: text_config key 'final_logit_softcapping' = {out['final_logit_softcapping']!r}: "
            "transformers' Gemma3ForConditionalGeneration does not apply it (Gemma3ForCausalLM "
            "does); sbsnn will not pick one: set it to null, or give the text model's own config")
    out["tie_word_embeddings"] = _bool(r, "tie_word_embeddings", r.take("tie_word_embeddings", True))
    r.take("initializer_range", None)
    return out


# ----------------------------------------------------------------------------- Qwen3.5
_QWEN3_5 = dict(vocab_size=248320, hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
                num_attention_heads=16, num_key_value_heads=4, head_dim=256,
                max_position_embeddings=32768, tie_word_embeddings=False)
_QWEN3_5_GDN = dict(linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                    linear_num_key_heads=16, linear_num_value_heads=32)
# Mixer names of the hybrid families' layer_types -> sbsnn's layer kinds.
HYBRID_LAYER_TYPES = {"linear_attention": "gdn", "full_attention": "full",
                      "sliding_attention": "swa", "mamba": "mamba2", "conv": "conv",
                      "attention": "full"}


def _mixer_placement(kinds: list[str], window: int | None = None) -> dict[str, Any]:
    """HybridConfig's layer fields for a model whose layers name their mixers."""
    attn = [i for i, k in enumerate(kinds) if k in ("full", "swa", "attn+mamba2")]
    return {"layer_mixers": kinds, "attn_layers": attn,
            "full_attn_layers": [i for i in attn if kinds[i] == "full"],
            "sliding_window": window if "swa" in kinds else None}


# Keys the released Qwen3.5 / Qwen3-Next configs carry that transformers' models never
# read, harmless at the one value those models compute as (they always gate attention,
# keep GDN states in float32, attend without windows) and refused at any other.
_QWEN_GDN_FIXED = {"attn_output_gate": True, "mamba_ssm_dtype": "float32",
                   "use_sliding_window": False}
# The multi-token-prediction head the released Qwen checkpoints describe (its ``mtp.*``
# tensors are skipped, as transformers' causal LM skips them).
_MTP_KEYS = frozenset({"mtp_num_hidden_layers", "mtp_use_dedicated_embeddings"})


def _fixed_keys(r: ConfigKeys, fixed: dict[str, Any]) -> None:
    """Keys the family's reference ignores, accepted only at the value its model computes
    as (a file giving another describes a model transformers would not run)."""
    for key, value in fixed.items():
        if r.has(key):
            given = r.take(key)
            if type(given) is not type(value) or given != value:
                r.refuse(key, f"is not supported: transformers' {REFERENCE.get(r.model_type)} "
                              f"does not read it and computes as if it were {value!r}; sbsnn "
                              "refuses rather than run another model than the file describes")


def _qwen_gdn_hybrid(r: ConfigKeys, defaults: dict[str, Any], layout: str,
                     text_only_keys: frozenset = frozenset(),
                     required: tuple[str, ...] = REQUIRED_SIZES) -> dict[str, Any]:
    """What Qwen3.5 and Qwen3-Next (and their MoE forms) share: Gated DeltaNet layers
    (``layout`` names the GDN projections; its conv applies ``hidden_act``) and gated
    full attention (q_proj gives the output gate; per-head q/k norms; partial RoPE,
    0.25 by default) placed by ``layer_types`` or ``full_attention_interval``,
    zero-centred RMSNorms (weights stored as w - 1) except the GDN output norm. The MLPs
    are the caller's."""
    out = _decoder_common(r, defaults, sizes=required)
    act = out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")   # MLP and GDN conv
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    _fixed_keys(r, _QWEN_GDN_FIXED)
    r.ignored_by_reference.update(_MTP_KEYS)
    n = out["num_hidden_layers"]
    interval = r.take("full_attention_interval", None) if r.d.get("layer_types") is None else None
    if r.d.get("layer_types") is None:
        interval = 4 if interval is None else interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            r.refuse("full_attention_interval", "must be a positive integer")
        derived = ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                   for i in range(n)]
    else:
        r.ignored_by_reference.add("full_attention_interval")   # layer_types wins
        derived = []
    lt = r.take("layer_types", None)
    if lt is None:
        lt = derived
    if not isinstance(lt, list) or len(lt) != n or any(
            t not in ("linear_attention", "full_attention") for t in lt):
        r.refuse("layer_types", f"must list 'linear_attention' or 'full_attention' for each of "
                                f"the {n} layers")
    g = {k: _positive_int(r, k, r.take_or(k, v)) for k, v in _QWEN3_5_GDN.items()}
    if g["linear_num_value_heads"] % g["linear_num_key_heads"]:
        r.refuse("linear_num_value_heads", f"is not a multiple of linear_num_key_heads "
                                           f"({g['linear_num_key_heads']}): each key head serves "
                                           "a whole group of value heads")
    out.update(attention_bias=bias, o_proj_bias=bias, mlp_bias=False, norm_style="gemma",
               qk_norm=True, attn_output_gate=True,
               rope_parameters=_rope_parameters(
                   r, default_theta=10000.0, default_partial=0.25, text_only_keys=text_only_keys),
               gdn=dict(num_key_heads=g["linear_num_key_heads"],
                        num_value_heads=g["linear_num_value_heads"],
                        key_head_dim=g["linear_key_head_dim"],
                        value_head_dim=g["linear_value_head_dim"],
                        conv_kernel_size=g["linear_conv_kernel_dim"], activation=act,
                        layout=layout))
    out.update(_mixer_placement([HYBRID_LAYER_TYPES[t] for t in lt]))
    return out


# The multimodal RoPE sections of Qwen3.5 (its config class leaves them out of the RoPE
# validation): they coincide for text, whose three position rows are equal.
_MROPE_KEYS = frozenset({"mrope_section", "mrope_interleaved"})


def read_qwen3_5_text(r: ConfigKeys) -> dict[str, Any]:
    """Qwen3.5's language model (Qwen3_5TextConfig): :func:`_qwen_gdn_hybrid` with the
    ``qwen3_5`` GDN layout (separate q|k|v, z, b, a projections), dense SwiGLU MLPs,
    untied head by default. The multimodal RoPE sections (``mrope_section``,
    ``mrope_interleaved``) coincide for text, whose three position rows are equal, so
    they change nothing here."""
    return _qwen_gdn_hybrid(r, _QWEN3_5, "qwen3_5", _MROPE_KEYS)


def _qwen_moe(r: ConfigKeys, out: dict[str, Any], defaults: dict[str, Any],
              moe_layer: Callable[[int], bool], dense_ok: bool) -> dict[str, Any]:
    """The Qwen sparse MoE block (Qwen3-Next, Qwen3.5-MoE) on the layers ``moe_layer``
    picks: a router ``mlp.gate`` (softmax over the experts in float32, the top
    ``num_experts_per_tok``, renormalised if ``norm_topk_prob``), experts of
    ``moe_intermediate_size`` with the model's ``hidden_act``, and one shared expert of
    ``shared_expert_intermediate_size`` scaled by ``sigmoid(mlp.shared_expert_gate(x))``.
    ``num_experts`` 0 (where ``dense_ok``): no MoE layer (as the reference builds it)."""
    ne = r.take("num_experts", defaults["num_experts"])
    if isinstance(ne, bool) or not isinstance(ne, int) or ne < 0 or (ne == 0 and not dense_ok):
        r.refuse("num_experts", "must be an integer >= 0 (0: dense MLPs everywhere)" if dense_ok
                 else "must be a positive integer (every layer of this family is an MoE block)")
    if ne:
        _positive_int(r, "num_experts", ne)     # the size bound
    sizes = {k: r.take(k, defaults[k]) for k in ("num_experts_per_tok", "moe_intermediate_size",
                                                 "shared_expert_intermediate_size")}
    for key in ("output_router_logits", "router_aux_loss_coef"):
        r.ignored_by_reference.add(key)     # the training loss only
    r.ignored_by_reference.update(_MTP_KEYS)
    if not ne:
        for key in sizes:
            r.ignored_by_reference.add(key)  # no MoE block is built
        return dict(out, num_experts=0, dense_layers=[])
    for key, v in sizes.items():
        _positive_int(r, key, v)
    if sizes["num_experts_per_tok"] > ne:
        r.refuse("num_experts_per_tok", f"is more than num_experts ({ne}); each token picks "
                                        "that many distinct experts")
    dense = [i for i in range(out["num_hidden_layers"]) if not moe_layer(i)]
    return dict(out, num_experts=ne, num_experts_per_tok=sizes["num_experts_per_tok"],
                moe_intermediate_size=sizes["moe_intermediate_size"], num_shared_experts=1,
                shared_expert_intermediate_size=sizes["shared_expert_intermediate_size"],
                router_activation="softmax", router_float32=True, shared_expert_gate=True,
                moe_hidden_act=out["hidden_act"], dense_layers=dense)


_QWEN3_NEXT = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                   num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
                   head_dim=256, max_position_embeddings=32768, tie_word_embeddings=False,
                   num_experts=512, num_experts_per_tok=10, moe_intermediate_size=512,
                   shared_expert_intermediate_size=512)


def read_qwen3_next(r: ConfigKeys) -> dict[str, Any]:
    """Qwen3-Next (Qwen3NextConfig, Qwen3NextForCausalLM): :func:`_qwen_gdn_hybrid`
    with the ``qwen3_next`` GDN layout (fused, per-key-head grouped ``in_proj_qkvz`` and
    ``in_proj_ba``), and the Qwen MoE block (:func:`_qwen_moe`) on layer i unless i is in
    ``mlp_only_layers`` or ``(i + 1) % decoder_sparse_step`` is not 0; the other layers
    (all of them with ``num_experts`` 0) hold a SwiGLU MLP of ``intermediate_size``. Its
    RoPE is the plain one (no multimodal sections)."""
    out = _qwen_gdn_hybrid(r, _QWEN3_NEXT, "qwen3_next")
    only = r.take_or("mlp_only_layers", [])
    if not isinstance(only, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in only):
        r.refuse("mlp_only_layers", "must be a list of layer indices (integers)")
    step = r.take("decoder_sparse_step", 1)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        r.refuse("decoder_sparse_step", "must be a positive integer (an MoE block on every "
                                        "step-th layer)")
    out["norm_topk_prob"] = _bool(r, "norm_topk_prob", r.take("norm_topk_prob", True))
    return _qwen_moe(r, out, _QWEN3_NEXT, lambda i: i not in only and (i + 1) % step == 0,
                     dense_ok=True)


_QWEN3_5_MOE = dict(vocab_size=248320, hidden_size=2048, num_hidden_layers=40,
                    num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                    max_position_embeddings=32768, tie_word_embeddings=False, num_experts=256,
                    num_experts_per_tok=8, moe_intermediate_size=512,
                    shared_expert_intermediate_size=512)


def read_qwen3_5_moe_text(r: ConfigKeys) -> dict[str, Any]:
    """Qwen3.5-MoE's language model (Qwen3_5MoeTextConfig, Qwen3_5MoeForCausalLM): as
    Qwen3.5 (:func:`read_qwen3_5_text`), with the Qwen MoE block (:func:`_qwen_moe`) on
    every layer and the top-k weights always renormalised. Its config class has no
    ``intermediate_size`` (no dense MLP), ``norm_topk_prob``, ``decoder_sparse_step`` or
    ``mlp_only_layers``: such keys are refused as not understood (the reference would
    ignore them), except the empty ``mlp_only_layers`` released configs carry."""
    required = tuple(k for k in REQUIRED_SIZES if k != "intermediate_size")
    # released configs carry an empty mlp_only_layers (every layer is MoE either way)
    if r.has("mlp_only_layers") and r.d["mlp_only_layers"] in ([], None):
        r.take("mlp_only_layers")
    out = _qwen_gdn_hybrid(r, _QWEN3_5_MOE, "qwen3_5", _MROPE_KEYS, required)
    out["norm_topk_prob"] = True
    out = _qwen_moe(r, out, _QWEN3_5_MOE, lambda i: True, dense_ok=False)
    # no dense MLP is built; HybridConfig's intermediate_size is set to a valid, unused size
    out["intermediate_size"] = out["moe_intermediate_size"]
    return out


_QWEN3_5_VISION_KEYS = frozenset({"vision_config", "image_token_id", "video_token_id",
                                  "vision_start_token_id", "vision_end_token_id"})


def read_qwen3_5(r: ConfigKeys) -> dict[str, Any]:
    """Qwen3.5's vision-language config (Qwen3_5ForConditionalGeneration): its language
    model, with the head tied as the top level's ``tie_word_embeddings`` says (the
    class ties from there; text_config's own value is not read by it)."""
    out = _text_part(r, "qwen3_5_text", read_qwen3_5_text, _QWEN3_5_VISION_KEYS)
    out["tie_word_embeddings"] = _bool(r, "tie_word_embeddings", r.take("tie_word_embeddings", False))
    return out


# ----------------------------------------------------------------------------- Mamba-2 hybrids
def _number(r: ConfigKeys, key: str, default: float, positive: bool = False) -> float:
    v = r.take(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
            positive and not v > 0):
        r.refuse(key, f"must be a {'positive ' if positive else ''}finite number")
    return float(v)


def _numbers(r: ConfigKeys, key: str, default: list[float], n: int) -> list[float]:
    """A list of ``n`` finite numbers (null: ``default``, as the config classes fill it)."""
    v = r.take_or(key, default)
    if not isinstance(v, list) or len(v) != n or not all(
            not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in v):
        r.refuse(key, f"must list {n} finite numbers")
    return [float(x) for x in v]


_FLOAT_TAGS = {"Infinity": math.inf, "-Infinity": -math.inf}


def _time_step_limit(r: ConfigKeys, key: str = "time_step_limit") -> tuple[float, float]:
    """``time_step_limit``: [min, max] clamping dt on prompts; transformers writes infinity
    as ``{"__float__": "Infinity"}`` (and reads it back)."""
    v = r.take(key, [0.0, math.inf])
    if isinstance(v, (list, tuple)):
        v = [_FLOAT_TAGS.get(x.get("__float__"), x) if isinstance(x, dict) and set(x) == {"__float__"}
             else x for x in v]
    if not isinstance(v, list) or len(v) != 2 or not all(
            not isinstance(x, bool) and isinstance(x, (int, float)) and not math.isnan(x) for x in v) \
            or not 0 <= v[0] <= v[1]:
        r.refuse(key, "must be [min, max] with 0 <= min <= max (the range dt is clamped to on "
                      "prompts)")
    return float(v[0]), float(v[1])


# Mamba sizes beyond these are refused (a damaged config would hang building the model).
_MAMBA_BOUND = 1 << 20


def _mamba2_args(r: ConfigKeys, hidden: int, act: str, d_ssm: Any = None) -> dict[str, Any]:
    """The Mamba-2 mixer arguments both families share (their ``mamba_*`` keys, the
    transformers defaults). ``d_ssm``: Falcon-H1's width of the mixer (None:
    ``mamba_expand * hidden_size``); ``mamba_d_head`` "auto" is that width / heads."""
    def size(key: str, default: int) -> int:
        v = _positive_int(r, key, r.take(key, default))
        if v > _MAMBA_BOUND:
            r.refuse(key, f"is refused: the bound is {_MAMBA_BOUND:,}; the config is damaged")
        return v

    heads = size("mamba_n_heads", 128)
    groups = size("mamba_n_groups", 1)
    expand = size("mamba_expand", 2)
    width = expand * hidden if d_ssm is None else d_ssm
    if width % heads:
        r.refuse("mamba_n_heads", f"does not divide the Mamba width {width} (transformers "
                                  "refuses it)")
    d_head = r.take("mamba_d_head", "auto")
    d_head = width // heads if d_head == "auto" else size("mamba_d_head", d_head)
    if d_head * heads != width:
        r.refuse("mamba_d_head", f"times mamba_n_heads ({heads}) is not the Mamba width {width} "
                                 "(transformers refuses it)")
    if heads % groups:
        r.refuse("mamba_n_groups", f"does not divide mamba_n_heads ({heads}): each group's B "
                                   "and C serve a whole number of heads")
    return dict(num_heads=heads, head_dim=d_head, d_state=size("mamba_d_state", 256),
                n_groups=groups, d_conv=size("mamba_d_conv", 4),
                chunk_size=size("mamba_chunk_size", 256), activation=act,
                conv_bias=_bool(r, "mamba_conv_bias", r.take("mamba_conv_bias", True)),
                bias=_bool(r, "mamba_proj_bias", r.take("mamba_proj_bias", False)),
                time_step_limit=_time_step_limit(r))


_GRANITE = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=None, head_dim=None,
                max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                eos_token_id=2)
# Layer names of granitemoehybrid's layer_types (transformers remaps the legacy ones).
_GRANITE_LAYERS = {"linear_attention": "mamba2", "mamba": "mamba2",
                   "full_attention": "full", "attention": "full"}


def read_granitemoehybrid(r: ConfigKeys) -> dict[str, Any]:
    """Granite 4.0-H (GraniteMoeHybridForCausalLM): Mamba-2 and full-attention layers
    (``layer_types``; absent: every layer Mamba-2), attention with RoPE or none
    (``position_embedding_type``: null or "nope" = NoPE, "rope"), scores scaled by
    ``attention_multiplier``; after each layer's mixer an MoE of ``num_local_experts``
    SwiGLU experts (softmax over the top-k router logits) plus the shared MLP
    (``shared_intermediate_size``), or the shared MLP alone when there are no experts;
    muP: embeddings times ``embedding_multiplier``, both branches times
    ``residual_multiplier``, logits divided by ``logits_scaling``."""
    out = _decoder_common(r, _GRANITE)
    act = out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")  # MLPs, experts, Mamba conv
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    n, hidden = out["num_hidden_layers"], out["hidden_size"]
    if r.has("layer_types") and r.has("layers_block_type") and \
            r.d["layer_types"] != r.d["layers_block_type"]:
        r.refuse("layers_block_type", f"disagrees with layer_types {r.d['layer_types']!r} (the "
                                      "same setting under its old name); which one holds?")
    key = "layer_types" if r.has("layer_types") or not r.has("layers_block_type") else "layers_block_type"
    r.used.update({"layer_types", "layers_block_type"})
    lt = r.d.get(key)
    lt = ["linear_attention"] * n if lt is None else lt
    if not isinstance(lt, list) or len(lt) != n or any(t not in _GRANITE_LAYERS for t in lt):
        r.refuse(key, f"must list one of {sorted(_GRANITE_LAYERS)} for each of the {n} layers")
    if r.take("normalization_function", "rmsnorm") != "rmsnorm":
        r.refuse("normalization_function", "is not supported: transformers' GraniteMoeHybrid "
                                           "ignores this key and builds RMSNorm everywhere "
                                           "(sbsnn reads it only as 'rmsnorm')")
    pos = r.take("position_embedding_type", None)
    if pos not in (None, "nope", "rope"):
        r.refuse("position_embedding_type", "is not one GraniteMoeHybrid implements (null or "
                                            "'nope': no positions; 'rope')")
    rope = _rope_parameters(r, default_theta=10000.0)   # read (and checked) even for NoPE
    experts = r.take("num_local_experts", 8)
    if isinstance(experts, bool) or not isinstance(experts, int) or experts < 0:
        r.refuse("num_local_experts", "must be an integer >= 0 (0: the shared MLP alone)")
    top_k = _positive_int(r, "num_experts_per_tok", r.take("num_experts_per_tok", 2))
    if experts and top_k > experts:
        r.refuse("num_experts_per_tok", f"exceeds num_local_experts ({experts})")
    shared = _positive_int(r, "shared_intermediate_size", r.take("shared_intermediate_size", 1024))
    for key in ("output_router_logits", "router_aux_loss_coef"):   # training only
        r.ignored_by_reference.add(key)
    out.update(attention_bias=bias, o_proj_bias=bias, mlp_bias=False, norm_style="llama",
               attn_rope=pos == "rope", rope_parameters=rope,
               attn_scale=_number(r, "attention_multiplier", 1.0, positive=True),
               embedding_multiplier=_number(r, "embedding_multiplier", 1.0),
               residual_multiplier=_number(r, "residual_multiplier", 1.0),
               logits_divisor=_number(r, "logits_scaling", 1.0),
               mamba2=dict(_mamba2_args(r, hidden, act), rms_norm=True, norm_before_gate=False))
    if out["logits_divisor"] == 0:
        r.refuse("logits_scaling", "must not be 0 (the logits are divided by it)")
    if experts:
        out.update(num_experts=experts, num_experts_per_tok=top_k, moe_hidden_act=act,
                   moe_intermediate_size=out["intermediate_size"], num_shared_experts=1,
                   shared_expert_intermediate_size=shared, router_activation="softmax",
                   norm_topk_prob=True)
    else:   # the dense variant: the shared MLP is the layer's MLP
        out["intermediate_size"] = shared
    out.update(_mixer_placement([_GRANITE_LAYERS[t] for t in lt]))
    return out


_FALCON_H1 = dict(vocab_size=128000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=None,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)


def read_falcon_h1(r: ConfigKeys) -> dict[str, Any]:
    """Falcon-H1 (FalconH1ForCausalLM): every layer runs full attention (RoPE) and Mamba-2
    side by side on the same normed input ("attn+mamba2"), then a SwiGLU MLP, with the
    muP multipliers where FalconH1 applies them (see the HybridConfig fields). Keys of
    the released configs that transformers' FalconH1 does not read (``mamba_use_mlp``,
    ``mlp_expansion_factor``, ``attn_layer_indices``) are accepted at the values its
    model runs (an MLP in every layer, attention in every layer)."""
    out = _decoder_common(r, _FALCON_H1)
    act = out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")  # MLP and Mamba conv
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    n, hidden = out["num_hidden_layers"], out["hidden_size"]
    d_ssm = r.take("mamba_d_ssm", 1024)     # null: mamba_expand * hidden_size
    if d_ssm is not None:
        d_ssm = _positive_int(r, "mamba_d_ssm", d_ssm)
        if d_ssm > _MAMBA_BOUND:
            r.refuse("mamba_d_ssm", f"is refused: the bound is {_MAMBA_BOUND:,}; the config is damaged")
    mamba = _mamba2_args(r, hidden, act, d_ssm)
    mamba.update(out_bias=_bool(r, "projectors_bias", r.take("projectors_bias", False)),
                 rms_norm=_bool(r, "mamba_rms_norm", r.take("mamba_rms_norm", False)),
                 norm_before_gate=_bool(r, "mamba_norm_before_gate",
                                        r.take("mamba_norm_before_gate", True)),
                 in_multiplier=_number(r, "ssm_in_multiplier", 1.0),
                 zxbcdt_multipliers=tuple(_numbers(r, "ssm_multipliers", [1.0] * 5, 5)))
    gate_m, down_m = _numbers(r, "mlp_multipliers", [1.0, 1.0], 2)
    if r.take("mamba_use_mlp", True) is not True:
        r.refuse("mamba_use_mlp", "is not supported: transformers' FalconH1 ignores it and gives "
                                  "every layer an MLP (sbsnn runs the model that way, with true)")
    if r.take("attn_layer_indices", None) is not None:
        r.refuse("attn_layer_indices", "is not supported: transformers' FalconH1 ignores it and "
                                       "runs attention in every layer (sbsnn reads it only as null)")
    r.ignored_by_reference.update({"mlp_expansion_factor", "num_logits_to_keep"})
    out.update(attention_bias=bias, o_proj_bias=bias,
               mlp_bias=_bool(r, "mlp_bias", r.take("mlp_bias", False)), norm_style="llama",
               rope_parameters=_rope_parameters(r, default_theta=10000.0), mamba2=mamba,
               embedding_multiplier=_number(r, "embedding_multiplier", 1.0),
               logits_multiplier=_number(r, "lm_head_multiplier", 1.0),
               key_multiplier=_number(r, "key_multiplier", 1.0),
               attn_in_multiplier=_number(r, "attention_in_multiplier", 1.0),
               attn_out_multiplier=_number(r, "attention_out_multiplier", 1.0),
               ssm_out_multiplier=_number(r, "ssm_out_multiplier", 1.0),
               mlp_gate_multiplier=gate_m, mlp_down_multiplier=down_m)
    out.update(_mixer_placement(["attn+mamba2"] * n))
    return out


_BAMBA = dict(vocab_size=128000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=8, head_dim=None,
              max_position_embeddings=262144, rms_norm_eps=1e-5, tie_word_embeddings=False,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
# BambaConfig passes this partial_rotary_factor to the RoPE whatever the top level says;
# a factor inside rope_parameters (or rope_scaling) wins over it.
_BAMBA_PARTIAL = 0.5


def read_bamba(r: ConfigKeys) -> dict[str, Any]:
    """Bamba (BambaConfig, BambaForCausalLM): Mamba-2 layers and full-attention layers at
    ``attn_layer_indices`` (null or empty: none), each followed by a SwiGLU MLP
    (``mlp_bias``); attention with q/k/v/o biases by ``attention_bias``, ``head_dim``
    when given (else hidden / heads), partial RoPE on half of each head (BambaConfig
    hard-codes 0.5; a ``partial_rotary_factor`` inside ``rope_parameters`` wins); Mamba-2
    from the ``mamba_*`` keys and ``time_step_limit``, its gated norm ``norm(y * silu(z))``
    in ``n_groups`` groups, its conv activation ``hidden_act``. ``z_loss_coefficient``
    (a training loss) and ``num_logits_to_keep`` (generation) change no logit."""
    out = _decoder_common(r, _BAMBA)
    act = out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")    # MLP and Mamba conv
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
    n, hidden = out["num_hidden_layers"], out["hidden_size"]
    if r.has("layer_types"):
        r.refuse("layer_types", "is not read by BambaConfig (its layer types derive from "
                                "attn_layer_indices, and transformers fails on this key); give "
                                "attn_layer_indices instead")
    idx = r.take("attn_layer_indices", None) or []
    if not isinstance(idx, list) or any(isinstance(i, bool) or not isinstance(i, int)
                                        or not 0 <= i < n for i in idx):
        r.refuse("attn_layer_indices", f"must list indices of layers (0 to {n - 1}); "
                                       "BambaConfig would drop the others without a word")
    rope = _rope_parameters(r, default_theta=10000.0, default_partial=_BAMBA_PARTIAL)
    given = r.d.get("rope_scaling") or r.d.get("rope_parameters") or {}
    in_force = given.get("partial_rotary_factor", _BAMBA_PARTIAL)
    top = r.d.get("partial_rotary_factor")
    if top is not None and top != in_force:
        r.refuse("partial_rotary_factor", f"is not read by BambaConfig, which rotates with "
                                          f"{in_force!r} (rope_parameters', or its fixed 0.5); "
                                          "remove it or set it inside rope_parameters")
    rope["partial_rotary_factor"] = in_force
    r.ignored_by_reference.update({"z_loss_coefficient", "num_logits_to_keep"})
    out.update(attention_bias=bias, o_proj_bias=bias,
               mlp_bias=_bool(r, "mlp_bias", r.take("mlp_bias", False)), norm_style="llama",
               rope_parameters=rope,
               mamba2=dict(_mamba2_args(r, hidden, act), rms_norm=True, norm_before_gate=False))
    out.update(_mixer_placement(["full" if i in idx else "mamba2" for i in range(n)]))
    return out


_NEMOTRON_H = dict(vocab_size=131072, hidden_size=4096, intermediate_size=21504,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                   max_position_embeddings=4096, layer_norm_epsilon=1e-5,
                   tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# hybrid_override_pattern's letters and layers_block_type's names -> sbsnn's layer kinds
# (an MLP layer and an MoE layer are both "mlp": dense_layers tells them apart).
_NEMOTRON_PATTERN = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}
_NEMOTRON_KINDS = {"linear_attention": "mamba2", "full_attention": "full", "mlp": "mlp",
                   "moe": "mlp"}
# The older key names NemotronHConfig still reads (the older one wins when both are given).
_NEMOTRON_LEGACY = {"n_groups": "mamba_n_groups", "conv_kernel": "mamba_d_conv",
                    "expand": "mamba_expand", "time_step_min": "mamba_dt_min",
                    "time_step_max": "mamba_dt_max", "time_step_limit": "mamba_dt_limit",
                    "time_step_floor": "mamba_dt_init_floor", "use_conv_bias": "mamba_conv_bias",
                    "chunk_size": "mamba_chunk_size"}
# Keys NemotronHForCausalLM does not read in the forward pass: initialisation, kernels,
# the multi-token-prediction head (its mtp.* tensors are skipped), generation, training,
# the Mamba width factor (the width is mamba_num_heads * mamba_head_dim).
_NEMOTRON_IGNORED = frozenset({
    "use_mamba_kernels", "rescale_prenorm_residual", "time_step_max", "time_step_floor",
    "mamba_dt_max", "mamba_dt_init_floor", "expand", "mamba_expand", "num_logits_to_keep",
    "output_router_logits", "moe_shared_expert_overlap", "num_nextn_predict_layers",
    "mtp_layers_block_type", "mtp_hybrid_override_pattern",
    # RoPE settings NVIDIA's exports write (NVIDIA-Nemotron-3-Nano-30B-A3B): NemotronH's
    # attention applies no positions at all (NoPE), so no value of these is ever read
    "rope_theta", "partial_rotary_factor"})
# ... and keys it ignores that are harmless only at the value its model computes as if.
_NEMOTRON_FIXED = {"residual_in_fp32": False, "attention_bias": False, "mamba_proj_bias": False,
                   "sliding_window": None, "mamba_ssm_cache_dtype": "float32",
                   "n_shared_experts": 1, "moe_latent_size": None}


def _nemotron_layers(r: ConfigKeys) -> list[str]:
    """``layers_block_type`` (or its alias ``layer_types``), else as NemotronHConfig derives
    it from ``hybrid_override_pattern``, else its default; ``num_hidden_layers`` (which
    NemotronHConfig ignores) must agree with it."""
    lists = {k: r.take(k, None) for k in ("layers_block_type", "layer_types")}
    given = [k for k, v in lists.items() if v is not None]
    if len(given) == 2 and lists["layers_block_type"] != lists["layer_types"]:
        r.refuse("layer_types", "disagrees with layers_block_type (the same setting under its "
                                "alias); which one holds?")
    pattern = r.take("hybrid_override_pattern", None)
    if pattern is not None and (not isinstance(pattern, str) or not pattern
                                or set(pattern) - set(_NEMOTRON_PATTERN)):
        r.refuse("hybrid_override_pattern", "must be a string of M (Mamba-2), * (attention), "
                                            "- (MLP) and E (MoE), one letter per layer")
    from_pattern = None if pattern is None else [_NEMOTRON_PATTERN[c] for c in pattern]
    key = given[0] if given else "hybrid_override_pattern"
    lt = lists[given[0]] if given else from_pattern
    if lt is None:
        key, lt = "layers_block_type", ["linear_attention", "moe", "full_attention", "mlp"]
    if not isinstance(lt, list) or not lt or any(t not in _NEMOTRON_KINDS for t in lt):
        r.refuse(key, f"must list one of {sorted(_NEMOTRON_KINDS)} per layer")
    if given and from_pattern is not None and from_pattern != lt:
        r.refuse("hybrid_override_pattern", f"disagrees with {given[0]} {lt!r}; which one holds?")
    layers = r.take("num_hidden_layers", None)
    if layers is not None and layers != len(lt):
        r.refuse("num_hidden_layers", f"disagrees with the {len(lt)} layers of {key} "
                                      "(NemotronHConfig counts those and ignores this key)")
    return lt


def _legacy(r: ConfigKeys, key: str, default: Any) -> tuple[str, Any]:
    """(the key in force, its value) for a NemotronHConfig key with an older name."""
    old = _NEMOTRON_LEGACY[key]
    if r.has(old) and r.has(key) and r.d[old] != r.d[key]:
        r.refuse(old, f"disagrees with {key} = {r.d[key]!r} (the same setting under its older "
                      "name, which transformers prefers); which one holds?")
    if r.has(old):
        r.used.add(key)
        return old, r.take(old)
    r.used.add(old)
    return key, r.take(key, default)


def read_nemotron_h(r: ConfigKeys) -> dict[str, Any]:
    """Nemotron-H (NemotronHConfig, NemotronHForCausalLM): blocks of one norm and one
    sub-layer, ``x + sub(norm(x))``, the sub-layer a Mamba-2 mixer, attention (no
    positions, no biases, ``head_dim``), a gateless MLP ``down(act(up(x)))`` with
    ``mlp_hidden_act`` (relu2) or an MoE of such experts (sigmoid router with
    ``e_score_correction_bias`` choosing the experts, top ``num_experts_per_tok``
    renormalised with eps 1e-20, times ``routed_scaling_factor``, plus one shared MLP);
    Mamba-2 of ``mamba_num_heads`` heads of ``mamba_head_dim``, ``n_groups``, dt clamped to
    ``(time_step_min, inf)`` on prompts, conv activation ``mamba_hidden_act``, biases
    ``use_bias`` (projections) and ``use_conv_bias``. Its head is never tied (the class
    ties nothing, whatever ``tie_word_embeddings`` says)."""
    lt = _nemotron_layers(r)
    out = _decoder_common(r, _NEMOTRON_H, eps_key="layer_norm_epsilon",
                          sizes=tuple(k for k in REQUIRED_SIZES if k != "num_hidden_layers"))
    out["num_hidden_layers"] = len(lt)
    _bool(r, "tie_word_embeddings", r.take("tie_word_embeddings", False))
    out["tie_word_embeddings"] = False
    # NVIDIA's exports restate the norms' epsilon as norm_eps; NemotronH reads only
    # layer_norm_epsilon, so another value would describe a model transformers does not run
    if r.has("norm_eps") and r.take("norm_eps") != out["norm_eps"]:
        r.refuse("norm_eps", f"restates layer_norm_epsilon (in force: {out['norm_eps']!r}) and "
                             "disagrees with it; transformers ignores this key, so which one "
                             "holds is unclear: fix it")
    act = out["hidden_act"] = _hidden_act(r, "mlp_hidden_act", "relu2")

    def size(key: str, v: Any) -> int:
        v = _positive_int(r, key, v)
        if v > _MAMBA_BOUND:
            r.refuse(key, f"is refused: the bound is {_MAMBA_BOUND:,}; the config is damaged")
        return v

    heads = size("mamba_num_heads", r.take("mamba_num_heads", 128))
    d_head = size("mamba_head_dim", r.take("mamba_head_dim", 64))
    groups, conv, chunk = (size(*_legacy(r, key, default)) for key, default in
                           (("n_groups", 8), ("conv_kernel", 4), ("chunk_size", 128)))
    gkey = "mamba_n_groups" if r.has("mamba_n_groups") else "n_groups"
    if heads % groups:
        r.refuse(gkey, f"does not divide mamba_num_heads ({heads}): each group's B and C serve "
                       "a whole number of heads")
    bkey, conv_bias = _legacy(r, "use_conv_bias", True)
    tkey, t_min = _legacy(r, "time_step_min", 0.001)
    if isinstance(t_min, bool) or not isinstance(t_min, (int, float)) or not 0 <= t_min < math.inf:
        r.refuse(tkey, "must be a finite number >= 0 (the least dt on prompts)")
    lkey, _ = _legacy(r, "time_step_limit", None)
    if r.has(lkey) and _time_step_limit(r, lkey) not in ((0.0, math.inf), (float(t_min), math.inf)):
        r.refuse(lkey, f"is not read by NemotronH, which clamps dt to (time_step_min, inf) = "
                       f"({t_min!r}, inf); sbsnn reads it only as [0, inf] or that range")
    mamba_act = _hidden_act(r, "mamba_hidden_act", "silu")
    mamba = dict(num_heads=heads, head_dim=d_head, d_state=size("ssm_state_size", r.take("ssm_state_size", 128)),
                 n_groups=groups, d_conv=conv, chunk_size=chunk, activation=mamba_act,
                 conv_bias=_bool(r, bkey, conv_bias),
                 bias=_bool(r, "use_bias", r.take("use_bias", False)),
                 time_step_limit=(float(t_min), math.inf), rms_norm=True, norm_before_gate=False)
    for key, value in _NEMOTRON_FIXED.items():
        given = r.take(key, value)
        if type(given) is not type(value) or given != value:
            r.refuse(key, f"is not supported: transformers' NemotronH computes as if it were "
                          f"{value!r} (it ignores this key or builds no other form); sbsnn "
                          "refuses rather than guess")
    r.ignored_by_reference.update(_NEMOTRON_IGNORED)
    out.update(attention_bias=False, o_proj_bias=False, norm_style="fla", attn_rope=False,
               mlp_bias=_bool(r, "mlp_bias", r.take("mlp_bias", False)), mlp_gated=False,
               block_mlp=False, mamba2=mamba)
    moe = [i for i, t in enumerate(lt) if t == "moe"]
    experts_key = "num_local_experts" if r.has("num_local_experts") else "n_routed_experts"
    r.used.update({"num_local_experts", "n_routed_experts"})
    if r.has("num_local_experts") and r.has("n_routed_experts") and \
            r.d["num_local_experts"] != r.d["n_routed_experts"]:
        r.refuse("num_local_experts", "disagrees with n_routed_experts (its alias); which one holds?")
    moe_keys = {"num_experts_per_tok": 2, "moe_intermediate_size": 7688,
                "moe_shared_expert_intermediate_size": 7688, "routed_scaling_factor": 1.0,
                "n_group": 1, "topk_group": 1, "norm_topk_prob": True}
    if not moe:
        r.ignored_by_reference.update(moe_keys)
        r.ignored_by_reference.update({"num_local_experts", "n_routed_experts"})
        out.update(num_experts=0)
    else:
        ne = _positive_int(r, experts_key, r.d.get(experts_key, 8))
        k = _positive_int(r, "num_experts_per_tok", r.take("num_experts_per_tok", 2))
        if k > ne:
            r.refuse("num_experts_per_tok", f"exceeds {experts_key} ({ne})")
        groups, topk = (r.take(key, 1) for key in ("n_group", "topk_group"))
        for key, v in (("n_group", groups), ("topk_group", topk)):
            _positive_int(r, key, v)
        if topk != groups or ne % groups or ne // groups < 2:
            r.refuse("topk_group" if topk != groups else "n_group",
                     f"(n_group {groups}, topk_group {topk}, {ne} experts): sbsnn routes "
                     "exactly only when every group is kept (topk_group = n_group, which "
                     "divides the experts into groups of two or more); group-limited "
                     "routing is not implemented")
        if out["mlp_bias"]:
            r.refuse("mlp_bias", "is not supported with MoE layers (the shared MLP's biases "
                                 "are not implemented)")
        scale = _number(r, "routed_scaling_factor", 1.0, positive=True)
        out.update(num_experts=ne, num_experts_per_tok=k,
                   moe_intermediate_size=_positive_int(
                       r, "moe_intermediate_size", r.take("moe_intermediate_size", 7688)),
                   num_shared_experts=1,
                   shared_expert_intermediate_size=_positive_int(
                       r, "moe_shared_expert_intermediate_size",
                       r.take("moe_shared_expert_intermediate_size", 7688)),
                   router_activation="sigmoid", router_float32=True, moe_expert_bias=True,
                   norm_topk_prob=_bool(r, "norm_topk_prob", r.take("norm_topk_prob", True)),
                   moe_norm_eps=1e-20, routed_scaling_factor=scale, moe_hidden_act=act,
                   dense_layers=[i for i in range(len(lt)) if i not in moe])
    out.update(_mixer_placement([_NEMOTRON_KINDS[t] for t in lt]))
    return out


# ----------------------------------------------------------------------------- LFM2
_LFM2 = dict(num_key_value_heads=8, head_dim=None, max_position_embeddings=128_000,
             norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
# Keys of Liquid AI's own configs that Lfm2Config does not read (it keeps them as plain
# attributes; its model never looks at them). Each restates a value read under another
# name and must equal it: a file where they differ describes another model than the one
# transformers runs, and is refused.
_LFM2_RESTATED = {"block_dim": "hidden_size", "conv_dim": "hidden_size",
                  "conv_dim_out": "hidden_size", "num_heads": "num_attention_heads",
                  "block_norm_eps": "norm_eps", "theta": "rope_theta"}
# ... settings harmless at the one value transformers' model computes (RoPE on, a
# SwiGLU MLP, float weights) and refused at any other ...
_LFM2_FIXED = {"use_pos_enc": True, "block_use_swiglu": True,
               "block__name_mlp": "parallel_mlp_merged",
               "block_ffn_use_quantized_params": False, "ffn_use_quantized_params": False}
# ... and training-time settings (initialisation, kernels, tensor parallelism).
_LFM2_TRAINING = frozenset({
    "block_use_xavier_init", "conv_use_xavier_init", "block_mlp_init_scale",
    "block_out_init_scale", "block_ffn_te_autocast", "ffn_te_autocast",
    "block_sequence_parallel_norm_across_tp", "sequence_parallel_norm_across_tp",
    # the base model's name Unsloth writes into the fine-tunes it saves; Lfm2Config keeps
    # it as a plain attribute and nothing reads it
    "model_name"})


def lfm2_ff_dim(size: int, auto_adjust: bool, multiplier: float, multiple_of: int) -> int:
    """Width of LFM2's MLP as Lfm2MLP derives it from ``intermediate_size``: with
    ``block_auto_adjust_ff_dim``, two thirds of it (truncated), times
    ``block_ffn_dim_multiplier`` (truncated), rounded up to a multiple of
    ``block_multiple_of``; without, ``intermediate_size`` itself."""
    if not auto_adjust:
        return size
    size = int(multiplier * int(2 * size / 3))
    return multiple_of * ((size + multiple_of - 1) // multiple_of)


def _lfm2_layer_types(r: ConfigKeys, n: int) -> list[str]:
    """``layer_types`` ('conv' / 'full_attention'), or as Lfm2Config derives it from
    ``full_attn_idxs`` (null or absent: every layer attention). Lfm2Config ignores
    full_attn_idxs when layer_types is given; sbsnn requires the two to agree, and
    refuses indices outside the model (Lfm2Config would drop them without a word)."""
    idxs = r.take("full_attn_idxs", None)
    if idxs is not None and (not isinstance(idxs, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in idxs)):
        r.refuse("full_attn_idxs", f"must list indices of layers (0 to {n - 1})")
    full = range(n) if idxs is None else set(idxs)
    derived = ["full_attention" if i in full else "conv" for i in range(n)]
    lt = r.take("layer_types", None)
    if lt is None:
        return derived
    if not isinstance(lt, list) or len(lt) != n or any(
            t not in ("conv", "full_attention") for t in lt):
        r.refuse("layer_types", f"must list 'conv' or 'full_attention' for each of the {n} "
                                "layers (Lfm2Model masks no other kind)")
    if idxs is not None and lt != derived:
        r.refuse("full_attn_idxs", f"disagrees with layer_types {lt!r}; transformers would "
                                   "follow layer_types: remove full_attn_idxs or fix it")
    return lt


def _lfm2_common(r: ConfigKeys, sizes: tuple[str, ...]) -> dict[str, Any]:
    """What LFM2 and LFM2-MoE share: the decoder keys (``norm_eps``; ``tie_embedding``
    overrides ``tie_word_embeddings`` in both config classes), attention (GQA,
    ``head_dim`` when given, per-head q/k RMSNorms before RoPE, no biases), the short
    convolution (``conv_L_cache``, ``conv_bias``), RMSNorm ``w * norm(x)``, and the
    older keys of Liquid AI's configs both classes ignore."""
    if r.has("head_dim") and r.d["head_dim"] is None:
        r.refuse("head_dim", f"is refused: {REFERENCE[r.model_type]} keeps the null (head_dim "
                             "is none of its fields) and its attention fails on it; give "
                             "head_dim, or remove the key for hidden_size / num_attention_heads")
    out = _decoder_common(r, _LFM2, eps_key="norm_eps", sizes=sizes)
    if r.has("tie_embedding"):
        out["tie_word_embeddings"] = _bool(r, "tie_embedding", r.take("tie_embedding"))
    rope = _rope_parameters(r, default_theta=1e6)
    out.update(hidden_act="silu", attention_bias=False, o_proj_bias=False, mlp_bias=False,
               norm_style="llama", qk_norm=True, rope_parameters=rope,
               short_conv=dict(L_cache=_positive_int(r, "conv_L_cache", r.take("conv_L_cache", 3)),
                               bias=_bool(r, "conv_bias", r.take("conv_bias", False))))
    restated = {"hidden_size": out["hidden_size"], "norm_eps": out["norm_eps"],
                "num_attention_heads": out["num_attention_heads"],
                "rope_theta": rope["rope_theta"]}
    for key, of in _LFM2_RESTATED.items():
        if r.has(key) and r.take(key) != restated[of]:
            r.refuse(key, f"restates {of} (in force: {restated[of]!r}) and disagrees with it; "
                          "transformers ignores this key, so which one holds is unclear: fix it")
    for key, value in _LFM2_FIXED.items():
        given = r.take(key, value)
        if type(given) is not type(value) or given != value:
            r.refuse(key, f"is not supported: transformers' {r.model_type} computes as if it "
                          f"were {value!r} (it ignores this key); sbsnn refuses rather than guess")
    r.ignored_by_reference.update(_LFM2_TRAINING)
    return out


def read_lfm2(r: ConfigKeys) -> dict[str, Any]:
    """LFM2 / LFM2.5 (Lfm2Config, Lfm2ForCausalLM): short-convolution and attention
    layers (:func:`_lfm2_common`, placed by :func:`_lfm2_layer_types`), SwiGLU MLPs of
    the width :func:`lfm2_ff_dim` derives, tied head by default. The older name
    ``block_ff_dim`` overrides ``intermediate_size``, as in Lfm2Config."""
    out = _lfm2_common(r, tuple(k for k in REQUIRED_SIZES if k != "intermediate_size"))
    if r.has("block_ff_dim"):
        key = "block_ff_dim"
        if r.has("intermediate_size"):      # overridden, but still a size Lfm2Config checks
            _positive_int(r, "intermediate_size", r.take("intermediate_size"))
    else:
        key = "intermediate_size"
    size = _positive_int(r, key, r.take(key))
    auto = _bool(r, "block_auto_adjust_ff_dim", r.take("block_auto_adjust_ff_dim", True))
    mult = r.take("block_ffn_dim_multiplier", 1.0)
    multiple = r.take("block_multiple_of", 256)
    if auto:    # Lfm2MLP reads the two only when it adjusts the width
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not mult > 0:
            r.refuse("block_ffn_dim_multiplier", "must be a positive number")
        multiple = _positive_int(r, "block_multiple_of", multiple)
    ff = lfm2_ff_dim(size, auto, mult, multiple)
    bound = SIZE_BOUNDS["intermediate_size"][0]
    if not 0 < ff <= bound:
        r.refuse(key, f"gives an MLP width of {ff} (block_auto_adjust_ff_dim {auto}, "
                      f"block_ffn_dim_multiplier {mult!r}, block_multiple_of {multiple!r}); "
                      f"it must be between 1 and {bound:,}")
    out["intermediate_size"] = ff
    kinds = [HYBRID_LAYER_TYPES[t] for t in _lfm2_layer_types(r, out["num_hidden_layers"])]
    out.update(_mixer_placement(kinds))
    return out


_LFM2_MOE = dict(moe_intermediate_size=1792, num_dense_layers=2, num_experts_per_tok=4,
                 num_experts=32)


def read_lfm2_moe(r: ConfigKeys) -> dict[str, Any]:
    """LFM2-MoE (Lfm2MoeConfig, Lfm2MoeForCausalLM): LFM2's layers (:func:`_lfm2_common`;
    ``layer_types`` required, Lfm2MoeConfig derives none), the first ``num_dense_layers``
    with a SwiGLU MLP of ``intermediate_size`` (not adjusted), the rest with
    ``num_experts`` SwiGLU experts of ``moe_intermediate_size``: sigmoid router, the top
    ``num_experts_per_tok`` chosen by probability plus ``expert_bias`` when
    ``use_expert_bias``, weighted by the unbiased probabilities, renormalised
    (``norm_topk_prob``, eps 1e-6) and times ``routed_scaling_factor``."""
    out = _lfm2_common(r, REQUIRED_SIZES)
    n = out["num_hidden_layers"]
    lt = r.take("layer_types", None)
    if not isinstance(lt, list) or len(lt) != n or any(t not in ("conv", "full_attention")
                                                        for t in lt):
        r.refuse("layer_types", f"must list 'conv' or 'full_attention' for each of the {n} "
                                "layers (Lfm2MoeConfig derives none, and Lfm2MoeModel masks no "
                                "other kind)")
    sizes = {k: _positive_int(r, k, r.take(k, v)) for k, v in _LFM2_MOE.items()
             if k != "num_dense_layers"}
    dense = r.take("num_dense_layers", _LFM2_MOE["num_dense_layers"])
    if isinstance(dense, bool) or not isinstance(dense, int) or dense < 0:
        r.refuse("num_dense_layers", "must be an integer >= 0")
    if sizes["num_experts_per_tok"] > sizes["num_experts"]:
        r.refuse("num_experts_per_tok", f"exceeds num_experts ({sizes['num_experts']})")
    scale = r.take("routed_scaling_factor", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        r.refuse("routed_scaling_factor", "must be a positive number")
    r.take("output_router_logits", False)    # training: the router's auxiliary loss
    out.update(sizes, dense_layers=list(range(min(dense, n))), router_activation="sigmoid",
               norm_topk_prob=_bool(r, "norm_topk_prob", r.take("norm_topk_prob", True)),
               moe_norm_eps=1e-6, routed_scaling_factor=float(scale),
               moe_expert_bias=_bool(r, "use_expert_bias", r.take("use_expert_bias", True)))
    out.update(_mixer_placement([HYBRID_LAYER_TYPES[t] for t in lt]))
    return out

def read_qwen3_5_moe(r: ConfigKeys) -> dict[str, Any]:
    """Qwen3.5-MoE's vision-language config (Qwen3_5MoeForConditionalGeneration): its
    language model (:func:`read_qwen3_5_moe_text`), tied as the top level says."""
    out = _text_part(r, "qwen3_5_moe_text", read_qwen3_5_moe_text, _QWEN3_5_VISION_KEYS)
    out["tie_word_embeddings"] = _bool(r, "tie_word_embeddings", r.take("tie_word_embeddings", False))
    return out


READERS: dict[str, Callable[[ConfigKeys], dict[str, Any]]] = {
    "sbsnn_hybrid": read_sbsnn_hybrid,
    "gla_swa": read_gla_swa,
    "llama": read_llama,
    "mistral": read_mistral,
    "qwen2": read_qwen2,
    "qwen3": read_qwen3,
    "gemma3_text": read_gemma3_text,
    "gemma3": read_gemma3,
    "qwen3_5_text": read_qwen3_5_text,
    "qwen3_5": read_qwen3_5,
    "granitemoehybrid": read_granitemoehybrid,
    "falcon_h1": read_falcon_h1,
    "lfm2": read_lfm2,
    "lfm2_moe": read_lfm2_moe,
    "qwen3_next": read_qwen3_next,
    "qwen3_5_moe_text": read_qwen3_5_moe_text,
    "qwen3_5_moe": read_qwen3_5_moe,
    "bamba": read_bamba,
    "nemotron_h": read_nemotron_h,
}
_HINTS = {
    "gemma2": "Gemma 2 is not supported (Gemma 3 text models are)",
}


def _main_theta(kwargs: dict[str, Any]) -> None:
    """``rope_theta`` of the HybridConfig: the base of the (global) RoPE, for display."""
    rp = kwargs.get("rope_parameters")
    if rp:
        kwargs["rope_theta"] = float(rp.get("full_attention", rp)["rope_theta"])


def read_config(d: dict[str, Any], source: str = "config", *, config_class):
    """A config.json dict of any supported family -> a ``config_class`` (the dataclass
    :class:`~sbsnn.models.config.HybridConfig`, whose ``from_dict`` calls this: the
    config module imports this one, never the other way round)."""
    mt = d.get("model_type")
    if not isinstance(mt, str) or mt not in READERS:
        hint = (_HINTS.get(mt) if isinstance(mt, str) else None) or f"sbsnn reads {', '.join(READERS)}"
        what = (f"model_type {mt!r}" if mt is not None else
                f"config key 'model_type' is {'null' if 'model_type' in d else 'missing'}")
        raise ConfigError(f"{source}: {what} (architectures "
                              f"{d.get('architectures')}) is not supported; {hint}")
    r = ConfigKeys(d, source, mt, frozenset(f.name for f in dataclasses.fields(config_class)))
    try:
        r.refuse_nulls(NOT_NULL.get(mt, frozenset()))
        kwargs = READERS[mt](r)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"{source}: {e}") from None
    extra = r.finish(frozenset(r.ignored_by_reference))
    try:
        if mt != "sbsnn_hybrid":
            _main_theta(kwargs)
        cfg = config_class(**kwargs, extra=extra,
                           source_config=None if mt == "sbsnn_hybrid" else dict(d))
    except CheckpointError as e:
        raise type(e)(f"{source}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        # a field of the wrong type (a string where a number is needed, ...)
        raise ConfigError(f"{source}: a field has the wrong type or value ({type(e).__name__}: "
                          f"{e}); fix config.json") from None
    return cfg
