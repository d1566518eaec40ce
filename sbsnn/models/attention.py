"""Softmax attention with RoPE: sliding-window (window = W keys) or full (window None).

Query at position i sees key j when ``j <= i`` and either ``i - j < W`` (exactly W keys,
itself included; flash-attn's ``window_size=(W, 0)`` would show W + 1) or j is a sink
token (``j < num_sinks``), whose keys and values stay visible for ever.

Decoding cache: sink keys/values (fixed), plus for a window layer a ring buffer of W
slots, written at ``(pos - num_sinks) % W``; RoPE is applied before caching, so the order
of the slots does not matter. Its size never changes once allocated. A full-attention
layer's cache grows with the sequence, as it must.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.models.layers import apply_rope, rope_cos_sin


class WindowAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 window: int | None, rope_theta: float, bias: bool = True,
                 num_sinks: int = 0):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.rope_theta, self.num_sinks = window, rope_theta, num_sinks
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)
        # Hook points for quantisers (identity in the float model): the query after RoPE,
        # and keys/values as they enter the cache. Shapes [B, heads, L, head_dim].
        self.q_post_rope = nn.Identity()
        self.k_cache_quant = nn.Identity()
        self.v_cache_quant = nn.Identity()

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if positions is None:
            positions = torch.arange(L, device=x.device)
        q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, D, self.rope_theta, q.dtype)
        q = self.q_post_rope(apply_rope(q, cos, sin))
        k = self.k_cache_quant(apply_rope(k, cos, sin))
        v = self.v_cache_quant(v)

        keys, values, kpos = k, v, positions
        if cache is not None and "k" in cache:
            keys = torch.cat([cache["k"], k], dim=2)
            values = torch.cat([cache["v"], v], dim=2)
            kpos = torch.cat([cache["pos"], positions])
        mask = self.visible(positions, kpos)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             enable_gqa=H != Hkv)
        if cache is not None:
            self._update_cache(cache, k, v, positions)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, H * D))

    def visible(self, qpos: torch.Tensor, kpos: torch.Tensor) -> torch.Tensor:
        """Boolean ``[Lq, Lk]``: may query position qpos[i] see key position kpos[j]?
        Empty cache slots carry position -1 and are never visible."""
        qp, kp = qpos[:, None], kpos[None, :]
        ok = (kp >= 0) & (kp <= qp)
        if self.window is not None:
            ok &= (qp - kp < self.window) | (kp < self.num_sinks)
        return ok

    def _update_cache(self, cache: dict, k: torch.Tensor, v: torch.Tensor,
                      positions: torch.Tensor) -> None:
        """Keep sinks for ever; keep the last ``window`` other keys (all for full attention)."""
        if "k" not in cache:
            B, Hkv, _, D = k.shape
            S, W = self.num_sinks, self.window
            slots = S + (W if W is not None else 0)
            cache["k"] = k.new_zeros(B, Hkv, slots, D)
            cache["v"] = v.new_zeros(B, Hkv, slots, D)
            cache["pos"] = torch.full((slots,), -1, dtype=torch.long, device=k.device)
        S, W = self.num_sinks, self.window
        if W is None:
            sink = positions < S  # sinks fill their reserved slots; the rest is appended
            if sink.any():
                idx = positions[sink]
                cache["k"][:, :, idx] = k[:, :, sink]
                cache["v"][:, :, idx] = v[:, :, sink]
                cache["pos"][idx] = positions[sink]
            rest = ~sink
            cache["k"] = torch.cat([cache["k"], k[:, :, rest]], dim=2)
            cache["v"] = torch.cat([cache["v"], v[:, :, rest]], dim=2)
            cache["pos"] = torch.cat([cache["pos"], positions[rest]])
            return
        # Window layer: only the newest W non-sink keys can ever be seen again.
        sink = positions < S
        slot = torch.where(sink, positions, S + (positions - S) % W)
        keep = sink | (positions > positions.max() - W)
        idx = slot[keep]
        cache["k"][:, :, idx] = k[:, :, keep]
        cache["v"][:, :, idx] = v[:, :, keep]
        cache["pos"][idx] = positions[keep]
