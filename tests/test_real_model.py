"""The real pretrained model (Gemma 3 270M, Q4_K_M GGUF) runs in sbsnn as transformers
runs the same file. Marked ``real``: skipped where the model package is not installed."""

from __future__ import annotations

import pytest
import torch

import sbsnn

pytestmark = pytest.mark.real


def english(n_chars: int = 4000) -> str:
    """Modern English prose that ships with Python itself (the language reference)."""
    import pydoc_data.topics as t

    return "\n\n".join(t.topics[k] for k in sorted(t.topics))[:n_chars]


@pytest.fixture(scope="module")
def models(real_gguf):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(real_gguf.parent), gguf_file=real_gguf.name, dtype=torch.float32).eval()
    ours = sbsnn.load_model(real_gguf)
    return ref, ours


def test_logits_equal_transformers_on_english(models):
    ref, ours = models
    ids = torch.tensor([ours.tokenizer.encode(english())])[:, :300]
    assert ids[0, 0] == 2  # Gemma's <bos>, added as transformers' tokenizer adds it
    with torch.no_grad():
        want, got = ref(ids).logits, ours(ids)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < 1e-5
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_greedy_continuation_equals_transformers(models):
    ref, ours = models
    prompt = ours.tokenizer.encode("The capital of France is")
    ref.generation_config.eos_token_id = None
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)[0, len(prompt):]
    got = list(ours.stream_ids(prompt, 32, temperature=0))
    assert got == want.tolist()


def test_window_layers_decode_in_constant_memory(models):
    _, ours = models
    state = ours.new_state()
    with torch.no_grad():
        ours(torch.tensor([ours.tokenizer.encode(english(3000))])[:, :600], state)
    window = ours.config.sliding_window
    for cache, block in zip(state.layers, ours.model.layers):
        if block.kind == "swa":
            assert cache["k"].shape[2] == window  # a ring of W slots, 600 tokens in


def test_convert_the_gguf_from_the_command_line(real_gguf, tmp_path, models):
    from sbsnn.cli import main

    _, ours = models
    out = tmp_path / "spiking"
    assert main(["convert", str(real_gguf), str(out), "--quiet"]) == 0
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    snn = sbsnn.load_spiking(out)
    in_memory = sbsnn.convert(ours)
    ids = torch.tensor([ours.tokenizer.encode("Spiking neurons count events.")])
    with torch.no_grad():
        assert torch.equal(snn(ids), in_memory(ids))
    assert snn.tokenizer.encode("a b") == ours.tokenizer.encode("a b")
