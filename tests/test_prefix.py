"""The constant prefix (sbsnn.models.prefix): a state computed once, in float, at conversion.

- the prefix state equals the float model's state after the prefix: a document read from
  it gives the logits of the float model run on prefix + document in one pass, for every
  mixer kind (GLA and window attention, Gated DeltaNet, Mamba-2, short convolution, full
  attention, the 76B parallel layers with sink tokens), and its tensors equal those the
  one-token recurrent path leaves after the prefix;
- a spiking model started from it gives the float model's logits to float rounding when
  nothing spikes (every spiking layer run as its float original), on the integer path
  and in the fidelity comparison; the event simulation equals the integer path from it,
  and counts only the document's tokens;
- it is saved with the checkpoint and read back equal; a prefix state of another model is
  refused naming the tensor; bad prefix options are refused by name.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_convert_mixers import MIXED
from test_converters import LIKE_76B, randomize

from sbsnn.analysis.fidelity import fidelity_sums
from sbsnn.converters import convert, load_spiking, save_spiking
from sbsnn.converters.spiking_linear import ExecutorSwap
from sbsnn.errors import CheckpointError, LimitError, OptionError
from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM
from sbsnn.models.prefix import (PREFIX_FILE, ConstantPrefix, attach_prefix, compute_prefix,
                                 start_state_for)
from sbsnn.sim import simulate
from sbsnn.sim.engine import run_sequence

pytestmark = pytest.mark.usefixtures("one_thread")

GLA_SWA = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
               sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=16, bos_token_id=1)
LAYOUTS = {"gla+swa": GLA_SWA, "gdn+mamba2+conv+full+swa": MIXED, "76b-parallel-sinks": LIKE_76B}
PREFIX = [1, 84, 104, 101, 32, 116, 101, 120]     # longer than the window (4)
DOC = torch.tensor([[40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]])


def _model(cfg: dict, seed: int = 3) -> HybridForCausalLM:
    torch.manual_seed(0)
    m = randomize(HybridForCausalLM(HybridConfig(**cfg)), seed=seed).eval()
    m.tokenizer = ByteTokenizer()
    return m


@pytest.fixture(scope="module", params=list(LAYOUTS))
def float_model(request):
    return _model(LAYOUTS[request.param])


def _float_executor(float_model):
    """Every spiking layer computed as its float original: nothing spikes."""
    def run(name, layer, x):
        lin = float_model.get_submodule(name)
        return F.linear(x, lin.weight, lin.bias)
    return run


def _tensors(state) -> dict[str, torch.Tensor]:
    out = {}

    def walk(name, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{name}.{k}", v)
            else:
                out[f"{name}.{k}"] = v
    for i, d in enumerate(state.layers):
        walk(str(i), d)
    return out


@torch.no_grad()
def test_prefix_state_is_the_float_state_after_the_prefix(float_model):
    pre = compute_prefix(float_model, PREFIX)
    whole = float_model(torch.cat([torch.tensor([PREFIX]), DOC], dim=1))[0]
    # the document read from the prefix state: the float model on prefix + document
    m = float_model
    m.prefix = pre
    try:
        got = m(DOC, m.start_state())[0]
    finally:
        m.prefix = None
    assert pre.tokens == len(PREFIX) and pre.seen == len(PREFIX) + m.config.num_sink_tokens
    torch.testing.assert_close(got, whole[len(PREFIX):], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pre.logits, whole[len(PREFIX) - 1].float(), rtol=1e-5, atol=1e-5)
    # the one-token recurrent path, token by token, leaves the same tensors
    state = m.new_state()
    for t in PREFIX:
        m(torch.tensor([[t]]), state)
    a, b = _tensors(pre.state), _tensors(state)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert state.seen == pre.seen


@torch.no_grad()
def test_spiking_model_from_the_prefix_gives_float_logits_when_nothing_spikes(float_model):
    snn = convert(float_model, "paper", "ternary", 3.0, group_size=16, prefix=PREFIX)
    assert snn.spiking_config.prefix["tokens"] == len(PREFIX)
    whole = float_model(torch.cat([torch.tensor([PREFIX]), DOC], dim=1))[0, len(PREFIX):]
    with ExecutorSwap(snn, _float_executor(float_model)):
        for block in (None, 3):
            got = run_sequence(snn, DOC, block, return_logits=True)
            torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-5)
        sums = fidelity_sums(float_model, snn, bytes(DOC[0].tolist()).decode(), block_size=4)
    assert sums.tokens == DOC.shape[1]        # the first prediction is the prefix's own
    assert sums.prefix_tokens == len(PREFIX)
    assert sums.agree == sums.tokens and abs(sums.kl) < 1e-6
    assert sums.spiking_nats == pytest.approx(sums.float_nats, rel=1e-5)
    # while spiking, the prefix still holds the float state: it differs from the spiking
    # model run over the prefix itself
    spiking_whole = snn(torch.cat([torch.tensor([PREFIX]), DOC], dim=1))[0, len(PREFIX):]
    assert not torch.allclose(snn(DOC, snn.start_state())[0], spiking_whole)


@torch.no_grad()
def test_simulation_from_the_prefix_is_the_integer_path_and_counts_the_document_only():
    m = _model(MIXED)
    snn = convert(m, "paper", "bitwise", 3.0, group_size=16, prefix=PREFIX)
    for block in (None, 4):
        r = simulate(snn, DOC, backend="torch", block_size=block)
        state, want = snn.start_state(), []
        for s in range(0, DOC.shape[1], block or DOC.shape[1]):
            want.append(snn(DOC[:, s:s + (block or DOC.shape[1])], state)[0])
        assert torch.equal(r.logits, torch.cat(want).float())
        assert r.tokens == DOC.shape[1]
        assert {c.tokens for c in r.layers.values()} == {DOC.shape[1]}


@torch.no_grad()
def test_a_leading_bos_the_prefix_holds_is_dropped():
    m = _model(GLA_SWA)
    snn = convert(m, "paper", "ternary", 3.0, group_size=16, prefix="bos")
    assert snn.prefix.ids == (1,) and snn.prefix.drops == 1
    with_bos = torch.cat([torch.tensor([[1]]), DOC], dim=1)
    assert torch.equal(snn.document_ids(with_bos), DOC)
    assert torch.equal(snn.document_ids(DOC), DOC)     # nothing to drop
    a = simulate(snn, with_bos, backend="torch", block_size=None)
    b = simulate(snn, DOC, backend="torch", block_size=None)
    assert torch.equal(a.logits, b.logits) and a.tokens == DOC.shape[1]
    with ExecutorSwap(snn, _float_executor(m)):
        got = run_sequence(snn, DOC, None, return_logits=True)
    torch.testing.assert_close(got, m(with_bos)[0, 1:], rtol=1e-5, atol=1e-5)


def test_saved_and_loaded_with_the_checkpoint(tmp_path):
    m = _model(MIXED)
    snn = convert(m, "paper", "ternary", 3.0, group_size=16, prefix_text="The text:")
    out = save_spiking(snn, tmp_path / "ck")
    cfg = json.loads((out / "spiking_config.json").read_text())
    assert cfg["format_version"] == 3 and cfg["prefix"]["file"] == PREFIX_FILE
    assert cfg["prefix"]["text"] == "The text:" and cfg["prefix"]["bytes"] == snn.prefix.nbytes()
    assert PREFIX_FILE in cfg["digests"]
    back = load_spiking(out)
    assert back.prefix.ids == snn.prefix.ids and back.prefix.seen == snn.prefix.seen
    a, b = _tensors(snn.start_state()), _tensors(back.start_state())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(simulate(back, DOC, backend="torch").logits,
                       simulate(snn, DOC, backend="torch").logits)
    # taken away before saving: a checkpoint without one (documents start fresh)
    attach_prefix(back, None)
    plain = load_spiking(save_spiking(back, tmp_path / "plain"))
    assert plain.prefix is None and plain.spiking_config.prefix is None


def test_a_prefix_state_of_another_model_is_refused_by_name(tmp_path):
    a = convert(_model(GLA_SWA), "paper", "ternary", 3.0, group_size=16, prefix=PREFIX)
    other = _model({**GLA_SWA, "num_key_value_heads": 1})
    b = convert(other, "paper", "ternary", 3.0, group_size=16, prefix=PREFIX)
    da = save_spiking(a, tmp_path / "a")
    (da / PREFIX_FILE).write_bytes((save_spiking(b, tmp_path / "b") / PREFIX_FILE).read_bytes())
    with pytest.raises(CheckpointError, match=r"prefix_state\.safetensors: tensor 'layers\.0\.state' has shape"):
        load_spiking(da, verify=False)
    # attaching one computed by another model: refused the same way
    with pytest.raises(CheckpointError, match=r"tensor 'layers\.0\.state' has shape"):
        attach_prefix(a, b.prefix)
    t = a.prefix.tensors()
    del t["layers.0.state"]
    with pytest.raises(CheckpointError, match=r"'layers\.0\.state' is missing"):
        ConstantPrefix.from_tensors(a, t, a.prefix.metadata())
    longer = compute_prefix(_model(GLA_SWA), PREFIX + [50])
    with pytest.raises(CheckpointError, match="layers.1.pos.*computed for another model"):
        ConstantPrefix.from_tensors(a, longer.tensors(), a.prefix.metadata())


@pytest.mark.parametrize("kw, error, match", [
    (dict(prefix="bos"), OptionError, "no BOS token.*bos_token_id"),
    (dict(prefix="The"), OptionError, "prefix_text"),
    (dict(prefix=[]), OptionError, "empty list"),
    (dict(prefix=[300]), OptionError, "token id 300"),
    (dict(prefix=[True]), OptionError, "token id True"),
    (dict(prefix=[65] * 5000), LimitError, "at most 4,096"),
    (dict(prefix=[65], prefix_text="A"), OptionError, "not both"),
    (dict(prefix_text=""), OptionError, "prefix_text"),
    (dict(prefix=3.5), OptionError, "prefix must be"),
])
def test_bad_prefix_options_are_refused_by_name(kw, error, match):
    m = _model({**GLA_SWA, "bos_token_id": None})
    with pytest.raises(error, match=match):
        convert(m, "paper", "ternary", 3.0, group_size=16, **kw)


def test_calibration_reads_every_document_after_the_prefix_and_passes_it_on():
    import sbsnn
    from sbsnn.data import heldout_text

    tiny = sbsnn.load_model("tiny-hybrid")
    text = heldout_text()[:3000]
    snn = sbsnn.calibrate(tiny, [text[:1500], text[1500:]], "k=3", fisher_tokens=256,
                          max_tokens=768, prefix_text="ROMEO:")
    assert snn.prefix.ids == tuple(tiny.tokenizer.encode("ROMEO:"))
    assert snn.spiking_config.prefix["tokens"] == snn.prefix.tokens
    rep = snn.calibration_report
    assert rep["prefix"]["ids"] == list(snn.prefix.ids)
    assert rep["spikes_per_element"] <= rep["budget"]
    # the prefix state is computed in float (not by the spiking model), by the calibrated
    # model's float form: the smoothing folded into v_proj's rows scales the cached values,
    # so the original float model's state would not fit the calibrated weights. Its float
    # form (nothing spiking, the INT8 weights dequantized) gives it up to their rounding.
    want = compute_prefix(tiny, prefix_text="ROMEO:")
    torch.testing.assert_close(snn.prefix.logits, want.logits, rtol=1e-4, atol=1e-4)

    def dequantized(name, layer, x):
        return F.linear(x, layer.dequantized_weight().to(x.dtype), layer.bias)
    state = snn.new_state()
    with torch.no_grad(), ExecutorSwap(snn, dequantized):
        snn(torch.tensor([list(snn.prefix.ids)]), state)
    a, b, orig = _tensors(snn.prefix.state), _tensors(state), _tensors(want.state)
    assert a.keys() == b.keys() and a
    moved = 0
    for k in a:
        if not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
            continue
        err = float((a[k].float() - b[k].float()).norm())
        assert err <= 0.01 * float(b[k].float().norm()) + 1e-6, k   # measured: <= 0.005
        # where the smoothing moved a tensor, the original float state is far from it
        moved += float((orig[k].float() - b[k].float()).norm()) > 10 * err + 1e-6
    assert moved, "no smoothing reached the prefix state: this test would not see a stale one"
    # the float reference beside it (fidelity, refinement's targets) reads its own state
    # after the prefix's tokens, not the calibrated model's
    doc = torch.tensor([tiny.tokenizer.encode(text[:120])])
    with torch.no_grad():
        whole = tiny(torch.cat([torch.tensor([list(snn.prefix.ids)]), doc], dim=1))[0]
        got = tiny(doc, start_state_for(tiny, snn.prefix))[0]
    torch.testing.assert_close(got, whole[snn.prefix.tokens:], rtol=1e-5, atol=1e-5)


def test_recording_and_report_say_the_prefix_is_not_simulated(tmp_path):
    from test_report import schema_errors

    from sbsnn.analysis.fidelity import fidelity
    from sbsnn.analysis.report import build_report, format_summary
    from sbsnn.sim import load_recording

    m = _model(GLA_SWA)
    snn = convert(m, "paper", "ternary", 3.0, group_size=16, prefix=PREFIX)
    rec = tmp_path / "spikes.h5"
    r = simulate(snn, DOC, backend="torch", record=rec)
    with load_recording(rec) as f:
        meta = f.metadata
    assert meta["prefix"]["simulated"] is False and meta["prefix"]["ids"] == PREFIX
    assert meta["tokens"] == DOC.shape[1] == r.tokens
    fid = fidelity(m, snn, bytes(DOC[0].tolist()).decode())
    report = build_report(rec, tmp_path / "report", fidelity=fid)
    assert not schema_errors(report)
    assert report["metadata"]["prefix"]["tokens"] == len(PREFIX)
    assert any("constant prefix" in n and "not simulated" in n for n in report["notes"])
    assert report["fidelity"]["prefix_tokens"] == len(PREFIX)
    summary = format_summary(report)
    assert "not simulated" in summary and "recovery" in summary


def test_the_commands_name_the_prefix(tmp_path, capsys):
    from sbsnn.cli import main

    out = tmp_path / "snn"
    assert main(["convert", "tiny-hybrid", str(out), "--prefix-text", "ROMEO:", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "constant prefix: 6 token(s)" in printed and "never simulated" in printed
    assert load_spiking(out).prefix.text == "ROMEO:"
    assert main(["simulate", str(out), "--prompt", "JULIET: hello", "--quiet"]) == 0
    assert "6 token(s) before every document" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert "constant prefix: 6 token(s)" in capsys.readouterr().out
    for argv, match in ((["--prefix", "bos"], "no BOS token"),
                        (["--prefix", "1,x"], "comma-separated token ids")):
        assert main(["convert", "tiny-hybrid", str(tmp_path / "x"), *argv, "--quiet"]) == 2
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit):        # argparse: the two are mutually exclusive
        main(["convert", "tiny-hybrid", str(tmp_path / "x"), "--prefix", "1",
              "--prefix-text", "A"])
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.parametrize("which", ["gemma", "smollm2"])
@torch.no_grad()
def test_real_models_the_bos_state_is_the_float_state(which, request):
    """Gemma 3 (window and global layers, a tokenizer that adds BOS) and SmolLM2 (Llama,
    none added): a document read from the BOS state gives the float model's logits on
    [BOS] + document."""
    import sbsnn

    if which == "gemma":
        path = request.getfixturevalue("real_gguf")
    else:
        from test_real_model import _smollm2_gguf
        path = _smollm2_gguf()
    m = sbsnn.load_model(path)
    text = "Spiking neurons count events, one token at a time."
    ids = torch.tensor([m.tokenizer.encode(text)])
    bos = m.config.bos_token_id
    whole = ids if int(ids[0, 0]) == bos else torch.cat([torch.tensor([[bos]]), ids], dim=1)
    want = m(whole)[0]
    m.prefix = compute_prefix(m, "bos")
    try:
        body = m.document_ids(whole)
        assert body.shape[1] == whole.shape[1] - 1
        got = m(body, m.start_state())[0]
    finally:
        m.prefix = None
    torch.testing.assert_close(got, want[1:], rtol=1e-4, atol=1e-3)


@torch.no_grad()
def test_document_sets_start_every_document_from_the_prefix():
    from sbsnn.runs import simulate_documents

    m = _model(GLA_SWA)
    snn = convert(m, "paper", "ternary", 3.0, group_size=16, prefix="bos")
    texts = ["\x01The first document.", "\x01A second, longer document than the first."]
    r = simulate_documents(snn, texts, backend="torch", block_size=8, return_logits=True,
                           distributed=False)
    for i, t in enumerate(texts):
        one = simulate(snn, t, backend="torch", block_size=8)
        assert torch.equal(r.document_logits[i], one.logits)
        assert r.documents[i].tokens == len(t) - 1            # the BOS (byte 1) dropped
    assert r.tokens == sum(len(t) - 1 for t in texts)
