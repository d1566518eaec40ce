"""Event-driven simulation of a spiking model.

Every :class:`~sbsnn.converters.SpikingLinear` is computed from its input's spike
events: each event (token, channel, step, polarity) adds or subtracts one INT8 weight
column, times its step weight, into that token's integer accumulators (one per weight
group), as asynchronous neuromorphic hardware would. The integers are then rescaled by
the very function the integer path uses, so the logits are bit-identical to
``spiking_model(ids)``.

Counters per layer: events (positive and negative), synaptic operations (events x
fan-out), silent input channels over each batch of tokens, time steps, and the dense
MACs the same layer would need.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from sbsnn.converters.quant import _exact_dtype, num_groups, rescale
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.neurons import num_steps
from sbsnn.sim.events import step_events

_EVENT_BATCH_BYTES = 64 << 20


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

    def add_call(self, counts: torch.Tensor, steps: int) -> None:
        """Count one call's counts ``[N, in]`` with global T ``steps`` (events apart)."""
        N = counts.shape[0]
        self.calls += 1
        self.tokens += N
        self.elements += counts.numel()
        self.nonzero += int((counts != 0).sum())
        self.time_steps_max = max(self.time_steps_max, steps)
        self.slots += counts.numel() * steps
        self.silent_channels += int((counts == 0).all(0).sum()) if N else 0
        self.channel_calls += counts.shape[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(events=self.events, synaptic_ops=self.synaptic_ops, dense_macs=self.dense_macs)
        return d


@dataclass
class SimResult:
    logits: torch.Tensor | None          # [tokens, vocab] of the first sequence
    layers: dict[str, LayerCounters]
    tokens: int
    seconds: float
    backend: str
    coding: str

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
        return t

    def summary(self) -> dict:
        return {"tokens": self.tokens, "seconds": self.seconds, "backend": self.backend,
                "coding": self.coding, **self.totals()}


# ----------------------------------------------------------------------------- backends
def accumulate_events_torch(counts: torch.Tensor, codes_t: torch.Tensor, group_size: int,
                            coding: str, steps: int | None = None
                            ) -> tuple[torch.Tensor, int, int]:
    """Event-driven integer accumulation on the CPU (or any torch device).

    counts ``[N, in]``; codes_t ``[in, out]`` int8 (transposed: one channel's weights are
    contiguous). Returns ``acc [G, N, out]`` int64, and the positive and negative event
    counts. Step by step, the step's events form a sparse matrix (row = (group, token),
    column = channel, value = polarity x step weight) that multiplies the weight columns:
    work is proportional to the events times the fan-out. The sparse product runs in a
    float type that holds every partial sum exactly (the same bound as the integer path),
    or in int64 index-adds when no float type does.
    """
    N, D = counts.shape
    out = codes_t.shape[1]
    G = num_groups(D, group_size)
    peak = int(counts.abs().max()) if counts.numel() else 0
    # Two's complement events weigh up to 2x the count (sign bit plus the others).
    dt = _exact_dtype(2 * peak if coding == "twos_complement" else peak, group_size)
    acc = torch.zeros(G * N, out, dtype=dt, device=counts.device)
    w = codes_t.to(dt) if dt.is_floating_point else None
    batch = max(1, _EVENT_BATCH_BYTES // (out * 8))
    pos = neg = 0
    for ev in step_events(counts, coding, steps):
        E = len(ev)
        if not E:
            continue
        n_pos = int((ev.polarity > 0).sum())
        pos, neg = pos + n_pos, neg + E - n_pos
        row = (ev.channel // group_size) * N + ev.token
        value = ev.polarity.to(dt) * ev.weight
        if w is not None:
            order = torch.argsort(row, stable=True)
            crow = torch.zeros(G * N + 1, dtype=torch.int64, device=counts.device)
            crow[1:] = torch.bincount(row, minlength=G * N).cumsum(0)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": used as documented
                warnings.simplefilter("ignore", UserWarning)
                spikes = torch.sparse_csr_tensor(crow, ev.channel[order], value[order],
                                                 (G * N, D), check_invariants=False)
            acc += spikes @ w
            continue
        for s in range(0, E, batch):
            cols = codes_t[ev.channel[s:s + batch]].to(torch.int64)
            acc.index_add_(0, row[s:s + batch], cols * value[s:s + batch, None])
    return acc.to(torch.int64).view(G, N, out), pos, neg


def cupy_usable() -> bool:
    """True when CuPy imports *and* a CUDA device really works (allocation succeeds)."""
    try:
        import cupy

        cupy.zeros(1).sum()
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def resolve_backend(backend: str) -> str:
    if backend not in ("auto", "torch", "cupy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'cupy', got {backend!r}")
    if backend == "auto":
        return "cupy" if cupy_usable() else "torch"
    if backend == "cupy" and not cupy_usable():
        raise RuntimeError("backend='cupy' needs CuPy and a usable CUDA device "
                           "(pip install 'sbsnn[gpu]'); use backend='torch' on a CPU")
    return backend


# ----------------------------------------------------------------------------- engine
class Simulator:
    """Context manager that routes every SpikingLinear of ``model`` through events."""

    def __init__(self, model: torch.nn.Module, backend: str = "torch",
                 recorder=None):
        self.model = model
        self.backend = resolve_backend(backend)
        self.recorder = recorder
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingLinear)]
        if not self.layers:
            raise ValueError("the model has no SpikingLinear layer: convert it first "
                             "(sbsnn.convert or sbsnn convert)")
        self.counters = {n: LayerCounters(n, m.in_features, m.out_features) for n, m in self.layers}
        self._codes_t: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Simulator":
        for name, layer in self.layers:
            layer.executor = lambda lyr, x, _n=name: self.run_layer(_n, lyr, x)
        return self

    def __exit__(self, *exc) -> None:
        for _, layer in self.layers:
            layer.executor = None

    def _accumulate(self, name: str, layer: SpikingLinear, counts: torch.Tensor, T: int):
        if self.backend == "cupy":
            from sbsnn.sim import cupy_backend

            return cupy_backend.accumulate_events(counts, layer, T)
        codes_t = self._codes_t.get(name)
        if codes_t is None:
            codes_t = self._codes_t[name] = layer.weight_codes.t().contiguous()
        return accumulate_events_torch(counts, codes_t, layer.group_size, layer.coding, T)

    def run_layer(self, name: str, layer: SpikingLinear, x: torch.Tensor) -> torch.Tensor:
        counts, v_th = layer.spike(x)
        N = counts.shape[0]
        T = num_steps(counts, layer.coding) if counts.numel() else 0
        c = self.counters[name]
        c.add_call(counts, T)
        if self.recorder is not None:
            self.recorder.write(name, counts, v_th)
        outs = []
        block = layer.token_block()
        for s in range(0, N, block):
            acc, pos, neg = self._accumulate(name, layer, counts[s:s + block], T)
            c.events_pos += pos
            c.events_neg += neg
            outs.append(rescale(acc, layer.weight_scales, v_th[s:s + block], layer.bias, x.dtype))
        y = torch.cat(outs) if outs else x.new_zeros(0, layer.out_features)
        return y.view(*x.shape[:-1], layer.out_features)


def _token_ids(model, text_or_ids) -> torch.Tensor:
    if isinstance(text_or_ids, str):
        ids = model._require_tokenizer().encode(text_or_ids)
    else:
        ids = text_or_ids
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(f"simulate needs a non-empty text or token ids [length] / [batch, length], "
                         f"got shape {tuple(ids.shape)}")
    return ids


@torch.no_grad()
def simulate(spiking_model, text_or_ids, backend: str = "auto", record=None,
             block_size: int | None = None, max_tokens: int | None = None,
             return_logits: bool = True, progress: bool = False,
             record_events: bool = False, metadata: dict | None = None) -> SimResult:
    """Run ``spiking_model`` on a text (or token ids) with every spiking layer computed
    event by event; returns logits and per-layer counters.

    ``block_size=None`` runs the sequence in one forward pass (logits then equal
    ``spiking_model(ids)`` bit for bit); a block size feeds it through the decoding
    state in blocks (bounded memory on long texts; equal to the integer path fed the
    same blocks). ``record="spikes.h5"`` writes counts and thresholds per layer; ``record``
    may also be any object with ``write(name, counts, v_th)``, ``flush()`` and
    ``close(complete)`` (e.g. :class:`sbsnn.analysis.SparsityCollector`).
    """
    ids = _token_ids(spiking_model, text_or_ids)
    if max_tokens is not None:
        ids = ids[:, :max_tokens]
    device = next(spiking_model.parameters()).device
    ids = ids.to(device)
    backend = resolve_backend(backend)
    recorder = None
    if record is not None and hasattr(record, "write"):
        recorder = record  # any object with write(name, counts, v_th), flush(), close(complete)
    elif record is not None:
        from sbsnn.sim.recorder import Recorder

        recorder = Recorder(record, metadata=_recording_metadata(spiking_model, ids, metadata),
                            record_events=record_events)
    t0 = time.perf_counter()
    L = ids.shape[1]
    logits = []
    from tqdm.auto import tqdm

    try:
        with Simulator(spiking_model, backend, recorder) as sim:
            if block_size is None:
                out = spiking_model(ids)
                if return_logits:
                    logits.append(out[0].float().cpu())
            else:
                state = spiking_model.new_state()
                bar = tqdm(total=L, desc="simulate", unit="tok", disable=not progress)
                for s in range(0, L, block_size):
                    out = spiking_model(ids[:, s:s + block_size], state)
                    if return_logits:
                        logits.append(out[0].float().cpu())
                    if recorder is not None:
                        recorder.flush()
                    bar.update(min(block_size, L - s))
                bar.close()
        if recorder is not None:
            recorder.close(complete=True)
    except BaseException:
        if recorder is not None:
            recorder.close(complete=False)
        raise
    return SimResult(logits=torch.cat(logits) if logits else None, layers=sim.counters,
                     tokens=L, seconds=time.perf_counter() - t0, backend=backend,
                     coding=_coding_of(spiking_model))


def _coding_of(model) -> str:
    cfg = getattr(model, "spiking_config", None)
    return cfg.coding if cfg is not None else "ternary"


def _recording_metadata(model, ids: torch.Tensor, extra: dict | None) -> dict:
    import hashlib

    from sbsnn import __version__

    cfg = getattr(model, "spiking_config", None)
    layers = {n: {"in_features": m.in_features, "out_features": m.out_features,
                  "group_size": m.group_size, "bias": m.bias is not None}
              for n, m in model.named_modules() if isinstance(m, SpikingLinear)}
    meta = {
        "sbsnn_version": __version__,
        "layers": layers,
        "tokens": int(ids.shape[1]),
        "token_digest": hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest(),
        "model_config": getattr(getattr(model, "config", None), "to_dict", dict)(),
    }
    if cfg is not None:
        meta.update(preset=cfg.preset, coding=cfg.coding, k=cfg.k, group_size=cfg.group_size)
    meta.update(extra or {})
    return meta
