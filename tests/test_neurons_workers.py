"""sbsnn.neurons.workers.run_parts: hand-out order, results in part order, progress relayed
to the calling thread, and a failure or an interrupt that stops the run before it
returns (no worker left running the caller's parts)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F

from sbsnn.neurons import workers


@pytest.fixture(autouse=True)
def _workers(two_threads):
    if workers.workers_for(2) < 2:
        pytest.skip("the OpenMP runtime torch uses was not found: sbsnn's workers run inline")


def test_parts_go_out_in_the_order_given_and_come_back_in_part_order():
    started, lock = [], threading.Lock()

    def fn(p):
        with lock:
            started.append(p)
        return p * p, threading.current_thread().name

    order = [4, 0, 3, 1, 2]
    out = workers.run_parts(fn, range(5), 2, order=order)
    assert [r for r, _ in out] == [0, 1, 4, 9, 16]
    assert {n for _, n in out} <= {f"sbsnn-worker_{i}" for i in range(8)}
    assert set(started[:2]) == {4, 0} and sorted(started) == list(range(5))
    with pytest.raises(ValueError, match="permutation"):
        workers.run_parts(fn, range(3), 2, order=[0, 0, 1])


def test_tell_reaches_the_relay_on_the_calling_thread():
    got = []

    def fn(p, tell):
        tell(p)
        tell(10 * p)
        return p

    out = workers.run_parts(fn, range(6), 2,
                            relay=lambda x: got.append((threading.current_thread(), x)))
    assert out == list(range(6))
    assert {t for t, _ in got} == {threading.current_thread()}
    assert sorted(x for _, x in got) == sorted(list(range(6)) + [10 * p for p in range(6)])
    # inline (one worker): the relay is called directly, still on this thread
    got.clear()
    assert workers.run_parts(lambda p, tell: tell(p) or p, range(3), 1, relay=got.append) == [0, 1, 2]
    assert got == [0, 1, 2]


def test_a_failure_stops_the_run_and_the_first_failed_part_is_raised():
    ran, running, lock = [], [0], threading.Lock()
    two_started = threading.Event()

    def fn(p, tell):
        with lock:
            ran.append(p)
            running[0] += 1
        try:
            if p == 2:  # fails second in time, first in part order: its error is raised
                two_started.set()
                time.sleep(0.05)
                raise RuntimeError("part 2 failed")
            if p == 5:
                two_started.wait(10)
                raise RuntimeError("part 5 failed")
            for _ in range(50):
                time.sleep(0.002)
                tell(1)
            return p
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(RuntimeError, match="part 2 failed"):
        workers.run_parts(fn, range(40), 2, order=[5, 2] + [i for i in range(40) if i not in (2, 5)],
                          relay=lambda x: None)
    assert running[0] == 0  # nothing of the run goes on after it returned
    assert len(ran) < 40    # and the remaining parts never started


def test_an_interrupt_of_the_caller_stops_the_workers_before_it_propagates():
    ran, running, lock = [], [0], threading.Lock()

    def fn(p, tell):
        with lock:
            ran.append(p)
            running[0] += 1
        try:
            for _ in range(20):
                time.sleep(0.002)
                tell(1)
        finally:
            with lock:
                running[0] -= 1

    def relay(x):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        workers.run_parts(fn, range(30), 2, relay=relay)
    assert running[0] == 0 and len(ran) < 30
    # the pool is free for the next run
    assert workers.run_parts(lambda p: p + 1, range(4), 2) == [1, 2, 3, 4]
    assert torch.get_num_threads() >= 2


def test_a_worker_computes_what_one_torch_thread_computes():
    """Matrix products with few rows and attention (whose chunks are such products) on a
    worker give the bits of the caller at one thread: MKL, where torch uses it, runs
    single-threaded on the worker too (left at the host's count it splits them
    differently)."""
    g = torch.Generator().manual_seed(3)
    mats = [(torch.randn(m, k, generator=g), torch.randn(k, n, generator=g))
            for m in (11, 32) for k in (107, 256, 619) for n in (107, 512)]
    q = torch.randn(1, 4, 107, 64, generator=g)
    kv = torch.randn(2, 1, 1, 300, 64, generator=g)
    mask = torch.rand(107, 300, generator=g) > 0.3

    def run():
        with torch.no_grad():
            return [x @ y for x, y in mats] + [F.scaled_dot_product_attention(
                q, kv[0], kv[1], attn_mask=mask, scale=0.125, enable_gqa=True)]

    on_worker = workers.submit(run).result()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one_thread = run()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(on_worker, one_thread))


def test_another_packages_openmp_runtime_does_not_fool_the_workers(monkeypatch):
    """sentencepiece (and other wheels) bundle their own libgomp: set that one's thread count
    and torch's workers stay multi-threaded (then parts nest, and deadlock). The search
    takes torch's runtime, checked on a fresh thread."""
    import ctypes
    import glob
    import os

    if torch.get_num_threads() < 2 or not torch.backends.openmp.is_available():
        pytest.skip("needs an OpenMP torch with two threads")
    torch_gomp = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    if not torch_gomp:
        pytest.skip("torch's OpenMP runtime is not a libgomp in its lib dir")
    import shutil
    import tempfile

    other = os.path.join(tempfile.mkdtemp(), "libgomp-bundled.so.1")   # as a wheel bundles one
    shutil.copyfile(torch_gomp[0], other)
    ctypes.CDLL(other)                         # mapped into the process before the search
    paths = workers._openmp_runtime_paths()
    assert os.path.realpath(paths[0]).startswith(os.path.realpath(os.path.dirname(torch.__file__)))
    monkeypatch.setattr(workers, "_omp_searched", False)
    monkeypatch.setattr(workers, "_omp_setter", None)
    monkeypatch.setattr(workers, "_pool", None)
    monkeypatch.setattr(workers, "_pool_size", 0)
    assert workers.workers_for(2) == 2
    seen = workers.run_parts(lambda _: (torch.get_num_threads(), workers.workers_for(2)), [0, 1], 2)
    assert seen == [(1, 1), (1, 1)]           # single-threaded workers, never nesting
