"""Sparsity of spike counts, per layer, per layer kind and pooled.

SpikingBrain's sparsity figure (:mod:`sbsnn.analysis.spikingbrain`) comes with no
definition in code, so sbsnn reports each candidate under its own name. For counts ``c``
of one layer call (``N`` tokens x ``D`` input channels; one call = one forward pass,
which has one global T, as upstream), with ``s(c)`` the spikes an element emits in the
coding (|c| for ternary, popcount(|c|) for bitwise, ...; from
:func:`sbsnn.neurons.spike_stats`):

``zero_fraction``
    fraction of elements with ``c == 0`` (silent elements).
``spikes_per_element``
    ``sum s(c) / elements`` (SpikingBrain's "spikes per channel").
``slot_sparsity_global``
    ``1 - sum s(c) / sum(elements x T_call)``, T_call the call's global T (upstream's
    firing rate is ``1 -`` this).
``slot_sparsity_per_element``
    ``1 - sum s(c) / sum T_e``, each element with its own T_e (the steps its count needs).
``slot_sparsity_window``
    a fixed window of ``W`` steps per element (W = 3, the paper's): ``1 - sum min(s(c), W)
    / (elements x W)``; spikes beyond the window saturate it. ``fits_window`` is the
    fraction of elements whose train fits in W steps (T_e <= W).
``silent_channel_fraction``
    input channels whose count is zero for every token of a call, over channels x calls:
    what lets hardware skip whole weight rows.
``abs_count_histogram`` / ``spikes_histogram``
    counts of elements by |c| and by s(c) (index = value; the last bin holds all larger).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import torch

from sbsnn.analysis.counters import iter_calls
from sbsnn.analysis.spikingbrain import SPIKINGBRAIN_7B_SPIKES  # noqa: F401 - re-exported
from sbsnn.checks import check_window
from sbsnn.models.config import HybridConfig
from sbsnn.neurons import spike_stats

HIST_BINS = 33               # |c| and spikes 0..31, then ">= 32"
DEFAULT_WINDOW = 3


@dataclass
class SparsityTally:
    """Additive sums from which every metric follows (so layers pool exactly)."""

    window: int = DEFAULT_WINDOW   # not summed: the fixed window the sums refer to
    elements: int = 0
    zeros: int = 0
    spikes: int = 0
    slots_global: int = 0
    slots_per_element: int = 0
    window_spikes: int = 0
    fits_window: int = 0
    silent_channels: int = 0
    channel_calls: int = 0
    calls: int = 0
    tokens: int = 0
    abs_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)
    spikes_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)

    def __post_init__(self) -> None:
        # a 0-step window would read as 100 % sparse; a negative one is meaningless
        check_window(self.window)

    def add(self, other: "SparsityTally") -> None:
        for k, v in vars(other).items():
            if k == "window":
                continue
            if isinstance(v, list):
                cur = getattr(self, k)
                for i, x in enumerate(v):
                    cur[i] += x
            else:
                setattr(self, k, getattr(self, k) + v)

    def metrics(self) -> dict:
        def frac(a: int, b: int) -> float:
            return a / b if b else 0.0

        return {
            "elements": self.elements, "tokens": self.tokens, "calls": self.calls,
            "zero_fraction": frac(self.zeros, self.elements),
            "spikes_per_element": frac(self.spikes, self.elements),
            "slot_sparsity_global": 1 - frac(self.spikes, self.slots_global),
            "slot_sparsity_per_element": 1 - frac(self.spikes, self.slots_per_element),
            "window": self.window,
            "slot_sparsity_window": 1 - frac(self.window_spikes, self.elements * self.window),
            "fits_window": frac(self.fits_window, self.elements),
            "silent_channel_fraction": frac(self.silent_channels, self.channel_calls),
            "abs_count_histogram": list(self.abs_hist),
            "spikes_histogram": list(self.spikes_hist),
        }


def tally_counts(counts: torch.Tensor, coding: str, window: int = DEFAULT_WINDOW) -> SparsityTally:
    """The additive sums of one call's counts ``[N, D]``."""
    if counts.dim() != 2:
        raise ValueError(f"counts must be [tokens, channels], got shape {tuple(counts.shape)}")
    t = SparsityTally(window)
    N, D = counts.shape
    if counts.numel() == 0:
        return t
    glob = spike_stats(counts, coding)
    per = spike_stats(counts, coding, "per_element")
    s = glob.spikes.to(torch.int64)
    t.elements, t.tokens, t.calls = counts.numel(), N, 1
    t.zeros = int((counts == 0).sum())
    t.spikes = glob.total_spikes
    t.slots_global = glob.slots
    t.slots_per_element = per.slots
    t.window_spikes = int(s.clamp(max=window).sum())
    t.fits_window = int((per.element_steps <= window).sum())
    t.silent_channels = int((counts == 0).all(0).sum())
    t.channel_calls = D
    # widen before abs(): an int8 -128 (older recordings store it) has no int8 magnitude
    t.abs_hist = torch.bincount(counts.to(torch.int64).abs().clamp(max=HIST_BINS - 1).flatten(),
                                minlength=HIST_BINS).tolist()
    t.spikes_hist = torch.bincount(s.clamp(max=HIST_BINS - 1).flatten(), minlength=HIST_BINS).tolist()
    return t


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")


# The linear mixers of the hybrid families: the block's module name -> the kind's label.
# GDN shares GLA's module name (linear_attn) and is told apart by its projections' names.
MIXER_LABELS = {"gdn": "GDN", "mamba2": "Mamba-2", "conv": "short conv"}
_GDN_PROJECTION = re.compile(r"^linear_attn\.(in_proj\w*|out_proj)$")


def layer_kind(name: str, config=None) -> str:
    """'GLA', 'GDN', 'Mamba-2', 'short conv', 'SWA', 'full attention', 'MLP', 'MoE' or
    'other' for a module name."""
    m = _LAYER.match(name)
    if not m:
        return "other"
    i, rest = int(m.group(1)), m.group(2)
    if config is not None and config.layer_kind(i) in MIXER_LABELS and not rest.startswith("mlp."):
        return MIXER_LABELS[config.layer_kind(i)]
    if rest.startswith("linear_attn."):
        return "GDN" if _GDN_PROJECTION.match(rest) else "GLA"
    if rest.startswith("mamba."):
        return "Mamba-2"
    if rest.startswith("conv."):
        return "short conv"
    if rest.startswith("attn."):
        if config is None:
            return "attention"
        kind = config.layer_kind(i)
        if kind == "parallel":
            return "SWA" if config.window_for(i) is not None else "full attention"
        return {"gla": "GLA", "swa": "SWA", "full": "full attention"}[kind]
    if rest.startswith("mlp."):
        return "MoE" if re.match(r"mlp\.(experts|shared_experts|router)\b", rest) else "MLP"
    return "other"


@dataclass
class SparsityReport:
    coding: str
    window: int
    per_layer: dict[str, dict]
    per_kind: dict[str, dict]
    pooled: dict

    def to_dict(self) -> dict:
        return {"coding": self.coding, "window": self.window, "per_layer": self.per_layer,
                "per_kind": self.per_kind, "pooled": self.pooled}


def sparsity(calls: Iterable[tuple[str, torch.Tensor]], coding: str, config=None,
             window: int = DEFAULT_WINDOW) -> SparsityReport:
    """Metrics from ``(layer_name, counts [N, D])`` pairs, one per layer call."""
    return _report(((n, tally_counts(c, coding, window)) for n, c in calls), coding, config, window)


def _report(tallies: Iterable[tuple[str, SparsityTally]], coding: str, config, window: int) -> SparsityReport:
    layers: dict[str, SparsityTally] = {}
    kinds: dict[str, SparsityTally] = {}
    pooled = SparsityTally(window)
    names_kind: dict[str, str] = {}
    for name, t in tallies:
        kind = names_kind.setdefault(name, layer_kind(name, config))
        for bucket, key in ((layers, name), (kinds, kind)):
            bucket.setdefault(key, SparsityTally(window)).add(t)
        pooled.add(t)
    per_layer = {n: {"kind": names_kind[n], **t.metrics()} for n, t in layers.items()}
    return SparsityReport(coding, window, per_layer, {k: t.metrics() for k, t in kinds.items()},
                          pooled.metrics())


def sparsity_from_recording(recording, window: int = DEFAULT_WINDOW) -> SparsityReport:
    """:func:`sparsity` over everything a recording holds, read layer by layer, call by call."""
    meta = recording.metadata
    coding = meta.get("coding") or "ternary"
    cfg = None
    if meta.get("model_config"):
        try:
            cfg = HybridConfig.from_dict(meta["model_config"])
        except Exception:  # noqa: BLE001 - a foreign config only loses the kind labels
            cfg = None
    return sparsity(iter_calls(recording), coding, cfg, window)


class SparsityCollector:
    """Tally sparsity live during a simulation: pass it as ``simulate(..., record=collector)``."""

    def __init__(self, coding: str, config=None, window: int = DEFAULT_WINDOW):
        self.coding, self.config, self.window = coding, config, window
        self.calls: list[tuple[str, SparsityTally]] = []

    def write(self, name: str, counts: torch.Tensor, v_th: torch.Tensor) -> None:
        self.calls.append((name, tally_counts(counts, self.coding, self.window)))

    def flush(self) -> None:
        pass

    def close(self, complete: bool = True) -> None:
        pass

    def report(self) -> SparsityReport:
        return _report(self.calls, self.coding, self.config, self.window)
