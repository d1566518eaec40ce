"""Deprecated alias of :mod:`sbsnn.runs.demo`, kept for one release."""

import warnings

warnings.warn("sbsnn.demo is deprecated and will be removed in the next release: import "
              "sbsnn.runs.demo instead (heldout_text: sbsnn.data)", DeprecationWarning,
              stacklevel=2)

from sbsnn.data import heldout_text  # noqa: E402,F401
from sbsnn.runs.demo import *  # noqa: E402,F401,F403
from sbsnn.runs.demo import run_demo  # noqa: E402,F401
