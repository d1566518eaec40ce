"""Event-driven simulation of spiking models: events, engine, backends, traces, recordings."""

from sbsnn.sim.engine import LayerCounters, SimResult, Simulator, simulate
from sbsnn.sim.events import CountSummary, StepEvents, events_to_counts, step_events, summarize
from sbsnn.errors import RecordingError
from sbsnn.sim.recorder import Recorder
from sbsnn.sim.recording_reader import Recording, RowView
from sbsnn.sim.shards import ShardedRecording, load_recording, open_recording
from sbsnn.sim.trace import LayerTrace, TraceCall, TraceError, TraceSpec

__all__ = ["CountSummary", "LayerCounters", "LayerTrace", "Recorder", "Recording", "RecordingError",
           "RowView", "ShardedRecording", "SimResult", "Simulator", "StepEvents", "TraceCall",
           "TraceError", "TraceSpec", "events_to_counts", "load_recording", "open_recording",
           "simulate", "step_events", "summarize"]
