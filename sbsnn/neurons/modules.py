"""``AdaptiveThresholdNeuron``: the spike formula as a module, a SpikingJelly node when available.

With SpikingJelly (the ``spikingjelly`` extra) installed the neuron subclasses
``spikingjelly.activation_based.base.MemoryModule``, so ``functional.reset_net``,
``functional.set_step_mode`` and ``monitor.OutputMonitor`` work on networks holding it.
Without it a small local base class provides the same ``step_mode`` / ``reset()`` surface.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from . import shared_input
from .formula import DEFAULT_K, SpikeCodingError, binary_negative_error, check_coding, dequantize
from .scan import spike_counts
from .trains import DEFAULT_MAX_BYTES, MAX_BIT_STEPS, capacity, expand

__all__ = ["AdaptiveThresholdNeuron", "HAS_SPIKINGJELLY"]

try:
    from spikingjelly.activation_based.base import MemoryModule as _Base

    HAS_SPIKINGJELLY = True
except ImportError:  # the extra is optional
    HAS_SPIKINGJELLY = False

    class _Base(nn.Module):
        """Stand-in for SpikingJelly's MemoryModule: a step mode and resettable memories."""

        def __init__(self):
            super().__init__()
            self._memories = {}
            self._memory_defaults = {}
            self._step_mode = "s"

        def supported_step_mode(self):
            return ("s", "m")

        @property
        def step_mode(self) -> str:
            return self._step_mode

        @step_mode.setter
        def step_mode(self, value: str):
            if value not in self.supported_step_mode():
                raise ValueError(f"step_mode can only be {self.supported_step_mode()}, got {value!r}")
            self._step_mode = value

        def register_memory(self, name: str, value):
            self._memories[name] = value
            self._memory_defaults[name] = copy.deepcopy(value)

        def reset(self):
            for name, value in self._memory_defaults.items():
                self._memories[name] = copy.deepcopy(value)

        def __getattr__(self, name: str):
            memories = self.__dict__.get("_memories")
            if memories is not None and name in memories:
                return memories[name]
            return super().__getattr__(name)

        def __setattr__(self, name: str, value):
            memories = self.__dict__.get("_memories")
            if memories is not None and name in memories:
                memories[name] = value
            else:
                super().__setattr__(name, value)

        def forward(self, *args, **kwargs):
            if self.step_mode == "s":
                return self.single_step_forward(*args, **kwargs)
            return self.multi_step_forward(*args, **kwargs)


class AdaptiveThresholdNeuron(_Base):
    """Adaptive-threshold spiking neuron (SpikingBrain): ``round(x / V_th)`` spikes per element.

    - ``step_mode="s"``: returns the dequantized activation ``counts * V_th`` in ``x.dtype``,
      with a straight-through gradient (``d out / d x = 1``) so a spiking model can be
      fine-tuned.
    - ``step_mode="m"``: maps one analog input ``[..., D]`` to its spike train
      ``[T, ..., D]`` (values in ``x.dtype``), ``T`` the smallest the coding allows for the
      tensor (or ``steps``). No gradient flows through trains. The thresholds of the last
      call are kept in the memory ``v_th`` (shape ``x.shape[:-1] + (G,)``), so
      ``decode(train, coding) * v_th`` recovers the single-step output; ``reset()`` clears it.

    ``steps=T`` fixes the number of time steps: counts are clipped to what T steps of the
    coding carry (:func:`~sbsnn.neurons.coding.capacity`) in both modes, so the two modes
    stay consistent. ``group_size``, ``threshold`` (static, e.g. from
    ``calibrate_threshold``; stored as a buffer) and ``max_count`` are passed to
    :func:`~sbsnn.neurons.coding.spike_counts`. Binary coding raises on negative counts.
    """

    def __init__(self, k: float = DEFAULT_K, coding: str = "ternary", step_mode: str = "s", *,
                 steps: Optional[int] = None, group_size: Optional[int] = None, threshold=None,
                 max_count: Optional[int] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        check_coding(coding, "AdaptiveThresholdNeuron")
        if steps is not None:
            capacity(coding, steps)  # validates steps
            if steps > MAX_BIT_STEPS.get(coding, steps):
                raise SpikeCodingError(
                    f"AdaptiveThresholdNeuron: {coding} trains longer than {MAX_BIT_STEPS[coding]} "
                    "steps cannot be decoded in int64; pass fewer steps"
                )
        self.k = float(k)
        self.coding = coding
        self.steps = steps
        self.group_size = group_size
        self.max_count = max_count
        self.max_bytes = max_bytes
        if threshold is not None:  # a buffer: saved in state_dict, moved and cast with the module
            threshold = (threshold.detach().clone() if isinstance(threshold, torch.Tensor)
                         else torch.as_tensor(threshold, dtype=torch.float64))
        self.register_buffer("threshold", threshold)
        self.register_memory("v_th", None)
        self.step_mode = step_mode

    def extra_repr(self) -> str:
        parts = [f"k={self.k}", f"coding={self.coding!r}", f"step_mode={self.step_mode!r}"]
        for name in ("steps", "group_size", "max_count"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        if self.threshold is not None:
            parts.append("static threshold")
        return ", ".join(parts)

    def spike(self, x: torch.Tensor):
        """``(counts, v_th)`` of ``x`` under this neuron's settings, the one place both modes
        (and layers that consume integer counts) get them: ``spike_counts`` with the neuron's
        ``k``/``group_size``/``threshold``/``max_count``, clipped to ``steps`` if set, checked
        against the coding (binary raises on negative counts); stores ``v_th``. A sibling
        neuron with the same settings that spiked this very tensor last on this thread
        hands over its counts (:mod:`~sbsnn.neurons.shared_input`): the same tensors."""
        key = None
        if self.threshold is None:      # the adaptive rule: the counts depend on x alone
            key = shared_input.input_key(x, (self.k, self.coding, self.steps, self.group_size,
                                             self.max_count))
            hit = shared_input.lookup(x, key)
            if hit is not None:
                self.v_th = hit[1]
                return hit
        lo = hi = None
        max_count = self.max_count
        if self.steps is not None:
            lo, hi = capacity(self.coding, self.steps)
            bound = max(-lo, hi)
            max_count = bound if max_count is None else min(max_count, bound)
        counts, v_th = spike_counts(x, self.k, group_size=self.group_size, threshold=self.threshold,
                                    max_count=max_count)
        if self.coding == "binary":
            lowest = int(counts.min())
            if lowest < 0:
                raise binary_negative_error(type(self).__name__, lowest)
        if lo is not None and -lo != hi:  # two's complement: one more negative value than positive
            counts.clamp_(lo, hi)
        self.v_th = v_th
        shared_input.remember(x, key, counts, v_th)
        return counts, v_th

    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        counts, v_th = self.spike(x)
        out = dequantize(counts, v_th)
        if x.requires_grad and torch.is_grad_enabled():
            out = out + (x - x.detach())  # straight-through: value unchanged (x - x == 0), gradient 1
        return out

    def multi_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        counts, _ = self.spike(x)
        try:
            trains = expand(counts, self.coding, self.steps, max_bytes=self.max_bytes)
        except SpikeCodingError as err:
            raise SpikeCodingError(f"AdaptiveThresholdNeuron (multi-step): {err}") from None
        return trains.to(x.dtype)
