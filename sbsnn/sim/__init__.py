"""Event-driven simulation of spiking models: events, engine, backends, recordings."""

from sbsnn.sim.engine import LayerCounters, SimResult, Simulator, simulate
from sbsnn.sim.events import StepEvents, events_to_counts, step_events
from sbsnn.sim.recorder import Recorder, Recording, RecordingError, RowView, load_recording

__all__ = ["LayerCounters", "Recorder", "Recording", "RecordingError", "RowView", "SimResult",
           "Simulator", "StepEvents", "events_to_counts", "load_recording", "simulate",
           "step_events"]
