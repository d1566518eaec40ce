"""Checks at the boundary: option values, input files and paths, with the limits that keep
a run from becoming absurd. The Python API and the ``sbsnn`` command use the same checks
(the command names the option ``--block-size``, the API the argument ``block_size``).

Like :mod:`sbsnn.errors`, this module imports nothing of sbsnn's rooms.
"""

from __future__ import annotations

import json
import math
import operator
import os
import stat
from pathlib import Path

from sbsnn.errors import InputError, LimitError, OptionError, SbsnnError, brief, os_error

__all__ = ["K_LIMIT", "GROUP_SIZE_LIMIT", "THREADS_LIMIT", "check_choice", "check_float",
           "check_group_size", "check_int", "check_k", "overlap", "read_json_file", "read_text_file"]

# ----------------------------------------------------------------------------- limits
K_LIMIT = 1000.0
K_LIMIT_WHY = (f"counts grow as k x |x| / mean|x|, so past k = {K_LIMIT:g} an input needs "
               "thousands of time steps per token (ternary and binary coding: T = its count) "
               "and the exact integer accumulation leaves its fast path, for no gain in "
               "fidelity; once mean|x| / k falls below the threshold's floor (1e-5) k changes "
               "nothing at all. SpikingBrain uses k = 2 to 4 (sbsnn's calibration up to 64)")
GROUP_SIZE_LIMIT = 1 << 16
GROUP_SIZE_WHY = ("a scale group wider than any layer pads every weight row and every count "
                  "row to the group's width with zeros; for one scale per output channel give "
                  "the layer's width")
THREADS_LIMIT = 1024
THREADS_WHY = "more threads than that only oversubscribe the machine (0: torch's default)"


def _given(name: str, v) -> str:
    """``--opt VALUE`` for a command-line option, ``name=VALUE`` for an argument."""
    text = str(v)
    if len(text) > 80:   # a whole array given where one number belongs: one readable line
        text = text[:80] + "..."
    return f"{name} {text}" if name.startswith("-") else f"{name}={text}"


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None,
              why: str | None = None, none_ok: bool = False, hint: str = "") -> int | None:
    """``value`` as an int, or :class:`OptionError` (not an integer, below ``minimum``) /
    :class:`LimitError` (above ``maximum``, with ``why``). ``name`` is the option as the
    caller knows it (``"--block-size"`` or ``"block_size"``)."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool):
        raise OptionError(f"{name} must be an integer, got {brief(value)}{hint}")
    try:
        v = operator.index(value)
    except TypeError:
        raise OptionError(f"{name} must be an integer, got {brief(value)}{hint}") from None
    if minimum is not None and v < minimum:
        raise OptionError(f"{name} must be an integer >= {minimum}, got {v}{hint}")
    if maximum is not None and v > maximum:
        raise LimitError(f"{_given(name, v)} is refused: the bound is {maximum:,}"
                         + (f" ({why})" if why else "") + hint)
    return v


def check_float(value, name: str, *, minimum: float | None = None, positive: bool = False,
                maximum: float | None = None, why: str | None = None, none_ok: bool = False,
                hint: str = "") -> float | None:
    """``value`` as a finite float (> 0 with ``positive``, >= ``minimum``, <= ``maximum``
    with ``why``), else :class:`OptionError` / :class:`LimitError`."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise OptionError(f"{name} must be a number, got {brief(value)}{hint}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number, got {brief(value)}{hint}") from None
    if not math.isfinite(v):
        raise OptionError(f"{name} must be a finite number, got {v}{hint}")
    if positive and not v > 0:
        raise OptionError(f"{name} must be a number > 0, got {v:g}{hint}")
    if minimum is not None and v < minimum:
        raise OptionError(f"{name} must be a number >= {minimum:g}, got {v:g}{hint}")
    if maximum is not None and v > maximum:
        raise LimitError(f"{_given(name, f'{v:g}')} is refused: the bound is {maximum:g}"
                         + (f" ({why})" if why else "") + hint)
    return v


def _as_error(error: type[OptionError], check, *args, **kwargs):
    """``check(*args, **kwargs)``, its OptionError refusals (not its LimitError) raised as
    ``error``, a subclass of OptionError that a room raises for its own inputs."""
    try:
        return check(*args, **kwargs)
    except LimitError:
        raise
    except OptionError as e:
        if error is OptionError:
            raise
        raise error(str(e)) from None


def check_k(k, name: str = "k", *, bounded: bool = True, error: type[OptionError] = OptionError) -> float:
    """The threshold divisor k of ``V_th = mean|x| / k`` as a float: the one check of k.

    One rule: a real number, finite and > 0 (else ``error``, an OptionError). ``bounded``
    adds the boundary's limit, at most K_LIMIT (else :class:`LimitError`): where a user
    sets the k of a model (convert, sweep, a spiking checkpoint's config, the command line).
    The spike formula itself (``sbsnn.neurons``, the CuPy kernel) passes ``bounded=False``:
    it is exact for any positive k, and a layer built by hand may use a larger one.
    """
    if bounded:
        return _as_error(error, check_float, k, name, positive=True, maximum=K_LIMIT, why=K_LIMIT_WHY)
    return _as_error(error, check_float, k, name, positive=True)


def check_group_size(group_size, name: str = "group_size", *, bounded: bool = True,
                     error: type[OptionError] = OptionError) -> int:
    """The width of a weight scale group as an int: the one check of the group size.

    One rule: an integer >= 1 (else ``error``, an OptionError). ``bounded`` adds the
    boundary's limit, at most GROUP_SIZE_LIMIT (else :class:`LimitError`): where a user
    sets it for a model (convert, a spiking checkpoint's config, the command line); the
    kernels that take a group (``quantize_weight``, the CuPy kernels) pass ``bounded=False``.
    """
    if bounded:
        return _as_error(error, check_int, group_size, name, minimum=1, maximum=GROUP_SIZE_LIMIT,
                         why=GROUP_SIZE_WHY)
    return _as_error(error, check_int, group_size, name, minimum=1)


def check_block_size(block_size, name: str = "block_size", *, none_ok: bool = False) -> int | None:
    """Tokens fed at a time through a decoding state: the one check of a block size. One
    rule: an integer >= 1; ``none_ok`` where None means the whole sequence in one pass."""
    return check_int(block_size, name, minimum=1, none_ok=none_ok,
                     hint=" (None: one pass)" if none_ok else "")


def check_max_tokens(max_tokens, name: str = "max_tokens", *,
                     hint: str = " (None: every token)") -> int | None:
    """A cut on tokens (of a text, of each document): an integer >= 1, or None for all."""
    return check_int(max_tokens, name, minimum=1, none_ok=True, hint=hint)


def check_window(window, name: str = "window") -> int:
    """The fixed window (time steps) of the windowed slot sparsity: an integer >= 1 (a
    0-step window would read as 100 % sparse)."""
    return check_int(window, name, minimum=1, hint=" (the paper's window is 3 steps)")


def check_choice(value, name: str, choices) -> str:
    if value not in tuple(choices):
        raise OptionError(f"{_given(name, repr(value))} is not one of {', '.join(map(str, choices))}")
    return value


# ----------------------------------------------------------------------------- input files
def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input_file(path, what: str = "the file", *, pipes_ok: bool = False,
                     error: type[SbsnnError] = InputError) -> Path:
    """``path`` if it names a regular file (symlinks followed), checked BEFORE it is opened:
    opening a FIFO blocks until a writer comes, a device may never end. ``pipes_ok`` for
    the text inputs a user may pipe in (``--text /dev/stdin``). Else the PathError /
    ``error`` that says what ``path`` is instead; the one check of every file sbsnn reads."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise os_error(e, p, f"reading {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{p}: is a directory; {what} must be a file")
    if stat.S_ISREG(st.st_mode) or (pipes_ok and stat.S_ISFIFO(st.st_mode)):
        return p
    raise error(f"{p}: {_kind(st.st_mode)}, not a regular file; {what} must be a regular file"
                + (" (a pipe is read only as a text input)" if stat.S_ISFIFO(st.st_mode) else ""))


def read_text_file(path, what: str = "the text", *, empty_ok: bool = False,
                   pipes_ok: bool = True) -> str:
    """The UTF-8 text of file ``path``; every failure is an sbsnn error naming the file
    (missing, a directory, a device, unreadable, not UTF-8 with the byte offset, empty).
    A named pipe is read (``--text /dev/stdin``) unless ``pipes_ok`` is False."""
    p = check_input_file(path, what, pipes_ok=pipes_ok)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise os_error(e, p, f"reading {what}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: {what} is not UTF-8 text (byte {e.start}: {e.reason}); "
                         "save it as UTF-8") from None
    if not text and not empty_ok:
        raise InputError(f"{p}: {what} is empty")
    return text


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json_file(path, what: str = "the JSON file", error=InputError):
    """The JSON value of file ``path`` (strict JSON: NaN and Infinity are refused); a
    regular file only (a JSON file is part of a checkpoint or a setting, never piped)."""
    text = read_text_file(path, what, pipes_ok=False)
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError as e:
        raise error(f"{path}: {what} is not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- paths
def overlap(a, b) -> str | None:
    """How paths ``a`` and ``b`` overlap once resolved (symlinks followed): ``"same"``,
    ``"a in b"``, ``"b in a"``, or None."""
    try:
        ra, rb = Path(a).resolve(), Path(b).resolve()
    except (OSError, RuntimeError):   # a link loop: compare as written
        ra, rb = Path(os.path.abspath(a)), Path(os.path.abspath(b))
    if ra == rb:
        return "same"
    if rb in ra.parents:
        return "a in b"
    if ra in rb.parents:
        return "b in a"
    return None
