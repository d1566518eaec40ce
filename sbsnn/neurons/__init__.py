"""Adaptive-threshold spiking neurons: spike counts, codings, IF dynamics and a module.

The pure functions in :mod:`sbsnn.neurons.coding` are the single source of truth for the
spike formula (``V_th = mean|x| / k``, ``s_INT = round(x / V_th)``); the dynamics and the
module call them. They live in :mod:`~sbsnn.neurons.formula` (constants, checks, the plain
reference :func:`spike_counts_reference`), :mod:`~sbsnn.neurons.scan` (the fast counts),
:mod:`~sbsnn.neurons.trains` (layout in time) and :mod:`~sbsnn.neurons.stats`. This
subpackage imports nothing else from ``sbsnn`` but the ground floor (``errors``, ``checks``).
"""

from .coding import (
    CODINGS,
    DEFAULT_K,
    DEFAULT_MAX_BYTES,
    V_TH_MAX,
    V_TH_MIN,
    PackedTrains,
    SpikeCodingError,
    SpikeStats,
    adaptive_threshold,
    calibrate_threshold,
    capacity,
    decode,
    dequantize,
    expand,
    num_steps,
    spike_counts,
    spike_counts_reference,
    spike_stats,
    spikes_per_element,
)
from .dynamics import IFResult, integrate_and_fire
from .modules import HAS_SPIKINGJELLY, AdaptiveThresholdNeuron

__all__ = [
    "CODINGS",
    "DEFAULT_K",
    "DEFAULT_MAX_BYTES",
    "V_TH_MAX",
    "V_TH_MIN",
    "PackedTrains",
    "SpikeCodingError",
    "SpikeStats",
    "adaptive_threshold",
    "calibrate_threshold",
    "capacity",
    "decode",
    "dequantize",
    "expand",
    "num_steps",
    "spike_counts",
    "spike_counts_reference",
    "spike_stats",
    "spikes_per_element",
    "IFResult",
    "integrate_and_fire",
    "HAS_SPIKINGJELLY",
    "AdaptiveThresholdNeuron",
]
