"""Thresholds, counts, codings and statistics of sbsnn.neurons.coding."""

import os
import signal
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sbsnn.neurons.scan as scan_mod
from sbsnn.neurons import (
    CODINGS,
    PackedTrains,
    SpikeCodingError,
    adaptive_threshold,
    calibrate_threshold,
    capacity,
    decode,
    dequantize,
    expand,
    num_steps,
    spike_counts,
    spike_counts_reference,
    spike_stats,
    spikes_per_element,
)

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def reference(x, k=3.0):
    """The formula in plain torch: sbsnn's public reference, which the fast scan must equal."""
    return spike_counts_reference(x, k)


def heavy_tailed(shape, generator):
    # Student-t with 3 degrees of freedom: a few large outliers, like LLM activations
    normal = torch.randn(shape, generator=generator, dtype=torch.float64)
    chi = torch.randn((3,) + tuple(shape), generator=generator, dtype=torch.float64).pow(2).mean(0)
    return normal / chi.sqrt().clamp(min=1e-3)


def assert_matches_reference(x, k=3.0):
    counts, v_th = spike_counts(x, k)
    ref_counts, ref_v = reference(x, k)
    assert v_th.dtype == x.dtype and v_th.shape == ref_v.shape
    assert torch.equal(v_th, ref_v)
    assert torch.equal(counts.to(torch.float64), ref_counts.to(torch.float64))
    assert torch.equal(adaptive_threshold(x, k), ref_v)
    return counts


# ------------------------------------------------------------------ formula vs reference


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["normal", "heavy", "zeros", "mixed"])
def test_counts_equal_three_line_formula(dtype, kind):
    g = torch.Generator().manual_seed(1)
    shape = (5, 7, 64)
    if kind == "normal":
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    elif kind == "heavy":
        x = heavy_tailed(shape, g)
    elif kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    else:
        x = heavy_tailed(shape, g)
        x[1] = 0
        x[3, 2] = 0
        x[2, 3] *= 1e-8  # a row whose threshold hits the lower clamp (1e-5)
    counts = assert_matches_reference(x.to(dtype))
    assert_matches_reference(x.to(dtype).transpose(0, 1))  # strided input
    if kind == "mixed":
        assert spike_counts(x.to(dtype))[1][2, 3].item() == torch.tensor(1e-5, dtype=dtype).item()
    if kind == "zeros":
        assert counts.dtype == torch.int8 and not counts.any()
        assert torch.equal(spike_counts(x.to(dtype))[1], torch.full((5, 7, 1), 1e-5, dtype=dtype))


@settings(deadline=None, max_examples=60)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=24),
        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
    ),
    st.sampled_from([1.0, 2.0, 3.0, 7.5]),
)
def test_counts_equal_formula_hypothesis(arr, k):
    x = torch.from_numpy(arr)
    assert_matches_reference(x, k)
    assert_matches_reference(x.double(), k)


def test_multi_block_rows_and_dtype_promotion(monkeypatch):
    # Small blocks: thresholds must not depend on the blocking, and an outlier in a late
    # block must widen the counts already written as int8.
    monkeypatch.setattr(scan_mod, "_CPU_BLOCK_BYTES", 4 * 64 * 3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 64, generator=g)
    counts = assert_matches_reference(x)
    assert counts.dtype == torch.int8
    x[33, 5] = 1e4  # count 3 * 64 * ... far beyond int8
    counts = assert_matches_reference(x)
    assert counts.dtype == torch.int16
    x[37, 9] = 1e9
    x[37, 10] = -1e9
    counts = assert_matches_reference(x)
    assert counts.dtype == torch.int32  # V_th hits the 1e4 clamp: 1e9 / 1e4 needs int32
    counts, _ = spike_counts(x, threshold=1e-3)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, torch.round(x / torch.tensor(1e-3)).to(torch.int64))


def test_public_calls_never_change_torch_threads(thread_probe, two_threads):
    """torch's intra-op thread count, read from fresh threads while each call runs (and in
    this thread after it), never changes: the workers set only their own OpenMP setting."""
    from sbsnn.neurons import workers

    assert workers.workers_for(2) == 2  # the worker paths run here
    g = torch.Generator().manual_seed(5)
    big = torch.randn(1500, 3584, generator=g)      # several blocks: workers in parallel
    mid = torch.randn(300, 640, generator=g)        # one block: a single worker
    threads = torch.get_num_threads()
    with thread_probe() as probe:
        for x in (big, mid, mid[:1]):
            counts, v = spike_counts(x)
            adaptive_threshold(x)
            calibrate_threshold(x)
            spike_stats(counts, "bitwise")
            spike_stats(counts, "ternary")
            num_steps(counts, "ternary")
            decode(expand(counts[:4], "bitwise"), "bitwise")
        mid[7, 9] = float("nan")
        with pytest.raises(SpikeCodingError):
            spike_counts(mid)
    assert probe.seen == {threads}
    assert torch.get_num_threads() == threads
    assert workers._worker_pool(1).submit(torch.get_num_threads).result() == 1


def test_worker_threads_restore_torch_threads_and_survive_fork(monkeypatch, two_threads):
    monkeypatch.setattr(scan_mod, "_CPU_BLOCK_BYTES", 4 * 64 * 3)
    threads = torch.get_num_threads()
    x = torch.randn(60, 64)
    counts = assert_matches_reference(x)
    assert torch.get_num_threads() == threads
    x[50, 3] = float("nan")  # found by a worker in a late block
    with pytest.raises(SpikeCodingError, match=r"index \(50, 3\)"):
        spike_counts(x)
    assert torch.get_num_threads() == threads
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child must not wait on the parent's (absent) worker threads
        ok = torch.equal(spike_counts(x.nan_to_num())[0], spike_counts(x.nan_to_num())[0])
        os._exit(0 if ok else 1)
    for _ in range(600):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("spike_counts hung in a forked child")
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts.dtype == torch.int8


def test_long_rows_never_use_one_row_blocks():
    # 14 rows of 40000: blocks of 13 would leave one row, whose reduction torch splits
    # across threads (a different summation order from the whole-tensor reference).
    g = torch.Generator().manual_seed(3)
    x = heavy_tailed((14, 40000), g).float()
    assert_matches_reference(x)
    assert_matches_reference(x[:1])  # a genuine single row matches the reference on itself


def test_ties_round_half_to_even():
    # mean |x| = 3, so V_th = 1 exactly and x / V_th are exact half-integers
    x = torch.tensor([[2.5, 3.5, -2.5, -3.5], [2.5, 3.5, -2.5, -3.5]]).to(torch.bfloat16)
    counts, v_th = spike_counts(x)
    assert v_th.flatten().tolist() == [1.0, 1.0]
    assert counts.tolist() == [[2, 4, -2, -4]] * 2
    assert torch.equal(spike_counts(x.transpose(0, 1).contiguous().transpose(0, 1))[0], counts)  # strided input
    counts, _ = spike_counts(torch.tensor([0.5, -0.5, 1.5, -1.5, 2.5, 4.5, -5.5]), threshold=1.0)
    assert counts.tolist() == [0, 0, 2, -2, 2, 4, -6]


def test_reference_is_the_formula_by_hand():
    # mean |x| = 3 per row (or per group of 2), so V_th = 1 at k = 3: the counts are x rounded half to even
    x = torch.tensor([[2.5, 3.5, -2.5, -3.5], [0.5, 5.5, 1.0, -5.0]])
    q, v = spike_counts_reference(x)
    assert v.tolist() == [[1.0], [1.0]] and q.dtype == x.dtype
    assert q.tolist() == [[2.0, 4.0, -2.0, -4.0], [0.0, 6.0, 1.0, -5.0]]
    q, v = spike_counts_reference(x, 1.5, group_size=2)  # group means 3, 3, 3, 3 -> V_th 2
    assert v.tolist() == [[2.0, 2.0], [2.0, 2.0]]
    assert q.tolist() == [[1.0, 2.0, -1.0, -2.0], [0.0, 3.0, 0.0, -2.0]]
    q, v = spike_counts_reference(x, threshold=torch.tensor([0.5, 2.0]), group_size=2)
    assert v.tolist() == [[0.5, 2.0], [0.5, 2.0]]
    assert q.tolist() == [[5.0, 7.0, -1.0, -2.0], [1.0, 11.0, 0.0, -2.0]]
    assert spike_counts_reference(torch.full((2, 3), 1e-9))[1].flatten().tolist() == [pytest.approx(1e-5)] * 2


@settings(deadline=None, max_examples=40)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.sampled_from([1, 2, 4]), st.integers(1, 8)).map(lambda s: (s[0], s[1] * s[2])),
        elements=st.floats(-1e4, 1e4, width=32, allow_nan=False),
    ),
    st.sampled_from([0.5, 3.0, 9.0]),
    st.sampled_from([None, 1, "width", "static"]),
)
def test_fast_scan_equals_public_reference_hypothesis(arr, k, group):
    """spike_counts and adaptive_threshold equal spike_counts_reference bit for bit, per
    token, per group of features, and with a static threshold."""
    x = torch.from_numpy(arr)
    kwargs = {}
    if group == "static":
        kwargs["threshold"] = 0.25
    elif group == "width":
        kwargs["group_size"] = x.shape[-1]
    elif group is not None:
        kwargs["group_size"] = group
    counts, v_th = spike_counts(x, k, **kwargs)
    q, v_ref = spike_counts_reference(x, k, **kwargs)
    assert torch.equal(v_th, v_ref)
    assert torch.equal(counts.to(torch.float64), q.to(torch.float64))
    if group != "static":
        assert torch.equal(adaptive_threshold(x, k, **kwargs), v_ref)


def test_group_size_per_head_thresholds():
    g = torch.Generator().manual_seed(4)
    x = heavy_tailed((3, 5, 4 * 16), g).float()
    counts, v_th = spike_counts(x, group_size=16)
    assert v_th.shape == (3, 5, 4)
    ref_counts, ref_v = reference(x.unflatten(-1, (4, 16)))
    assert torch.equal(v_th, ref_v.squeeze(-1))
    assert torch.equal(counts.float(), ref_counts.flatten(-2))
    assert torch.equal(dequantize(counts, v_th), (ref_counts * ref_v).flatten(-2))
    with pytest.raises(SpikeCodingError, match="group_size"):
        spike_counts(x, group_size=24)


def test_static_and_calibrated_threshold():
    g = torch.Generator().manual_seed(5)
    calib = heavy_tailed((64, 32), g).float()
    v_static = calibrate_threshold(calib)
    assert v_static.shape == (1,)
    assert torch.allclose(v_static.double(), reference(calib)[1].double().mean(), rtol=1e-6)
    x = torch.randn(4, 32, generator=g)
    counts, v_th = spike_counts(x, threshold=v_static)
    assert torch.equal(v_th, v_static.expand(4, 1))
    assert torch.equal(counts.float(), torch.round(x / v_static))
    per_head = calibrate_threshold(calib, group_size=8)
    counts, v_th = spike_counts(x, group_size=8, threshold=per_head)
    assert torch.equal(counts.float(), torch.round(x.unflatten(-1, (4, 8)) / per_head.unsqueeze(-1)).flatten(-2))
    x64 = x.double() * 10
    counts, v_th = spike_counts(x64, threshold=0.1)  # a Python number converts straight to float64
    assert v_th.dtype == torch.float64 and v_th[0, 0].item() == 0.1
    assert torch.equal(counts.double(), torch.round(x64 / 0.1))
    for bad in (0.0, -1.0, float("nan"), torch.ones(3)):
        with pytest.raises(SpikeCodingError, match="threshold"):
            spike_counts(x, threshold=bad)


def test_narrowest_dtype_and_max_count():
    x = torch.tensor([[127.0, -1.0]])
    assert spike_counts(x, threshold=1.0)[0].dtype == torch.int8
    x = torch.tensor([[-128.0, 1.0]])  # |count| 128 does not fit int8 symmetrically
    assert spike_counts(x, threshold=1.0)[0].dtype == torch.int16
    assert spike_counts(torch.tensor([[40000.0]]), threshold=1.0)[0].dtype == torch.int32
    big = spike_counts(torch.tensor([[3.0e9, -2.0]], dtype=torch.float64), threshold=1.0)[0]
    assert big.dtype == torch.int64 and big.tolist() == [[3_000_000_000, -2]]
    clipped, _ = spike_counts(torch.tensor([[500.0, -3.0, -900.0]]), threshold=1.0, max_count=100)
    assert clipped.dtype == torch.int8 and clipped.tolist() == [[100, -3, -100]]
    wide, _ = spike_counts(torch.tensor([[5.0, -3.0]]), threshold=1.0, dtype=torch.int32)
    assert wide.dtype == torch.int32 and wide.tolist() == [[5, -3]]
    with pytest.raises(SpikeCodingError, match="does not fit torch.int8.*max_count=127"):
        spike_counts(torch.tensor([[500.0]]), threshold=1.0, dtype=torch.int8)
    with pytest.raises(SpikeCodingError, match="beyond int64"):
        spike_counts(torch.tensor([[1e30]]), threshold=1.0)


def test_huge_finite_rows_clamp_like_the_formula():
    x = torch.full((3, 4096), 3e35)  # the float32 row sum overflows to inf
    x[1] = 1e-20  # and this row's threshold hits the lower clamp
    counts, v_th = spike_counts(x, max_count=1000)
    ref_counts, ref_v = reference(x)
    assert v_th.flatten().tolist() == [1e4, pytest.approx(1e-5), 1e4]
    assert torch.equal(v_th, ref_v)
    assert torch.equal(counts.float(), ref_counts.clamp(-1000, 1000))


# ------------------------------------------------------------------------- time layout


def closed_form_steps(c, coding):
    peak = max(abs(v) for v in c) if c else 0
    bits = 0  # ceil(log2(peak + 1)) in exact integer arithmetic (float log2 rounds above 2**48)
    while 2**bits <= peak:
        bits += 1
    return {"binary": max(c), "ternary": peak, "bitwise": max(1, bits), "twos_complement": max(2, bits + 1)}[coding]


def as_tensor(values, dtype=None):
    if dtype is None:
        peak = max(abs(v) for v in values)
        dtype = next(d for d in (torch.int8, torch.int16, torch.int32, torch.int64) if peak <= torch.iinfo(d).max)
    return torch.tensor(values, dtype=dtype)


def check_round_trip(c, coding):
    trains = expand(c, coding)
    values = c.flatten().tolist()
    assert trains.shape == (closed_form_steps(values, coding),) + tuple(c.shape)
    assert trains.dtype == torch.int8
    assert torch.equal(decode(trains, coding), c.to(torch.int64))
    fired = trains != 0
    stats = spike_stats(c, coding)
    assert stats.steps == trains.shape[0]
    assert torch.equal(stats.spikes.to(torch.int64), fired.sum(0))
    assert torch.equal(spikes_per_element(c, coding).to(torch.int64), fired.sum(0))
    assert torch.equal(stats.spikes_per_step, fired.flatten(1).sum(1))
    assert stats.total_spikes == int(fired.sum()) and stats.slots == trains.numel()
    expected_spikes = {
        "binary": [abs(v) for v in values],
        "ternary": [abs(v) for v in values],
        "bitwise": [bin(abs(v)).count("1") for v in values],
        "twos_complement": [bin(v & (2 ** trains.shape[0] - 1)).count("1") for v in values],
    }[coding]
    assert stats.spikes.flatten().tolist() == expected_spikes

    packed = expand(c, coding, "per_element")
    assert isinstance(packed, PackedTrains)
    assert torch.equal(decode(packed, coding), c.to(torch.int64))
    assert torch.equal(packed.steps.to(torch.int64), num_steps(c, coding, per_element=True).to(torch.int64))
    per = spike_stats(c, coding, "per_element")
    assert per.slots == packed.spikes.numel() == int(packed.steps.to(torch.int64).sum())
    assert per.total_spikes == int((packed.spikes != 0).sum())
    # spikes per element and per step from the packed trains, one element at a time
    lengths = packed.steps.flatten().tolist()
    per_step, per_element = [0] * per.steps, []
    offset = 0
    for length in lengths:
        segment = packed.spikes[offset: offset + length].tolist()
        for t, s in enumerate(segment):
            per_step[t] += s != 0
        per_element.append(sum(s != 0 for s in segment))
        offset += length
    assert per.spikes_per_step.tolist() == per_step
    assert per.spikes.flatten().tolist() == per_element


signed_small = st.lists(st.integers(-(2**15 - 1), 2**15 - 1), min_size=1, max_size=10)
signed_any = st.lists(st.integers(-(2**63 - 1), 2**63 - 1), min_size=1, max_size=10)
extremes = [0, 1, -1, 127, -127, 128, -128, 2**15 - 1, -(2**15 - 1), 2**31 - 1, -(2**31), 2**63 - 1, -(2**63 - 1)]


@settings(deadline=None, max_examples=40)
@given(values=st.lists(st.integers(-1000, 1000), min_size=1, max_size=10)
       | st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_round_trip_unit_codings(values):  # magnitudes up to 2**15 - 1: test_round_trip_dtype_extremes
    c = as_tensor(values)
    check_round_trip(c, "ternary")
    check_round_trip(c.abs(), "binary")


@settings(deadline=None, max_examples=60)
@given(values=signed_any | st.lists(st.sampled_from(extremes), min_size=1, max_size=8) | signed_small,
       coding=st.sampled_from(["bitwise", "twos_complement"]))
def test_round_trip_bit_codings(values, coding):
    check_round_trip(as_tensor(values), coding)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
@pytest.mark.parametrize("coding", CODINGS)
def test_round_trip_dtype_extremes(dtype, coding):
    info = torch.iinfo(dtype)
    unit = coding in ("binary", "ternary")
    hi = min(info.max, 2**15 - 1) if unit else info.max
    lo = 0 if coding == "binary" or dtype == torch.uint8 else -hi
    values = [[lo, hi, 0], [1, lo // 2, hi // 3]]
    if not unit and dtype not in (torch.uint8, torch.int64):
        values[1][0] = info.min  # the most negative value is widened, not overflowed
    check_round_trip(torch.tensor(values, dtype=dtype), coding)


def test_expand_examples():
    assert expand(torch.tensor([-5]), "bitwise").flatten().tolist() == [-1, 0, -1]
    assert expand(torch.tensor([5, -5]), "twos_complement").T.tolist() == [[0, 1, 0, 1], [1, 0, 1, 1]]
    assert expand(torch.tensor([3, 0]), "binary").T.tolist() == [[1, 1, 1], [0, 0, 0]]
    assert expand(torch.tensor([-2, 1]), "ternary").T.tolist() == [[-1, -1], [1, 0]]
    assert expand(torch.tensor([-5, 1]), "bitwise", "per_element").spikes.tolist() == [-1, 0, -1, 1]
    # a fixed T pads with zeros (or sign-extends) and still decodes
    for coding in CODINGS:
        c = torch.tensor([3, 0, 2]) if coding == "binary" else torch.tensor([3, -2, 0])
        trains = expand(c, coding, steps=6)
        assert trains.shape[0] == 6 and torch.equal(decode(trains, coding), c)
        assert torch.equal(spike_stats(c, coding, steps=6).spikes_per_step, (trains != 0).sum(1))
    assert expand(torch.tensor([-1]), "twos_complement", steps=5).flatten().tolist() == [1] * 5


def test_all_zero_counts_have_closed_form_steps():
    zeros = torch.zeros(3, 4, dtype=torch.int8)
    assert [num_steps(zeros, c) for c in CODINGS] == [0, 0, 1, 2]
    for coding in CODINGS:
        stats = spike_stats(zeros, coding)
        assert stats.total_spikes == 0 and stats.firing_rate == 0.0
        assert torch.equal(decode(expand(zeros, coding), coding), zeros.long())


def test_capacity():
    assert capacity("binary", 4) == (0, 4)
    assert capacity("ternary", 4) == (-4, 4)
    assert capacity("bitwise", 4) == (-15, 15)
    assert capacity("twos_complement", 4) == (-8, 7)
    assert decode(expand(torch.tensor([-8, 7]), "twos_complement", steps=4), "twos_complement").tolist() == [-8, 7]
    with pytest.raises(SpikeCodingError, match="carry counts in"):
        expand(torch.tensor([8]), "twos_complement", steps=4)


def test_firing_rate_is_spikes_over_slots():
    c = torch.tensor([[3, -1], [0, 2]])
    stats = spike_stats(c, "ternary")
    assert stats.steps == 3 and stats.total_spikes == 6 and stats.slots == 12
    assert stats.firing_rate == 0.5
    assert stats.spikes_per_step.tolist() == [3, 2, 1]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_input_is_rejected(bad):
    x = torch.randn(3, 8)
    x[2, 5] = bad
    with pytest.raises(SpikeCodingError, match=r"index \(2, 5\).*nan_to_num"):
        spike_counts(x)
    with pytest.raises(SpikeCodingError, match="nan_to_num"):
        adaptive_threshold(x)


def test_bad_activations_are_rejected():
    with pytest.raises(SpikeCodingError, match="floating.*x.float"):
        spike_counts(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(SpikeCodingError, match="empty"):
        spike_counts(torch.empty(0, 4))
    with pytest.raises(SpikeCodingError, match="0-d"):
        spike_counts(torch.tensor(1.0))
    with pytest.raises(SpikeCodingError, match="torch.Tensor"):
        spike_counts([1.0, 2.0])
    with pytest.raises(SpikeCodingError, match="k must be"):
        spike_counts(torch.ones(3), k=0)
    with pytest.raises(SpikeCodingError, match="max_count"):
        spike_counts(torch.ones(3), max_count=-1)


def test_bad_counts_are_rejected():
    for fn in (lambda c: expand(c, "ternary"), lambda c: spike_stats(c, "ternary"), lambda c: num_steps(c, "ternary")):
        with pytest.raises(SpikeCodingError, match="integers"):
            fn(torch.ones(3))
        with pytest.raises(SpikeCodingError, match="empty"):
            fn(torch.empty(0, dtype=torch.int8))
    with pytest.raises(SpikeCodingError, match="2\\*\\*63"):
        expand(torch.tensor([-(2**63)]), "bitwise")


@pytest.mark.parametrize("call", [
    lambda: expand(torch.tensor([1]), "unary"),
    lambda: decode(torch.zeros(2, 1), "rate"),
    lambda: spike_stats(torch.tensor([1]), "Ternary"),
    lambda: num_steps(torch.tensor([1]), None),
])
def test_unknown_coding(call):
    with pytest.raises(SpikeCodingError, match="unknown coding.*binary, ternary, bitwise, twos_complement"):
        call()


def test_binary_refuses_negative_counts():
    c = torch.tensor([2, -3, 0])
    for call in (lambda: expand(c, "binary"), lambda: spike_stats(c, "binary"),
                 lambda: expand(c, "binary", "per_element")):
        with pytest.raises(SpikeCodingError, match="non-negative.*-3.*'ternary'"):
            call()


def test_expansion_over_budget_suggests_alternatives():
    c = torch.tensor([[3, -2, 0, 1]] * 100, dtype=torch.int16)
    c[7, 2] = 3000  # one outlier sets T for the whole tensor
    with pytest.raises(SpikeCodingError, match="per_element.*packs 3600 slots.*bitwise.*T=12.*spike_stats") as err:
        expand(c, "ternary", max_bytes=1 << 20)
    assert "(3000, 100, 4) needs 1.1 MiB" in str(err.value)
    packed = expand(c, "ternary", "per_element", max_bytes=1 << 20)  # the suggestions work
    assert packed.spikes.numel() == 3600 and torch.equal(decode(packed, "ternary"), c.long())
    assert expand(c, "bitwise", max_bytes=1 << 20).shape == (12, 100, 4)
    assert spike_stats(c, "ternary").total_spikes == 3600
    with pytest.raises(SpikeCodingError, match="packing 3600 per-element ternary slots.*bitwise"):
        expand(c, "ternary", "per_element", max_bytes=1 << 10)
    with pytest.raises(SpikeCodingError, match="bitwise"):
        spike_stats(torch.tensor([2**40]), "ternary")


def test_steps_argument_is_checked():
    c = torch.tensor([5, -2])
    with pytest.raises(SpikeCodingError, match="carry counts in \\[-4, 4\\].*steps=None"):
        expand(c, "ternary", steps=4)
    with pytest.raises(SpikeCodingError, match="steps must be"):
        expand(c, "ternary", steps="global")
    with pytest.raises(SpikeCodingError, match="longer than 63"):
        expand(c, "bitwise", steps=64)


def test_decode_rejects_foreign_trains():
    with pytest.raises(SpikeCodingError, match="take values in"):
        decode(torch.tensor([[1, -1]]), "binary")
    with pytest.raises(SpikeCodingError, match="take values in"):
        decode(torch.tensor([[0.5, 1.0]]), "ternary")
    with pytest.raises(SpikeCodingError, match="take values in"):
        decode(torch.tensor([[2, 0]]), "bitwise")
    with pytest.raises(SpikeCodingError, match="no elements"):
        decode(torch.zeros(3, 0), "ternary")
    packed = expand(torch.tensor([2, -1]), "ternary", "per_element")
    with pytest.raises(SpikeCodingError, match="does not match"):
        decode(PackedTrains(packed.spikes[:-1], packed.steps), "ternary")
    # float and bool trains from a network decode like integer ones
    assert decode(expand(torch.tensor([3, -2]), "ternary").float(), "ternary").tolist() == [3, -2]
    assert decode(torch.tensor([[True], [False], [True]]), "bitwise").tolist() == [5]


def test_dequantize_checks_groups():
    with pytest.raises(SpikeCodingError, match="groups"):
        dequantize(torch.ones(2, 6, dtype=torch.int8), torch.ones(2, 4))
