"""Calibration: a spiking model that stays faithful at a given spike budget.

It converts (``sbsnn.converters.convert``) and measures the float model's sensitivity
with its own gradients; see :func:`calibrate` and docs/calibration.md. Calibrating a
checkpoint and comparing it with plain conversion on held-out text (agreement, KL,
perplexity) is orchestration: ``sbsnn.runs.calibrate``.
"""

from sbsnn.converters.calibration.budget import SpikeBudget
from sbsnn.converters.calibration.calibrate import (Measured, SpikeTap, calibrate,
                                                    measure_spikes, text_blocks)
from sbsnn.converters.calibration.documents import each_document
from sbsnn.converters.calibration.groups import InputGroup, find_groups, fold

__all__ = ["InputGroup", "Measured", "SpikeBudget", "SpikeTap", "calibrate", "each_document", "find_groups",
           "fold", "measure_spikes", "text_blocks"]
