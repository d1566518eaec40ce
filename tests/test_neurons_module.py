"""AdaptiveThresholdNeuron, with and without SpikingJelly."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sbsnn.neurons
from sbsnn.neurons import (
    CODINGS,
    AdaptiveThresholdNeuron,
    SpikeCodingError,
    calibrate_threshold,
    decode,
    dequantize,
    expand,
    spike_counts,
)


def sample(shape=(4, 6, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) / torch.rand(shape, generator=g).clamp(min=0.05)


def test_single_step_is_dequantized_counts_with_straight_through_gradient():
    x = sample().requires_grad_()
    neuron = AdaptiveThresholdNeuron()
    out = neuron(x)
    counts, v_th = spike_counts(x)
    assert torch.equal(out.detach(), counts * v_th)
    assert torch.equal(neuron.v_th, v_th)
    weights = torch.randn(out.shape)
    (out * weights).sum().backward()
    assert torch.equal(x.grad, weights)  # d out / d x = 1


def test_single_step_fine_tuning_moves_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), AdaptiveThresholdNeuron(group_size=8), nn.Linear(16, 1))
    x, y = torch.randn(64, 16), torch.randn(64, 1)
    before = net[0].weight.detach().clone()
    loss = nn.functional.mse_loss(net(x), y)
    loss.backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert not torch.equal(before, net[0].weight)


@pytest.mark.parametrize("coding", CODINGS)
def test_multi_step_trains_decode_to_single_step(coding):
    x = sample(seed=1)
    if coding == "binary":
        x = x.abs()
    neuron = AdaptiveThresholdNeuron(coding=coding, step_mode="m")
    trains = neuron(x)
    counts, v_th = spike_counts(x)
    assert trains.dtype == x.dtype
    assert torch.equal(trains, expand(counts, coding).to(x.dtype))
    neuron.step_mode = "s"
    assert torch.equal(decode(trains, coding) * neuron.v_th, neuron(x))


@pytest.mark.parametrize("coding", CODINGS)
def test_fixed_steps_clip_consistently_in_both_modes(coding):
    x = sample(seed=2) * 10
    if coding == "binary":
        x = x.abs()
    neuron = AdaptiveThresholdNeuron(coding=coding, steps=3, step_mode="m")
    trains = neuron(x)
    assert trains.shape[0] == 3
    neuron.step_mode = "s"
    single = neuron(x)
    assert torch.equal(dequantize(decode(trains, coding), neuron.v_th), single)
    counts, _ = spike_counts(x)
    lo, hi = {"binary": (0, 3), "ternary": (-3, 3), "bitwise": (-7, 7), "twos_complement": (-4, 3)}[coding]
    assert torch.equal(decode(trains, coding), counts.long().clamp(lo, hi))


def test_spike_gives_the_counts_both_modes_use():
    x = sample(seed=8) * 5
    neuron = AdaptiveThresholdNeuron(coding="twos_complement", steps=4, group_size=8)
    counts, v_th = neuron.spike(x)
    ref_counts, ref_v = spike_counts(x, group_size=8)
    assert torch.equal(v_th, ref_v) and torch.equal(neuron.v_th, ref_v)
    assert torch.equal(counts.long(), ref_counts.long().clamp(-8, 7))
    assert torch.equal(neuron(x), dequantize(counts, v_th))
    with pytest.raises(SpikeCodingError, match="binary"):
        AdaptiveThresholdNeuron(coding="binary").spike(-x.abs())


def test_static_threshold_is_a_buffer():
    calib = sample(seed=3)
    v = calibrate_threshold(calib, group_size=8)
    neuron = AdaptiveThresholdNeuron(threshold=v, group_size=8)
    assert "threshold" in dict(neuron.named_buffers())
    x = sample(seed=4)
    counts, _ = spike_counts(x, group_size=8, threshold=v)
    assert torch.equal(neuron(x), dequantize(counts, v.expand(4, 6, 4)))
    restored = AdaptiveThresholdNeuron(threshold=torch.zeros(4), group_size=8)
    restored.load_state_dict(neuron.state_dict())
    assert torch.equal(restored(x), neuron(x))


def test_module_errors():
    with pytest.raises(SpikeCodingError, match="unknown coding"):
        AdaptiveThresholdNeuron(coding="rate")
    with pytest.raises(SpikeCodingError, match="non-negative"):
        AdaptiveThresholdNeuron(coding="binary")(torch.tensor([[1.0, -2.0]]))
    with pytest.raises(SpikeCodingError, match="multi-step.*spike_stats"):
        AdaptiveThresholdNeuron(step_mode="m", threshold=1e-3, max_bytes=1 << 10)(torch.ones(4, 8))
    with pytest.raises(ValueError, match="step_mode"):
        AdaptiveThresholdNeuron(step_mode="x")
    with pytest.raises(SpikeCodingError, match="longer than 63"):
        AdaptiveThresholdNeuron(coding="bitwise", steps=64)
    with pytest.raises(SpikeCodingError, match="steps must be"):
        AdaptiveThresholdNeuron(steps=-1)


def test_torch_compile_runs_the_formula_eagerly():
    # Inductor would sum the mean in another order (different thresholds); the neuron must
    # stay bit-identical under torch.compile, so its formula never enters a compiled graph.
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    net = nn.Sequential(nn.Linear(64, 64), AdaptiveThresholdNeuron(), nn.Linear(64, 8))
    x = sample((50, 64), seed=7)
    expected = net(x)
    out = torch.compile(net, backend=recording_backend)(x)
    assert torch.equal(out, expected)
    assert graphs  # something was compiled (dequantize and the straight-through sum)
    traced = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    assert not any(name in t for t in traced for name in ("round", "mean", "abs", "div"))


def _load_modules_without_spikingjelly(monkeypatch):
    for name in ("spikingjelly", "spikingjelly.activation_based", "spikingjelly.activation_based.base"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of these now fails
    path = Path(sbsnn.neurons.__file__).with_name("modules.py")
    spec = importlib.util.spec_from_file_location("sbsnn.neurons._modules_without_sj", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_works_without_spikingjelly(monkeypatch):
    module = _load_modules_without_spikingjelly(monkeypatch)
    assert module.HAS_SPIKINGJELLY is False
    neuron = module.AdaptiveThresholdNeuron(coding="bitwise")
    x = sample(seed=5)
    counts, v_th = spike_counts(x)
    assert torch.equal(neuron(x), counts * v_th)
    assert torch.equal(neuron.v_th, v_th)
    neuron.step_mode = "m"
    assert torch.equal(neuron(x), expand(counts, "bitwise").float())
    neuron.reset()
    assert neuron.v_th is None
    with pytest.raises(ValueError, match="step_mode"):
        neuron.step_mode = "q"


# ---------------------------------------------------------------- SpikingJelly interop


def test_spikingjelly_node_interop():
    pytest.importorskip("spikingjelly.activation_based.base")
    functional = pytest.importorskip("spikingjelly.activation_based.functional")
    monitor = pytest.importorskip("spikingjelly.activation_based.monitor")
    from spikingjelly.activation_based import base, layer

    assert sbsnn.neurons.HAS_SPIKINGJELLY
    neuron = AdaptiveThresholdNeuron(coding="ternary")
    assert isinstance(neuron, base.MemoryModule)
    net = nn.Sequential(layer.Linear(32, 32), neuron, nn.Linear(32, 8))
    x = sample((5, 32), seed=6)

    functional.set_step_mode(net, "m")
    assert neuron.step_mode == "m" and net[0].step_mode == "m"
    functional.set_step_mode(net, "s")
    assert neuron.step_mode == "s"

    with monitor.OutputMonitor(net, AdaptiveThresholdNeuron) as mon:
        out = net(x)
        assert mon.monitored_layers == ["1"]
        assert len(mon.records) == 1
        hidden = net[0](x)
        counts, v_th = spike_counts(hidden)
        assert torch.equal(mon.records[0], counts * v_th)
    assert out.shape == (5, 8)

    assert neuron.v_th is not None
    functional.reset_net(net)
    assert neuron.v_th is None

    # multi-step: the neuron turns one analog input into a [T, ...] train
    neuron.step_mode = "m"
    with monitor.OutputMonitor(net, AdaptiveThresholdNeuron, lambda s: (s != 0).float().mean().item()) as mon:
        trains = neuron(hidden)
        assert trains.shape == (int(counts.abs().max()),) + tuple(hidden.shape)
        assert mon.records == [(trains != 0).float().mean().item()]
    functional.reset_net(net)
    assert neuron.v_th is None


def test_spikingjelly_ternary_if_node_counts_floor_not_round():
    # Documents why sbsnn has its own IF rule: SpikingJelly's TernaryIFNode fires at
    # |v| >= V_th, so one charge of 2.7 thresholds yields 2 spikes, where round() gives 3.
    neuron_mod = pytest.importorskip("spikingjelly.activation_based.neuron")
    node = neuron_mod.TernaryIFNode(v_threshold=1.0, v_reset=None, step_mode="m")
    u = torch.tensor([2.7, -2.7, 2.5])
    charge = torch.zeros(4, 3)
    charge[0] = u
    sj_counts = node(charge).sum(0)
    assert sj_counts.tolist() == [2.0, -2.0, 2.0]
    assert spike_counts(u, threshold=1.0)[0].tolist() == [3, -3, 2]
