"""Event-driven simulation of a spiking model.

Every :class:`~sbsnn.converters.SpikingLinear` is computed from its input's spike
events, with every counter exact and work that does not grow with the number of time
steps T or with the largest count:

- **Events carry their count.** In one call, the spikes of an input element (token,
  channel) all add the same weight column, ``sum_t polarity_t * weight_t = count`` times
  in all (every coding). The simulator therefore accumulates one count-weighted event per
  active element, ``count * W[:, channel]``, into that token's integer accumulators (one
  per weight group), as a multi-spike event-driven core does; the step structure lives in
  the counters, which come in closed form from the counts
  (:func:`sbsnn.sim.events.summarize`: events by sign, events per step, silent channels,
  slots), never from a walk over the steps.
- **The accumulation is exact and BLAS-fast.** On a CPU the count-weighted events of a
  call are the call's count frame (zero = no event), and their group sums are computed
  by :func:`sbsnn.converters.quant.group_sums` -- float32 GEMMs on counts clamped to
  ``+-1023`` (exact whatever order BLAS adds in) plus the few outlier elements beyond it
  in integers. Measured on the benchmark shapes, dense products beat sparse ones at
  every event density down to 3 %, so the frame is not compacted; the CuPy backend walks
  compacted events (``sbsnn.sim.cupy_backend``). The integers are rescaled by the very
  function the integer path uses, so the logits are bit-identical to ``spiking_model(ids)``.
- **Time-resolved traces** of chosen layers (``trace=``) add, per call, the events of each
  step, each token's first and last spike step and every output after each step
  (:mod:`sbsnn.sim.trace`).

:func:`accumulate_events_reference` keeps the plain per-step engine (a walk over
:func:`~sbsnn.sim.events.step_events` adding ``polarity x step weight x column`` per
spike, in int64) that the tests hold the fast path to.

Counters per layer: events (positive and negative), synaptic operations (events x
fan-out), silent input channels over each batch of tokens, time steps, slots, the
largest count, and the dense MACs the same layer would need.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import torch
from tqdm.auto import tqdm

from sbsnn.checks import check_block_size, check_max_tokens
from sbsnn.converters.quant import group_accumulate, num_groups
from sbsnn.converters.spiking_linear import ExecutorSwap, SpikingLinear, spiking_layers
from sbsnn.errors import CheckpointKindError, OptionError, UnavailableError
from sbsnn.neurons.workers import submit, workers_for
from sbsnn.sim.events import CountSummary, step_events, summarize
from sbsnn.sim.session import RunRecording, check_record, coding_of, select_trace
from sbsnn.sim.trace import LayerTrace, Tracer, TraceSpec

_EVENT_BATCH_BYTES = 64 << 20
_SUMMARY_ALONE = 1 << 15      # counts elements below which the counters are computed inline


@dataclass
class LayerCounters:
    """What one spiking layer did, summed over all the calls of a simulation."""

    name: str
    in_features: int
    out_features: int
    calls: int = 0
    tokens: int = 0
    elements: int = 0            # tokens x in_features
    nonzero: int = 0             # elements with a nonzero count
    events_pos: int = 0
    events_neg: int = 0
    time_steps_max: int = 0      # largest T of any call
    slots: int = 0               # sum over calls of elements x T (the call's global T)
    silent_channels: int = 0     # input channels silent for a whole call, summed over calls
    channel_calls: int = 0       # in_features x calls
    count_max: int = 0           # largest |count| of any call

    @property
    def events(self) -> int:
        return self.events_pos + self.events_neg

    @property
    def synaptic_ops(self) -> int:
        """Weight-column additions: each event touches every output (fan-out)."""
        return self.events * self.out_features

    @property
    def dense_macs(self) -> int:
        return self.tokens * self.in_features * self.out_features

    def add(self, s: CountSummary) -> None:
        """Count one call from its closed-form :class:`~sbsnn.sim.events.CountSummary`."""
        self._add(s.tokens, s.channels, s.nonzero, s.steps, s.silent_channels, s.peak)
        self.events_pos += s.events_pos
        self.events_neg += s.events_neg

    def add_call(self, counts: torch.Tensor, steps: int) -> None:
        """Count one call's counts ``[N, in]`` with global T ``steps`` (events apart)."""
        N, D = counts.shape
        if counts.numel():
            lo, hi = (int(v) for v in torch.aminmax(counts))
            nonzero, peak = int(torch.count_nonzero(counts)), max(-lo, hi)
        else:
            nonzero = peak = 0
        silent = D - int(counts.any(0).sum()) if N else 0
        self._add(N, D, nonzero, steps, silent, peak)

    def _add(self, N: int, D: int, nonzero: int, steps: int, silent: int, peak: int) -> None:
        self.calls += 1
        self.tokens += N
        self.elements += N * D
        self.nonzero += nonzero
        self.time_steps_max = max(self.time_steps_max, steps)
        self.slots += N * D * steps
        self.silent_channels += silent
        self.channel_calls += D
        self.count_max = max(self.count_max, peak)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(events=self.events, synaptic_ops=self.synaptic_ops, dense_macs=self.dense_macs)
        return d

    def merge(self, other: "LayerCounters") -> None:
        """Add the same layer's counters over other calls (another document, another rank):
        sums, and the larger value of each ``*_max`` field."""
        if (other.name, other.in_features, other.out_features) != (
                self.name, self.in_features, self.out_features):
            raise ValueError(f"cannot merge the counters of {other.name!r} "
                             f"[{other.in_features} -> {other.out_features}] into {self.name!r} "
                             f"[{self.in_features} -> {self.out_features}]")
        for f in counter_fields():
            a, b = getattr(self, f), getattr(other, f)
            setattr(self, f, max(a, b) if f.endswith("_max") else a + b)


def counter_fields() -> tuple[str, ...]:
    """The fields of :class:`LayerCounters` that count: summed over calls, except the
    ``*_max`` ones, which keep the largest value."""
    return tuple(f.name for f in fields(LayerCounters)
                 if f.name not in ("name", "in_features", "out_features"))


@dataclass
class SimResult:
    logits: torch.Tensor | None          # [tokens, vocab] of the first sequence
    layers: dict[str, LayerCounters]
    tokens: int
    seconds: float
    backend: str
    coding: str
    traces: dict[str, LayerTrace] = field(default_factory=dict)   # layers traced in time

    def totals(self) -> dict:
        keys = ("elements", "nonzero", "events_pos", "events_neg", "slots",
                "silent_channels", "channel_calls")
        t = {k: sum(getattr(c, k) for c in self.layers.values()) for k in keys}
        t["events"] = t["events_pos"] + t["events_neg"]
        t["synaptic_ops"] = sum(c.synaptic_ops for c in self.layers.values())
        t["dense_macs"] = sum(c.dense_macs for c in self.layers.values())
        t["zero_fraction"] = 1 - t["nonzero"] / t["elements"] if t["elements"] else 0.0
        t["spikes_per_element"] = t["events"] / t["elements"] if t["elements"] else 0.0
        t["slot_sparsity"] = 1 - t["events"] / t["slots"] if t["slots"] else 0.0
        t["time_steps_max"] = max((c.time_steps_max for c in self.layers.values()), default=0)
        t["count_max"] = max((c.count_max for c in self.layers.values()), default=0)
        return t

    def summary(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "backend": self.backend,
                "coding": self.coding, **self.totals()}


# ----------------------------------------------------------------------------- backends
def accumulate_events_reference(counts: torch.Tensor, codes_t: torch.Tensor, group_size: int,
                                coding: str, steps: int | None = None
                                ) -> tuple[torch.Tensor, int, int]:
    """The plain per-step event engine: ``(acc [G, N, out] int64, events_pos, events_neg)``.

    counts ``[N, in]``; codes_t ``[in, out]`` int8 (transposed: one channel's weights are
    contiguous). Walks the ``steps`` time steps (default: the coding's smallest T) of
    :func:`~sbsnn.sim.events.step_events` and adds ``polarity x step weight x column``
    for every spike into that token's int64 accumulator of the channel's weight group.
    Work grows with T; the simulator's fast path must give the same integers and counts.
    """
    N, D = counts.shape
    out = codes_t.shape[1]
    G = num_groups(D, group_size)
    acc = torch.zeros(G * N, out, dtype=torch.int64, device=counts.device)
    batch = max(1, _EVENT_BATCH_BYTES // (out * 8))
    pos = neg = 0
    for ev in step_events(counts, coding, steps):
        E = len(ev)
        if not E:
            continue
        n_pos = int((ev.polarity > 0).sum())
        pos, neg = pos + n_pos, neg + E - n_pos
        row = (ev.channel // group_size) * N + ev.token
        value = ev.polarity.to(torch.int64) * ev.weight
        for s in range(0, E, batch):
            cols = codes_t[ev.channel[s:s + batch]].to(torch.int64)
            acc.index_add_(0, row[s:s + batch], cols * value[s:s + batch, None])
    return acc.view(G, N, out), pos, neg


def accumulate_events_torch(counts: torch.Tensor, codes_t: torch.Tensor, group_size: int,
                            coding: str, steps: int | None = None
                            ) -> tuple[torch.Tensor, int, int]:
    """What the simulator computes on the CPU, as :func:`accumulate_events_reference`
    returns it: the count-weighted events' exact group sums
    (:func:`~sbsnn.converters.quant.group_accumulate`, int64 ``[G, N, out]``) and the
    event totals in closed form. Same arguments."""
    s = summarize(counts, coding, steps)
    return group_accumulate(counts, codes_t.t(), group_size), s.events_pos, s.events_neg


def accumulate_frame(layer: SpikingLinear, counts: torch.Tensor, v_th: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    """``[N, out]`` outputs of ``layer`` from the count-weighted events of ``counts [N, in]``:
    on a CPU these events are the count frame itself, and their exact group sums and
    rescale are the integer path's own (``SpikingLinear.forward_counts``: one
    implementation, so the two paths cannot drift apart)."""
    return layer.forward_counts(counts, v_th, dtype)


def cupy_usable() -> bool:
    """True when CuPy imports *and* a CUDA device really works (allocation succeeds)."""
    try:
        import cupy

        cupy.zeros(1).sum()
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def resolve_backend(backend: str) -> str:
    if not isinstance(backend, str) or backend not in ("auto", "torch", "cupy"):
        raise OptionError(f"backend must be 'auto', 'torch' or 'cupy', got {backend!r}")
    if backend == "auto":
        return "cupy" if cupy_usable() else "torch"
    if backend == "cupy" and not cupy_usable():
        raise UnavailableError("backend='cupy' needs CuPy and a usable CUDA device "
                               "(pip install 'sbsnn[gpu]'); use backend='torch' on a CPU")
    return backend


# ----------------------------------------------------------------------------- engine
class Simulator(ExecutorSwap):
    """Context manager that routes every SpikingLinear of ``model`` through events (an
    :class:`~sbsnn.converters.spiking_linear.ExecutorSwap` whose executor is
    :meth:`run_layer`).

    ``trace``: layers to resolve in time (a glob, a list of globs or a
    :class:`~sbsnn.sim.trace.TraceSpec`); their traces are in ``traces``.
    """

    def __init__(self, model: torch.nn.Module, backend: str = "torch",
                 recorder=None, trace=None):
        super().__init__(spiking_layers(model))
        self.model = model
        self.backend = resolve_backend(backend)
        self.recorder = recorder
        if not self.layers:
            raise CheckpointKindError("the model has no SpikingLinear layer (a float model): "
                                      "convert it first (sbsnn.convert or sbsnn convert)")
        self.counters = {n: LayerCounters(n, m.in_features, m.out_features) for n, m in self.layers}
        self.document_counters: dict[str, LayerCounters] | None = None
        self._last_summary = None     # (counts, coding, summary) of the last call
        spec = TraceSpec.parse(trace)
        self.tracer = Tracer(spec, self.layers) if spec is not None else None

    @property
    def traces(self) -> dict[str, LayerTrace]:
        return self.tracer.traces if self.tracer is not None else {}

    def begin_document(self) -> dict[str, LayerCounters]:
        """Count the calls from now on apart as well (one document of a set): returns the
        dict that fills with this document's counters (``counters`` keeps the totals)."""
        self.document_counters = {}
        return self.document_counters

    def _accumulate(self, layer: SpikingLinear, counts: torch.Tensor, v_th: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
        if self.backend == "cupy":
            from sbsnn.sim import cupy_backend

            return cupy_backend.layer_outputs(counts, v_th, layer, dtype)
        return accumulate_frame(layer, counts, v_th, dtype)

    def run_layer(self, name: str, layer: SpikingLinear, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s output for ``x``, computed from its spike events and counted."""
        counts, v_th = layer.spike(x)
        # The closed-form counters run on one of sbsnn's workers beside the accumulation;
        # a sibling layer handed the very same counts (q, k, v) reuses them.
        pending = s = None
        last = self._last_summary
        if last is not None and last[0] is counts and last[1] == layer.coding:
            s = last[2]
        elif counts.device.type == "cpu" and counts.numel() > _SUMMARY_ALONE and workers_for(2) > 1:
            pending = submit(summarize, counts, layer.coding)
        if self.recorder is not None:
            self.recorder.write(name, counts, v_th)
        y = self._accumulate(layer, counts, v_th, x.dtype)
        if s is None:
            s = pending.result() if pending is not None else summarize(counts, layer.coding)
        self._last_summary = (counts, layer.coding, s)
        c = self.counters[name]
        row0 = c.tokens
        c.add(s)
        if self.document_counters is not None:
            d = self.document_counters.get(name)
            if d is None:
                d = self.document_counters[name] = LayerCounters(name, c.in_features, c.out_features)
            d.add(s)
        if self.tracer is not None and name in self.tracer and counts.shape[0]:
            call = self.tracer.add(name, layer, counts, v_th, x.dtype, s, row0)
            if self.recorder is not None and hasattr(self.recorder, "write_trace"):
                self.recorder.write_trace(name, call)
        return y.view(*x.shape[:-1], layer.out_features)

    execute = run_layer   # what the swap installs on every layer


def _token_ids(model, text_or_ids) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        ids = model._require_tokenizer().encode(text_or_ids)
    else:
        ids = text_or_ids
    t = torch.as_tensor(ids)
    if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex()):
        raise OptionError(f"simulate needs a text or integer token ids, got {t.dtype} values")
    ids = t.to(torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise OptionError(f"simulate needs a non-empty text or token ids [length] / [batch, length], "
                          f"got shape {tuple(ids.shape)}")
    ids = after_prefix(model, ids)
    if ids.shape[1] == 0:
        raise OptionError("simulate: the text holds only the BOS token the model's constant "
                          "prefix already begins with; give text after it")
    return ids


def after_prefix(model, ids: torch.Tensor) -> torch.Tensor:
    """``ids [B, L]`` as ``model`` reads them after its constant prefix (without the leading
    BOS the prefix holds; unchanged without a prefix, or for a model that has none)."""
    read = getattr(model, "document_ids", None)
    return ids if read is None else read(ids)


def start_state(model, batch: int = 1):
    """The decoding state a document of ``model`` starts from: after its constant prefix
    (not simulated: computed once, in float, at conversion) when it has one, else fresh."""
    start = getattr(model, "start_state", None)
    return model.new_state() if start is None else start(batch)


@torch.no_grad()
def simulate(spiking_model, text_or_ids, backend: str = "auto", record=None,
             block_size: int | None = None, max_tokens: int | None = None,
             return_logits: bool = True, progress: bool = False,
             record_events: bool = False, metadata: dict | None = None,
             trace=None) -> SimResult:
    """Run ``spiking_model`` on a text (or token ids) with every spiking layer computed
    event by event; returns logits and per-layer counters.

    ``block_size=None`` runs the sequence in one forward pass (logits then equal
    ``spiking_model(ids)`` bit for bit); a block size feeds it through the decoding
    state in blocks (bounded memory on long texts; equal to the integer path fed the
    same blocks). A model with a constant prefix (``spiking_model.prefix``) starts from
    the prefix's state, computed once in float at conversion: the prefix's tokens are
    not simulated (nor counted, nor recorded), and a leading BOS the prefix holds is
    dropped from the text's tokens. ``record="spikes.h5"`` writes counts and thresholds per layer; ``record``
    may also be any object with ``write(name, counts, v_th)``, ``flush()`` and
    ``close(complete)`` (e.g. :class:`sbsnn.analysis.SparsityCollector`; with
    ``write_trace(name, call)`` it also receives the traces).

    ``trace``: resolve chosen layers in time (opt-in, for hardware studies): a glob over the
    spiking layers' names (``"model.layers.0.*"``), a list of globs, or a
    :class:`~sbsnn.sim.trace.TraceSpec` (tokens with per-step outputs, memory bound). The
    result's ``traces`` then holds, per traced layer and call, the events of each step,
    each token's first and last spike step and every output after each step; a recording
    stores them too.
    """
    check_block_size(block_size, none_ok=True)
    check_max_tokens(max_tokens)
    check_record(record, record_events)
    ids = _token_ids(spiking_model, text_or_ids)
    if max_tokens is not None:
        ids = ids[:, :max_tokens]
    device = next(spiking_model.parameters()).device
    ids = ids.to(device)
    backend = resolve_backend(backend)
    spec, metadata = select_trace(spiking_model, trace, metadata)
    run_rec = RunRecording(record, spiking_model, [ids], metadata, record_events)
    recorder = run_rec.recorder
    t0 = time.perf_counter()
    L = ids.shape[1]
    try:
        with Simulator(spiking_model, backend, recorder, trace=spec) as sim:
            bar = tqdm(total=L, desc="simulate", unit="tok",
                       disable=not progress or block_size is None)
            logits = run_sequence(spiking_model, ids, block_size, recorder, return_logits,
                                  on_block=bar.update)
            bar.close()
        run_rec.finish()
    except BaseException:
        run_rec.fail()
        raise
    return SimResult(logits=logits, layers=sim.counters,
                     tokens=L, seconds=time.perf_counter() - t0, backend=backend,
                     coding=coding_of(spiking_model), traces=sim.traces)


def run_sequence(model, ids: torch.Tensor, block_size: int | None = None, recorder=None,
                 return_logits: bool = False, on_block=None) -> torch.Tensor | None:
    """Feed ``ids [B, L]`` through ``model`` from the state a document starts from
    (:func:`start_state`: after the model's constant prefix, else fresh): in one pass
    (``block_size=None``) or block by block through the decoding state, flushing
    ``recorder`` after each block. Returns the first sequence's logits ``[L, vocab]``
    (float32, CPU) when asked. ``on_block(tokens)`` is called after each block."""
    check_block_size(block_size, none_ok=True)
    logits = []
    L = ids.shape[1]
    if block_size is None:
        out = model(ids) if getattr(model, "prefix", None) is None else \
            model(ids, start_state(model, ids.shape[0]))
        if return_logits:
            logits.append(out[0].float().cpu())
        if on_block is not None:
            on_block(L)
    else:
        state = start_state(model, ids.shape[0])
        for s in range(0, L, block_size):
            out = model(ids[:, s:s + block_size], state)
            if return_logits:
                logits.append(out[0].float().cpu())
            if recorder is not None:
                recorder.flush()
            if on_block is not None:
                on_block(min(block_size, L - s))
    return torch.cat(logits) if logits else None
