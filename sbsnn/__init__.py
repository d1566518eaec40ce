"""sbsnn: spiking conversion, event-driven simulation and reports for hybrid LLMs.

The main entry points, imported lazily so ``import sbsnn`` stays cheap (torch is not
imported until one is used)::

    model = sbsnn.load_model("tiny-hybrid")          # float model (sbsnn.models)
    snn = sbsnn.convert(model, preset="paper")       # spiking model (sbsnn.converters)
    sbsnn.save_spiking(snn, "out/"); sbsnn.load_spiking("out/")
    result = sbsnn.simulate(snn, "some text")         # event by event (sbsnn.sim)
    tuned = sbsnn.finetune(snn, model, texts, steps=200)  # distilled (sbsnn.runs.finetune)

The rooms, bottom up (imports run one way, never back up; docs/architecture.md):

- the ground floor: ``sbsnn.errors`` (one hierarchy of error classes), ``sbsnn.checks``
  (boundary checks, one check and one rule per parameter) and ``sbsnn.fsutil`` (atomic
  files); every room may use it and it imports nothing else of sbsnn;
- ``sbsnn.neurons`` (the spike formula, codings, statistics) and ``sbsnn.models`` (the
  float LMs, their configs, checkpoint readers and tokenizers);
- ``sbsnn.converters`` (INT8 weights, ``SpikingLinear``, convert, calibrate, the spiking
  checkpoint format);
- ``sbsnn.sim`` (events, the simulation engine, backends, recordings);
- ``sbsnn.analysis`` (sparsity, energy, fidelity, plots, reports);
- ``sbsnn.runs``: orchestration, one entry point per job (document sets, data-parallel
  and pipeline runs, sweeps, calibrate-and-evaluate, the demo);
- ``sbsnn.cli``: the ``sbsnn`` command, which parses, calls one entry point and prints.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "sbsnn.models",
    "convert": "sbsnn.converters",
    "convert_checkpoint": "sbsnn.converters",
    "save_spiking": "sbsnn.converters",
    "load_spiking": "sbsnn.converters",
    "calibrate": "sbsnn.converters.calibration",
    "simulate": "sbsnn.sim",
    "load_recording": "sbsnn.sim",
    "simulate_documents": "sbsnn.runs",
    "sweep": "sbsnn.runs",
    "calibrate_checkpoint": "sbsnn.runs",
    "finetune": "sbsnn.runs.finetune",
}
# Subpackages reachable as attributes (``sbsnn.analysis.fidelity`` after ``import sbsnn``,
# as ``torch.nn`` after ``import torch``), imported on first use.
_SUBMODULES = ("analysis", "checks", "converters", "errors", "fsutil", "models", "neurons",
               "runs", "sim")


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"sbsnn.{name}")
    raise AttributeError(f"module 'sbsnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY) + list(_SUBMODULES))


__all__ = ["__version__", *_LAZY, *_SUBMODULES]
