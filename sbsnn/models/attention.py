"""Softmax attention with RoPE (or none, NoPE): sliding-window (window = W keys) or full (window None).

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

from sbsnn.models.layers import RMSNorm
from sbsnn.models.rope import RopeSpec, apply_rope


class WindowAttention(nn.Module):
    """Softmax attention over a window of ``window`` keys (None: all of them).

    Options the families need: ``rope`` (a :class:`~sbsnn.models.rope.RopeSpec`; or
    ``rope_theta`` for plain RoPE), q/k/v ``bias`` and a separate ``o_bias``,
    ``qk_norm`` (an RMSNorm style: per-head norms on q and k before RoPE, Qwen3 and
    Gemma 3), ``scaling`` of the scores (default ``head_dim ** -0.5``; Gemma uses
    ``query_pre_attn_scalar ** -0.5``) and ``output_gate`` (Qwen3.5, Qwen3-Next:
    ``q_proj`` gives, per head, the query and then a gate of the same width; the heads'
    output is multiplied by ``sigmoid(gate)`` before ``o_proj``), ``use_rope=False``
    (no positional encoding at all, "NoPE": Granite 4.0-H; ``rope`` is then None) and
    ``key_multiplier`` (Falcon-H1's muP: keys times it after ``k_proj``).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 window: int | None, rope_theta: float | None = None, bias: bool = True,
                 num_sinks: int = 0, *, rope: RopeSpec | None = None, o_bias: bool = False,
                 qk_norm: str | None = None, norm_eps: float = 1e-6,
                 scaling: float | None = None, output_gate: bool = False,
                 use_rope: bool = True, key_multiplier: float = 1.0):
        super().__init__()
        if not use_rope:
            if rope is not None or rope_theta is not None:
                raise ValueError("WindowAttention with use_rope=False takes no rope or rope_theta")
        elif rope is None:
            if rope_theta is None:
                raise ValueError("WindowAttention needs rope (a RopeSpec) or rope_theta")
            rope = RopeSpec("default", float(rope_theta), head_dim, 1 << 30)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.rope, self.num_sinks = window, rope, num_sinks
        self.rope_theta = None if rope is None else rope.rope_theta
        self.scaling = head_dim ** -0.5 if scaling is None else float(scaling)
        self.key_multiplier = float(key_multiplier)
        self.output_gate = output_gate
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim * (2 if output_gate else 1),
                                bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=o_bias)
        if qk_norm is not None:
            self.q_norm = RMSNorm(head_dim, norm_eps, style=qk_norm)
            self.k_norm = RMSNorm(head_dim, norm_eps, style=qk_norm)
        # Hook points for quantisers (identity in the float model): the query after RoPE,
        # and keys/values as they enter the cache. Shapes [B, heads, L, head_dim].
        self.q_post_rope = nn.Identity()
        self.k_cache_quant = nn.Identity()
        self.v_cache_quant = nn.Identity()

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                positions: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``rope``: precomputed ``(cos, sin)`` for ``positions`` (the model computes them
        once per forward); computed here when absent."""
        B, L, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if positions is None:
            positions = torch.arange(L, device=x.device)
        if self.output_gate:
            q, gate = self.q_proj(x).view(B, L, H, 2 * D).chunk(2, dim=-1)
            q, gate = q.transpose(1, 2), gate.reshape(B, L, H * D)
        else:
            q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        if self.key_multiplier != 1.0:
            k = k * self.key_multiplier
        v = self.v_proj(x).view(B, L, Hkv, D).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            cos, sin = rope if rope is not None else self.rope.cos_sin(positions, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = self.q_post_rope(q)
        k = self.k_cache_quant(k)
        v = self.v_cache_quant(v)

        if cache is not None and self.window is None:
            # Full attention: append to the cache first, then attend over it (one copy of
            # the growing cache per step instead of two).
            self._update_cache(cache, k, v, positions)
            keys, values, kpos = cache["k"], cache["v"], cache["pos"]
        else:
            keys, values, kpos = k, v, positions
            if cache is not None and "k" in cache:
                keys = torch.cat([cache["k"], k], dim=2)
                values = torch.cat([cache["v"], v], dim=2)
                kpos = torch.cat([cache["pos"], positions])
        mask = self.visible(positions, kpos)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                             scale=self.scaling, enable_gqa=H != Hkv)
        if cache is not None and self.window is not None:
            # a window ring is written after attending: its slots may still be read above
            self._update_cache(cache, k, v, positions)
        out = out.transpose(1, 2).reshape(B, L, H * D)
        if self.output_gate:
            out = out * torch.sigmoid(gate)
        return self.o_proj(out)

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
