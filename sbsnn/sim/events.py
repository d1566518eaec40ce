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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from sbsnn.neurons import num_steps


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
