"""A spiking model's weights as NeuroBench's static metrics count them.

NeuroBench (``neurobench`` 2.3) measures a network's ``Footprint`` as the bytes of all its
parameters and buffers, and its ``ConnectionSparsity`` as the zero weights over all
weights of its connection layers (``nn.Linear`` and ``nn.Conv1d/2d/3d`` leaves). In an
sbsnn spiking model the connection layers are the :class:`SpikingLinear` layers, whose
weights are their INT8 codes (a zero code is a missing connection: ``0 x scale = 0``),
and the linear layers left float (``lm_head`` when it is not tied). A synaptic operation
of NeuroBench adds one *nonzero* weight: an input spike at channel ``i`` costs as many as
the layer has nonzero codes in column ``i`` (:func:`column_nonzero`).

A recording keeps these figures in its metadata (:func:`sbsnn.sim.session.recording_metadata`),
so that ``sbsnn report`` gives NeuroBench's metrics from the file alone
(:mod:`sbsnn.analysis.neurobench_metrics`); the adapter that runs NeuroBench's own
classes (:mod:`sbsnn.analysis.neurobench`) is held to them by the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from sbsnn.converters.spiking_linear import SpikingLinear

__all__ = ["CONNECTION_TYPES", "column_nonzero", "connection_facts", "footprint_bytes",
           "is_spiking"]

# NeuroBench's stateless connection layers (neurobench.blocks.layer.STATELESS_LAYERS)
CONNECTION_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_spiking(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one :class:`SpikingLinear`."""
    return any(isinstance(m, SpikingLinear) for m in model.modules())


def footprint_bytes(model: nn.Module) -> int:
    """NeuroBench's ``Footprint``: bytes of every parameter and buffer, each tensor once."""
    return (sum(p.numel() * p.element_size() for p in model.parameters())
            + sum(b.numel() * b.element_size() for b in model.buffers()))


def column_nonzero(layer: SpikingLinear) -> list[int]:
    """Nonzero INT8 codes in each input column of ``layer``: the weights one input spike
    at that channel adds (``[in_features]``)."""
    return (layer.weight_codes != 0).sum(0, dtype=torch.int64).tolist()


def connection_facts(model: nn.Module) -> dict:
    """``footprint_bytes``, ``weights`` and ``zero_weights`` of the connection layers
    (every SpikingLinear's codes, every float Linear/Conv leaf's weight), as NeuroBench's
    ``Footprint`` and ``ConnectionSparsity`` count them (module docstring)."""
    weights = zeros = 0
    for m in model.modules():
        if isinstance(m, SpikingLinear):
            w = m.weight_codes
        elif isinstance(m, CONNECTION_TYPES) and not any(True for _ in m.children()):
            w = m.weight
        else:
            continue
        weights += w.numel()
        zeros += int((w == 0).sum())
    return {"footprint_bytes": footprint_bytes(model), "weights": weights, "zero_weights": zeros}
