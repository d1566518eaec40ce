"""What a model is made of and what it costs to decode, from its config alone.

:func:`model_info` counts layers by kind, parameters (total and active per token) and
the bytes a :class:`~sbsnn.models.hybrid.DecodeState` holds per sequence at given
context lengths. No weights are allocated, so it answers instantly for a 7B or 76B
config. The numbers mirror the modules in ``hybrid.py``, ``gla.py``, ``attention.py``
and ``layers.py`` exactly (the tests compare them with a real model's
``parameters()`` and ``DecodeState.nbytes()``).

Decode state per sequence (``context`` = tokens consumed, sink tokens not included):

* GLA layer: one ``[Hkv, d, d]`` state (stored per key/value head; query heads of a
  group share it exactly). Upstream fla repeats k and v to every query head and keeps
  ``[H, d, d]``; that figure is reported separately (``*_upstream`` keys).
* Window layer: sink slots plus a ring of ``window`` slots, each holding a key and a
  value ``[Hkv, d]`` in the model dtype and one int64 position. The ring is allocated
  whole on the first token, so its size does not depend on the context at all.
* Full-attention layer: sink slots plus one slot per token; grows with the context.
* Parallel layer (76B): a GLA state plus a window or full cache.
* Gated DeltaNet, Mamba-2 and short-convolution layers (``layer_mixers``): the module's
  own ``state_bytes`` (conv window plus recurrent/SSM state; float32 recurrences for half
  dtypes), constant in the context. Their sizes and parameters are read from the mixer
  built once per kind on the ``meta`` device (no storage), so they are the module's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from sbsnn.checks import check_input_file
from sbsnn.models.checkpoint import EMBEDDED, resolve
from sbsnn.models.config import ATTENTION_KINDS, HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.gguf import is_gguf, read_gguf_config
from sbsnn.models.hybrid import LINEAR_MIXERS

__all__ = [
    "EMBEDDED_MODELS", "decode_state_bytes", "format_info", "info_from_path", "mixer_skeletons",
    "model_info", "parameter_counts", "settings", "spikingbrain_7b_config", "spikingbrain_76b_like_config",
]

DEFAULT_CONTEXTS = (4096, 1_048_576)
POSITION_BYTES = 8  # attention caches keep an int64 position per slot (attention.py)
# Embedded names -> checkpoint directories shipped inside the package (the loader's table).
EMBEDDED_MODELS = EMBEDDED


# ----------------------------------------------------------------------------- configs
def spikingbrain_7b_config() -> HybridConfig:
    """SpikingBrain-7B's architecture (its ``config.json``, model_type ``gla_swa``).

    Qwen2.5-7B dimensions: hidden 3584, intermediate 18944, 28 layers, 28 query heads
    and 4 key/value heads of 128, vocab 152064, untied lm_head. Even layers are GLA
    (low-rank gate 3584 -> 16 -> 512), odd layers sliding-window attention (window 4096).
    """
    return HybridConfig(
        model_type="gla_swa", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
        attn_layers=list(range(1, 28, 2)), sliding_window=4096,
        max_position_embeddings=131072, rope_theta=1e6, norm_eps=1e-6,
        tie_word_embeddings=False, attention_bias=True, mlp_bias=False,
        gate_low_rank_dim=16, gate_logit_normalizer=16.0,
        linear_attn_gate="lowrank", linear_feature_map="relu")


def spikingbrain_76b_like_config() -> HybridConfig:
    """A SpikingBrain-76B-A12B-*like* config: the layout follows the technical report,
    the sizes are illustrative.

    Layout (from the report): every layer runs linear attention and window attention
    in parallel; layers 7, 14, 21, 28 (1-based; 0-based 6, 13, 20, 27) use full
    attention instead of the window; 128 sink tokens; MoE with 16 routed experts, top-1,
    plus 1 shared expert; dense FFN at layers 1, 2, 3, 5, 7, 9, 11 (1-based; 0-based
    0, 1, 2, 4, 6, 8, 10). Linear attention with gate ``1 - k`` and a sigmoid feature map.

    Sizes (our assumption, not published in the reference we have): the report builds
    both models by converting Qwen2.5-7B, so we reuse SpikingBrain-7B's dimensions
    (hidden 3584, 28 layers, 28/4 heads of 128, vocab 152064) and give every expert the
    7B's intermediate size 18944 (sparse upcycling copies the dense FFN). Window 4096 is
    also assumed. :func:`model_info` then gives about 76.9B parameters in total and 12.7B
    active per token, close to the reported 76B / 12B. Use it for orders of magnitude
    (memory layout, state growth), not as the real checkpoint's config.
    """
    return HybridConfig(
        model_type="sbsnn_hybrid", vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, head_dim=128, attn_layers=list(range(28)),
        sliding_window=4096, max_position_embeddings=1 << 20, rope_theta=1e6,
        tie_word_embeddings=False, attention_bias=True, parallel_mixer=True,
        full_attn_layers=[6, 13, 20, 27], num_sink_tokens=128,
        linear_attn_gate="one_minus_k", linear_feature_map="sigmoid",
        num_experts=16, num_experts_per_tok=1, moe_intermediate_size=18944,
        num_shared_experts=1, shared_expert_intermediate_size=18944,
        router_activation="sigmoid", dense_layers=[0, 1, 2, 4, 6, 8, 10])


# ----------------------------------------------------------------------------- dtypes
def _dtype_bytes_and_name(dtype: Any) -> tuple[int, str]:
    """Bytes per element and a display name for an int, a torch dtype or a dtype name."""
    names = {1: "1-byte", 2: "2-byte (bf16/fp16)", 4: "4-byte (fp32)", 8: "8-byte (fp64)"}
    if isinstance(dtype, bool):
        raise TypeError("dtype_bytes must be an int, a torch dtype or a dtype name")
    if isinstance(dtype, int):
        if dtype <= 0:
            raise ValueError(f"dtype_bytes must be positive, got {dtype}")
        return dtype, names.get(dtype, f"{dtype}-byte")
    if isinstance(dtype, str):
        alias = {"bf16": "bfloat16", "fp16": "float16", "half": "float16",
                 "fp32": "float32", "float": "float32", "fp64": "float64", "double": "float64"}
        import torch
        dt = getattr(torch, alias.get(dtype, dtype), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype name {dtype!r}")
        dtype = dt
    try:
        import torch
        if isinstance(dtype, torch.dtype):
            return torch.empty((), dtype=dtype).element_size(), str(dtype).replace("torch.", "")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    raise TypeError(f"dtype_bytes must be an int, a torch dtype or a dtype name, got {dtype!r}")


# ----------------------------------------------------------------------------- layers
# The linear mixers of layer_mixers, in display order, with their names.
MIXER_NAMES = {"gdn": "Gated DeltaNet", "mamba2": "Mamba-2", "conv": "short convolution"}


def _layer_table(cfg: HybridConfig) -> dict[str, Any]:
    """Layer indices by kind. ``kinds`` always has gla/swa/full/parallel; gdn, mamba2 and
    conv appear when the config has such layers."""
    n = cfg.num_hidden_layers
    kinds: dict[str, list[int]] = {"gla": [], "swa": [], "full": [], "parallel": []}
    for i in range(n):
        kinds.setdefault(cfg.layer_kind(i), []).append(i)
    # Which softmax attention each parallel layer carries.
    par_swa = [i for i in kinds["parallel"] if cfg.window_for(i) is not None]
    par_full = [i for i in kinds["parallel"] if cfg.window_for(i) is None]
    moe = [i for i in range(n) if cfg.is_moe_layer(i)]
    dense = [i for i in range(n) if cfg.has_mlp(i) and not cfg.is_moe_layer(i)]
    return {
        "num_layers": n,
        "kinds": kinds,
        "counts": {k: len(v) for k, v in kinds.items()},
        "parallel_window": par_swa,
        "parallel_full": par_full,
        "moe": moe,
        "dense_mlp": dense,
        # Layers holding each kind of decode state.
        "with_gla_state": sorted(kinds["gla"] + kinds["parallel"]),
        "with_window_cache": sorted(kinds["swa"] + par_swa),
        "with_full_cache": sorted(kinds["full"] + par_full + kinds.get("attn+mamba2", [])),
        **{f"with_{k}_state": [i for i in range(n) if cfg.linear_mixer_of(i) == k]
           for k in MIXER_NAMES},
    }


def _mixer(cfg: HybridConfig, kind: str):
    """Linear mixer ``kind`` of ``cfg`` as the model builds it, on the meta device (sizes,
    parameters and ``state_bytes`` without storage)."""
    import torch

    with torch.device("meta"):
        return LINEAR_MIXERS[kind][1](cfg)


def mixer_skeletons(cfg: HybridConfig) -> dict[str, Any]:
    """One module per linear-mixer kind (gdn, mamba2, conv) the config uses, built as the
    model builds it but on the meta device (sizes, parameters and ``state_bytes`` without
    storage; all layers of a kind share its arguments). Read them, never change them:
    they are cached by the config's content (a report counts per document)."""
    if cfg.layer_mixers is None:
        return {}
    key = json.dumps(cfg.to_dict(), sort_keys=True, default=repr)
    hit = _SKELETONS.get(key)
    if hit is None:
        used = {cfg.linear_mixer_of(i) for i in range(cfg.num_hidden_layers)}
        hit = {k: _mixer(cfg, k) for k in MIXER_NAMES if k in used}
        if len(_SKELETONS) >= 16:
            _SKELETONS.clear()
        _SKELETONS[key] = hit
    return dict(hit)


_SKELETONS: dict[str, dict[str, Any]] = {}


# ----------------------------------------------------------------------------- params
def _linear(i: int, o: int, bias: bool) -> int:
    return i * o + (o if bias else 0)


def _swiglu(h: int, inter: int, bias: bool) -> int:
    return 2 * _linear(h, inter, bias) + _linear(inter, h, bias)


def _mlp(cfg: HybridConfig, inter: int, bias: bool) -> int:
    """An MLP of width ``inter``: a SwiGLU, or up and down alone (``mlp_gated`` false)."""
    h = cfg.hidden_size
    return _swiglu(h, inter, bias) if cfg.mlp_gated else _linear(h, inter, bias) + _linear(inter, h, bias)


def _qkvo(cfg: HybridConfig, o_bias: bool) -> int:
    h, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return (_linear(h, H * D, cfg.attention_bias) + 2 * _linear(h, Hkv * D, cfg.attention_bias)
            + _linear(H * D, h, o_bias))


def _gla_params(cfg: HybridConfig) -> int:
    n = _qkvo(cfg, False) + cfg.head_dim  # + g_norm weight
    if cfg.linear_attn_gate == "lowrank":
        n += (_linear(cfg.hidden_size, cfg.gate_low_rank_dim, False)
              + _linear(cfg.gate_low_rank_dim, cfg.num_key_value_heads * cfg.head_dim, True))
    return n


def _attn_params(cfg: HybridConfig) -> int:
    n = _qkvo(cfg, cfg.o_proj_bias) + (2 * cfg.head_dim if cfg.qk_norm else 0)  # + q/k norms
    if cfg.attn_output_gate:  # q_proj also gives the gate: H * D more outputs
        H, D = cfg.num_attention_heads, cfg.head_dim
        n += _linear(cfg.hidden_size, H * D, cfg.attention_bias)
    return n


def parameter_counts(config: HybridConfig) -> dict[str, int]:
    """Parameter counts by part; ``total`` equals ``sum(p.numel() for p in
    HybridForCausalLM(config).parameters())``. ``active_per_token`` counts, in MoE
    layers, the router, the top-k routed experts and the shared experts only
    (embeddings, lm_head and everything else always count; tied embeddings once)."""
    cfg = config
    h, V = cfg.hidden_size, cfg.vocab_size
    out = {"embeddings": V * h, "lm_head": 0 if cfg.tie_word_embeddings else h * V,
           "sink_embeddings": cfg.num_sink_tokens * h, "norms": h,  # final norm
           "gla": 0, "attention": 0, "gdn": 0, "mamba2": 0, "conv": 0, "mlp_dense": 0,
           "moe_router": 0, "moe_routed_experts": 0, "moe_shared_experts": 0,
           "moe_inactive": 0}
    mixer_params = {k: sum(p.numel() for p in m.parameters())
                    for k, m in mixer_skeletons(cfg).items()}
    moe_inter = cfg.moe_intermediate_size or cfg.intermediate_size
    shared_inter = cfg.shared_expert_intermediate_size or moe_inter
    expert = _mlp(cfg, moe_inter, False)  # MoE experts never have biases (layers.py)
    for i in range(cfg.num_hidden_layers):
        kind = cfg.layer_kind(i)
        out["norms"] += cfg.norms_per_block(i) * h  # attn_norm, mlp_norm (+ post / branch norms)
        mixer = cfg.linear_mixer_of(i)
        if kind == "gla":
            out["gla"] += _gla_params(cfg)
        if mixer is not None:
            out[mixer] += mixer_params[mixer]
        if kind in ATTENTION_KINDS:
            out["attention"] += _attn_params(cfg)
        if kind == "parallel":
            out["gla"] += _gla_params(cfg)
        if cfg.is_moe_layer(i):
            out["moe_router"] += h * cfg.num_experts
            out["moe_routed_experts"] += cfg.num_experts * expert
            out["moe_shared_experts"] += cfg.num_shared_experts * _mlp(cfg, shared_inter, False)
            if cfg.shared_expert_gate:  # its linear map to one value per token
                out["moe_shared_experts"] += h
            out["moe_inactive"] += (cfg.num_experts - cfg.num_experts_per_tok) * expert
        elif cfg.has_mlp(i):
            out["mlp_dense"] += _mlp(cfg, cfg.intermediate_size, cfg.mlp_bias)
    parts = ("embeddings", "lm_head", "sink_embeddings", "norms", "gla", "attention", "gdn",
             "mamba2", "conv", "mlp_dense", "moe_router", "moe_routed_experts", "moe_shared_experts")
    out["total"] = sum(out[k] for k in parts)
    out["active_per_token"] = out["total"] - out["moe_inactive"]
    out["non_embedding"] = out["total"] - out["embeddings"] - out["lm_head"]
    out["active_non_embedding"] = out["active_per_token"] - out["embeddings"] - out["lm_head"]
    return out


# ----------------------------------------------------------------------------- state
_FLOAT_DTYPES = {2: "bfloat16", 4: "float32", 8: "float64"}


def _state_dtype(nb: int, kind: str):
    """The torch dtype the linear mixers' ``state_bytes`` take for activations of ``nb``
    bytes (2 bytes reads as bf16, whose recurrent states are float32 like fp16's)."""
    if nb not in _FLOAT_DTYPES:
        raise ValueError(f"the {MIXER_NAMES[kind]} layers' decoding state is known for 2-, 4- "
                         f"and 8-byte float activations, not {nb}-byte ones; pass dtype_bytes "
                         "2, 4 or 8 (or a float dtype)")
    import torch

    return getattr(torch, _FLOAT_DTYPES[nb])


def decode_state_bytes(config: HybridConfig, context: int, dtype_bytes: Any = 2) -> dict[str, Any]:
    """Bytes of one sequence's :class:`DecodeState` after ``context`` tokens (sink tokens
    not counted in ``context``; they are prepended automatically). ``total_bytes`` equals
    ``DecodeState.nbytes()`` for a model in a dtype of ``dtype_bytes`` bytes."""
    cfg = config
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    nb, _ = _dtype_bytes_and_name(dtype_bytes)
    Hkv, H, D, S = cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim, cfg.num_sink_tokens
    started = context > 0
    state_nb = max(nb, 4)  # GLA states accumulate in float32 at least (see gla.py)
    gla_one = Hkv * D * D * state_nb if started else 0
    gla_up_one = H * D * D * state_nb if started else 0
    kv_slot = 2 * Hkv * D * nb
    mixer_one = {k: m.state_bytes(1, _state_dtype(nb, k)) if started else 0
                 for k, m in mixer_skeletons(cfg).items()}
    mixer = {k: 0 for k in MIXER_NAMES}
    gla = gla_up = window_kv = full_kv = positions = 0
    window_slots_alloc = window_slots_used = full_slots = 0
    per_layer = []
    for i in range(cfg.num_hidden_layers):
        kind = cfg.layer_kind(i)
        b = 0
        if kind in ("gla", "parallel"):
            gla += gla_one
            gla_up += gla_up_one
            b += gla_one
        lm = cfg.linear_mixer_of(i)
        if lm is not None:
            mixer[lm] += mixer_one[lm]
            b += mixer_one[lm]
        if kind in ATTENTION_KINDS and started:
            W = cfg.window_for(i)
            if W is None:  # sink slots reserved, then one slot per token
                slots = S + context
                full_kv += slots * kv_slot
                full_slots = slots
            else:  # allocated whole on the first token
                slots = S + W
                window_kv += slots * kv_slot
                window_slots_alloc, window_slots_used = slots, S + min(context, W)
            positions += slots * POSITION_BYTES
            b += slots * (kv_slot + POSITION_BYTES)
        per_layer.append({"layer": i, "kind": kind, "bytes": b})
    total = gla + window_kv + full_kv + positions + sum(mixer.values())
    # The same dimensions with every layer full attention (a plain Transformer's KV cache).
    full_equiv = cfg.num_hidden_layers * (S + context) * kv_slot if started else 0
    return {
        "context": context,
        "gla_state_bytes": gla,
        "gla_state_bytes_upstream": gla_up,
        "gdn_state_bytes": mixer["gdn"],          # conv window + recurrent state
        "mamba2_state_bytes": mixer["mamba2"],    # conv window + SSM state
        "conv_state_bytes": mixer["conv"],        # short convolution's window
        "window_kv_bytes": window_kv,
        "full_kv_bytes": full_kv,
        "position_bytes": positions,
        "window_slots_allocated": window_slots_alloc,
        "window_slots_used": window_slots_used,
        "full_slots": full_slots,
        "total_bytes": total,
        "total_bytes_upstream_gla": total - gla + gla_up,
        "full_attention_kv_bytes": full_equiv,
        "per_layer": per_layer,
    }


# ----------------------------------------------------------------------------- info
def model_info(config: HybridConfig, dtype_bytes: Any = 2,
               contexts: Iterable[int] = DEFAULT_CONTEXTS) -> dict[str, Any]:
    """Layers by kind, parameters (total / active per token) and decode-state bytes per
    sequence at each context length, from ``config`` alone (nothing is allocated).

    ``dtype_bytes``: bytes per weight and per state element (2 for bf16), or a torch
    dtype or dtype name; attention caches also hold int64 positions (8 bytes a slot).
    """
    cfg = config
    nb, dname = _dtype_bytes_and_name(dtype_bytes)
    contexts = [int(c) for c in contexts]
    params = parameter_counts(cfg)
    layers = _layer_table(cfg)
    states = [decode_state_bytes(cfg, c, nb) for c in contexts]
    return {
        "config": {
            "model_type": cfg.model_type, "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "sliding_window": cfg.sliding_window, "num_sink_tokens": cfg.num_sink_tokens,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "parallel_mixer": cfg.parallel_mixer, "linear_attn_gate": cfg.linear_attn_gate,
            "num_experts": cfg.num_experts, "num_experts_per_tok": cfg.num_experts_per_tok,
            "num_shared_experts": cfg.num_shared_experts, "layer_mixers": cfg.layer_mixers,
        },
        "dtype_bytes": nb,
        "dtype": dname,
        "layers": layers,
        "params": params,
        "weight_bytes": params["total"] * nb,
        "active_weight_bytes": params["active_per_token"] * nb,
        "state": states,
        # True when no layer keeps a cache that grows with the context.
        "state_constant": not layers["with_full_cache"],
        "settings": settings(cfg),
    }


def _mixer_settings(kind: str, m) -> dict[str, Any]:
    """The sizes a linear mixer runs with (read from the module, defaults included)."""
    if kind == "gdn":
        return {"key_heads": m.num_k_heads, "value_heads": m.num_v_heads,
                "key_head_dim": m.head_k_dim, "value_head_dim": m.head_v_dim,
                "conv_kernel": m.conv_kernel_size, "activation": m.activation, "layout": m.layout}
    if kind == "mamba2":
        return {"heads": m.num_heads, "head_dim": m.head_dim, "d_state": m.d_state,
                "n_groups": m.n_groups, "conv_kernel": m.d_conv, "activation": m.activation,
                "rms_norm": m.rms_norm}
    return {"conv_kernel": m.L_cache, "bias": m.conv.bias is not None}


def _mixer_text(kind: str, a: dict[str, Any]) -> str:
    if kind == "gdn":
        return (f"Gated DeltaNet, {a['key_heads']} key heads x {a['key_head_dim']}, "
                f"{a['value_heads']} value heads x {a['value_head_dim']}, conv {a['conv_kernel']} "
                f"({a['activation']}), layout {a['layout']}; no RoPE")
    if kind == "mamba2":
        return (f"Mamba-2 (SSD), {a['heads']} heads x {a['head_dim']}, state {a['d_state']}, "
                f"{a['n_groups']} groups, conv {a['conv_kernel']} ({a['activation']})"
                + ("; gated RMSNorm" if a["rms_norm"] else "; gate without norm") + "; no RoPE")
    return (f"gated short convolution, kernel {a['conv_kernel']}"
            + (", with biases" if a["bias"] else "") + "; no RoPE")


_NORM_TEXT = {"fla": "x / rms(x) * w (fla)", "llama": "w * (x / rms(x)) (Llama)",
              "gemma": "x / rms(x) * (1 + w) (Gemma)"}


def settings(config: HybridConfig) -> dict[str, Any]:
    """What will run, per layer kind: window, RoPE (type and parameters), score scale and
    q/k norms; the norms, the MLP activation, the embedding scale, the head."""
    cfg = config
    kinds: dict[str, dict[str, Any]] = {}
    mixers = mixer_skeletons(cfg)
    for i in range(cfg.num_hidden_layers):
        kind = cfg.layer_kind(i)
        entry = {"layers": [], "window": None, "rope": None}
        key = kind
        if kind in ATTENTION_KINDS:
            spec = cfg.rope_for(i)      # None: attention without positions (NoPE)
            entry.update(window=cfg.window_for(i),
                         rope=None if spec is None else spec.to_parameters(),
                         rotary_dim=None if spec is None else spec.rotary_dim)
            key = f"{kind}:{entry['window']}:{sorted((entry['rope'] or {}).items())}"
        lm = cfg.linear_mixer_of(i)
        if lm is not None:
            entry["mixer"] = _mixer_settings(lm, mixers[lm])
        kinds.setdefault(key, {**entry, "kind": kind})["layers"].append(i)
    return {
        "layer_kinds": list(kinds.values()),
        "score_scale": cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5,
        "qk_norm": cfg.qk_norm,
        "attn_output_gate": cfg.attn_output_gate,
        "norm": {"style": cfg.norm_style, "eps": cfg.norm_eps, "sandwich": cfg.sandwich_norm},
        "mlp_activation": cfg.hidden_act,
        "mlp_gated": cfg.mlp_gated,
        "block_mlp": cfg.block_mlp,
        "biases": {"qkv": cfg.attention_bias, "o_proj": cfg.o_proj_bias, "mlp": cfg.mlp_bias},
        "embedding_scale": cfg.embedding_scale,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "final_logit_softcapping": cfg.final_logit_softcapping,
    }


def _rope_text(rope: dict) -> str:
    rest = {k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}
    extra = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in rest.items())
    return f"RoPE {rope['rope_type']}, base {rope['rope_theta']:g}{extra}"


def format_settings(st: dict[str, Any]) -> list[str]:
    lines = ["what runs (per layer kind)"]
    for k in st["layer_kinds"]:
        n = len(k["layers"])
        where = _indices(k["layers"])
        if k["kind"] == "gla":
            lines.append(f"  gla   {n:>3} layers  ({where})  gated linear attention, no RoPE")
            continue
        if k["kind"] == "mlp":
            lines.append(f"  mlp   {n:>3} layers  ({where})  no mixer: x + MLP(norm(x))")
            continue
        mixer = k.get("mixer")
        if mixer is not None and k["kind"] in MIXER_NAMES:
            lines.append(f"  {k['kind']:<6}{n:>3} layers  ({where})  "
                         f"{_mixer_text(k['kind'], mixer)}")
            continue
        window = "full" if k["window"] is None else f"window {k['window']}"
        rope = ("no positions (NoPE)" if k["rope"] is None else _rope_text(k["rope"])
                + (f" on {k['rotary_dim']} dims" if k["rope"].get("partial_rotary_factor") else ""))
        lines.append(f"  {k['kind']:<5} {n:>3} layers  ({where})  {window}; {rope}"
                     + (f"; beside it {_mixer_text('mamba2', mixer)}" if mixer is not None else ""))
    b = st["biases"]
    lines.append(f"  attention scores x {st['score_scale']:.6g}"
                 + ("; q/k RMSNorm per head before RoPE" if st["qk_norm"] else "")
                 + ("; output gate sigmoid(gate from q_proj)" if st.get("attn_output_gate") else "")
                 + f"; biases q/k/v {'yes' if b['qkv'] else 'no'}, o {'yes' if b['o_proj'] else 'no'}")
    nrm = st["norm"]
    lines.append(f"  norms RMSNorm {_NORM_TEXT[nrm['style']]}, eps {nrm['eps']:g}"
                 + ("; sandwich (after attention, before and after the MLP)" if nrm["sandwich"] else ""))
    act = st["mlp_activation"]
    form = ("SwiGLU" if act in ("silu", "swish") else "GeGLU") if st.get("mlp_gated", True) \
        else "down(act(up(x))), no gate"
    lines.append(f"  MLP {form} ({act})" + (", with biases" if b["mlp"] else "")
                 + ("" if st.get("block_mlp", True) else "; only in the mlp layers (one "
                    "sub-layer per block)"))
    tail = []
    if st["embedding_scale"] is not None:
        tail.append(f"embeddings x {st['embedding_scale']:.6g}")
    tail.append("head tied to the embeddings" if st["tie_word_embeddings"] else "separate lm_head")
    if st["final_logit_softcapping"] is not None:
        tail.append(f"logits soft-capped at {st['final_logit_softcapping']:g}")
    lines.append("  " + "; ".join(tail))
    return lines


def _read_config(path: str | Path) -> tuple[HybridConfig, str]:
    """The config of a checkpoint directory, a config.json, a GGUF file or an embedded
    name, and where it was read from."""
    p = resolve(path)  # embedded names first, as load_model does
    if not p.exists():
        raise CheckpointError(
            f"{p}: no such file or directory; give a checkpoint directory holding "
            f"config.json, a config.json file, a .gguf file, or an embedded name "
            f"({', '.join(sorted(EMBEDDED_MODELS))})")
    if p.is_dir():
        if not ((p / "config.json").exists() or (p / "config.json").is_symlink()):
            raise CheckpointError(f"{p}: directory has no config.json")
        p = p / "config.json"
    else:
        check_input_file(p, "the model file (a .gguf or a config.json)", error=CheckpointError)
        if is_gguf(p):
            return HybridConfig.from_dict(read_gguf_config(p), source=f"{p} (metadata)"), str(p)
        if p.suffix == ".gguf":
            raise CheckpointError(f"{p}: not a GGUF file (no GGUF magic bytes); re-download it")
    return HybridConfig.from_json(p), str(p)


def info_from_path(path: str | Path, dtype_bytes: Any = "auto",
                   contexts: Iterable[int] = DEFAULT_CONTEXTS) -> dict[str, Any]:
    """:func:`model_info` for a checkpoint directory (its ``config.json``), a
    ``config.json`` file, a GGUF file (its metadata), or an embedded name such as
    ``"tiny-hybrid"`` (a name wins over a same-named local path, as in ``load_model``).
    Only the config is read. ``dtype_bytes="auto"`` takes the config's ``dtype`` /
    ``torch_dtype`` (bf16 when it has none). Raises :class:`CheckpointError` naming the
    path when it cannot be used."""
    cfg, source = _read_config(path)
    if dtype_bytes == "auto":
        dtype_bytes = cfg.extra.get("dtype") or cfg.extra.get("torch_dtype") or "bfloat16"
    info = model_info(cfg, dtype_bytes, contexts)
    info["source"] = source
    return info


# ----------------------------------------------------------------------------- text
def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit, k in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if n >= 1024 ** k:
            return f"{n / 1024 ** k:.2f} {unit}"
    return f"{n} B"  # pragma: no cover


def _count(n: int) -> str:
    for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.2f}{unit}"
    return str(n)


def _ctx(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}k"
    return str(n)


def _indices(idx: list[int]) -> str:
    if not idx:
        return "-"
    if len(idx) > 3:
        step = idx[1] - idx[0]
        if step > 0 and all(b - a == step for a, b in zip(idx, idx[1:])):
            return f"{idx[0]}..{idx[-1]}" + (f" step {step}" if step > 1 else "")
    runs: list[list[int]] = []
    for i in idx:  # consecutive runs of 3 or more as "a-b"
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    parts = []
    for r in runs:
        parts += [f"{r[0]}-{r[-1]}"] if len(r) >= 3 else [str(i) for i in r]
    return ", ".join(parts)


_SHORT = {"gdn": "GDN", "mamba2": "Mamba-2", "conv": "short-conv"}
_STATE_ROWS = {"gdn": "GDN conv + recurrent state", "mamba2": "Mamba-2 conv + SSM state",
               "conv": "short-conv window"}


def format_info(info: dict) -> str:
    """A readable multi-line table of :func:`model_info`'s result (layer indices 0-based)."""
    c, L, P = info["config"], info["layers"], info["params"]
    lines = []
    if info.get("source"):
        lines.append(f"source      {info['source']}")
    lines.append(
        f"model       {c['model_type']}: hidden {c['hidden_size']}, "
        f"{c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
        f"({c['num_key_value_heads']} kv) x {c['head_dim']}, vocab {c['vocab_size']}, "
        f"window {c['sliding_window']}, sinks {c['num_sink_tokens']}"
        + (f", MoE {c['num_experts']} experts top-{c['num_experts_per_tok']}"
           f" + {c['num_shared_experts']} shared" if c["num_experts"] else ""))
    lines.append("")
    if info.get("settings"):
        lines += format_settings(info["settings"]) + [""]
    lines.append("layers (0-based)")
    for kind in L["kinds"]:
        if L["counts"][kind] or (kind in ("gla", "swa") and not c.get("layer_mixers")):
            lines.append(f"  {kind:<10}{L['counts'][kind]:>4}  {_indices(L['kinds'][kind])}")
    if L["kinds"]["parallel"]:
        lines.append(f"  {' +window':<10}{len(L['parallel_window']):>4}  {_indices(L['parallel_window'])}")
        lines.append(f"  {' +full':<10}{len(L['parallel_full']):>4}  {_indices(L['parallel_full'])}")
    lines.append(f"  dense MLP {len(L['dense_mlp']):>4}  {_indices(L['dense_mlp'])}")
    if L["moe"]:
        lines.append(f"  MoE MLP   {len(L['moe']):>4}  {_indices(L['moe'])}")
    lines.append("")
    nb = info["dtype_bytes"]
    lines.append(f"parameters                       count   weights at {nb} B each")
    rows = [("total", P["total"]), ("active per token", P["active_per_token"]),
            ("  embeddings", P["embeddings"]),
            ("  lm_head" + (" (tied)" if c["tie_word_embeddings"] else ""), P["lm_head"]),
            *([("  GLA mixers", P["gla"])] if P["gla"] or not c.get("layer_mixers") else []),
            ("  softmax attention", P["attention"])]
    rows += [(f"  {_SHORT[k]} mixers", P[k]) for k in MIXER_NAMES if P[k]]
    rows += [("  dense MLPs", P["mlp_dense"])]
    if L["moe"]:
        rows += [("  MoE routers", P["moe_router"]), ("  MoE routed experts", P["moe_routed_experts"]),
                 ("  MoE shared experts", P["moe_shared_experts"])]
    rows += [("  norms", P["norms"])]
    if P["sink_embeddings"]:
        rows.append(("  sink embeddings", P["sink_embeddings"]))
    for name, n in rows:
        lines.append(f"  {name:<22}{n:>16,} {_count(n):>9}   {_bytes(n * nb):>10}")
    lines.append("")
    S = info["state"]
    if S:
        lines.append(f"decode state per sequence ({info['dtype']} elements, int64 positions)")
        head = f"  {'context':<30}" + "".join(f"{_ctx(s['context']):>14}" for s in S)
        lines.append(head)
        gla = bool(L["with_gla_state"]) or not c.get("layer_mixers")
        srows = [("GLA state", "gla_state_bytes")] if gla else []
        srows += [(_STATE_ROWS[k], f"{k}_state_bytes") for k in MIXER_NAMES
                  if L[f"with_{k}_state"]]
        srows += [("window K/V", "window_kv_bytes"),
                 ("full-attention K/V", "full_kv_bytes"), ("cache positions", "position_bytes"),
                 ("total (DecodeState.nbytes)", "total_bytes")]
        for name, key in srows:
            lines.append(f"  {name:<30}" + "".join(f"{_bytes(s[key]):>14}" for s in S))
        if gla:
            lines.append(f"  {'  upstream GLA layout [H,d,d]':<30}"
                         + "".join(f"{_bytes(s['total_bytes_upstream_gla']):>14}" for s in S))
        lines.append(f"  {'  all-full-attention KV cache':<30}"
                     + "".join(f"{_bytes(s['full_attention_kv_bytes']):>14}" for s in S))
        if len(S) > 1 and S[0]["total_bytes"]:
            ratio = S[-1]["total_bytes"] / S[0]["total_bytes"]
            lines.append(f"  state {_ctx(S[-1]['context'])} / {_ctx(S[0]['context'])}: "
                         f"{ratio:.2f}x"
                         + ("  (constant: no full-attention layer)" if info["state_constant"]
                            else "  (full-attention layers grow with the context)"))
        if L["with_window_cache"]:
            lines.append("  window rings are allocated whole on the first token "
                         "(sinks + window slots per layer)")
    return "\n".join(lines)
