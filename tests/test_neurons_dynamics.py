"""The multi-step IF neuron emits exactly spike_counts' count, ties included."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sbsnn.neurons import SpikeCodingError, decode, expand, integrate_and_fire, spike_counts


def check_agrees(x, **kwargs):
    counts, v_th = spike_counts(x, **kwargs)
    result = integrate_and_fire(x, v_th)
    assert torch.equal(decode(result.spikes, "ternary"), counts.to(torch.int64))
    assert torch.equal(result.spikes, expand(counts, "ternary"))  # |c| spikes of sign(c), then silence
    residual = result.membrane  # what rounding left behind, in units of V_th
    assert bool((residual.abs() <= 0.5).all())
    return result


@settings(deadline=None, max_examples=50)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12),
        elements=st.floats(-1e4, 1e4, width=32, allow_nan=False),
    ),
    st.sampled_from([1.0, 3.0, 6.0]),
)
def test_if_dynamics_agree_with_spike_counts(arr, k):
    check_agrees(torch.from_numpy(arr), k=k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_if_dynamics_agree_heavy_tailed(dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 48, generator=g) / torch.rand(6, 48, generator=g).clamp(min=0.02)
    x[2] = 0
    check_agrees(x.to(dtype))
    check_agrees(x.to(dtype), group_size=12)


def test_tie_rule_rounds_half_to_even():
    u = torch.tensor([2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 1.5, -1.5, 4.5])
    result = integrate_and_fire(u, torch.tensor([1.0]))
    assert decode(result.spikes, "ternary").tolist() == [2, 4, -2, -4, 0, 0, 2, -2, 4]
    assert result.spikes[:, 1].tolist() == [1, 1, 1, 1]  # 3.5: the fourth spike fires at v = 0.5
    assert result.membrane.tolist() == [0.5, -0.5, -0.5, 0.5, 0.5, -0.5, -0.5, 0.5, 0.5]
    # the same values through the adaptive threshold (mean |x| = 3 -> V_th = 1)
    x = torch.tensor([[2.5, 3.5, -2.5, -3.5]])
    assert decode(integrate_and_fire(x).spikes, "ternary").tolist() == [[2, 4, -2, -4]]


def test_fixed_steps_clip_and_keep_the_rest_in_the_membrane():
    x = torch.tensor([[6.2, -4.0, 1.0, 0.2]])
    result = integrate_and_fire(x, torch.ones(1, 1), steps=3)
    assert result.spikes.shape == (3, 1, 4)
    assert decode(result.spikes, "ternary").tolist() == [[3, -3, 1, 0]]
    assert torch.allclose(result.membrane, torch.tensor([[3.2, -1.0, 0.0, 0.2]]))


def test_binary_if():
    x = torch.tensor([[3.0, 0.0, 1.4, -0.5]])
    result = integrate_and_fire(x, torch.ones(1, 1), coding="binary")
    assert decode(result.spikes, "binary").tolist() == [[3, 0, 1, 0]]
    with pytest.raises(SpikeCodingError, match="non-negative.*-1"):
        integrate_and_fire(torch.tensor([[-0.6, 1.0]]), torch.ones(1, 1), coding="binary")


def test_if_errors():
    with pytest.raises(SpikeCodingError, match="expand"):
        integrate_and_fire(torch.ones(3), coding="bitwise")
    with pytest.raises(SpikeCodingError, match="nan_to_num"):
        integrate_and_fire(torch.tensor([1.0, float("nan")]))
    with pytest.raises(SpikeCodingError, match="max_steps=10.*bitwise"):
        integrate_and_fire(torch.tensor([100.0]), torch.tensor([1.0]), max_steps=10)
    with pytest.raises(SpikeCodingError, match="not finite"):
        integrate_and_fire(torch.tensor([1.0]), torch.tensor([0.0]))
