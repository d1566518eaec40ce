"""The spike formula: its constants, the checks of its inputs, and its plain reference.

SpikingBrain's formula (spikingbrain.md §1-2), for an activation ``x`` with features on
the last dimension::

    V_th  = clamp(mean(|x|, dim=-1) / k, 1e-5, 1e4)     one threshold per token (row)
    s_INT = round(x / V_th)                              round half to even, not clipped

:func:`spike_counts_reference` is that formula in plain torch, a few lines: the fast
:func:`~sbsnn.neurons.scan.spike_counts`, the CuPy kernel's reference
(:mod:`sbsnn.sim.cupy_backend`) and the tests all hold themselves to it, bit for bit.
The checks here raise :class:`SpikeCodingError` (an :class:`~sbsnn.errors.OptionError`,
so a ``ValueError``) with a message that names the fix; ``k`` is checked by
:func:`sbsnn.checks.check_k`, the one check of k.
"""

from __future__ import annotations

import functools
import importlib
from typing import Optional

import torch

from sbsnn.errors import OptionError

__all__ = [
    "CODINGS",
    "DEFAULT_K",
    "V_TH_MIN",
    "V_TH_MAX",
    "INT_DTYPES",
    "SpikeCodingError",
    "eager",
    "check_coding",
    "check_activation",
    "check_counts",
    "binary_negative_error",
    "spike_counts_reference",
    "dequantize",
]

CODINGS = ("binary", "ternary", "bitwise", "twos_complement")
DEFAULT_K = 3.0
V_TH_MIN = 1e-5  # upstream clamps the threshold to [1e-5, 1e4]
V_TH_MAX = 1e4

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


class SpikeCodingError(OptionError):
    """Bad input to a spike-coding function; the message says what to do instead."""


def eager(fn):
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


def check_coding(coding, fn: str) -> str:
    if coding not in CODINGS:
        raise SpikeCodingError(
            f"{fn}: unknown coding {coding!r}; choose one of {', '.join(CODINGS)} "
            "('bitwise' is the sign-magnitude 'bitwise-ternary' code)"
        )
    return coding


def check_activation(x, fn: str) -> None:
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


def check_counts(counts, fn: str) -> None:
    if not isinstance(counts, torch.Tensor):
        raise SpikeCodingError(
            f"{fn}: counts must be a torch.Tensor of integers, got {type(counts).__name__}; "
            "use the counts returned by spike_counts()"
        )
    if counts.dtype not in INT_DTYPES and counts.dtype != torch.uint8:
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


def binary_negative_error(fn: str, lowest: int) -> SpikeCodingError:
    return SpikeCodingError(
        f"{fn}: binary coding carries only non-negative counts, but the counts go down to "
        f"{lowest}; use coding='ternary' (signed unit spikes), 'bitwise' or 'twos_complement', "
        "or rectify the activation before counting"
    )


# ------------------------------------------------------------------------ the formula


def spike_counts_reference(x: torch.Tensor, k: float = DEFAULT_K, *, group_size: Optional[int] = None,
                           threshold=None):
    """The spike formula in plain torch, unblocked and unthreaded: ``(q, v_th)``.

    ``v_th`` is ``clamp(mean(|x|) / k, 1e-5, 1e4)`` over the last dimension (or over each
    group of ``group_size`` features; or ``threshold``, a static value, broadcast), shape
    ``x.shape[:-1] + (G,)``; ``q = round(x / v_th)`` (half to even), computed in
    ``x.dtype`` and left in it, neither narrowed nor clipped. The counts of
    :func:`~sbsnn.neurons.spike_counts` equal ``q`` exactly, and its thresholds ``v_th``.
    Inputs are not checked: give it what ``spike_counts`` accepts.
    """
    d = x.shape[-1]
    g = d if group_size is None else group_size
    xg = x.unflatten(-1, (d // g, g))  # [..., G, g]
    if threshold is None:
        v_th = (xg.abs().mean(-1, keepdim=True) / k).clamp(V_TH_MIN, V_TH_MAX)
    else:
        v_th = torch.as_tensor(threshold, dtype=x.dtype, device=x.device).expand(xg.shape[:-1]).unsqueeze(-1)
    return torch.round(xg / v_th).flatten(-2), v_th.squeeze(-1)


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
