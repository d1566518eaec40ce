"""INT8 weights and the integer arithmetic of a spiking linear layer.

Weights: symmetric INT8 per output channel and per group of ``group_size`` inputs,
``scale = amax|w| / 127`` per (row, group), codes ``round(w / scale)`` clamped to
[-127, 127]. Upstream does not clamp; with float32 scales the codes never leave that
range, but a scale stored in a narrower type (e.g. fp8) can push a few to +-128, so we
clamp and count them, with the largest weight error a clamp caused.

Activations arrive as integer spike counts ``c`` with one threshold ``V_th`` per token.
The layer output is ``y = V_th * sum_g scale_g * (W_g @ c_g) + b``: each group's sum
``W_g @ c_g`` is an exact integer (``group_accumulate``), then ``rescale`` turns the
integers into floats in one fixed order. The event-driven simulator produces the same
integers event by event and calls the same ``rescale``, so the two paths agree bit for
bit.

Two routes make the same integers: ``int8`` (:func:`group_sums_int8`, ``torch._int_mm``,
int8 x int8 -> int32 per group, where the host's torch has it for the device) and the
reference ``float32`` (:func:`group_sums`, float32 BLAS on counts clamped to an exact
bound). :func:`integer_route` names the one that runs; :func:`forced_route` picks one.
On the CPU's int8 route the rescale, the outliers and decoding's few-token calls run in
numba kernels where it is installed (:mod:`~sbsnn.converters.int8_kernels`, held bit for
bit to the torch code here, which stays the reference); :func:`route_description` says
which.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from sbsnn.checks import check_group_size
from sbsnn.converters import int8_kernels
from sbsnn.neurons.workers import run_parts, workers_for

CODE_MAX = 127


@dataclass
class QuantStats:
    codes: int = 0                   # weight codes written
    clamped: int = 0                 # codes that fell outside [-127, 127] before clamping
    max_abs_error: float = 0.0       # largest |w - code * scale| over all weights
    max_clamp_error: float = 0.0     # largest of those errors at clamped codes

    def merge(self, other: "QuantStats") -> "QuantStats":
        return QuantStats(self.codes + other.codes, self.clamped + other.clamped,
                          max(self.max_abs_error, other.max_abs_error),
                          max(self.max_clamp_error, other.max_clamp_error))

    def to_dict(self) -> dict:
        return {"codes": self.codes, "clamped": self.clamped,
                "clamped_fraction": self.clamped / self.codes if self.codes else 0.0,
                "max_abs_weight_error": self.max_abs_error,
                "max_clamp_weight_error": self.max_clamp_error}


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


# Rows quantised at a time: a few MB of float32 temporaries that stay in cache, instead of
# several full-size copies of a large weight.
_QUANT_BLOCK_BYTES = 4 << 20


def quantize_weight(weight: torch.Tensor, group_size: int = 128,
                    scale_dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.Tensor, torch.Tensor, QuantStats]:
    """``(codes int8 [out, in], scales [out, G], stats)`` for a weight ``[out, in]``.

    The last group is shorter when ``in`` is not a multiple of ``group_size``. A group of
    zeros gets scale 0 and codes 0. Works through the rows in blocks, so memory beyond
    the outputs stays at a few MB whatever the weight's size.
    """
    if weight.dim() != 2:
        raise ValueError(f"quantize_weight: expected a 2-D weight, got shape {tuple(weight.shape)}")
    group_size = check_group_size(group_size, "quantize_weight: group_size", bounded=False)
    out_f, in_f = weight.shape
    G = num_groups(in_f, group_size)
    codes = torch.empty(out_f, in_f, dtype=torch.int8, device=weight.device)
    scales = torch.empty(out_f, G, dtype=scale_dtype, device=weight.device)
    stats = QuantStats(codes=codes.numel())
    rows = max(1, _QUANT_BLOCK_BYTES // max(1, G * group_size * 4))
    for r in range(0, out_f, rows):
        w = weight[r:r + rows].detach().to(torch.float32)
        if not torch.isfinite(w).all():
            raise ValueError(f"quantize_weight: the weight holds NaN or Inf (rows {r}..{r + len(w) - 1})")
        wp = torch.nn.functional.pad(w, (0, G * group_size - in_f)).view(len(w), G, group_size)
        sc = (wp.abs().amax(-1) / CODE_MAX).to(scale_dtype)
        scales[r:r + rows] = sc
        s = sc.to(torch.float32)[..., None]
        q = torch.where(s > 0, wp / torch.where(s > 0, s, 1), 0).round_()
        over = q.abs() > CODE_MAX
        q.clamp_(-CODE_MAX, CODE_MAX)
        err = (wp - q * s).abs_()
        stats.max_abs_error = max(stats.max_abs_error, float(err.max()) if err.numel() else 0.0)
        n_over = int(over.sum())
        if n_over:
            stats.clamped += n_over
            stats.max_clamp_error = max(stats.max_clamp_error, float(err[over].max()))
        codes[r:r + rows] = q.view(len(w), G * group_size)[:, :in_f].to(torch.int8)
    return codes, scales, stats


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` per group, as a float ``[out, in]`` weight."""
    out_f, in_f = codes.shape
    G = scales.shape[1]
    c = torch.nn.functional.pad(codes.to(dtype), (0, G * group_size - in_f)).view(out_f, G, group_size)
    return (c * scales.to(dtype)[..., None]).view(out_f, -1)[:, :in_f]


def _exact_dtype(max_count: int, group_size: int) -> torch.dtype:
    """The fastest matmul dtype in which every partial sum is exact: float32 below 2**24,
    float64 below 2**53, else int64. Used by the per-step reference engine
    (``sbsnn.sim.engine.accumulate_events_reference``); the integer path splits counts
    instead (:func:`f32_count_bound`)."""
    bound = max_count * CODE_MAX * group_size
    if bound < 2 ** 24:
        return torch.float32
    return torch.float64 if bound < 2 ** 53 else torch.int64


# ----------------------------------------------------------------------- exact group sums
# An int8 weight code is at most 128 in magnitude (codes are clamped to 127, but a file can
# hold -128): the bound below must hold for any int8.
_CODE_LIMIT = 128
# Working memory of one chunk of per-group float32 products [groups, tokens, out] (and of
# the chunk's float weights [groups, group_size, out]).
_CHUNK_BYTES = 16 << 20


def f32_count_bound(group_size: int) -> int:
    """Largest ``|count|`` whose group products are exact in a float32 GEMM: every partial
    sum of ``count * code`` over one group of ``group_size`` inputs stays below 2**24, the
    end of float32's exact integers, whatever order BLAS adds in (1023 at group 128)."""
    return (2 ** 24 - 1) // (_CODE_LIMIT * group_size)


def _f64_count_bound(group_size: int) -> int:
    return (2 ** 53 - 1) // (_CODE_LIMIT * group_size)


def _ieee_float32_matmul(device: torch.device) -> bool:
    """False when the host allowed float32 matmuls to round inputs (TF32 on CUDA, bf16 in
    oneDNN: ``torch.set_float32_matmul_precision("high"/"medium")`` or the backends'
    ``fp32_precision``); the group products then run in float64, which is never reduced."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    try:
        if device.type == "cuda":
            if torch.backends.cuda.matmul.allow_tf32:
                return False
            prec = torch.backends.cuda.matmul.fp32_precision
        else:
            prec = torch.backends.mkldnn.matmul.fp32_precision
    except AttributeError:  # an older torch without the per-backend setting
        return True
    return prec in ("none", "ieee")


def group_accumulate_reference(counts: torch.Tensor, codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """The plain version of :func:`group_accumulate`: one int64 matmul per group."""
    N, in_f = counts.shape
    G = num_groups(in_f, group_size)
    pad = G * group_size - in_f
    c = torch.nn.functional.pad(counts.to(torch.int64), (0, pad)).view(N, G, group_size).transpose(0, 1)
    w = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).view(-1, G, group_size).permute(1, 2, 0)
    return torch.bmm(c, w)


def _float_counts(counts: torch.Tensor, G: int, group_size: int, bound: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """``clamp(counts, -bound, bound)`` as ``dtype`` ``[N, G * group_size]`` (zero padded)."""
    N, in_f = counts.shape
    c = torch.empty(N, G * group_size, dtype=dtype, device=counts.device)
    c[:, :in_f].copy_(counts)       # |c| > 2**24 may round here, but stays beyond the bound
    c[:, in_f:].zero_()
    return c.clamp_(-bound, bound)


def _float_codes(codes: torch.Tensor, g0: int, g1: int, group_size: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Groups ``g0:g1`` of the int8 codes as ``[g1 - g0, group_size, out]`` floats (a
    strided view BLAS reads as transposed matrices; the last group zero padded)."""
    out_f, in_f = codes.shape
    a, b = g0 * group_size, min(g1 * group_size, in_f)
    w = torch.empty(out_f, (g1 - g0) * group_size, dtype=dtype, device=codes.device)
    w[:, :b - a].copy_(codes[:, a:b])
    w[:, b - a:].zero_()
    return w.view(out_f, g1 - g0, group_size).permute(1, 2, 0)


def _outliers(counts: torch.Tensor, bound: int):
    """The part of ``counts`` beyond ``+-bound``: ``(token, channel, counts - clamp)``
    (int64), sorted by channel."""
    tok, ch = ((counts > bound) | (counts < -bound)).nonzero(as_tuple=True)
    c = counts[tok, ch].to(torch.int64)
    rest = c - c.clamp(-bound, bound)
    order = torch.argsort(ch, stable=True)
    return tok[order], ch[order], rest[order]


def _peak(counts: torch.Tensor) -> int:
    """``max |count|`` as a Python int (no overflow at the dtype's minimum)."""
    if not counts.numel():
        return 0
    lo, hi = torch.aminmax(counts)
    return max(-int(lo), int(hi))


def group_sums(counts: torch.Tensor, codes: torch.Tensor, group_size: int,
               chunk_bytes: int = _CHUNK_BYTES):
    """Exact ``acc[g, n, o] = sum_{i in group g} codes[o, i] * counts[n, i]``, group by
    group in order: yields ``(g, acc_g)`` with ``acc_g [N, out]`` exact integers in float32
    (float64 when the host reduced float32 matmul precision), or, for a group outliers
    touch, float64 (int64 when its sums may pass 2**53).

    The one exact scheme both the integer path and the simulator use. Counts are split
    into a bounded part ``clamp(c, -B, B)`` with ``B = f32_count_bound(group_size)``,
    whose group products are exact in float32 BLAS whatever the order of its additions,
    and the rest ``c - clamp(c)``, nonzero only at the few outlier elements (massive
    activations), whose products ``rest * code`` are added, exactly, to the rows of the
    groups they fall in. Cost: one float32 GEMM of the layer's size (batched over groups
    of ``group_size`` inputs) plus ``outliers x out`` multiply-adds, whatever the largest
    count. The float32 products run a chunk of groups at a time (``chunk_bytes``).
    """
    N, in_f = counts.shape
    out_f = codes.shape[0]
    if codes.shape[1] != in_f:
        raise ValueError(f"group_sums: counts have {in_f} channels but the codes {codes.shape[1]}")
    G = num_groups(in_f, group_size)
    if _ieee_float32_matmul(counts.device):
        ft, bound = torch.float32, f32_count_bound(group_size)
    else:
        ft, bound = torch.float64, _f64_count_bound(group_size)
    c = _float_counts(counts, G, group_size, bound, ft)
    cg = c.view(N, G, group_size).transpose(0, 1)          # [G, N, gs], strided
    peak = _peak(counts)
    starts = None
    if peak > bound:
        tok, ch, rest = _outliers(counts, bound)
        starts = torch.searchsorted(ch, torch.arange(G + 1, device=ch.device) * group_size).tolist()
        wide = torch.float64 if peak * _CODE_LIMIT * group_size < 2 ** 53 else torch.int64
    # Groups per chunk: the chunk's products [groups, N, out] and its float weights
    # [groups, gs, out] both within chunk_bytes (large temporaries would be fresh memory,
    # page-faulted on every call).
    step = max(1, chunk_bytes // max(1, max(N, group_size) * out_f * c.element_size()))
    # Weights that fit the budget are cast once, in one contiguous pass (a cast of group
    # slices reads short strided rows: several times slower).
    whole = _float_codes(codes, 0, G, group_size, ft) if G * group_size * out_f * c.element_size() <= chunk_bytes else None
    for g0 in range(0, G, step):
        g1 = min(G, g0 + step)
        w = whole[g0:g1] if whole is not None else _float_codes(codes, g0, g1, group_size, ft)
        acc = torch.bmm(cg[g0:g1], w)
        for g in range(g0, g1):
            if starts is None or starts[g + 1] == starts[g]:
                yield g, acc[g - g0]
                continue
            exact = acc[g - g0].to(wide)
            per = max(1, chunk_bytes // (8 * out_f))
            for a in range(starts[g], starts[g + 1], per):
                b = min(a + per, starts[g + 1])
                cols = torch.index_select(codes, 1, ch[a:b]).t().to(wide)
                exact.index_add_(0, tok[a:b], cols * rest[a:b, None].to(wide))
            yield g, exact


# ----------------------------------------------------------------------- the int8 route
FLOAT32_ROUTE = "float32 BLAS"
INT8_ROUTE = "int8 (torch._int_mm)"
ROUTES = ("auto", "int8", "float32")
# Counts enter the int8 GEMM clamped to +-127; the rest goes through the outlier sums.
INT8_COUNT_BOUND = 127
# One group's int32 accumulator holds at most 127 * 128 * group_size: below 2**31 up to
# 132,104 inputs per group (GROUP_SIZE_LIMIT, the format's largest group, is 65,536).
INT8_GROUP_LIMIT = (2 ** 31 - 1) // (INT8_COUNT_BOUND * _CODE_LIMIT)

_forced: ContextVar[str] = ContextVar("sbsnn_integer_route", default="auto")
_INT8_WORKS: dict[str, bool] = {}


def _check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"route must be one of {', '.join(map(repr, ROUTES))}, got {route!r}")
    return route


@contextmanager
def forced_route(route: str):
    """Within the block, in this thread (a context variable), the integer path and the
    simulator compute their group sums on ``route``: ``"float32"`` (the reference),
    ``"int8"`` (where the device and shape allow, else still the reference) or
    ``"auto"`` (the default: int8 where available). Both give the same bits."""
    token = _forced.set(_check_route(route))
    try:
        yield
    finally:
        _forced.reset(token)


def _int8_gemm_works(device: torch.device) -> bool:
    """Whether ``torch._int_mm`` runs, exactly, on ``device``'s type (probed once)."""
    key = device.type
    if key not in _INT8_WORKS:
        ok = False
        if hasattr(torch, "_int_mm") and key in ("cpu", "cuda"):
            try:
                g = torch.Generator().manual_seed(0)
                a = torch.randint(-127, 128, (32, 32), dtype=torch.int8, generator=g)
                b = torch.randint(-128, 128, (32, 32), dtype=torch.int8, generator=g)
                got = torch._int_mm(a.to(device), b.to(device)).cpu()
                ok = got.dtype == torch.int32 and torch.equal(got.to(torch.int64),
                                                               a.to(torch.int64) @ b.to(torch.int64))
            except (RuntimeError, NotImplementedError):
                ok = False
        _INT8_WORKS[key] = ok
    return _INT8_WORKS[key]


def integer_route(device: torch.device | str = "cpu", route: str | None = None) -> str:
    """The route the group sums take on ``device``: :data:`INT8_ROUTE` where the host's
    torch has an exact int8 GEMM for it, else :data:`FLOAT32_ROUTE`. ``route``: as
    :func:`forced_route` (None: the one in force). A shape the device's int8 GEMM
    refuses (CUDA: 16 tokens or fewer, widths not multiples of 8) falls back per call."""
    route = _check_route(_forced.get() if route is None else route)
    if route != "float32" and _int8_gemm_works(torch.device(device)):
        return INT8_ROUTE
    return FLOAT32_ROUTE


def route_description(device: torch.device | str = "cpu", route: str | None = None) -> str:
    """:func:`integer_route` and, on the CPU's int8 route, what rescales the sums: the
    fused kernels (:mod:`~sbsnn.converters.int8_kernels`) or torch operations."""
    name = integer_route(device, route)
    if name != INT8_ROUTE or torch.device(device).type != "cpu":
        return name
    if int8_kernels.available():
        import numba
        return f"{name} + fused CPU kernels (numba {numba.__version__})"
    return f"{name} + rescale by torch operations (numba not installed: pip install numba)"


def _int8_shape_ok(device: torch.device, tokens: int, in_f: int, out_f: int, group_size: int) -> bool:
    if group_size > INT8_GROUP_LIMIT:
        return False
    if device.type == "cuda":     # cuBLASLt's int8 GEMM: m > 16, k and n multiples of 8
        return tokens > 16 and group_size % 8 == 0 and in_f % 8 == 0 and out_f % 8 == 0
    return True


def _row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` (2-D) with strides ``(columns, 1)``. ``contiguous()`` is not enough: it keeps
    a size-1 dimension's stride as it was (``[2, 1].t()`` is "contiguous" with strides
    ``(1, 1)``), and ``torch._int_mm`` on the CPU (torch 2.13) then reads wrong memory."""
    if t.stride() == (t.shape[1], 1):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


def int8_codes_t(codes: torch.Tensor) -> torch.Tensor:
    """The int8 codes ``[out, in]`` as the int8 GEMM reads them: ``[in, out]`` row-major."""
    return _row_major(codes.t())


def _int8_digits(counts: torch.Tensor, bound: int):
    """The rows of ``counts`` holding an element beyond ``+-bound`` (127) and those rows'
    balanced base-255 int8 digits: ``c = d0 + 255 d1 + 255**2 d2 + ...``, each in
    [-127, 127] (two digits up to 32,512, at most eight for int64)."""
    rows = ((counts > bound) | (counts < -bound)).any(1).nonzero().squeeze(1)
    c = counts[rows].to(torch.int64)
    digits = []
    while True:
        hi = torch.div(c + bound, 2 * bound + 1, rounding_mode="floor")
        digits.append(_row_major((c - (2 * bound + 1) * hi).to(torch.int8)))
        if not bool(hi.any()):
            return rows, digits
        c = hi


def group_sums_int8(counts: torch.Tensor, codes: torch.Tensor, group_size: int,
                    codes_t: torch.Tensor | None = None):
    """:func:`group_sums` on the int8 route: yields ``(g, acc_g)``, the same integers, as
    int32 (int64 when outliers may take a group's sums past 2**31). ``codes_t``:
    :func:`int8_codes_t` of ``codes`` (made here when not given).

    Each group is one ``torch._int_mm`` of ``[N, group] @ [group, out]`` on the counts
    as int8 (exact in int32, see :data:`INT8_GROUP_LIMIT`). Counts beyond +-127 (massive
    activations) are split into int8 digits of base 255 (:func:`_int8_digits`): the
    lowest digit goes through the main product, the higher ones through products of the
    rows that have them (all rows when they are most), added in with their weights
    ``255**k``. Measured (one thread, 823 x 640 -> 2048 in blocks of 64 tokens, counts up
    to 1e4): with 58 / 550 / 5,070 outliers or 4 massive channels, 26 / 36 / 95 / 63 ms
    holding the outliers as sparse ``rest x code`` column sums (as :func:`group_sums`
    does), 31 / 27 / 29 / 29 ms as whole-frame digits, 18 ms without outliers.
    """
    N, in_f = counts.shape
    if codes.shape[1] != in_f:
        raise ValueError(f"group_sums_int8: counts have {in_f} channels but the codes {codes.shape[1]}")
    if group_size > INT8_GROUP_LIMIT:
        raise ValueError(f"group_sums_int8: group_size {group_size} > {INT8_GROUP_LIMIT} "
                         "would overflow int32; use group_sums")
    G = num_groups(in_f, group_size)
    codes_t = int8_codes_t(codes) if codes_t is None else _row_major(codes_t)
    bound = INT8_COUNT_BOUND
    c8 = _row_major(counts.clamp(-bound, bound).to(torch.int8))
    highs = []
    peak = _peak(counts)
    if peak > bound:
        rows, digits = _int8_digits(counts, bound)
        c8[rows] = digits[0]
        highs = digits[1:]
        if 2 * len(rows) >= N:      # most rows: whole-frame digits, added without a gather
            for i, d in enumerate(highs):
                highs[i] = torch.zeros_like(c8).index_copy_(0, rows, d)
            rows = None
        busy = torch.zeros_like(highs[0], dtype=torch.bool)
        for d in highs:
            busy |= d != 0
        wide = torch.int32 if int8_sums_bound(peak, group_size) < 2 ** 31 else torch.int64
    for g in range(G):
        a, b = g * group_size, min((g + 1) * group_size, in_f)
        acc = torch._int_mm(c8[:, a:b], codes_t[a:b])
        if not highs or not bool(busy[:, a:b].any()):
            yield g, acc
            continue
        acc = acc.to(wide)
        add, weight = None, 1
        for d in highs:
            weight *= 2 * bound + 1
            part = torch._int_mm(d[:, a:b], codes_t[a:b]).to(wide)
            add = part.mul_(weight) if add is None else add.add_(part, alpha=weight)
        yield g, acc.add_(add) if rows is None else acc.index_add_(0, rows, add)


def int8_sums_bound(peak: int, group_size: int) -> int:
    """A bound on every group sum and partial sum of the int8 route for counts up to
    ``peak`` in magnitude: each balanced digit's term, and each clamped count plus its
    rest, is at most 2 |c| per element."""
    return 2 * max(peak, INT8_COUNT_BOUND) * _CODE_LIMIT * group_size


def _fused_group_sums(counts: torch.Tensor, codes_t: torch.Tensor, group_size: int) -> torch.Tensor:
    """:func:`group_sums_int8`'s integers as one int32 ``[G, N, out]`` tensor, for the
    fused rescale: counts clamped to int8 and the outliers' rest in one pass
    (:func:`~sbsnn.converters.int8_kernels.split_counts`), one ``torch._int_mm`` per group,
    the rest added element by element (:func:`~sbsnn.converters.int8_kernels.add_outliers`).
    The caller vouches that :func:`int8_sums_bound` is below 2**31."""
    N, in_f = counts.shape
    G = num_groups(in_f, group_size)
    c8, outliers = int8_kernels.split_counts(counts, INT8_COUNT_BOUND)
    acc = torch.empty(G, N, codes_t.shape[1], dtype=torch.int32)
    for g in range(G):
        a, b = g * group_size, min((g + 1) * group_size, in_f)
        torch._int_mm(c8[:, a:b], codes_t[a:b], out=acc[g])
    if outliers is not None:
        int8_kernels.add_outliers(acc, *outliers, codes_t, group_size)
    return acc


def group_accumulate(counts: torch.Tensor, codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """Exact integer sums ``acc[g, n, o] = sum_{i in group g} codes[o, i] * counts[n, i]``.

    counts ``[N, in]`` (any integer dtype), codes ``[out, in]`` int8 -> int64
    ``[G, N, out]``, equal to :func:`group_accumulate_reference` for every count (see
    :func:`group_sums` for how).
    """
    N, in_f = counts.shape
    G = num_groups(in_f, group_size)
    acc = torch.empty(G, N, codes.shape[0], dtype=torch.int64, device=counts.device)
    for g, part in group_sums(counts, codes, group_size):
        acc[g].copy_(part)
    return acc


def rescale(acc, scales: torch.Tensor, v_th: torch.Tensor,
            bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``y[n, o] = V_th[n] * sum_g scale[o, g] * acc[g, n, o] + b[o]``, in a fixed order.

    ``acc``: exact integer group sums, ``[G, N, out]`` (any dtype), or the ``(g, acc_g)``
    pairs :func:`group_sums` yields. Works in float64 from ``y = 0``, adding
    ``scale_g * acc_g`` group after group (an integer below 2**29 times a float32 scale
    is exact there, so each step rounds once), then ``* V_th``, ``+ b``, and rounds once
    to ``dtype`` at the end. Elementwise: a token's result does not depend on the other
    tokens of the call.
    """
    s = scales.t().to(torch.float64)                        # [G, out]
    groups = enumerate(acc) if isinstance(acc, torch.Tensor) else acc
    y = None
    for g, part in groups:
        if y is None:
            y = torch.zeros(part.shape, dtype=torch.float64, device=part.device)
        y.addcmul_(part, s[g])
    if y is None:
        raise ValueError("rescale: no group sums given")
    y.mul_(v_th.to(torch.float64))
    if bias is not None:
        y.add_(bias.to(torch.float64))
    return y.to(dtype)


# Work (multiply-adds) below which a layer call runs on the caller's thread alone, with
# torch's own threads. Measured on 2 cores (torch 2.13): sbsnn's workers halve a
# 7B-shaped call (512 x 3584 -> 18944, 35G MACs: 1.9x the float matmul instead of 3.9x),
# break even near 1G (Gemma-shaped, 823 x 640 -> 2048), and double the time of the
# ~100M-MAC calls of 100M-parameter hybrids (Qwen3-Next's experts: 3.6x -> 1.7x inline).
_PARTS_MIN_MACS = 1 << 30
_PARTS_MIN_COLUMNS = 64
_FEW_TOKENS = 64
# The int8 route's token blocks go to sbsnn's workers from this much work on. With the
# fused kernels a call is a few GEMMs (torch's threads) and one kernel pass, and the
# workers' hand-offs cost more than they save below this: measured on 2 quiet cores,
# SmolLM2-135M's forward (823 tokens, calls of 91-728M MACs) takes 0.78-0.93x the float
# forward inline and 0.95-1.22x with the workers; Gemma 3 270M's (up to 1.1G) 0.75-0.97x
# inline and 0.80-1.03x with them.
_INT8_PARTS_MIN_MACS = 1 << 32


def scales_t64(scales: torch.Tensor) -> torch.Tensor:
    """The group scales ``[out, G]`` as :mod:`~sbsnn.converters.int8_kernels` reads them:
    float64 ``[G, out]``, row-major."""
    return scales.t().to(torch.float64).contiguous()


def _fused_ok(counts: torch.Tensor, dtype: torch.dtype) -> bool:
    return (counts.device.type == "cpu" and dtype in int8_kernels.OUT_DTYPES
            and int8_kernels.available())


def _linear_inline(counts, codes, scales, v_th, bias, group_size, dtype, codes_t=None,
                   scales_t=None):
    if codes_t is None:
        return rescale(group_sums(counts, codes, group_size), scales, v_th, bias, dtype)
    if (_fused_ok(counts, dtype)
            and int8_sums_bound(_peak(counts), group_size) < int8_kernels.EXACT_SUM_BOUND):
        # One pass of rescale over the int32 sums (same integers, same order, same bits).
        return int8_kernels.rescale_groups(_fused_group_sums(counts, _row_major(codes_t), group_size),
                                           scales_t64(scales) if scales_t is None else scales_t,
                                           v_th, bias, dtype)
    return rescale(group_sums_int8(counts, codes, group_size, codes_t), scales, v_th, bias, dtype)


# The int8 route runs in blocks of tokens whose float64 output (which rescale passes over
# once per group) stays in cache: measured (1 thread, Gemma's 823 x 640 -> 2048, group
# 128), blocks of 64 rows take 18 ms, the whole call at once 25 ms (the int8 GEMMs 7).
_INT8_BLOCK_BYTES = 1 << 20
_INT8_MIN_ROWS = 16


# With the fused rescale the block's working set is its int32 group sums [G, rows, out]:
# measured (1 thread, 823 tokens, group 128) 128-256 rows of 576 -> 1536 or 640 -> 2048
# (2.5-5 MB of sums) run 10-40 % faster than 64, and 576 -> 192 fastest in one block.
_INT8_FUSED_BLOCK_BYTES = 4 << 20
# Up to this many tokens the whole layer is one fused loop over the weight rows
# (int8_kernels.int8_linear): decoding, where one GEMM call per group costs more than its work.
_GEMV_MAX_ROWS = 4


def _int8_block_rows(in_f: int, out_f: int, group_size: int) -> int:
    if int8_kernels.available():
        per_row = 4 * num_groups(in_f, group_size) * out_f
        return max(_INT8_MIN_ROWS, _INT8_FUSED_BLOCK_BYTES // per_row)
    return max(_INT8_MIN_ROWS, _INT8_BLOCK_BYTES // (8 * out_f))


def _linear_int8(counts, codes, scales, v_th, bias, group_size, dtype, codes_t, scales_t=None):
    N, in_f = counts.shape
    out_f = codes.shape[0]
    if _fused_ok(counts, dtype) and scales_t is None:
        scales_t = scales_t64(scales)
    if N <= _GEMV_MAX_ROWS and _fused_ok(counts, dtype):
        y = int8_kernels.int8_linear(counts, _row_major(codes_t), group_size, scales_t, v_th,
                                     bias, dtype)
        if y is not None:
            return y
    workers = 1
    if counts.device.type == "cpu" and N * in_f * out_f >= _INT8_PARTS_MIN_MACS:
        workers = workers_for(N // _INT8_MIN_ROWS)
    rows = _int8_block_rows(in_f, out_f, group_size)
    if workers > 1:                         # at least two blocks per worker
        rows = max(_INT8_MIN_ROWS, min(rows, -(-N // (2 * workers))))
    if N <= rows:
        return _linear_inline(counts, codes, scales, v_th, bias, group_size, dtype, codes_t,
                              scales_t)
    blocks = [(a, min(a + rows, N)) for a in range(0, N, rows)]
    workers = min(workers, len(blocks))
    out = torch.empty(N, out_f, dtype=dtype, device=counts.device)

    def part(ab):
        a, b = ab
        out[a:b] = _linear_inline(counts[a:b], codes, scales, v_th[a:b], bias, group_size,
                                  dtype, codes_t, scales_t)

    run_parts(part, blocks, workers)
    return out


def linear_from_counts(counts: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                       v_th: torch.Tensor, bias: torch.Tensor | None, group_size: int,
                       dtype: torch.dtype, route: str | None = None,
                       codes_t: torch.Tensor | None = None,
                       scales_t: torch.Tensor | None = None) -> torch.Tensor:
    """``rescale(group_accumulate(counts, codes, group_size), scales, v_th, bias, dtype)``
    without the int64 ``[G, N, out]`` intermediate: each group's exact sums are folded into
    the float64 output as they are made (same integers, same order, same bits).

    ``route``: as :func:`forced_route` (None: the one in force); on the int8 route
    (:func:`group_sums_int8`) ``codes_t`` is :func:`int8_codes_t` of ``codes`` (a
    ``SpikingLinear`` keeps it), made here when not given. A shape the device's int8
    GEMM refuses takes the float32 route (:func:`group_sums`).

    Large calls run as blocks of output columns, on a CPU with several torch threads by
    sbsnn's single-threaded workers (:mod:`sbsnn.neurons.workers`): one hand-off per block
    instead of a fork/join of torch's threads per operation. Every output element is
    computed by the same operations whatever the blocks, so the result is the same, bit
    for bit."""
    N, in_f = counts.shape
    out_f = codes.shape[0]
    if (integer_route(counts.device, route) == INT8_ROUTE
            and _int8_shape_ok(counts.device, N, in_f, out_f, group_size)):
        return _linear_int8(counts, codes, scales, v_th, bias, group_size, dtype,
                            int8_codes_t(codes) if codes_t is None else codes_t, scales_t)
    workers = 1
    if counts.device.type == "cpu" and N * in_f * out_f >= _PARTS_MIN_MACS:
        workers = workers_for(out_f // _PARTS_MIN_COLUMNS)
    # With few tokens the weights' cast to float dominates (float32 route): then use column
    # blocks whose float weights fit one chunk, each cast in one contiguous pass.
    by_weights = 1
    if N <= _FEW_TOKENS:
        by_weights = -(-out_f * num_groups(in_f, group_size) * group_size * 4 // _CHUNK_BYTES)
    parts = max(4 * workers if workers > 1 else 1, by_weights)
    parts = max(1, min(parts, out_f // _PARTS_MIN_COLUMNS))
    if parts <= 1:
        return _linear_inline(counts, codes, scales, v_th, bias, group_size, dtype)
    bounds = [out_f * p // parts for p in range(parts + 1)]
    out = torch.empty(N, out_f, dtype=dtype, device=counts.device)

    def part(ab):
        a, b = ab
        out[:, a:b] = _linear_inline(counts, codes[a:b], scales[a:b], v_th,
                                     None if bias is None else bias[a:b], group_size, dtype)

    run_parts(part, list(zip(bounds[:-1], bounds[1:])), workers)
    return out
