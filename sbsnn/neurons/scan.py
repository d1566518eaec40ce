"""The fast path of the spike formula: thresholds and counts by one blocked, threaded scan.

:func:`spike_counts`, :func:`adaptive_threshold` and :func:`calibrate_threshold` give
exactly what :func:`~sbsnn.neurons.formula.spike_counts_reference` gives, bit for bit,
while reading ``x`` once per block of rows that stays in cache (|x| -> mean, max ->
x / V_th -> round -> the narrowest integer type), with large CPU inputs split over
sbsnn's own worker threads (:mod:`sbsnn.neurons.workers`); :func:`in_parts` hands any
other long elementwise pass to them the same way.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import wait
from typing import Optional

import torch

from sbsnn.checks import check_group_size, check_k

from . import workers as _workers
from .jit import njit
from .formula import (
    DEFAULT_K,
    INT_DTYPES,
    V_TH_MAX,
    V_TH_MIN,
    SpikeCodingError,
    check_activation,
    eager,
)

__all__ = ["adaptive_threshold", "calibrate_threshold", "spike_counts", "in_parts"]

# spike_counts works on blocks of rows small enough to stay in cache between the passes
# (|x| -> mean, max -> x / V_th -> round -> narrow integers). Measured on a 2-core EPYC,
# 1-4 MiB blocks are best; on accelerators one big block is better.
_CPU_BLOCK_BYTES = 2 << 20
_DEVICE_BLOCK_BYTES = 256 << 20
_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: torch forks its threads above this many elements


def _group_rows(x: torch.Tensor, group_size, fn: str):
    """View x as [rows, g]: one row per token, or per token and group of g features."""
    d = x.shape[-1]
    if group_size is None:
        return x.reshape(-1, d), 1
    group_size = check_group_size(group_size, f"{fn}: group_size", bounded=False, error=SpikeCodingError)
    if d % group_size:
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
    for dt in INT_DTYPES[:-1]:
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

    futures = [_workers._worker_pool(workers).submit(worker) for _ in range(workers)]
    wait(futures)  # all of them, even if one failed
    return [r for f in futures for r in f.result()]  # re-raises a worker's exception


def in_parts(fn, numel: int, device: torch.device, min_part: int = 1 << 20):
    """``[fn(start, stop)]`` over contiguous parts of ``range(numel)``, in order. Large CPU
    tensors go to the worker threads (torch single-threaded, one fork/join), which take
    parts from a queue so that a worker descheduled by other load does not hold up the rest."""
    workers = _workers.workers_for(min(torch.get_num_threads(), numel // min_part)) if device.type == "cpu" else 1
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

    futures = [_workers._worker_pool(workers).submit(worker) for _ in range(workers)]
    wait(futures)
    for f in futures:
        f.result()  # re-raises a worker's exception
    return results


# Inputs of at most this many rows (decoding: one token at a time) take the small path.
_SMALL_ROWS = 4
_small_kernel: list = []


def _round_kernel():
    """numba: ``round(x / v)`` per row into int64, and the largest ``|count|`` (-1 when x
    holds NaN or Inf). IEEE division and round-half-to-even, as ``torch.div`` and
    ``torch.round``: the same integers."""
    if not _small_kernel:
        jit = njit()
        if jit is None:
            _small_kernel.append(None)
        else:
            import numpy as np

            @jit
            def round_rows(x, v, out):
                peak = 0.0
                for n in range(x.shape[0]):
                    vn = v[n, 0]
                    for i in range(x.shape[1]):
                        q = np.rint(x[n, i] / vn)
                        if not np.isfinite(q):
                            return -1.0
                        a = abs(q)
                        if a > peak:
                            peak = a
                        out[n, i] = np.int64(q) if a < 9.2e18 else 0
                return peak

            _small_kernel.append(round_rows)
    return _small_kernel[0]


def row_thresholds(x2: torch.Tensor, k: float) -> torch.Tensor:
    """The adaptive thresholds ``[rows, 1]`` of ``x2 [rows, width]`` by the formula's own
    torch operations (the reduction's bits depend on them), for a few rows."""
    return torch.clamp(torch.mean(torch.abs(x2), dim=-1, keepdim=True) / k, V_TH_MIN, V_TH_MAX)


def _small_scan(x2: torch.Tensor, k: float, fn: str):
    """:class:`_Scan` of a few rows (adaptive threshold, no clipping) in two torch
    operations and one kernel, where the blocked scan's bookkeeping would cost more than
    its arithmetic. None without numba."""
    kernel = _round_kernel()
    if kernel is None:
        return None
    v = row_thresholds(x2, k)
    out = torch.empty(x2.shape, dtype=torch.int64)
    peak = kernel(x2.numpy(), v.numpy(), out.numpy())
    if peak < 0:
        raise _NonFinite
    return out.to(_narrowest(peak)), v


@torch.no_grad()
def _scan(x, k, group_size, threshold, fn, *, counts, max_count=None, dtype=None):
    """Thresholds (and counts in the narrowest integer type) of x: see :class:`_Scan`.

    On CPU with several torch threads, blocks are spread over worker threads that each run
    torch ops single-threaded (torch releases the GIL): one fork/join per call instead of
    one per operation per block, which matters when the cores are shared with other work.
    """
    x2, groups = _group_rows(x, group_size, fn)
    rows, width = x2.shape
    if (counts and rows <= _SMALL_ROWS and group_size is None and threshold is None
            and max_count is None and dtype is None and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and x2.is_contiguous()):
        try:
            small = _small_scan(x2, k, fn)
        except _NonFinite:
            raise _nonfinite_error(x, fn) from None
        if small is not None:
            return small[0].reshape(x.shape), small[1].reshape(tuple(x.shape[:-1]) + (1,))
    static = threshold is not None
    v = _static_rows(threshold, x, groups, fn) if static else torch.empty(rows, 1, dtype=x.dtype, device=x.device)
    scan = _Scan(x2, v, k, static, counts, max_count, dtype, fn)
    cpu = x.device.type == "cpu"
    per_block = max(2, (_CPU_BLOCK_BYTES if cpu else _DEVICE_BLOCK_BYTES) // (width * x2.element_size()))
    spans = _blocks(rows, per_block)
    buf_rows = max(j - i for i, j in spans)
    threads = torch.get_num_threads() if cpu else 1
    workers = _workers.workers_for(min(threads, len(spans) // 2)) if cpu else 1
    # Too few blocks to share, but big enough for torch to fork its threads on every op:
    # run them on one single-threaded worker instead (a 1-row tensor stays on the caller,
    # where its reduction splits exactly as ``x.abs().mean(-1)`` does).
    alone = cpu and workers == 1 and threads > 1 and rows >= 2 and x2.numel() > _GRAIN_SIZE

    def run():
        if workers > 1 and counts and dtype is None:
            # the first block sets the output type; later blocks that need more are redone.
            # It runs on a worker too: the caller's torch ops would fork torch's threads.
            _workers._worker_pool(workers).submit(_run_blocks, scan, spans[:1], buf_rows, 1).result()
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
        if alone and _workers.workers_for(2) > 1:
            _workers._worker_pool(1).submit(run).result()
        else:
            run()
    except _NonFinite:
        raise _nonfinite_error(x, fn) from None
    v_th = v.reshape(tuple(x.shape[:-1]) + (groups,))
    return (scan.out.reshape(x.shape) if counts else None), v_th


@eager
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
    check_activation(x, fn)
    k = check_k(k, f"{fn}: k", bounded=False, error=SpikeCodingError)
    return _scan(x.detach(), k, group_size, threshold, fn, counts=False)[1]


@eager
def calibrate_threshold(x: torch.Tensor, k: float = DEFAULT_K, *, group_size: Optional[int] = None) -> torch.Tensor:
    """A static threshold of shape ``(G,)``: the adaptive threshold averaged over all tokens of ``x``.

    Pass the result as ``threshold=`` to :func:`spike_counts` (or the neuron module) to
    replace the per-token mean by a constant calibrated on representative activations.
    """
    v = adaptive_threshold(x, k, group_size=group_size)
    return v.reshape(-1, v.shape[-1]).mean(0, dtype=torch.float64).to(v.dtype)


@eager
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
    check_activation(x, fn)
    k = check_k(k, f"{fn}: k", bounded=False, error=SpikeCodingError)
    if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 0):
        raise SpikeCodingError(f"{fn}: max_count must be a non-negative int or None, got {max_count!r}")
    if dtype is not None and dtype not in INT_DTYPES:
        raise SpikeCodingError(
            f"{fn}: dtype must be None (narrowest that fits) or one of "
            f"{', '.join(str(d) for d in INT_DTYPES)}, got {dtype}"
        )
    return _scan(x.detach(), k, group_size, threshold, fn, counts=True, max_count=max_count, dtype=dtype)
