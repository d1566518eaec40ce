"""Multi-step integrate-and-fire dynamics whose spike count is ``spike_counts``.

The neuron has no leak and resets by subtraction: ``v_{t+1} = v_t - V_th * s_t + x_{t+1}``.
The analog input charges it once, at the first step (``x_1 = x``, later inputs zero), so
the membrane starts at ``x``. Work in units of the threshold, ``u = x / V_th`` (the very
quotient :func:`~sbsnn.neurons.coding.spike_counts` rounds). At each step the neuron fires

- ``+1`` if ``v > 1/2``, ``-1`` if ``v < -1/2`` (ternary; binary has only ``+1``),
- at exactly ``v = +-1/2``: towards ``v`` if and only if it has fired an odd number of
  times so far, otherwise it stays silent.

and subtracts its spike, ``v <- v - s``. Firing at half the threshold makes the count the
*nearest* integer to ``u`` instead of its floor, and the tie rule (one bit of state: the
parity of the spikes so far) makes an exact half-integer round to the even neighbour:
``u = 2.5`` fires ``[1, 1]`` and stops at ``v = 0.5`` with an even count; ``u = 3.5`` fires
a fourth spike at ``v = 0.5`` because three is odd; ``u = -2.5`` gives ``-2``. Once silent
a neuron stays silent, so the train is ``|c|`` spikes of ``sign(c)`` followed by silence,
exactly the ternary (or binary) train of :func:`~sbsnn.neurons.coding.expand`.

The membrane is kept in float32 (float64 for float64 input), where subtracting whole
thresholds from ``u`` is exact for ``|u| < 2**24``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .formula import DEFAULT_K, SpikeCodingError, binary_negative_error, check_activation, eager
from .scan import adaptive_threshold

__all__ = ["IFResult", "integrate_and_fire"]


class IFResult(NamedTuple):
    spikes: torch.Tensor  # int8 [T, *x.shape]
    membrane: torch.Tensor  # membrane after the last step, in units of V_th (the rounding residual)


def _in_threshold_units(x: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """``x / V_th`` with V_th of shape ``x.shape[:-1] + (G,)`` (G threshold groups)."""
    groups = v_th.shape[-1] if v_th.ndim else 1
    if v_th.ndim == 0 or groups == 1:
        return x / v_th
    if x.shape[-1] % groups:
        raise SpikeCodingError(
            f"integrate_and_fire: v_th has {groups} groups, which do not divide the last "
            f"dimension of x ({x.shape[-1]}); pass the thresholds from adaptive_threshold(x, ...)"
        )
    return (x.unflatten(-1, (groups, x.shape[-1] // groups)) / v_th.unsqueeze(-1)).flatten(-2)


@eager
@torch.no_grad()
def integrate_and_fire(x: torch.Tensor, v_th: Optional[torch.Tensor] = None, *, k: float = DEFAULT_K,
                       group_size: Optional[int] = None, coding: str = "ternary", steps: Optional[int] = None,
                       max_steps: int = 65536) -> IFResult:
    """Simulate the IF neuron above step by step; returns ``IFResult(spikes, membrane)``.

    ``v_th`` defaults to ``adaptive_threshold(x, k, group_size=group_size)``.
    ``steps=None`` runs until every neuron is silent (``T = max|c|``, as ``expand``);
    ``steps=T`` runs exactly ``T`` steps, which clips each count to ``[-T, T]`` and leaves
    the rest in the membrane. ``coding`` is ``"ternary"`` or ``"binary"`` (unit spikes);
    bitwise and two's complement trains are not unit-spike IF dynamics, use ``expand``.
    """
    fn = "integrate_and_fire"
    if coding not in ("ternary", "binary"):
        raise SpikeCodingError(
            f"{fn}: coding={coding!r}; the IF neuron emits unit spikes, so it simulates 'ternary' "
            "or 'binary' trains. For bitwise or two's complement trains use "
            "expand(spike_counts(x)[0], coding)"
        )
    check_activation(x, fn)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise SpikeCodingError(f"{fn}: steps must be None (run until silent) or a non-negative int, got {steps!r}")
    x = x.detach()
    if v_th is None:
        v_th = adaptive_threshold(x, k, group_size=group_size)
    u = _in_threshold_units(x, torch.as_tensor(v_th, dtype=x.dtype, device=x.device))
    if not bool(torch.isfinite(u).all()):
        raise SpikeCodingError(f"{fn}: x / v_th is not finite; pass finite activations and positive thresholds")
    ternary = coding == "ternary"
    if not ternary and bool((u < -0.5).any()):
        raise binary_negative_error(fn, int(torch.round(u.min())))
    v = u.to(torch.float64 if u.dtype == torch.float64 else torch.float32)
    odd = torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    trains = []
    while True:
        t = len(trains)
        if steps is not None and t == steps:
            break
        pos = (v > 0.5) | ((v == 0.5) & odd)
        neg = ((v < -0.5) | ((v == -0.5) & odd)) if ternary else torch.zeros_like(pos)
        fired = pos | neg
        if steps is None and not bool(fired.any()):
            break
        if steps is None and t == max_steps:
            raise SpikeCodingError(
                f"{fn}: still firing after max_steps={max_steps} steps; counts this large are "
                "cheaper as spike_counts()/spike_stats(), or in coding='bitwise'"
            )
        s = pos.to(torch.int8) - neg.to(torch.int8)
        v -= s  # reset by subtraction of one threshold
        odd ^= fired
        trains.append(s)
    spikes = torch.stack(trains) if trains else torch.zeros((0,) + tuple(x.shape), dtype=torch.int8, device=x.device)
    return IFResult(spikes, v)
