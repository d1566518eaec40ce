"""The CPU kernels of the int8 route, compiled with numba where it is installed.

The integer path's arithmetic (:mod:`sbsnn.converters.quant`) is exact group sums, then
:func:`~sbsnn.converters.quant.rescale`: ``y = V_th * (((0 + s_0 a_0) + s_1 a_1) + ...)
+ b`` in float64, rounded once to the output dtype. With torch operations alone the
rescale is ``G`` passes over a float64 ``[tokens, out]`` buffer per layer call, each a
cast, a multiply and an add: on 2 cores it cost more than the int8 GEMMs themselves, and
kept the spiking model slower than its float model. Here it is one pass, with each
token's row in registers:

- :func:`rescale_groups`: int32 group sums ``[G, N, out]`` (from ``torch._int_mm``) to
  the output, for prompts;
- :func:`int8_linear`: the group sums and the rescale in one loop over the weight rows,
  for one token or a few (decoding), where a GEMM call per group costs more than its work;
- :func:`spike_linear`: decoding's whole layer, the counts of the spike formula made and
  summed in the same loop (no counts tensor, one call from Python per layer);
- :func:`add_outliers`: the counts beyond the int8 GEMM's +-127, element by element.

Same arithmetic, same order, same bits as the reference (``tests/test_int8_route.py``
holds them to it): the kernels run only where every product ``s_g * a_g`` is exact in
float64 (``|a_g| < 2**29`` times a float32 scale), so a fused multiply-add and a multiply
then an add round alike. Where numba is missing, the dtype is not float32 / float64, or
the sums could pass that bound, :mod:`~sbsnn.converters.quant` takes the torch route.
"""

from __future__ import annotations

import threading

import torch

from sbsnn.neurons.jit import njit

# |a_g| below this: a_g * scale (float32, 24 significant bits) is exact in float64.
EXACT_SUM_BOUND = 2 ** 29
# The output dtypes the kernels write (numpy has no bfloat16).
OUT_DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()
_kernels: dict | None = None


def _compile() -> dict:
    """The numba kernels (an empty dict without numba), made once per process."""
    global _kernels
    with _lock:
        if _kernels is not None:
            return _kernels
        jit = njit()
        if jit is None:
            _kernels = {}
            return _kernels
        import numpy as np

        @jit
        def rescale_kernel(acc, s, v, b, has_bias, out):
            G, N, O = acc.shape
            y = np.empty(O, np.float64)
            for n in range(N):
                for o in range(O):
                    y[o] = acc[0, n, o] * s[0, o]
                for g in range(1, G):
                    for o in range(O):
                        y[o] = y[o] + acc[g, n, o] * s[g, o]
                vn = np.float64(v[n])
                if has_bias:
                    for o in range(O):
                        out[n, o] = y[o] * vn + np.float64(b[o])
                else:
                    for o in range(O):
                        out[n, o] = y[o] * vn

        @jit
        def gemv_row(c, codes_t, group_size, s, vn, b, has_bias, acc, y, out_row):
            # One row's exact group sums and rescale, event-driven: each nonzero count c[i]
            # adds its weight row (codes_t [in, out], contiguous) into the group's int32
            # sums; zero counts cost nothing. The callers bound |c| so no sum can round.
            width = c.shape[0]
            O = codes_t.shape[1]
            for g in range(s.shape[0]):
                acc[:] = 0
                for i in range(g * group_size, min((g + 1) * group_size, width)):
                    ci = c[i]
                    if ci != 0:
                        for o in range(O):
                            acc[o] += np.int32(codes_t[i, o] * ci)
                if g == 0:
                    for o in range(O):
                        y[o] = acc[o] * s[0, o]
                else:
                    for o in range(O):
                        y[o] = y[o] + acc[o] * s[g, o]
            if has_bias:
                for o in range(O):
                    out_row[o] = y[o] * vn + np.float64(b[o])
            else:
                for o in range(O):
                    out_row[o] = y[o] * vn

        @jit
        def linear_kernel(src, v, spike, codes_t, group_size, limit, s, b, has_bias, out):
            # Row by row: the counts (src itself; or, with spike, the spike formula's
            # round(src / v[n]) in src's dtype: IEEE division, round half to even, as
            # torch.div and torch.round), then gemv_row. False (out unfinished) at a count
            # beyond +-limit, whose sums could round, or a NaN / Inf.
            N, width = src.shape
            O = codes_t.shape[1]
            acc = np.empty(O, np.int32)
            y = np.empty(O, np.float64)
            c = np.empty(width, np.int32)
            for n in range(N):
                vn = v[n]
                for i in range(width):
                    q = np.rint(src[n, i] / vn) if spike else src[n, i]
                    if not (q <= limit and q >= -limit):
                        return False
                    c[i] = np.int32(q)
                gemv_row(c, codes_t, group_size, s, np.float64(vn), b, has_bias, acc, y, out[n])
            return True

        @jit
        def split_kernel(counts, bound, c8):
            N, W = counts.shape
            hits = 0
            for n in range(N):
                for i in range(W):
                    c = counts[n, i]
                    if c > bound:
                        c8[n, i] = bound
                        hits += 1
                    elif c < -bound:
                        c8[n, i] = -bound
                        hits += 1
                    else:
                        c8[n, i] = c
            return hits

        @jit
        def collect_kernel(counts, bound, rows, cols, rest):
            N, W = counts.shape
            e = 0
            for n in range(N):
                for i in range(W):
                    c = counts[n, i]
                    if c > bound or c < -bound:
                        rows[e] = n
                        cols[e] = i
                        rest[e] = c - bound if c > bound else c + bound
                        e += 1

        @jit
        def outlier_kernel(acc, rows, cols, rest, codes_t, group_size):
            O = acc.shape[2]
            for e in range(rows.shape[0]):
                n, i, r = rows[e], cols[e], rest[e]
                g = i // group_size
                for o in range(O):
                    acc[g, n, o] += r * codes_t[i, o]

        _kernels = {"rescale": rescale_kernel, "linear": linear_kernel, "split": split_kernel,
                    "collect": collect_kernel, "outliers": outlier_kernel}
        return _kernels


def available() -> bool:
    """Whether the kernels run here (numba importable)."""
    return bool(_compile())


def _np(t: torch.Tensor):
    return t.detach().numpy()


_NO_BIAS = torch.zeros(1)


def _plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` as numpy can hold it (no bfloat16: widened, exactly), contiguous."""
    if t.dtype not in OUT_DTYPES:
        t = t.to(torch.float64)
    return t if t.is_contiguous() else t.contiguous()


def _vectors(v_th: torch.Tensor, bias: torch.Tensor | None, n: int):
    """The thresholds (one per row) and the bias as they are: the kernels widen each
    value to float64 where the reference casts the tensor (the same values)."""
    return _plain(v_th.detach().reshape(n)), _bias(bias)


def _bias(bias: torch.Tensor | None) -> torch.Tensor:
    """The bias as the kernels take it (a placeholder where there is none)."""
    return _NO_BIAS if bias is None else _plain(bias.detach())


def _count_limit(group_size: int) -> int:
    """The largest |count| whose group sums (|code| <= 128, ``group_size`` counts a
    group) stay below :data:`EXACT_SUM_BOUND`."""
    return (EXACT_SUM_BOUND - 1) // (128 * group_size)


# Every function below: the caller vouches that the kernels run here (available(), CPU
# tensors, an output dtype in OUT_DTYPES) and for the bounds each names.

def _check(cond: bool, what) -> None:
    """Compiled code does not check its indices: a wrong shape must never reach it.
    ``what``: the message, or a callable that makes it (kept off the hot path)."""
    if not cond:
        raise ValueError(f"int8_kernels: {what() if callable(what) else what}")


def _check_scales(scales_t: torch.Tensor, G: int, O: int) -> None:
    _check(scales_t.dtype == torch.float64 and scales_t.is_contiguous()
           and tuple(scales_t.shape) == (G, O),
           lambda: f"scales_t must be contiguous float64 [{G}, {O}], got {scales_t.dtype} "
                   f"{tuple(scales_t.shape)}")


def rescale_groups(acc: torch.Tensor, scales_t: torch.Tensor, v_th: torch.Tensor,
                   bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """:func:`~sbsnn.converters.quant.rescale` of int32 group sums ``acc [G, N, out]``,
    ``|acc| < EXACT_SUM_BOUND``, with ``scales_t = scales.t()`` as float64 ``[G, out]``."""
    _check(acc.dim() == 3 and acc.dtype == torch.int32, lambda: f"acc must be int32 [G, N, out], got "
           f"{acc.dtype} {tuple(acc.shape)}")
    G, N, O = acc.shape
    _check_scales(scales_t, G, O)
    _check(v_th.numel() == N and (bias is None or bias.numel() == O), "v_th or bias of the wrong size")
    out = torch.empty(N, O, dtype=dtype)
    v, b = _vectors(v_th, bias, N)
    _compile()["rescale"](_np(acc), _np(scales_t), _np(v), _np(b), bias is not None, _np(out))
    return out


def split_counts(counts: torch.Tensor, bound: int):
    """``counts [N, in]`` (``|counts|`` within int32) clamped to ``+-bound`` as int8, and
    the part beyond as ``(rows, cols, rest)`` (int64, int64, int32; None when there is
    none): one pass, and a second over the counts only when outliers exist."""
    k = _compile()
    c = counts.contiguous()
    c8 = torch.empty(c.shape, dtype=torch.int8)
    hits = k["split"](_np(c), bound, _np(c8))
    if not hits:
        return c8, None
    rows = torch.empty(hits, dtype=torch.int64)
    cols = torch.empty(hits, dtype=torch.int64)
    rest = torch.empty(hits, dtype=torch.int32)
    k["collect"](_np(c), bound, _np(rows), _np(cols), _np(rest))
    return c8, (rows, cols, rest)


def add_outliers(acc: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, rest: torch.Tensor,
                 codes_t: torch.Tensor, group_size: int) -> None:
    """Add the outliers' rest (:func:`split_counts`) times their weight rows (``codes_t``
    ``[in, out]``) to the int32 group sums ``acc [G, N, out]``: ``outliers x out``
    multiply-adds, where a second int8 GEMM of their digits costs a whole GEMM per group
    they touch. The sums must stay in int32."""
    G, N, O = acc.shape
    _check(codes_t.dim() == 2 and codes_t.shape[1] == O and codes_t.dtype == torch.int8,
           "codes_t must be int8 [in, out]")
    _check(rows.numel() == cols.numel() == rest.numel(), "rows, cols and rest differ in length")
    if rows.numel():
        _check(int(rows.min()) >= 0 and int(rows.max()) < N and int(cols.min()) >= 0
               and int(cols.max()) < min(codes_t.shape[0], G * group_size),
               "an outlier's row or column is outside the sums")
    _compile()["outliers"](_np(acc), _np(rows), _np(cols), _np(rest), _np(codes_t.contiguous()),
                           group_size)


def int8_linear(counts: torch.Tensor, codes_t: torch.Tensor, group_size: int, scales_t: torch.Tensor,
                v_th: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The whole integer path of a few tokens: ``counts [N, in]``, ``codes_t`` int8
    ``[in, out]`` row-major, ``scales_t`` float64 ``[G, out]``. None where a count could
    take its group sums to :data:`EXACT_SUM_BOUND` (then the caller takes the GEMMs)."""
    N, W = counts.shape
    O = codes_t.shape[1]
    if not (codes_t.dim() == 2 and codes_t.shape[0] == W and codes_t.dtype == torch.int8
            and v_th.numel() == N and (bias is None or bias.numel() == O)):
        _check(False, f"codes_t must be int8 [{W}, out] and v_th, bias one per row, column; got "
                      f"codes_t {codes_t.dtype} {tuple(codes_t.shape)}")
    _check_scales(scales_t, -(-W // group_size), O)
    out = torch.empty(N, O, dtype=dtype)
    v, b = _vectors(v_th, bias, N)
    limit = _count_limit(group_size)
    done = _compile()["linear"](_np(counts.contiguous()), _np(v), False, _np(codes_t.contiguous()),
                                group_size, limit, _np(scales_t), _np(b), bias is not None,
                                _np(out))
    return out if done else None


def spike_linear(x2: torch.Tensor, v_th: torch.Tensor, codes_t: torch.Tensor, group_size: int,
                 scales_t: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor | None:
    """The integer path of a few rows of activations ``x2 [N, in]`` (float32 or float64,
    contiguous) whose thresholds ``v_th [N, 1]`` (``x2``'s dtype) are given: the counts
    ``round(x2 / v_th)`` (as :func:`~sbsnn.neurons.formula.spike_counts_reference` makes
    them) summed and rescaled as :func:`int8_linear` does, in one loop. None where a count
    could take its group sums to :data:`EXACT_SUM_BOUND`, or ``x2`` holds NaN or Inf (the
    caller takes the general path, which handles the one and names the other)."""
    N, W = x2.shape
    O = codes_t.shape[1]
    _check(x2.dtype in OUT_DTYPES and x2.is_contiguous() and v_th.dtype == x2.dtype
           and tuple(v_th.shape) == (N, 1), lambda: f"x2 must be contiguous float32 / float64 and v_th "
           f"[{N}, 1] of its dtype; got {x2.dtype} {tuple(x2.shape)}, v_th {v_th.dtype} "
           f"{tuple(v_th.shape)}")
    _check(codes_t.dim() == 2 and codes_t.shape[0] == W and codes_t.dtype == torch.int8
           and codes_t.is_contiguous() and (bias is None or bias.numel() == O),
           lambda: f"codes_t must be contiguous int8 [{W}, out] and the bias one per column")
    _check_scales(scales_t, -(-W // group_size), O)
    out = torch.empty(N, O, dtype=dtype)
    b = _bias(bias)
    limit = _count_limit(group_size)
    done = _compile()["linear"](_np(x2), _np(v_th.reshape(N)), True, _np(codes_t), group_size,
                                limit, _np(scales_t), _np(b), bias is not None, _np(out))
    return out if done else None
