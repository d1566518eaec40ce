"""LFM2's gated short convolution, pure PyTorch.

Per token t and channel d, with a depthwise causal kernel ``w[d, 0..K-1]`` (K =
``L_cache``)::

    B, C, x = split(in_proj(h_t), 3)
    u_t     = B * x                                     (input gate)
    z_t     = sum_{j<K} w[:, j] * u_{t-K+1+j}  (+ bias)  (u before the prompt: the state)
    y_t     = out_proj(C * z_t)                         (output gate)

The only memory is the last ``K - 1`` gated inputs ``u`` per channel: the conv state,
constant in size while decoding. The convolution is :mod:`sbsnn.models.causal_conv`'s
(a prompt in one depthwise conv, a token in one step; the plain per-token reference
beside them), shared with Gated DeltaNet and Mamba-2.
"""

from __future__ import annotations

import torch
from torch import nn

from sbsnn.models.causal_conv import causal_conv1d, causal_conv1d_step


class ShortConv(nn.Module):
    """LFM2's gated short-convolution mixer (transformers' ``Lfm2ShortConv``, identical in
    ``lfm2``, ``lfm2_moe`` and ``lfm3``). Parameter names are transformers' (``in_proj``,
    ``conv``, ``out_proj``), so a decoder layer's ``conv.*`` tensors load by name; ``bias``
    (config ``conv_bias``) switches the biases of all three at once, as there.

    ``in_proj`` rows are ``[B; C; x]`` in that order (each ``hidden_size``).
    """

    def __init__(self, hidden_size: int, L_cache: int = 3, bias: bool = False):
        super().__init__()
        if L_cache < 1:
            raise ValueError(f"L_cache (conv_L_cache) must be >= 1, got {L_cache}")
        self.hidden_size, self.L_cache = hidden_size, L_cache
        self.in_proj = nn.Linear(hidden_size, 3 * hidden_size, bias=bias)
        # Same module as transformers (its padding is unused: causal_conv1d pads from the
        # state), so the weight keeps its [D, 1, K] shape in state dicts.
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel_size=L_cache, groups=hidden_size,
                              bias=bias, padding=L_cache - 1)
        self.out_proj = nn.Linear(hidden_size, hidden_size, bias=bias)

    def state_bytes(self, batch_size: int = 1, dtype: torch.dtype = torch.float32, *,
                    dtype_bytes: int | None = None) -> int:
        """Bytes of the decoding state: ``batch * hidden_size * (L_cache - 1)`` entries in
        the activations' ``dtype`` (the argument the other mixers take), or of
        ``dtype_bytes`` bytes each; whatever the context length."""
        item = dtype.itemsize if dtype_bytes is None else dtype_bytes
        return batch_size * self.hidden_size * (self.L_cache - 1) * item

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                positions: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, hidden]`` -> ``[B, L, hidden]``. With ``cache`` (a dict), the conv
        state ``cache["conv"]`` (``[B, hidden, L_cache - 1]``, absent = zeros) is read and
        replaced; one token steps it, longer inputs run :func:`causal_conv1d` from it.
        ``positions`` is accepted for a common mixer signature and unused (no position
        enters the math). ``attention_mask [B, L]`` (1 = token, 0 = padding) zeroes padded
        inputs before ``in_proj``, as transformers does."""
        if attention_mask is not None:
            x = (x * attention_mask[:, :, None]).to(x.dtype)
        Bg, Cg, u = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)   # each [B, D, L]
        u = Bg * u
        state = cache.get("conv") if cache is not None else None
        weight = self.conv.weight[:, 0, :]
        if state is not None and u.shape[-1] == 1:
            z, state = causal_conv1d_step(u[:, :, 0], state, weight, self.conv.bias)
            z = z[:, :, None]
        else:
            z, state = causal_conv1d(u, weight, self.conv.bias, state)
        if cache is not None:
            cache["conv"] = state
        return self.out_proj((Cg * z).transpose(1, 2))
