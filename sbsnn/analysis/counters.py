"""Per-layer simulation counters recomputed from a recording's counts.

A recording stores each layer call's counts; the events, slots and silent channels the
simulator counted follow from them in closed form (``sbsnn.neurons.spike_stats``), so a
report can be made from the file alone. ``out_features`` (the fan-out) comes from the
recording's metadata.
"""

from __future__ import annotations

from typing import Iterator

import torch

from sbsnn.neurons import spike_stats
from sbsnn.sim.engine import LayerCounters


def iter_calls(recording) -> Iterator[tuple[str, torch.Tensor]]:
    """``(layer_name, counts [rows, in])`` for every call of every layer, layer by layer."""
    for name in recording.layers:
        ds = recording.counts(name)
        offsets = [int(o) for o in recording.call_offsets(name)[:]] + [int(ds.shape[0])]
        for start, end in zip(offsets[:-1], offsets[1:]):
            if end > start:
                yield name, torch.from_numpy(ds[start:end])


def add_call(c: LayerCounters, counts: torch.Tensor, coding: str) -> None:
    """Add one call's counts to ``c``, as :class:`sbsnn.sim.Simulator` does."""
    stats = spike_stats(counts, coding)
    if coding in ("ternary", "bitwise"):
        neg = spike_stats((-counts.to(torch.int64)).clamp(min=0), coding).total_spikes
    else:  # binary and two's complement spikes are all positive
        neg = 0
    c.add_call(counts, stats.steps)
    c.events_pos += stats.total_spikes - neg
    c.events_neg += neg


def counters_from_recording(recording) -> dict[str, LayerCounters]:
    meta = recording.metadata
    coding = meta.get("coding") or "ternary"
    shapes = meta.get("layers") or {}
    out: dict[str, LayerCounters] = {}
    for name, counts in iter_calls(recording):
        if name not in out:
            if name not in shapes:
                raise ValueError(f"{recording.path}: metadata has no out_features for layer "
                                 f"{name!r}; the recording predates per-layer shapes")
            s = shapes[name]
            out[name] = LayerCounters(name, int(s["in_features"]), int(s["out_features"]))
        add_call(out[name], counts, coding)
    return out
