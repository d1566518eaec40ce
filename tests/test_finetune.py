"""Spiking-aware fine-tuning (sbsnn.runs.finetune, sbsnn.converters.trainable) on the
embedded tiny-hybrid model.

Fine-tuning lowers the held-out KL (on the integer path, documents through their states);
every input that spiked still spikes, with its k; the training forward is the fine-tuned
model's integer path to float rounding; the result saves, loads and simulates
bit-identically; 2 + 2 steps with a state file give the weights of 4 steps, bit for bit;
a state of another model or other settings, and bad options, are refused by name before
any pass; a non-finite loss stops the run naming the lr.
"""

from __future__ import annotations

import pytest
import torch

import sbsnn
from sbsnn.analysis.fidelity import fidelity_sums_of_ids
from sbsnn.converters import SpikingLinear, convert, load_spiking, save_spiking
from sbsnn.converters.spiking_linear import spiking_layers
from sbsnn.converters.straight_through import straight_through
from sbsnn.converters.trainable import Trainables
from sbsnn.data import heldout_text
from sbsnn.errors import CheckpointKindError, LimitError, NonFiniteError, OptionError
from sbsnn.runs import finetune as ft
from sbsnn.runs.finetune import finetune

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = heldout_text()
TRAIN, HELD = [TEXT[:4500]], [TEXT[4500:]]
# k = 1 leaves the tiny model a KL of about 0.04 on its held-out text (k = 3: 0.004, within
# the noise of a few steps)
K = 1.0
SMALL = dict(batch=2, block_size=128, positions=None, eval_every=4, eval_windows=4)


@pytest.fixture(scope="module")
def tiny():
    return sbsnn.load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def plain(tiny):
    return convert(tiny, "paper", "ternary", K)


def _state(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _kl(tiny, spiking, text: str) -> float:
    ids = torch.tensor([tiny.tokenizer.encode(text)])
    s = fidelity_sums_of_ids(tiny, spiking, ids, 128)
    return s.kl / s.tokens


@pytest.fixture(scope="module")
def tuned(tiny, plain):
    before = _state(plain)
    out = finetune(plain, tiny, TRAIN, eval_texts=HELD, steps=12, lr=3e-3,
                   train=("norms", "scales"), **SMALL)
    after = _state(plain)
    assert all(torch.equal(before[n], after[n]) for n in before)     # the input is untouched
    return out


def test_finetuning_lowers_the_heldout_kl(tiny, plain, tuned):
    h = tuned.finetune_report["heldout_kl"]
    assert [e["step"] for e in h] == [0, 4, 8, 12]
    assert h[-1]["kl"] < h[0]["kl"]
    # measured apart, on the integer path, the held-out text read through its states
    assert _kl(tiny, tuned, HELD[0]) < _kl(tiny, plain, HELD[0])
    rec = tuned.spiking_config.finetune
    assert rec["trained"] == ["norms", "scales"] and rec["steps"] == 12
    assert rec["heldout_kl_after"] == h[-1]["kl"] < rec["heldout_kl_before"]


def test_every_spiking_input_still_spikes_with_its_k(plain, tuned):
    a, b = dict(plain.named_modules()), dict(tuned.named_modules())
    assert tuned.spiking_config.targets == plain.spiking_config.targets
    for name in plain.spiking_config.targets:
        assert isinstance(b[name], SpikingLinear)
        assert (b[name].k, b[name].coding) == (a[name].k, a[name].coding)
    r = sbsnn.simulate(tuned, HELD[0][:600])
    assert set(r.layers) == set(plain.spiking_config.targets)
    assert all(c.events > 0 for c in r.layers.values())


def test_the_training_forward_is_the_integer_path_of_what_it_writes(tiny, plain):
    """Moved codes, scales and adapters: on the same input, every layer's straight-through
    forward equals the integer path of the model Trainables.apply writes, to float
    rounding (end to end a rounding can flip a later count, so each layer is compared on
    the integer run's own inputs)."""
    ids = torch.tensor([tiny.tokenizer.encode(TEXT[:300])])
    for kinds in (("norms", "scales", "codes"), ("lora",)):
        snn = convert(tiny, "paper", "ternary", K)
        tr = Trainables(snn, kinds, rank=4, seed=1)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, t in tr.tensors().items():
                t.add_(torch.randn(t.shape, generator=gen) * (0.7 if "codes" in name else 0.05))
            weights = {n: tr.weight(n) for n in tr.layers}
        tr.apply(snn)
        layers = dict(spiking_layers(snn))
        moved = sum(int((layers[n].weight_codes != p.weight_codes).sum())
                    for n, p in spiking_layers(plain))
        assert moved > 0
        seen = {}

        def keep(name):
            def hook(module, inputs, output):
                seen.setdefault(name, (inputs[0], output))
            return hook

        hooks = [m.register_forward_hook(keep(n)) for n, m in layers.items()]
        with torch.no_grad():
            snn(ids)
        for h in hooks:
            h.remove()
        assert set(seen) == set(layers)
        with torch.no_grad(), straight_through(snn, lambda n, layer: weights[n]):
            for n, (x, y) in seen.items():
                torch.testing.assert_close(layers[n](x), y, rtol=1e-5,
                                           atol=1e-5 * float(y.abs().max()), msg=n)


def test_the_result_saves_loads_and_simulates_bit_identically(tiny, plain, tmp_path):
    out = finetune(plain, tiny, TRAIN, eval_texts=HELD, steps=2, lr=1e-2,
                   train=("norms", "codes"), **SMALL)    # lr 1e-2: codes move 0.5 a step
    moved = sum(int((m.weight_codes != p.weight_codes).sum()) for (_, m), (_, p) in
                zip(out.named_modules(), plain.named_modules()) if isinstance(m, SpikingLinear))
    assert moved > 0
    save_spiking(out, tmp_path / "ft")
    back = load_spiking(tmp_path / "ft")
    a, b = out.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert back.spiking_config.finetune == out.spiking_config.finetune
    ids = torch.tensor([tiny.tokenizer.encode(HELD[0][:200])])
    with torch.no_grad():
        mem, disk = out(ids), back(ids)
    assert torch.equal(mem, disk)
    assert torch.equal(sbsnn.simulate(back, ids).logits, disk[0])     # events == integers


@pytest.mark.parametrize("kinds", [("norms", "codes"), ("scales", "lora")])
def test_two_plus_two_steps_resumed_are_four_steps_bit_for_bit(tiny, plain, tmp_path, kinds):
    opts = dict(eval_texts=HELD, lr=3e-3, train=kinds, rank=2, **SMALL)
    straight = finetune(plain, tiny, TRAIN, steps=4, **opts)
    state = tmp_path / "ft.pt"
    first = finetune(plain, tiny, TRAIN, steps=2, state_path=state, **opts)
    assert state.exists() and first.finetune_report["resumed_from_step"] == 0
    again = finetune(plain, tiny, TRAIN, steps=4, state_path=state, **opts)
    assert again.finetune_report["resumed_from_step"] == 2
    a, b = _state(straight), _state(again)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert again.finetune_report["train_kl"] == straight.finetune_report["train_kl"]
    # the same held-out figures, and the one the first run measured at its end (step 2)
    kept = [e for e in again.finetune_report["heldout_kl"] if e["step"] != 2]
    assert kept == straight.finetune_report["heldout_kl"]
    assert not [p for p in tmp_path.iterdir() if p.name != "ft.pt"]    # nothing half-written


def test_a_state_of_another_model_or_other_settings_is_refused_by_name(tiny, plain, tmp_path,
                                                                      monkeypatch):
    state = tmp_path / "ft.pt"
    finetune(plain, tiny, TRAIN, eval_texts=HELD, steps=1, state_path=state, **SMALL)
    monkeypatch.setattr(ft, "_kl_sum", _no_pass)
    other = convert(tiny, "paper", "ternary", 2.0)
    with pytest.raises(OptionError, match=r"ft\.pt: written for another spiking model"):
        finetune(other, tiny, TRAIN, eval_texts=HELD, steps=2, state_path=state, **SMALL)
    with pytest.raises(OptionError, match=r"ft\.pt: written for another settings \(lr: 0.001 "
                                          r"there, 0.002 here\)"):
        finetune(plain, tiny, TRAIN, eval_texts=HELD, steps=2, lr=2e-3, state_path=state, **SMALL)
    with pytest.raises(OptionError, match=r"ft\.pt: written for another training texts"):
        finetune(plain, tiny, [TEXT[:4000]], eval_texts=HELD, steps=2, state_path=state, **SMALL)
    state.write_bytes(b"not a torch file")
    with pytest.raises(OptionError, match=r"ft\.pt: cannot be read"):
        finetune(plain, tiny, TRAIN, eval_texts=HELD, steps=2, state_path=state, **SMALL)


def _no_pass(*args, **kwargs):
    raise AssertionError("a pass ran before the refusal")


@pytest.mark.parametrize("kw, error, match", [
    ({"steps": 0}, OptionError, "steps must be an integer >= 1"),
    ({"steps": -3}, OptionError, "steps must be an integer >= 1"),
    ({"lr": 0.0}, OptionError, "lr must be a number > 0"),
    ({"lr": -1e-3}, OptionError, "lr must be a number > 0"),
    ({"lr": float("nan")}, OptionError, "lr must be a finite number"),
    ({"lr": float("inf")}, OptionError, "lr must be a finite number"),
    ({"lr": 5.0}, LimitError, "lr=5 is refused"),
    ({"train": ("norms", "weights")}, OptionError, "train: 'weights' is not a kind"),
    ({"train": ("codes", "lora")}, OptionError, "choose one"),
    ({"batch": 0}, OptionError, "batch must be"),
    ({"block_size": 1}, OptionError, "block_size must be at least 2"),
    ({"state_path": "/nonexistent-folder/ft.pt"}, OptionError, "does not exist"),
])
def test_bad_options_are_refused_by_name_before_any_pass(tiny, plain, monkeypatch, kw, error, match):
    monkeypatch.setattr(ft, "_kl_sum", _no_pass)
    args = dict(eval_texts=HELD, steps=2) | kw
    with pytest.raises(error, match=match):
        finetune(plain, tiny, TRAIN, **args)


def test_a_text_shorter_than_one_block_is_refused_by_name(tiny, plain, monkeypatch):
    monkeypatch.setattr(ft, "_kl_sum", _no_pass)
    with pytest.raises(OptionError, match=r"texts: document 1 \(1\) holds 100 tokens, fewer "
                                          r"than one block of 128"):
        finetune(plain, tiny, [TRAIN[0], TEXT[:100]], eval_texts=HELD, steps=2, block_size=128)
    with pytest.raises(OptionError, match=r"eval_texts: document 0 \(0\) holds 50 tokens"):
        finetune(plain, tiny, TRAIN, eval_texts=[TEXT[:50]], steps=2, block_size=128)
    with pytest.raises(CheckpointKindError, match="float_model is a spiking model"):
        finetune(plain, plain, TRAIN, steps=2)


def test_a_non_finite_loss_stops_the_run_naming_the_lr(tiny, tmp_path):
    snn = convert(tiny, "paper", "ternary", K)
    with torch.no_grad():
        snn.model.norm.weight.fill_(float("inf"))
    state = tmp_path / "ft.pt"
    with pytest.raises(NonFiniteError, match=r"not finite at step 1; lower lr \(it is 0.003\)"):
        finetune(snn, tiny, TRAIN, eval_texts=HELD, steps=2, lr=3e-3, state_path=state, **SMALL)
    assert not state.exists()
