"""A spike budget as a typed value: spikes per element, or what plain conversion at k spends.

The command line's ``--spike-budget S|k=K`` is parsed once, here, at the boundary; the API
takes the typed value (or a plain number), so a budget is never turned into a string and
parsed back.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sbsnn.checks import check_k
from sbsnn.errors import OptionError

__all__ = ["SpikeBudget"]

_PLAIN_K = re.compile(r"\s*k\s*=\s*(\S+)\s*")


def _number(v, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be a positive number, got {v!r}") from None
    if isinstance(v, bool) or not (0 < f < math.inf):
        raise OptionError(f"{what} must be a positive finite number, got {v!r}")
    return f


@dataclass(frozen=True)
class SpikeBudget:
    """Exactly one of ``spikes_per_element`` (mean spikes per element over all spiking
    inputs, weighted by elements) or ``plain_k`` (what plain conversion at ``k = plain_k``
    spends on the calibration text)."""

    spikes_per_element: float | None = None
    plain_k: float | None = None

    def __post_init__(self) -> None:
        if (self.spikes_per_element is None) == (self.plain_k is None):
            raise OptionError("a spike budget is either spikes per element or plain_k, "
                              f"exactly one of them (got {self.spikes_per_element!r} and "
                              f"{self.plain_k!r})")
        if self.plain_k is not None:   # a k the user sets for a conversion: k's one check
            object.__setattr__(self, "plain_k", check_k(self.plain_k, "spike_budget's k"))
        else:
            object.__setattr__(self, "spikes_per_element",
                               _number(self.spikes_per_element, "spike_budget"))

    @classmethod
    def at_k(cls, k: float) -> "SpikeBudget":
        """What plain conversion at ``k`` spends on the calibration text."""
        return cls(plain_k=k)

    @classmethod
    def parse(cls, text: str) -> "SpikeBudget":
        """``"2.5"`` (spikes per element) or ``"k=3"``; anything else is refused by name
        (``"3 4"`` is not 34)."""
        m = _PLAIN_K.fullmatch(text)
        if m is not None:
            try:
                k = float(m.group(1))
            except ValueError:
                raise OptionError(f"spike budget {text!r}: k must be a number, got "
                                  f"{m.group(1)!r}") from None
            return cls(plain_k=k)
        try:
            value = float(text)
        except ValueError:
            raise OptionError(f"spike budget {text!r}: give spikes per element (a number) "
                              "or 'k=K' (what plain conversion at k = K spends on the text)") from None
        return cls(spikes_per_element=_number(value, "spike_budget"))

    @classmethod
    def of(cls, value) -> "SpikeBudget":
        """A budget from a :class:`SpikeBudget`, a positive number or a string
        (:meth:`parse`)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls(spikes_per_element=_number(value, "spike_budget"))

    def __str__(self) -> str:
        return (f"k={self.plain_k:g}" if self.plain_k is not None
                else f"{self.spikes_per_element:g} spikes per element")
