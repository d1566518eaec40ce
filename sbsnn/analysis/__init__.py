"""Sparsity, energy and fidelity of spiking models."""

from sbsnn.analysis.energy import (EnergyProfile, EnergyReport, ProfileError, estimate_energy,
                                   list_profiles, load_profile, spikingbrain_energy_per_mac)
from sbsnn.analysis.fidelity import Fidelity, fidelity
from sbsnn.analysis.opcount import nonspiking_ops

__all__ = ["EnergyProfile", "EnergyReport", "Fidelity", "ProfileError", "estimate_energy",
           "fidelity", "list_profiles", "load_profile", "nonspiking_ops",
           "spikingbrain_energy_per_mac"]
