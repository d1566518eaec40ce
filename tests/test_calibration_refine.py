"""Straight-through refinement of the norm weights (sbsnn.converters.calibration.refine).

Its forward computes the spiking model's own outputs (the integer path's, to float
rounding); fitting lowers the KL to the float model on the text it fits; it changes the
norm weights and nothing else, and the result saves, loads and simulates bit-identically;
an interrupted refinement resumes from its state file to the same weights, bit for bit,
and a state file of other settings is refused by name.
"""

from __future__ import annotations

import pytest
import torch

import sbsnn
from sbsnn.analysis.fidelity import fidelity_sums_of_ids
from sbsnn.converters import SpikingLinear, convert, load_spiking, save_spiking
from sbsnn.converters.calibration import text_blocks
from sbsnn.converters.calibration.refine import refine, refined_parameters, straight_through
from sbsnn.data import heldout_text
from sbsnn.errors import OptionError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = heldout_text()[:6000]


@pytest.fixture(scope="module")
def tiny():
    return sbsnn.load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def blocks(tiny):
    return text_blocks(tiny, [TEXT[:3000], TEXT[3000:]], 768, 128)


def _norms(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in refined_parameters(model).items()}


def _kl(tiny, spiking, blocks) -> float:
    total = n = 0.0
    with torch.no_grad():
        for doc in blocks:
            s = fidelity_sums_of_ids(tiny, spiking, torch.cat(doc, dim=1), 128)
            total, n = total + s.kl, n + s.tokens
    return total / n


def test_straight_through_forward_is_the_integer_paths_and_reaches_the_norms(tiny, blocks):
    snn = convert(tiny, "paper", "ternary", 3.0)
    ids = blocks[0][0]
    with torch.no_grad():
        exact = snn(ids, snn.new_state())
    params = refined_parameters(snn)
    assert params and all(".weight" in n for n in params)
    for p in params.values():
        p.requires_grad_(True)
    with straight_through(snn), torch.enable_grad():
        ste = snn(ids, snn.new_state())
        ste.float().logsumexp(-1).sum().backward()
    torch.testing.assert_close(ste.detach(), exact, rtol=1e-4, atol=1e-4)
    grads = [p.grad for p in params.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # executors are restored: the model runs its integer path again
    assert all(m.executor is None for m in snn.modules() if isinstance(m, SpikingLinear))


def test_refinement_lowers_the_kl_on_the_text_it_fits_and_changes_only_the_norms(tiny, blocks):
    snn = convert(tiny, "paper", "ternary", 3.0)
    before_kl = _kl(tiny, snn, blocks)
    before = {n: t.detach().clone() for n, t in snn.state_dict().items()}
    flags = {n: p.requires_grad for n, p in snn.named_parameters()}
    rec = refine(snn, tiny, blocks, epochs=3, lr=3e-3, positions=32)
    assert rec["epochs"] == 3 and len(rec["kl_per_epoch"]) == 3 and rec["resumed_from_epoch"] == 0
    assert rec["kl_per_epoch"][-1] < rec["kl_per_epoch"][0]
    assert _kl(tiny, snn, blocks) < before_kl
    norms = set(refined_parameters(snn))
    after = snn.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= norms
    assert {n: p.requires_grad for n, p in snn.named_parameters()} == flags
    assert [n for n, p in snn.named_parameters() if p.grad is not None] == []


def test_an_interrupted_refinement_resumes_to_the_same_weights(tiny, blocks, tmp_path):
    straight = convert(tiny, "paper", "ternary", 3.0)
    refine(straight, tiny, blocks, epochs=2, lr=3e-3, positions=16)
    state = tmp_path / "refine.pt"
    resumed = convert(tiny, "paper", "ternary", 3.0)
    first = refine(resumed, tiny, blocks, epochs=1, lr=3e-3, positions=16, state_path=state)
    assert state.exists() and first["resumed_from_epoch"] == 0
    again = convert(tiny, "paper", "ternary", 3.0)     # a fresh process would start here
    second = refine(again, tiny, blocks, epochs=2, lr=3e-3, positions=16, state_path=state)
    assert second["resumed_from_epoch"] == 1 and len(second["kl_per_epoch"]) == 2
    assert second["kl_per_epoch"][0] == first["kl_per_epoch"][0]
    a, b = _norms(straight), _norms(again)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not (tmp_path / "refine.pt.tmp").exists()
    assert not list(tmp_path.glob(".refine.pt.partial-*"))


def test_a_state_file_of_other_settings_or_not_a_state_is_refused_by_name(tiny, blocks, tmp_path):
    state = tmp_path / "refine.pt"
    refine(convert(tiny, "paper", "ternary", 3.0), tiny, blocks, epochs=1, positions=8,
           state_path=state)
    with pytest.raises(OptionError, match="refine.pt.*another model, text or refinement"):
        refine(convert(tiny, "paper", "ternary", 3.0), tiny, blocks, epochs=1, lr=2e-3,
               positions=8, state_path=state)
    state.write_bytes(b"not a torch file")
    with pytest.raises(OptionError, match="refine.pt.*cannot be read"):
        refine(convert(tiny, "paper", "ternary", 3.0), tiny, blocks, epochs=1, positions=8,
               state_path=state)


@pytest.mark.parametrize("kw, match", [
    ({"refine_epochs": -1}, "refine_epochs"),
    ({"refine_epochs": 1.5}, "refine_epochs"),
    ({"refine_epochs": 10**12}, "the bound is 1,000"),
    ({"refine_lr": 0.0}, "refine_lr"),
    ({"refine_positions": 0}, "refine_positions"),
    ({"refine_state": "/nonexistent-folder/state.pt"}, "does not exist"),
])
def test_bad_refinement_options_are_refused_by_name_before_any_pass(tiny, kw, match):
    with pytest.raises(OptionError, match=match):
        sbsnn.calibrate(tiny, TEXT, "k=3", **kw)


def test_calibrate_with_refinement_keeps_the_allocation_and_removes_its_state(tiny, tmp_path):
    small = dict(fisher_tokens=256, max_tokens=768)
    plain = sbsnn.calibrate(tiny, TEXT, "k=3", refine_epochs=0, **small)
    state = tmp_path / "state.pt"
    refined = sbsnn.calibrate(tiny, TEXT, "k=3", refine_epochs=2, refine_state=state, **small)
    assert not state.exists()
    r = refined.calibration_report
    assert r["refinement"]["epochs"] == 2 and r["methods"]["refine_epochs"] == 2
    assert plain.calibration_report["refinement"] is None
    assert r["spikes_per_element"] <= r["budget"]
    ratios = set()
    for (n, a), (_, b) in zip(plain.named_modules(), refined.named_modules()):
        if isinstance(a, SpikingLinear):   # same smoothing and allocation; k may share a rescale
            assert torch.equal(a.weight_codes, b.weight_codes), n
            ratios.add(round(b.k / a.k, 9))
    assert len(ratios) == 1
    assert any(not torch.equal(_norms(plain)[n], p) for n, p in _norms(refined).items())
    # an ordinary checkpoint: saves, loads and simulates bit-identically
    save_spiking(refined, tmp_path / "refined")
    back = load_spiking(tmp_path / "refined")
    ids = torch.tensor([refined.tokenizer.encode(TEXT[-300:])])
    with torch.no_grad():
        mem, disk = refined(ids), back(ids)
    assert torch.equal(mem, disk)
    assert torch.equal(sbsnn.simulate(back, ids).logits, disk[0])
