"""Sparsity, energy, fidelity and task scores of spiking models (``evaluate`` needs the
``eval`` extra: lm-eval)."""

from sbsnn.analysis.counters import counters_from_recording, iter_calls
from sbsnn.analysis.energy import (EnergyProfile, EnergyReport, ProfileError, estimate_energy,
                                   list_profiles, load_profile, spikingbrain_energy_per_mac)
from sbsnn.analysis.evaluation import Evaluation, evaluate
from sbsnn.analysis.fidelity import (Fidelity, bootstrap_ratio, fidelity, fidelity_documents,
                                     recovery)
from sbsnn.analysis.opcount import nonspiking_ops
from sbsnn.analysis.sparsity import (SPIKINGBRAIN_7B_SPIKES, SparsityCollector, SparsityReport,
                                     sparsity, sparsity_from_recording)

__all__ = ["SPIKINGBRAIN_7B_SPIKES", "EnergyProfile", "EnergyReport", "Evaluation", "Fidelity",
           "ProfileError", "SparsityCollector", "SparsityReport", "bootstrap_ratio",
           "counters_from_recording", "estimate_energy", "evaluate", "fidelity",
           "fidelity_documents", "iter_calls", "list_profiles", "load_profile",
           "nonspiking_ops", "recovery", "sparsity", "sparsity_from_recording",
           "spikingbrain_energy_per_mac"]
