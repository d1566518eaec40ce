"""LFM2's gated short convolution, pure PyTorch.

Per token t and channel d, with a depthwise causal kernel ``w[d, 0..K-1]`` (K =
``L_cache``)::

    B, C, x = split(in_proj(h_t), 3)
    u_t     = B * x                                     (input gate)
    z_t     = sum_{j<K} w[:, j] * u_{t-K+1+j}  (+ bias)  (u before the prompt: the state)
    y_t     = out_proj(C * z_t)                         (output gate)

The only memory is the last ``K - 1`` gated inputs ``u`` per channel: the conv state,
constant in size while decoding. Two forms compute the convolution:
``causal_conv1d`` runs a whole prompt as one depthwise conv (continuing from a state),
``causal_conv1d_recurrent`` steps token by token with ``causal_conv1d_step`` (decoding,
and the plain reference).

Layouts are time-last, as ``nn.Conv1d`` and transformers keep them: sequences
``[B, D, L]``, the state ``[B, D, K - 1]`` (oldest column first), weights ``[D, K]``
(``conv.weight[:, 0, :]``). transformers' LFM2 cache keeps K columns, one more than the
convolution ever reads; its last ``K - 1`` columns equal this state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Activations the convolution may apply to its output (LFM2: none; Gated DeltaNet and
# Mamba-2 convolutions use silu).
CONV_ACTIVATIONS = {None: lambda z: z, "silu": F.silu, "swish": F.silu}


def _check(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None,
           activation: str | None) -> None:
    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f"conv activation {activation!r} is not supported; one of "
                         f"{sorted(k for k in CONV_ACTIVATIONS if k)} or None")
    if weight.dim() != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"weight must be [D, K] with D = x.shape[1] = {x.shape[1]}, "
                         f"got {tuple(weight.shape)}")
    want = (x.shape[0], weight.shape[0], weight.shape[1] - 1)
    if state is not None and tuple(state.shape) != want:
        raise ValueError(f"conv state must be [B, D, K - 1] = {list(want)}, got {list(state.shape)}")


def conv_state_zeros(batch_size: int, channels: int, kernel_size: int,
                     dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The state before any token: ``K - 1`` zero inputs per channel."""
    return torch.zeros(batch_size, channels, kernel_size - 1, dtype=dtype, device=device)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  state: torch.Tensor | None = None, activation: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal convolution of a prompt ``x [B, D, L]`` continuing from ``state``
    ``[B, D, K - 1]`` (zeros when None). Returns the output ``[B, D, L]`` and the state it
    leaves (the last ``K - 1`` inputs, including those of ``state`` when ``L < K - 1``)."""
    _check(x, weight, state, activation)
    Bsz, D, L = x.shape
    K = weight.shape[1]
    if state is None:
        state = conv_state_zeros(Bsz, D, K, x.dtype, x.device)
    full = torch.cat([state.to(x.dtype), x], dim=-1)           # [B, D, K - 1 + L]
    if L == 0:  # conv1d refuses an input shorter than its kernel
        return x.new_zeros(Bsz, D, 0), state.to(x.dtype).clone()
    z = F.conv1d(full, weight.to(x.dtype).unsqueeze(1),
                 None if bias is None else bias.to(x.dtype), groups=D)
    # A copy, not a view: a view would keep the whole prompt alive in the state.
    return CONV_ACTIVATIONS[activation](z), full[:, :, full.shape[-1] - (K - 1):].clone()


def causal_conv1d_step(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token ``x [B, D]`` from ``state [B, D, K - 1]``: the window is the state plus
    the token, ``z = sum_j w[:, j] * window[:, :, j] (+ bias)``; the new state drops the
    oldest column. Returns ``z [B, D]`` and the new state (a new tensor)."""
    _check(x[:, :, None], weight, state, activation)
    window = torch.cat([state.to(x.dtype), x[:, :, None]], dim=-1)     # [B, D, K]
    z = (window * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        z = z + bias.to(x.dtype)
    return CONV_ACTIVATIONS[activation](z), window[:, :, 1:].clone()


def causal_conv1d_recurrent(x: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, state: torch.Tensor | None = None,
                            activation: str | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`causal_conv1d`, one :func:`causal_conv1d_step` per token
    (the definition; what decoding does)."""
    _check(x, weight, state, activation)
    Bsz, D, L = x.shape
    if state is None:
        state = conv_state_zeros(Bsz, D, weight.shape[1], x.dtype, x.device)
    outs = []
    for t in range(L):
        z, state = causal_conv1d_step(x[:, :, t], state, weight, bias, activation)
        outs.append(z)
    z = torch.stack(outs, dim=-1) if outs else x.new_zeros(Bsz, D, 0)
    return z, state.to(x.dtype)


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
