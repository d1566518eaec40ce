"""The int8 route of the exact group sums (torch._int_mm) against the float32 BLAS
reference route: the same integers, the same logits bit for bit, on the integer path and
the event path, for every coding, group size and shape, outliers up to 1e4 included."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sbsnn
from sbsnn.checks import GROUP_SIZE_LIMIT
from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters import int8_kernels
from sbsnn.converters import quant as Q
from sbsnn.sim import Simulator, simulate

CODINGS = ("binary", "ternary", "bitwise", "twos_complement")
pytestmark = pytest.mark.skipif(Q.integer_route("cpu") != Q.INT8_ROUTE,
                                reason="this torch has no int8 GEMM on the CPU")


def _counts(n, d, seed, outliers=0.05, big=10_000, low=-7):
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(low, 8, (n, d), generator=g, dtype=torch.int32)
    hit = torch.rand(n, d, generator=g) < outliers
    lo = 0 if low >= 0 else -big
    c[hit] = torch.randint(lo, big + 1, (int(hit.sum()),), generator=g, dtype=torch.int32)
    return c


def test_int32_bound_holds_for_every_group_the_format_allows():
    assert Q.INT8_COUNT_BOUND * 128 * Q.INT8_GROUP_LIMIT < 2 ** 31
    assert Q.INT8_COUNT_BOUND * 128 * (Q.INT8_GROUP_LIMIT + 1) >= 2 ** 31
    assert GROUP_SIZE_LIMIT <= Q.INT8_GROUP_LIMIT


def test_forced_route_names_the_route_and_restores_it():
    assert Q.integer_route("cpu", "float32") == Q.FLOAT32_ROUTE
    with Q.forced_route("float32"):
        assert Q.integer_route("cpu") == Q.FLOAT32_ROUTE
        with Q.forced_route("auto"):
            assert Q.integer_route("cpu") == Q.INT8_ROUTE
    assert Q.integer_route("cpu") == Q.INT8_ROUTE
    with pytest.raises(ValueError, match="route must be"):
        Q.integer_route("cpu", "int4")


@pytest.mark.parametrize("dtype,big", [(torch.int16, 32_767), (torch.int32, 2 ** 31 - 1),
                                       (torch.int64, 2 ** 40)])
def test_group_sums_int8_equal_the_int64_reference_at_extreme_counts(dtype, big):
    codes = torch.randint(-128, 128, (24, 50), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    c = _counts(9, 50, 1, outliers=0.2, big=min(big, 2 ** 31 - 1)).to(dtype)
    c[0, 0], c[1, 1] = big, -big
    for gs in (1, 7, 50, 128):
        want = Q.group_accumulate_reference(c, codes, gs)
        got = torch.stack([a.to(torch.int64) for _, a in Q.group_sums_int8(c, codes, gs)])
        assert torch.equal(got, want), gs


@settings(max_examples=40, deadline=None)
@given(n=st.sampled_from([1, 2, 17, 70]), d=st.integers(1, 300), out=st.integers(1, 90),
       gs=st.sampled_from([1, 8, 32, 64, 128, 300]), outliers=st.sampled_from([0.0, 0.01, 0.3]),
       frame=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_linear_from_counts_int8_equals_float32_route(n, d, out, gs, outliers, frame, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-128, 128, (out, d), dtype=torch.int8, generator=g)
    scales = torch.rand(out, Q.num_groups(d, gs), generator=g)
    v_th = torch.rand(n, 1, generator=g) + 0.01
    bias = torch.randn(out, generator=g)
    c = _counts(n, d, seed, outliers)
    if frame:               # every row an outlier row: the whole-frame digits
        c[:, 0] = 9_999
    want = Q.linear_from_counts(c, codes, scales, v_th, bias, gs, torch.float32, route="float32")
    got = Q.linear_from_counts(c, codes, scales, v_th, bias, gs, torch.float32, route="int8")
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_token_blocks_on_workers_give_the_same_bits(monkeypatch):
    """A call large enough for several token blocks on sbsnn's workers."""
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-127, 128, (512, 200), dtype=torch.int8, generator=g)
    scales = torch.rand(512, 2, generator=g)
    c = _counts(300, 200, 3, outliers=0.002)
    v_th = torch.rand(300, 1, generator=g)
    monkeypatch.setattr(Q, "_INT8_PARTS_MIN_MACS", 1)
    want = Q.linear_from_counts(c, codes, scales, v_th, None, 128, torch.float32, route="float32")
    got = Q.linear_from_counts(c, codes, scales, v_th, None, 128, torch.float32, route="int8")
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("gs", [16, 48, 128])
@pytest.mark.parametrize("tokens", [1, 33])
def test_spiking_layer_integer_and_event_paths_same_bits_on_both_routes(coding, gs, tokens):
    torch.manual_seed(gs + tokens)
    lin = torch.nn.Linear(100, 40)                 # 100 = a last partial group at 16 and 48
    layer = SpikingLinear.from_linear(lin, group_size=gs, k=3.0, coding=coding)
    x = torch.randn(tokens, 100)
    if coding == "binary":
        x = x.abs()
    x[:, 5] *= 3000.0                              # massive channel: counts near 1e4
    with torch.no_grad():
        want = layer(x)
        with Q.forced_route("float32"):
            ref = layer(x)
        with Simulator(layer):
            ev = layer(x)
            with Q.forced_route("float32"):
                ev_ref = layer(x)
    assert int(layer.spike(x)[0].abs().max()) > 127
    assert torch.equal(want, ref) and torch.equal(ev, ev_ref) and torch.equal(ev, want)


def test_codes_cache_follows_the_codes():
    layer = SpikingLinear.from_linear(torch.nn.Linear(20, 6), group_size=8)
    t = layer.int8_codes_t()
    assert layer.int8_codes_t() is t and torch.equal(t, layer.weight_codes.t())
    layer.weight_codes.mul_(-1)                    # written in place: a fresh copy
    assert torch.equal(layer.int8_codes_t(), layer.weight_codes.t())
    assert not any(k.endswith("codes_t") for k in layer.state_dict())


@pytest.fixture(scope="module")
def tiny_spiking():
    return convert(sbsnn.load_model("tiny-hybrid")).eval()


@pytest.mark.parametrize("coding", CODINGS)
def test_embedded_model_logits_same_bits_on_both_routes(tiny_spiking, coding):
    from sbsnn.converters import spiking_layers

    for _, m in spiking_layers(tiny_spiking):
        m.neuron.coding = coding
    ids = torch.arange(3, 20)[None]
    try:
        with torch.no_grad():
            integer = tiny_spiking(ids)
            event = simulate(tiny_spiking, ids).logits
            one = tiny_spiking(ids[:, :1])            # a single token (decoding's shape)
            with Q.forced_route("float32"):
                integer_ref = tiny_spiking(ids)
                event_ref = simulate(tiny_spiking, ids).logits
                one_ref = tiny_spiking(ids[:, :1])
    except Exception as e:   # binary coding: the model's signed activations are refused
        if coding == "binary" and "negative" in str(e):
            pytest.skip("binary coding refuses the embedded model's signed activations")
        raise
    finally:
        for _, m in spiking_layers(tiny_spiking):
            m.neuron.coding = "ternary"
    assert torch.equal(integer, integer_ref) and torch.equal(event, event_ref)
    assert torch.equal(event, integer[0].float()) and torch.equal(one, one_ref)


def test_decoding_token_by_token_takes_the_kernels_and_the_reference_bits(tiny_spiking, monkeypatch):
    """Greedy decoding with the caches (one token per step): the int8 route's one-loop
    kernel (spiking and summing) runs, and every step's tokens equal the float32
    reference route's."""
    ran = []
    real = int8_kernels.spike_linear
    monkeypatch.setattr(int8_kernels, "spike_linear",
                        lambda *a: ran.append(1) or real(*a))
    prompt = list(range(5, 30))
    with torch.no_grad():
        got = list(tiny_spiking.stream_ids(prompt, 12, 0.0, None, None, ()))
        with Q.forced_route("float32"):
            want = list(tiny_spiking.stream_ids(prompt, 12, 0.0, None, None, ()))
    assert got == want
    assert ran or not int8_kernels.available()
    route = Q.route_description("cpu")
    assert route.startswith(Q.INT8_ROUTE) and ("numba" in route)


# ------------------------------------------------------------ the fused kernels (numba)
needs_kernels = pytest.mark.skipif(not int8_kernels.available(), reason="numba is not installed")


def _layer(n, d, out, gs, seed, big=300, bias=True):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-128, 128, (out, d), dtype=torch.int8, generator=g)
    scales = torch.rand(out, Q.num_groups(d, gs), generator=g) * 2.0 ** torch.randint(-20, 20, (1,), generator=g).item()
    v_th = torch.rand(n, 1, generator=g) + 0.01
    b = torch.randn(out, generator=g) if bias else None
    return _counts(n, d, seed, 0.05, big), codes, scales, v_th, b


def _without_kernels(monkeypatch):
    monkeypatch.setattr(int8_kernels, "_kernels", {})
    assert not int8_kernels.available()


@needs_kernels
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 300), out=st.integers(1, 70),
       gs=st.sampled_from([1, 8, 32, 128, 300]), dtype=st.sampled_from([torch.float32, torch.float64]),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_fused_rescale_equals_the_reference_rescale(n, d, out, gs, dtype, bias, seed):
    """rescale_groups: same bits as rescale() on int32 sums below the exact bound."""
    c, codes, scales, v_th, b = _layer(n, d, out, gs, seed, bias=bias)
    acc = Q.group_accumulate_reference(c, codes, gs).to(torch.int32)
    assert int(acc.abs().max()) < int8_kernels.EXACT_SUM_BOUND
    got = int8_kernels.rescale_groups(acc, Q.scales_t64(scales), v_th, b, dtype)
    assert got is not None and got.dtype == dtype
    assert torch.equal(got, Q.rescale(acc, scales, v_th, b, dtype))


@needs_kernels
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), d=st.integers(1, 300), out=st.integers(1, 70),
       gs=st.sampled_from([1, 8, 32, 128, 300]), big=st.sampled_from([7, 127, 5_000]),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_fused_linear_equals_the_reference(n, d, out, gs, big, bias, seed):
    """int8_linear (decoding's one loop): the exact sums and the rescale, same bits."""
    c, codes, scales, v_th, b = _layer(n, d, out, gs, seed, big=big, bias=bias)
    want = Q.rescale(Q.group_accumulate_reference(c, codes, gs), scales, v_th, b, torch.float32)
    got = int8_kernels.int8_linear(c, Q.int8_codes_t(codes), gs, Q.scales_t64(scales), v_th, b,
                                   torch.float32)
    if Q._peak(c) * 128 * gs >= int8_kernels.EXACT_SUM_BOUND:
        assert got is None                  # sums that could round: the torch route
    else:
        assert torch.equal(got, want)


def _general_path(layer, x):
    """What SpikingLinear.forward computes without its few-rows kernel: spike, then sum."""
    counts, v_th = layer.spike(x)
    return layer.forward_counts(counts, v_th, x.dtype).view(*x.shape[:-1], layer.out_features), v_th


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 4), d=st.integers(1, 300), out=st.integers(1, 70),
       gs=st.sampled_from([1, 8, 32, 128, 300]), dtype=st.sampled_from([torch.float32, torch.float64]),
       coding=st.sampled_from(["ternary", "bitwise", "twos_complement"]), bias=st.booleans(),
       spike=st.sampled_from([1.0, 300.0, 1e4, 1e6]), seed=st.integers(0, 2 ** 16))
def test_few_rows_kernel_equals_spike_then_sum_and_the_float32_route(n, d, out, gs, dtype, coding,
                                                                   bias, spike, seed):
    """Decoding's layer (a few tokens): the counts made and summed in one kernel give the
    general path's bits (spike, then the exact sums) and the float32 route's, with
    massive activations (a channel ``spike`` times the others: counts up to ~1e6, past
    the kernel's exact bound, where it hands over); the thresholds it leaves on the
    neuron are the general path's; and it ran whenever the counts allowed."""
    g = torch.Generator().manual_seed(seed)
    layer = SpikingLinear.from_linear(torch.nn.Linear(d, out, bias=bias).to(dtype), group_size=gs,
                                      coding=coding).eval()
    x = torch.randn(n, 1, d, generator=g, dtype=dtype)
    x[..., d // 2] *= spike
    ran = []
    real = int8_kernels.spike_linear
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8_kernels, "spike_linear", lambda *a: ran.append(r := real(*a)) or r)
        got = layer(x)
        v_fast = layer.neuron.v_th
    with torch.no_grad():
        want, v_th = _general_path(layer, x)
        with Q.forced_route("float32"):
            ref = layer(x)
    assert got.dtype == dtype and torch.equal(got, want) and torch.equal(got, ref)
    assert len(ran) == 1 and torch.equal(v_fast, v_th)
    counts, _ = layer.spike(x)
    fits = Q._peak(counts) <= (int8_kernels.EXACT_SUM_BOUND - 1) // (128 * gs)
    assert (ran[0] is not None) == fits


@needs_kernels
@pytest.mark.parametrize("setting", ["threshold", "max_count", "steps", "binary",
                                     "bfloat16", "float32 route", "executor", "strided"])
def test_few_rows_kernel_leaves_other_settings_to_the_general_path(setting, monkeypatch):
    """A neuron not on the adaptive rule (static threshold, clipping, steps),
    binary coding (it refuses negative counts), a dtype numpy lacks, the float32 route or
    an executor, or rows not contiguous (a strided row's mean may add in another order):
    the kernel does not run, and the layer gives the general path's answer."""
    layer = SpikingLinear.from_linear(torch.nn.Linear(64, 16), group_size=32).eval()
    x = torch.randn(2, 64)
    if setting == "binary":
        x = x.abs()
    monkeypatch.setattr(int8_kernels, "spike_linear", lambda *a: pytest.fail("the kernel ran"))
    n = layer.neuron
    route = "auto"
    if setting == "threshold":
        n.threshold = torch.tensor(0.3)
    elif setting == "max_count":
        n.max_count = 2
    elif setting == "steps":
        n.steps = 3
    elif setting == "binary":
        n.coding = "binary"
    elif setting == "bfloat16":
        layer = layer.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    elif setting == "float32 route":
        route = "float32"
    elif setting == "strided":
        x = torch.randn(64, 2).t()              # rows whose channels are not adjacent
    with torch.no_grad(), Q.forced_route(route):
        if setting == "executor":
            layer.executor = lambda m, inp: torch.full((inp.shape[0], 16), 7.0)
            assert torch.equal(layer(x), torch.full((2, 16), 7.0))
            return
        assert torch.equal(layer(x), _general_path(layer, x)[0])


def test_a_neuron_given_groups_is_refused_by_name():
    """Per-group thresholds give V_th [N, G]; the integer path rescales by one per token:
    refused, naming the layer and the setting, on every route, before any sum."""
    from sbsnn.neurons.coding import SpikeCodingError

    layer = SpikingLinear.from_linear(torch.nn.Linear(64, 16)).eval()
    layer.name = "model.layers.0.self_attn.q_proj"
    layer.neuron.group_size = 16
    for route in ("auto", "float32"):
        for rows in (1, 9):
            with torch.no_grad(), Q.forced_route(route), pytest.raises(
                    SpikeCodingError, match="q_proj.*group_size=16"):
                layer(torch.randn(rows, 64))


@needs_kernels
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_few_rows_kernel_hands_nonfinite_input_to_the_error_that_names_the_layer(bad):
    from sbsnn.errors import NonFiniteError

    layer = SpikingLinear.from_linear(torch.nn.Linear(64, 16)).eval()
    layer.name = "model.layers.3.mlp.down_proj"
    x = torch.randn(1, 64)
    x[0, 5] = bad
    with torch.no_grad(), pytest.raises(NonFiniteError, match="model.layers.3.mlp.down_proj"):
        layer(x)


@needs_kernels
@pytest.mark.parametrize("n", [1, 3, 4, 5, 40, 300])
@pytest.mark.parametrize("big", [100, 10_000, 2 ** 20])
def test_linear_from_counts_same_bits_with_and_without_kernels(monkeypatch, n, big):
    """The int8 route's answer does not depend on numba: the kernels (where they apply)
    and the torch rescale give the float32 route's bits; the kernels really ran."""
    c, codes, scales, v_th, b = _layer(n, 300, 96, 128, n + big, big=big)
    c[0, 3] = big                               # the largest count is `big`
    want = Q.linear_from_counts(c, codes, scales, v_th, b, 128, torch.float32, route="float32")
    ran = []
    for name in ("rescale_groups", "int8_linear"):
        real = getattr(int8_kernels, name)
        monkeypatch.setattr(int8_kernels, name,
                            lambda *a, _r=real, _n=name: ran.append((_n, _r(*a) is not None)) or _r(*a))
    got = Q.linear_from_counts(c, codes, scales, v_th, b, 128, torch.float32, route="int8")
    exact = Q.int8_sums_bound(big, 128) < int8_kernels.EXACT_SUM_BOUND
    assert any(ok for _, ok in ran) == (exact if n > Q._GEMV_MAX_ROWS else big * 128 * 128 < 2 ** 29)
    assert torch.equal(got, want)
    monkeypatch.undo()
    _without_kernels(monkeypatch)
    assert torch.equal(Q.linear_from_counts(c, codes, scales, v_th, b, 128, torch.float32,
                                            route="int8"), want)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_outputs_take_the_torch_rescale(monkeypatch, dtype):
    c, codes, scales, v_th, b = _layer(50, 200, 40, 64, 5)
    monkeypatch.setattr(int8_kernels, "rescale_groups", None)     # never called
    want = Q.linear_from_counts(c, codes, scales, v_th, b, 64, dtype, route="float32")
    got = Q.linear_from_counts(c, codes, scales, v_th, b, 64, dtype, route="int8")
    assert torch.equal(got.float(), want.float())


@needs_kernels
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), d=st.integers(1, 200), cdtype=st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64]),
       share=st.sampled_from([0.0, 0.02, 0.5]), seed=st.integers(0, 2 ** 16))
def test_split_counts_and_outliers_rebuild_the_counts(n, d, cdtype, share, seed):
    """split_counts: int8 part + rest at (rows, cols) == the counts, the rest only where
    a count is beyond +-127; add_outliers adds exactly rest x code to its group."""
    big = min(torch.iinfo(cdtype).max, 30_000)
    c = _counts(n, d, seed, share, big).clamp(-big, big).to(cdtype)
    c8, out = int8_kernels.split_counts(c, 127)
    assert c8.dtype == torch.int8 and torch.equal(c8, c.clamp(-127, 127).to(torch.int8))
    rebuilt = c8.to(torch.int64)
    if out is None:
        assert int(c.abs().max()) <= 127
    else:
        rows, cols, rest = out
        assert bool((rest != 0).all())
        rebuilt[rows, cols] += rest.to(torch.int64)
    assert torch.equal(rebuilt, c.to(torch.int64))
    codes = torch.randint(-128, 128, (7, d), dtype=torch.int8, generator=torch.Generator().manual_seed(seed))
    gs = 16
    acc = Q.group_accumulate_reference(c8, codes, gs).to(torch.int32)
    if out is not None:
        int8_kernels.add_outliers(acc, *out, Q.int8_codes_t(codes), gs)
    assert torch.equal(acc.to(torch.int64), Q.group_accumulate_reference(c, codes, gs))


@needs_kernels
def test_spiking_layer_scales_cache_follows_the_scales():
    layer = SpikingLinear.from_linear(torch.nn.Linear(64, 16), group_size=32)
    first = layer.int8_scales_t()
    assert layer.int8_scales_t() is first
    with torch.no_grad():
        layer.weight_scales.mul_(2)
    assert torch.equal(layer.int8_scales_t(), 2 * first)


@needs_kernels
def test_kernels_refuse_shapes_that_would_read_outside_their_arrays():
    c, codes, scales, v_th, b = _layer(2, 200, 8, 64, 1)
    st_ = Q.scales_t64(scales)
    with pytest.raises(ValueError, match="codes_t must be int8"):       # codes not transposed
        int8_kernels.int8_linear(c, codes, 64, st_, v_th, b, torch.float32)
    with pytest.raises(ValueError, match="scales_t must be"):
        int8_kernels.int8_linear(c, Q.int8_codes_t(codes), 64, st_[:2].contiguous(), v_th, b,
                                 torch.float32)
    with pytest.raises(ValueError, match="acc must be int32"):
        int8_kernels.rescale_groups(torch.zeros(4, 2, 8, dtype=torch.int64), st_, v_th, b, torch.float32)
    acc = torch.zeros(4, 2, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="outside the sums"):
        int8_kernels.add_outliers(acc, torch.tensor([2]), torch.tensor([0]), torch.tensor([5], dtype=torch.int32),
                                  Q.int8_codes_t(codes), 64)


@needs_kernels
@pytest.mark.parametrize("n", [1, 40])
def test_kernels_take_half_precision_thresholds_and_bias(n):
    c, codes, scales, v_th, b = _layer(n, 200, 24, 64, 2)
    v_th, b = v_th.to(torch.bfloat16), b.to(torch.float16)
    want = Q.linear_from_counts(c, codes, scales, v_th, b, 64, torch.float32, route="float32")
    assert torch.equal(Q.linear_from_counts(c, codes, scales, v_th, b, 64, torch.float32, route="int8"), want)
