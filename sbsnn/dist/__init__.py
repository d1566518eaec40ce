"""Deprecated alias of :mod:`sbsnn.runs` (the orchestration room), kept for one release.

``sbsnn.dist`` and its submodules (``sbsnn.dist.pipeline``, ``sbsnn.dist.simulate``, ...)
are the very modules of ``sbsnn.runs``; import them from there.
"""

import importlib
import sys
import warnings

warnings.warn("sbsnn.dist is deprecated and will be removed in the next release: import "
              "sbsnn.runs instead (the same names)", DeprecationWarning, stacklevel=2)

from sbsnn.runs import *  # noqa: E402,F401,F403 - the alias re-exports the room's names
from sbsnn.runs import __all__  # noqa: E402,F401

for _name in ("convert", "documents", "group", "pipeline", "results", "simulate", "sweep"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"sbsnn.runs.{_name}")
del _name
