"""Choosing, per group, a smoothing candidate and a k under one global spike budget.

Minimise the summed distortion ``sum_g D_g(c_g, k_g)`` subject to the mean spikes per
element ``sum_g E_g S_g(c_g, k_g) / sum_g E_g <= budget`` (``E_g`` elements per token).
With a Lagrange multiplier ``lam`` each group independently takes the choice minimising
``D_g + lam * E_g * S_g``; the spending falls as ``lam`` grows, so a bisection on ``lam``
finds the smallest distortion within the budget (on the measured tables: exact for
this discrete problem up to the ties of the convex hull).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sbsnn.converters.calibration.measure import Tables
from sbsnn.errors import OptionError


@dataclass
class Choice:
    candidate: int
    k: float
    distortion: float
    spikes: float            # per element, on the measured tables


def spent(tables: dict[str, Tables], elements: dict[str, int], pick: dict[str, tuple[int, int]]) -> float:
    total = sum(elements.values())
    return sum(elements[g] * tables[g].spikes[c, i] for g, (c, i) in pick.items()) / total


def allocate(tables: dict[str, Tables], elements: dict[str, int], budget: float,
             allowed: dict[str, list[int]] | None = None) -> dict[str, Choice]:
    """The choice per group (candidates restricted to ``allowed[g]`` when given)."""
    names = list(tables)

    def pick(lam: float) -> dict[str, tuple[int, int]]:
        out = {}
        for g in names:
            t = tables[g]
            cost = t.distortion + lam * elements[g] * t.spikes
            if allowed is not None:
                mask = np.full(cost.shape[0], np.inf)
                mask[allowed[g]] = 0.0
                cost = cost + mask[:, None]
            c, i = np.unravel_index(int(np.argmin(cost)), cost.shape)
            out[g] = (int(c), int(i))
        return out

    lo, hi = 0.0, 1.0
    while spent(tables, elements, pick(hi)) > budget:
        hi *= 10
        if hi > 1e30:
            raise OptionError(f"a spike budget of {budget:g} per element is below what the "
                             f"smallest k of the grid ({min(t.kgrid[0] for t in tables.values()):g}) "
                             "spends; give a larger budget")
    for _ in range(200):
        mid = (lo + hi) / 2 if lo == 0 else math.sqrt(lo * hi)
        if spent(tables, elements, pick(mid)) > budget:
            lo = mid
        else:
            hi = mid
        if lo and hi / lo < 1 + 1e-9:
            break
    best = pick(hi)
    return {g: Choice(c, float(tables[g].kgrid[i]), float(tables[g].distortion[c, i]),
                      float(tables[g].spikes[c, i])) for g, (c, i) in best.items()}


def uniform_k(tables: dict[str, Tables], elements: dict[str, int], budget: float,
              candidate: int = 0) -> float:
    """The one k for every group (no smoothing) whose predicted spending meets
    ``budget``, interpolated in log k between grid points."""
    kgrid = next(iter(tables.values())).kgrid
    total = sum(elements.values())
    curve = np.array([sum(elements[g] * t.spikes[candidate, i] for g, t in tables.items()) / total
                      for i in range(len(kgrid))])
    if budget <= curve[0]:
        return float(kgrid[0])
    if budget >= curve[-1]:
        return float(kgrid[-1])
    return float(np.exp(np.interp(budget, curve, np.log(kgrid))))


def scale_to_budget(tables: dict[str, Tables], elements: dict[str, int],
                    choices: dict[str, Choice], target_ratio: float) -> float:
    """The factor f for every k such that the predicted spending becomes ``target_ratio``
    times the current prediction (interpolating each group's curve in log k)."""
    total = sum(elements.values())

    def predicted(f: float) -> float:
        out = 0.0
        for g, ch in choices.items():
            t = tables[g]
            out += elements[g] * np.interp(math.log(ch.k * f), np.log(t.kgrid), t.spikes[ch.candidate])
        return out / total

    base = predicted(1.0)
    lo, hi = 0.05, 1.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if predicted(mid) > base * target_ratio:
            hi = mid
        else:
            lo = mid
    return lo
