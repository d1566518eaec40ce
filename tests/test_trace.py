"""Time-resolved traces (``sbsnn.sim.trace``, ``simulate(..., trace=...)``).

- a trace equals the plain per-step walk (``trace_call_reference``: events added step by
  step into int64 accumulators, rescaled after every step), for every coding, with
  massive outliers;
- its last step is the layer's output bit for bit and its events per step sum to the
  layer's events (in ``simulate``, block by block too);
- first and last spike steps per token equal the steps at which ``step_events`` fires them;
- the options are checked by name: a glob that matches no layer, bad token counts, a trace
  too large for ``max_bytes``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sbsnn.converters import SpikingLinear, convert
from sbsnn.models import load_model
from sbsnn.neurons import CODINGS
from sbsnn.sim import Simulator, TraceError, TraceSpec, simulate, step_events, summarize
from sbsnn.sim.trace import spike_steps, trace_call, trace_call_reference

pytestmark = pytest.mark.usefixtures("one_thread")

FIELDS = ("events_pos", "events_neg", "first_step", "last_step", "output_offsets", "outputs")


def layer_for(coding: str, in_f=40, out_f=6, group_size=16, k=3.0, seed=0) -> SpikingLinear:
    torch.manual_seed(seed)
    return SpikingLinear.from_linear(nn.Linear(in_f, out_f), group_size=group_size, k=k, coding=coding)


def inputs(coding: str, n=5, d=40, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, 3] *= 300                       # a massive channel: long unit-coded trains
    x[1] = 0                             # a silent token
    x[2, 5] = 0
    return x.abs() if coding == "binary" else x


@pytest.mark.parametrize("coding", CODINGS)
def test_trace_equals_the_step_by_step_reference(coding):
    layer = layer_for(coding)
    counts, v_th = layer.spike(inputs(coding))
    got = trace_call(counts, v_th, layer, torch.float32)
    want = trace_call_reference(counts, v_th, layer, torch.float32)
    assert got.steps == want.steps == summarize(counts, coding).steps
    for f in FIELDS:
        assert torch.equal(getattr(got, f), getattr(want, f)), f
    with torch.no_grad():
        y = layer.forward_counts(counts, v_th, torch.float32)
    assert torch.equal(got.final_outputs(), y)                     # last step == the output
    assert int(got.events_per_step.sum()) == summarize(counts, coding).events
    assert got.first_step[1] == got.last_step[1] == -1             # the silent token
    assert torch.equal(got.output_after(10**9), y)
    assert torch.equal(got.output_after(got.steps - 1), y)


@pytest.mark.parametrize("coding", CODINGS)
def test_first_and_last_steps_are_where_the_events_fire(coding):
    g = torch.Generator().manual_seed(7)
    for trial in range(20):
        peak = (3, 40, 1000, 2**20)[trial % 4] if coding not in ("binary", "ternary") else (3, 40, 300)[trial % 3]
        c = torch.randint(-peak, peak + 1, (6, 5), generator=g) * (torch.rand(6, 5, generator=g) < 0.5)
        c[0] = 0
        if coding == "binary":
            c = c.abs()
        T = summarize(c, coding).steps
        for steps in (T, T + 2):
            first = torch.full((6,), -1, dtype=torch.int64)
            last = torch.full((6,), -1, dtype=torch.int64)
            for ev in step_events(c, coding, steps):
                for tok in ev.token.tolist():
                    if first[tok] < 0:
                        first[tok] = ev.step
                    last[tok] = ev.step
            f, l = spike_steps(c, coding, steps)
            assert torch.equal(f, first) and torch.equal(l, last), (coding, c, steps)


def test_trace_of_a_huge_count_covers_every_step_of_that_token():
    layer = layer_for("ternary", in_f=8, out_f=3, group_size=4, k=5002.5)
    c = torch.tensor([[40000, -2, 0, 3, 0, -5, 6, 4], [-7, 0, 0, 4, 0, 1, -6, 40002]], dtype=torch.float32)
    counts, v_th = layer.spike(c)
    tr = trace_call(counts, v_th, layer, torch.float32)
    assert tr.steps == 40002 and tr.last_step.tolist() == [39999, 40001]
    assert tr.output_offsets.tolist() == [0, 40000, 80002]
    assert torch.equal(tr.final_outputs(), layer.forward_counts(counts, v_th, torch.float32))
    # after step t the first token's accumulator holds sign(c) * min(|c|, t + 1) of each count
    partial = torch.tensor([[11, -2, 0, 3, 0, -5, 6, 4]])
    assert torch.equal(tr.outputs[10], layer.forward_counts(partial, v_th[:1], torch.float32)[0])
    assert tr.events_pos[6:40000].eq(2).all() and tr.events_neg[7:].eq(0).all()


def test_simulate_traces_every_call_and_matches_the_counters():
    snn = convert(load_model("tiny-hybrid"), "paper", coding="bitwise", k=3).eval()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    spec = TraceSpec(("model.layers.1.*", "model.layers.3.mlp.down_proj"), tokens=20)
    res = simulate(snn, ids, backend="torch", block_size=16, trace=spec)
    names = [n for n, m in snn.named_modules() if isinstance(m, SpikingLinear)]
    assert list(res.traces) == [n for n in names if n.startswith("model.layers.1.")] + ["model.layers.3.mlp.down_proj"]
    for name, tr in res.traces.items():
        c = res.layers[name]
        assert len(tr.calls) == c.calls == 3                       # 16 + 16 + 8 tokens
        assert sum(int(call.events_per_step.sum()) for call in tr.calls) == c.events
        pos, neg = tr.events_per_step()
        assert (int(pos.sum()), int(neg.sum())) == (c.events_pos, c.events_neg)
        assert [call.row0 for call in tr.calls] == [0, 16, 32]
        assert [call.output_tokens for call in tr.calls] == [16, 4, 0]    # 20 tokens in all
        assert tr.steps_per_token().numel() == 40
    # the traced outputs' last steps are the layer's outputs in the simulation
    layer = dict(snn.named_modules())["model.layers.1.mlp.down_proj"]
    seen = []
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o.reshape(-1, o.shape[-1]).clone()))
    try:
        simulate(snn, ids, backend="torch", block_size=16)
    finally:
        hook.remove()
    tr = res.traces["model.layers.1.mlp.down_proj"]
    assert torch.equal(tr.calls[0].final_outputs(), seen[0])
    assert torch.equal(tr.calls[1].final_outputs(), seen[1][:4])


def test_trace_options_are_checked_by_name():
    snn = convert(load_model("tiny-hybrid"), "paper", coding="ternary", k=3).eval()
    with pytest.raises(TraceError, match="'nope.\\*' matches no spiking layer"):
        simulate(snn, "hello", backend="torch", trace="nope.*")
    with pytest.raises(TraceError, match="tokens"):
        TraceSpec(("*",), tokens=-1)
    with pytest.raises(TraceError, match="globs"):
        TraceSpec(())
    with pytest.raises(TraceError, match="TraceSpec"):
        simulate(snn, "hello", backend="torch", trace=3)
    with pytest.raises(TraceError, match="max_bytes=0.0 MiB.*--trace-tokens"):
        simulate(snn, "hello there", backend="torch", trace=TraceSpec(("*.down_proj",), max_bytes=10))
    # tokens=0: events per step and first/last steps only, no per-step outputs
    res = simulate(snn, "hello there", backend="torch", trace=TraceSpec(("*.down_proj",), tokens=0, max_bytes=0))
    assert all(c.output_tokens == 0 and c.outputs.shape[0] == 0 for t in res.traces.values() for c in t.calls)
    with Simulator(snn, trace="*.q_proj") as sim:
        assert all(n.endswith("q_proj") for n in sim.traces)


def test_cli_simulate_trace_records_the_trace(tmp_path, capsys):
    from sbsnn.cli import _TRACE_TOKENS_DEFAULT, main
    from sbsnn.converters import save_spiking
    from sbsnn.sim import load_recording
    from sbsnn.sim.trace import DEFAULT_TOKENS

    assert _TRACE_TOKENS_DEFAULT == DEFAULT_TOKENS
    snn = convert(load_model("tiny-hybrid"), "paper", coding="bitwise", k=3)
    save_spiking(snn, tmp_path / "snn")
    rec = tmp_path / "r.h5"
    rc = main(["simulate", str(tmp_path / "snn"), "--prompt", "ROMEO: what say you?", "--quiet",
               "--trace", "model.layers.1.mlp.*", "--trace", "*.0.attn.q_proj", "--trace-tokens", "5",
               "--record", str(rec), "--block-size", "8"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "trace model.layers.1.mlp.down_proj: 3 call(s)" in out and "largest count" in out
    with load_recording(rec) as r:
        assert r.traced_layers == ["model.layers.0.attn.q_proj", "model.layers.1.mlp.gate_proj",
                                   "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
        tr = r.trace("model.layers.1.mlp.down_proj")
        assert [c.output_tokens for c in tr.calls] == [5, 0, 0]
    assert main(["simulate", str(tmp_path / "snn"), "--prompt", "x", "--quiet", "--trace", "zzz*"]) == 2
    assert "matches no spiking layer" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "snn"), "--prompt", "x", "--quiet", "--trace-tokens", "3"]) == 2
    assert "--trace-tokens needs --trace" in capsys.readouterr().err
