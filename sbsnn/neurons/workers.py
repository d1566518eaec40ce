"""sbsnn's own worker threads for CPU work, single-threaded inside, host settings untouched.

On a machine whose cores are shared with other work, torch's intra-op threads turn every
parallel operation into a fork/join that waits for the slowest (descheduled) thread: a
pass made of many short operations then takes several scheduler time slices per
operation. sbsnn's hot paths (spike counts, exact group sums and their rescale) instead
hand contiguous parts of their work to a small pool of worker threads, each running torch
ops single-threaded, which take parts from a queue: a worker that is descheduled does not
hold up the others, and there is one hand-off per part instead of one fork/join per op.

Each worker makes *its own* torch ops single-threaded by setting its own OpenMP thread
count (``omp_set_num_threads`` acts on the calling thread's ICV only) and, where torch
uses MKL, MKL's own per-thread count (``MKL_Set_Num_Threads_Local``): with MKL left at the
host's count, a worker's small matrix products (attention) ran multi-threaded and came out
in other bits than the same products at one thread. A worker thus computes what one
torch thread computes, bit for bit. torch's settings for the host's threads
(``torch.get_num_threads()``, ``torch.set_num_threads``) are never changed. Where either
setting cannot be found, :func:`workers_for` returns 1 and callers run their parts on
their own thread. Inside a worker,
``torch.get_num_threads()`` reads 1, so nested calls run inline (no deadlock).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from queue import SimpleQueue
from typing import Callable, Optional, Sequence

import torch

__all__ = ["run_parts", "submit", "workers_for"]

_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_omp_setter = None          # omp_set_num_threads of torch's OpenMP runtime, once found
_omp_searched = False
_mkl_setter = None          # MKL_Set_Num_Threads_Local where torch uses MKL, once found
_mkl_searched = False


def _forget_pool_after_fork():  # a forked child has none of the parent's threads
    global _pool_lock, _pool, _pool_size
    _pool_lock, _pool, _pool_size = threading.Lock(), None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _openmp_runtime_paths() -> list:
    """Paths of OpenMP runtimes: torch's own first (its lib dir, then those mapped into the
    process from there), then the others mapped into this process (Linux). Other packages
    bundle their own libgomp (sentencepiece does): setting the thread count of that one
    would leave torch's workers multi-threaded."""
    import glob
    import re

    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if re.search(r"/lib(g|i|i5)?omp[^/]*\.(so|dylib)", path) and path not in found:
                    found.append(path)
    except OSError:
        pass
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    own = []
    for pattern in ("libgomp*.so*", "libomp*.so*", "libiomp*.so*", "libomp*.dylib", "libiomp*.dylib"):
        own += [p for p in sorted(glob.glob(os.path.join(libdir, pattern))) if p not in own]
    return own + [p for p in found if p not in own]


def _sets_torchs_threads(fn) -> bool:
    """Whether ``fn`` (an ``omp_set_num_threads``) makes torch single-threaded, tried on a
    fresh thread (True when a fresh thread has one thread anyway: nothing to tell)."""
    seen = []

    def probe():
        before = torch.get_num_threads()
        fn(1)
        seen.append((before, torch.get_num_threads()))

    t = threading.Thread(target=probe, name="sbsnn-omp-probe")
    t.start()
    t.join()
    return bool(seen) and (seen[0][0] <= 1 or seen[0][1] == 1)


def _omp_set_num_threads():
    """``omp_set_num_threads`` of the OpenMP runtime torch is linked with, or None."""
    global _omp_setter, _omp_searched
    with _pool_lock:
        if not _omp_searched:
            _omp_searched = True
            if torch.backends.openmp.is_available():
                import ctypes

                for path in _openmp_runtime_paths():
                    try:
                        fn = ctypes.CDLL(path).omp_set_num_threads
                    except (OSError, AttributeError):
                        continue
                    fn.argtypes, fn.restype = [ctypes.c_int], None
                    if _sets_torchs_threads(fn):
                        _omp_setter = fn
                        break
        return _omp_setter


def _mkl_library_paths() -> list:
    """Libraries that may hold torch's MKL: MKL runtimes mapped into this process
    (Linux), then torch's own ``libtorch_cpu`` (MKL linked in statically)."""
    import glob
    import re

    found = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if re.search(r"/libmkl_(rt|core|intel_thread|gnu_thread)[^/]*\.(so|dylib)", path) \
                        and path not in found:
                    found.append(path)
    except OSError:
        pass
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for pattern in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        found += [p for p in sorted(glob.glob(os.path.join(libdir, pattern))) if p not in found]
    return found


def _mkl_set_num_threads_local():
    """MKL's ``MKL_Set_Num_Threads_Local`` (its C entry, which takes the count by value;
    the lower-case ``mkl_set_num_threads_local`` is the Fortran entry and takes a pointer),
    or None: where torch uses MKL, a worker sets it too, since MKL takes its thread count
    from its own per-thread setting, which torch's lazy init of the worker sets to the
    host's count (MKL then splits small products differently: other bits)."""
    global _mkl_setter, _mkl_searched
    with _pool_lock:
        if not _mkl_searched:
            _mkl_searched = True
            import ctypes

            for path in _mkl_library_paths():
                try:
                    fn = ctypes.CDLL(path).MKL_Set_Num_Threads_Local
                except (OSError, AttributeError):
                    continue
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                _mkl_setter = fn
                break
        return _mkl_setter


def _single_threadable() -> bool:
    """Whether a worker can make its own torch ops single-threaded: OpenMP's setting
    found, and MKL's where torch uses MKL."""
    if _omp_set_num_threads() is None:
        return False
    return not torch.backends.mkl.is_available() or _mkl_set_num_threads_local() is not None


_thread = threading.local()    # .worker: set in sbsnn's worker threads


def _serial_worker_init():
    """Make this worker thread's torch ops single-threaded: its own OpenMP ICV and MKL's
    per-thread count (workers only run where both are found, see :func:`workers_for`)."""
    _thread.worker = True
    torch.get_num_threads()       # torch's lazy per-thread init first: it sets both once
    setter = _omp_set_num_threads()
    if setter is not None:
        setter(1)
    mkl = _mkl_set_num_threads_local() if torch.backends.mkl.is_available() else None
    if mkl is not None:
        mkl(1)


def workers_for(wanted: int) -> int:
    """How many workers to use for ``wanted`` parallel parts on the CPU: at most torch's
    thread count for the calling thread, 1 (run inline) inside a worker or where workers
    cannot be made single-threaded."""
    if getattr(_thread, "worker", False):
        return 1      # never nested: a part waiting on parts queued behind it deadlocks the pool
    n = min(int(wanted), torch.get_num_threads())
    if n <= 1 or not _single_threadable():
        return 1
    return n


def _worker_pool(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="sbsnn-worker",
                                       initializer=_serial_worker_init)
            _pool_size = size
        return _pool


def _in_callers_grad_mode(fn: Callable) -> Callable:
    """``fn`` run under the calling thread's autograd mode: grad mode is thread-local, and
    a worker must compute what the caller would (no graph under ``torch.no_grad``)."""
    grad = torch.is_grad_enabled()

    def run(*args, **kwargs):
        with torch.set_grad_enabled(grad):
            return fn(*args, **kwargs)
    return run


def submit(fn: Callable, *args, **kwargs) -> Future:
    """Run ``fn`` on one single-threaded worker (callers check :func:`workers_for` first)."""
    return _worker_pool(max(1, torch.get_num_threads())).submit(
        _in_callers_grad_mode(fn), *args, **kwargs)


class _Cancelled(Exception):
    """Raised by a part's ``tell`` once the run has stopped (another part failed, or the
    caller was interrupted): the part ends at its next report."""


_DONE = object()  # a worker's last message to the caller


def run_parts(fn: Callable, parts: Sequence, workers: int, *,
              order: Optional[Sequence[int]] = None, relay: Optional[Callable] = None) -> list:
    """``[fn(part) for part in parts]``, in part order, on ``workers`` single-threaded
    workers that take parts from a queue (inline, in part order, when ``workers <= 1``).

    ``order``: the indices of ``parts`` in the order they are handed out (e.g. longest
    first); results stay in part order. ``relay``: given, ``fn`` is called as
    ``fn(part, tell)``; each ``tell(x)`` made on a worker becomes ``relay(x)`` on the
    calling thread (a progress bar's ``update`` is then only touched by its own thread).

    Once a part raises, no further part starts, and a part that calls ``tell`` ends
    there; the parts in flight finish, then the exception of the failed part that comes
    first in part order is re-raised. An interrupt of the caller (``KeyboardInterrupt``
    while waiting) stops the run the same way before it propagates, so no worker goes
    on with the caller's work."""
    parts = list(parts)
    if workers <= 1 or len(parts) <= 1:
        if relay is None:
            return [fn(p) for p in parts]
        return [fn(p, relay) for p in parts]
    n = len(parts)
    order = list(range(n)) if order is None else [int(i) for i in order]
    if sorted(order) != list(range(n)):
        raise ValueError(f"run_parts: order must be a permutation of range({n}), got {order}")
    results, errors = [None] * n, {}
    todo = iter(order)
    lock, stop, messages = threading.Lock(), threading.Event(), SimpleQueue()
    run = _in_callers_grad_mode(fn)

    def tell(x):
        if stop.is_set():
            raise _Cancelled()
        messages.put(x)

    def worker():
        try:
            while not stop.is_set():
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                try:
                    results[i] = run(parts[i]) if relay is None else run(parts[i], tell)
                except _Cancelled:
                    return
                except BaseException as err:  # noqa: B902 - handed to the caller below
                    errors[i] = err
                    stop.set()
                    return
        finally:
            messages.put(_DONE)

    count = min(workers, n)
    pool = _worker_pool(count)
    futures = [pool.submit(worker) for _ in range(count)]
    try:
        done = 0
        while done < count:
            x = messages.get()
            if x is _DONE:
                done += 1
            elif relay is not None:
                relay(x)
    except BaseException:
        stop.set()  # the parts in flight end at their next tell; wait for them
        wait(futures)
        raise
    wait(futures)
    if errors:
        raise errors[min(errors)]
    return results
