"""Gated DeltaNet (GDN), pure PyTorch, as Qwen3-Next and Qwen3.5 run it.

Recurrence per value head, state ``S: [d_k, d_v]``, decay ``a_t = exp(g_t)`` (a scalar
per head and token, ``g_t <= 0``), write strength ``beta_t`` in (0, 1)::

    S'  = a_t S_{t-1}
    u_t = beta_t (v_t - S'^T k_t)          the delta rule: write only what S' mispredicts
    S_t = S' + k_t u_t^T
    o_t = S_t^T (q_t * d_k^-0.5)

q and k are L2-normalised by the layer, so ``I - beta k k^T`` is a contraction and the
state stays bounded. Several value heads share one key head (``num_value_heads`` a
multiple of ``num_key_heads``): value head ``h`` reads key/query head ``h // r``,
``r = num_value_heads // num_key_heads``, as transformers' ``repeat_interleave`` does.

Two forms compute the rule: ``gated_delta_rule_recurrent`` steps token by token (the
definition, and decoding) and ``gated_delta_rule_chunked`` processes a prompt in chunks.
Within a chunk with starting state ``S_0`` and cumulative log-decay ``b_t`` the state is
``S_t = e^{b_t} S_0 + sum_{s<=t} e^{b_t - b_s} k_s u_s^T``; substituting it into the
definition of ``u_t`` gives a unit lower-triangular system
``(I + A) U = beta V - diag(beta e^b) K S_0`` with ``A_ts = beta_t e^{b_t - b_s} k_t.k_s``
(s < t), solved once per chunk for both right-hand sides (the ``S_0`` part is applied
when the chunk's starting state is known). Every exponent either form takes is <= 0.

Before the rule, q, k and v pass a depthwise causal convolution (kernel
``linear_conv_kernel_dim``, :mod:`sbsnn.models.causal_conv`) with the model's
activation, whose state is the last ``K - 1`` inputs. After it, a gated
RMSNorm per value head, ``norm(o) * silu(z)``, and ``out_proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.models.causal_conv import causal_conv1d, causal_conv1d_step
from sbsnn.models.layers import ACTIVATIONS

LAYOUTS = ("qwen3_next", "qwen3_5")


def _act(activation: str | None):
    if activation is None:
        return None
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not supported; one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(|x|^2 + eps)`` over the last dimension (fla's and transformers' form)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _group(q, k, v, g, beta, state):
    """Shapes in, grouped views out: q, k ``[B, Hk, L, dk]``; v ``[B, Hk, r, L, dv]``;
    g, beta ``[B, Hk, r, L]``; state ``[B, Hk, r, dk, dv]``."""
    B, Hk, L, dk = k.shape
    Hv, dv = v.shape[1], v.shape[-1]
    if Hv % Hk:
        raise ValueError(f"value heads ({Hv}) must be a multiple of key heads ({Hk})")
    r = Hv // Hk
    if state is None:
        state = v.new_zeros(B, Hv, dk, dv)
    return (v.reshape(B, Hk, r, L, dv), g.reshape(B, Hk, r, L), beta.reshape(B, Hk, r, L),
            state.reshape(B, Hk, r, dk, dv).to(v.dtype))


def gated_delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               g: torch.Tensor, beta: torch.Tensor,
                               state: torch.Tensor | None = None, scale: float | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step the gated delta rule token by token (the definition; decoding).

    Shapes: q, k ``[B, Hk, L, dk]`` (already L2-normalised if the model does so);
    v ``[B, Hv, L, dv]``; g (log-decay, <= 0), beta ``[B, Hv, L]``; state
    ``[B, Hv, dk, dv]``. Returns o ``[B, Hv, L, dv]`` and the final state.
    """
    B, Hk, L, dk = q.shape
    Hv, dv = v.shape[1], v.shape[-1]
    scale = dk ** -0.5 if scale is None else scale
    v, g, beta, S = _group(q, k, v, g, beta, state)
    outs = []
    for t in range(L):
        k_t = k[:, :, None, t, None, :]                                 # [B, Hk, 1, 1, dk]
        S = S * g[..., t, None, None].exp()
        u = beta[..., t, None, None] * (v[:, :, :, t, None] - k_t @ S)   # [B, Hk, r, 1, dv]
        S = S + k_t.transpose(-1, -2) @ u
        outs.append((q[:, :, None, t, None, :] * scale) @ S)
    o = torch.cat(outs, dim=3) if outs else v.new_zeros(B, Hk, Hv // Hk, 0, dv)
    return o.reshape(B, Hv, L, dv), S.reshape(B, Hv, dk, dv)


def gated_delta_rule_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             g: torch.Tensor, beta: torch.Tensor,
                             state: torch.Tensor | None = None, scale: float | None = None,
                             chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`gated_delta_rule_recurrent`, computed chunk by chunk
    (see the module docstring for the triangular system). Memory per chunk is
    ``B * Hv * C * C``; key-key and query-key products are formed once per key head."""
    B, Hk, L, dk = q.shape
    Hv, dv = v.shape[1], v.shape[-1]
    r = Hv // max(Hk, 1)
    scale = dk ** -0.5 if scale is None else scale
    v, g, beta, S = _group(q, k, v, g, beta, state)
    C = chunk_size
    pad = (-L) % C
    if pad:  # padding: zero k, v, beta (no write) and g (no decay)
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    N = (L + pad) // C
    qc = q.reshape(B, Hk, 1, N, C, dk) * scale
    kc = k.reshape(B, Hk, 1, N, C, dk)
    vc = v.reshape(B, Hk, r, N, C, dv)
    bc = beta.reshape(B, Hk, r, N, C)
    b = g.reshape(B, Hk, r, N, C).cumsum(-1)                           # cumulative log-decay
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    # exp(b_t - b_s) for s <= t, exactly 0 above the diagonal: [B, Hk, r, N, C(t), C(s)]
    decay = (b[..., :, None] - b[..., None, :]).masked_fill(~lower, float("-inf")).exp()
    kk = kc @ kc.transpose(-1, -2)                                     # [B, Hk, 1, N, C, C]
    qk = (qc @ kc.transpose(-1, -2)) * decay                           # [B, Hk, r, N, C, C]
    # (I + A) [W | Y] = [beta V | beta e^b K]; the solve reads only the strict lower part
    # of A (unit diagonal), so A's diagonal and upper entries need no masking.
    A = bc[..., :, None] * kk * decay
    rhs = torch.cat([bc[..., None] * vc,
                     (bc * b.exp())[..., None] * kc.expand(B, Hk, r, N, C, dk)], dim=-1)
    WY = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    W, Y = WY[..., :dv], WY[..., dv:]                                  # U = W - Y S_0
    q_dec = qc * b.exp()[..., None]                                    # q_t e^{b_t}
    b_last = b[..., -1:]                                               # [B, Hk, r, N, 1]
    k_to_end = kc * (b_last - b).exp()[..., None]                      # k_s e^{b_C - b_s}
    outs = []
    for n in range(N):
        U = W[:, :, :, n] - Y[:, :, :, n] @ S                          # [B, Hk, r, C, dv]
        outs.append(q_dec[:, :, :, n] @ S + qk[:, :, :, n] @ U)
        S = b_last[:, :, :, n, :, None].exp() * S + k_to_end[:, :, :, n].transpose(-1, -2) @ U
    o = torch.stack(outs, dim=3).reshape(B, Hv, N * C, dv)[:, :, :L]
    return o, S.reshape(B, Hv, dk, dv)


class GatedRMSNorm(nn.Module):
    """``weight * rmsnorm(x) * silu(gate)`` over the last dimension, norm before gate, as
    Qwen3-Next's and Qwen3.5's ``RMSNormGated``: the weight multiplies as stored (ones at
    init, not zero-centred like those models' other RMSNorms) after the normalised x is
    cast back to its dtype; the gate is applied in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * xf.to(dtype)
        gf = gate.float() if gate.dtype in (torch.float16, torch.bfloat16) else gate
        return (y * F.silu(gf)).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedDeltaNet(nn.Module):
    """A Gated DeltaNet layer with transformers' parameter names, so state dicts copy by
    name (prefix ``linear_attn.`` in the checkpoints):

    - ``layout="qwen3_next"`` (Qwen3NextGatedDeltaNet): ``in_proj_qkvz`` and ``in_proj_ba``,
      fused and grouped per key head as ``[q, k, v_1..v_r, z_1..z_r]`` and
      ``[b_1..b_r, a_1..a_r]``;
    - ``layout="qwen3_5"`` (Qwen3_5GatedDeltaNet): ``in_proj_qkv`` (q of all heads, then k,
      then v), ``in_proj_z``, ``in_proj_b``, ``in_proj_a``;

    and in both ``conv1d`` (depthwise, no bias), ``dt_bias``, ``A_log``, ``norm.weight``,
    ``out_proj``. Decay ``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``.

    ``forward(x, cache)``: ``cache`` is a dict holding ``conv_state`` ``[B, conv_dim, K-1]``
    (x's dtype) and ``recurrent_state`` ``[B, Hv, dk, dv]`` (float32 for half inputs, else
    x's dtype), read and replaced by each call; an empty dict starts a sequence. A single
    token with a state takes the recurrent form, anything else the chunked one.
    """

    def __init__(self, hidden_size: int, num_key_heads: int, num_value_heads: int,
                 key_head_dim: int, value_head_dim: int, conv_kernel_size: int = 4,
                 norm_eps: float = 1e-6, activation: str = "silu", layout: str = "qwen3_5",
                 chunk_size: int = 64):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"GatedDeltaNet layout must be one of {LAYOUTS}, got {layout!r}")
        if num_value_heads % num_key_heads:
            raise ValueError(f"linear_num_value_heads ({num_value_heads}) must be a multiple "
                             f"of linear_num_key_heads ({num_key_heads})")
        _act(activation)
        self.hidden_size, self.layout, self.activation = hidden_size, layout, activation
        self.num_k_heads, self.num_v_heads = num_key_heads, num_value_heads
        self.head_k_dim, self.head_v_dim = key_head_dim, value_head_dim
        self.key_dim, self.value_dim = key_head_dim * num_key_heads, value_head_dim * num_value_heads
        self.conv_kernel_size, self.chunk_size = conv_kernel_size, chunk_size
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel_size, bias=False,
                                groups=self.conv_dim, padding=conv_kernel_size - 1)
        if layout == "qwen3_next":
            self.in_proj_qkvz = nn.Linear(hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False)
            self.in_proj_ba = nn.Linear(hidden_size, 2 * num_value_heads, bias=False)
        else:
            self.in_proj_qkv = nn.Linear(hidden_size, self.conv_dim, bias=False)
            self.in_proj_z = nn.Linear(hidden_size, self.value_dim, bias=False)
            self.in_proj_b = nn.Linear(hidden_size, num_value_heads, bias=False)
            self.in_proj_a = nn.Linear(hidden_size, num_value_heads, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(num_value_heads))
        self.A_log = nn.Parameter(torch.empty(num_value_heads).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(value_head_dim, eps=norm_eps)
        self.out_proj = nn.Linear(self.value_dim, hidden_size, bias=False)

    def _project(self, x: torch.Tensor):
        """-> qkv ``[B, L, conv_dim]`` (q, k, v of all heads, the conv's channel order),
        z ``[B, L, Hv, dv]``, b and a ``[B, L, Hv]``."""
        B, L, _ = x.shape
        Hk, Hv, dk, dv = self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        if self.layout == "qwen3_5":
            return (self.in_proj_qkv(x), self.in_proj_z(x).view(B, L, Hv, dv),
                    self.in_proj_b(x), self.in_proj_a(x))
        r = Hv // Hk
        qkvz = self.in_proj_qkvz(x).view(B, L, Hk, 2 * dk + 2 * r * dv)
        q, k, v, z = qkvz.split([dk, dk, r * dv, r * dv], dim=-1)
        b, a = self.in_proj_ba(x).view(B, L, Hk, 2 * r).split([r, r], dim=-1)
        qkv = torch.cat([q.reshape(B, L, -1), k.reshape(B, L, -1), v.reshape(B, L, -1)], dim=-1)
        return qkv, z.reshape(B, L, Hv, dv), b.reshape(B, L, Hv), a.reshape(B, L, Hv)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        Hk, Hv, dk, dv = self.num_k_heads, self.num_v_heads, self.head_k_dim, self.head_v_dim
        qkv, z, b, a = self._project(x)
        conv_state = cache.get("conv_state") if cache is not None else None
        state = cache.get("recurrent_state") if cache is not None else None
        w = self.conv1d.weight
        if L == 1 and conv_state is not None:
            y, conv_state = causal_conv1d_step(qkv[:, 0], conv_state, w, None, self.activation)
            y = y[:, None]
        else:
            y, conv_state = causal_conv1d(qkv.transpose(1, 2), w, None, conv_state, self.activation)
            y = y.transpose(1, 2)
        # Half-precision states drift over long sequences: the rule runs in float32.
        cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        q, k, v = y.to(cdt).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = l2norm(q.reshape(B, L, Hk, dk)).transpose(1, 2)
        k = l2norm(k.reshape(B, L, Hk, dk)).transpose(1, 2)
        v = v.reshape(B, L, Hv, dv).transpose(1, 2)
        beta = b.sigmoid().to(cdt).transpose(1, 2)
        g = -self.A_log.to(cdt).exp() * F.softplus(a.to(cdt) + self.dt_bias.to(cdt))
        g = g.transpose(1, 2)
        if L == 1 and state is not None:
            o, state = gated_delta_rule_recurrent(q, k, v, g, beta, state)
        else:
            o, state = gated_delta_rule_chunked(q, k, v, g, beta, state, chunk_size=self.chunk_size)
        if cache is not None:
            cache["conv_state"], cache["recurrent_state"] = conv_state, state
        o = self.norm(o.transpose(1, 2).to(x.dtype), z)                   # [B, L, Hv, dv]
        return self.out_proj(o.reshape(B, L, Hv * dv))

    def state_bytes(self, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the decoding state for ``batch_size`` sequences of activations in
        ``dtype``, constant in the sequence length: ``conv_dim * (K - 1)`` conv entries in
        ``dtype`` plus ``Hv * dk * dv`` recurrent entries (float32 for half dtypes)."""
        sdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        conv = self.conv_dim * (self.conv_kernel_size - 1) * dtype.itemsize
        rec = self.num_v_heads * self.head_k_dim * self.head_v_dim * sdt.itemsize
        return batch_size * (conv + rec)


def cache_bytes(cache: dict) -> int:
    """Bytes of the tensors a :class:`GatedDeltaNet` cache holds now."""
    return sum(t.numel() * t.element_size() for t in cache.values() if isinstance(t, torch.Tensor))
