"""The spiking model's forward in floats, with the straight-through gradient: the one
place refinement (``calibration/refine.py``) and fine-tuning (``converters/trainable.py``,
``sbsnn.runs.finetune``) get a differentiable spiking model from.

Inside :func:`straight_through`, every :class:`SpikingLinear` computes

    y = (counts * V_th) @ W.T + b

where ``counts * V_th`` is its neuron's own straight-through step
(:meth:`~sbsnn.neurons.AdaptiveThresholdNeuron.single_step_forward`: the spiking
model's counts, the threshold computed online from each token's input; the rounding
passes the gradient through unchanged) and ``W`` is the layer's dequantized INT8 weight,
or what ``weight_of(name, layer)`` returns (fine-tuning: a weight on the INT8 grid that
carries a gradient back to what is trained). The value is the integer path's, to float
rounding; the counts, and so the spikes, are exactly the spiking model's.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.converters.spiking_linear import ExecutorSwap, SpikingLinear, spiking_layers

__all__ = ["straight_through"]


@contextmanager
def straight_through(spiking: nn.Module,
                     weight_of: Callable[[str, SpikingLinear], torch.Tensor] | None = None):
    """Inside, every SpikingLinear of ``spiking`` computes its spiking output in floats with
    the straight-through gradient (see the module docstring); ``weight_of(name, layer)``
    (called at every forward) gives the float weight ``[out, in]`` to use, by default the
    layer's dequantized INT8 weight. Executors and the neurons' memories are restored on
    exit."""
    layers = spiking_layers(spiking)
    memories = [(m, m.neuron.v_th) for _, m in layers]
    fixed = {} if weight_of is not None else {id(m): m.dequantized_weight() for _, m in layers}

    def execute(name, layer, x):
        rows = x.reshape(-1, layer.in_features)
        q = layer.neuron.single_step_forward(rows)
        w = (weight_of(name, layer) if weight_of is not None else fixed[id(layer)]).to(q.dtype)
        y = F.linear(q, w, None if layer.bias is None else layer.bias.to(q.dtype))
        return y.view(*x.shape[:-1], layer.out_features)

    try:
        with ExecutorSwap(layers, execute):
            yield
    finally:
        for m, v_th in memories:
            m.neuron.v_th = v_th
