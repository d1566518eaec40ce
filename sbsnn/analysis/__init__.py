"""Sparsity, energy and fidelity of spiking models."""

from sbsnn.analysis.fidelity import Fidelity, fidelity

__all__ = ["Fidelity", "fidelity"]
