"""numba, where it is installed: the one place sbsnn's CPU kernels get their compiler.

``njit()`` is ``numba.njit(nogil=True, cache=True)`` (no fastmath: float operations in
program order; compiled code cached between processes in numba's own cache directory),
or None without numba, in which case every caller keeps its torch route (the reference
its kernels are tested against, bit for bit).
"""

from __future__ import annotations

_state: dict = {}


def njit():
    """The decorator, or None where numba cannot be imported."""
    if "jit" not in _state:
        try:
            import numba
        except ImportError:
            _state["jit"] = None
        else:
            _state["jit"] = numba.njit(nogil=True, cache=True)
    return _state["jit"]
