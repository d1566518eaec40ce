"""Spike coding: adaptive thresholds, integer spike counts, and their layout in time.

This module is the single source of truth for the SpikingBrain spike formula
(spikingbrain.md §1-2). For an activation ``x`` with features on the last dimension::

    V_th  = clamp(mean(|x|, dim=-1) / k, 1e-5, 1e4)     one threshold per token (row)
    s_INT = round(x / V_th)                              round half to even, not clipped

``s_INT`` is what an integrate-and-fire neuron without leak and with reset by subtraction
emits over ``T`` steps. How those spikes are laid out in time is the *coding*:

=================  ===========  ==============================  ===================
coding             spikes       T for a tensor                  spikes for count c
=================  ===========  ==============================  ===================
binary             {0, 1}       max(c)              (c >= 0)    c, ones first
ternary            {-1, 0, 1}   max|c|                          |c| copies of sign(c)
bitwise            {-1, 0, 1}   max(1, bit_length(max|c|))      popcount(|c|), MSB first
twos_complement    {0, 1}       max(2, bit_length(max|c|) + 1)  popcount of the T-bit word
=================  ===========  ==============================  ===================

(``bit_length(m) == ceil(log2(m + 1))``.) Bitwise is sign-magnitude ("bitwise-ternary"):
``-5`` with ``T = 3`` is ``[-1, 0, -1]``. Two's complement puts the sign bit first, with
weight ``-2**(T-1)``.

Everything here works on plain tensors, imports nothing else from ``sbsnn`` (but its
error classes, :mod:`sbsnn.errors`) and raises :class:`SpikeCodingError` (an
:class:`~sbsnn.errors.OptionError`, so a ``ValueError``) with a message that names the fix.
"""

from __future__ import annotations

import functools
import importlib
import math
import threading
from concurrent.futures import wait
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch

from sbsnn.errors import OptionError

from . import workers as _workers

__all__ = [
    "CODINGS",
    "DEFAULT_K",
    "DEFAULT_MAX_BYTES",
    "V_TH_MIN",
    "V_TH_MAX",
    "SpikeCodingError",
    "SpikeStats",
    "PackedTrains",
    "adaptive_threshold",
    "calibrate_threshold",
    "spike_counts",
    "dequantize",
    "num_steps",
    "capacity",
    "expand",
    "decode",
    "spike_stats",
]

CODINGS = ("binary", "ternary", "bitwise", "twos_complement")
DEFAULT_K = 3.0
V_TH_MIN = 1e-5  # upstream clamps the threshold to [1e-5, 1e4]
V_TH_MAX = 1e4
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB for an expanded train

# spike_counts works on blocks of rows small enough to stay in cache between the passes
# (|x| -> mean, max -> x / V_th -> round -> narrow integers). Measured on a 2-core EPYC,
# 1-4 MiB blocks are best; on accelerators one big block is better.
_CPU_BLOCK_BYTES = 2 << 20
_DEVICE_BLOCK_BYTES = 256 << 20
_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: torch forks its threads above this many elements

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)
_WIDER = {torch.int8: torch.int16, torch.int16: torch.int32, torch.int32: torch.int64}
_UNIT_CODINGS = ("binary", "ternary")  # one unit spike per step
_MAX_BIT_STEPS = {"bitwise": 63, "twos_complement": 64}  # decode works in int64

Steps = Union[None, int, str]


class SpikeCodingError(OptionError):
    """Bad input to a spike-coding function; the message says what to do instead."""


class PackedTrains(NamedTuple):
    """Trains with a per-element T, packed end to end (``expand(..., steps="per_element")``).

    ``spikes`` is 1-D int8: element 0's ``steps[0]`` slots, then element 1's, ... in
    row-major order of the counts tensor. Each element's train starts at its own t = 0 and
    uses its own T, so a bitwise element ``5`` is ``[1, 0, 1]`` whatever its neighbours hold.
    """

    spikes: torch.Tensor
    steps: torch.Tensor  # per-element T, shape of the counts


@dataclass(frozen=True)
class SpikeStats:
    """Spike statistics of a counts tensor, computed in closed form (no trains).

    ``spikes_per_step[t]`` is the number of elements that emit a (nonzero) spike at step
    ``t``; with per-element T, step ``t`` is each element's own t-th slot.
    """

    coding: str
    steps: int  # T for the tensor; with per-element T, the longest one
    spikes: torch.Tensor  # spikes per element, shape of the counts
    spikes_per_step: torch.Tensor  # int64, shape [steps]
    total_spikes: int
    slots: int  # time slots: elements * T, or the sum of per-element T
    element_steps: Optional[torch.Tensor] = None  # per-element T when steps="per_element"

    @property
    def firing_rate(self) -> float:
        """Total spikes / time slots (upstream: spikes / (elements * T)); 0 when no slots."""
        return self.total_spikes / self.slots if self.slots else 0.0


def _eager(fn):
    """Run ``fn`` eagerly even inside ``torch.compile``: its results must stay bit-identical
    to the eager formula (inductor would reorder the mean) and it uses worker threads.
    ``torch._dynamo`` is only imported once something is being compiled."""
    disabled = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            if not disabled:
                disabled.append(importlib.import_module("torch._dynamo").disable(fn))
            return disabled[0](*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- validation


def _check_coding(coding, fn: str) -> str:
    if coding not in CODINGS:
        raise SpikeCodingError(
            f"{fn}: unknown coding {coding!r}; choose one of {', '.join(CODINGS)} "
            "('bitwise' is the sign-magnitude 'bitwise-ternary' code)"
        )
    return coding


def _check_activation(x, fn: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise SpikeCodingError(
            f"{fn}: x must be a torch.Tensor, got {type(x).__name__}; "
            "wrap it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if not x.is_floating_point():
        hint = " (to lay integer counts out in time, use expand())" if not x.is_complex() else ""
        raise SpikeCodingError(
            f"{fn}: x has dtype {x.dtype}, but thresholds and counts are computed from analog "
            f"activations; pass a real floating tensor, e.g. x.float(){hint}"
        )
    if x.ndim == 0:
        raise SpikeCodingError(
            f"{fn}: x is 0-d, but the threshold is a mean over the last dimension; "
            "give it one, e.g. x.reshape(1)"
        )
    if x.numel() == 0:
        raise SpikeCodingError(
            f"{fn}: x is empty (shape {tuple(x.shape)}); there is nothing to code, "
            "so skip empty activations before calling"
        )


def _check_k(k, fn: str) -> float:
    try:
        kf = float(k)
    except (TypeError, ValueError):
        kf = float("nan")
    if isinstance(k, bool) or not math.isfinite(kf) or kf <= 0:
        raise SpikeCodingError(f"{fn}: k must be a positive finite number (upstream uses 3), got {k!r}")
    return kf


def _check_counts(counts, fn: str) -> None:
    if not isinstance(counts, torch.Tensor):
        raise SpikeCodingError(
            f"{fn}: counts must be a torch.Tensor of integers, got {type(counts).__name__}; "
            "use the counts returned by spike_counts()"
        )
    if counts.dtype not in _INT_DTYPES and counts.dtype != torch.uint8:
        if counts.dtype == torch.bool:
            fix = "cast it, e.g. counts.to(torch.int8)"
        else:
            fix = "pass the integer counts from spike_counts(), or round and cast: torch.round(c).to(torch.int32)"
        raise SpikeCodingError(f"{fn}: counts has dtype {counts.dtype}, but spike counts are integers; {fix}")
    if counts.numel() == 0:
        raise SpikeCodingError(
            f"{fn}: counts is empty (shape {tuple(counts.shape)}); there is nothing to lay out, "
            "so skip empty tensors before calling"
        )


def _binary_negative_error(fn: str, lowest: int) -> SpikeCodingError:
    return SpikeCodingError(
        f"{fn}: binary coding carries only non-negative counts, but the counts go down to "
        f"{lowest}; use coding='ternary' (signed unit spikes), 'bitwise' or 'twos_complement', "
        "or rectify the activation before counting"
    )


def _prepare_counts(counts, coding: str, fn: str):
    """Validate counts; return (c, lo, hi) with c signed and wide enough for -c."""
    _check_counts(counts, fn)
    c = counts.detach()
    if c.dtype == torch.uint8:
        c = c.to(torch.int16)
    flat = c.reshape(-1)
    ranges = _in_parts(lambda a, b: torch.aminmax(flat[a:b]), flat.numel(), c.device)
    lo, hi = min(int(r.min) for r in ranges), max(int(r.max) for r in ranges)
    if lo == torch.iinfo(c.dtype).min:  # -c would overflow
        if c.dtype == torch.int64:
            raise SpikeCodingError(
                f"{fn}: counts contain -2**63, whose magnitude does not fit int64; clip them "
                "first (spike_counts(..., max_count=...) or counts.clamp(-2**62, 2**62))"
            )
        c = c.to(_WIDER[c.dtype])
    if coding == "binary" and lo < 0:
        raise _binary_negative_error(fn, lo)
    return c, lo, hi


def _magnitude(c: torch.Tensor) -> torch.Tensor:
    """|c| (c from _prepare_counts, so it cannot overflow), contiguous."""
    flat = c.reshape(-1)
    mag = torch.empty_like(flat)
    _in_parts(lambda a, b: torch.abs(flat[a:b], out=mag[a:b]), flat.numel(), c.device)
    return mag.view(c.shape)


# ------------------------------------------------------------------- thresholds, counts


def _group_rows(x: torch.Tensor, group_size, fn: str):
    """View x as [rows, g]: one row per token, or per token and group of g features."""
    d = x.shape[-1]
    if group_size is None:
        return x.reshape(-1, d), 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 or d % group_size:
        raise SpikeCodingError(
            f"{fn}: group_size={group_size!r} must be a positive integer dividing the last "
            f"dimension ({d}), e.g. the head dimension for per-head thresholds"
        )
    return x.reshape(-1, group_size), d // group_size


def _static_rows(threshold, x: torch.Tensor, groups: int, fn: str) -> torch.Tensor:
    """A given (calibrated) threshold, broadcast to one value per row of the [rows, g] view."""
    if isinstance(threshold, torch.Tensor):
        v = threshold.detach().to(device=x.device, dtype=x.dtype)
    else:  # numbers convert straight to x.dtype (no float32 detour for float64 x)
        v = torch.as_tensor(threshold, dtype=x.dtype, device=x.device)
    shape = tuple(x.shape[:-1]) + (groups,)
    try:
        v = v.expand(shape)
    except RuntimeError:
        raise SpikeCodingError(
            f"{fn}: threshold of shape {tuple(v.shape)} does not broadcast to the threshold "
            f"shape {shape} (x.shape[:-1] + (groups,)); pass a scalar, one value per group "
            f"(shape ({groups},)) or one per token"
        ) from None
    if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
        raise SpikeCodingError(
            f"{fn}: threshold must be positive and finite (after conversion to {x.dtype}); "
            "derive it with calibrate_threshold(calibration_activations, k)"
        )
    return v.reshape(-1, 1).clone()


def _narrowest(peak: float) -> torch.dtype:
    for dt in _INT_DTYPES[:-1]:
        if peak <= torch.iinfo(dt).max:
            return dt
    if peak < 2.0**63:
        return torch.int64
    raise SpikeCodingError(
        f"spike_counts: a count reaches {peak:.3g}, beyond int64; pass max_count=... to clip, "
        "or check the threshold (a static threshold far below the activations gives huge counts)"
    )


def _nonfinite_error(x: torch.Tensor, fn: str) -> SpikeCodingError:
    flat = int((~torch.isfinite(x.reshape(-1))).nonzero()[0])  # the first one, in x's order
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), x.shape))
    return SpikeCodingError(
        f"{fn}: x contains {float(x.reshape(-1)[flat])} at index {index}; spike counts need finite "
        "activations. Fix the overflow upstream (e.g. compute that layer in float32) or clean the "
        "tensor with torch.nan_to_num(x, nan=0.0, posinf=..., neginf=...)"
    )


class _NonFinite(Exception):
    """Raised inside a block; turned into a SpikeCodingError naming the first bad element."""


def _blocks(rows: int, per_block: int):
    """Row ranges of at most per_block rows (>= 2) that never leave a 1-row tail.

    A 1-row reduction over a long row is split across threads and summed in a different
    order than the same row inside a multi-row tensor; avoiding 1-row blocks keeps the
    thresholds bit-identical to ``x.abs().mean(-1)`` on the whole tensor.
    """
    spans, i = [], 0
    while i < rows:
        j = min(rows, i + per_block)
        if rows - j == 1:
            j = rows
        spans.append((i, j))
        i = j
    return spans


class _Scan:
    """One blocked pass over the rows of x2 ([rows, g]): thresholds and, if asked, counts.

    Per block of rows: |x| into a cache-sized buffer, its mean (the threshold) and max (which
    fixes the largest count exactly, since |round(x/v)| = round(|x|/v) is monotone in |x|),
    then x / V_th, round, and a copy into the integer output. Each arithmetic step is the
    torch operation of the three-line formula, so results are bit-identical to it.
    """

    def __init__(self, x2, v, k, static, counts, max_count, dtype, fn):
        self.x2, self.v, self.k, self.static, self.counts = x2, v, k, static, counts
        self.max_count, self.dtype, self.fn = max_count, dtype, fn
        self.out = None

    def need(self, peak: float) -> torch.dtype:
        if self.max_count is not None:
            peak = min(peak, self.max_count)
        need = _narrowest(peak)
        if self.dtype is not None and torch.iinfo(need).bits > torch.iinfo(self.dtype).bits:
            raise SpikeCodingError(
                f"{self.fn}: counts reach {int(peak)}, which does not fit {self.dtype}; use dtype=None "
                f"(the narrowest type that holds them), a wider dtype, or "
                f"max_count={torch.iinfo(self.dtype).max} to clip"
            )
        return self.dtype if self.dtype is not None else need

    def block(self, i: int, j: int, buf: torch.Tensor):
        """Process rows i:j; return the dtype they need if self.out is too narrow (nothing written)."""
        xb, b, vb = self.x2[i:j], buf[: j - i], self.v[i:j]
        torch.abs(xb, out=b)
        peak_abs = torch.amax(b, dim=-1, keepdim=True)
        largest = float(peak_abs.max())  # NaN and Inf propagate into it
        if not math.isfinite(largest):
            raise _NonFinite
        if not self.static:  # a row sum that overflows gives inf, clamped to 1e4 as upstream
            torch.clamp(torch.mean(b, dim=-1, keepdim=True) / self.k, V_TH_MIN, V_TH_MAX, out=vb)
        if not self.counts:
            return None
        need = self.need(float(torch.round(peak_abs / vb).max()))
        out = self.out
        if out is None or torch.iinfo(need).bits > torch.iinfo(out.dtype).bits:
            return need
        torch.div(xb, vb, out=b)
        torch.round(b, out=b)
        if self.max_count is not None:
            b.clamp_(-self.max_count, self.max_count)
        out[i:j].copy_(b)
        return None

    def widen(self, need: torch.dtype):
        rows, width = self.x2.shape
        if self.out is None:
            self.out = torch.empty(rows, width, dtype=need, device=self.x2.device)
        else:  # rare: a later block holds larger counts; unwritten rows convert harmlessly
            self.out = self.out.to(need)


# Worker threads: sbsnn.neurons.workers (single-threaded inside; torch's thread settings
# for the host's threads never change).
def _cpu_workers(wanted: int) -> int:
    return _workers.workers_for(wanted)


def _worker_pool(size: int):
    return _workers._worker_pool(size)


def _run_blocks(scan: _Scan, spans, buf_rows: int, workers: int):
    """Run scan.block over spans (in parallel on `workers` threads); return the blocks to redo."""
    x2 = scan.x2
    if workers <= 1:
        buf = torch.empty(buf_rows, x2.shape[1], dtype=x2.dtype, device=x2.device)
        for i, j in spans:
            need = scan.block(i, j, buf)
            if need is not None:
                scan.widen(need)
                scan.block(i, j, buf)  # fits now
        return []
    queue = iter(spans)
    lock = threading.Lock()

    def worker():
        buf = torch.empty(buf_rows, x2.shape[1], dtype=x2.dtype, device=x2.device)
        redo = []
        while True:
            with lock:
                span = next(queue, None)
            if span is None:
                return redo
            need = scan.block(*span, buf)
            if need is not None:
                redo.append((span, need))

    futures = [_worker_pool(workers).submit(worker) for _ in range(workers)]
    wait(futures)  # all of them, even if one failed
    return [r for f in futures for r in f.result()]  # re-raises a worker's exception


def _in_parts(fn, numel: int, device: torch.device, min_part: int = 1 << 20):
    """``[fn(start, stop)]`` over contiguous parts of ``range(numel)``, in order. Large CPU
    tensors go to the worker threads (torch single-threaded, one fork/join), which take
    parts from a queue so that a worker descheduled by other load does not hold up the rest."""
    workers = _cpu_workers(min(torch.get_num_threads(), numel // min_part)) if device.type == "cpu" else 1
    if workers <= 1:
        return [fn(0, numel)]
    parts = min(4 * workers, numel // min_part)
    bounds = [numel * p // parts for p in range(parts + 1)]
    results = [None] * parts
    queue = iter(range(parts))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                p = next(queue, None)
            if p is None:
                return
            results[p] = fn(bounds[p], bounds[p + 1])

    futures = [_worker_pool(workers).submit(worker) for _ in range(workers)]
    wait(futures)
    for f in futures:
        f.result()  # re-raises a worker's exception
    return results


@torch.no_grad()
def _scan(x, k, group_size, threshold, fn, *, counts, max_count=None, dtype=None):
    """Thresholds (and counts in the narrowest integer type) of x: see :class:`_Scan`.

    On CPU with several torch threads, blocks are spread over worker threads that each run
    torch ops single-threaded (torch releases the GIL): one fork/join per call instead of
    one per operation per block, which matters when the cores are shared with other work.
    """
    x2, groups = _group_rows(x, group_size, fn)
    rows, width = x2.shape
    static = threshold is not None
    v = _static_rows(threshold, x, groups, fn) if static else torch.empty(rows, 1, dtype=x.dtype, device=x.device)
    scan = _Scan(x2, v, k, static, counts, max_count, dtype, fn)
    cpu = x.device.type == "cpu"
    per_block = max(2, (_CPU_BLOCK_BYTES if cpu else _DEVICE_BLOCK_BYTES) // (width * x2.element_size()))
    spans = _blocks(rows, per_block)
    buf_rows = max(j - i for i, j in spans)
    threads = torch.get_num_threads() if cpu else 1
    workers = _cpu_workers(min(threads, len(spans) // 2)) if cpu else 1
    # Too few blocks to share, but big enough for torch to fork its threads on every op:
    # run them on one single-threaded worker instead (a 1-row tensor stays on the caller,
    # where its reduction splits exactly as ``x.abs().mean(-1)`` does).
    alone = cpu and workers == 1 and threads > 1 and rows >= 2 and x2.numel() > _GRAIN_SIZE

    def run():
        if workers > 1 and counts and dtype is None:
            # the first block sets the output type; later blocks that need more are redone.
            # It runs on a worker too: the caller's torch ops would fork torch's threads.
            _worker_pool(workers).submit(_run_blocks, scan, spans[:1], buf_rows, 1).result()
            todo = spans[1:]
        else:
            todo = spans
            if counts:
                scan.widen(dtype if dtype is not None else torch.int8)
        redo = _run_blocks(scan, todo, buf_rows, workers)
        if redo:
            widest = max((need for _, need in redo), key=lambda d: torch.iinfo(d).bits)
            scan.widen(widest)
            _run_blocks(scan, [span for span, _ in redo], buf_rows, min(workers, len(redo)))

    try:
        if alone and _cpu_workers(2) > 1:
            _worker_pool(1).submit(run).result()
        else:
            run()
    except _NonFinite:
        raise _nonfinite_error(x, fn) from None
    v_th = v.reshape(tuple(x.shape[:-1]) + (groups,))
    return (scan.out.reshape(x.shape) if counts else None), v_th


@_eager
def adaptive_threshold(x: torch.Tensor, k: float = DEFAULT_K, *, group_size: Optional[int] = None,
                       threshold=None) -> torch.Tensor:
    """Per-token threshold ``clamp(mean(|x|, -1) / k, 1e-5, 1e4)``, shape ``x.shape[:-1] + (G,)``.

    ``G`` is 1, or ``x.shape[-1] // group_size`` with ``group_size`` (per-head thresholds:
    the mean runs over each group of ``group_size`` consecutive features). ``threshold``
    replaces the adaptive value by a static one (a scalar, per-group ``(G,)`` or per-token
    tensor, e.g. from :func:`calibrate_threshold`), returned broadcast and validated.
    Values are in ``x.dtype`` and bit-identical to ``x.abs().mean(-1, keepdim=True) / k``
    clamped.
    """
    fn = "adaptive_threshold"
    _check_activation(x, fn)
    k = _check_k(k, fn)
    return _scan(x.detach(), k, group_size, threshold, fn, counts=False)[1]


@_eager
def calibrate_threshold(x: torch.Tensor, k: float = DEFAULT_K, *, group_size: Optional[int] = None) -> torch.Tensor:
    """A static threshold of shape ``(G,)``: the adaptive threshold averaged over all tokens of ``x``.

    Pass the result as ``threshold=`` to :func:`spike_counts` (or the neuron module) to
    replace the per-token mean by a constant calibrated on representative activations.
    """
    v = adaptive_threshold(x, k, group_size=group_size)
    return v.reshape(-1, v.shape[-1]).mean(0, dtype=torch.float64).to(v.dtype)


@_eager
def spike_counts(x: torch.Tensor, k: float = DEFAULT_K, *, group_size: Optional[int] = None, threshold=None,
                 max_count: Optional[int] = None, dtype: Optional[torch.dtype] = None):
    """Integer spike counts ``round(x / V_th)`` (half to even) and the thresholds used.

    Returns ``(counts, v_th)``: ``counts`` has ``x``'s shape; ``v_th`` has shape
    ``x.shape[:-1] + (G,)`` (see :func:`adaptive_threshold`), so ``counts * v_th`` broadcasts
    when ``G == 1`` and :func:`dequantize` handles any ``G``.

    - Counts are not clipped (outliers give large counts) unless ``max_count`` is given,
      which clips them to ``[-max_count, max_count]``.
    - ``dtype=None`` returns the narrowest of int8/int16/int32/int64 that holds the largest
      (clipped) count. An explicit integer ``dtype`` is used as is and raises
      :class:`SpikeCodingError` if a count does not fit it (nothing is wrapped or saturated).
    - The counts are bit-identical to ``torch.round(x / v_th)`` computed in ``x.dtype``.
    - No gradient flows through the counts; for training use the straight-through
      :class:`~sbsnn.neurons.AdaptiveThresholdNeuron`.

    Speed: one blocked pass (|x|, mean, max, divide, round, narrow) with each block in cache.
    On CPU with several torch threads, large inputs are split over sbsnn's own worker
    threads, each running torch ops single-threaded by its own OpenMP setting: torch's
    thread settings for the caller (``torch.get_num_threads()``) never change.
    """
    fn = "spike_counts"
    _check_activation(x, fn)
    k = _check_k(k, fn)
    if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0):
        raise SpikeCodingError(f"{fn}: max_count must be a non-negative int or None, got {max_count!r}")
    if dtype is not None and dtype not in _INT_DTYPES:
        raise SpikeCodingError(
            f"{fn}: dtype must be None (narrowest that fits) or one of "
            f"{', '.join(str(d) for d in _INT_DTYPES)}, got {dtype}"
        )
    return _scan(x.detach(), k, group_size, threshold, fn, counts=True, max_count=max_count, dtype=dtype)


def dequantize(counts: torch.Tensor, v_th: torch.Tensor) -> torch.Tensor:
    """``counts * V_th`` with the thresholds from :func:`spike_counts` (any number of groups)."""
    groups = v_th.shape[-1]
    d = counts.shape[-1] if counts.ndim else 1
    if counts.ndim == 0 or d % groups:
        raise SpikeCodingError(
            f"dequantize: counts of shape {tuple(counts.shape)} cannot be split into the "
            f"{groups} threshold groups of v_th (shape {tuple(v_th.shape)}); pass the pair "
            "returned by one spike_counts() call"
        )
    if groups == 1:
        return counts * v_th
    return (counts.unflatten(-1, (groups, d // groups)) * v_th.unsqueeze(-1)).flatten(-2)


# ------------------------------------------------------------------------ time layout


def _bit_length(m: torch.Tensor) -> torch.Tensor:
    """Elementwise bit length of non-negative integers, in m's dtype."""
    f = m.to(torch.float32 if torch.iinfo(m.dtype).bits <= 16 else torch.float64)
    e = torch.frexp(f).exponent.to(m.dtype)  # exact below 2**24 / 2**53
    if m.dtype == torch.int64:  # int64 -> float64 may round up to the next power of two
        e = e - ((e > 0) & ((m >> (e - 1).clamp(min=0)) == 0)).to(m.dtype)
    return e


_SWAR = {
    8: (0x55, 0x33, 0x0F),
    16: (0x5555, 0x3333, 0x0F0F),
    32: (0x55555555, 0x33333333, 0x0F0F0F0F),
    64: (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F),
}


def _popcount(m: torch.Tensor) -> torch.Tensor:
    """Elementwise popcount of non-negative signed integers (SWAR bit tricks, m's dtype)."""
    bits = torch.iinfo(m.dtype).bits
    a, b, c = _SWAR[bits]
    m = m - ((m >> 1) & a)
    m = (m & b) + ((m >> 2) & b)
    m = (m + (m >> 4)) & c  # one count per byte
    for shift in (8, 16, 32):
        if shift < bits:
            m = m + (m >> shift)
    return m & 0x7F


def _min_steps(coding: str, lo: int, hi: int) -> int:
    peak = max(-lo, hi)
    if coding == "binary":
        return hi
    if coding == "ternary":
        return peak
    if coding == "bitwise":
        return max(1, peak.bit_length())
    return max(2, peak.bit_length() + 1)


def _element_steps(c: torch.Tensor, mag: torch.Tensor, coding: str) -> torch.Tensor:
    if coding in _UNIT_CODINGS:
        return mag
    if coding == "bitwise":
        return _bit_length(mag).clamp_(min=1)
    return (_bit_length(mag) + 1).clamp_(min=2)


def capacity(coding: str, steps: int):
    """``(lowest, highest)`` count that ``steps`` time steps of ``coding`` can carry."""
    _check_coding(coding, "capacity")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SpikeCodingError(f"capacity: steps must be a non-negative int, got {steps!r}")
    if coding == "binary":
        return 0, steps
    if coding == "ternary":
        return -steps, steps
    if coding == "bitwise":
        return -(2**steps - 1), 2**steps - 1
    if steps == 0:
        return 0, 0
    return -(2 ** (steps - 1)), 2 ** (steps - 1) - 1


@_eager
def num_steps(counts: torch.Tensor, coding: str, *, per_element: bool = False):
    """T that ``coding`` needs for ``counts``: an int for the tensor, or a per-element tensor."""
    fn = "num_steps"
    _check_coding(coding, fn)
    c, lo, hi = _prepare_counts(counts, coding, fn)
    if per_element:
        return _element_steps(c, c.abs(), coding)
    return _min_steps(coding, lo, hi)


def _resolve_steps(coding: str, lo: int, hi: int, steps, fn: str) -> int:
    if steps is None:
        return _min_steps(coding, lo, hi)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SpikeCodingError(
            f"{fn}: steps must be None (one T for the tensor, the smallest that fits), "
            f"a non-negative int, or 'per_element'; got {steps!r}"
        )
    limit = _MAX_BIT_STEPS.get(coding)
    if limit is not None and steps > limit:
        raise SpikeCodingError(
            f"{fn}: {coding} trains longer than {limit} steps cannot be decoded in int64; "
            f"pass steps=None (here {_min_steps(coding, lo, hi)})"
        )
    cap_lo, cap_hi = capacity(coding, steps)
    if lo < cap_lo or hi > cap_hi:
        raise SpikeCodingError(
            f"{fn}: {steps} steps of {coding} coding carry counts in [{cap_lo}, {cap_hi}], but "
            f"the counts span [{lo}, {hi}]; pass steps=None (T={_min_steps(coding, lo, hi)}), "
            "clip the counts (spike_counts(..., max_count=...)), or use coding='bitwise'"
        )
    return steps


def _too_big(fn, coding, shape, steps, nbytes, max_bytes, c, lo, hi, *, packed_slots=None) -> SpikeCodingError:
    bit_t = _min_steps("bitwise", lo, hi)
    bitwise = f"coding='bitwise' needs only T={bit_t} (~{bit_t * c.numel() / 2**20:.1f} MiB)"
    stats = f"spike_stats(counts, {coding!r}) gives T, spikes per element and per step without any train"
    if packed_slots is not None:
        return SpikeCodingError(
            f"{fn}: packing {packed_slots} per-element {coding} slots needs ~{nbytes / 2**20:.1f} MiB "
            f"while building, over max_bytes={max_bytes / 2**20:.1f} MiB. Instead: {bitwise}; "
            f"{stats}; expand slices of the tensor; or raise max_bytes"
        )
    slots = int(_element_steps(c, c.abs(), coding).sum(dtype=torch.int64))
    return SpikeCodingError(
        f"{fn}: a {coding} train of shape {(steps,) + tuple(shape)} needs {nbytes / 2**20:.1f} MiB, "
        f"over max_bytes={max_bytes / 2**20:.1f} MiB. Instead: expand(..., steps='per_element') "
        f"packs {slots} slots (~{slots * 9 / 2**20:.1f} MiB while building); {bitwise}; {stats}; "
        "or raise max_bytes"
    )


@_eager
def expand(counts: torch.Tensor, coding: str, steps: Steps = None, *, max_bytes: int = DEFAULT_MAX_BYTES):
    """Lay integer counts out in time as spike trains.

    - ``steps=None``: one T for the whole tensor, the smallest ``coding`` allows (upstream);
      returns int8 trains of shape ``[T, *counts.shape]``.
    - ``steps=int``: that T (binary/ternary pad with trailing zeros, bitwise with leading
      zeros, two's complement sign-extends); raises if a count does not fit (:func:`capacity`).
    - ``steps="per_element"``: each element uses its own T (binary/ternary ``|c|``, bitwise
      ``max(1, bit_length|c|)``, two's complement ``max(2, bit_length|c| + 1)``) and the
      trains are packed end to end: returns :class:`PackedTrains`. For unit codings this
      holds ``sum|c|`` slots instead of ``numel * max|c|``.

    Raises :class:`SpikeCodingError` if the train would exceed ``max_bytes``, naming cheaper
    alternatives.
    """
    fn = "expand"
    _check_coding(coding, fn)
    c, lo, hi = _prepare_counts(counts, coding, fn)
    if isinstance(steps, str) and steps == "per_element":
        return _expand_packed(c, coding, max_bytes, lo, hi)
    t_len = _resolve_steps(coding, lo, hi, steps, fn)
    nbytes = t_len * c.numel()
    if nbytes > max_bytes:
        raise _too_big(fn, coding, c.shape, t_len, nbytes, max_bytes, c, lo, hi)
    trains = torch.empty((t_len,) + tuple(c.shape), dtype=torch.int8, device=c.device)
    if t_len == 0:
        return trains
    if coding in _UNIT_CODINGS:
        t = torch.arange(t_len, device=c.device).view((t_len,) + (1,) * c.ndim)
        torch.lt(t, c.abs(), out=trains.view(torch.bool))  # |c| ones first, then zeros
        if coding == "ternary":
            trains.mul_(torch.sign(c).to(torch.int8))
        return trains
    bits = torch.iinfo(c.dtype).bits
    if coding == "bitwise":
        mag, width = c.abs(), max(-lo, hi).bit_length()
        for t in range(t_len):
            b = t_len - 1 - t  # most significant bit first
            if b >= width:
                trains[t].zero_()
            else:
                trains[t].copy_((mag >> b) & 1)
        trains.mul_(torch.sign(c).to(torch.int8))
    else:
        for t in range(t_len):
            trains[t].copy_((c >> min(t_len - 1 - t, bits - 1)) & 1)  # arithmetic shift sign-extends
    return trains


def _expand_packed(c, coding, max_bytes, lo, hi) -> PackedTrains:
    fn = "expand"
    mag = c.abs()
    steps = _element_steps(c, mag, coding)
    flat_steps = steps.reshape(-1).to(torch.int64)
    slots = int(flat_steps.sum())
    if coding in _UNIT_CODINGS:
        nbytes = slots * 9  # int8 spikes plus repeat_interleave's int64 index
        if nbytes > max_bytes:
            raise _too_big(fn, coding, c.shape, None, nbytes, max_bytes, c, lo, hi, packed_slots=slots)
        signs = torch.sign(c).reshape(-1).to(torch.int8)
        return PackedTrains(torch.repeat_interleave(signs, flat_steps), steps)
    longest = int(flat_steps.max())
    nbytes = c.numel() * longest * 2 + slots
    if nbytes > max_bytes:
        raise _too_big(fn, coding, c.shape, None, nbytes, max_bytes, c, lo, hi, packed_slots=slots)
    flat_c, flat_mag = c.reshape(-1), mag.reshape(-1)
    st = steps.reshape(-1).to(c.dtype)
    padded = torch.zeros(c.numel(), longest, dtype=torch.int8, device=c.device)
    for t in range(longest):  # left-aligned: slot t of an element holds its bit T_e - 1 - t
        b = st - 1 - t
        src = flat_mag if coding == "bitwise" else flat_c
        padded[:, t] = torch.where(b >= 0, (src >> b.clamp(min=0)) & 1, 0)
    if coding == "bitwise":
        padded.mul_(torch.sign(flat_c).to(torch.int8).unsqueeze(1))
    mask = torch.arange(longest, device=c.device) < flat_steps.unsqueeze(1)
    return PackedTrains(padded[mask], steps)


_ALLOWED = {"binary": (0, 1), "ternary": (-1, 1), "bitwise": (-1, 1), "twos_complement": (0, 1)}


def _check_spikes(spikes: torch.Tensor, coding: str, fn: str) -> torch.Tensor:
    """Validate spike values for ``coding`` (without copying the trains)."""
    if spikes.dtype == torch.bool:
        spikes = spikes.view(torch.int8) if spikes.is_contiguous() else spikes.to(torch.int8)
    if spikes.is_complex() or not (spikes.is_floating_point() or spikes.dtype in _INT_DTYPES or spikes.dtype == torch.uint8):
        raise SpikeCodingError(f"{fn}: spike trains must be real numbers, got dtype {spikes.dtype}")
    low, high = _ALLOWED[coding]
    if spikes.numel():
        smin, smax = (float(v) for v in torch.aminmax(spikes))
        fractional = spikes.is_floating_point() and bool((spikes != torch.round(spikes)).any())
        if smin < low or smax > high or fractional or math.isnan(smin) or math.isnan(smax):
            raise SpikeCodingError(
                f"{fn}: {coding} spikes take values in {{{', '.join(str(v) for v in range(low, high + 1))}}}, "
                "but the trains hold other values; decode trains made by expand() (or the neuron) "
                "with the coding they were made with"
            )
    return spikes


@_eager
def decode(trains, coding: str) -> torch.Tensor:
    """Counts (int64) from trains ``[T, ...]`` or :class:`PackedTrains`; inverse of :func:`expand`.

    binary/ternary: ``sum_t s_t``; bitwise: ``sum_t 2**(T-1-t) s_t``; two's complement: the
    same with weight ``-2**(T-1)`` on the first (sign) step.
    """
    fn = "decode"
    _check_coding(coding, fn)
    if isinstance(trains, PackedTrains):
        return _decode_packed(trains, coding)
    if not isinstance(trains, torch.Tensor) or trains.ndim == 0:
        raise SpikeCodingError(f"{fn}: trains must be a tensor [T, ...] or PackedTrains from expand()")
    if any(d == 0 for d in trains.shape[1:]):
        raise SpikeCodingError(
            f"{fn}: trains of shape {tuple(trains.shape)} hold no elements; skip empty tensors"
        )
    t_len = trains.shape[0]
    limit = _MAX_BIT_STEPS.get(coding)
    if limit is not None and t_len > limit:
        raise SpikeCodingError(f"{fn}: {coding} trains longer than {limit} steps overflow int64 counts")
    s = _check_spikes(trains, coding, fn)
    if coding in _UNIT_CODINGS:
        return s.sum(0, dtype=torch.int64)
    acc = torch.zeros(s.shape[1:], dtype=torch.int64, device=s.device)
    for t in range(t_len):  # Horner, most significant step first
        step = s[t].to(torch.int64)
        acc = acc * 2 + (-step if coding == "twos_complement" and t == 0 else step)
    return acc


def _decode_packed(packed: PackedTrains, coding: str) -> torch.Tensor:
    fn = "decode"
    steps = packed.steps
    _check_counts(steps, fn)
    flat_steps = steps.reshape(-1).to(torch.int64)
    if bool((flat_steps < 0).any()) or int(flat_steps.sum()) != packed.spikes.numel():
        raise SpikeCodingError(
            f"{fn}: PackedTrains.steps (sum {int(flat_steps.sum())}) does not match the "
            f"{packed.spikes.numel()} packed spikes; pass PackedTrains from expand() unchanged"
        )
    s = _check_spikes(packed.spikes.reshape(-1), coding, fn).to(torch.int64)
    numel = flat_steps.numel()
    owner = torch.repeat_interleave(torch.arange(numel, device=s.device), flat_steps)
    if coding not in _UNIT_CODINGS:
        if int(flat_steps.max()) > _MAX_BIT_STEPS[coding]:
            raise SpikeCodingError(f"{fn}: {coding} trains longer than {_MAX_BIT_STEPS[coding]} steps overflow int64")
        start = torch.cumsum(flat_steps, 0) - flat_steps
        local = torch.arange(s.numel(), device=s.device) - start[owner]
        s = s << (flat_steps[owner] - 1 - local)
        if coding == "twos_complement":
            s = torch.where(local == 0, -s, s)
    out = torch.zeros(numel, dtype=torch.int64, device=s.device).index_add_(0, owner, s)
    return out.reshape(steps.shape)


# ------------------------------------------------------------------------- statistics


def _bincount(flat: torch.Tensor, minlength: int) -> torch.Tensor:
    """torch.bincount on a single-threaded worker when torch has several threads: its loop
    is serial anyway, while its min/max prologue would fork (and, on a shared machine, wait
    for) torch's threads."""
    if flat.device.type != "cpu" or torch.get_num_threads() <= 1 or _cpu_workers(2) <= 1:
        return torch.bincount(flat, minlength=minlength)
    return _worker_pool(1).submit(torch.bincount, flat, minlength=minlength).result()


def _magnitude_histogram(mag: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of each value 0..bins-1 of a non-negative integer tensor (int64)."""
    flat = mag.reshape(-1)
    if flat.dtype != torch.int8 or flat.device.type != "cpu" or flat.numel() < 2:
        return torch.bincount(flat, minlength=bins)[:bins]
    # int8 magnitudes are 0..127: read byte pairs as one int16 (lo + 256 * hi, never
    # negative) so bincount does half the increments, then split the pair histogram.
    even = flat.numel() - flat.numel() % 2
    pairs = _bincount(flat[:even].view(torch.int16), 128 * 256)
    pairs = pairs[: 128 * 256].view(128, 256)  # [hi, lo]
    hist = pairs.sum(0)[:128] + pairs.sum(1)
    if even < flat.numel():
        hist[int(flat[-1])] += 1
    if bins <= 128:
        return hist[:bins]
    return torch.cat([hist, hist.new_zeros(bins - 128)])


@_eager
def spike_stats(counts: torch.Tensor, coding: str, steps: Steps = None, *,
                max_bytes: int = DEFAULT_MAX_BYTES) -> SpikeStats:
    """T, spikes per element and spikes per step of ``expand(counts, coding, steps)``, without trains.

    Closed forms: spikes per element are ``|c|`` (binary/ternary), ``popcount(|c|)``
    (bitwise) or the popcount of the T-bit two's complement word; spikes at step ``t`` are
    ``#(|c| > t)`` (unit codings, from a histogram of ``|c|``) or the number of elements with
    the bit that step carries set. ``steps`` is as in :func:`expand`.
    """
    fn = "spike_stats"
    _check_coding(coding, fn)
    c, lo, hi = _prepare_counts(counts, coding, fn)
    mag = _magnitude(c)
    per_element = isinstance(steps, str) and steps == "per_element"
    element_steps = _element_steps(c, mag, coding) if per_element else None
    t_len = int(element_steps.max()) if per_element else _resolve_steps(coding, lo, hi, steps, fn)
    if 8 * (t_len + 1) > max_bytes:
        raise SpikeCodingError(
            f"{fn}: {coding} coding needs T={t_len} steps, and the per-step counts alone exceed "
            f"max_bytes={max_bytes}; use coding='bitwise' (T={_min_steps('bitwise', lo, hi)}) "
            "or clip the counts with spike_counts(..., max_count=...)"
        )
    numel = c.numel()
    if coding in _UNIT_CODINGS:
        hist = _magnitude_histogram(mag, t_len + 1)  # magnitudes never exceed T here
        at_least = hist.flip(0).cumsum(0).flip(0)  # at_least[m] = #(|c| >= m)
        per_step = at_least[1:].clone()  # #(|c| > t) = #(|c| >= t + 1)
        total = int(per_step.sum())
        return SpikeStats(coding, t_len, mag, per_step, total, total if per_element else numel * t_len, element_steps)
    per_step = torch.zeros(t_len, dtype=torch.int64)
    bits = torch.iinfo(c.dtype).bits
    src = mag if coding == "bitwise" else c  # two's complement shifts c itself (sign-extending)
    if per_element:
        st, slots = element_steps.to(c.dtype), 0
        for t in range(t_len):
            b = st - 1 - t
            alive = b >= 0
            per_step[t] = int(torch.count_nonzero(((src >> b.clamp(min=0)) & 1).bool() & alive))
            slots += int(torch.count_nonzero(alive))
        word_len = st
    else:
        width = max(-lo, hi).bit_length()
        for t in range(t_len):
            b = t_len - 1 - t
            if coding == "bitwise" and b >= width:
                continue  # leading zeros
            per_step[t] = int(torch.count_nonzero((src >> min(b, bits - 1)) & 1))
        slots, word_len = numel * t_len, t_len
    spikes = _element_spikes(c, mag, coding, word_len)
    return SpikeStats(coding, t_len, spikes, per_step, int(per_step.sum()), slots, element_steps)


def _element_spikes(c: torch.Tensor, mag: torch.Tensor, coding: str, word_len) -> torch.Tensor:
    """Spikes per element (closed forms): ``|c|``, ``popcount(|c|)``, or the popcount of
    the ``word_len``-bit two's complement word."""
    if coding in _UNIT_CODINGS:
        return mag
    if coding == "bitwise":
        return _popcount(mag)
    # popcount of the T-bit word; for c < 0 its zeros are the ones of ~c (>= 0)
    return torch.where(c >= 0, _popcount(mag), word_len - _popcount(~c))


@_eager
def spikes_per_element(counts: torch.Tensor, coding: str, steps: Optional[int] = None) -> torch.Tensor:
    """The spikes each element of ``counts`` emits in ``coding``, without the per-step
    statistics of :func:`spike_stats` (the same closed forms, for hot loops): ``|c|``
    (binary, ternary), ``popcount(|c|)`` (bitwise), the popcount of the T-bit two's
    complement word (T: ``steps``, by default the smallest the counts allow)."""
    fn = "spikes_per_element"
    _check_coding(coding, fn)
    c, lo, hi = _prepare_counts(counts, coding, fn)
    t_len = _resolve_steps(coding, lo, hi, steps, fn) if coding == "twos_complement" else 0
    return _element_spikes(c, _magnitude(c), coding, t_len)
