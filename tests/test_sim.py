"""Event-driven simulation (``sbsnn.sim``) against the integer path and closed forms.

- ``simulate`` on the embedded model gives logits bit-identical (``torch.equal``) to
  ``spiking_model(ids)``, in one pass and block by block through the decoding state,
  and its per-layer counters equal closed forms of the counts each layer saw;
- the same on models with injected massive activations (channels at 100-1000x the
  others, counts far past the float32-exact bound) for every coding;
- ``step_events`` laid out densely is ``sbsnn.neurons.expand``, sums back to the counts
  and has ``spike_stats``' spikes per step (hypothesis, every coding, extreme values);
- the fast event accumulation (``accumulate_events_torch``) equals the plain per-step
  engine (``accumulate_events_reference``) and the int64 group sums (hypothesis), and
  ``summarize``'s closed forms equal a walk over the events;
- the counters of hand-made ``SpikingLinear`` calls, one with a huge outlier, equal
  numbers worked out by hand;
- ``torch.get_num_threads()`` seen from other threads never changes during a simulation;
- clear errors: no spiking layer, CuPy without a GPU, binary coding on signed inputs.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters.quant import (f32_count_bound, group_accumulate, group_accumulate_reference,
                                    num_groups, rescale)
from sbsnn.models import HybridConfig, HybridForCausalLM, load_model
from sbsnn.neurons import CODINGS, SpikeCodingError, expand, num_steps, spike_stats
from sbsnn.sim import Simulator, events_to_counts, simulate, step_events, summarize
from sbsnn.sim import engine
from sbsnn.sim.engine import accumulate_events_reference, accumulate_events_torch

N_TOKENS = 64          # tokens of held-out text per simulation (ASCII: one byte, one token)
BLOCK = 32


# ----------------------------------------------------------------------------- helpers
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_hybrid():
    return load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def text():
    from importlib.resources import files

    t = files("sbsnn.data").joinpath("tiny-hybrid/heldout.txt").read_text()
    assert t.isascii() and len(t) >= 4 * N_TOKENS
    return t


class CountsRecorder:
    """A ``record=`` object keeping every call's counts per layer (in call order)."""

    def __init__(self):
        self.calls: dict[str, list[torch.Tensor]] = {}

    def write(self, name, counts, v_th):
        self.calls.setdefault(name, []).append(counts.clone())

    def flush(self):
        pass

    def close(self, complete):
        self.complete = complete


def split_events(counts: torch.Tensor, coding: str, steps: int | None = None) -> tuple[int, int]:
    """Closed form of (positive, negative) events: the spikes of each element, by the
    sign of its unit spikes (two's complement spikes are all 1s: the sign is in the
    weight of step 0)."""
    s = spike_stats(counts, coding, steps)
    if coding == "twos_complement":
        return s.total_spikes, 0
    spikes = s.spikes.to(torch.int64)
    return int(spikes[counts > 0].sum()), int(spikes[counts < 0].sum())


def check_counters(result, recorder: CountsRecorder, coding: str, layers: dict[str, SpikingLinear]):
    """Every layer's counters equal the closed forms of the counts it was given."""
    assert set(result.layers) == set(layers) == set(recorder.calls)
    for name, c in result.layers.items():
        calls = recorder.calls[name]
        layer = layers[name]
        assert (c.in_features, c.out_features) == (layer.in_features, layer.out_features)
        assert c.calls == len(calls)
        assert c.tokens == sum(x.shape[0] for x in calls)
        assert c.elements == sum(x.numel() for x in calls) == c.tokens * layer.in_features
        assert c.nonzero == sum(int((x != 0).sum()) for x in calls)
        steps = [num_steps(x, coding) for x in calls]
        assert c.time_steps_max == max(steps)
        assert c.slots == sum(x.numel() * T for x, T in zip(calls, steps))
        assert c.silent_channels == sum(int((x == 0).all(0).sum()) for x in calls)
        assert c.channel_calls == layer.in_features * len(calls)
        pos = neg = 0
        for x, T in zip(calls, steps):
            p, n = split_events(x, coding, T)
            pos, neg = pos + p, neg + n
        assert (c.events_pos, c.events_neg) == (pos, neg), name
        assert c.synaptic_ops == (pos + neg) * layer.out_features
        assert c.dense_macs == c.tokens * layer.in_features * layer.out_features
    t = result.totals()
    assert t["events"] == sum(c.events for c in result.layers.values())
    assert t["synaptic_ops"] == sum(c.synaptic_ops for c in result.layers.values())


_SNN_CACHE: dict = {}


def spiking(model, preset, coding):
    key = (preset, coding)
    if key not in _SNN_CACHE:
        _SNN_CACHE[key] = convert(model, preset, coding=coding, k=3).eval()
    return _SNN_CACHE[key]


# ------------------------------------------------------- event path == integer path (model)
MODEL_CASES = [(p, c) for p in ("paper", "w8aspike") for c in ("ternary", "bitwise", "twos_complement")]


@pytest.mark.parametrize("preset,coding", MODEL_CASES)
def test_simulate_logits_equal_integer_path(tiny_hybrid, text, preset, coding):
    snn = spiking(tiny_hybrid, preset, coding)
    ids = torch.tensor([snn.tokenizer.encode(text[:N_TOKENS])])
    assert ids.shape == (1, N_TOKENS)
    with torch.no_grad():
        want = snn(ids)[0]
    rec = CountsRecorder()
    res = simulate(snn, text[:N_TOKENS], backend="torch", record=rec)
    assert res.backend == "torch" and res.coding == coding and res.tokens == N_TOKENS
    assert res.logits.dtype == torch.float32 and res.logits.shape == (N_TOKENS, 256)
    assert torch.equal(res.logits, want), (res.logits - want).abs().max()
    assert rec.complete is True
    layers = {n: m for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    if preset == "w8aspike":
        assert not any(n.endswith("down_proj") for n in layers)
    check_counters(res, rec, coding, layers)
    # every SpikingLinear is back on the integer path afterwards
    assert all(m.executor is None for m in layers.values())


@pytest.mark.parametrize("preset,coding", [("paper", "bitwise"), ("w8aspike", "ternary")])
def test_simulate_blocks_equal_integer_path_through_state(tiny_hybrid, text, preset, coding):
    snn = spiking(tiny_hybrid, preset, coding)
    ids = torch.tensor([snn.tokenizer.encode(text[:N_TOKENS + 5])])  # a short last block
    state = snn.new_state()
    with torch.no_grad():
        want = torch.cat([snn(ids[:, s:s + BLOCK], state)[0] for s in range(0, ids.shape[1], BLOCK)])
    rec = CountsRecorder()
    res = simulate(snn, ids[0], backend="torch", block_size=BLOCK, record=rec)
    assert res.tokens == N_TOKENS + 5
    assert torch.equal(res.logits, want), (res.logits - want).abs().max()
    layers = {n: m for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    check_counters(res, rec, coding, layers)
    assert all(c.calls == 3 for c in res.layers.values())  # 32 + 32 + 5 tokens


def test_simulate_batch_returns_first_sequence(tiny_hybrid):
    snn = spiking(tiny_hybrid, "paper", "ternary")
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    res = simulate(snn, ids, backend="torch")
    with torch.no_grad():
        want = snn(ids)
    assert torch.equal(res.logits, want[0])
    assert res.tokens == 20 and all(c.tokens == 40 for c in res.layers.values())
    with pytest.raises(ValueError, match="non-empty"):
        simulate(snn, "", backend="torch")


def test_simulate_max_tokens_and_no_logits(tiny_hybrid, text):
    snn = spiking(tiny_hybrid, "paper", "bitwise")
    res = simulate(snn, text, backend="torch", max_tokens=9, return_logits=False)
    assert res.logits is None and res.tokens == 9
    assert all(c.tokens == 9 for c in res.layers.values())


def test_binary_coding_rejects_signed_inputs(tiny_hybrid, text):
    snn = convert(tiny_hybrid, "paper", coding="binary", k=3)
    with pytest.raises(SpikeCodingError, match="binary.*non-negative.*ternary"):
        simulate(snn, text[:8], backend="torch")
    layers = [m for m in snn.modules() if isinstance(m, SpikingLinear)]
    assert all(m.executor is None for m in layers)  # restored after the error


# ------------------------------------------------------------------- errors and backends
def test_simulate_without_spiking_layer_raises(tiny_hybrid):
    with pytest.raises(ValueError, match="no SpikingLinear.*convert"):
        simulate(tiny_hybrid, "hello", backend="torch")
    with pytest.raises(ValueError, match="no SpikingLinear"):
        Simulator(nn.Sequential(nn.Linear(4, 4)))


def test_cupy_backend_without_gpu_names_the_fix(tiny_hybrid):
    if engine.cupy_usable():
        pytest.skip("CuPy and a CUDA device are usable here")
    snn = spiking(tiny_hybrid, "paper", "ternary")
    with pytest.raises(RuntimeError, match=r"CuPy.*CUDA.*pip install.*backend='torch'"):
        simulate(snn, "hi", backend="cupy")


def test_auto_backend_picks_torch_without_gpu(tiny_hybrid):
    if engine.cupy_usable():
        pytest.skip("CuPy and a CUDA device are usable here: auto picks cupy")
    snn = spiking(tiny_hybrid, "paper", "ternary")
    assert simulate(snn, "hi", backend="auto").backend == "torch"
    assert Simulator(snn, backend="auto").backend == "torch"
    with pytest.raises(ValueError, match="backend must be"):
        simulate(snn, "hi", backend="numpy")


# ------------------------------------------------------------------ events (hypothesis)
SMALL = st.integers(-4, 4)
UNIT_EXTREMES = st.sampled_from([-128, -127, -1, 0, 1, 127, 128])
BIT_EXTREMES = st.sampled_from([-(2 ** 40) - 3, -32768, -1000, -129, -128, -127, -1, 0, 1,
                                127, 128, 255, 1000, 32767, 2 ** 40 + 5])


def values_for(draw, coding):
    """Small counts; in about half the examples mixed with extremes (unit codings pay one
    time step per unit of the largest count, so not every example gets a 128)."""
    if not draw(st.booleans()):
        return SMALL
    return st.one_of(SMALL, SMALL, UNIT_EXTREMES if coding in ("binary", "ternary") else BIT_EXTREMES)


@st.composite
def counts_for(draw, coding):
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    vals = draw(st.lists(values_for(draw, coding), min_size=n * d, max_size=n * d))
    c = torch.tensor(vals, dtype=torch.int64).view(n, d)
    if coding == "binary":
        c = c.abs()
    lo, hi = int(c.min()), int(c.max())
    dtypes = [dt for dt in (torch.int8, torch.int16, torch.int32, torch.int64)
              if torch.iinfo(dt).min <= lo and hi <= torch.iinfo(dt).max]
    return c.to(draw(st.sampled_from(dtypes)))


def step_weight(coding, T, t):
    if coding in ("binary", "ternary"):
        return 1
    if coding == "twos_complement" and t == 0:
        return -(2 ** (T - 1))
    return 2 ** (T - 1 - t)


def check_events(counts, coding, steps):
    T = num_steps(counts, coding) if steps is None else steps
    evs = list(step_events(counts, coding, steps))
    assert [e.step for e in evs] == list(range(T))
    assert [e.weight for e in evs] == [step_weight(coding, T, t) for t in range(T)]
    dense = torch.zeros((T,) + tuple(counts.shape), dtype=torch.int8)
    for e in evs:
        assert e.token.dtype == e.channel.dtype == torch.int64 and e.polarity.dtype == torch.int8
        assert bool((e.polarity.abs() == 1).all())
        dense[e.step, e.token, e.channel] = e.polarity
        # each (token, channel) fires at most once per step
        assert len(set(zip(e.token.tolist(), e.channel.tolist()))) == len(e)
    assert torch.equal(dense, expand(counts, coding, steps))
    back = events_to_counts(step_events(counts, coding, steps), tuple(counts.shape))
    assert back.dtype == torch.int64 and torch.equal(back, counts.to(torch.int64))
    per_step = spike_stats(counts, coding, steps).spikes_per_step
    assert [len(e) for e in evs] == per_step.tolist()


@pytest.mark.parametrize("coding", CODINGS)
@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_events_are_expand_and_spike_stats(coding, data):
    counts = data.draw(counts_for(coding))
    check_events(counts, coding, None)
    # a longer T than the counts need (a call's global T): padding / sign extension
    extra = data.draw(st.integers(1, 3))
    check_events(counts, coding, num_steps(counts, coding) + extra)


@pytest.mark.parametrize("coding", CODINGS)
def test_events_of_fixed_examples(coding):
    for vals in ([[0, 0], [0, 0]], [[127, -127, 0]], [[-128, 3], [0, 1]], [[1000, -1000]]):
        c = torch.tensor(vals)
        if coding == "binary":
            c = c.abs()
        check_events(c, coding, None)


def test_bitwise_minus_five_fires_at_steps_zero_and_two():
    evs = list(step_events(torch.tensor([[-5]]), "bitwise"))
    assert [(e.step, e.weight, e.polarity.tolist()) for e in evs] == [
        (0, 4, [-1]), (1, 2, []), (2, 1, [-1])]


def test_step_events_rejects_bad_input():
    with pytest.raises(ValueError, match="tokens, channels"):
        list(step_events(torch.tensor([1, 2]), "ternary"))
    with pytest.raises(ValueError, match="coding"):
        list(step_events(torch.tensor([[1, 2]]), "unary"))


# ------------------------------------------- accumulate_events_torch == group_accumulate
@st.composite
def accumulate_case(draw, coding):
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, 40))
    out, gs = draw(st.integers(1, 7)), draw(st.integers(1, 16))
    vals = draw(st.lists(values_for(draw, coding), min_size=n * d, max_size=n * d))
    counts = torch.tensor(vals, dtype=torch.int64).view(n, d)
    if coding == "binary":
        counts = counts.abs()
    if draw(st.booleans()):
        lo, hi = int(counts.min()), int(counts.max())
        if -(2 ** 15) <= lo and hi < 2 ** 15:
            counts = counts.to(torch.int16)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    codes = torch.randint(-127, 128, (out, d), generator=g, dtype=torch.int8)
    codes[:, : min(d, 2)] = draw(st.sampled_from([127, -127, 0]))  # extreme weights too
    return counts, codes, gs


@pytest.mark.parametrize("coding", CODINGS)
@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_accumulate_events_equals_group_accumulate(coding, data):
    counts, codes, gs = data.draw(accumulate_case(coding))
    n, d = counts.shape
    want = group_accumulate(counts, codes, gs)
    assert want.shape == (num_groups(d, gs), n, codes.shape[0])
    codes_t = codes.t().contiguous()
    T = num_steps(counts, coding)
    assert torch.equal(want, group_accumulate_reference(counts, codes, gs))
    for steps in (T, T + data.draw(st.integers(1, 2))):
        acc, pos, neg = accumulate_events_torch(counts, codes_t, gs, coding, steps)
        ref, rpos, rneg = accumulate_events_reference(counts, codes_t, gs, coding, steps)
        assert acc.dtype == ref.dtype == torch.int64
        assert torch.equal(acc, want) and torch.equal(ref, want)
        assert (pos, neg) == (rpos, rneg) == split_events(counts, coding, steps)


def test_accumulate_events_large_counts_exact():
    # beyond float32's and float64's exact integer range: group_accumulate goes int64
    counts = torch.tensor([[2 ** 50 + 1, -(2 ** 49) - 7, 3], [0, 1, -1]])
    codes = torch.tensor([[127, -127, 5], [-1, 1, 0]], dtype=torch.int8)
    for coding in ("bitwise", "twos_complement"):
        acc, _, _ = accumulate_events_torch(counts, codes.t().contiguous(), 2, coding,
                                            num_steps(counts, coding))
        ref, _, _ = accumulate_events_reference(counts, codes.t().contiguous(), 2, coding,
                                                num_steps(counts, coding))
        assert torch.equal(ref, acc)
        want = torch.tensor([[[127 * (2 ** 50 + 1) + 127 * (2 ** 49 + 7), -(2 ** 50 + 1) - (2 ** 49 + 7)],
                              [-127, 1]],
                             [[15, 0], [-5, 0]]])
        assert torch.equal(acc, want)
        assert torch.equal(acc, group_accumulate(counts, codes, 2))


# ------------------------------------------------------ counters on a hand-made layer
class OneLayer(nn.Module):
    def __init__(self, coding):
        super().__init__()
        torch.manual_seed(0)
        self.proj = SpikingLinear.from_linear(nn.Linear(8, 3), group_size=4, k=3.0, coding=coding)

    def forward(self, x):
        return self.proj(x)


# sum |c| = 24 = k * D in every row: V_th = mean|x| / k = 1 exactly, so counts = x.
# Channels 2 and 4 are zero in both rows (silent for a call holding both).
C = torch.tensor([[5, -2, 0, 3, 0, -5, 6, 3],
                  [-7, 0, 0, 4, 0, 1, -6, 6]])
X = C.to(torch.float32)

# by hand: (T, events_pos, events_neg) of C (two tokens) and of its second row alone
HAND = {
    # ternary: |c| unit spikes; T = max|c| = 7
    "ternary": dict(both=(7, 5 + 3 + 6 + 3 + 4 + 1 + 6, 2 + 5 + 7 + 6), row1=(7, 4 + 1 + 6, 7 + 6)),
    # bitwise: popcount(|c|) spikes, sign of c; T = bit_length(7) = 3
    # pos: 5,3,6,3 | 4,1,6 -> 2+2+2+2+1+1+2 ; neg: 2,5 | 7,6 -> 1+2+3+2
    "bitwise": dict(both=(3, 12, 8), row1=(3, 1 + 1 + 2, 3 + 2)),
}


@pytest.mark.parametrize("coding", ["ternary", "bitwise"])
def test_counters_equal_closed_forms_on_a_hand_made_layer(coding):
    model = OneLayer(coding)
    layer = model.proj
    counts, v_th = layer.spike(X)
    assert torch.equal(v_th, torch.ones(2, 1)) and torch.equal(counts.to(torch.int64), C)
    with torch.no_grad():
        want_both, want_row1 = model(X[None]), model(X[1:])  # the integer path
        with Simulator(model, backend="torch") as sim:
            got_both = model(X[None])      # [1, 2, 8]: tokens are rows of any leading shape
            got_row1 = model(X[1:])
    assert layer.executor is None
    assert got_both.shape == (1, 2, 3) and torch.equal(got_both, want_both)
    assert torch.equal(got_row1, want_row1)
    c = sim.counters["proj"]
    (T, pos_b, neg_b), (T1, pos_1, neg_1) = HAND[coding]["both"], HAND[coding]["row1"]
    assert c.calls == 2 and c.tokens == 3
    assert c.elements == 3 * 8 and c.nonzero == 6 + 5 + 5
    assert (c.events_pos, c.events_neg) == (pos_b + pos_1, neg_b + neg_1)
    assert c.events == pos_b + pos_1 + neg_b + neg_1
    assert c.synaptic_ops == c.events * 3
    assert c.time_steps_max == max(T, T1)
    assert c.slots == 16 * T + 8 * T1
    assert c.silent_channels == 2 + 3          # {2, 4}, then {1, 2, 4}
    assert c.channel_calls == 2 * 8
    assert c.dense_macs == 3 * 8 * 3
    if coding == "ternary":  # a count of c is |c| events of sign(c)
        assert c.events == int(C.abs().sum()) + int(C[1].abs().sum())
    d = c.to_dict()
    assert (d["events"], d["synaptic_ops"], d["dense_macs"]) == (c.events, c.synaptic_ops, c.dense_macs)


def test_executor_swap_restores_and_refuses_nesting():
    """One mechanism swaps how spiking layers execute (simulator, calibration, refinement):
    it restores the previous executor on exit, error or not, and refuses a second swap on
    a layer that one already holds (the inner one would take the outer one's calls)."""
    from sbsnn.converters.calibration import SpikeTap
    from sbsnn.converters.calibration.refine import straight_through
    from sbsnn.converters.spiking_linear import ExecutorSwap

    model = OneLayer("ternary")
    layer = model.proj
    seen = []
    swap = ExecutorSwap(model, lambda name, lyr, x: seen.append(name) or lyr.forward_counts(
        *lyr.spike(x), x.dtype).view(*x.shape[:-1], lyr.out_features))
    with torch.no_grad():
        want = model(X)
        with swap:
            assert torch.equal(model(X), want) and seen == ["proj"]
            for inner in (Simulator(model, backend="torch"), SpikeTap(model, "ternary"),
                          straight_through(model)):
                with pytest.raises(RuntimeError, match="proj.*another executor swap"):
                    with inner:
                        pass
                assert layer.executor is not None       # the outer swap still holds it
            with pytest.raises(RuntimeError, match="entered twice"):
                with swap:
                    pass
            assert torch.equal(model(X), want) and seen == ["proj", "proj"]
        assert layer.executor is None
        with pytest.raises(ZeroDivisionError):
            with Simulator(model, backend="torch"):
                1 / 0
        assert layer.executor is None
        with pytest.raises(TypeError, match="needs execute"):     # nothing to run: refused
            ExecutorSwap(model)
        with Simulator(model, backend="torch") as sim:   # usable again after the error
            assert torch.equal(model(X), want)
        assert sim.counters["proj"].calls == 1 and layer.executor is None


def test_hand_made_bitwise_events_of_minus_five():
    # the -5 of row 0, channel 5: two negative events, at steps 0 (weight 4) and 2 (weight 1)
    seen = [(e.step, e.weight, int(p)) for e in step_events(C, "bitwise")
            for tk, ch, p in zip(e.token.tolist(), e.channel.tolist(), e.polarity.tolist())
            if (tk, ch) == (0, 5)]
    assert seen == [(0, 4, -1), (2, 1, -1)]


# ---------------------------------------------- one huge outlier: counters by hand
# Two tokens whose sum |c| is the same (40020), so with k = 40020 / 8 = 5002.5 the
# threshold mean|x| / k is exactly 1 and the counts are the inputs themselves. One
# channel of each token is a massive activation (40000, 40002): past the float32-exact
# bound of group 4 (32767), so the accumulation takes the outlier part too.
C_BIG = torch.tensor([[40000, -2, 0, 3, 0, -5, 6, 4],
                      [-7, 0, 0, 4, 0, 1, -6, 40002]])
K_BIG = 5002.5
# (T, events_pos, events_neg), worked out by hand:
HAND_BIG = {
    # |c| unit spikes; T = max|c|
    "ternary": (40002, 40000 + 3 + 6 + 4 + 4 + 1 + 40002, 2 + 5 + 7 + 6),
    # popcount(|c|): 40000 = 2^15+2^12+2^11+2^7+2^6 (5), 40002 (6), 3, 6 (2), 4, 1 (1);
    # negatives 2 (1), 5 (2), 7 (3), 6 (2); T = bit_length(40002) = 16
    "bitwise": (16, 5 + 2 + 2 + 1 + 1 + 1 + 6, 1 + 2 + 3 + 2),
    # T = 16 + 1 = 17 bits; a negative -m is the word 2^17 - m with 17 - popcount(m - 1)
    # ones: -2 (16), -5 (16), -7 (15), -6 (15); all spikes positive
    "twos_complement": (17, 5 + 16 + 2 + 16 + 2 + 1 + 15 + 1 + 1 + 15 + 6, 0),
}


class BigLayer(nn.Module):
    def __init__(self, coding):
        super().__init__()
        torch.manual_seed(1)
        self.proj = SpikingLinear.from_linear(nn.Linear(8, 3), group_size=4, k=K_BIG, coding=coding)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("coding", sorted(HAND_BIG))
def test_counters_equal_closed_forms_with_one_huge_outlier(coding):
    model = BigLayer(coding)
    layer = model.proj
    x = C_BIG.to(torch.float32)
    counts, v_th = layer.spike(x)
    assert torch.equal(v_th, torch.ones(2, 1)) and torch.equal(counts.to(torch.int64), C_BIG)
    assert int(counts.abs().max()) > f32_count_bound(4)
    with torch.no_grad():
        want = rescale(group_accumulate_reference(counts, layer.weight_codes, 4), layer.weight_scales,
                       v_th, layer.bias, torch.float32)
        assert torch.equal(model(x), want)                  # the integer path
        with Simulator(model, backend="torch") as sim:
            got = model(x)
    assert torch.equal(got, want)
    c = sim.counters["proj"]
    T, pos, neg = HAND_BIG[coding]
    assert (c.events_pos, c.events_neg) == (pos, neg)
    assert c.synaptic_ops == (pos + neg) * 3
    assert c.time_steps_max == T and c.slots == 16 * T
    assert c.count_max == 40002
    assert c.nonzero == 6 + 5 and c.elements == 16 and c.tokens == 2 and c.calls == 1
    assert c.silent_channels == 2 and c.channel_calls == 8
    s = summarize(counts, coding)
    assert (s.steps, s.events_pos, s.events_neg, s.peak) == (T, pos, neg, 40002)
    per_pos, per_neg = s.events_per_step()
    assert int(per_pos.sum()) == pos and int(per_neg.sum()) == neg and per_pos.numel() == T
    if coding == "ternary":
        # positive elements with |c| > t: 7 at step 0 (40000, 3, 6, 4, 4, 1, 40002), then
        # 1, 3, both 4s and 6 drop out; from step 6 on only the two outliers fire, from
        # step 40000 on only 40002. Negative: 2, 5, 7, 6.
        assert per_pos[:7].tolist() == [7, 6, 6, 5, 3, 3, 2] and per_pos[6:40000].eq(2).all()
        assert per_pos[40000:].tolist() == [1, 1]
        assert per_neg[:8].tolist() == [4, 4, 3, 3, 3, 2, 1, 0] and per_neg[7:].eq(0).all()


def test_summarize_equals_the_event_walk_for_every_coding():
    g = torch.Generator().manual_seed(3)
    for trial in range(60):
        coding = CODINGS[trial % 4]
        peak = (3, 300, 40_000, 2 ** 21, 2 ** 40)[trial % 5]
        if coding in ("binary", "ternary"):
            peak = min(peak, 3000)
        c = torch.randint(-peak, peak + 1, (4, 9), generator=g) * (torch.rand(4, 9, generator=g) < 0.6)
        if coding == "binary":
            c = c.abs()
        for steps in (None, num_steps(c, coding) + 2):
            s = summarize(c, coding, steps)
            evs = list(step_events(c, coding, steps))
            pos = [int((e.polarity > 0).sum()) for e in evs]
            neg = [int((e.polarity < 0).sum()) for e in evs]
            assert s.steps == len(evs)
            assert (s.events_pos, s.events_neg) == (sum(pos), sum(neg)) == split_events(c, coding, steps)
            p, n = s.events_per_step()
            assert p.tolist() == pos and n.tolist() == neg
            assert s.nonzero == int((c != 0).sum()) and s.peak == int(c.abs().max())
            assert s.silent_channels == int((c == 0).all(0).sum())


def test_summarize_handles_the_dtype_minimum():
    c = torch.tensor([[-32768, 0], [0, 0]], dtype=torch.int16)
    s = summarize(c, "bitwise")
    assert (s.silent_channels, s.peak, s.events_neg, s.nonzero) == (1, 32768, 1, 1)
    c = torch.tensor([[-128, 0], [0, 0]], dtype=torch.int8)
    assert summarize(c, "ternary").events_neg == 128
    with pytest.raises(SpikeCodingError, match="binary"):
        summarize(c, "binary")


# ------------------------------------------------- models with massive activations
MASSIVE = dict(vocab_size=256, hidden_size=64, intermediate_size=512, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
               rope_theta=10000.0, gate_low_rank_dim=16)


def massive_hybrid():
    """A small GLA + SWA model with massive activations, as pretrained LLMs have: residual
    channels 3 and 40 at 1000x and 100x (every token), MLP intermediate channels 7 and 300
    at 1000x and 100x (the down projections' inputs reach counts of ~1500)."""
    g = torch.Generator().manual_seed(0)
    model = HybridForCausalLM(HybridConfig(**MASSIVE))
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * r if "norm" in name else 0.2 * r)
        model.model.embeddings.weight[:, 3] *= 1000
        model.model.embeddings.weight[:, 40] *= 100
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[7] *= 1000
            layer.mlp.up_proj.weight[300] *= 100
    return model.eval()


class Rectified(nn.Module):
    """Token ids -> embedding -> (relu -> SpikingLinear) x 3 -> logits: non-negative spiking
    inputs (what binary coding needs), with massive channels in both hidden widths."""

    def __init__(self, coding):
        super().__init__()
        torch.manual_seed(4)
        self.emb = nn.Embedding(256, 64)
        with torch.no_grad():
            self.emb.weight[:, 3] = self.emb.weight[:, 3].abs() * 1000
            self.emb.weight[:, 40] = self.emb.weight[:, 40].abs() * 100
        up, down, out = nn.Linear(64, 512), nn.Linear(512, 64), nn.Linear(64, 256)
        with torch.no_grad():
            up.weight[7] = up.weight[7].abs() * 1000
            up.bias[7] = 1.0
        self.up = SpikingLinear.from_linear(up, coding=coding)
        self.down = SpikingLinear.from_linear(down, coding=coding)
        self.head = SpikingLinear.from_linear(out, coding=coding, group_size=32)

    def forward(self, ids):
        h = self.up(self.emb(ids).relu())
        return self.head(self.down(h.relu()).relu())


def _peak_count(rec: "CountsRecorder") -> int:
    return max(int(c.abs().max()) for calls in rec.calls.values() for c in calls)


@pytest.mark.parametrize("coding", ["ternary", "bitwise", "twos_complement"])
def test_massive_activations_hybrid_logits_equal_integer_path(coding):
    snn = convert(massive_hybrid(), "paper", coding=coding, k=3).eval()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = snn(ids)[0]
    rec = CountsRecorder()
    res = simulate(snn, ids, backend="torch", record=rec)
    assert torch.equal(res.logits, want), (res.logits - want).abs().max()
    assert _peak_count(rec) > f32_count_bound(128)      # the outlier part was exercised
    layers = {n: m for n, m in snn.named_modules() if isinstance(m, SpikingLinear)}
    check_counters(res, rec, coding, layers)
    assert res.totals()["count_max"] == _peak_count(rec)
    # block by block through the decoding state: equal to the integer path fed the same blocks
    state = snn.new_state()
    with torch.no_grad():
        want_b = torch.cat([snn(ids[:, s:s + 16], state)[0] for s in range(0, 40, 16)])
    assert torch.equal(simulate(snn, ids, backend="torch", block_size=16).logits, want_b)


@pytest.mark.parametrize("coding", CODINGS)
def test_massive_activations_rectified_logits_equal_integer_path(coding):
    model = Rectified(coding).eval()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = model(ids)[0]
    rec = CountsRecorder()
    res = simulate(model, ids, backend="torch", record=rec)
    assert res.coding == coding
    assert torch.equal(res.logits, want)
    assert _peak_count(rec) > f32_count_bound(128)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SpikingLinear)}
    check_counters(res, rec, coding, layers)


def test_simulation_never_changes_torch_threads(tiny_hybrid, text, tmp_path, thread_probe, two_threads):
    snn = spiking(tiny_hybrid, "paper", "ternary")
    threads = torch.get_num_threads()
    with thread_probe() as probe:
        simulate(snn, text[:48], backend="torch", record=tmp_path / "r.h5",
                 trace="model.layers.0.mlp.*")
        simulate(snn, text[:48], backend="torch", block_size=16)
    assert probe.seen == {threads} and torch.get_num_threads() == threads


def test_thread_probe_sees_a_change(thread_probe):
    """The probe above can fail: it sees torch.set_num_threads from another thread."""
    import time as _time

    n = torch.get_num_threads()
    with thread_probe() as probe:
        torch.set_num_threads(n + 1)
        _time.sleep(0.05)
        torch.set_num_threads(n)
    assert n + 1 in probe.seen
