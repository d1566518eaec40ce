"""Spike trains: integer counts laid out in time, for every coding, and back.

How the ``s_INT`` spikes of a count are laid out over ``T`` steps is the *coding*
(the table in :mod:`sbsnn.neurons.coding`). :func:`num_steps` and :func:`capacity` give
T and what T steps carry; :func:`expand` builds the trains ``[T, ...]`` (or
:class:`PackedTrains` with a T per element) and :func:`decode` reads counts back.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch

from .formula import (
    INT_DTYPES,
    SpikeCodingError,
    binary_negative_error,
    check_coding,
    check_counts,
    eager,
)
from .scan import in_parts

__all__ = [
    "DEFAULT_MAX_BYTES",
    "UNIT_CODINGS",
    "MAX_BIT_STEPS",
    "Steps",
    "PackedTrains",
    "prepare_counts",
    "magnitude",
    "bit_length",
    "popcount",
    "min_steps",
    "per_element_steps",
    "resolve_steps",
    "capacity",
    "num_steps",
    "expand",
    "decode",
]

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB for an expanded train

_WIDER = {torch.int8: torch.int16, torch.int16: torch.int32, torch.int32: torch.int64}
UNIT_CODINGS = ("binary", "ternary")  # one unit spike per step
MAX_BIT_STEPS = {"bitwise": 63, "twos_complement": 64}  # decode works in int64

Steps = Union[None, int, str]


class PackedTrains(NamedTuple):
    """Trains with a per-element T, packed end to end (``expand(..., steps="per_element")``).

    ``spikes`` is 1-D int8: element 0's ``steps[0]`` slots, then element 1's, ... in
    row-major order of the counts tensor. Each element's train starts at its own t = 0 and
    uses its own T, so a bitwise element ``5`` is ``[1, 0, 1]`` whatever its neighbours hold.
    """

    spikes: torch.Tensor
    steps: torch.Tensor  # per-element T, shape of the counts


# ---------------------------------------------------------------------- count ranges


def prepare_counts(counts, coding: str, fn: str):
    """Validate counts; return (c, lo, hi) with c signed and wide enough for -c."""
    check_counts(counts, fn)
    c = counts.detach()
    if c.dtype == torch.uint8:
        c = c.to(torch.int16)
    flat = c.reshape(-1)
    ranges = in_parts(lambda a, b: torch.aminmax(flat[a:b]), flat.numel(), c.device)
    lo, hi = min(int(r.min) for r in ranges), max(int(r.max) for r in ranges)
    if lo == torch.iinfo(c.dtype).min:  # -c would overflow
        if c.dtype == torch.int64:
            raise SpikeCodingError(
                f"{fn}: counts contain -2**63, whose magnitude does not fit int64; clip them "
                "first (spike_counts(..., max_count=...) or counts.clamp(-2**62, 2**62))"
            )
        c = c.to(_WIDER[c.dtype])
    if coding == "binary" and lo < 0:
        raise binary_negative_error(fn, lo)
    return c, lo, hi


def magnitude(c: torch.Tensor) -> torch.Tensor:
    """|c| (c from prepare_counts, so it cannot overflow), contiguous."""
    flat = c.reshape(-1)
    mag = torch.empty_like(flat)
    in_parts(lambda a, b: torch.abs(flat[a:b], out=mag[a:b]), flat.numel(), c.device)
    return mag.view(c.shape)


# ------------------------------------------------------------------------ time layout


def bit_length(m: torch.Tensor) -> torch.Tensor:
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


def popcount(m: torch.Tensor) -> torch.Tensor:
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


def min_steps(coding: str, lo: int, hi: int) -> int:
    """The smallest T that ``coding`` needs for counts in ``[lo, hi]``."""
    peak = max(-lo, hi)
    if coding == "binary":
        return hi
    if coding == "ternary":
        return peak
    if coding == "bitwise":
        return max(1, peak.bit_length())
    return max(2, peak.bit_length() + 1)


def per_element_steps(c: torch.Tensor, mag: torch.Tensor, coding: str) -> torch.Tensor:
    """Each element's own T (``mag`` = ``|c|``)."""
    if coding in UNIT_CODINGS:
        return mag
    if coding == "bitwise":
        return bit_length(mag).clamp_(min=1)
    return (bit_length(mag) + 1).clamp_(min=2)


def capacity(coding: str, steps: int):
    """``(lowest, highest)`` count that ``steps`` time steps of ``coding`` can carry."""
    check_coding(coding, "capacity")
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


@eager
def num_steps(counts: torch.Tensor, coding: str, *, per_element: bool = False):
    """T that ``coding`` needs for ``counts``: an int for the tensor, or a per-element tensor."""
    fn = "num_steps"
    check_coding(coding, fn)
    c, lo, hi = prepare_counts(counts, coding, fn)
    if per_element:
        return per_element_steps(c, c.abs(), coding)
    return min_steps(coding, lo, hi)


def resolve_steps(coding: str, lo: int, hi: int, steps, fn: str) -> int:
    if steps is None:
        return min_steps(coding, lo, hi)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise SpikeCodingError(
            f"{fn}: steps must be None (one T for the tensor, the smallest that fits), "
            f"a non-negative int, or 'per_element'; got {steps!r}"
        )
    limit = MAX_BIT_STEPS.get(coding)
    if limit is not None and steps > limit:
        raise SpikeCodingError(
            f"{fn}: {coding} trains longer than {limit} steps cannot be decoded in int64; "
            f"pass steps=None (here {min_steps(coding, lo, hi)})"
        )
    cap_lo, cap_hi = capacity(coding, steps)
    if lo < cap_lo or hi > cap_hi:
        raise SpikeCodingError(
            f"{fn}: {steps} steps of {coding} coding carry counts in [{cap_lo}, {cap_hi}], but "
            f"the counts span [{lo}, {hi}]; pass steps=None (T={min_steps(coding, lo, hi)}), "
            "clip the counts (spike_counts(..., max_count=...)), or use coding='bitwise'"
        )
    return steps


def _too_big(fn, coding, shape, steps, nbytes, max_bytes, c, lo, hi, *, packed_slots=None) -> SpikeCodingError:
    bit_t = min_steps("bitwise", lo, hi)
    bitwise = f"coding='bitwise' needs only T={bit_t} (~{bit_t * c.numel() / 2**20:.1f} MiB)"
    stats = f"spike_stats(counts, {coding!r}) gives T, spikes per element and per step without any train"
    if packed_slots is not None:
        return SpikeCodingError(
            f"{fn}: packing {packed_slots} per-element {coding} slots needs ~{nbytes / 2**20:.1f} MiB "
            f"while building, over max_bytes={max_bytes / 2**20:.1f} MiB. Instead: {bitwise}; "
            f"{stats}; expand slices of the tensor; or raise max_bytes"
        )
    slots = int(per_element_steps(c, c.abs(), coding).sum(dtype=torch.int64))
    return SpikeCodingError(
        f"{fn}: a {coding} train of shape {(steps,) + tuple(shape)} needs {nbytes / 2**20:.1f} MiB, "
        f"over max_bytes={max_bytes / 2**20:.1f} MiB. Instead: expand(..., steps='per_element') "
        f"packs {slots} slots (~{slots * 9 / 2**20:.1f} MiB while building); {bitwise}; {stats}; "
        "or raise max_bytes"
    )


@eager
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
    check_coding(coding, fn)
    c, lo, hi = prepare_counts(counts, coding, fn)
    if isinstance(steps, str) and steps == "per_element":
        return _expand_packed(c, coding, max_bytes, lo, hi)
    t_len = resolve_steps(coding, lo, hi, steps, fn)
    nbytes = t_len * c.numel()
    if nbytes > max_bytes:
        raise _too_big(fn, coding, c.shape, t_len, nbytes, max_bytes, c, lo, hi)
    trains = torch.empty((t_len,) + tuple(c.shape), dtype=torch.int8, device=c.device)
    if t_len == 0:
        return trains
    if coding in UNIT_CODINGS:
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
    steps = per_element_steps(c, mag, coding)
    flat_steps = steps.reshape(-1).to(torch.int64)
    slots = int(flat_steps.sum())
    if coding in UNIT_CODINGS:
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
    if spikes.is_complex() or not (spikes.is_floating_point() or spikes.dtype in INT_DTYPES or spikes.dtype == torch.uint8):
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


@eager
def decode(trains, coding: str) -> torch.Tensor:
    """Counts (int64) from trains ``[T, ...]`` or :class:`PackedTrains`; inverse of :func:`expand`.

    binary/ternary: ``sum_t s_t``; bitwise: ``sum_t 2**(T-1-t) s_t``; two's complement: the
    same with weight ``-2**(T-1)`` on the first (sign) step.
    """
    fn = "decode"
    check_coding(coding, fn)
    if isinstance(trains, PackedTrains):
        return _decode_packed(trains, coding)
    if not isinstance(trains, torch.Tensor) or trains.ndim == 0:
        raise SpikeCodingError(f"{fn}: trains must be a tensor [T, ...] or PackedTrains from expand()")
    if any(d == 0 for d in trains.shape[1:]):
        raise SpikeCodingError(
            f"{fn}: trains of shape {tuple(trains.shape)} hold no elements; skip empty tensors"
        )
    t_len = trains.shape[0]
    limit = MAX_BIT_STEPS.get(coding)
    if limit is not None and t_len > limit:
        raise SpikeCodingError(f"{fn}: {coding} trains longer than {limit} steps overflow int64 counts")
    s = _check_spikes(trains, coding, fn)
    if coding in UNIT_CODINGS:
        return s.sum(0, dtype=torch.int64)
    acc = torch.zeros(s.shape[1:], dtype=torch.int64, device=s.device)
    for t in range(t_len):  # Horner, most significant step first
        step = s[t].to(torch.int64)
        acc = acc * 2 + (-step if coding == "twos_complement" and t == 0 else step)
    return acc


def _decode_packed(packed: PackedTrains, coding: str) -> torch.Tensor:
    fn = "decode"
    steps = packed.steps
    check_counts(steps, fn)
    flat_steps = steps.reshape(-1).to(torch.int64)
    if bool((flat_steps < 0).any()) or int(flat_steps.sum()) != packed.spikes.numel():
        raise SpikeCodingError(
            f"{fn}: PackedTrains.steps (sum {int(flat_steps.sum())}) does not match the "
            f"{packed.spikes.numel()} packed spikes; pass PackedTrains from expand() unchanged"
        )
    s = _check_spikes(packed.spikes.reshape(-1), coding, fn).to(torch.int64)
    numel = flat_steps.numel()
    owner = torch.repeat_interleave(torch.arange(numel, device=s.device), flat_steps)
    if coding not in UNIT_CODINGS:
        if int(flat_steps.max()) > MAX_BIT_STEPS[coding]:
            raise SpikeCodingError(f"{fn}: {coding} trains longer than {MAX_BIT_STEPS[coding]} steps overflow int64")
        start = torch.cumsum(flat_steps, 0) - flat_steps
        local = torch.arange(s.numel(), device=s.device) - start[owner]
        s = s << (flat_steps[owner] - 1 - local)
        if coding == "twos_complement":
            s = torch.where(local == 0, -s, s)
    out = torch.zeros(numel, dtype=torch.int64, device=s.device).index_add_(0, owner, s)
    return out.reshape(steps.shape)
