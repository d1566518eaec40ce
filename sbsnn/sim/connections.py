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
           "is_spiking", "merge_facts", "model_facts"]

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


def _connection_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """id -> weight tensor of every connection layer (SpikingLinear codes, float leaves)."""
    out = {}
    for m in model.modules():
        if isinstance(m, SpikingLinear):
            out[id(m.weight_codes)] = m.weight_codes
        elif isinstance(m, CONNECTION_TYPES) and not any(True for _ in m.children()):
            out[id(m.weight)] = m.weight
    return out


def model_facts(model: nn.Module) -> dict:
    """What a recording keeps of the model's weights, from the tensors this process holds
    (a pipeline stage's meta tensors, held by another rank, are left out; :func:`merge_facts`
    joins the stages): ``tensors`` {name: [bytes, weights, zero weights]} (weights 0 for a
    tensor that is not a connection's weight) and ``columns`` {spiking layer:
    :func:`column_nonzero`}."""
    conn = _connection_tensors(model)
    tensors = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            continue
        w = conn.get(id(t))
        tensors[name] = [t.numel() * t.element_size(), 0 if w is None else t.numel(),
                         0 if w is None else int((t == 0).sum())]
    columns = {n: column_nonzero(m) for n, m in model.named_modules()
               if isinstance(m, SpikingLinear) and not m.weight_codes.is_meta}
    return {"tensors": tensors, "columns": columns}


def merge_facts(parts: list[dict]) -> dict:
    """:func:`model_facts` of pipeline stages joined (a tensor two stages hold counted once)."""
    out: dict = {"tensors": {}, "columns": {}}
    for p in parts:
        out["tensors"].update(p["tensors"])
        out["columns"].update(p["columns"])
    return out


def connection_facts(model_or_facts) -> dict:
    """``footprint_bytes``, ``weights`` and ``zero_weights`` of the connection layers
    (every SpikingLinear's codes, every float Linear/Conv leaf's weight), as NeuroBench's
    ``Footprint`` and ``ConnectionSparsity`` count them (module docstring), of a model or
    of its :func:`model_facts`."""
    facts = model_or_facts if isinstance(model_or_facts, dict) else model_facts(model_or_facts)
    rows = facts["tensors"].values()
    return {"footprint_bytes": sum(r[0] for r in rows), "weights": sum(r[1] for r in rows),
            "zero_weights": sum(r[2] for r in rows)}
