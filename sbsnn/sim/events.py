"""Spike events: which input channels of which tokens fire at each time step.

An event is ``(step, token, channel, polarity)``; each step carries a weight, so that
``sum_t weight_t * polarity`` over an element's events gives back its count:

=================  ========================================  ====================
coding             fires at step t when                       step weight
=================  ========================================  ====================
binary             c > t                                      1
ternary            |c| > t            (polarity sign(c))      1
bitwise            bit T-1-t of |c|   (polarity sign(c))      2^(T-1-t)
twos_complement    bit T-1-t of the T-bit word of c           -2^(T-1) at t=0, else 2^(T-1-t)
=================  ========================================  ====================

This is the same layout as :func:`sbsnn.neurons.expand` (tests check it), produced from
the nonzero counts alone: no ``[T, ...]`` train is ever materialised. For binary and
ternary codings the nonzero elements are sorted by magnitude once, so the events of
step t are a prefix of that list.

The simulator itself never walks the steps: :func:`summarize` gives every counter of a
call (events by sign, events per step, nonzero elements, silent channels, the largest
count) in closed form from a histogram of the count values, so its cost does not grow
with T. :func:`step_events` is the plain walk the tests hold those closed forms to (and
what a recording with ``record_events=True`` stores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

from sbsnn.neurons import CODINGS, num_steps
from sbsnn.neurons.formula import binary_negative_error
from sbsnn.neurons.trains import min_steps


@dataclass
class StepEvents:
    step: int
    weight: int               # value of one spike at this step
    token: torch.Tensor       # int64 [E]
    channel: torch.Tensor     # int64 [E]
    polarity: torch.Tensor    # int8 [E], +1 or -1

    def __len__(self) -> int:
        return int(self.token.numel())


def step_events(counts: torch.Tensor, coding: str, steps: int | None = None) -> Iterator[StepEvents]:
    """The events of integer ``counts [N, D]``, one :class:`StepEvents` per time step."""
    if counts.dim() != 2:
        raise ValueError(f"step_events: counts must be [tokens, channels], got {tuple(counts.shape)}")
    T = num_steps(counts, coding) if steps is None else int(steps)
    tok, ch = counts.nonzero(as_tuple=True)
    c = counts[tok, ch].to(torch.int64)
    if coding in ("binary", "ternary"):
        mag = c.abs()
        order = mag.argsort(descending=True, stable=True)
        tok, ch, c, mag = tok[order], ch[order], c[order], mag[order]
        pol = c.sign().to(torch.int8)
        # Number of elements with |c| > t, for every t: a prefix length of the sorted list.
        ascending = mag.flip(0)
        for t in range(T):
            n = int(mag.numel() - torch.searchsorted(ascending, t, right=True))
            yield StepEvents(t, 1, tok[:n], ch[:n], pol[:n])
        return
    if coding == "bitwise":
        mag, pol = c.abs(), c.sign().to(torch.int8)
        for t in range(T):
            bit = T - 1 - t
            fire = ((mag >> bit) & 1).bool()
            yield StepEvents(t, 1 << bit, tok[fire], ch[fire], pol[fire])
        return
    if coding == "twos_complement":
        word = c & ((1 << T) - 1)          # the T-bit two's-complement word
        for t in range(T):
            bit = T - 1 - t
            fire = ((word >> bit) & 1).bool()
            weight = -(1 << bit) if t == 0 else 1 << bit
            yield StepEvents(t, weight, tok[fire], ch[fire],
                             torch.ones(int(fire.sum()), dtype=torch.int8))
        return
    raise ValueError(f"step_events: unknown coding {coding!r}")


def events_to_counts(events, shape: tuple[int, int]) -> torch.Tensor:
    """Sum events back into integer counts (the inverse, for tests and checks)."""
    out = torch.zeros(shape, dtype=torch.int64)
    for ev in events:
        out.index_put_((ev.token, ev.channel), ev.polarity.to(torch.int64) * ev.weight, accumulate=True)
    return out


# ------------------------------------------------------------------------ closed forms
_HIST_MAX_BINS = 1 << 20   # value ranges up to this size are counted with one bincount


def popcount64(m: torch.Tensor) -> torch.Tensor:
    """Popcount of every int64 bit pattern (SWAR; the masks drop arithmetic-shift fill)."""
    m = m.to(torch.int64)
    m = m - ((m >> 1) & 0x5555555555555555)
    m = (m & 0x3333333333333333) + ((m >> 2) & 0x3333333333333333)
    m = (m + (m >> 4)) & 0x0F0F0F0F0F0F0F0F  # non-negative from here on
    m = m + (m >> 8)
    m = m + (m >> 16)
    m = m + (m >> 32)
    return m & 0x7F


def _word(v: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``steps``-bit two's complement word of int64 ``v`` (its own bits at 64 steps)."""
    return v if steps >= 64 else v & ((1 << steps) - 1)


def _bit(v: torch.Tensor, b: int) -> torch.Tensor:
    """Bit ``b`` of int64 ``v`` (0 for b >= 64)."""
    return (v >> min(b, 63)) & 1 if b < 64 else torch.zeros_like(v)


@dataclass(frozen=True)
class CountSummary:
    """Every counter of one layer call, in closed form from its counts ``[N, D]`` laid out
    with ``coding`` over ``steps`` time steps (what :func:`step_events` would yield).

    ``events_pos`` / ``events_neg``: spikes by polarity (two's complement spikes are all
    positive: the sign is in step 0's weight); ``nonzero``: elements with a nonzero count;
    ``silent_channels``: input channels zero for every token of the call; ``peak``: the
    largest ``|count|``. :meth:`events_per_step` gives the spikes of each step.
    """

    coding: str
    steps: int
    tokens: int
    channels: int
    nonzero: int
    peak: int
    events_pos: int
    events_neg: int
    silent_channels: int
    _values: torch.Tensor = field(repr=False, compare=False, default=None)  # count values (v)
    _freq: torch.Tensor = field(repr=False, compare=False, default=None)    # how many of each
    _counts: torch.Tensor = field(repr=False, compare=False, default=None)  # when no histogram

    @property
    def elements(self) -> int:
        return self.tokens * self.channels

    @property
    def events(self) -> int:
        return self.events_pos + self.events_neg

    def events_per_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive, negative)`` spikes fired at each step, int64 ``[steps]``; they sum to
        ``events_pos`` and ``events_neg``."""
        T = self.steps
        if self._values is not None:
            v, f = self._values, self._freq
        else:
            v, f = _nonzero_values(self._counts)
        pos, neg = torch.zeros(T, dtype=torch.int64), torch.zeros(T, dtype=torch.int64)
        if not T or not v.numel():
            return pos, neg
        if self.coding in ("binary", "ternary"):
            # a count c fires at steps 0..|c|-1: #(c >= t + 1) positive, #(c <= -(t + 1)) negative
            for sign, out in ((1, pos), (-1, neg)):
                m = v * sign
                keep = m > 0
                mags, fr = m[keep], f[keep]
                if not mags.numel():
                    continue
                order = torch.argsort(mags)
                mags, fr = mags[order], fr[order]
                at_least = fr.flip(0).cumsum(0).flip(0)          # #(m >= mags[i])
                t1 = torch.arange(1, T + 1)
                idx = torch.searchsorted(mags, t1)               # first index with m >= t + 1
                ok = idx < mags.numel()
                out[ok] = at_least[idx[ok]]
            return pos, neg
        for t in range(T):
            b = T - 1 - t
            if self.coding == "bitwise":
                hit = _bit(v.abs(), b) * f
                pos[t] = int(hit[v > 0].sum())
                neg[t] = int(hit[v < 0].sum())
            else:
                pos[t] = int((_bit(_word(v, T), b) * f).sum())
        return pos, neg


def _nonzero_values(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, frequencies)`` of the nonzero counts, as int64 (one per element)."""
    flat = counts.reshape(-1)
    v = flat[flat != 0].to(torch.int64).cpu()
    return v, torch.ones_like(v)


def _events_from(v: torch.Tensor, f: torch.Tensor, coding: str, steps: int) -> tuple[int, int]:
    """Positive and negative spikes of the values ``v`` (int64, CPU) occurring ``f`` times."""
    if coding in ("binary", "ternary"):
        return int((v.clamp(min=0) * f).sum()), int(((-v).clamp(min=0) * f).sum())
    if coding == "bitwise":
        p = popcount64(v.abs()) * f
        return int(p[v > 0].sum()), int(p[v < 0].sum())
    return int((popcount64(_word(v, steps)) * f).sum()), 0


def summarize(counts: torch.Tensor, coding: str, steps: int | None = None) -> CountSummary:
    """The :class:`CountSummary` of integer ``counts [N, D]`` laid out with ``coding`` over
    ``steps`` steps (default: the smallest T the coding allows, ``sbsnn.neurons.num_steps``).

    One histogram of the count values (a bincount over ``[min, max]``) gives every counter;
    its cost does not depend on T or on the largest count. Ranges wider than 2**20 values
    (only huge static-threshold counts) use the nonzero values directly.
    """
    if coding not in CODINGS:
        raise ValueError(f"summarize: unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
    if counts.dim() != 2:
        raise ValueError(f"summarize: counts must be [tokens, channels], got {tuple(counts.shape)}")
    N, D = counts.shape
    if not counts.numel():
        return CountSummary(coding, 0 if steps is None else int(steps), N, D, 0, 0, 0, 0,
                            D if N else 0, torch.zeros(0, dtype=torch.int64),
                            torch.zeros(0, dtype=torch.int64))
    lo, hi = (int(v) for v in torch.aminmax(counts))
    if coding == "binary" and lo < 0:
        raise binary_negative_error("summarize", lo)
    T = min_steps(coding, lo, hi) if steps is None else int(steps)
    peak = max(-lo, hi)
    mag = counts if lo >= 0 else counts.abs()
    if lo < 0 and lo == torch.iinfo(counts.dtype).min:    # |min| overflows: widen first
        mag = counts.to(torch.int64).abs()
    silent = int((mag.amax(0) == 0).sum()) if N else 0
    if hi - lo < _HIST_MAX_BINS:
        # shift to 0..hi-lo in the narrowest type that holds it (bincount takes any int)
        wide = torch.int16 if hi - lo <= 32767 else torch.int32
        freq = torch.bincount(counts.reshape(-1).to(wide) - lo, minlength=hi - lo + 1).cpu()
        values = torch.arange(lo, hi + 1, dtype=torch.int64)
        keep = freq > 0
        zero = 0
        if lo <= 0 <= hi:
            zero = int(freq[-lo])
            keep[-lo] = False
        values, freq = values[keep], freq[keep]
        pos, neg = _events_from(values, freq, coding, T)
        return CountSummary(coding, T, N, D, counts.numel() - zero, peak, pos, neg, silent,
                            values, freq)
    v, f = _nonzero_values(counts)
    pos, neg = _events_from(v, f, coding, T)
    return CountSummary(coding, T, N, D, int(v.numel()), peak, pos, neg, silent, _counts=counts)
