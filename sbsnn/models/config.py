"""Model configuration.

Field names follow SpikingBrain-7B's ``config.json`` (model_type ``gla_swa``) so that its
checkpoints load as they are; the extra fields describe the SpikingBrain-76B layout
(parallel linear + window mixers, full-attention layers, sink tokens, MoE) and the
options of the Hugging Face families (RoPE variants, norm styles, q/k norms, Gemma's
sandwich norms and embedding scale). ``config.json`` files of every supported family are
read by :mod:`sbsnn.models.families`, which handles or refuses each of their keys and
translates them into this one dataclass; the file as read is kept (``source_config``)
and written back unchanged on save.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbsnn.checks import read_json_file
from sbsnn.errors import InputError, brief
from sbsnn.models.errors import ConfigError
from sbsnn.models.families import LAYER_TYPES, SIZE_BOUNDS, read_config
from sbsnn.models.layers import ACTIVATIONS, NORM_STYLES
from sbsnn.models.rope import RopeSpec

SUPPORTED_MODEL_TYPES = ("sbsnn_hybrid", "gla_swa", "llama", "mistral", "qwen2", "qwen3",
                         "gemma3_text", "gemma3", "qwen3_5_text", "qwen3_5", "granitemoehybrid",
                         "falcon_h1", "lfm2", "lfm2_moe", "qwen3_next", "qwen3_5_moe_text",
                         "qwen3_5_moe", "bamba", "nemotron_h")
# Mixers a layer of the linear-mixer hybrids may hold (``layer_mixers``): Gated DeltaNet
# (models/gated_deltanet.py), Mamba-2 (models/mamba2.py), LFM2's short convolution
# (models/short_conv.py), softmax attention (full, or a window of sliding_window keys), and
# Falcon-H1's full attention and Mamba-2 side by side on the same normed input; "mlp": no
# mixer at all, the block is ``x + mlp(norm(x))`` (Nemotron-H's MLP and MoE layers).
MIXERS = ("gdn", "mamba2", "conv", "full", "swa", "attn+mamba2", "mlp")
# Layer kinds whose block holds softmax attention (``attn``).
ATTENTION_KINDS = ("swa", "full", "parallel", "attn+mamba2")
# Constructor arguments of each linear mixer, as HybridConfig's ``gdn`` / ``mamba2`` /
# ``short_conv`` dicts hold them (hidden_size and norm_eps come from the model).
MIXER_ARGS = {
    "gdn": ("num_key_heads", "num_value_heads", "key_head_dim", "value_head_dim",
            "conv_kernel_size", "activation", "layout"),
    "mamba2": ("num_heads", "head_dim", "d_state", "n_groups", "d_conv", "chunk_size",
               "activation", "conv_bias", "bias", "out_bias", "rms_norm", "norm_before_gate",
               "time_step_limit", "in_multiplier", "zxbcdt_multipliers"),
    "conv": ("L_cache", "bias"),
}


@dataclass
class HybridConfig:
    # --- SpikingBrain-7B names -------------------------------------------------------
    model_type: str = "sbsnn_hybrid"
    vocab_size: int = 256
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    # Layers (0-based) that use softmax attention; the others are gated linear attention.
    attn_layers: list[int] = field(default_factory=lambda: [1, 3])
    # Keys each query sees in a window layer, itself included; None = unlimited (full).
    sliding_window: int | None = 64
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    norm_eps: float = 1e-6
    hidden_act: str = "swish"
    tie_word_embeddings: bool = False
    attention_bias: bool = True  # q/k/v biases (SpikingBrain and Qwen2 have them)
    mlp_bias: bool = False
    # GLA details (fla's GatedLinearAttention as used by SpikingBrain).
    gate_low_rank_dim: int = 16
    gate_logit_normalizer: float = 16.0
    use_short_conv: bool = False
    attn_mode: str = "chunk"
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # --- SpikingBrain-76B layout -----------------------------------------------------
    # Every layer runs linear attention and window attention side by side on the same
    # input; each branch output is RMS-normalised, then the two are summed.
    parallel_mixer: bool = False
    # Layers whose softmax attention is full (unwindowed) instead of sliding-window.
    full_attn_layers: list[int] = field(default_factory=list)
    # Learnable tokens prepended to every sequence; their keys and values stay visible.
    num_sink_tokens: int = 0
    # "lowrank": GLA gate logsigmoid(W2 W1 x)/normalizer; "one_minus_k": gate = 1 - k.
    linear_attn_gate: str = "lowrank"
    # Feature map on q and k of linear attention: "relu" (7B) or "sigmoid" (76B).
    linear_feature_map: str = "relu"
    # Mixture of experts (0 routed experts = dense SwiGLU everywhere).
    num_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int | None = None
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int | None = None
    router_activation: str = "sigmoid"
    norm_topk_prob: bool = False
    # Layers that keep a dense SwiGLU even when num_experts > 0.
    dense_layers: list[int] = field(default_factory=list)
    # LFM2-MoE routing: a per-expert bias added to the router probabilities to choose the
    # experts (not to weight them), eps in the top-k renormalisation's denominator, and
    # a factor on the routing weights.
    moe_expert_bias: bool = False
    moe_norm_eps: float = 0.0
    routed_scaling_factor: float = 1.0
    # The Qwen MoE blocks (Qwen3-Next, Qwen3.5-MoE; see sbsnn.models.layers.MoE): the
    # shared experts scaled by sigmoid(shared_expert_gate(x)), routing in float32, the
    # experts' activation (None: silu, sbsnn's own MoE).
    shared_expert_gate: bool = False
    router_float32: bool = False
    moe_hidden_act: str | None = None
    # --- options of the Hugging Face families (defaults: sbsnn's own model) ----------
    # RoPE as transformers' current ``rope_parameters``: one dict for every softmax layer,
    # or one per layer type ({"full_attention": {...}, "sliding_attention": {...}}).
    # None: default RoPE with ``rope_theta``.
    rope_parameters: dict | None = None
    norm_style: str = "fla"              # see sbsnn.models.layers.NORM_STYLES
    qk_norm: bool = False                # per-head RMSNorm on q and k before RoPE
    sandwich_norm: bool = False          # Gemma: norms after attention and around the MLP
    o_proj_bias: bool = False
    embedding_scale: float | None = None  # Gemma: embeddings times sqrt(hidden_size)
    attn_scale: float | None = None      # score scale; None = head_dim ** -0.5
    final_logit_softcapping: float | None = None
    # --- linear-mixer hybrids (Qwen3.5, Qwen3-Next, Granite 4.0-H, Falcon-H1, LFM2) -------
    # The mixer of each layer (one of MIXERS) where the family names them; None: the
    # layout above (attn_layers, full_attn_layers, parallel_mixer) decides.
    layer_mixers: list[str] | None = None
    # Arguments of the linear mixers (MIXER_ARGS), as the family's reader derives them.
    gdn: dict | None = None
    mamba2: dict | None = None
    short_conv: dict | None = None
    # Qwen3.5 / Qwen3-Next attention: q_proj also gives a per-channel output gate,
    # o_proj(attn * sigmoid(gate)).
    attn_output_gate: bool = False
    # --- muP scalars (Granite 4.0-H, Falcon-H1); 1.0 leaves the model as it is --------
    # Each is applied in the forward pass (never folded into weights), where the family's
    # reference applies it.
    embedding_multiplier: float = 1.0   # token embeddings times this
    residual_multiplier: float = 1.0    # Granite: both branch outputs times this before the add
    logits_multiplier: float = 1.0      # Falcon-H1 lm_head_multiplier: logits times this
    logits_divisor: float = 1.0         # Granite logits_scaling: logits divided by this
    attn_rope: bool = True              # False: attention without positions (Granite's NoPE)
    key_multiplier: float = 1.0         # Falcon-H1: keys times this after k_proj
    attn_in_multiplier: float = 1.0     # Falcon-H1 "attn+mamba2": attention input times this
    attn_out_multiplier: float = 1.0    # Falcon-H1 "attn+mamba2": attention output times this
    ssm_out_multiplier: float = 1.0     # Falcon-H1 "attn+mamba2": Mamba-2 output times this
    mlp_gate_multiplier: float = 1.0    # Falcon-H1 MLP: act(gate_proj(x) * this) * up_proj(x)
    mlp_down_multiplier: float = 1.0    # Falcon-H1 MLP: down_proj(...) * this
    # --- Nemotron-H -------------------------------------------------------------------
    # False: a block with a mixer holds no MLP (each block is one norm and one sub-layer,
    # ``x + sub(norm(x))``; the MLPs are layers of their own, kind "mlp").
    block_mlp: bool = True
    # False: MLPs and experts are ``down(act(up(x)))``, without a gate (layers.MLP).
    mlp_gated: bool = True
    # Keys that change nothing in the forward pass, kept so a saved config round-trips.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    # The config.json this was read from (a Hugging Face family's); written back on save.
    source_config: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # What the reader tells the user about the reading (a vision tower left out, ...).
    notes: list[str] = field(default_factory=list, repr=False, compare=False)

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        for name in ("attn_layers", "full_attn_layers", "dense_layers"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(
                    isinstance(i, int) and not isinstance(i, bool) for i in v):
                raise ConfigError(f"invalid model config: {name} must be a list of layer "
                                  f"indices (integers), got {v!r}")
            setattr(self, name, [int(i) for i in v])
        for name in ("hidden_size", "num_attention_heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"invalid model config: {name} must be a positive integer, "
                                  f"got {v!r}")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"invalid model config: {msg}")

        if self.model_type not in SUPPORTED_MODEL_TYPES:
            bad(f"model_type {self.model_type!r} is not supported; sbsnn reads "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(f"{name} must be a positive integer, got {v!r}")
        for name, (bound, why) in SIZE_BOUNDS.items():
            v = getattr(self, name)
            if isinstance(v, int) and v > bound:
                bad(f"{name} = {v:,} is refused: the bound is {bound:,} ({why}); "
                    "the config is damaged or not a language model's")
        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("max_position_embeddings", "gate_low_rank_dim", "num_experts_per_tok"):
            v = getattr(self, name)
            if not is_int(v) or v <= 0:
                bad(f"{name} must be a positive integer, got {v!r}")
        for name in ("num_sink_tokens", "num_experts", "num_shared_experts"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                bad(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("moe_intermediate_size", "shared_expert_intermediate_size"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v <= 0):
                bad(f"{name} must be a positive integer or null, got {v!r}")
        for name in ("rope_theta", "gate_logit_normalizer", "routed_scaling_factor"):
            v = getattr(self, name)
            if not is_num(v) or not v > 0:
                bad(f"{name} must be a positive finite number, got {v!r}")
        for name in ("norm_eps", "initializer_range", "moe_norm_eps"):
            v = getattr(self, name)
            if not is_num(v) or v < 0:
                bad(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_short_conv",
                     "parallel_mixer", "qk_norm", "sandwich_norm", "o_proj_bias", "norm_topk_prob",
                     "moe_expert_bias", "shared_expert_gate", "router_float32", "block_mlp",
                     "mlp_gated"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                bad(f"{name} must be true or false, got {v!r}")
        if self.sliding_window is not None and not is_int(self.sliding_window):
            bad(f"sliding_window must be a positive integer or null, got {self.sliding_window!r}")
        if self.rope_parameters is not None and not isinstance(self.rope_parameters, dict):
            bad(f"rope_parameters must be an object or null, got {self.rope_parameters!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            ids = v if isinstance(v, list) else [v]
            if v is not None and not all(is_int(i) and i >= 0 for i in ids):
                bad(f"{name} must be a token id (an integer >= 0), a list of them, or null, got {brief(v)}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        n = self.num_hidden_layers
        self._validate_mixers(bad)   # before layer_kind reads layer_mixers below
        for name in ("attn_layers", "full_attn_layers", "dense_layers"):
            out = [i for i in getattr(self, name) if not 0 <= i < n]
            if out:
                bad(f"{name} holds layer indices {out} outside 0..{n - 1}")
        if self.sliding_window is not None and self.sliding_window < 1:
            bad(f"sliding_window must be >= 1 or null, got {self.sliding_window}")
        if self.use_short_conv:
            bad("use_short_conv=true (short convolutions before GLA) is not supported; "
                "SpikingBrain-7B ships with it off")
        if self.hidden_act not in ACTIVATIONS:
            bad(f"hidden_act {self.hidden_act!r} is not supported ({', '.join(sorted(ACTIVATIONS))})")
        if self.norm_style not in NORM_STYLES:
            bad(f"norm_style must be one of {NORM_STYLES}, got {self.norm_style!r}")
        for name in ("embedding_scale", "attn_scale", "final_logit_softcapping"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                bad(f"{name} must be a positive number or null, got {v!r}")
        for name in ("embedding_multiplier", "residual_multiplier", "logits_multiplier",
                     "logits_divisor", "key_multiplier", "attn_in_multiplier",
                     "attn_out_multiplier", "ssm_out_multiplier", "mlp_gate_multiplier",
                     "mlp_down_multiplier"):
            if not is_num(getattr(self, name)):
                bad(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.logits_divisor == 0:
            bad("logits_divisor must not be 0 (the logits are divided by it)")
        if not isinstance(self.attn_rope, bool):
            bad(f"attn_rope must be true or false, got {self.attn_rope!r}")
        for i in range(n):
            if self.attn_rope and self.layer_kind(i) in ATTENTION_KINDS:
                self.rope_for(i)  # raises on a bad rope_parameters
        if self.linear_attn_gate not in ("lowrank", "one_minus_k"):
            bad(f"linear_attn_gate must be 'lowrank' or 'one_minus_k', got {self.linear_attn_gate!r}")
        if self.linear_feature_map not in ("relu", "sigmoid"):
            bad(f"linear_feature_map must be 'relu' or 'sigmoid', got {self.linear_feature_map!r}")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            bad(f"num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts")
        if self.moe_hidden_act is not None and self.moe_hidden_act not in ACTIVATIONS:
            bad(f"moe_hidden_act {self.moe_hidden_act!r} is not supported "
                f"({', '.join(sorted(ACTIVATIONS))}, or null for silu)")
        if self.num_experts and self.shared_expert_gate and not self.num_shared_experts:
            bad("shared_expert_gate needs a shared expert (num_shared_experts >= 1)")
        if self.router_activation not in ("sigmoid", "softmax"):
            bad(f"router_activation must be 'sigmoid' or 'softmax', got {self.router_activation!r}")
        if self.num_sink_tokens < 0:
            bad("num_sink_tokens must be >= 0")
        if not isinstance(self.attn_output_gate, bool):
            bad(f"attn_output_gate must be true or false, got {self.attn_output_gate!r}")

    def _validate_mixers(self, bad) -> None:
        lm = self.layer_mixers
        if lm is None:
            for name in ("gdn", "mamba2", "short_conv"):
                if getattr(self, name) is not None:
                    bad(f"{name} arguments are given but layer_mixers is not")
            return
        if not isinstance(lm, list) or len(lm) != self.num_hidden_layers or any(
                m not in MIXERS for m in lm):
            bad(f"layer_mixers must list one of {MIXERS} for each of the "
                f"{self.num_hidden_layers} layers, got {brief(lm)}")
        if self.parallel_mixer or self.num_sink_tokens:
            bad("layer_mixers does not combine with parallel_mixer or sink tokens")
        if not self.block_mlp and self.sandwich_norm:
            bad("block_mlp false (one sub-layer per block) does not combine with sandwich_norm")
        if not self.mlp_gated and (self.mlp_gate_multiplier != 1.0 or self.shared_expert_gate):
            bad("mlp_gated false (MLPs without a gate) does not combine with "
                "mlp_gate_multiplier or shared_expert_gate")
        if "swa" in lm and self.sliding_window is None:
            bad("layer_mixers holds 'swa' layers but sliding_window is null")
        for kind, name in (("gdn", "gdn"), ("mamba2", "mamba2"), ("conv", "short_conv")):
            args = getattr(self, name)
            if args is None:
                if kind in lm or (kind == "mamba2" and "attn+mamba2" in lm):
                    bad(f"layer_mixers holds {kind!r} layers but {name} is null")
                continue
            if not isinstance(args, dict):
                bad(f"{name} must be an object of {kind} mixer arguments, got {brief(args)}")
            unknown = sorted(set(args) - set(MIXER_ARGS[kind]))
            if unknown:
                bad(f"{name} holds unknown arguments {unknown} (known: {list(MIXER_ARGS[kind])})")

    # ------------------------------------------------------------------------------
    def layer_kind(self, i: int) -> str:
        """'gla', 'swa', 'full', or 'parallel' (linear + window/full side by side); for
        the linear-mixer hybrids also 'gdn', 'mamba2', 'conv' or 'attn+mamba2'
        (``layer_mixers``)."""
        if self.layer_mixers is not None:
            return self.layer_mixers[i]
        if self.parallel_mixer:
            return "parallel"
        if i in self.full_attn_layers:
            return "full"
        if i in self.attn_layers:
            return "full" if self.sliding_window is None else "swa"
        return "gla"

    def linear_mixer_of(self, i: int) -> str | None:
        """The linear mixer layer i holds ('gdn', 'mamba2', 'conv'; Falcon-H1's
        'attn+mamba2' holds a Mamba-2), or None (GLA layers are not of this family)."""
        kind = self.layer_kind(i)
        return "mamba2" if kind == "attn+mamba2" else kind if kind in MIXER_ARGS else None

    def window_for(self, i: int) -> int | None:
        """Window of layer i's softmax attention (None = full attention)."""
        if self.layer_mixers is not None:
            return self.sliding_window if self.layer_mixers[i] == "swa" else None
        return None if i in self.full_attn_layers else self.sliding_window

    def mixer_args(self, kind: str) -> dict[str, Any]:
        """The constructor arguments of linear mixer ``kind`` ('gdn', 'mamba2', 'conv')."""
        args = {"gdn": self.gdn, "mamba2": self.mamba2, "conv": self.short_conv}[kind]
        if args is None:
            raise ConfigError(f"invalid model config: layer_mixers holds {kind!r} layers but "
                              f"the config has no {'short_conv' if kind == 'conv' else kind} "
                              "arguments")
        return args

    def has_mixer(self, i: int) -> bool:
        """Whether layer i holds a mixer (an "mlp" layer holds none)."""
        return self.layer_kind(i) != "mlp"

    def has_mlp(self, i: int) -> bool:
        """Whether layer i holds an MLP or MoE (with ``block_mlp`` false, only "mlp" layers)."""
        return self.block_mlp or self.layer_kind(i) == "mlp"

    def norms_per_block(self, i: int) -> int:
        """RMSNorms of block i over the hidden size: one per sub-layer (attn_norm, mlp_norm;
        a block of one sub-layer has its one ``norm``), two more for Gemma's sandwich norms
        and for the branch norms of a parallel layer."""
        n = self.has_mixer(i) + self.has_mlp(i)
        return n + 2 * self.sandwich_norm + 2 * (self.layer_kind(i) == "parallel")

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and i not in self.dense_layers and self.has_mlp(i)

    def rope_for(self, i: int):
        """The :class:`~sbsnn.models.rope.RopeSpec` of layer i's softmax attention (None
        where the attention has no positions: ``attn_rope`` false)."""
        if not self.attn_rope:
            return None
        params = self.rope_parameters
        if params is None:
            params = {"rope_type": "default", "rope_theta": self.rope_theta}
        elif set(params) <= set(LAYER_TYPES.values()) and params:
            key = LAYER_TYPES["full" if self.window_for(i) is None else "swa"]
            if params.get(key) is None:
                raise ConfigError(f"invalid model config: rope_parameters has no {key!r} entry, "
                                      f"which layer {i} needs")
            params = params[key]
        return RopeSpec.from_parameters(params, self.head_dim, self.max_position_embeddings,
                                        source="rope_parameters")

    # ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The config.json to write: the file read, for a Hugging Face family's config
        (so the output loads as the same model), else sbsnn's own fields."""
        if self.source_config is not None:
            return copy.deepcopy(self.source_config)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("extra", "source_config", "notes")}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "HybridConfig":
        """Read a config.json dict of any supported family; every key is handled,
        known to be harmless, or refused (:mod:`sbsnn.models.families`)."""
        return read_config(d, source, config_class=cls)

    @classmethod
    def from_json(cls, path: str | Path) -> "HybridConfig":
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"{path}: no config.json; a checkpoint directory needs "
                              "config.json beside its safetensors")
        try:
            d = read_json_file(path, "config.json", error=ConfigError)
        except InputError as e:     # a directory, a device, not UTF-8
            raise ConfigError(str(e)) from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
