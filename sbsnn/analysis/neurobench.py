"""NeuroBench's own ``Benchmark`` on an sbsnn spiking model (``neurobench`` 2.3, ``eval`` extra).

:class:`SbsnnNeuroBenchModel` is a ``neurobench.models.NeuroBenchModel``: NeuroBench's
``Benchmark`` runs it on a ``DataLoader`` of token-id sequences and its own metric
classes (``ActivationSparsity``, ``SynapticOperations``, ``MembraneUpdates``,
``Footprint``, ``ConnectionSparsity``) read what their hooks see. Each batch runs in one
forward pass of the spiking model under :class:`sbsnn.sim.Simulator` (outputs
bit-identical to the integer path); every call of a spiking layer is then shown to
NeuroBench as an SNN shows it, step by step (:func:`sbsnn.sim.step_events`): at step
``t`` the layer's neuron (a snnTorch ``SpikingNeuron``, its membrane ``mem`` the part of
the count not yet emitted) fires the step's frame of spikes, and the layer's connection
(an ``nn.Linear`` whose weight *is* the layer's INT8 codes, the same tensor) receives it.

``__net__()`` is the spiking model together with those connections (their weights are
the model's own code tensors, so ``Footprint`` counts each byte once); the hooks see only
the presented neurons and connections (the float parts of the model are not presented:
NeuroBench has no counterpart for attention scores or norms).

This path replays every time step of every call through NeuroBench's hooks: it is a
reference for small models and the tests. ``sbsnn report`` gives the same numbers in
closed form from a recording (:mod:`sbsnn.analysis.neurobench_metrics`, where the mapping
is written out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from neurobench.models import NeuroBenchModel
from snntorch import SpikingNeuron
from torch import nn

from sbsnn.sim.engine import Simulator
from sbsnn.sim.events import step_events

__all__ = ["SbsnnNeuroBenchModel", "token_batches"]


class _Connection(nn.Linear):
    """A spiking layer's synapses as NeuroBench sees a connection layer: ``weight`` is the
    layer's INT8 code tensor itself (a buffer: not a second copy); the forward computes in
    float64, so NeuroBench's counts through a binarised copy of it stay exact."""

    def __init__(self, codes: torch.Tensor):
        nn.Module.__init__(self)
        self.out_features, self.in_features = codes.shape
        self.register_buffer("weight", codes)
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.float64), self.weight.to(torch.float64))


class _Neuron(SpikingNeuron):
    """A spiking layer's input neurons as NeuroBench sees a snnTorch neuron: called once per
    time step with that step's spikes; ``mem`` holds the part of each count still to be
    emitted (charged with the counts at step 0). No snnTorch state is created (its
    ``__init__`` would add this neuron to a process-wide list)."""

    init_hidden = False
    output = False

    def __init__(self):
        nn.Module.__init__(self)
        self.mem = torch.zeros(0)

    def forward(self, spikes: torch.Tensor, weight: int, charge: torch.Tensor | None = None):
        if charge is not None:
            self.mem = charge.to(torch.int64)
        self.mem = self.mem - weight * spikes.to(torch.int64)
        return spikes, self.mem


class _Net(nn.Module):
    """What ``__net__()`` returns: the spiking model and its presented connections."""

    def __init__(self, model: nn.Module, connections: dict[str, _Connection]):
        super().__init__()
        self.model = model
        self.connections = nn.ModuleList(connections.values())


class _Replay:
    """The simulator's recorder: each call's counts, replayed step by step to the proxies."""

    def __init__(self, owner: "SbsnnNeuroBenchModel"):
        self.owner = owner

    def write(self, name: str, counts: torch.Tensor, v_th: torch.Tensor) -> None:
        neuron, connection = self.owner.neurons[name], self.owner.connections[name]
        coding = self.owner.codings[name]
        counts = counts.cpu()
        for ev in step_events(counts, coding):
            frame = torch.zeros(counts.shape, dtype=torch.int8)
            frame[ev.token, ev.channel] = ev.polarity
            spikes, _ = neuron(frame, ev.weight, counts if ev.step == 0 else None)
            connection(spikes)

    def flush(self) -> None:
        pass

    def close(self, complete: bool = True) -> None:
        pass


class SbsnnNeuroBenchModel(NeuroBenchModel):
    """An sbsnn spiking model for NeuroBench's ``Benchmark`` (module docstring). A batch is
    token ids ``[B, L]`` (sequences of one length; :func:`token_batches` makes them); the
    predictions are the logits ``[B, L, vocab]``. ``backend``: the simulator's."""

    def __init__(self, spiking_model: nn.Module, backend: str = "torch"):
        super().__init__()
        self.model = spiking_model
        self.backend = backend
        sim = Simulator(spiking_model, backend)          # refuses a model with no spiking layer
        self.codings = {n: m.coding for n, m in sim.layers}
        self.connections = {n: _Connection(m.weight_codes) for n, m in sim.layers}
        self.neurons = {n: _Neuron() for n, _ in sim.layers}
        self.net = _Net(spiking_model, self.connections)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(batch, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids[None]
        device = next(self.model.parameters()).device
        with torch.no_grad(), Simulator(self.model, self.backend, recorder=_Replay(self)):
            return self.model(ids.to(device))

    def __net__(self) -> nn.Module:
        return self.net

    def activation_layers(self):
        return [{"layer_name": n, "layer": m} for n, m in self.neurons.items()]

    def connection_layers(self):
        return list(self.connections.values())


class _Sequences(torch.utils.data.Dataset):
    def __init__(self, ids: list[torch.Tensor]):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        x = self.ids[i]
        return x, torch.zeros((), dtype=torch.long)


def token_batches(ids: list[torch.Tensor]) -> torch.utils.data.DataLoader:
    """A DataLoader for NeuroBench: one sequence (token ids ``[L]`` or ``[1, L]``) per batch,
    with a dummy target (the workload metrics read the model's hooks, not targets)."""
    seqs = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in ids]
    return torch.utils.data.DataLoader(_Sequences(seqs), batch_size=1, shuffle=False)
