"""Calibration: a spiking model that stays faithful at a given spike budget.

It converts (``sbsnn.converters.convert``) and measures the float model's sensitivity
with its own gradients; see :func:`calibrate` and docs/calibration.md. The overall
before/after comparison (agreement, KL, perplexity) is analysis:
``sbsnn.analysis.calibration.compare``.
"""

from sbsnn.converters.calibration.calibrate import (Measured, SpikeTap, calibrate,
                                                    measure_spikes, text_blocks)
from sbsnn.converters.calibration.documents import each_document
from sbsnn.converters.calibration.groups import InputGroup, find_groups, fold

__all__ = ["InputGroup", "Measured", "SpikeTap", "calibrate", "each_document", "find_groups",
           "fold", "measure_spikes", "text_blocks"]
