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
}
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
             "qwen3_5": "Qwen3_5Config", "qwen3_next": "Qwen3NextConfig",
             "qwen3_5_moe_text": "Qwen3_5MoeTextConfig", "qwen3_5_moe": "Qwen3_5MoeConfig",
             "gla_swa": "SpikingBrain's GLAswaConfig", "sbsnn_hybrid": "sbsnn's HybridConfig"}
# The sizes that define every tensor's shape: a config without them is refused (the
# reference would take its family's default, say 32 heads, and fail on a shape, or, for
# the number of heads, silently compute another model).
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")

# HybridConfig fields a family's config class does not have (the reader sets them to an
# unused valid value): never named as "left out of config.json".
NOT_CONFIG_KEYS = {"qwen3_5_moe_text": frozenset({"intermediate_size"}),
                   "qwen3_5_moe": frozenset({"intermediate_size"})}

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
# The Qwen MoE block (Qwen3-Next, Qwen3.5-MoE): router mlp.gate, one shared expert
# mlp.shared_expert (its gate mlp.shared_expert_gate keeps its name). Experts stored fused
# (transformers 5's own layout) are split first (split_fused_experts).
_QWEN_MOE_RENAMES = [(re.compile(r"\.mlp\.gate\."), ".mlp.router."),
                     (re.compile(r"\.mlp\.shared_expert\."), ".mlp.shared_experts.0.")]
RENAMES = {"llama": _LLAMA_RENAMES, "mistral": _LLAMA_RENAMES, "qwen2": _LLAMA_RENAMES,
           "qwen3": _LLAMA_RENAMES, "gemma3_text": _GEMMA_RENAMES,
           "gemma3": _LANGUAGE_MODEL + _GEMMA_RENAMES, "qwen3_5_text": _LANGUAGE_MODEL + _LLAMA_RENAMES,
           "qwen3_5": _LANGUAGE_MODEL + _LLAMA_RENAMES,
           "qwen3_next": _LLAMA_RENAMES + _QWEN_MOE_RENAMES,
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
}


_FUSED_EXPERTS = re.compile(r"^(.+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def split_fused_experts(raw: dict[str, Any], origin: dict[str, Any]
                        ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Experts stored as transformers 5 holds them (``save_pretrained(...,
    save_original_format=False)``, or a file written from its state dict), one 3-D tensor
    per kind: ``mlp.experts.gate_up_proj [E, 2I, H]`` (each expert's gate rows, then its
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


# Per-family changes to the tensors as read, before they are renamed (fill_state).
TENSOR_TRANSFORMS = {"qwen3_next": split_fused_experts, "qwen3_5_moe_text": split_fused_experts,
                     "qwen3_5_moe": split_fused_experts}


def rename_key(key: str, model_type: str) -> str:
    """A tensor name of ``model_type``'s checkpoints -> sbsnn's module name (sbsnn's own
    names pass through unchanged)."""
    for pattern, repl in RENAMES.get(model_type, ()):
        key = pattern.sub(repl, key)
    return key


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


def _decoder_common(r: ConfigKeys, defaults: dict[str, Any],
                    required: tuple[str, ...] = REQUIRED_SIZES) -> dict[str, Any]:
    """The keys every Hugging Face decoder family shares (``required``: the sizes the
    family's config class has, refused when absent)."""
    out: dict[str, Any] = {"model_type": r.model_type}
    for key in required:
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
    eps = r.take("rms_norm_eps", defaults.get("rms_norm_eps", 1e-6))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        r.refuse("rms_norm_eps", "must be a non-negative number")
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
               own_keys: frozenset[str]) -> dict[str, Any]:
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
    Gemma3ForCausalLM would apply it)."""
    out = _text_part(r, "gemma3_text", read_gemma3_text, _GEMMA3_VISION_KEYS)
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
    attn = [i for i, k in enumerate(kinds) if k in ("full", "swa")]
    return {"layer_mixers": kinds, "attn_layers": attn,
            "full_attn_layers": [i for i in attn if kinds[i] == "full"],
            "sliding_window": window if "swa" in kinds else None}


def _qwen_gdn_hybrid(r: ConfigKeys, defaults: dict[str, Any], layout: str,
                     text_only_keys: frozenset = frozenset(),
                     required: tuple[str, ...] = REQUIRED_SIZES) -> dict[str, Any]:
    """What Qwen3.5 and Qwen3-Next (and their MoE forms) share: Gated DeltaNet layers
    (``layout`` names the GDN projections; its conv applies ``hidden_act``) and gated
    full attention (q_proj gives the output gate; per-head q/k norms; partial RoPE,
    0.25 by default) placed by ``layer_types`` or ``full_attention_interval``,
    zero-centred RMSNorms (weights stored as w - 1) except the GDN output norm. The MLPs
    are the caller's."""
    out = _decoder_common(r, defaults, required)
    act = out["hidden_act"] = _hidden_act(r, "hidden_act", "silu")   # MLP and GDN conv
    bias = _bool(r, "attention_bias", r.take("attention_bias", False))
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


# The multi-token-prediction head released Qwen MoE checkpoints describe (its ``mtp.*``
# tensors are skipped, as the causal LM of transformers skips them).
_MTP_KEYS = frozenset({"mtp_num_hidden_layers", "mtp_use_dedicated_embeddings"})


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
    ignore them)."""
    required = tuple(k for k in REQUIRED_SIZES if k != "intermediate_size")
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
    "qwen3_next": read_qwen3_next,
    "qwen3_5_moe_text": read_qwen3_5_moe_text,
    "qwen3_5_moe": read_qwen3_5_moe,
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
