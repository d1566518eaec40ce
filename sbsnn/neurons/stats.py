"""Spike statistics of counts in closed form: T, spikes per element and per step, no trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import workers as _workers
from .formula import SpikeCodingError, check_coding, eager
from .trains import (
    DEFAULT_MAX_BYTES,
    UNIT_CODINGS,
    Steps,
    magnitude,
    min_steps,
    per_element_steps,
    popcount,
    prepare_counts,
    resolve_steps,
)

__all__ = ["SpikeStats", "spike_stats", "spikes_per_element"]


@dataclass(frozen=True)
class SpikeStats:
    """Spike statistics of a counts tensor, computed in closed form (no trains).

    ``spikes_per_step[t]`` is the number of elements that emit a (nonzero) spike at step
    ``t``; with per-element T, step ``t`` is each element's own t-th slot.
    """

    coding: str
    steps: int  # T for the tensor; with per-element T, the longest one
    spikes: torch.Tensor  # spikes per element, shape of the counts
    spikes_per_step: torch.Tensor  # int64, shape [steps]
    total_spikes: int
    slots: int  # time slots: elements * T, or the sum of per-element T
    element_steps: Optional[torch.Tensor] = None  # per-element T when steps="per_element"

    @property
    def firing_rate(self) -> float:
        """Total spikes / time slots (upstream: spikes / (elements * T)); 0 when no slots."""
        return self.total_spikes / self.slots if self.slots else 0.0


def _bincount(flat: torch.Tensor, minlength: int) -> torch.Tensor:
    """torch.bincount on a single-threaded worker when torch has several threads: its loop
    is serial anyway, while its min/max prologue would fork (and, on a shared machine, wait
    for) torch's threads."""
    if flat.device.type != "cpu" or torch.get_num_threads() <= 1 or _workers.workers_for(2) <= 1:
        return torch.bincount(flat, minlength=minlength)
    return _workers._worker_pool(1).submit(torch.bincount, flat, minlength=minlength).result()


def _magnitude_histogram(mag: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of each value 0..bins-1 of a non-negative integer tensor (int64)."""
    flat = mag.reshape(-1)
    if flat.dtype != torch.int8 or flat.device.type != "cpu" or flat.numel() < 2:
        return torch.bincount(flat, minlength=bins)[:bins]
    # int8 magnitudes are 0..127: read byte pairs as one int16 (lo + 256 * hi, never
    # negative) so bincount does half the increments, then split the pair histogram.
    even = flat.numel() - flat.numel() % 2
    pairs = _bincount(flat[:even].view(torch.int16), 128 * 256)
    pairs = pairs[: 128 * 256].view(128, 256)  # [hi, lo]
    hist = pairs.sum(0)[:128] + pairs.sum(1)
    if even < flat.numel():
        hist[int(flat[-1])] += 1
    if bins <= 128:
        return hist[:bins]
    return torch.cat([hist, hist.new_zeros(bins - 128)])


@eager
def spike_stats(counts: torch.Tensor, coding: str, steps: Steps = None, *,
                max_bytes: int = DEFAULT_MAX_BYTES) -> SpikeStats:
    """T, spikes per element and spikes per step of ``expand(counts, coding, steps)``, without trains.

    Closed forms: spikes per element are ``|c|`` (binary/ternary), ``popcount(|c|)``
    (bitwise) or the popcount of the T-bit two's complement word; spikes at step ``t`` are
    ``#(|c| > t)`` (unit codings, from a histogram of ``|c|``) or the number of elements with
    the bit that step carries set. ``steps`` is as in :func:`expand`.
    """
    fn = "spike_stats"
    check_coding(coding, fn)
    c, lo, hi = prepare_counts(counts, coding, fn)
    mag = magnitude(c)
    per_element = isinstance(steps, str) and steps == "per_element"
    element_steps = per_element_steps(c, mag, coding) if per_element else None
    t_len = int(element_steps.max()) if per_element else resolve_steps(coding, lo, hi, steps, fn)
    if 8 * (t_len + 1) > max_bytes:
        raise SpikeCodingError(
            f"{fn}: {coding} coding needs T={t_len} steps, and the per-step counts alone exceed "
            f"max_bytes={max_bytes}; use coding='bitwise' (T={min_steps('bitwise', lo, hi)}) "
            "or clip the counts with spike_counts(..., max_count=...)"
        )
    numel = c.numel()
    if coding in UNIT_CODINGS:
        hist = _magnitude_histogram(mag, t_len + 1)  # magnitudes never exceed T here
        at_least = hist.flip(0).cumsum(0).flip(0)  # at_least[m] = #(|c| >= m)
        per_step = at_least[1:].clone()  # #(|c| > t) = #(|c| >= t + 1)
        total = int(per_step.sum())
        return SpikeStats(coding, t_len, mag, per_step, total, total if per_element else numel * t_len, element_steps)
    per_step = torch.zeros(t_len, dtype=torch.int64)
    bits = torch.iinfo(c.dtype).bits
    src = mag if coding == "bitwise" else c  # two's complement shifts c itself (sign-extending)
    if per_element:
        st, slots = element_steps.to(c.dtype), 0
        for t in range(t_len):
            b = st - 1 - t
            alive = b >= 0
            per_step[t] = int(torch.count_nonzero(((src >> b.clamp(min=0)) & 1).bool() & alive))
            slots += int(torch.count_nonzero(alive))
        word_len = st
    else:
        width = max(-lo, hi).bit_length()
        for t in range(t_len):
            b = t_len - 1 - t
            if coding == "bitwise" and b >= width:
                continue  # leading zeros
            per_step[t] = int(torch.count_nonzero((src >> min(b, bits - 1)) & 1))
        slots, word_len = numel * t_len, t_len
    spikes = _element_spikes(c, mag, coding, word_len)
    return SpikeStats(coding, t_len, spikes, per_step, int(per_step.sum()), slots, element_steps)


def _element_spikes(c: torch.Tensor, mag: torch.Tensor, coding: str, word_len) -> torch.Tensor:
    """Spikes per element (closed forms): ``|c|``, ``popcount(|c|)``, or the popcount of
    the ``word_len``-bit two's complement word."""
    if coding in UNIT_CODINGS:
        return mag
    if coding == "bitwise":
        return popcount(mag)
    # popcount of the T-bit word; for c < 0 its zeros are the ones of ~c (>= 0)
    return torch.where(c >= 0, popcount(mag), word_len - popcount(~c))


@eager
def spikes_per_element(counts: torch.Tensor, coding: str, steps: Optional[int] = None) -> torch.Tensor:
    """The spikes each element of ``counts`` emits in ``coding``, without the per-step
    statistics of :func:`spike_stats` (the same closed forms, for hot loops): ``|c|``
    (binary, ternary), ``popcount(|c|)`` (bitwise), the popcount of the T-bit two's
    complement word (T: ``steps``, by default the smallest the counts allow)."""
    fn = "spikes_per_element"
    check_coding(coding, fn)
    c, lo, hi = prepare_counts(counts, coding, fn)
    t_len = resolve_steps(coding, lo, hi, steps, fn) if coding == "twos_complement" else 0
    return _element_spikes(c, magnitude(c), coding, t_len)
