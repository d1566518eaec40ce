"""GGUF files of seven hybrid architectures: their metadata as a transformers config dict,
and every tensor back under its Hugging Face name and layout, llama.cpp's
``convert_hf_to_gguf.py`` transformations undone.

============== =================== ==========================================================
GGUF arch      transformers        mixers
============== =================== ==========================================================
qwen35         qwen3_5_text        Gated DeltaNet + gated full attention, dense MLP
qwen35moe      qwen3_5_moe_text    qwen35's mixers, MoE + gated shared expert
qwen3next      qwen3_next          Gated DeltaNet + gated full attention, MoE + shared expert
granitehybrid  granitemoehybrid    Mamba-2 + attention (no RoPE), MoE or not, shared MLP
falcon-h1      falcon_h1           Mamba-2 and attention in parallel in every layer
lfm2           lfm2                gated short convolution + attention
lfm2moe        lfm2_moe            lfm2's mixers, dense first layers, sigmoid-routed MoE
============== =================== ==========================================================

Used by :mod:`sbsnn.models.gguf` (which owns the file reader, the metadata checks and the
key bookkeeping); this module does not import it: the reader passes its ``_Meta`` in.
docs/gguf.md lists what is read, assumed and refused for each architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sbsnn.models.families import SIZE_BOUNDS


ARCHITECTURES = ("qwen35", "qwen35moe", "qwen3next", "granitehybrid", "falcon-h1", "lfm2",
                 "lfm2moe")
# The fewest tensors one layer of the architecture holds (bounds block_count by the table).
TENSORS_PER_LAYER = {"lfm2": 8, "lfm2moe": 8}
# llama.cpp's expert_gating_func values (gguf.ExpertGatingFuncType)
_SOFTMAX, _SIGMOID = 1, 2
# bounds of the MoE counts and sizes (sbsnn's config bounds)
_MAX_EXPERTS = SIZE_BOUNDS["num_experts"][0]
_MAX_EXPERT_SIZE = SIZE_BOUNDS["moe_intermediate_size"][0]
_MAMBA_CHUNK = 256  # transformers' default mamba_chunk_size: a kernel tile, not a weight


# ----------------------------------------------------------------------------- metadata
def _ints(m, name: str, layers: int, *, required=True) -> list[int]:
    """A size key that may be one number or one number per layer (llama.cpp writes
    head_count_kv per layer for hybrids: 0 on the layers without attention)."""
    if not m.has(name):
        if required:
            m.req(name)
        return []
    v = m.get(name)
    items = v if isinstance(v, list) else [v] * layers
    if len(items) != layers or not all(isinstance(x, int) and not isinstance(x, bool)
                                       and 0 <= x <= 1 << 20 for x in items):
        m.refuse(name, f"one whole number >= 0, or one per layer ({layers}), is expected")
    return items


def _one(m, name: str, values: list[int], why: str) -> int:
    """The single non-zero value of a per-layer list."""
    nz = sorted({v for v in values if v})
    if len(nz) != 1:
        m.refuse(name, f"{why}: the non-zero values must all be equal (found {nz})")
    return nz[0]


def _no_rope_scaling(m):
    kind = m.get("rope.scaling.type", "none")
    factor = m.get("rope.scaling.factor", None, kind=float)
    m.get("rope.scaling.original_context_length")
    if kind != "none" or factor not in (None, 1.0):
        m.refuse("rope.scaling.type" if kind != "none" else "rope.scaling.factor",
                 "RoPE scaling is not supported for this architecture")


def _no_experts(m):
    for k in ("expert_count", "expert_used_count", "expert_feed_forward_length",
              "expert_shared_feed_forward_length"):
        if m.get(k, 0):
            m.refuse(k, "mixture-of-experts layers are not supported for this architecture")


def _common(m, n_tokens: int) -> dict:
    return {"vocab_size": m.get("vocab_size", n_tokens, kind=int),
            "hidden_size": m.req("embedding_length"),
            "num_hidden_layers": m.req("block_count"),
            "num_attention_heads": m.req("attention.head_count"),
            "max_position_embeddings": m.req("context_length")}


def _eq(m, name: str, expected, why: str):
    """A key that restates a value: allowed when it agrees."""
    v = m.get(name)
    if v is not None and v != expected:
        m.refuse(name, f"{why} (expected {expected!r})")


def _whole(m, name: str, num: int, den: int, what: str) -> int:
    if den <= 0 or num % den:
        m.refuse(name, f"{what}: {num} is not a multiple of {den}")
    return num // den


def _size(m, name: str, bound: int) -> int:
    """A required MoE count or size: a whole number from 1 to ``bound``."""
    v = m.req(name)
    if not 0 < v <= bound:
        m.refuse(name, f"a whole number from 1 to {bound:,} is expected")
    return v


def _used_experts(m, n_exp: int) -> int:
    """``expert_used_count``: how many of the ``n_exp`` experts each token takes."""
    used = _size(m, "expert_used_count", _MAX_EXPERTS)
    if used > n_exp:
        m.refuse("expert_used_count", f"more than expert_count ({n_exp}); each token takes "
                                      "that many distinct experts")
    return used


def _gating(m, expected: int, required: bool):
    """``expert_gating_func``: the router's function, which must be the one the
    transformers family has (llama.cpp hard-codes it for granitehybrid and qwen35moe)."""
    v = m.req("expert_gating_func") if required else m.get("expert_gating_func", expected,
                                                           kind=int)
    if v != expected:
        names = {_SOFTMAX: "softmax", _SIGMOID: "sigmoid"}
        m.refuse("expert_gating_func", f"the transformers model routes by "
                                       f"{names[expected]} ({expected})")


def _lfm2(m, n_tokens: int, names: set, moe: bool) -> dict:
    c = _common(m, n_tokens)
    L, H, nh = c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]
    kv = _ints(m, "attention.head_count_kv", L)
    full = [i for i, k in enumerate(kv) if k]
    n_kv = _one(m, "attention.head_count_kv", kv, "the attention layers' key/value heads") \
        if full else nh
    d = _whole(m, "attention.head_count", H, nh, "hidden size / heads")
    _eq(m, "rope.dimension_count", d, "RoPE over part of the head is not supported")
    _eq(m, "attention.key_length", d, "the key length must equal hidden/heads")
    _eq(m, "attention.value_length", d, "the value length must equal hidden/heads")
    _no_rope_scaling(m)
    out = {"model_type": "lfm2", "architectures": ["Lfm2ForCausalLM"], **c,
           "intermediate_size": m.req("feed_forward_length"),
           "num_key_value_heads": n_kv,
           "norm_eps": m.req("attention.layer_norm_rms_epsilon", float),
           "rope_parameters": {"rope_theta": m.req("rope.freq_base", float),
                               "rope_type": "default"},
           "conv_bias": False, "conv_L_cache": m.req("shortconv.l_cache"),
           "layer_types": ["full_attention" if k else "conv" for k in kv]}
    if not moe:
        _no_experts(m)
        return dict(out, block_multiple_of=256, block_ffn_dim_multiplier=1.0,
                    block_auto_adjust_ff_dim=False, full_attn_idxs=None)  # layer_types holds it
    n_exp = _size(m, "expert_count", _MAX_EXPERTS)
    dense = m.req("leading_dense_block_count")
    if not 0 <= dense <= c["num_hidden_layers"]:
        m.refuse("leading_dense_block_count", f"0 to block_count ({c['num_hidden_layers']}) "
                                              "dense layers are expected")
    # llama.cpp's LFM2 graph routes by expert_gating_func, renormalises the top-k weights and
    # scales none (transformers: norm_topk_prob true, routed_scaling_factor 1)
    _gating(m, _SIGMOID, required=True)
    return dict(out, model_type="lfm2_moe", architectures=["Lfm2MoeForCausalLM"],
                moe_intermediate_size=_size(m, "expert_feed_forward_length", _MAX_EXPERT_SIZE),
                num_experts=n_exp, num_experts_per_tok=_used_experts(m, n_exp),
                num_dense_layers=dense, norm_topk_prob=True, routed_scaling_factor=1.0,
                # the converter writes exp_probs_b exactly when the model has expert_bias
                use_expert_bias=any(n.endswith(".exp_probs_b.bias") for n in names))


def _mamba2(m) -> dict:
    """The ssm.* keys of a Mamba-2 mixer (llama.cpp's time_step_rank is the head count)."""
    inner = m.req("ssm.inner_size")
    heads = m.req("ssm.time_step_rank")
    groups = m.req("ssm.group_count")
    head_dim = _whole(m, "ssm.inner_size", inner, heads, "inner size / ssm.time_step_rank")
    _whole(m, "ssm.time_step_rank", heads, groups, "heads / ssm.group_count")
    return {"mamba_n_heads": heads, "mamba_n_groups": groups,
            "mamba_d_state": m.req("ssm.state_size"), "mamba_d_head": head_dim,
            "mamba_d_conv": m.req("ssm.conv_kernel"), "_inner": inner,
            "mamba_chunk_size": _MAMBA_CHUNK}


def _granitehybrid(m, n_tokens: int, names: set) -> dict:
    c = _common(m, n_tokens)
    L, H, nh = c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"]
    kv = _ints(m, "attention.head_count_kv", L)
    attn = [bool(k) for k in kv]
    n_kv = _one(m, "attention.head_count_kv", kv, "the attention layers' key/value heads") \
        if any(attn) else nh
    d = _whole(m, "attention.head_count", H, nh, "hidden size / heads")
    _eq(m, "rope.dimension_count", d, "RoPE over part of the head is not supported")
    ff = m.req("feed_forward_length")
    n_exp = m.get("expert_count", 0, kind=int)
    if n_exp:
        # llama.cpp sizes the experts by feed_forward_length (the converter writes
        # intermediate_size there) and routes by softmax, top-k renormalised
        _size(m, "expert_count", _MAX_EXPERTS)
        used = _used_experts(m, n_exp)
        _eq(m, "expert_feed_forward_length", ff, "llama.cpp sizes Granite's experts by "
                                                  "feed_forward_length")
        _gating(m, _SOFTMAX, required=False)
    else:
        used = m.get("expert_used_count", 2, kind=int)  # written even when dense: unused
    # required: llama.cpp runs no shared MLP without it, transformers always one
    shared = _size(m, "expert_shared_feed_forward_length", _MAX_EXPERT_SIZE)
    _no_rope_scaling(m)
    ssm = _mamba2(m)
    inner = ssm.pop("_inner")
    expand = _whole(m, "ssm.inner_size", inner, H, "GraniteMoeHybridConfig needs an integer "
                    "mamba_expand = inner size / hidden size")
    # llama.cpp runs RoPE only where the converter set rope.scaling.finetuned (Bamba, or a
    # model without Mamba layers); hybrid Granite 4 files run without positions.
    rope = bool(m.get("rope.scaling.finetuned", False))
    # llama.cpp scales attention by attention.scale when given, else 1/sqrt(head_dim)
    scale = m.get("attention.scale", 1.0 / math.sqrt(d), kind=float)
    mults = {}
    for key, cfg in (("embedding_scale", "embedding_multiplier"),
                     ("residual_scale", "residual_multiplier"),
                     ("logit_scale", "logits_scaling")):
        v = m.get(key, 0.0, kind=float)
        mults[cfg] = v if v else 1.0  # llama.cpp skips a missing or zero scale
    return {"model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"],
            **c, "intermediate_size": ff,
            "num_key_value_heads": n_kv, "hidden_act": "silu",
            "rms_norm_eps": m.req("attention.layer_norm_rms_epsilon", float),
            "rope_parameters": {"rope_theta": m.get("rope.freq_base", 10000.0, kind=float),
                                "rope_type": "default"},
            "attention_bias": False, "attention_dropout": 0.0, **mults,
            "attention_multiplier": scale, "num_local_experts": n_exp,
            "num_experts_per_tok": used, "shared_intermediate_size": shared,
            "position_embedding_type": "rope" if rope else "nope",
            "layer_types": ["full_attention" if a else "linear_attention" for a in attn],
            **ssm, "mamba_expand": expand,
            "mamba_conv_bias": any(n.endswith("ssm_conv1d.bias") for n in names),
            "mamba_proj_bias": False, "time_step_limit": [0.0, float("inf")]}


def _falcon_h1(m, n_tokens: int, names: set) -> dict:
    c = _common(m, n_tokens)
    nh = c["num_attention_heads"]
    d = m.req("attention.key_length")
    _eq(m, "attention.value_length", d, "the value length must equal the key length")
    _eq(m, "rope.dimension_count", d, "RoPE over part of the head is not supported")
    _no_experts(m)
    _no_rope_scaling(m)
    ssm = _mamba2(m)
    inner = ssm.pop("_inner")
    # The converter folds every muP multiplier into the weights (llama.cpp applies none):
    # the config carries 1.0 for all of them, which runs the same function.
    return {"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"], **c,
            "intermediate_size": m.req("feed_forward_length"),
            "num_key_value_heads": m.get("attention.head_count_kv", nh, kind=int),
            "head_dim": d, "hidden_act": "silu",
            "rms_norm_eps": m.req("attention.layer_norm_rms_epsilon", float),
            "attention_dropout": 0.0, "mamba_d_ssm": inner, **ssm, "mamba_expand": 2,
            "mamba_conv_bias": any(n.endswith("ssm_conv1d.bias") for n in names),
            "mamba_proj_bias": False,
            # llama.cpp multiplies by silu(z) before the grouped RMSNorm
            "mamba_norm_before_gate": False,
            "mamba_rms_norm": any(n.endswith("ssm_norm.weight") for n in names),
            "time_step_limit": [0.0, float("inf")], "projectors_bias": False,
            "rope_parameters": {"rope_theta": m.req("rope.freq_base", float),
                                "rope_type": "default"},
            "lm_head_multiplier": 1.0, "embedding_multiplier": 1.0,
            "mlp_multipliers": [1.0, 1.0], "key_multiplier": 1.0,
            "attention_out_multiplier": 1.0, "attention_in_multiplier": 1.0,
            "ssm_multipliers": [1.0] * 5, "ssm_in_multiplier": 1.0, "ssm_out_multiplier": 1.0,
            "attention_bias": False, "mlp_bias": False}


_QWEN = {"qwen35": ("qwen3_5_text", "Qwen3_5ForCausalLM"),
         "qwen35moe": ("qwen3_5_moe_text", "Qwen3_5MoeForCausalLM"),
         "qwen3next": ("qwen3_next", "Qwen3NextForCausalLM")}


def _qwen_gdn(m, n_tokens: int, arch: str) -> dict:
    c = _common(m, n_tokens)
    L = c["num_hidden_layers"]
    d = m.req("attention.key_length")
    _eq(m, "attention.value_length", d, "the value length must equal the key length")
    rot = m.req("rope.dimension_count")
    if rot <= 0 or rot > d or rot % 2:
        m.refuse("rope.dimension_count", f"an even count of rotated dimensions <= head_dim "
                 f"{d} is expected")
    interval = m.req("full_attention_interval")
    if m.get("nextn_predict_layers", 0):
        m.refuse("nextn_predict_layers", "multi-token-prediction layers are not supported; "
                 "convert without them (--no-mtp)")
    _no_rope_scaling(m)
    k_heads, v_heads = m.req("ssm.group_count"), m.req("ssm.time_step_rank")
    _whole(m, "ssm.time_step_rank", v_heads, k_heads, "value heads / key heads (group_count)")
    v_dim = _whole(m, "ssm.inner_size", m.req("ssm.inner_size"), v_heads,
                   "inner size / value heads (time_step_rank)")
    rope = {"rope_theta": m.req("rope.freq_base", float), "rope_type": "default",
            "partial_rotary_factor": rot / d}
    model_type, cls = _QWEN[arch]
    out = {"model_type": model_type, "architectures": [cls], **c,
           "num_key_value_heads": m.req("attention.head_count_kv"),
           "hidden_act": "silu", "rms_norm_eps": m.req("attention.layer_norm_rms_epsilon", float),
           "rope_parameters": rope, "attention_bias": False, "attention_dropout": 0.0,
           "head_dim": d, "linear_conv_kernel_dim": m.req("ssm.conv_kernel"),
           "linear_key_head_dim": m.req("ssm.state_size"), "linear_value_head_dim": v_dim,
           "linear_num_key_heads": k_heads, "linear_num_value_heads": v_heads,
           # llama.cpp: layer i is full attention when (i + 1) % interval == 0
           "layer_types": ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                           for i in range(L)]}
    if arch == "qwen35moe":
        # no dense MLP anywhere: llama.cpp reads no feed_forward_length (the converter
        # writes one when the config has intermediate_size), Qwen3_5MoeTextConfig has none
        m.get("feed_forward_length")
    else:
        out["intermediate_size"] = m.req("feed_forward_length")
    if arch != "qwen3next":
        sections = m.get("rope.dimension_sections")
        if sections is not None:
            if not (isinstance(sections, list) and all(isinstance(s, int) for s in sections)
                    and 2 * sum(sections) == rot and len(sections) == 4 and sections[3] == 0):
                m.refuse("rope.dimension_sections", "three M-RoPE sections (and a 0) that "
                         "cover the rotated dimensions are expected")
            # text positions are equal in all sections: plain RoPE over `rot` dimensions
            rope.update({"mrope_section": sections[:3], "mrope_interleaved": True})
    if arch == "qwen35":
        _no_experts(m)
        return out
    n_exp = m.get("expert_count", 0, kind=int)
    if not n_exp:
        m.refuse("expert_count", f"{arch} without experts is not supported")
    _size(m, "expert_count", _MAX_EXPERTS)
    _gating(m, _SOFTMAX, required=False)  # llama.cpp: softmax, top-k renormalised
    out.update({"moe_intermediate_size": _size(m, "expert_feed_forward_length",
                                               _MAX_EXPERT_SIZE),
                "shared_expert_intermediate_size": _size(
                    m, "expert_shared_feed_forward_length", _MAX_EXPERT_SIZE),
                "num_experts_per_tok": _used_experts(m, n_exp), "num_experts": n_exp})
    if arch == "qwen3next":
        out.update({"decoder_sparse_step": 1, "norm_topk_prob": True, "mlp_only_layers": []})
    return out


def config(arch: str, m, n_tokens: int, names: set) -> dict:
    """The transformers config dict of a hybrid file (``m``: the reader's ``_Meta``)."""
    if arch in ("lfm2", "lfm2moe"):
        return _lfm2(m, n_tokens, names, moe=arch == "lfm2moe")
    if arch == "granitehybrid":
        return _granitehybrid(m, n_tokens, names)
    if arch == "falcon-h1":
        return _falcon_h1(m, n_tokens, names)
    return _qwen_gdn(m, n_tokens, arch)


# ----------------------------------------------------------------------------- tensors
@dataclass
class Target:
    """One Hugging Face tensor: the GGUF tensors it comes from (with the shapes, torch
    order, that llama.cpp's converter writes) and how to put them back."""
    sources: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    build: Callable[..., torch.Tensor]


def _same(x):
    return x


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row order for llama-architecture files (it interleaves each
    head's two rotary halves); ``w`` is ``[n_head * head_dim, ...]`` or a bias."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def a_log(a: torch.Tensor) -> torch.Tensor:
    """Undo ``ssm_a = -exp(A_log)``: the float32 ``x`` nearest to ``log(-a)`` whose
    ``-exp(x)`` (float32, as the converter computed it) is ``a`` bit for bit, element by
    element. Where several float32 ``x`` give the same ``a`` (small ``|x|``), no reader can
    tell which the checkpoint held; the nearest to the exact logarithm is returned."""
    a = a.to(torch.float32)
    x = torch.log(-a.double()).float()
    for _ in range(4):  # at most a few ulps from the exactly rounded logarithm
        y = -torch.exp(x)
        bad = y != a
        if not bad.any():
            break
        # -exp(x) too negative (|y| > |a|): x is too large
        step = torch.where(y < a, torch.tensor(-math.inf), torch.tensor(math.inf))
        x = torch.where(bad, torch.nextafter(x, step), x)
    return x


def _minus_one(w):
    return w - 1.0  # llama.cpp stores Qwen3-Next's (1 + w) RMSNorm weight as 1 + w


def _v_untile(w: torch.Tensor, dim: int, k_heads: int, per_k: int, size: int) -> torch.Tensor:
    """Undo Qwen3.5's value-head order: the converter tiles heads (K0 K1 .. K0 K1 ..) where
    transformers groups them by key head (K0 K0 .. K1 K1 ..)."""
    if per_k == 1:
        return w
    shape = list(w.shape)
    w = w.reshape(*shape[:dim], per_k, k_heads, size, *shape[dim + 1:])
    return w.transpose(dim, dim + 1).reshape(shape)


def plan(arch: str, c: dict, names: set) -> dict[str, Target]:
    """Hugging Face name -> Target for every tensor a file of this config holds."""
    H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    out: dict[str, Target] = {}

    def one(hf, gguf, shape, build=_same):
        out[hf] = Target((gguf,), (tuple(shape),), build)

    final_norm = {"lfm2": ("token_embd_norm", "model.embedding_norm"),
                  "lfm2moe": ("token_embd_norm", "model.embedding_norm"),
                  "falcon-h1": ("output_norm", "model.final_layernorm")}.get(
        arch, ("output_norm", "model.norm"))
    gemma_norm = _minus_one if arch in _QWEN else _same
    one("model.embed_tokens.weight", "token_embd.weight", (V, H))
    one(final_norm[1] + ".weight", final_norm[0] + ".weight", (H,), gemma_norm)
    if not c["tie_word_embeddings"]:
        one("lm_head.weight", "output.weight", (V, H))
    layer = {"lfm2": _lfm2_layer, "lfm2moe": _lfm2_layer, "granitehybrid": _granite_layer,
             "falcon-h1": _falcon_layer, "qwen35": _qwen_layer, "qwen35moe": _qwen_layer,
             "qwen3next": _qwen_layer}[arch]
    for i in range(L):
        for hf, (src, shape, build) in layer(arch, c, i, names).items():
            if isinstance(src, str):
                one(f"model.layers.{i}.{hf}", f"blk.{i}.{src}", shape, build)
            else:
                out[f"model.layers.{i}.{hf}"] = Target(
                    tuple(f"blk.{i}.{s}" for s in src), tuple(tuple(s) for s in shape), build)
    return out


def _experts(c, i, names, E, I, merged_ok=False):
    """Routed experts as the converter stacks them, back to transformers 5's fused
    ``gate_up_proj [E, 2I, H]`` (gate rows, then up rows) and ``down_proj [E, H, I]``;
    ``merged_ok``: the architecture may also hold them as one ``ffn_gate_up_exps``."""
    H = c["hidden_size"]
    if merged_ok and f"blk.{i}.ffn_gate_up_exps.weight" in names:  # newer converters
        gate_up = ("ffn_gate_up_exps.weight", (E, 2 * I, H), _same)
    else:
        gate_up = (("ffn_gate_exps.weight", "ffn_up_exps.weight"), ((E, I, H), (E, I, H)),
                   lambda g, u: torch.cat([g, u], 1))
    return {"experts.gate_up_proj": gate_up,
            "experts.down_proj": ("ffn_down_exps.weight", (E, H, I), _same)}


def _under(prefix: str, tensors: dict) -> dict:
    return {prefix + k: v for k, v in tensors.items()}


def _lfm2_layer(arch, c, i, names):
    H, I = c["hidden_size"], c["intermediate_size"]
    t = {"operator_norm.weight": ("attn_norm.weight", (H,), _same),
         "ffn_norm.weight": ("ffn_norm.weight", (H,), _same)}
    if arch == "lfm2moe" and i >= c["num_dense_layers"]:
        E = c["num_experts"]
        t.update(_under("feed_forward.", _experts(c, i, names, E, c["moe_intermediate_size"])))
        t["feed_forward.gate.weight"] = ("ffn_gate_inp.weight", (E, H), _same)
        if c["use_expert_bias"]:  # the converter's name for it: exp_probs_b.bias
            t["feed_forward.expert_bias"] = ("exp_probs_b.bias", (E,), _same)
    else:
        t.update({"feed_forward.w1.weight": ("ffn_gate.weight", (I, H), _same),
                  "feed_forward.w3.weight": ("ffn_up.weight", (I, H), _same),
                  "feed_forward.w2.weight": ("ffn_down.weight", (H, I), _same)})
    if c["layer_types"][i] == "conv":
        K = c["conv_L_cache"]
        t.update({"conv.conv.weight": ("shortconv.conv.weight", (H, K),  # squeezed (H, 1, K)
                                       lambda w: w.unsqueeze(1)),
                  "conv.in_proj.weight": ("shortconv.in_proj.weight", (3 * H, H), _same),
                  "conv.out_proj.weight": ("shortconv.out_proj.weight", (H, H), _same)})
    else:
        nh, kv = c["num_attention_heads"], c["num_key_value_heads"]
        d = H // nh
        t.update({"self_attn.q_proj.weight": ("attn_q.weight", (nh * d, H), _same),
                  "self_attn.k_proj.weight": ("attn_k.weight", (kv * d, H), _same),
                  "self_attn.v_proj.weight": ("attn_v.weight", (kv * d, H), _same),
                  "self_attn.out_proj.weight": ("attn_output.weight", (H, nh * d), _same),
                  "self_attn.q_layernorm.weight": ("attn_q_norm.weight", (d,), _same),
                  "self_attn.k_layernorm.weight": ("attn_k_norm.weight", (d,), _same)})
    return t


def _mamba_tensors(c, i, names, prefix, inner):
    """Mamba-2 mixer tensors as Mamba2Model's converter writes them: conv1d squeezed to
    (channels, kernel), A and D as (heads, 1), A as -exp(A_log), dt_bias as ssm_dt.bias,
    the gated norm reshaped to (groups, inner / groups)."""
    H = c["hidden_size"]
    nh, G, N, K = c["mamba_n_heads"], c["mamba_n_groups"], c["mamba_d_state"], c["mamba_d_conv"]
    conv = inner + 2 * G * N
    t = {f"{prefix}in_proj.weight": ("ssm_in.weight", (2 * inner + 2 * G * N + nh, H), _same),
         f"{prefix}conv1d.weight": ("ssm_conv1d.weight", (conv, K), lambda w: w.unsqueeze(1)),
         f"{prefix}dt_bias": ("ssm_dt.bias", (nh,), _same),
         f"{prefix}A_log": ("ssm_a", (nh, 1), lambda w: a_log(w.reshape(nh))),
         f"{prefix}D": ("ssm_d", (nh, 1), lambda w: w.reshape(nh)),
         f"{prefix}out_proj.weight": ("ssm_out.weight", (H, inner), _same)}
    if c["mamba_conv_bias"]:
        t[f"{prefix}conv1d.bias"] = ("ssm_conv1d.bias", (conv,), _same)
    if c.get("mamba_rms_norm", True):
        t[f"{prefix}norm.weight"] = ("ssm_norm.weight", (G, inner // G),
                                     lambda w: w.reshape(inner))
    return t


def _granite_layer(arch, c, i, names):
    H, S, E = c["hidden_size"], c["shared_intermediate_size"], c["num_local_experts"]
    # the converter splits the shared MLP's [gate; up] rows into two tensors, named as the
    # layer's MLP (ffn_gate/up/down) without experts, as the shared expert's (_shexp) with
    sh = "_shexp" if E else ""
    t = {"input_layernorm.weight": ("attn_norm.weight", (H,), _same),
         "post_attention_layernorm.weight": ("ffn_norm.weight", (H,), _same),
         "shared_mlp.input_linear.weight": ((f"ffn_gate{sh}.weight", f"ffn_up{sh}.weight"),
                                            ((S, H), (S, H)),
                                            lambda g, u: torch.cat([g, u], 0)),
         "shared_mlp.output_linear.weight": (f"ffn_down{sh}.weight", (H, S), _same)}
    if E:  # input_linear [E, 2I, H] is split into ffn_gate_exps and ffn_up_exps
        t.update(_under("block_sparse_moe.", _experts(c, i, names, E, c["intermediate_size"])))
        t["block_sparse_moe.router.weight"] = ("ffn_gate_inp.weight", (E, H), _same)
    if c["layer_types"][i] == "linear_attention":
        t.update(_mamba_tensors(c, i, names, "mamba.", c["mamba_n_heads"] * c["mamba_d_head"]))
    else:
        nh, kv = c["num_attention_heads"], c["num_key_value_heads"]
        d = H // nh
        # GraniteHybridModel sets undo_permute: llama's q/k row order, RoPE or not
        t.update({"self_attn.q_proj.weight": ("attn_q.weight", (nh * d, H),
                                              lambda w: unpermute_rows(w, nh)),
                  "self_attn.k_proj.weight": ("attn_k.weight", (kv * d, H),
                                              lambda w: unpermute_rows(w, kv)),
                  "self_attn.v_proj.weight": ("attn_v.weight", (kv * d, H), _same),
                  "self_attn.o_proj.weight": ("attn_output.weight", (H, nh * d), _same)})
    return t


def _falcon_layer(arch, c, i, names):
    H, I = c["hidden_size"], c["intermediate_size"]
    nh, kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    t = {"input_layernorm.weight": ("attn_norm.weight", (H,), _same),
         "pre_ff_layernorm.weight": ("ffn_norm.weight", (H,), _same),
         "feed_forward.gate_proj.weight": ("ffn_gate.weight", (I, H), _same),
         "feed_forward.up_proj.weight": ("ffn_up.weight", (I, H), _same),
         "feed_forward.down_proj.weight": ("ffn_down.weight", (H, I), _same),
         "self_attn.q_proj.weight": ("attn_q.weight", (nh * d, H), _same),
         "self_attn.k_proj.weight": ("attn_k.weight", (kv * d, H), _same),
         "self_attn.v_proj.weight": ("attn_v.weight", (kv * d, H), _same),
         "self_attn.o_proj.weight": ("attn_output.weight", (H, nh * d), _same)}
    t.update(_mamba_tensors(c, i, names, "mamba.", c["mamba_d_ssm"]))
    return t


def _qwen_layer(arch, c, i, names):
    H, d = c["hidden_size"], c["head_dim"]
    nh, kv = c["num_attention_heads"], c["num_key_value_heads"]
    t = {"input_layernorm.weight": ("attn_norm.weight", (H,), _minus_one),
         "post_attention_layernorm.weight": ("post_attention_norm.weight", (H,), _minus_one)}
    if c["layer_types"][i] == "full_attention":
        t.update({"self_attn.q_proj.weight": ("attn_q.weight", (2 * nh * d, H), _same),  # q, gate
                  "self_attn.k_proj.weight": ("attn_k.weight", (kv * d, H), _same),
                  "self_attn.v_proj.weight": ("attn_v.weight", (kv * d, H), _same),
                  "self_attn.o_proj.weight": ("attn_output.weight", (H, nh * d), _same),
                  "self_attn.q_norm.weight": ("attn_q_norm.weight", (d,), _minus_one),
                  "self_attn.k_norm.weight": ("attn_k_norm.weight", (d,), _minus_one)})
    else:
        t.update(_gdn_tensors(arch, c))
    if arch == "qwen35":
        I = c["intermediate_size"]
        t.update({"mlp.gate_proj.weight": ("ffn_gate.weight", (I, H), _same),
                  "mlp.up_proj.weight": ("ffn_up.weight", (I, H), _same),
                  "mlp.down_proj.weight": ("ffn_down.weight", (H, I), _same)})
        return t
    E, I, S = c["num_experts"], c["moe_intermediate_size"], c["shared_expert_intermediate_size"]
    t.update(_under("mlp.", _experts(c, i, names, E, I, merged_ok=True)))
    t.update({"mlp.gate.weight": ("ffn_gate_inp.weight", (E, H), _same),
              "mlp.shared_expert.gate_proj.weight": ("ffn_gate_shexp.weight", (S, H), _same),
              "mlp.shared_expert.up_proj.weight": ("ffn_up_shexp.weight", (S, H), _same),
              "mlp.shared_expert.down_proj.weight": ("ffn_down_shexp.weight", (H, S), _same),
              "mlp.shared_expert_gate.weight": ("ffn_gate_inp_shexp.weight", (1, H), _same)})
    return t


def _gdn_tensors(arch, c):
    """Gated DeltaNet tensors. Both converters: A as -exp(A_log), dt_bias as ssm_dt.bias,
    conv1d squeezed; the gated norm is stored as is. qwen3next: in_proj_qkvz (per key
    head [q k v z]) split into attn_qkv ([all q; all k; all v]) and attn_gate (all z).
    qwen35: value heads tiled rather than grouped by key head in every tensor that has
    them (the v rows of qkv and conv1d, z, a, b, A, dt_bias, out_proj's columns)."""
    H, K = c["hidden_size"], c["linear_conv_kernel_dim"]
    nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    r = nv // nk
    kd, vd = nk * dk, nv * dv
    conv = 2 * kd + vd
    if arch in ("qwen35", "qwen35moe"):
        def vrows(w, size=dv):
            return _v_untile(w, 0, nk, r, size)

        def qkv(w):
            return torch.cat([w[:2 * kd], vrows(w[2 * kd:])], 0)

        def heads(w):
            return vrows(w.reshape(nv, 1), 1).reshape(nv)

        return {"linear_attn.in_proj_qkv.weight": ("attn_qkv.weight", (conv, H), qkv),
                "linear_attn.in_proj_z.weight": ("attn_gate.weight", (vd, H), vrows),
                "linear_attn.in_proj_b.weight": ("ssm_beta.weight", (nv, H),
                                                 lambda w: vrows(w, 1)),
                "linear_attn.in_proj_a.weight": ("ssm_alpha.weight", (nv, H),
                                                 lambda w: vrows(w, 1)),
                "linear_attn.conv1d.weight": ("ssm_conv1d.weight", (conv, K),
                                              lambda w: qkv(w).unsqueeze(1)),
                "linear_attn.dt_bias": ("ssm_dt.bias", (nv,), heads),
                "linear_attn.A_log": ("ssm_a", (nv,), lambda w: heads(a_log(w))),
                "linear_attn.norm.weight": ("ssm_norm.weight", (dv,), _same),
                "linear_attn.out_proj.weight": ("ssm_out.weight", (H, vd),
                                                lambda w: _v_untile(w, 1, nk, r, dv))}

    def qkvz(qkv, z):
        q, k, v = qkv[:kd], qkv[kd:2 * kd], qkv[2 * kd:]
        per = [q.reshape(nk, dk, H), k.reshape(nk, dk, H), v.reshape(nk, r * dv, H),
               z.reshape(nk, r * dv, H)]
        return torch.cat(per, 1).reshape(-1, H)

    return {"linear_attn.in_proj_qkvz.weight": (("attn_qkv.weight", "attn_gate.weight"),
                                                ((conv, H), (vd, H)), qkvz),
            "linear_attn.in_proj_ba.weight": ("ssm_ba.weight", (2 * nv, H), _same),
            "linear_attn.conv1d.weight": ("ssm_conv1d.weight", (conv, K),
                                          lambda w: w.unsqueeze(1)),
            "linear_attn.dt_bias": ("ssm_dt.bias", (nv,), _same),
            "linear_attn.A_log": ("ssm_a", (nv,), a_log),
            "linear_attn.norm.weight": ("ssm_norm.weight", (dv,), _same),
            "linear_attn.out_proj.weight": ("ssm_out.weight", (H, vd), _same)}

