"""NeuroBench's metrics of an sbsnn spiking run, under NeuroBench's names and definitions.

NeuroBench (``neurobench`` 2.3) runs a network sample by sample and reads what its
hooks see. :mod:`sbsnn.analysis.neurobench` shows it an sbsnn spiking model as it shows
it an SNN: each call of a spiking layer is ``T`` time steps (``T`` the call's own, as
:mod:`sbsnn.sim.events` lays the counts out); at step ``t`` the layer's neuron emits the
frame of spikes fired at that step (ternary: ``-1, 0, +1``; the step's weight, 2^k in
bitwise coding, is not a spike) and the connection layer (its INT8 codes) receives it.
Under those definitions, per call of a layer with ``N`` tokens and ``D`` inputs:

===================  ==================================================================
NeuroBench metric    in sbsnn's counts
===================  ==================================================================
ActivationSparsity   1 - spikes / (elements x T) per sample (0.0 for a sample with no
                     step at all, as NeuroBench returns), the mean over samples: 1 -
                     events / slots, the report's ``slot_sparsity_global`` per sample
SynapticOperations   Effective_ACs: sum over input channels of spikes(channel) x the
                     nonzero codes of its column (NeuroBench counts a -1 like a +1: one
                     accumulate, and a zero weight as none; bias excluded);
                     Effective_MACs: 0 (every presented input is a spike frame);
                     Dense: elements x T x out_features (every weight at every step),
                     each per sample
MembraneUpdates      elements (the charge: every neuron's membrane is set at step 0) +
                     the spikes fired after step 0 (each subtracts one spike's value),
                     per sample
Footprint            bytes of every parameter and buffer of the model (INT8 codes at 1
                     byte, scales, the float parts)
ConnectionSparsity   zero weights / weights of the connection layers: the spiking layers'
                     INT8 codes and the float Linear layers (lm_head), rounded to 4
                     decimals as NeuroBench rounds it
===================  ==================================================================

A NeuroBench sample is one sequence (one document of a document set); the adapter runs
each in one forward pass, so each layer is called once per sample, which is what a
recording of ``simulate(..., block_size=None)`` or ``simulate_documents(...,
block_size=None)`` holds. The counts are exact integers on both sides; the tests hold the
adapter (NeuroBench's own classes) and these closed forms to each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sbsnn.errors import RecordingError
from sbsnn.neurons import spikes_per_element
from sbsnn.sim.events import summarize

__all__ = ["NEUROBENCH_DEFINITIONS", "NeuroBenchCall", "NeuroBenchTally", "neurobench_call",
           "neurobench_from_recording"]

NEUROBENCH_DEFINITIONS = {
    "ActivationSparsity": "NeuroBench: zero activations / activations over every spiking "
                          "neuron's output at every time step, averaged over samples; here "
                          "1 - spikes / (elements x T) of each sample (T each call's steps).",
    "Effective_ACs": "NeuroBench SynapticOperations: accumulates per sample, one per input "
                     "spike (+1 or -1) per nonzero weight it reaches (zero INT8 codes and "
                     "the bias are not operations).",
    "Effective_MACs": "NeuroBench SynapticOperations: multiply-accumulates per sample of "
                      "connection layers fed non-spike inputs; 0 here, every input of a "
                      "presented layer is a spike frame (the float parts are not presented: "
                      "energy.nonspiking counts them).",
    "Dense": "NeuroBench SynapticOperations: operations per sample if every input at every "
             "time step met every weight: elements x T x out_features.",
    "MembraneUpdates": "NeuroBench: membrane potential updates per sample: every neuron at "
                       "its charging step, then one per spike after it.",
    "Footprint": "NeuroBench: bytes of the model's parameters and buffers.",
    "ConnectionSparsity": "NeuroBench: zero weights / weights of the connection layers (INT8 "
                          "codes of the spiking layers, float Linear weights), 4 decimals.",
    "samples": "NeuroBench samples: the sequences run (documents of a document set).",
}


@dataclass(frozen=True)
class NeuroBenchCall:
    """What NeuroBench's hooks count in one call of one spiking layer."""

    elements: int          # N x D
    steps: int             # T of the call
    spikes: int            # nonzero frame entries over all steps
    spikes_step0: int      # of them, at step 0
    effective_acs: int     # sum over channels of spikes x nonzero codes of the column
    out_features: int

    @property
    def slots(self) -> int:
        return self.elements * self.steps

    @property
    def dense(self) -> int:
        return self.slots * self.out_features

    @property
    def membrane_updates(self) -> int:
        return (self.elements if self.steps else 0) + self.spikes - self.spikes_step0


def neurobench_call(counts: torch.Tensor, coding: str, column_nonzero, out_features: int
                    ) -> NeuroBenchCall:
    """:class:`NeuroBenchCall` of one layer call's counts ``[N, D]`` laid out in ``coding``
    (its own T, :func:`sbsnn.sim.events.summarize`)."""
    s = summarize(counts, coding)
    pos, neg = s.events_per_step()
    per_channel = spikes_per_element(counts, coding, s.steps).to(torch.int64).sum(0)
    nnz = torch.as_tensor(column_nonzero, dtype=torch.int64)
    return NeuroBenchCall(s.elements, s.steps, s.events,
                          int(pos[0] + neg[0]) if s.steps else 0,
                          int((per_channel * nnz).sum()), int(out_features))


@dataclass
class NeuroBenchTally:
    """NeuroBench's sums over samples: add each sample's calls with :meth:`add_sample`."""

    samples: int = 0
    effective_acs: int = 0
    dense: int = 0
    membrane_updates: int = 0
    spikes: int = 0
    slots: int = 0
    sparsity_sum: float = 0.0      # sum over samples of each sample's ActivationSparsity
    per_sample: list = field(default_factory=list)

    def add_sample(self, calls: list[NeuroBenchCall], samples: int = 1) -> None:
        """One NeuroBench batch of ``samples`` sequences whose layer calls are ``calls``."""
        spikes = sum(c.spikes for c in calls)
        slots = sum(c.slots for c in calls)
        sparsity = (slots - spikes) / slots if slots else 0.0
        self.samples += samples
        self.effective_acs += sum(c.effective_acs for c in calls)
        self.dense += sum(c.dense for c in calls)
        self.membrane_updates += sum(c.membrane_updates for c in calls)
        self.spikes += spikes
        self.slots += slots
        self.sparsity_sum += sparsity * samples

    def section(self, static: dict | None) -> dict:
        """The report's ``neurobench`` section: NeuroBench's results dict (its keys and
        per-sample normalisation), the integer totals behind it and the definitions."""
        n = self.samples
        per = (lambda v: v / n) if n else (lambda v: 0)
        results = {
            "ActivationSparsity": self.sparsity_sum / n if n else 0.0,
            "SynapticOperations": {"Effective_MACs": per(0),
                                   "Effective_ACs": per(self.effective_acs),
                                   "Dense": per(self.dense)},
            "MembraneUpdates": per(self.membrane_updates),
            "Footprint": None, "ConnectionSparsity": None,
        }
        if static is not None:
            results["Footprint"] = static["footprint_bytes"]
            w = static["weights"]
            results["ConnectionSparsity"] = round(static["zero_weights"] / w, 4) if w else None
        return {
            "results": results,
            "totals": {"samples": n, "Effective_ACs": self.effective_acs, "Effective_MACs": 0,
                       "Dense": self.dense, "MembraneUpdates": self.membrane_updates,
                       "spikes": self.spikes, "slots": self.slots,
                       "weights": None if static is None else static["weights"],
                       "zero_weights": None if static is None else static["zero_weights"]},
            "definitions": dict(NEUROBENCH_DEFINITIONS),
            "source": "NeuroBench 2.3 (neurobench.metrics): the same definitions, computed by "
                      "sbsnn from the recording; docs/report.md maps them to sbsnn's figures",
        }


def _static(path, meta: dict) -> dict | None:
    c = meta.get("connections")
    if c is None:
        return None
    keys = ("footprint_bytes", "weights", "zero_weights")
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(c, dict) or not all(count(c.get(k)) for k in keys) \
            or c["zero_weights"] > c["weights"]:
        raise RecordingError(f"{path}: metadata connections = {str(c)[:80]!r} is not "
                             f"{{{', '.join(keys)}}} as counts; the file is damaged or was "
                             "edited: simulate again")
    return {k: c[k] for k in keys}


def _column_nonzero(path, name: str, info: dict) -> np.ndarray:
    v = info.get("column_nonzero")
    top = info.get("out_features")
    ok = isinstance(v, list) and len(v) == info.get("in_features") and all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= top for x in v)
    if not ok:
        raise RecordingError(f"{path}: metadata layers[{name!r}].column_nonzero is not "
                             f"{info.get('in_features')} counts in 0..{info.get('out_features')}; "
                             "the file is damaged or was edited: simulate again")
    return np.asarray(v, dtype=np.int64)


def neurobench_from_recording(recording) -> tuple[dict | None, list[str]]:
    """``(section, notes)``: the report's ``neurobench`` section from a recording (None,
    with a note saying why, for a recording made before sbsnn kept the weights' nonzero
    columns in its metadata). Each document is one sample; a recording of one text (or a
    batch of sequences) is one NeuroBench batch."""
    meta = recording.metadata
    path = recording.path
    layers = meta.get("layers") or {}
    if not recording.layers or any("column_nonzero" not in (layers.get(n) or {})
                                   for n in recording.layers):
        return None, ["NeuroBench metrics: left out, the recording was made before sbsnn kept "
                      "the weights' nonzero columns in its metadata; simulate again to get them"]
    coding = meta.get("coding") or "ternary"
    nnz = {n: _column_nonzero(path, n, layers[n]) for n in recording.layers}
    by_sample: dict[int, list[NeuroBenchCall]] = {}
    for name in recording.layers:
        ds = recording.counts(name)
        offs = [int(o) for o in recording.call_offsets(name)[:]] + [int(ds.shape[0])]
        docs = recording.call_documents(name)
        docs = None if docs is None else np.asarray(docs[:])
        out = int(layers[name]["out_features"])
        for i, (a, b) in enumerate(zip(offs[:-1], offs[1:])):
            if b <= a:
                continue
            sample = int(docs[i]) if docs is not None and i < len(docs) else 0
            by_sample.setdefault(sample, []).append(
                neurobench_call(torch.from_numpy(ds[a:b]), coding, nnz[name], out))
    tally = NeuroBenchTally()
    documents = getattr(recording, "documents", None) or []
    sequences = 1 if documents else int(meta.get("sequences") or 1)
    for sample in sorted(by_sample):
        tally.add_sample(by_sample[sample], samples=sequences)
    return tally.section(_static(path, meta)), []
