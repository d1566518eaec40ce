"""CuPy kernels for the simulator on a GPU, and the PyTorch references they must match.

Three kernels (sources in ``sbsnn/sim/kernels/*.cu``, compiled once per device by
``cupy.RawModule`` through NVRTC, templates picked by ``name_expressions``):

``spike_counts_cuda(x, k)``
    fused adaptive threshold and counts: ``V_th = clamp(mean|x| / k, 1e-5, 1e4)`` per row,
    ``counts = rint(x / V_th)`` (half to even, like ``torch.round``).
``compact_cuda(counts)``
    the events: per token the nonzero channels (ascending) and their signed counts, CSR.
``accumulate_cuda(row_ptr, channels, values, codes_t, N, group_size)``
    event-driven accumulation: ``acc[g, n, o] = sum_{events e of token n in group g}
    values[e] * codes_t[channels[e], o]`` in int32, one accumulator per weight group.

and :func:`layer_outputs` (with :func:`accumulate_events`), which the engine's
``backend="cupy"`` calls per layer.

Exactness
---------
- Counts: the kernel returns its ``V_th``; the counts equal ``torch.round(x / V_th)``
  computed in ``x.dtype`` *bit for bit* (IEEE division, round half to even, the same
  rounding to half/bf16 before ``round``). ``V_th`` is a row sum, accumulated in double on
  the GPU and in float by torch in another order, so it can differ from
  ``x.abs().mean(-1) / k`` by an ulp or two -- and a count can then differ from
  ``sbsnn.neurons.spike_counts`` at an exact ``.5`` tie. Tests check counts against
  ``torch.round(x / v_kernel)`` exactly and ``V_th`` against torch within a few ulps.
- Accumulators: integers, so exact: identical to ``sbsnn.converters.quant.group_accumulate``
  whenever ``max|c| * 128 * group_size < 2**31`` (checked). :func:`accumulate_events`
  keeps that true for any count the way the CPU path does: the kernel gets the counts
  clamped to ``+-int32_count_bound(group_size)`` and the few outlier elements beyond it
  add ``rest * column`` to their rows in int64, so the cost does not grow with the
  largest count.
- Events: the GPU accumulates count-weighted columns, one per active channel (what an
  event-driven core with multi-spike accumulation does), never looping over time steps;
  the plain per-step engine (``sbsnn.sim.engine.accumulate_events_reference``) adds
  ``+-step_weight * column`` per spike. Both give the same integers, since
  ``sum_t polarity_t * weight_t == count`` for every coding. Event totals come from the
  closed forms the CPU path uses (:func:`sbsnn.sim.events.summarize`).

The ``*_reference`` functions are pure torch (any device) and define what each kernel
returns; the tests compare the kernels with them, and them with ``sbsnn.neurons`` and
``sbsnn.converters.quant`` on the CPU. Importing this module does not import CuPy.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import weakref
from contextlib import contextmanager

import numpy as np
import torch

from sbsnn.checks import check_k
from sbsnn.converters.quant import CODE_MAX, num_groups, rescale
from sbsnn.errors import OptionError
from sbsnn.neurons.formula import spike_counts_reference as _formula_reference
from sbsnn.sim.events import popcount64, summarize

__all__ = [
    "NAME_EXPRESSIONS",
    "KernelInputError",
    "spike_counts_cuda",
    "compact_cuda",
    "accumulate_cuda",
    "accumulate_events",
    "group_sums_cuda",
    "layer_outputs",
    "event_counts",
    "int32_safe",
    "int32_count_bound",
    "spike_counts_reference",
    "compact_reference",
    "group_ptr_reference",
    "accumulate_reference",
    "accumulate_events_reference",
]

# Launch shapes; must match the #defines in the .cu files.
SC_BLOCK = 256  # spike_counts.cu
CP_BLOCK = 256  # compact.cu
EA_BLOCK = 128  # event_accumulate.cu (4 warps)
EA_TILE = 32    # event_accumulate.cu: lanes per tile, each owning VEC outputs

# C++ names of the template arguments, by torch dtype.
_IN_TYPES = {torch.float32: "float", torch.float16: "sb_half", torch.bfloat16: "sb_bf16"}
_COUNT_TYPES = {torch.int8: "signed char", torch.int16: "short"}
_CSR_TYPES = {torch.int8: "signed char", torch.int16: "short", torch.int32: "int"}
_VECS = (16, 8, 4, 1)

# Every kernel instantiation, per source file: RawModule's name_expressions, and what the
# compile test instantiates for nvcc.
NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "spike_counts.cu": tuple(f"spike_counts_kernel<{ti}, {to}>"
                             for ti in _IN_TYPES.values() for to in _COUNT_TYPES.values()),
    "compact.cu": tuple(f"{k}<{t}>" for k in ("row_nnz_kernel", "compact_kernel")
                        for t in _CSR_TYPES.values()),
    "event_accumulate.cu": tuple(f"event_accumulate_kernel<{v}>" for v in _VECS),
}

_I32_MAX = 2**31 - 1
_DIM_LIMIT = 2**31 - 2**16  # the kernels index rows and channels with int (plus a block stride)


class KernelInputError(OptionError):
    """An argument a kernel cannot take; the message says what to pass instead."""


# ----------------------------------------------------------------------- plumbing
def kernel_source(filename: str) -> str:
    """The CUDA source of ``sbsnn/sim/kernels/<filename>`` (package data)."""
    return importlib.resources.files("sbsnn.sim").joinpath("kernels").joinpath(filename).read_text()


@functools.lru_cache(maxsize=None)
def _module(filename: str, device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        return cupy.RawModule(code=kernel_source(filename), options=("-std=c++17",),
                              name_expressions=list(NAME_EXPRESSIONS[filename]))


@functools.lru_cache(maxsize=None)
def _function(filename: str, name: str, device_index: int):
    import cupy

    with cupy.cuda.Device(device_index):
        return _module(filename, device_index).get_function(name)


def _external_stream(stream: torch.cuda.Stream):
    import cupy

    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None and hasattr(stream, "__cuda_stream__"):
        return from_external(stream)  # CuPy >= 14 (ExternalStream is deprecated there)
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device.index)


@contextmanager
def _torch_stream(device: torch.device):
    """CuPy's current device and stream set to PyTorch's current ones for ``device``."""
    import cupy

    with cupy.cuda.Device(device.index), _external_stream(torch.cuda.current_stream(device)):
        yield


def _dlpack_view(t: torch.Tensor):
    import cupy

    if t.dtype in (torch.float16, torch.bfloat16):  # CuPy has no bfloat16: pass the bits
        t = t.view(torch.int16)
    return cupy.from_dlpack(t.detach())


def _launch(filename: str, name: str, grid: tuple, block: tuple, args: tuple,
            device: torch.device) -> None:
    """Launch kernel ``name`` on PyTorch's current stream. Tensors are shared via DLPack
    (no copies; the kernel only sees their addresses); scalars must be numpy scalars of the
    kernel's parameter types (np.int32 for int, np.int64 for long long, np.float32)."""
    with _torch_stream(device):
        fn = _function(filename, name, device.index)
        fn(grid, block, tuple(_dlpack_view(a) if isinstance(a, torch.Tensor) else a for a in args))


def _empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation of every kernel-written output (tests replace it to poison outputs)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _check_device(t: torch.Tensor, what: str) -> None:
    if not t.is_cuda:
        raise KernelInputError(f"{what} must be a CUDA tensor (got device {t.device}); "
                               f"move it first, e.g. {what}.cuda(), or use the *_reference "
                               "functions on the CPU")


def _compute_device(t: torch.Tensor) -> torch.device:
    """Where accumulate_events runs for counts on ``t.device`` (CUDA; CPU input is moved)."""
    if t.is_cuda:
        return t.device
    if not torch.cuda.is_available():
        raise KernelInputError("accumulate_events needs a CUDA device; use the engine's "
                               "backend='torch' on a CPU")
    return torch.device("cuda", torch.cuda.current_device())


def _check_2d(t: torch.Tensor, what: str, dtypes) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise KernelInputError(f"{what} must be a 2-D tensor, got {shape}")
    if t.dtype not in dtypes:
        raise KernelInputError(f"{what} has dtype {t.dtype}; expected one of "
                               f"{', '.join(str(d) for d in dtypes)}")
    if t.shape[0] >= _DIM_LIMIT or t.shape[1] >= _DIM_LIMIT:
        raise KernelInputError(f"{what} of shape {tuple(t.shape)} is too large for the kernels' "
                               f"int indices (each dimension must stay below {_DIM_LIMIT})")


def _check_1d(t: torch.Tensor, what: str, dtype: torch.dtype, length: int | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != dtype:
        got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise KernelInputError(f"{what} must be a 1-D {dtype} tensor, got {got}")
    if length is not None and t.numel() != length:
        raise KernelInputError(f"{what} must have {length} elements, got {t.numel()}")
    if not t.is_contiguous():
        raise KernelInputError(f"{what} must be contiguous")


def _vec_width(O: int, codes_t: torch.Tensor, acc: torch.Tensor) -> int:
    """Bytes per weight load: the largest of 16/8/4/1 that divides O and the codes' address
    (for 4 and up the kernel also stores accumulators 16 bytes at a time)."""
    for v in _VECS:
        if O % v == 0 and codes_t.data_ptr() % v == 0 and (v == 1 or acc.data_ptr() % 16 == 0):
            return v
    return 1


def int32_safe(peak: int, group_size: int) -> bool:
    """True when no partial sum of a group can leave int32: peak * 128 * group_size < 2**31
    (128: the largest int8 magnitude, so any codes a file holds are covered)."""
    return peak * (CODE_MAX + 1) * group_size < 2**31


def int32_count_bound(group_size: int) -> int:
    """Largest ``|count|`` the int32 accumulation kernel takes at ``group_size``."""
    return (2**31 - 1) // ((CODE_MAX + 1) * group_size)


# ------------------------------------------------------------------ spike counts
def spike_counts_cuda(x: torch.Tensor, k: float, out_dtype: torch.dtype = torch.int8,
                      check: bool = True, return_peak: bool = False):
    """``(counts [N, D] out_dtype, v_th [N, 1] x.dtype)`` for a CUDA activation ``x [N, D]``.

    ``x`` is float32 (or float16/bfloat16); ``out_dtype`` int8 or int16. With ``check``
    (one synchronisation) a count that does not fit ``out_dtype`` or a non-finite input
    raises :class:`KernelInputError`; without it such rows hold saturated or zero counts
    and NaN thresholds. ``return_peak`` adds the per-row ``max|count|`` (float32 [N]).
    """
    _check_2d(x, "x", tuple(_IN_TYPES))
    if out_dtype not in _COUNT_TYPES:
        raise KernelInputError(f"out_dtype must be torch.int8 or torch.int16, got {out_dtype}")
    kf = check_k(k, bounded=False, error=KernelInputError)
    _check_device(x, "x")
    N, D = x.shape
    if N == 0 or D == 0:
        raise KernelInputError(f"x is empty (shape {(N, D)}); skip empty activations")
    x = x.detach().contiguous()
    counts = _empty((N, D), out_dtype, x.device)
    v_th = _empty((N, 1), x.dtype, x.device)
    peak = _empty((N,), torch.float32, x.device)
    name = f"spike_counts_kernel<{_IN_TYPES[x.dtype]}, {_COUNT_TYPES[out_dtype]}>"
    _launch("spike_counts.cu", name, (N,), (SC_BLOCK,),
            (x, counts, v_th, peak, np.int32(D), np.float32(kf)), x.device)
    if check:
        top = float(peak.max())  # NaN if any row is not finite
        if math.isnan(top):
            bad = int(torch.isnan(peak).nonzero()[0])
            raise KernelInputError(f"x row {bad} holds NaN or Inf; spike counts need finite "
                                   "activations (clean them, e.g. torch.nan_to_num)")
        limit = torch.iinfo(out_dtype).max
        if top > limit:
            raise KernelInputError(f"a count reaches {top:.0f}, beyond {out_dtype} "
                                   f"(max {limit}); use out_dtype=torch.int16 or the "
                                   "torch path (sbsnn.neurons.spike_counts)")
    return (counts, v_th, peak) if return_peak else (counts, v_th)


def spike_counts_reference(x: torch.Tensor, k: float, out_dtype: torch.dtype = torch.int8,
                           v_th: torch.Tensor | None = None):
    """What :func:`spike_counts_cuda` returns, in torch: ``(counts, v_th [N, 1])``.

    ``v_th=None`` computes ``clamp(x.abs().mean(-1) / k, 1e-5, 1e4)`` (torch's reduction);
    pass the kernel's ``v_th`` to get the counts the kernel must equal exactly.
    """
    q, v_th = _formula_reference(x, k, threshold=v_th)
    limit = torch.iinfo(out_dtype).max
    if q.numel() and not bool(torch.isfinite(q).all()):
        raise KernelInputError("x holds NaN or Inf")
    if q.numel() and float(q.abs().max()) > limit:
        raise KernelInputError(f"a count does not fit {out_dtype}")
    return q.to(out_dtype), v_th


# ---------------------------------------------------------------------- compaction
def _csr_counts(counts: torch.Tensor) -> torch.Tensor:
    """counts in a dtype the compaction kernels take (int8/int16/int32), contiguous."""
    if counts.dtype == torch.uint8:
        counts = counts.to(torch.int16)
    elif counts.dtype == torch.int64:
        if counts.numel():
            lo, hi = (int(v) for v in torch.aminmax(counts))
            if lo < -_I32_MAX or hi > _I32_MAX:
                raise KernelInputError("counts beyond int32 cannot be compacted on the GPU; "
                                       "clip them (spike_counts(..., max_count=...))")
        counts = counts.to(torch.int32)
    return counts.contiguous()


def compact_cuda(counts: torch.Tensor, group_size: int | None = None):
    """CSR events of integer ``counts [N, D]`` on CUDA.

    Returns ``(row_ptr int64 [N + 1], channels int32 [E], values int32 [E])``, channels
    ascending within each token; with ``group_size`` also ``group_ptr int64 [N, G + 1]``,
    the offsets where each weight group's events start (what :func:`accumulate_cuda`
    walks). One synchronisation (the event total E sizes the outputs).
    """
    _check_2d(counts, "counts", (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8))
    _check_device(counts, "counts")
    counts = _csr_counts(counts)
    N, D = counts.shape
    gs = D if group_size is None else int(group_size)
    if gs < 1:
        raise KernelInputError(f"group_size must be >= 1, got {group_size}")
    G = num_groups(D, gs) if D else 0
    dev = counts.device
    row_ptr = torch.zeros(N + 1, dtype=torch.int64, device=dev)
    if N == 0 or D == 0:
        empty = torch.empty(0, dtype=torch.int32, device=dev)
        out = (row_ptr, empty, empty.clone())
        return out if group_size is None else out + (torch.zeros(N, G + 1, dtype=torch.int64, device=dev),)
    tname = _CSR_TYPES[counts.dtype]
    nnz = _empty((N,), torch.int64, dev)
    group_ptr = _empty((N, G + 1), torch.int64, dev)
    _launch("compact.cu", f"row_nnz_kernel<{tname}>", (N,), (CP_BLOCK,),
            (counts, np.int32(D), nnz), dev)
    torch.cumsum(nnz, 0, out=row_ptr[1:])
    E = int(row_ptr[-1])
    channels = _empty((max(E, 1),), torch.int32, dev)
    values = _empty((max(E, 1),), torch.int32, dev)
    _launch("compact.cu", f"compact_kernel<{tname}>", (N,), (CP_BLOCK,),
            (counts, np.int32(D), row_ptr, channels, values, np.int32(gs), np.int32(G),
             group_ptr), dev)
    out = (row_ptr, channels[:E], values[:E])
    return out if group_size is None else out + (group_ptr,)


def compact_reference(counts: torch.Tensor, group_size: int | None = None):
    """What :func:`compact_cuda` returns, in torch (any device)."""
    N, D = counts.shape
    nz = counts != 0
    row_ptr = torch.zeros(N + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(nz.sum(1), 0, out=row_ptr[1:])
    rows, ch = nz.nonzero(as_tuple=True)  # row-major: channels ascending within a row
    out = (row_ptr, ch.to(torch.int32), counts[rows, ch].to(torch.int32))
    if group_size is None:
        return out
    G = num_groups(D, group_size)
    per_group = torch.nn.functional.pad(nz.to(torch.int64), (0, G * group_size - D))
    per_group = per_group.view(N, G, group_size).sum(-1)
    group_ptr = torch.zeros(N, G + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(per_group, 1, out=group_ptr[:, 1:])
    return out + (group_ptr + row_ptr[:-1, None],)


def group_ptr_reference(row_ptr: torch.Tensor, channels: torch.Tensor, D: int,
                        group_size: int) -> torch.Tensor:
    """``group_ptr [N, G + 1]`` of a CSR whose channels ascend within each row (torch ops,
    no synchronisation): where each (token, group)'s events start."""
    N = row_ptr.numel() - 1
    G = num_groups(D, group_size)
    dev = row_ptr.device
    rows = torch.repeat_interleave(torch.arange(N, device=dev), row_ptr.diff(),
                                   output_size=channels.numel())
    keys = rows * D + channels.to(torch.int64)  # sorted: rows in order, channels ascending
    bounds = (torch.arange(G + 1, device=dev) * group_size).clamp_(max=D)
    targets = torch.arange(N, device=dev)[:, None] * D + bounds[None, :]
    return torch.searchsorted(keys, targets.reshape(-1)).view(N, G + 1)


# -------------------------------------------------------------------- accumulation
def accumulate_cuda(row_ptr: torch.Tensor, channels: torch.Tensor, values: torch.Tensor,
                    codes_t: torch.Tensor, N: int, group_size: int,
                    group_ptr: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Event-driven accumulation on CUDA: ``acc int32 [G, N, out]`` with
    ``acc[g, n, o] = sum_{e in row n, channels[e] in group g} values[e] * codes_t[channels[e], o]``.

    ``codes_t`` is the int8 weight codes transposed, ``[in, out]``, contiguous. The CSR is
    :func:`compact_cuda`'s (channels ascending within each row); ``group_ptr`` (from
    ``compact_cuda(counts, group_size)``) saves computing it here. ``check`` verifies,
    with one synchronisation, that int32 cannot overflow (else raises: use int64
    ``group_accumulate``).
    """
    _check_2d(codes_t, "codes_t", (torch.int8,))
    _check_device(codes_t, "codes_t")
    if not codes_t.is_contiguous():
        raise KernelInputError("codes_t must be contiguous: pass weight_codes.t().contiguous()")
    D, O = codes_t.shape
    N = int(N)
    group_size = int(group_size)
    if group_size < 1 or D == 0:
        raise KernelInputError(f"need group_size >= 1 and in_features >= 1, got {group_size}, {D}")
    G = num_groups(D, group_size)
    _check_1d(row_ptr, "row_ptr", torch.int64, N + 1)
    _check_1d(channels, "channels", torch.int32)
    _check_1d(values, "values", torch.int32, channels.numel())
    for t, what in ((row_ptr, "row_ptr"), (channels, "channels"), (values, "values")):
        _check_device(t, what)
    if group_ptr is None:
        group_ptr = group_ptr_reference(row_ptr, channels, D, group_size)
    elif group_ptr.shape != (N, G + 1) or group_ptr.dtype != torch.int64:
        raise KernelInputError(f"group_ptr must be int64 [N, G + 1] = [{N}, {G + 1}], got "
                               f"{group_ptr.dtype} {tuple(group_ptr.shape)}")
    group_ptr = group_ptr.contiguous()
    _check_device(group_ptr, "group_ptr")
    if N * G >= 2**31 or O >= 2**31:
        raise KernelInputError(f"too many (token, group) pairs for one launch: {N} x {G}")
    if check and values.numel():
        peak = int(values.abs().max())
        if not int32_safe(peak, group_size):
            raise KernelInputError(
                f"int32 accumulators could overflow: max|count| {peak} * 128 * group_size "
                f"{group_size} >= 2**31; use accumulate_events (it splits off the outliers) "
                f"or sbsnn.converters.quant.group_accumulate")
    acc = _empty((G, N, O), torch.int32, codes_t.device)
    if N == 0 or O == 0:
        return acc
    if channels.numel() == 0:  # keep a valid pointer for the kernel (it reads no event)
        channels = values = torch.zeros(1, dtype=torch.int32, device=codes_t.device)
    vec = _vec_width(O, codes_t, acc)
    tiles = -(-O // (EA_TILE * vec))
    if tiles > 65535:
        raise KernelInputError(f"out_features {O} is too large for one launch")
    _launch("event_accumulate.cu", f"event_accumulate_kernel<{vec}>", (G * N, tiles), (EA_BLOCK,),
            (group_ptr, channels, values, codes_t, acc, np.int32(N), np.int32(G), np.int32(O)),
            codes_t.device)
    return acc


def accumulate_reference(row_ptr: torch.Tensor, channels: torch.Tensor, values: torch.Tensor,
                         codes_t: torch.Tensor, N: int, group_size: int) -> torch.Tensor:
    """What :func:`accumulate_cuda` returns, exactly, as int64 ``[G, N, out]`` (torch ops)."""
    D, O = codes_t.shape
    G = num_groups(D, group_size)
    dev = codes_t.device
    rows = torch.repeat_interleave(torch.arange(N, device=dev), row_ptr.diff(),
                                   output_size=channels.numel())
    ch = channels.to(torch.int64)
    target = (ch // group_size) * N + rows
    acc = torch.zeros(G * N, O, dtype=torch.int64, device=dev)
    step = max(1, (32 << 20) // max(1, O * 8))
    for s in range(0, ch.numel(), step):
        cols = codes_t[ch[s:s + step]].to(torch.int64) * values[s:s + step, None].to(torch.int64)
        acc.index_add_(0, target[s:s + step], cols)
    return acc.view(G, N, O)


# ------------------------------------------------------------ events for the engine
_popcount64 = popcount64  # one implementation, in sbsnn.sim.events


def event_counts(counts: torch.Tensor, coding: str, steps: int) -> tuple[int, int]:
    """(positive, negative) events of ``counts`` laid out with ``coding`` over ``steps``,
    in closed form (:func:`sbsnn.sim.events.summarize`): what
    :func:`sbsnn.sim.events.step_events` yields, summed."""
    s = summarize(counts, coding, steps)
    return s.events_pos, s.events_neg


_CODES_T: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _codes_t(layer, device: torch.device) -> torch.Tensor:
    """The layer's weight codes transposed to [in, out] on ``device`` (cached per layer,
    refreshed when the codes tensor changes)."""
    w = layer.weight_codes
    key = (w.data_ptr(), w._version, str(device))
    hit = _CODES_T.get(layer)
    if hit is not None and hit[0] == key:
        return hit[1]
    t = w.to(device).t().contiguous()
    _CODES_T[layer] = (key, t)
    return t


def _outlier_rows(c: torch.Tensor, bound: int, codes_t: torch.Tensor, group_size: int,
                  acc: torch.Tensor) -> None:
    """Add the part of counts ``c`` beyond ``+-bound`` to the int64 group sums ``acc
    [G, N, out]``: ``rest * codes_t[channel]`` per outlier element (few: massive
    activations), in torch ops on the device."""
    N = c.shape[0]
    tok, ch = ((c > bound) | (c < -bound)).nonzero(as_tuple=True)
    v = c[tok, ch].to(torch.int64)
    rest = v - v.clamp(-bound, bound)
    per = max(1, (64 << 20) // (8 * codes_t.shape[1]))
    flat = acc.view(-1, codes_t.shape[1])
    for a in range(0, tok.numel(), per):
        b = min(a + per, tok.numel())
        row = (ch[a:b] // group_size) * N + tok[a:b]
        flat.index_add_(0, row, codes_t[ch[a:b]].to(torch.int64) * rest[a:b, None])


def group_sums_cuda(counts: torch.Tensor, layer) -> torch.Tensor:
    """Exact group sums ``[G, N, out]`` of a :class:`~sbsnn.converters.SpikingLinear`'s
    input counts ``[N, in]`` from count-weighted events on the GPU (int32, or int64 when
    outliers were added), on the compute device.

    Compaction and accumulation run in int32 kernels; counts beyond
    ``int32_count_bound(group_size)`` are clamped for the kernels and their rest is added
    in int64 (:func:`_outlier_rows`), so the result equals ``group_accumulate`` for every
    count at a cost that does not grow with the largest count.
    """
    dev = _compute_device(counts)
    c = counts.to(dev)
    N = c.shape[0]
    gs = layer.group_size
    G = num_groups(layer.in_features, gs)
    if N == 0:
        return torch.zeros(G, 0, layer.out_features, dtype=torch.int32, device=dev)
    peak = max(-int(c.min()), int(c.max())) if c.numel() else 0
    bound = int32_count_bound(gs)
    codes_t = _codes_t(layer, dev)
    k = c if peak <= bound else c.to(torch.int32).clamp(-bound, bound)
    row_ptr, channels, values, group_ptr = compact_cuda(k, gs)
    acc = accumulate_cuda(row_ptr, channels, values, codes_t, N, gs, group_ptr=group_ptr, check=False)
    if peak > bound:
        acc = acc.to(torch.int64)
        _outlier_rows(c, bound, codes_t, gs, acc)
    return acc


def accumulate_events(counts: torch.Tensor, layer, T: int):
    """``(acc int64 [G, N, out], events_pos, events_neg)`` for counts ``[N, in]`` of a
    :class:`~sbsnn.converters.SpikingLinear` whose coding lays them out over ``T``
    steps: :func:`group_sums_cuda` (on the GPU, back on the counts' device) and the
    event totals in closed form."""
    pos, neg = event_counts(counts, layer.coding, T)
    return group_sums_cuda(counts, layer).to(torch.int64).to(counts.device), pos, neg


def layer_outputs(counts: torch.Tensor, v_th: torch.Tensor, layer, dtype: torch.dtype) -> torch.Tensor:
    """``[N, out]`` outputs of ``layer`` from its input's count-weighted events on the GPU
    (the engine's ``backend="cupy"`` step): :func:`group_sums_cuda`, then the integer
    path's own ``rescale`` (same integers, same arithmetic), on the counts' device."""
    acc = group_sums_cuda(counts, layer)
    dev = acc.device
    y = rescale(acc, layer.weight_scales.to(dev), v_th.to(dev),
                None if layer.bias is None else layer.bias.to(dev), dtype)
    return y.to(counts.device)


def accumulate_events_reference(counts: torch.Tensor, layer, T: int):
    """What :func:`accumulate_events` returns, in torch on ``counts``' device (int64)."""
    codes_t = layer.weight_codes.to(counts.device).t().contiguous()
    row_ptr, channels, values = compact_reference(counts)
    acc = accumulate_reference(row_ptr, channels, values, codes_t, counts.shape[0], layer.group_size)
    return (acc,) + event_counts(counts, layer.coding, T)
