"""Two shortcuts of the spike formula, held to the blocked scan and the reference:

- inputs of a few rows (decoding) take a small path (numba's rounding kernel): the same
  counts, dtype and thresholds as the reference, the same error for NaN or Inf;
- sibling neurons reading the same tensor (q, k, v; gate, up) share one spiking of it
  (``sbsnn.neurons.shared_input``), and never a stale or foreign one.
"""

import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sbsnn.neurons import AdaptiveThresholdNeuron, scan, shared_input, spike_counts
from sbsnn.neurons.formula import SpikeCodingError, spike_counts_reference
from sbsnn.neurons.jit import njit

needs_numba = pytest.mark.skipif(njit() is None, reason="numba is not installed")


@needs_numba
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), d=st.integers(1, 700), scale=st.sampled_from([1e-8, 1.0, 1e3]),
       outlier=st.sampled_from([0.0, 1e4, 1e9]), dtype=st.sampled_from([torch.float32, torch.float64]),
       k=st.sampled_from([0.5, 3.0, 30.0]), seed=st.integers(0, 2 ** 16))
def test_small_inputs_give_the_reference_counts(rows, d, scale, outlier, dtype, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, d, generator=g, dtype=torch.float64) * scale).to(dtype)
    if outlier:
        x[0, d // 2] = outlier
    ran = []
    real = scan._small_scan
    try:
        scan._small_scan = lambda *a: ran.append(1) or real(*a)
        counts, v = spike_counts(x, k)
    finally:
        scan._small_scan = real
    want, v_want = spike_counts_reference(x, k)
    assert ran                                        # the small path ran
    assert torch.equal(counts.to(torch.float64), want.to(torch.float64))
    assert torch.equal(v.reshape(-1), v_want.reshape(-1))
    # the narrowest integer type, as the blocked scan chooses it
    peak = int(want.abs().max())
    assert counts.dtype == next(t for t in (torch.int8, torch.int16, torch.int32, torch.int64)
                                if peak <= torch.iinfo(t).max)


@needs_numba
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_small_inputs_with_nan_or_inf_raise_as_the_scan_does(bad):
    x = torch.randn(2, 40)
    x[1, 7] = bad
    with pytest.raises(SpikeCodingError, match=r"index \(1, 7\)"):
        spike_counts(x, 3.0)


def test_small_inputs_without_numba_take_the_scan(monkeypatch):
    x = torch.randn(3, 50)
    want = spike_counts(x, 3.0)
    monkeypatch.setattr(scan, "_small_kernel", [None])
    got = spike_counts(x, 3.0)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _neurons(k=(3.0, 3.0)):
    return [AdaptiveThresholdNeuron(kk, "ternary") for kk in k]


def test_siblings_share_one_spiking_of_the_same_tensor(monkeypatch):
    calls = []
    real = scan._scan
    monkeypatch.setattr(scan, "_scan", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    a, b = _neurons()
    x = torch.randn(9, 64)
    ca, va = a.spike(x.reshape(-1, 64))         # each layer reshapes: a new view per call
    cb, vb = b.spike(x.reshape(-1, 64))
    assert len(calls) == 1 and cb is ca and vb is va and b.v_th is va


@pytest.mark.parametrize("change", ["in place", "other view", "other k", "other tensor", "static threshold"])
def test_no_sharing_when_the_input_or_the_settings_differ(change):
    a, b = _neurons((3.0, 2.0) if change == "other k" else (3.0, 3.0))
    x = torch.randn(9, 64)
    ca, _ = a.spike(x)
    y = x
    if change == "in place":
        x.mul_(2)
    elif change == "other view":
        y = x[1:]
    elif change == "other tensor":
        y = x.clone()
    elif change == "static threshold":
        b = AdaptiveThresholdNeuron(3.0, "ternary", threshold=0.5)
    cb, vb = b.spike(y)
    assert cb is not ca
    want, v_want = spike_counts_reference(y, b.k, threshold=b.threshold)
    assert torch.equal(cb.to(torch.float64), want.to(torch.float64))


def test_shared_counts_are_freed_with_their_input():
    a, = _neurons((3.0,))
    x = torch.randn(9, 64)
    counts, _ = a.spike(x)
    import weakref

    gone = weakref.ref(counts)
    del counts, _
    assert shared_input._local.slot.entry is not None
    del x
    gc.collect()
    assert shared_input._local.slot.entry is None and gone() is None


def test_inference_tensors_are_never_shared():
    a, b = _neurons()
    with torch.inference_mode():
        x = torch.randn(5, 32)
        ca, _ = a.spike(x)
        cb, _ = b.spike(x)
    assert cb is not ca and torch.equal(ca, cb)


@needs_numba
def test_kernels_compile_without_a_writable_cache(monkeypatch):
    """numba refuses cache=True where it finds no writable directory: sbsnn's kernels then
    compile in each process instead of failing."""
    import numba
    import numpy as np

    from sbsnn.neurons import jit

    real = numba.njit

    def no_cache(*a, **kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*a, **kw)

    monkeypatch.setattr(numba, "njit", no_cache)
    monkeypatch.setattr(jit, "_state", {})

    def double(a):
        return a * 2

    assert jit.njit()(double)(np.arange(3)).tolist() == [0, 2, 4]
