"""Time-resolved traces of chosen spiking layers, for hardware studies (opt-in).

``simulate(model, text, trace="model.layers.0.*")`` (or ``sbsnn simulate --trace GLOB``)
resolves the chosen layers in time, call by call:

- ``events_pos`` / ``events_neg`` ``[T]``: the spikes fired at each time step;
- ``first_step`` / ``last_step`` ``[tokens]``: per token the first and last step at which
  any of its input channels fires (-1 for a silent token), so a token needs
  ``last - first + 1`` steps;
- ``outputs``: for the first ``TraceSpec.tokens`` tokens of the layer, every output's value
  after each step, from step 0 to the token's last spike step (afterwards it stays at the
  final value). Row ``t`` of a token is the layer's output had the spikes stopped after
  step ``t``: the integer accumulators of the events of steps ``0..t``, rescaled by the
  layer's own arithmetic (``sbsnn.converters.quant.rescale``), so a token's last row is
  bit for bit the layer's output.

The accumulators after step ``t`` come in closed form, with no walk over the events: the
spikes of steps ``0..t`` of a count ``c`` add up to ``sign(c) * min(|c|, t + 1)`` (binary,
ternary), ``sign(c) * (|c|`` with its ``T - 1 - t`` low bits cleared``)`` (bitwise) or ``c``
with those bits cleared by an arithmetic shift (two's complement); one exact product
(:func:`sbsnn.converters.quant.group_sums`) of these partial counts gives every step at
once. Memory: ``steps x out`` values per traced token; a trace whose outputs would pass
``TraceSpec.max_bytes`` is refused with the numbers. :func:`trace_call_reference` is the
plain version (a walk over :func:`sbsnn.sim.events.step_events`) the tests hold it to.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from sbsnn.converters.quant import rescale
from sbsnn.errors import OptionError, brief
from sbsnn.neurons.trains import bit_length
from sbsnn.sim.events import CountSummary, step_events, summarize

__all__ = ["LayerTrace", "TraceCall", "TraceError", "TraceSpec", "spike_steps", "trace_call",
           "trace_call_reference"]

DEFAULT_TOKENS = 32
DEFAULT_MAX_BYTES = 1 << 30
_ROWS_BYTES = 64 << 20      # partial counts [rows, in] int64 expanded at a time


class TraceError(OptionError):
    """A trace request that cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class TraceSpec:
    """Which layers to trace and how much of them.

    ``layers``: ``fnmatch`` globs over the spiking layers' module names (each must match
    at least one). ``tokens``: tokens per layer (the first ones it sees) whose per-step
    outputs are kept (``None``: all); events per step and first/last steps cover every
    token. ``max_bytes``: the most memory the per-step outputs of all traced layers may
    take together.
    """

    layers: tuple[str, ...]
    tokens: int | None = DEFAULT_TOKENS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        if not self.layers or not all(isinstance(g, str) and g for g in self.layers):
            raise TraceError(f"trace: give one or more layer globs (e.g. 'model.layers.0.*'), "
                             f"got {self.layers!r}")
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 0):
            raise TraceError(f"trace: tokens must be a non-negative int or None, got {brief(self.tokens)}")
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0:
            raise TraceError(f"trace: max_bytes must be a non-negative int, got {self.max_bytes!r}")

    @classmethod
    def parse(cls, trace) -> "TraceSpec | None":
        """``None``, a glob, a list of globs, or a :class:`TraceSpec`."""
        if trace is None or isinstance(trace, cls):
            return trace
        if isinstance(trace, str):
            return cls((trace,))
        if isinstance(trace, (list, tuple)) and all(isinstance(g, str) for g in trace):
            return cls(tuple(trace))
        raise TraceError(f"trace must be a layer glob, a list of globs or a TraceSpec, "
                         f"got {type(trace).__name__}")

    def select(self, names) -> list[str]:
        """The names the globs match, in model order; raises for a glob that matches none."""
        names = list(names)
        chosen = set()
        for g in self.layers:
            hit = [n for n in names if fnmatch.fnmatchcase(n, g)]
            if not hit:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise TraceError(f"trace: the glob {g!r} matches no spiking layer of the model "
                                 f"({len(names)} layers: {shown})")
            chosen.update(hit)
        return [n for n in names if n in chosen]


@dataclass
class TraceCall:
    """One call of a traced layer, resolved in time (tensors on the CPU)."""

    steps: int                   # T of the call
    row0: int                    # the layer's row (token seen) where this call starts
    events_pos: torch.Tensor     # int64 [T]: positive spikes fired at each step
    events_neg: torch.Tensor     # int64 [T]
    first_step: torch.Tensor     # int64 [N]: first step with a spike of the token, -1 if silent
    last_step: torch.Tensor      # int64 [N]
    output_offsets: torch.Tensor  # int64 [n + 1]: rows of `outputs` of the first n tokens
    outputs: torch.Tensor        # [rows, out]: each output after steps 0, 1, ... of a token

    @property
    def tokens(self) -> int:
        return int(self.first_step.numel())

    @property
    def output_tokens(self) -> int:
        return int(self.output_offsets.numel()) - 1

    @property
    def events_per_step(self) -> torch.Tensor:
        return self.events_pos + self.events_neg

    def steps_per_token(self) -> torch.Tensor:
        """``last - first + 1`` per token (0 for a silent token)."""
        return torch.where(self.last_step >= 0, self.last_step - self.first_step + 1, 0)

    def output_after(self, step: int) -> torch.Tensor:
        """``[output_tokens, out]``: every traced token's outputs once steps ``0..step`` ran."""
        off = self.output_offsets
        rows = torch.minimum(off[:-1] + int(step), off[1:] - 1)
        return self.outputs[rows]

    def final_outputs(self) -> torch.Tensor:
        """The last row of every traced token: the layer's output for those tokens."""
        return self.outputs[self.output_offsets[1:] - 1]


@dataclass
class LayerTrace:
    """All traced calls of one layer."""

    name: str
    in_features: int
    out_features: int
    coding: str
    calls: list[TraceCall] = field(default_factory=list)

    @property
    def steps_max(self) -> int:
        return max((c.steps for c in self.calls), default=0)

    def events_per_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive, negative)`` spikes per step summed over the calls (step 0 aligned)."""
        T = self.steps_max
        pos, neg = torch.zeros(T, dtype=torch.int64), torch.zeros(T, dtype=torch.int64)
        for c in self.calls:
            pos[:c.steps] += c.events_pos
            neg[:c.steps] += c.events_neg
        return pos, neg

    def first_step(self) -> torch.Tensor:
        return torch.cat([c.first_step for c in self.calls]) if self.calls else torch.zeros(0, dtype=torch.int64)

    def last_step(self) -> torch.Tensor:
        return torch.cat([c.last_step for c in self.calls]) if self.calls else torch.zeros(0, dtype=torch.int64)

    def steps_per_token(self) -> torch.Tensor:
        """Steps each token needed, over all calls in row order (0 for silent tokens)."""
        f, l = self.first_step(), self.last_step()
        return torch.where(l >= 0, l - f + 1, 0)

    @property
    def output_bytes(self) -> int:
        return sum(c.outputs.numel() * c.outputs.element_size() for c in self.calls)


# ------------------------------------------------------------------------ closed forms
def spike_steps(counts: torch.Tensor, coding: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (row of ``counts``): the first and last step at which one of its channels
    fires under ``coding`` over ``steps`` steps; -1 for a silent token (int64 ``[N]``)."""
    c = counts.to(torch.int64)
    if not c.numel():
        z = torch.full((c.shape[0],), -1, dtype=torch.int64, device=c.device)
        return z, z.clone()
    active = (c != 0).any(1)
    none = torch.full_like(active, -1, dtype=torch.int64)
    if coding in ("binary", "ternary"):
        first = torch.where(active, 0, none)
        last = c.abs().amax(1) - 1                                  # -1 when silent
        return first, last
    T = int(steps)
    m = c.abs() if coding == "bitwise" else (c if T >= 64 else c & ((1 << T) - 1))
    if coding == "twos_complement" and T >= 64:
        raise TraceError("trace: two's complement trains of 64 steps are not traced "
                         "(counts beyond 2**62); clip the counts or use coding='bitwise'")
    top = bit_length(m.amax(1))                                      # highest bit fired + 1
    first = torch.where(active, T - top, none)
    low = m & -m                                                    # lowest set bit (0 if m == 0)
    low = torch.where(low > 0, low, torch.full_like(low, 1 << 62)).amin(1)
    last = torch.where(active, T - bit_length(low), none)            # T - 1 - ctz
    return first, last


def _partial_counts(c: torch.Tensor, t: torch.Tensor, coding: str, T: int) -> torch.Tensor:
    """What the spikes of steps ``0..t`` of counts ``c`` (int64 ``[R, D]``, ``t [R, 1]``) add to."""
    if coding in ("binary", "ternary"):
        return c.sign() * torch.minimum(c.abs(), t + 1)
    b = (T - 1 - t).clamp(max=63)                                   # low bits not yet sent
    if coding == "bitwise":
        m = c.abs()
        return c.sign() * ((m >> b) << b)
    return (c >> b) << b                                            # arithmetic shift: sign first


def _output_rows(last: torch.Tensor) -> torch.Tensor:
    """Rows of per-step outputs per token: steps 0..last (one row for a silent token)."""
    return last.clamp(min=0) + 1


def trace_call(counts: torch.Tensor, v_th: torch.Tensor, layer, dtype: torch.dtype,
               summary: CountSummary | None = None, row0: int = 0,
               output_tokens: int | None = None) -> TraceCall:
    """The :class:`TraceCall` of one call of ``layer`` (a ``SpikingLinear``) on ``counts
    [N, in]`` with thresholds ``v_th [N, 1]``; per-step outputs for the first
    ``output_tokens`` tokens (default all) in ``dtype``."""
    coding = layer.coding
    s = summary if summary is not None else summarize(counts, coding)
    T = s.steps
    pos, neg = s.events_per_step()
    first, last = spike_steps(counts, coding, T)
    n = counts.shape[0] if output_tokens is None else min(int(output_tokens), counts.shape[0])
    L = _output_rows(last[:n])
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = L.cpu().cumsum(0)
    R = int(offsets[-1])
    out = torch.empty(R, layer.out_features, dtype=dtype, device=counts.device)
    if R:
        owner = torch.repeat_interleave(torch.arange(n, device=counts.device), L)
        step = torch.arange(R, device=counts.device) - offsets.to(counts.device)[owner]
        per = max(1, _ROWS_BYTES // (8 * max(1, counts.shape[1])))
        c64 = counts[:n].to(torch.int64)
        for a in range(0, R, per):
            b = min(R, a + per)
            rows = owner[a:b]
            p = _partial_counts(c64[rows], step[a:b, None], coding, T)
            out[a:b] = layer.forward_counts(p, v_th[rows], dtype)
    return TraceCall(T, int(row0), pos, neg, first.cpu(), last.cpu(), offsets, out.cpu())


def trace_call_reference(counts: torch.Tensor, v_th: torch.Tensor, layer, dtype: torch.dtype,
                         row0: int = 0) -> TraceCall:
    """The plain version of :func:`trace_call` (every token's outputs): walk the events
    step by step (:func:`~sbsnn.sim.events.step_events`), add ``polarity * weight *``
    their weight columns into int64 group accumulators, and rescale after every step."""
    coding = layer.coding
    N, D = counts.shape
    T = int(summarize(counts, coding).steps)
    gs = layer.group_size
    G = layer.weight_scales.shape[1]
    codes_t = layer.weight_codes.t().to(torch.int64)
    acc = torch.zeros(G, N, layer.out_features, dtype=torch.int64)
    pos, neg = torch.zeros(T, dtype=torch.int64), torch.zeros(T, dtype=torch.int64)
    first = torch.full((N,), -1, dtype=torch.int64)
    last = torch.full((N,), -1, dtype=torch.int64)
    per_step = []
    for ev in step_events(counts, coding, T):
        pos[ev.step] = int((ev.polarity > 0).sum())
        neg[ev.step] = int((ev.polarity < 0).sum())
        for tok, ch, p in zip(ev.token.tolist(), ev.channel.tolist(), ev.polarity.tolist()):
            acc[ch // gs, tok] += p * ev.weight * codes_t[ch]
            if first[tok] < 0:
                first[tok] = ev.step
            last[tok] = ev.step
        per_step.append(rescale(acc, layer.weight_scales, v_th, layer.bias, dtype))
    if not per_step:
        per_step.append(rescale(acc, layer.weight_scales, v_th, layer.bias, dtype))
    L = _output_rows(last)
    offsets = torch.zeros(N + 1, dtype=torch.int64)
    offsets[1:] = L.cumsum(0)
    rows = [per_step[t][n] for n in range(N) for t in range(int(L[n]))]
    out = torch.stack(rows) if rows else torch.empty(0, layer.out_features, dtype=dtype)
    return TraceCall(T, int(row0), pos, neg, first, last, offsets, out)


class Tracer:
    """Collects the traces of a simulation (used by :class:`sbsnn.sim.Simulator`)."""

    def __init__(self, spec: TraceSpec, layers):
        self.spec = spec
        names = [n for n, _ in layers]
        mods = dict(layers)
        self.traces = {n: LayerTrace(n, mods[n].in_features, mods[n].out_features, mods[n].coding)
                       for n in spec.select(names)}
        self._tokens_left = {n: spec.tokens for n in self.traces}
        self._bytes = 0

    def __contains__(self, name: str) -> bool:
        return name in self.traces

    def add(self, name: str, layer, counts: torch.Tensor, v_th: torch.Tensor, dtype: torch.dtype,
            summary: CountSummary, row0: int) -> TraceCall:
        left = self._tokens_left[name]
        n = counts.shape[0] if left is None else min(left, counts.shape[0])
        _, last = spike_steps(counts[:n], layer.coding, summary.steps)
        need = int(_output_rows(last).sum()) * layer.out_features * torch.empty(0, dtype=dtype).element_size()
        if self._bytes + need > self.spec.max_bytes:
            raise TraceError(
                f"trace of {name!r}: the per-step outputs of {n} token(s) of this call need "
                f"{need / 2**20:.1f} MiB (their spikes last up to {int(last.max()) + 1 if n else 0} "
                f"steps), and the trace already holds {self._bytes / 2**20:.1f} MiB of "
                f"max_bytes={self.spec.max_bytes / 2**20:.1f} MiB. Trace fewer tokens "
                f"(TraceSpec(tokens=...) / --trace-tokens), fewer layers, raise max_bytes, or use "
                f"coding='bitwise' (at most ~{max(1, summary.peak.bit_length())} steps)")
        call = trace_call(counts, v_th, layer, dtype, summary, row0, n)
        self._bytes += need
        if left is not None:
            self._tokens_left[name] = left - n
        self.traces[name].calls.append(call)
        return call
