"""Building blocks shared by the mixers: RMSNorm, gated MLPs, mixture of experts.

(RoPE lives in :mod:`sbsnn.models.rope`.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# How an RMSNorm applies its weight, as each family's reference does it (the three agree
# in float32; in half precision they round at different points):
#   "fla":   (x_f32 * rsqrt(..) * w).to(dtype)              fla / SpikingBrain, sbsnn's own
#   "llama": w * (x_f32 * rsqrt(..)).to(dtype)              Llama, Mistral, Qwen2, Qwen3
#   "gemma": (x_f32 * rsqrt(..) * (1 + w_f32)).to(dtype)    Gemma 3 (weights stored as w - 1)
NORM_STYLES = ("fla", "llama", "gemma")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, in float32 (see ``NORM_STYLES``)."""

    def __init__(self, dim: int, eps: float = 1e-6, style: str = "fla"):
        super().__init__()
        if style not in NORM_STYLES:
            raise ValueError(f"RMSNorm style must be one of {NORM_STYLES}, got {style!r}")
        self.eps, self.style = eps, style
        self.weight = nn.Parameter(torch.zeros(dim) if style == "gemma" else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.style == "llama":
            return self.weight * xf.to(dtype)
        if self.style == "gemma":
            return (xf * (1.0 + self.weight.float())).to(dtype)
        return (xf * self.weight.to(xf.dtype)).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, style={self.style}"


def _gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _laplace(x: torch.Tensor, mu: float = 0.707107, sigma: float = 0.282095) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


# hidden_act names -> the function: every parameter-free entry of transformers'
# ``ACT2FN`` (transformers.activations, 5.24), written as it computes them, so that a
# family's MLP gives transformers' values to float rounding. Any other name is refused,
# among them ACT2FN's entries with learned weights ("prelu", "xielu": their parameters
# live in the MLP, which sbsnn's loader does not read).
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_python": lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_python_tanh": _gelu_tanh_formula,
    "gelu_new": _gelu_tanh_formula,
    "gelu_accurate": _gelu_tanh_formula,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,     # nn.LeakyReLU(): negative_slope 0.01
    "hardswish": F.hardswish,
    "mish": F.mish,
    "laplace": _laplace,
    "linear": lambda x: x,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
}
# ACT2FN entries sbsnn does not run, and why (named in the refusal).
UNSUPPORTED_ACTIVATIONS = {
    "prelu": "nn.PReLU has a learned slope stored in the MLP",
    "xielu": "xIELU has learned parameters stored in the MLP",
}


def activation_refusal(name: object) -> str:
    """Why ``hidden_act`` ``name`` is refused (it is not in ``ACTIVATIONS``)."""
    why = UNSUPPORTED_ACTIVATIONS.get(name) if isinstance(name, str) else None
    if why:
        return f"is not supported: {why}, which sbsnn does not load"
    return (f"is not an activation transformers implements for this family's MLP "
            f"(sbsnn implements {', '.join(sorted(ACTIVATIONS))})")


class SwiGLU(nn.Module):
    """``down(act(gate(x)) * up(x))``: SwiGLU with ``silu`` (SpikingBrain, Llama, Qwen),
    GeGLU with ``gelu_pytorch_tanh`` (Gemma), or any other of ``ACTIVATIONS``. The names
    match all of them. Falcon-H1's muP multipliers: ``down(act(gate(x) * gate_multiplier)
    * up(x)) * down_multiplier``."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 activation: str = "silu", gate_multiplier: float = 1.0,
                 down_multiplier: float = 1.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported; one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.gate_multiplier, self.down_multiplier = float(gate_multiplier), float(down_multiplier)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        if self.gate_multiplier != 1.0:
            gate = gate * self.gate_multiplier
        out = self.down_proj(self.act(gate) * self.up_proj(x))
        return out if self.down_multiplier == 1.0 else out * self.down_multiplier


class MLP(nn.Module):
    """``down(act(up(x)))``: the MLP without a gate (Nemotron-H's, with ``relu2``)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 activation: str = "relu2"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not supported; one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class MoE(nn.Module):
    """Routed SwiGLU experts plus optional shared experts (SpikingBrain-76B style).

    Router probabilities are ``sigmoid(W_r x)`` (or softmax); each token goes to its
    top-k experts, weighted by their probabilities (renormalised if ``norm_topk_prob``,
    ``p / (sum + norm_eps)``; then times ``scaling``); shared experts see every token.
    ``expert_activation``: the experts' (and shared experts') MLP activation (one of
    ``ACTIVATIONS``; sbsnn's own MoE uses silu).

    Options of the families' MoE blocks: ``expert_bias`` (LFM2-MoE: a float32 buffer
    added to the probabilities to choose the experts only; the weights stay the unbiased
    probabilities); ``router_float32`` (Qwen3-Next, Qwen3.5-MoE: the probabilities, their
    top-k and renormalisation are computed in float32, then the weights cast back to the
    input's dtype); ``shared_gate`` (the same Qwen blocks: the shared experts' sum scaled
    per token by ``sigmoid(shared_expert_gate(x))``, a linear map to one value);
    ``gated`` False (Nemotron-H): experts and shared experts are :class:`MLP` s without a
    gate.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int,
                 num_shared: int = 0, shared_intermediate_size: int | None = None,
                 activation: str = "sigmoid", norm_topk_prob: bool = False,
                 expert_activation: str = "silu", *, expert_bias: bool = False,
                 norm_eps: float = 0.0, scaling: float = 1.0, shared_gate: bool = False,
                 router_float32: bool = False, gated: bool = True):
        super().__init__()
        expert = SwiGLU if gated else MLP
        self.top_k = top_k
        self.activation = activation
        self.norm_topk_prob = norm_topk_prob
        self.norm_eps, self.scaling = norm_eps, scaling
        self.router_float32 = router_float32
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(num_experts, dtype=torch.float32))
        self.experts = nn.ModuleList(expert(hidden_size, intermediate_size,
                                            activation=expert_activation)
                                     for _ in range(num_experts))
        shared = shared_intermediate_size or intermediate_size
        self.shared_experts = nn.ModuleList(expert(hidden_size, shared, activation=expert_activation)
                                            for _ in range(num_shared))
        if shared_gate:
            if not num_shared:
                raise ValueError("shared_gate needs shared experts (num_shared >= 1)")
            self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.router(x)
        if self.router_float32:
            logits = logits.float()
        probs = torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(-1)
        if hasattr(self, "expert_bias"):
            idx = (probs + self.expert_bias).topk(self.top_k, dim=-1)[1]
            weights = probs.gather(-1, idx)
        else:
            weights, idx = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + self.norm_eps)
        if self.scaling != 1.0:
            weights = weights * self.scaling
        return weights.to(x.dtype) if self.router_float32 else weights, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, idx = self.route(flat)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(flat[rows]) * weights[rows, slot, None].to(flat.dtype))
        if hasattr(self, "shared_expert_gate"):
            shared = sum(s(flat) for s in self.shared_experts)
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * shared
        else:
            for shared in self.shared_experts:
                out = out + shared(flat)
        return out.reshape(shape)
