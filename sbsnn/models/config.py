"""Model configuration.

Field names follow SpikingBrain-7B's ``config.json`` (model_type ``gla_swa``) so that its
checkpoints load as they are; the extra fields describe the SpikingBrain-76B layout
(parallel linear + window mixers, full-attention layers, sink tokens, MoE). Llama and
Qwen2 configs are translated into the same dataclass (every layer full attention).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbsnn.models.errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("gla_swa", "sbsnn_hybrid", "llama", "qwen2")


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
    # Keys we do not interpret but keep so a saved config round-trips.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.attn_layers = [int(i) for i in self.attn_layers]
        self.full_attn_layers = [int(i) for i in self.full_attn_layers]
        self.dense_layers = [int(i) for i in self.dense_layers]
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise CheckpointError(f"invalid model config: {msg}")

        if self.model_type not in SUPPORTED_MODEL_TYPES:
            bad(f"model_type {self.model_type!r} is not supported; sbsnn reads "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                bad(f"{name} must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        n = self.num_hidden_layers
        for name in ("attn_layers", "full_attn_layers", "dense_layers"):
            out = [i for i in getattr(self, name) if not 0 <= i < n]
            if out:
                bad(f"{name} holds layer indices {out} outside 0..{n - 1}")
        if self.sliding_window is not None and self.sliding_window < 1:
            bad(f"sliding_window must be >= 1 or null, got {self.sliding_window}")
        if self.use_short_conv:
            bad("use_short_conv=true (short convolutions before GLA) is not supported; "
                "SpikingBrain-7B ships with it off")
        if self.hidden_act not in ("swish", "silu"):
            bad(f"hidden_act {self.hidden_act!r} is not supported (swish/silu only)")
        if self.linear_attn_gate not in ("lowrank", "one_minus_k"):
            bad(f"linear_attn_gate must be 'lowrank' or 'one_minus_k', got {self.linear_attn_gate!r}")
        if self.linear_feature_map not in ("relu", "sigmoid"):
            bad(f"linear_feature_map must be 'relu' or 'sigmoid', got {self.linear_feature_map!r}")
        if self.num_experts and not 1 <= self.num_experts_per_tok <= self.num_experts:
            bad(f"num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts")
        if self.router_activation not in ("sigmoid", "softmax"):
            bad(f"router_activation must be 'sigmoid' or 'softmax', got {self.router_activation!r}")
        if self.num_sink_tokens < 0:
            bad("num_sink_tokens must be >= 0")

    # ------------------------------------------------------------------------------
    def layer_kind(self, i: int) -> str:
        """'gla', 'swa', 'full', or 'parallel' (linear + window/full side by side)."""
        if self.parallel_mixer:
            return "parallel"
        if i in self.full_attn_layers:
            return "full"
        if i in self.attn_layers:
            return "full" if self.sliding_window is None else "swa"
        return "gla"

    def window_for(self, i: int) -> int | None:
        """Window of layer i's softmax attention (None = full attention)."""
        return None if i in self.full_attn_layers else self.sliding_window

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts > 0 and i not in self.dense_layers

    # ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "HybridConfig":
        d = dict(d)
        mt = d.get("model_type")
        if mt in ("llama", "qwen2"):
            d = _from_hf_full_attention(d, source)
        elif mt not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"{source}: unknown architecture model_type={mt!r} "
                f"(architectures={d.get('architectures')}); sbsnn reads "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names and k != "extra"}
        extra = {k: v for k, v in d.items() if k not in names}
        if "rms_norm_eps" in extra and "norm_eps" not in known:
            known["norm_eps"] = extra["rms_norm_eps"]
        try:
            return cls(**known, extra=extra)
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        except TypeError as e:
            raise CheckpointError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "HybridConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no config.json; a checkpoint directory needs "
                                  "config.json beside its safetensors") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _from_hf_full_attention(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Translate a Llama / Qwen2 config: every layer full softmax attention, no GLA."""
    out = dict(d)
    scaling = d.get("rope_scaling")
    if scaling:
        raise CheckpointError(
            f"{source}: rope_scaling={scaling} is not supported yet; only plain RoPE "
            "(rope_scaling null) checkpoints load")
    n = int(d["num_hidden_layers"])
    out["attn_layers"] = list(range(n))
    out["full_attn_layers"] = list(range(n))
    out["sliding_window"] = None
    out["norm_eps"] = d.get("rms_norm_eps", d.get("norm_eps", 1e-6))
    out["hidden_act"] = "silu" if d.get("hidden_act", "silu") == "silu" else d["hidden_act"]
    out["rope_theta"] = d.get("rope_theta", 10000.0)
    out.setdefault("num_key_value_heads", d["num_attention_heads"])
    if d["model_type"] == "qwen2":
        out["attention_bias"] = True
    else:
        out["attention_bias"] = bool(d.get("attention_bias", False))
    out["mlp_bias"] = bool(d.get("mlp_bias", False))
    if d["model_type"] == "qwen2" and d.get("use_sliding_window"):
        raise CheckpointError(f"{source}: Qwen2 use_sliding_window=true is not supported")
    return out
