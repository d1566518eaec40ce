"""numba, where it is installed: the one place sbsnn's CPU kernels get their compiler.

``njit()`` is a decorator like ``numba.njit(nogil=True, cache=True)`` (no fastmath: float
operations in program order; compiled code cached between processes where numba finds a
writable cache directory, else compiled in each process), or None without numba, in
which case every caller keeps its torch route (the reference its kernels are tested
against, bit for bit).
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
            def jit(fn):
                try:
                    return numba.njit(nogil=True, cache=True)(fn)
                except RuntimeError:     # no writable cache location: compile per process
                    return numba.njit(nogil=True)(fn)

            _state["jit"] = jit
    return _state["jit"]
