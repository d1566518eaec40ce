"""Calibration: a spiking model that stays faithful at a given spike budget.

Sits above the converters and the models (it converts, and measures the float model's
sensitivity with its gradients); see :func:`calibrate` and docs/calibration.md.
"""

from sbsnn.calibration.calibrate import Measured, calibrate, measure_spikes
from sbsnn.calibration.groups import InputGroup, find_groups, fold

__all__ = ["InputGroup", "Measured", "calibrate", "find_groups", "fold", "measure_spikes"]
