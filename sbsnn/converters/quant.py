"""INT8 weights and the integer arithmetic of a spiking linear layer.

Weights: symmetric INT8 per output channel and per group of ``group_size`` inputs,
``scale = amax|w| / 127`` per (row, group), codes ``round(w / scale)`` clamped to
[-127, 127]. Upstream does not clamp; with float32 scales the codes never leave that
range, but a scale stored in a narrower type can push a few to +-128, so we clamp and
count them.

Activations arrive as integer spike counts ``c`` with one threshold ``V_th`` per token.
The layer output is ``y = V_th * sum_g scale_g * (W_g @ c_g) + b``: each group's sum
``W_g @ c_g`` is an exact integer (``group_accumulate``), then ``rescale`` turns the
integers into floats in one fixed order. The event-driven simulator produces the same
integers event by event and calls the same ``rescale``, so the two paths agree bit for
bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CODE_MAX = 127


@dataclass
class QuantStats:
    codes: int = 0                   # weight codes written
    clamped: int = 0                 # codes that fell outside [-127, 127] before clamping
    max_abs_error: float = 0.0       # largest |w - code * scale| over all weights

    def merge(self, other: "QuantStats") -> "QuantStats":
        return QuantStats(self.codes + other.codes, self.clamped + other.clamped,
                          max(self.max_abs_error, other.max_abs_error))

    def to_dict(self) -> dict:
        return {"codes": self.codes, "clamped": self.clamped,
                "clamped_fraction": self.clamped / self.codes if self.codes else 0.0,
                "max_abs_weight_error": self.max_abs_error}


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def quantize_weight(weight: torch.Tensor, group_size: int = 128,
                    scale_dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.Tensor, torch.Tensor, QuantStats]:
    """``(codes int8 [out, in], scales [out, G], stats)`` for a weight ``[out, in]``.

    The last group is shorter when ``in`` is not a multiple of ``group_size``. A group of
    zeros gets scale 0 and codes 0.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight: expected a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size < 1:
        raise ValueError(f"quantize_weight: group_size must be >= 1, got {group_size}")
    if not torch.isfinite(weight).all():
        raise ValueError("quantize_weight: the weight holds NaN or Inf")
    out_f, in_f = weight.shape
    G = num_groups(in_f, group_size)
    w = weight.detach().to(torch.float32)
    wp = torch.nn.functional.pad(w, (0, G * group_size - in_f)).view(out_f, G, group_size)
    scales = (wp.abs().amax(-1) / CODE_MAX).to(scale_dtype)           # [out, G]
    s = scales.to(torch.float32)[..., None]
    raw = torch.where(s > 0, torch.round(wp / torch.where(s > 0, s, 1)), 0)
    clamped = int((raw.abs() > CODE_MAX).sum())
    codes = raw.clamp(-CODE_MAX, CODE_MAX)
    err = float((wp - codes * s).abs().max()) if w.numel() else 0.0
    codes = codes.view(out_f, G * group_size)[:, :in_f].to(torch.int8).contiguous()
    return codes, scales, QuantStats(codes.numel(), clamped, err)


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` per group, as a float ``[out, in]`` weight."""
    out_f, in_f = codes.shape
    G = scales.shape[1]
    c = torch.nn.functional.pad(codes.to(dtype), (0, G * group_size - in_f)).view(out_f, G, group_size)
    return (c * scales.to(dtype)[..., None]).view(out_f, -1)[:, :in_f]


def _exact_float_dtype(max_count: int, group_size: int) -> torch.dtype:
    """float32 holds every partial sum exactly when they stay below 2**24."""
    return torch.float32 if max_count * CODE_MAX * group_size < 2 ** 24 else torch.float64


def group_accumulate(counts: torch.Tensor, codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact integer sums ``acc[g, n, o] = sum_{i in group g} codes[o, i] * counts[n, i]``.

    counts ``[N, in]`` (any integer dtype), codes ``[out, in]`` int8 -> int64
    ``[G, N, out]``. Computed with a float matmul whose every partial sum is an integer
    the float type represents exactly, then converted: the result is the integer sum.
    """
    N, in_f = counts.shape
    out_f = codes.shape[0]
    G = num_groups(in_f, group_size)
    peak = int(counts.abs().max()) if counts.numel() else 0
    ft = _exact_float_dtype(peak, group_size)
    pad = G * group_size - in_f
    c = torch.nn.functional.pad(counts.to(ft), (0, pad)).view(N, G, group_size).transpose(0, 1)
    w = torch.nn.functional.pad(codes.to(ft), (0, pad)).view(out_f, G, group_size).permute(1, 2, 0)
    return torch.bmm(c, w).to(torch.int64)


def rescale(acc: torch.Tensor, scales: torch.Tensor, v_th: torch.Tensor,
            bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``y[n, o] = V_th[n] * sum_g scale[o, g] * acc[g, n, o] + b[o]``, in a fixed order.

    acc ``[G, N, out]`` int64; scales ``[out, G]``; v_th ``[N, 1]``. Works in float64
    (the integers and scales are exact there), rounds once to ``dtype`` at the end.
    """
    y = (acc.to(torch.float64) * scales.t().to(torch.float64)[:, None, :]).sum(0)
    y = y * v_th.to(torch.float64)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(dtype)
