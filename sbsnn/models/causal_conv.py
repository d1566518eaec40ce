"""The depthwise causal convolution the linear mixers run over time, in one place:
Gated DeltaNet over q|k|v, Mamba-2 over x|B|C, LFM2's short convolution over its gated
input. Per channel d, with kernel ``w[d, 0..K-1]``::

    y_t = act(bias_d + sum_j w[d, j] * x_{t-K+1+j})        (x before the sequence: the state)

Layouts are time-last, as ``nn.Conv1d`` keeps them: a sequence ``[B, D, L]``, the state
``[B, D, K - 1]`` (the last K - 1 inputs, oldest first; zeros at the start of a
sequence), weights ``[D, K]`` (``conv.weight[:, 0, :]``; ``[D, 1, K]`` is accepted too).
The state is constant in size while decoding. transformers' caches keep K columns, one
more than the convolution ever reads again; their last K - 1 columns equal this state.

Three forms: :func:`causal_conv1d` runs a prompt as one convolution continuing from a
state; :func:`causal_conv1d_step` takes one token (decoding); and
:func:`causal_conv1d_recurrent`, one step per token, is the plain reference the tests
hold the other two to. The arithmetic runs in the weights' dtype and the result comes
back in the input's (transformers' order for these mixers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbsnn.models.layers import ACTIVATIONS


def _activation(activation: str | None):
    if activation is None:
        return lambda z: z
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv activation {activation!r} is not supported; one of "
                         f"{sorted(ACTIVATIONS)} or None")
    return ACTIVATIONS[activation]


def _weight(weight: torch.Tensor) -> torch.Tensor:
    return weight[:, 0, :] if weight.dim() == 3 else weight


def _check(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None) -> None:
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
    """A prompt ``x [B, D, L]`` continuing from ``state [B, D, K - 1]`` (zeros when
    None). Returns the output ``[B, D, L]`` and the state it leaves (the last ``K - 1``
    inputs, those of ``state`` included when ``L < K - 1``), in x's dtype."""
    weight = _weight(weight)
    _check(x, weight, state)
    act = _activation(activation)
    Bsz, D, L = x.shape
    K = weight.shape[1]
    if state is None:
        state = conv_state_zeros(Bsz, D, K, x.dtype, x.device)
    full = torch.cat([state.to(x.dtype), x], dim=-1)           # [B, D, K - 1 + L]
    # A copy, not a view: a view would keep the whole prompt alive in the state.
    new_state = full[:, :, full.shape[-1] - (K - 1):].clone()
    if L == 0:  # conv1d refuses an input shorter than its kernel
        return x.new_zeros(Bsz, D, 0), new_state
    z = F.conv1d(full.to(weight.dtype), weight.unsqueeze(1),
                 None if bias is None else bias.to(weight.dtype), groups=D)
    return act(z).to(x.dtype), new_state


def causal_conv1d_step(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None = None, activation: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token ``x [B, D]`` from ``state [B, D, K - 1]``: the window is the state plus
    the token; the new state drops the oldest column. Returns ``y [B, D]`` and the new
    state (a new tensor), in x's dtype."""
    weight = _weight(weight)
    _check(x[:, :, None], weight, state)
    act = _activation(activation)
    window = torch.cat([state.to(x.dtype), x[:, :, None]], dim=-1)     # [B, D, K]
    z = (window.to(weight.dtype) * weight).sum(-1)
    if bias is not None:
        z = z + bias.to(weight.dtype)
    return act(z).to(x.dtype), window[:, :, 1:].clone()


def causal_conv1d_recurrent(x: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, state: torch.Tensor | None = None,
                            activation: str | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`causal_conv1d`, one :func:`causal_conv1d_step` per token
    (the definition; what decoding does)."""
    weight = _weight(weight)
    _check(x, weight, state)
    Bsz, D, L = x.shape
    if state is None:
        state = conv_state_zeros(Bsz, D, weight.shape[1], x.dtype, x.device)
    outs = []
    for t in range(L):
        y, state = causal_conv1d_step(x[:, :, t], state, weight, bias, activation)
        outs.append(y)
    y = torch.stack(outs, dim=-1) if outs else x.new_zeros(Bsz, D, 0)
    return y, state.to(x.dtype)
