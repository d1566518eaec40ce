"""INT8 weights and the integer arithmetic of a spiking linear layer.

Weights: symmetric INT8 per output channel and per group of ``group_size`` inputs,
``scale = amax|w| / 127`` per (row, group), codes ``round(w / scale)`` clamped to
[-127, 127]. Upstream does not clamp; with float32 scales the codes never leave that
range, but a scale stored in a narrower type (e.g. fp8) can push a few to +-128, so we
clamp and count them, with the largest weight error a clamp caused.

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
    max_clamp_error: float = 0.0     # largest of those errors at clamped codes

    def merge(self, other: "QuantStats") -> "QuantStats":
        return QuantStats(self.codes + other.codes, self.clamped + other.clamped,
                          max(self.max_abs_error, other.max_abs_error),
                          max(self.max_clamp_error, other.max_clamp_error))

    def to_dict(self) -> dict:
        return {"codes": self.codes, "clamped": self.clamped,
                "clamped_fraction": self.clamped / self.codes if self.codes else 0.0,
                "max_abs_weight_error": self.max_abs_error,
                "max_clamp_weight_error": self.max_clamp_error}


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


# Rows quantised at a time: a few MB of float32 temporaries that stay in cache, instead of
# several full-size copies of a large weight.
_QUANT_BLOCK_BYTES = 4 << 20


def quantize_weight(weight: torch.Tensor, group_size: int = 128,
                    scale_dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.Tensor, torch.Tensor, QuantStats]:
    """``(codes int8 [out, in], scales [out, G], stats)`` for a weight ``[out, in]``.

    The last group is shorter when ``in`` is not a multiple of ``group_size``. A group of
    zeros gets scale 0 and codes 0. Works through the rows in blocks, so memory beyond
    the outputs stays at a few MB whatever the weight's size.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight: expected a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size < 1:
        raise ValueError(f"quantize_weight: group_size must be >= 1, got {group_size}")
    out_f, in_f = weight.shape
    G = num_groups(in_f, group_size)
    codes = torch.empty(out_f, in_f, dtype=torch.int8, device=weight.device)
    scales = torch.empty(out_f, G, dtype=scale_dtype, device=weight.device)
    stats = QuantStats(codes=codes.numel())
    rows = max(1, _QUANT_BLOCK_BYTES // max(1, G * group_size * 4))
    for r in range(0, out_f, rows):
        w = weight[r:r + rows].detach().to(torch.float32)
        if not torch.isfinite(w).all():
            raise ValueError(f"quantize_weight: the weight holds NaN or Inf (rows {r}..{r + len(w) - 1})")
        wp = torch.nn.functional.pad(w, (0, G * group_size - in_f)).view(len(w), G, group_size)
        sc = (wp.abs().amax(-1) / CODE_MAX).to(scale_dtype)
        scales[r:r + rows] = sc
        s = sc.to(torch.float32)[..., None]
        q = torch.where(s > 0, wp / torch.where(s > 0, s, 1), 0).round_()
        over = q.abs() > CODE_MAX
        q.clamp_(-CODE_MAX, CODE_MAX)
        err = (wp - q * s).abs_()
        stats.max_abs_error = max(stats.max_abs_error, float(err.max()) if err.numel() else 0.0)
        n_over = int(over.sum())
        if n_over:
            stats.clamped += n_over
            stats.max_clamp_error = max(stats.max_clamp_error, float(err[over].max()))
        codes[r:r + rows] = q.view(len(w), G * group_size)[:, :in_f].to(torch.int8)
    return codes, scales, stats


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` per group, as a float ``[out, in]`` weight."""
    out_f, in_f = codes.shape
    G = scales.shape[1]
    c = torch.nn.functional.pad(codes.to(dtype), (0, G * group_size - in_f)).view(out_f, G, group_size)
    return (c * scales.to(dtype)[..., None]).view(out_f, -1)[:, :in_f]


def _exact_dtype(max_count: int, group_size: int) -> torch.dtype:
    """The fastest matmul dtype in which every partial sum is exact: float32 below 2**24,
    float64 below 2**53, else int64 (slow, but only huge static-threshold counts need it)."""
    bound = max_count * CODE_MAX * group_size
    if bound < 2 ** 24:
        return torch.float32
    return torch.float64 if bound < 2 ** 53 else torch.int64


def group_accumulate(counts: torch.Tensor, codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact integer sums ``acc[g, n, o] = sum_{i in group g} codes[o, i] * counts[n, i]``.

    counts ``[N, in]`` (any integer dtype), codes ``[out, in]`` int8 -> int64
    ``[G, N, out]``. Computed with a matmul whose every partial sum is an integer its
    dtype represents exactly (float32 or float64 when the bound allows; BLAS is much
    faster than integer matmul), then converted: the result is the integer sum.
    """
    N, in_f = counts.shape
    out_f = codes.shape[0]
    G = num_groups(in_f, group_size)
    peak = int(counts.abs().max()) if counts.numel() else 0
    ft = _exact_dtype(peak, group_size)
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
