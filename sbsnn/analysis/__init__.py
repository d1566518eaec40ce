"""Sparsity, energy and fidelity of spiking models."""

from sbsnn.analysis.counters import counters_from_recording, iter_calls
from sbsnn.analysis.energy import (EnergyProfile, EnergyReport, ProfileError, estimate_energy,
                                   list_profiles, load_profile, spikingbrain_energy_per_mac)
from sbsnn.analysis.fidelity import (Fidelity, bootstrap_ratio, fidelity, fidelity_documents,
                                     recovery)
from sbsnn.analysis.opcount import nonspiking_ops
from sbsnn.analysis.sparsity import (SPIKINGBRAIN_7B_SPIKES, SparsityCollector, SparsityReport,
                                     sparsity, sparsity_from_recording)

__all__ = ["SPIKINGBRAIN_7B_SPIKES", "EnergyProfile", "EnergyReport", "Fidelity", "ProfileError",
           "SparsityCollector", "SparsityReport", "bootstrap_ratio", "counters_from_recording",
           "estimate_energy", "fidelity", "fidelity_documents", "recovery", "iter_calls", "list_profiles", "load_profile", "nonspiking_ops", "sparsity",
           "sparsity_from_recording", "spikingbrain_energy_per_mac"]
