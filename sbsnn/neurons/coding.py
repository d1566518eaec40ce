"""Spike coding: adaptive thresholds, integer spike counts, and their layout in time.

This module is the single source of truth for the SpikingBrain spike formula
(spikingbrain.md §1-2). For an activation ``x`` with features on the last dimension::

    V_th  = clamp(mean(|x|, dim=-1) / k, 1e-5, 1e4)     one threshold per token (row)
    s_INT = round(x / V_th)                              round half to even, not clipped

``s_INT`` is what an integrate-and-fire neuron without leak and with reset by subtraction
emits over ``T`` steps. How those spikes are laid out in time is the *coding*:

=================  ===========  ==============================  ===================
coding             spikes       T for a tensor                  spikes for count c
=================  ===========  ==============================  ===================
binary             {0, 1}       max(c)              (c >= 0)    c, ones first
ternary            {-1, 0, 1}   max|c|                          |c| copies of sign(c)
bitwise            {-1, 0, 1}   max(1, bit_length(max|c|))      popcount(|c|), MSB first
twos_complement    {0, 1}       max(2, bit_length(max|c|) + 1)  popcount of the T-bit word
=================  ===========  ==============================  ===================

(``bit_length(m) == ceil(log2(m + 1))``.) Bitwise is sign-magnitude ("bitwise-ternary"):
``-5`` with ``T = 3`` is ``[-1, 0, -1]``. Two's complement puts the sign bit first, with
weight ``-2**(T-1)``.

This module gathers the parts, each in its own file:

- :mod:`~sbsnn.neurons.formula`: the constants, the checks of the inputs, the plain
  reference :func:`spike_counts_reference` and :func:`dequantize`;
- :mod:`~sbsnn.neurons.scan`: :func:`spike_counts`, :func:`adaptive_threshold` and
  :func:`calibrate_threshold`, by one blocked, threaded scan equal to the reference;
- :mod:`~sbsnn.neurons.trains`: the time layout, :func:`num_steps`, :func:`capacity`,
  :func:`expand`, :func:`decode` and :class:`PackedTrains`;
- :mod:`~sbsnn.neurons.stats`: :func:`spike_stats` and :func:`spikes_per_element`, in
  closed form.

Everything works on plain tensors, imports nothing else from ``sbsnn`` but the ground
floor (:mod:`sbsnn.errors`, :mod:`sbsnn.checks`) and raises :class:`SpikeCodingError` (an
:class:`~sbsnn.errors.OptionError`, so a ``ValueError``) with a message that names the fix.
"""

from .formula import (
    CODINGS,
    DEFAULT_K,
    V_TH_MAX,
    V_TH_MIN,
    SpikeCodingError,
    dequantize,
    spike_counts_reference,
)
from .scan import adaptive_threshold, calibrate_threshold, spike_counts
from .stats import SpikeStats, spike_stats, spikes_per_element
from .trains import DEFAULT_MAX_BYTES, PackedTrains, Steps, capacity, decode, expand, num_steps

__all__ = [
    "CODINGS",
    "DEFAULT_K",
    "DEFAULT_MAX_BYTES",
    "V_TH_MIN",
    "V_TH_MAX",
    "SpikeCodingError",
    "SpikeStats",
    "PackedTrains",
    "Steps",
    "adaptive_threshold",
    "calibrate_threshold",
    "spike_counts",
    "spike_counts_reference",
    "dequantize",
    "num_steps",
    "capacity",
    "expand",
    "decode",
    "spike_stats",
    "spikes_per_element",
]
