"""Operations of a hybrid model that never spike, counted from its config alone.

The spiking simulator counts events only at the inputs of the converted linear layers.
Everything else still runs at full precision (FP16 by default in the energy model):
attention scores and weighted sums, the linear mixers' state updates and readouts (GLA,
Gated DeltaNet, Mamba-2) and convolutions, gates, RMSNorms, RoPE, the SwiGLU activation,
residual adds, ``lm_head`` and the embedding lookup.
:func:`nonspiking_ops` counts them per component so that :mod:`sbsnn.analysis.energy`
can price them and show them apart.

Two kinds of count, told apart by the key's suffix:

* ``*_macs``: multiply-accumulates (one multiply and one add);
* ``*_ops``: single elementwise operations (an add, a multiply, a compare, an exp...);
* ``embedding_reads`` (elements read from the embedding table) is a memory count, neither.

``total_macs`` and ``total_ops`` sum the two kinds.

Per token and per layer, with ``h`` hidden size, ``H`` query heads, ``Hkv`` key/value
heads, ``D`` head dim, ``I`` intermediate size, ``V`` vocabulary, ``K`` keys a query
sees (below):

=====================  ==============================================  =============
component              count per token                                 where
=====================  ==============================================  =============
attn_qk_macs           H * K * D              (q . k for every key)     window/full
attn_av_macs           H * K * D              (softmax weights x V)     window/full
attn_softmax_ops       5 * H * K  (max, subtract, exp, sum, divide)     window/full
attn_scale_ops         H * D      (q / sqrt(D))                         window/full
rope_ops               3 * (H + Hkv) * rotary_dim  (x*cos + rot(x)*sin)  window/full
gla_state_macs         Hkv * D * D  (S += k^T v)                        GLA
gla_decay_ops          Hkv * D * D  (S *= exp(g), one multiply each)    GLA
gla_gate_ops           3 * Hkv * D  (logsigmoid, / normaliser, exp)     GLA
gla_feature_ops        (H + Hkv) * D  (ReLU or sigmoid on q and k)      GLA
gla_scale_ops          H * D      (q / sqrt(D))                         GLA
gla_readout_macs       H * D * D    (o = q S, per query head)           GLA
rmsnorm_ops            4 per element (square, sum, x * rsqrt, * weight)  every norm
residual_adds_ops      2 * h (+ h to sum the two branches of a parallel or Falcon-H1 layer)
swiglu_ops             5 * I  (silu = exp, add, divide, multiply; gate * up)
mlp_act_ops            4 * I  (the activation of an MLP without a gate,   Nemotron-H
                       down(act(up(x))); in place of swiglu_ops)
moe_router_ops         2 * E  (router activation and top-k compare)     MoE layers
moe_combine_ops        2 * h * (top_k + shared)  (weight and sum)       MoE layers
                       + h + 1 with a shared-expert gate (sigmoid, scale)
attn_out_gate_ops      4 * H * D  (sigmoid of the gate, multiply)       gated attention
gdn_conv_macs          K * (2 Hk dk + Hv dv)  (causal depthwise conv)   GDN
gdn_conv_ops           A * (2 Hk dk + Hv dv)  (its activation)          GDN
gdn_l2norm_ops         3 * 2 Hk dk  (square, sum, x * rsqrt; q and k)   GDN
gdn_scale_ops          Hk * dk    (q / sqrt(dk))                        GDN
gdn_beta_ops           3 * Hv     (beta = sigmoid(b))                   GDN
gdn_decay_gate_ops     6 * Hv  (a + dt_bias, softplus: exp, add, log;   GDN
                       times -exp(A_log); exp)
gdn_decay_ops          Hv * dk * dv  (S *= exp(g))                      GDN
gdn_predict_macs       Hv * dk * dv  (k^T S)                            GDN
gdn_delta_ops          2 * Hv * dv   (v - k^T S, times beta)            GDN
gdn_write_macs         Hv * dk * dv  (S += k u^T)                       GDN
gdn_readout_macs       Hv * dk * dv  (o = S^T q)                        GDN
gdn_out_gate_ops       5 * Hv * dv   (silu(z), multiply)                GDN
mamba2_conv_macs       K * (H P + 2 G N)  (causal depthwise conv)       Mamba-2
mamba2_conv_ops        (A + bias) * (H P + 2 G N)  (activation, bias)   Mamba-2
mamba2_dt_ops          6 * H  (dt + dt_bias, softplus: exp, add, log;   Mamba-2
                       dt * A; exp)
mamba2_decay_ops       H * P * N  (S *= exp(dt A))                      Mamba-2
mamba2_input_ops       H * P      (dt * x)                              Mamba-2
mamba2_write_macs      H * P * N  (S += (dt x) B^T)                     Mamba-2
mamba2_readout_macs    H * P * N  (y = S C)                             Mamba-2
mamba2_skip_ops        2 * H * P  (D * x, add)                          Mamba-2
mamba2_out_gate_ops    5 * H * P  (silu(z), multiply)                   Mamba-2
mamba2_mup_ops         h (input multiplier) + the in_proj outputs        Mamba-2
                       whose multiplier is not 1 (Falcon-H1's muP)
shortconv_macs         K * h      (causal depthwise conv)               short conv
shortconv_bias_ops     h          (its bias, when it has one)           short conv
shortconv_gate_ops     2 * h      (B * x before, C * z after the conv)  short conv
mup_ops                one multiply per element for each muP scalar    Granite, Falcon-H1
                       that is not 1: 2 h (residual_multiplier: both
                       branches), Hkv D (key_multiplier), h each for
                       the attention input / output and Mamba-2 output
                       of a Falcon-H1 layer, I (MLP gate), h (MLP
                       output); once per token h (embeddings) and V per
                       logits scalar
lm_head_macs           V * h                                            once
embedding_reads        h  (elements read)                               once
dense_<proj>_macs      in * out of each projection named in ``dense_projections``
=====================  ==============================================  =============

Linear mixers (``layer_mixers``): Gated DeltaNet with ``Hk`` key heads of ``dk``, ``Hv``
value heads of ``dv``, conv kernel ``K``; Mamba-2 with ``H`` heads of ``P``, state size
``N``, ``G`` groups, conv kernel ``K``; the short convolution with kernel ``K``
(``L_cache``) over ``h`` channels. ``A``: ops of the conv activation, 4 (as silu: exp,
add, divide, multiply; every other activation is counted alike), 0 without one. Their
sizes are read from the mixer built on the meta device
(:func:`sbsnn.models.info.mixer_skeletons`). The keys of a mixer kind, and
``attn_out_gate_ops``, are present only for models that have it.

Norms: attn_norm and mlp_norm in every layer (one norm in a block of one sub-layer,
Nemotron-H's; plus the two branch norms of a parallel
layer, the two sandwich norms of Gemma 3), the per-head ``g_norm`` of GLA over ``H * D``
elements, the q/k norms of Qwen3 / Gemma 3 / Qwen3.5 attention over ``(H + Hkv) * D``, the
gated norm of GDN over ``Hv * dv`` and of Mamba-2 (unless ``rms_norm`` is off) over
``H * P`` elements, the final norm over ``h``. RoPE rotates the ``rotary_dim`` first
channels of each head (``D`` unless ``partial_rotary_factor`` < 1).

Keys a query sees, ``K``:

* ``context=None``: the ``tokens`` form a fresh sequence (a prefill from an empty state);
  the query at (non-sink) index ``j`` sees the causal keys of its window plus the sink
  keys, exactly as :class:`~sbsnn.models.attention.WindowAttention` masks them:
  ``min(S + j + 1, W) + min(S, max(0, S + j - W + 1))`` with ``S`` sink tokens (``W``
  infinite for full attention). Summed in closed form.
* ``context=c``: steady-state decoding; every one of the ``tokens`` sees ``min(c, W)``
  keys of the window (``c`` for full attention; ``c`` counts the token itself) plus the
  ``S`` sink keys.

Assumptions (each an undercount or overcount the reader should know):

* GLA, Gated DeltaNet and Mamba-2 are counted in their recurrent (token by token) form,
  the decoding form. The chunked form a prompt goes through does different (more) work
  for the same result (and Mamba-2 clamps dt there, uncounted). Constants of the weights
  alone (``exp(A_log)``) are taken as precomputed.
* An exp, a logsigmoid, an rsqrt or a division counts as one op, as does a compare.
* Sink tokens are not counted as queries (they are a one-time prefix), only as keys.
* Projections (q, k, v, o, the GLA gate, the linear mixers' ``in_proj*`` and
  ``out_proj``, MLP gate/up/down, MoE router and experts) are spiking layers and are NOT
  counted here, except those named in ``dense_projections``
  (the ``w8aspike`` preset leaves every ``down_proj`` dense: pass
  ``dense_projections=("down_proj",)``). ``lm_head`` is always dense and always counted.
* The ``w8aspike`` per-head query spiking and INT8 K/V caching change the precision of the
  attention products, not their number; they are counted here at the stated precision.
* Memory traffic of these operations (KV cache, GLA state, lm_head weights) is not
  counted, only arithmetic.
"""

from __future__ import annotations

from typing import Iterable

from sbsnn.errors import brief
from sbsnn.models.config import ATTENTION_KINDS, HybridConfig
from sbsnn.models.info import mixer_skeletons

__all__ = ["DENSE_PROJECTIONS", "nonspiking_ops", "visible_keys"]

# Projection names (the last part of a module name). in_proj*: the linear mixers' input
# projections (Gated DeltaNet: in_proj_qkv/_z/_b/_a or in_proj_qkvz/_ba; Mamba-2 and the
# short conv: in_proj); out_proj: their output projection.
DENSE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gk_proj", "gate_proj",
                     "up_proj", "down_proj", "router", "in_proj", "in_proj_qkv", "in_proj_z",
                     "in_proj_b", "in_proj_a", "in_proj_qkvz", "in_proj_ba", "out_proj")

RMSNORM_OPS = 4        # per element
SOFTMAX_OPS = 5        # per score
ROPE_OPS = 3           # per element of q and k
GATE_OPS = 3           # per gate element
SWIGLU_OPS = 5         # per intermediate element
ACT_OPS = 4            # an activation (silu: exp, add, divide, multiply), per element
SIGMOID_OPS = 3        # exp, add, divide
SOFTPLUS_OPS = 3       # exp, add, log
L2NORM_OPS = 3         # per element: square, sum, x * rsqrt


def _sum_min(a: int, n: int, w: int | None) -> int:
    """sum_{j=0}^{n-1} min(a + j, w)  (w None = no cap)."""
    if n <= 0:
        return 0
    if w is None:
        return n * a + n * (n - 1) // 2
    m = min(max(w - a, 0), n)           # terms below the cap
    return m * a + m * (m - 1) // 2 + (n - m) * w


def _sum_relu(c: int, n: int) -> int:
    """sum_{j=0}^{n-1} max(0, c + j)."""
    j0 = max(0, 1 - c)
    k = n - j0
    if k <= 0:
        return 0
    return k * c + (j0 + n - 1) * k // 2


def visible_keys(tokens: int, window: int | None, context: int | None = None,
                 sinks: int = 0) -> int:
    """Keys seen, summed over ``tokens`` queries (see the module docstring for ``K``)."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    if context is not None:
        if context < 1:
            raise ValueError(f"context must be >= 1 (it counts the token itself), got {context}")
        per = context if window is None else min(context, window)
        return tokens * (per + sinks)
    # Query j (absolute position S + j): window part min(S + j + 1, W); sinks outside it
    # min(S, max(0, S + j - W + 1)).
    in_window = _sum_min(sinks + 1, tokens, window)
    if window is None:
        return in_window
    c = sinks - window + 1
    extra_sinks = _sum_relu(c, tokens) - _sum_relu(c - sinks, tokens)
    return in_window + extra_sinks


def _projection_macs(cfg: HybridConfig, i: int, name: str, mixers: dict) -> int:
    """MACs per token of projection ``name`` in layer ``i`` (0 when the layer has none).
    ``mixers``: :func:`~sbsnn.models.info.mixer_skeletons` of ``cfg``."""
    h, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kind = cfg.layer_kind(i)
    attn = 1 if kind in ATTENTION_KINDS else 0       # parallel: window attention + GLA
    gla_mixers = 1 if kind in ("gla", "parallel") else 0
    if name.startswith(("in_proj", "out_proj")):
        lm = cfg.linear_mixer_of(i)
        if lm is None:
            return 0
        lin = dict(mixers[lm].named_children()).get(name)
        return 0 if lin is None else lin.in_features * lin.out_features
    if name == "q_proj":   # gated attention: q_proj gives the query and the gate
        return attn * h * H * D * (2 if cfg.attn_output_gate else 1) + gla_mixers * h * H * D
    if name in ("k_proj", "v_proj"):
        return (attn + gla_mixers) * h * Hkv * D
    if name == "o_proj":
        return (attn + gla_mixers) * H * D * h
    if name == "gk_proj":
        if cfg.linear_attn_gate != "lowrank":
            return 0
        return gla_mixers * (h * cfg.gate_low_rank_dim + cfg.gate_low_rank_dim * Hkv * D)
    if cfg.is_moe_layer(i):
        inter = cfg.moe_intermediate_size or cfg.intermediate_size
        shared = cfg.shared_expert_intermediate_size or inter
        active = cfg.num_experts_per_tok * inter + cfg.num_shared_experts * shared
        if name == "router":
            return h * cfg.num_experts
        if name == "gate_proj" and not cfg.mlp_gated:
            return 0
        return h * active  # gate_proj, up_proj, down_proj of the active experts
    if name == "router" or not cfg.has_mlp(i) or (name == "gate_proj" and not cfg.mlp_gated):
        return 0
    return h * cfg.intermediate_size  # gate_proj, up_proj, down_proj


# The muP scalars of Granite 4.0-H and Falcon-H1 (HybridConfig fields; 1.0: absent).
MUP_SCALARS = ("embedding_multiplier", "residual_multiplier", "logits_multiplier",
               "logits_divisor", "key_multiplier", "attn_in_multiplier", "attn_out_multiplier",
               "ssm_out_multiplier", "mlp_gate_multiplier", "mlp_down_multiplier")


def _mup_layer_ops(cfg: HybridConfig, kind: str, i: int) -> int:
    """Per-token multiplies by the muP scalars that are not 1 in layer ``i`` (the
    Mamba-2 input multipliers are ``mamba2_mup_ops``): both branch outputs
    (``residual_multiplier``), the keys, the attention input and output and the Mamba-2
    output of a Falcon-H1 layer, the MLP's gate and output."""
    h, Hkv, D = cfg.hidden_size, cfg.num_key_value_heads, cfg.head_dim
    inter = cfg.moe_intermediate_size if cfg.is_moe_layer(i) else cfg.intermediate_size
    attn = kind in ATTENTION_KINDS
    both = kind == "attn+mamba2"
    mlp = cfg.has_mlp(i)
    return ((cfg.residual_multiplier != 1.0) * (cfg.has_mixer(i) + mlp) * h
            + (cfg.key_multiplier != 1.0) * attn * Hkv * D
            + (cfg.attn_in_multiplier != 1.0) * both * h
            + (cfg.attn_out_multiplier != 1.0) * both * h
            + (cfg.ssm_out_multiplier != 1.0) * both * h
            + (cfg.mlp_gate_multiplier != 1.0) * mlp * (inter or 0)
            + (cfg.mlp_down_multiplier != 1.0) * mlp * h)


def _act_ops(activation: str | None) -> int:
    return 0 if activation is None else ACT_OPS


def _mixer_ops(kind: str, m, cfg: HybridConfig) -> dict[str, int]:
    """Per-token counts of one linear-mixer layer of ``kind`` (``m`` its module); the
    ``rmsnorm_ops`` of its gated norm included. Formulas: the module docstring."""
    if kind == "gdn":
        Hk, Hv, dk, dv = m.num_k_heads, m.num_v_heads, m.head_k_dim, m.head_v_dim
        state = Hv * dk * dv
        return {"gdn_conv_macs": m.conv_kernel_size * m.conv_dim,
                "gdn_conv_ops": _act_ops(m.activation) * m.conv_dim,
                "gdn_l2norm_ops": L2NORM_OPS * 2 * Hk * dk,
                "gdn_scale_ops": Hk * dk,
                "gdn_beta_ops": SIGMOID_OPS * Hv,
                "gdn_decay_gate_ops": (1 + SOFTPLUS_OPS + 1 + 1) * Hv,
                "gdn_decay_ops": state, "gdn_predict_macs": state,
                "gdn_delta_ops": 2 * Hv * dv,
                "gdn_write_macs": state, "gdn_readout_macs": state,
                "gdn_out_gate_ops": (ACT_OPS + 1) * Hv * dv,
                "rmsnorm_ops": RMSNORM_OPS * Hv * dv}
    if kind == "mamba2":
        H, P, N, G = m.num_heads, m.head_dim, m.d_state, m.n_groups
        state = H * P * N
        conv_bias = 1 if m.conv1d.bias is not None else 0
        segments = (m.d_inner, m.d_inner, G * N, G * N, H)     # z, x, B, C, dt
        mup = (cfg.hidden_size if m.in_multiplier != 1.0 else 0) + sum(
            size for size, mult in zip(segments, m.zxbcdt_multipliers) if mult != 1.0)
        return {"mamba2_conv_macs": m.d_conv * m.conv_dim,
                "mamba2_conv_ops": (_act_ops(m.activation) + conv_bias) * m.conv_dim,
                "mamba2_dt_ops": (1 + SOFTPLUS_OPS + 1 + 1) * H,
                "mamba2_decay_ops": state, "mamba2_input_ops": H * P,
                "mamba2_write_macs": state, "mamba2_readout_macs": state,
                "mamba2_skip_ops": 2 * H * P,
                "mamba2_out_gate_ops": (ACT_OPS + 1) * H * P,
                "mamba2_mup_ops": mup,
                "rmsnorm_ops": RMSNORM_OPS * H * P if m.rms_norm else 0}
    h = m.hidden_size
    return {"shortconv_macs": m.L_cache * h,
            "shortconv_bias_ops": h if m.conv.bias is not None else 0,
            "shortconv_gate_ops": 2 * h}


def nonspiking_ops(config: HybridConfig, tokens: int, context: int | None = None, *,
                   dense_projections: Iterable[str] = ()) -> dict[str, int]:
    """Operations that never spike, by component, for ``tokens`` tokens of ``config``.

    ``context=None``: the tokens are a fresh sequence (causal prefill); ``context=c``:
    each token is a decoding step that sees ``c`` tokens (itself included), so window
    layers attend over ``min(c, window)`` keys. ``dense_projections``: names of linear
    projections the conversion leaves dense (e.g. ``("down_proj",)`` for ``w8aspike``),
    counted as ``dense_<name>_macs``. Keys and formulas: see the module docstring.
    """
    cfg = config
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {brief(tokens)}")
    if context is not None and (not isinstance(context, int) or context < 1):
        raise ValueError(f"context must be None or an integer >= 1, got {context!r}")
    dense = list(dict.fromkeys(dense_projections))
    unknown = [n for n in dense if n not in DENSE_PROJECTIONS]
    if unknown:
        raise ValueError(f"unknown projection names {unknown}; choose among {DENSE_PROJECTIONS}")
    n = tokens
    h, H, Hkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    S = cfg.num_sink_tokens
    out = {k: 0 for k in (
        "attn_qk_macs", "attn_av_macs", "attn_softmax_ops", "attn_scale_ops", "rope_ops",
        "gla_state_macs", "gla_decay_ops", "gla_gate_ops", "gla_feature_ops", "gla_scale_ops",
        "gla_readout_macs", "rmsnorm_ops", "residual_adds_ops", "swiglu_ops", "moe_router_ops",
        "moe_combine_ops", "lm_head_macs")}
    mixers = mixer_skeletons(cfg)
    per_mixer = {k: _mixer_ops(k, m, cfg) for k, m in mixers.items()}
    if cfg.attn_output_gate and any(cfg.layer_kind(i) in ATTENTION_KINDS
                                    for i in range(cfg.num_hidden_layers)):
        out["attn_out_gate_ops"] = 0
    for ops in per_mixer.values():
        out.update({k: 0 for k in ops})
    for name in dense:
        out[f"dense_{name}_macs"] = 0
    # the MLPs' non-spiking work: a SwiGLU's, or a gateless MLP's activation alone
    mlp_key, mlp_per = ("swiglu_ops", SWIGLU_OPS) if cfg.mlp_gated else ("mlp_act_ops", ACT_OPS)
    if not cfg.mlp_gated:
        del out["swiglu_ops"]
        out["mlp_act_ops"] = 0
    mup = any(getattr(cfg, name) != 1.0 for name in MUP_SCALARS)
    if mup:
        out["mup_ops"] = 0
    keys_cache: dict[int | None, int] = {}
    for i in range(cfg.num_hidden_layers):
        kind = cfg.layer_kind(i)
        if kind in ATTENTION_KINDS:
            W = cfg.window_for(i)
            if W not in keys_cache:
                keys_cache[W] = visible_keys(n, W, context, S)
            K = keys_cache[W]
            out["attn_qk_macs"] += H * D * K
            out["attn_av_macs"] += H * D * K
            out["attn_softmax_ops"] += SOFTMAX_OPS * H * K
            out["attn_scale_ops"] += n * H * D
            rope = cfg.rope_for(i)      # None: attention without positions (Granite's NoPE)
            if rope is not None:
                out["rope_ops"] += n * ROPE_OPS * (H + Hkv) * rope.rotary_dim
            if cfg.qk_norm:
                out["rmsnorm_ops"] += n * RMSNORM_OPS * (H + Hkv) * D
            if cfg.attn_output_gate:
                out["attn_out_gate_ops"] += n * (SIGMOID_OPS + 1) * H * D
        lm = cfg.linear_mixer_of(i)
        if lm is not None:
            for key, v in per_mixer[lm].items():
                out[key] += n * v
        if kind in ("gla", "parallel"):
            out["gla_state_macs"] += n * Hkv * D * D
            out["gla_decay_ops"] += n * Hkv * D * D
            out["gla_gate_ops"] += n * GATE_OPS * Hkv * D
            out["gla_feature_ops"] += n * (H + Hkv) * D
            out["gla_scale_ops"] += n * H * D
            out["gla_readout_macs"] += n * H * D * D
            out["rmsnorm_ops"] += n * RMSNORM_OPS * H * D        # g_norm
        out["rmsnorm_ops"] += n * RMSNORM_OPS * cfg.norms_per_block(i) * h
        out["residual_adds_ops"] += n * h * (cfg.has_mixer(i) + cfg.has_mlp(i)
                                             + (kind in ("parallel", "attn+mamba2")))
        if mup:
            out["mup_ops"] += n * _mup_layer_ops(cfg, kind, i)
        if cfg.is_moe_layer(i):
            inter = cfg.moe_intermediate_size or cfg.intermediate_size
            shared = cfg.shared_expert_intermediate_size or inter
            active = cfg.num_experts_per_tok * inter + cfg.num_shared_experts * shared
            out[mlp_key] += n * mlp_per * active
            out["moe_router_ops"] += n * 2 * cfg.num_experts
            out["moe_combine_ops"] += n * 2 * h * (cfg.num_experts_per_tok + cfg.num_shared_experts)
            if cfg.shared_expert_gate:      # Qwen: sigmoid of the gate, times the shared sum
                out["moe_combine_ops"] += n * (h + 1)
        elif cfg.has_mlp(i):
            out[mlp_key] += n * mlp_per * cfg.intermediate_size
        for name in dense:
            out[f"dense_{name}_macs"] += n * _projection_macs(cfg, i, name, mixers)
    out["rmsnorm_ops"] += n * RMSNORM_OPS * h                    # final norm
    if mup:   # embeddings times embedding_multiplier; logits times / divided by a scalar
        out["mup_ops"] += n * (h * (cfg.embedding_multiplier != 1.0) + cfg.vocab_size * (
            (cfg.logits_multiplier != 1.0) + (cfg.logits_divisor != 1.0)))
    out["lm_head_macs"] = n * cfg.vocab_size * h
    out["embedding_reads"] = n * h
    out["total_macs"] = sum(v for k, v in out.items() if k.endswith("_macs"))
    out["total_ops"] = sum(v for k, v in out.items() if k.endswith("_ops"))
    return out
