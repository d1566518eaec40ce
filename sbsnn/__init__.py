"""sbsnn: spiking conversion, event-driven simulation and reports for hybrid LLMs.

The main entry points, imported lazily so ``import sbsnn`` stays cheap::

    model = sbsnn.load_model("tiny-hybrid")          # float model (sbsnn.models)
    snn = sbsnn.convert(model, preset="paper")       # spiking model (sbsnn.converters)
    sbsnn.save_spiking(snn, "out/"); sbsnn.load_spiking("out/")
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
}
# Subpackages reachable as attributes (``sbsnn.analysis.fidelity`` after ``import sbsnn``,
# as ``torch.nn`` after ``import torch``), imported on first use.
_SUBMODULES = ("analysis", "converters", "errors", "models", "neurons", "sim")


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
