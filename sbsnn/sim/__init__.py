"""Event-driven simulation of spiking models: events, engine, backends, recordings."""

from sbsnn.sim.engine import LayerCounters, SimResult, Simulator, simulate
from sbsnn.sim.events import StepEvents, events_to_counts, step_events

__all__ = ["LayerCounters", "SimResult", "Simulator", "StepEvents", "events_to_counts",
           "simulate", "step_events"]
