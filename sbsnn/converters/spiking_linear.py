"""``SpikingLinear``: INT8 weights, adaptive-threshold spike counts on the input."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable

import torch
from torch import nn

from sbsnn.converters import int8_kernels
from sbsnn.converters.quant import (INT8_ROUTE, QuantStats, dequantize_weight, int8_codes_t,
                                    integer_route, linear_from_counts, num_groups,
                                    quantize_weight, scales_t64)
from sbsnn.errors import NonFiniteError
from sbsnn.neurons import AdaptiveThresholdNeuron
from sbsnn.neurons.coding import SpikeCodingError
from sbsnn.neurons.scan import row_thresholds

# Bytes of the float64 [tokens, out] output one forward block may hold (the exact group
# sums themselves come a chunk of groups at a time, see quant.group_sums).
_BLOCK_BYTES = 64 << 20
# Up to this many tokens (decoding) a call spikes and sums in one kernel (_few_rows).
_FEW_ROWS = 4


class SpikingLinear(nn.Module):
    """A linear layer whose input is spiked and whose weight is INT8.

    ``forward(x)``: per token ``V_th = mean|x| / k`` and counts ``round(x / V_th)``
    (``sbsnn.neurons``), then ``y = V_th * sum_g scale_g * (W_g @ counts_g) + b`` with
    exact integer group sums. Equal, up to one final float rounding, to the
    fake-quantised ``(counts * V_th) @ (codes * scale).T + b``.

    Buffers: ``weight_codes`` int8 ``[out, in]``, ``weight_scales`` float32 ``[out, G]``,
    ``bias`` (optional). On the int8 route the layer also keeps the codes transposed
    (:meth:`int8_codes_t`: a second int8 copy, made on first use, never saved). ``neuron`` is the input's :class:`AdaptiveThresholdNeuron` (its
    ``k`` and ``coding`` are the layer's); SpikingJelly hooks and monitors see it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 group_size: int = 128, k: float = 3.0, coding: str = "ternary",
                 device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        G = num_groups(in_features, group_size)
        self.register_buffer("weight_codes", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scales", torch.zeros(out_features, G, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.neuron = AdaptiveThresholdNeuron(k=k, coding=coding, step_mode="s")
        self.quant_stats = QuantStats()
        # When set (by an ExecutorSwap: the simulator, calibration, refinement), forward(x)
        # returns executor(self, x) instead of the integer path.
        self.executor = None
        # The module's name in its model (set by convert / load_spiking), for error messages.
        self.name: str | None = None
        self._codes_t: tuple | None = None     # (key of weight_codes, codes [in, out])
        self._scales_t: tuple | None = None    # (key of weight_scales, float64 [G, out])

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 128, k: float = 3.0,
                    coding: str = "ternary") -> "SpikingLinear":
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size,
                k, coding, device=w.device, dtype=w.dtype)
        codes, scales, stats = quantize_weight(w, group_size)
        m.weight_codes.copy_(codes)
        m.weight_scales.copy_(scales)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach())
        m.quant_stats = stats
        return m

    @property
    def k(self) -> float:
        return self.neuron.k

    @property
    def coding(self) -> str:
        return self.neuron.coding

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}, int8 weights")

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_weight(self.weight_codes, self.weight_scales, self.group_size, dtype)

    def spike(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts ``[N, in]`` and thresholds ``[N, 1]`` of the input rows. NaN or Inf in
        the input raises :class:`~sbsnn.errors.NonFiniteError` naming this layer."""
        rows = x.reshape(-1, self.in_features)
        if self.neuron.group_size is not None:
            name = self.name or f"a SpikingLinear [{self.in_features} -> {self.out_features}]"
            raise SpikeCodingError(
                f"layer {name}: its neuron has group_size={self.neuron.group_size!r}, but a "
                "SpikingLinear's integer path takes one threshold per token (the paper's rule); "
                "set layer.neuron.group_size = None")
        try:
            return self.neuron.spike(rows)
        except SpikeCodingError:
            if rows.is_floating_point() and not bool(torch.isfinite(rows).all()):
                raise self._nonfinite_input(rows) from None
            raise

    def _nonfinite_input(self, rows: torch.Tensor) -> NonFiniteError:
        bad = ~torch.isfinite(rows)
        token, channel = (int(i) for i in bad.nonzero()[0])
        name = self.name or f"a SpikingLinear [{self.in_features} -> {self.out_features}]"
        codes_ok = bool(torch.isfinite(self.weight_scales).all())
        return NonFiniteError(
            f"layer {name}: its input activations hold {int(bad.sum()):,} NaN or Inf values "
            f"(first at row {token}, channel {channel}) - from the activations, not this layer's "
            + ("weights (its INT8 codes and scales are finite): an earlier layer or a float "
               "tensor upstream (embeddings, norms, attention) overflowed or holds NaN; load the "
               "checkpoint with verification on and check the float model on the same text"
               if codes_ok else "weights alone: this layer's scales are not finite either"),
            layer=name, origin="activations")

    def int8_codes_t(self) -> torch.Tensor:
        """``weight_codes`` as the int8 GEMM reads them (``[in, out]`` contiguous), cached
        until the codes tensor is replaced or written in place (its version counter)."""
        w = self.weight_codes
        # An inference tensor has no version counter (it is written only inside
        # inference mode, which no sbsnn code does to codes after loading).
        key = (w.device, w.data_ptr(), None if w.is_inference() else w._version)
        if self._codes_t is None or self._codes_t[0] != key:
            self._codes_t = (key, int8_codes_t(w))
        return self._codes_t[1]

    def int8_scales_t(self) -> torch.Tensor:
        """``weight_scales`` as the int8 kernels read them (float64 ``[G, out]``), cached
        like :meth:`int8_codes_t`."""
        w = self.weight_scales
        key = (w.device, w.data_ptr(), None if w.is_inference() else w._version)
        if self._scales_t is None or self._scales_t[0] != key:
            self._scales_t = (key, scales_t64(w))
        return self._scales_t[1]

    def forward_counts(self, counts: torch.Tensor, v_th: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The integer path: ``[N, in]`` counts -> ``[N, out]`` outputs, in token blocks:
        exact group sums on the route in force (:func:`~sbsnn.converters.quant.integer_route`)
        rescaled by :func:`~sbsnn.converters.quant.rescale`."""
        route = "int8" if integer_route(counts.device) == INT8_ROUTE else "float32"
        codes_t = self.int8_codes_t() if route == "int8" else None
        scales_t = self.int8_scales_t() if route == "int8" else None
        N, block = counts.shape[0], self.token_block()
        if N <= block:
            return linear_from_counts(counts, self.weight_codes, self.weight_scales, v_th,
                                      self.bias, self.group_size, dtype, route, codes_t,
                                      scales_t)
        out = torch.empty(N, self.out_features, dtype=dtype, device=counts.device)
        for s in range(0, N, block):
            out[s:s + block] = linear_from_counts(counts[s:s + block], self.weight_codes,
                                                  self.weight_scales, v_th[s:s + block], self.bias,
                                                  self.group_size, dtype, route, codes_t,
                                                  scales_t)
        return out

    def token_block(self) -> int:
        """Tokens per block so that the float64 ``[tokens, out]`` output stays bounded."""
        return max(1, _BLOCK_BYTES // max(1, self.out_features * 8))

    def _few_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """Decoding's integer path (a few tokens): thresholds by the formula's torch
        operations, then the counts made and summed in one kernel
        (:func:`~sbsnn.converters.int8_kernels.spike_linear`), the same bits as
        :meth:`spike` then :meth:`forward_counts`. None where it does not apply: a neuron
        with other settings than the adaptive rule's (static threshold, groups, clipping,
        steps; binary coding, which refuses negative counts), no numba, another route,
        device or dtype, rows not contiguous, or a count or value the kernel leaves to the
        general path."""
        n = self.neuron
        if (n.threshold is not None or n.group_size is not None or n.max_count is not None
                or n.steps is not None or n.coding == "binary" or x.device.type != "cpu"
                or x.dtype not in int8_kernels.OUT_DTYPES or not int8_kernels.available()
                or integer_route(x.device) != INT8_ROUTE):
            return None
        rows = x.detach().reshape(-1, self.in_features)
        if not rows.is_contiguous():     # a strided row's mean may add in another order
            return None
        v_th = row_thresholds(rows, n.k)
        y = int8_kernels.spike_linear(rows, v_th, self.int8_codes_t(), self.group_size,
                                      self.int8_scales_t(), self.bias, x.dtype)
        if y is not None:
            n.v_th = v_th
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.executor is not None:
            return self.executor(self, x)
        if x.numel() <= _FEW_ROWS * self.in_features:
            y = self._few_rows(x)
            if y is not None:
                return y.view(*x.shape[:-1], self.out_features)
        counts, v_th = self.spike(x)
        y = self.forward_counts(counts, v_th, x.dtype)
        return y.view(*x.shape[:-1], self.out_features)


def spiking_layers(model: nn.Module) -> list[tuple[str, SpikingLinear]]:
    """The :class:`SpikingLinear` modules of ``model`` with their names, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingLinear)]


class ExecutorSwap:
    """While active (``with swap:``), every :class:`SpikingLinear` of ``layers`` (a model, or
    ``(name, layer)`` pairs) computes ``execute(name, layer, x)`` instead of its integer
    path: the one way the simulator, calibration's spike tap and refinement's
    straight-through pass run a spiking model their own way.

    ``execute`` is given, or a subclass overrides :meth:`execute`. On exit, error or not,
    each layer gets back the executor it had. A layer that already has one (another swap is
    active on it) is refused: the inner swap would take the outer one's calls from it
    unseen, so nothing is installed and :class:`RuntimeError` names the layer.
    """

    def __init__(self, layers: nn.Module | Iterable[tuple[str, SpikingLinear]],
                 execute: Callable[[str, SpikingLinear, torch.Tensor], torch.Tensor] | None = None):
        self.layers = spiking_layers(layers) if isinstance(layers, nn.Module) else list(layers)
        if execute is not None:
            self.execute = execute
        elif not callable(getattr(self, "execute", None)):
            raise TypeError(f"{type(self).__name__} needs execute(name, layer, x): pass "
                            "execute= or define it in a subclass")
        self._saved: list[tuple[SpikingLinear, object]] = []

    def __enter__(self):
        if self._saved:
            raise RuntimeError(f"{type(self).__name__} is already active; it cannot be entered twice")
        for name, layer in self.layers:
            if layer.executor is not None:
                self._restore()
                raise RuntimeError(
                    f"layer {name}: another executor swap is active on it "
                    f"({type(self).__name__} cannot run inside it); end that one first")
            self._saved.append((layer, layer.executor))
            layer.executor = partial(self.execute, name)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for layer, executor in reversed(self._saved):
            layer.executor = executor
        self._saved = []
