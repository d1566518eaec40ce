"""Gated linear attention (GLA), pure PyTorch, as in SpikingBrain-7B.

Recurrence per key/value head, with a gate per key dimension::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [d_k, d_v]
    o_t = (q_t * d_k^-0.5) S_t

Two forms compute it: ``gla_recurrent`` steps token by token (decoding, and the naive
reference), ``gla_chunked`` processes a prompt in chunks (intra-chunk pairwise decays,
inter-chunk state passing). Every exponent either form takes is <= 0, so neither
overflows however strongly the gates decay.

Grouped-query attention: ``q`` has ``G`` query heads per key/value head. Because the
state depends only on k, v and g, all query heads of a group share one state; storing
it per key/value head is exact and G times smaller than repeating k and v first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.models.layers import RMSNorm

GATE_FLOOR = -60.0


def gla_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                  state: torch.Tensor | None = None, scale: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step the recurrence. Shapes: q ``[B, Hkv, G, L, dk]``; k, g ``[B, Hkv, L, dk]``;
    v ``[B, Hkv, L, dv]``; state ``[B, Hkv, dk, dv]``. Returns o ``[B, Hkv, G, L, dv]``
    and the final state."""
    B, Hkv, G, L, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    if state is None:
        state = q.new_zeros(B, Hkv, dk, dv)
    outs = []
    for t in range(L):
        state = g[:, :, t, :, None].exp() * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhgk,bhkv->bhgv", q[:, :, :, t] * scale, state))
    o = torch.stack(outs, dim=3) if outs else q.new_zeros(B, Hkv, G, 0, dv)
    return o, state


def gla_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                state: torch.Tensor | None = None, scale: float | None = None,
                chunk_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`gla_recurrent`, computed chunk by chunk.

    Within a chunk the pairwise decays ``exp(b_t - b_s)`` (b = cumulative log gate,
    s <= t) are formed explicitly; across chunks the state is carried. Memory per
    chunk is ``B * Hkv * C * C * dk``.
    """
    B, Hkv, G, L, dk = q.shape
    dv = v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    if state is None:
        state = q.new_zeros(B, Hkv, dk, dv)
    # Differences of cumulative gates must stay finite (-inf - -inf is NaN), and huge
    # magnitudes would cancel badly: a per-step decay below exp(-60) ~ 1e-26 is already
    # total forgetting next to the current token's weight of 1.
    g = g.clamp(min=GATE_FLOOR)
    C = chunk_size
    pad = (-L) % C
    if pad:  # zero k, v and g on padding: no contribution, no decay
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
        g = F.pad(g, (0, 0, 0, pad))
    N = (L + pad) // C
    qc = q.reshape(B, Hkv, G, N, C, dk) * scale
    kc = k.reshape(B, Hkv, N, C, dk)
    vc = v.reshape(B, Hkv, N, C, dv)
    b = g.reshape(B, Hkv, N, C, dk).cumsum(dim=3)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # Pairwise decay exp(b_t - b_s) for s <= t: [B, Hkv, N, C(t), C(s), dk]; the masked
    # (s > t) entries are set to -inf before exp so they become exactly 0.
    diff = b[:, :, :, :, None, :] - b[:, :, :, None, :, :]
    decay = diff.masked_fill(~causal[:, :, None], float("-inf")).exp()
    scores = torch.einsum("bhgntk,bhnsk,bhntsk->bhgnts", qc, kc, decay)
    o_intra = torch.einsum("bhgnts,bhnsv->bhgntv", scores, vc)
    # Inter-chunk: carry the state across chunks.
    q_decayed = qc * b.exp()[:, :, None]                      # q_t * exp(b_t)
    b_last = b[:, :, :, -1:, :]                                # [B, Hkv, N, 1, dk]
    k_to_end = kc * (b_last - b).exp()                         # k_s * exp(b_C - b_s)
    o_inter = []
    for n in range(N):
        o_inter.append(torch.einsum("bhgtk,bhkv->bhgtv", q_decayed[:, :, :, n], state))
        state = b_last[:, :, n, 0, :, None].exp() * state + torch.einsum(
            "bhsk,bhsv->bhkv", k_to_end[:, :, n], vc[:, :, n])
    o = o_intra + torch.stack(o_inter, dim=3)
    o = o.reshape(B, Hkv, G, N * C, dv)[:, :, :, :L]
    return o, state


class GatedLinearAttention(nn.Module):
    """SpikingBrain-7B's GLA layer (names follow fla: q_proj, k_proj, v_proj, gk_proj,
    g_norm, o_proj). ReLU feature map on q and k, low-rank gate
    ``logsigmoid(gk_proj(x)) / gate_logit_normalizer`` per key dimension and key/value
    head, per-head RMSNorm on the output, no output gate.

    With ``gate="one_minus_k"`` (SpikingBrain-76B's linear attention) there is no gate
    projection: the feature map is applied to k and the decay is ``1 - k``, i.e.
    ``g = log(1 - sigmoid(k_pre)) = logsigmoid(-k_pre)``.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0,
                 norm_eps: float = 1e-6, bias: bool = True, gate: str = "lowrank",
                 feature_map: str = "relu", chunk_size: int = 16):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.gate_kind, self.feature_map_kind = gate, feature_map
        self.gate_logit_normalizer = gate_logit_normalizer
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        if gate == "lowrank":
            self.gk_proj = nn.Sequential(
                nn.Linear(hidden_size, gate_low_rank_dim, bias=False),
                nn.Linear(gate_low_rank_dim, num_kv_heads * head_dim, bias=True))
        self.g_norm = RMSNorm(head_dim, eps=norm_eps)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def _feature(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.feature_map_kind == "relu" else torch.sigmoid(x)

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q_pre, k_pre, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k = self._feature(q_pre), self._feature(k_pre)
        if self.gate_kind == "lowrank":
            g = F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer
        else:
            g = F.logsigmoid(-k_pre)
        q = q.view(B, L, Hkv, H // Hkv, D).permute(0, 2, 3, 1, 4)
        k = k.view(B, L, Hkv, D).transpose(1, 2)
        v = v.view(B, L, Hkv, D).transpose(1, 2)
        g = g.view(B, L, Hkv, D).transpose(1, 2)
        state = cache.get("state") if cache is not None else None
        if x.dtype in (torch.float16, torch.bfloat16):
            # Half-precision states drift over long sequences; accumulate in float32.
            q, k, v, g = q.float(), k.float(), v.float(), g.float()
        if L == 1 and state is not None:
            o, state = gla_recurrent(q, k, v, g, state)
        else:
            o, state = gla_chunked(q, k, v, g, state, chunk_size=self.chunk_size)
        if cache is not None:
            cache["state"] = state
        o = self.g_norm(o.to(x.dtype))                      # [B, Hkv, G, L, D]
        o = o.permute(0, 3, 1, 2, 4).reshape(B, L, H * D)
        return self.o_proj(o)
