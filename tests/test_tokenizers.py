"""Checkpoint tokenizers: every layout ``AutoTokenizer`` reads is read, token for token as
it reads it, and every corrupt tokenizer file is refused by name.

Layouts: ``tokenizer.json``; GPT-2 style byte-level BPE as ``vocab.json`` + ``merges.txt``;
a SentencePiece ``tokenizer.model`` (BPE with byte fallback, and unigram), each under the
``model_type`` of every family sbsnn reads and with ``tokenizer_config.json`` settings
(tokenizer class, added tokens, bos/eos, ``add_bos_token``). The files are trained here
(``tokenizers`` and the ``sentencepiece`` trainer), never downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import sbsnn  # noqa: E402
import sbsnn.cli as cli  # noqa: E402
from sbsnn import errors as E  # noqa: E402
from sbsnn.models import HybridConfig, HybridForCausalLM, save_pretrained  # noqa: E402
from sbsnn.models.tokenizer import HFTokenizer, tokenizer_for  # noqa: E402

CORPUS = ["Hello world, this is a small corpus. Ünïcödé façade naïve café, 日本語のテキスト 🙂.",
          "The quick brown fox jumps over the lazy dog 12345 67890.   spaces   and\ttabs\n\nlines",
          "ROMEO: But soft, what light through yonder window breaks? It is the east."] * 40
TEXTS = ["Hello world", "  leading, and   runs of   spaces  ", "café naïve 日本語 🙂 Ωmega",
         "a\n\nb\tc\r\nd", "", " ", "<s> hi </s>", "<|endoftext|>x<|endoftext|>", "12345 fox",
         "unseen: ☃ ꙮ 𝔘", "<extra_0>tail", "<unk><pad>"]
SPECIAL = {"special": True, "lstrip": False, "rstrip": False, "normalized": False,
           "single_word": False}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Trained tokenizer files: byte-level BPE (vocab.json + merges.txt) and two
    SentencePiece models (BPE with byte fallback; unigram)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    root = tmp_path_factory.mktemp("tokfiles")
    bpe = root / "bpe"
    bpe.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.model.save(str(bpe))
    (root / "corpus.txt").write_text("\n".join(CORPUS), encoding="utf-8")
    out = {"bpe": bpe}
    for kind, size in (("bpe", 420), ("unigram", 120)):
        d = root / f"spm_{kind}"
        d.mkdir()
        spm.SentencePieceTrainer.train(
            input=str(root / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=size,
            model_type=kind, byte_fallback=kind == "bpe", character_coverage=1.0,
            minloglevel=3, hard_vocab_limit=False)
        (d / "tokenizer.vocab").unlink()
        out[f"spm_{kind}"] = d
    return out


def _checkpoint(d: Path, src: Path, config: dict, tokenizer_config: dict | None = None) -> Path:
    shutil.copytree(src, d)
    (d / "config.json").write_text(json.dumps(config))
    if tokenizer_config is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return d


def _reference(d: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def _assert_same(ours, ref) -> None:
    for text in TEXTS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


ENDOFTEXT = {"added_tokens_decoder": {"394": {"content": "<|endoftext|>", **SPECIAL}},
             "eos_token": "<|endoftext|>"}
LAYOUTS = {
    # byte-level BPE under each family; the class from config.json or tokenizer_config
    "qwen2-vocab-merges": ("bpe", {"model_type": "qwen2"}, None),
    "qwen3-Qwen2Tokenizer": ("bpe", {"model_type": "qwen3"},
                             {"tokenizer_class": "Qwen2Tokenizer", **ENDOFTEXT}),
    "llama-GPT2Tokenizer": ("bpe", {"model_type": "llama"},
                            {"tokenizer_class": "GPT2Tokenizer", **ENDOFTEXT}),
    "llama3-style-bos": ("bpe", {"model_type": "llama"},
                         {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": True,
                          "bos_token": "<|endoftext|>", **ENDOFTEXT}),
    "gla_swa-GPT2Tokenizer": ("bpe", {"model_type": "gla_swa"},
                              {"tokenizer_class": "GPT2Tokenizer"}),
    # SentencePiece tokenizer.model
    "llama-spm": ("spm_bpe", {"model_type": "llama"}, None),
    "llama-spm-no-bos-eos": ("spm_bpe", {"model_type": "llama"},
                             {"add_bos_token": False, "add_eos_token": True}),
    "llama-LlamaTokenizer-added": ("spm_bpe", {"model_type": "llama"},
                                   {"tokenizer_class": "LlamaTokenizer",
                                    "added_tokens_decoder": {"420": {"content": "<extra_0>",
                                                                     **SPECIAL}}}),
    "mistral-spm": ("spm_bpe", {"model_type": "mistral"}, None),
    "gemma3_text-spm": ("spm_bpe", {"model_type": "gemma3_text"}, None),
    "gemma3_text-spm-no-bos": ("spm_bpe", {"model_type": "gemma3_text"},
                               {"tokenizer_class": "GemmaTokenizer", "add_bos_token": False}),
    "sbsnn_hybrid-LlamaTokenizer": ("spm_bpe", {"model_type": "sbsnn_hybrid"},
                                    {"tokenizer_class": "LlamaTokenizer"}),
    "llama-spm-unigram": ("spm_unigram", {"model_type": "llama"}, None),
    "qwen2-spm-unigram": ("spm_unigram", {"model_type": "qwen2"}, None),
}


def _tiny_checkpoint(d) -> None:
    """A small float checkpoint with a 400-token vocabulary, no tokenizer file yet."""
    cfg = HybridConfig(vocab_size=400, hidden_size=32, intermediate_size=48,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       attn_layers=[1], sliding_window=8, rope_theta=10000.0,
                       gate_low_rank_dim=8)
    save_pretrained(HybridForCausalLM(cfg), d)


@pytest.mark.parametrize("name", LAYOUTS)
def test_slow_tokenizer_files_read_as_autotokenizer(name, files, tmp_path):
    """No tokenizer.json: the files are read, and encode/decode as AutoTokenizer's
    tokenizer does (special tokens, non-ASCII, whitespace runs); saved as tokenizer.json
    (what save_spiking writes) it reads back the same."""
    src, config, tokenizer_config = LAYOUTS[name]
    d = _checkpoint(tmp_path / "ck", files[src], config, tokenizer_config)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    ours = tokenizer_for(d, 10_000)
    assert isinstance(ours, HFTokenizer)
    _assert_same(ours, _reference(d))
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    saved = shutil.copytree(d, tmp_path / "saved")     # the files a converted copy holds
    (saved / "tokenizer.json").write_text(ours.to_json())
    _assert_same(tokenizer_for(saved, 10_000), _reference(d))
    _assert_same(_reference(saved), _reference(d))


def test_load_model_reads_vocab_merges(files, tmp_path):
    """A checkpoint shipping vocab.json + merges.txt loads with its tokenizer, and text in
    gives the ids AutoTokenizer gives (the model sees the same tokens)."""
    d = tmp_path / "ck"
    _tiny_checkpoint(d)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(files["bpe"] / name, d / name)
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    model = sbsnn.load_model(d)
    assert model.tokenizer is not None
    ref = _reference(d)
    assert model.tokenizer.encode(TEXTS[2]) == ref.encode(TEXTS[2])
    assert isinstance(model.generate("Hello", max_new_tokens=3), str)
    # converted, the spiking checkpoint carries the files and reads the same tokenizer
    from sbsnn.converters import convert_checkpoint, load_spiking
    convert_checkpoint(d, tmp_path / "snn", progress=False)
    snn = load_spiking(tmp_path / "snn")
    assert snn.tokenizer.encode(TEXTS[2]) == ref.encode(TEXTS[2])


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _corrupt(name: str, data: bytes | None = None, make=None):
    def setup(d: Path) -> None:
        p = d / name
        if p.exists() or p.is_symlink():
            p.unlink()
        if make is not None:
            make(p)
        else:
            p.write_bytes(data)
    return setup


# name -> (source files, file at fault, setup, what the message says, reference refuses too)
HOSTILE = {
    "tokenizer.json not JSON": ("bpe", "tokenizer.json", _corrupt("tokenizer.json", b'{"version": "1.0", '),
                                "not valid JSON", True),
    "tokenizer.json not a tokenizer": ("bpe", "tokenizer.json",
                                       _corrupt("tokenizer.json", b'{"model": {"type": "BPE", "vocab": 3}}'),
                                       "tokenizers library can", True),
    "tokenizer.json binary": ("bpe", "tokenizer.json", _corrupt("tokenizer.json", b"\xff\xfe\x00garbage"),
                              "not UTF-8", True),
    "tokenizer.json a FIFO": ("bpe", "tokenizer.json", _corrupt("tokenizer.json", make=_fifo),
                              "not a regular file", None),
    "tokenizer.json a directory": ("bpe", "tokenizer.json", _corrupt("tokenizer.json", make=os.mkdir),
                                   "a directory", None),
    "tokenizer.json broken link": ("bpe", "tokenizer.json",
                                   _corrupt("tokenizer.json", make=lambda p: p.symlink_to(p.parent / "gone")),
                                   "broken symbolic link", None),
    "vocab.json truncated": ("bpe", "vocab.json", _corrupt("vocab.json", b'{"a": 0, "b": '),
                             "not valid JSON", True),
    "vocab.json a list": ("bpe", "vocab.json", _corrupt("vocab.json", b'["a", "b"]'),
                          "must be a JSON object", True),
    "vocab.json string id": ("bpe", "vocab.json", _corrupt("vocab.json", b'{"a": "zero"}'),
                             "has id 'zero'", True),
    "merges.txt three tokens": ("bpe", "merges.txt", _corrupt("merges.txt", b"#version: 0.2\na b c\n"),
                                "line 2", True),
    "merges.txt binary": ("bpe", "merges.txt", _corrupt("merges.txt", b"\x80\x81\x82 \xff\n"),
                          "not UTF-8", True),
    "tokenizer.model garbage": ("spm_bpe", "tokenizer.model",
                                _corrupt("tokenizer.model", bytes(range(256)) * 8),
                                "not a SentencePiece model", True),
    "tokenizer.model truncated": ("spm_bpe", "tokenizer.model", None, "not a SentencePiece model", True),
    "tokenizer.model a FIFO": ("spm_bpe", "tokenizer.model", _corrupt("tokenizer.model", make=_fifo),
                               "not a regular file", None),
    "tokenizer_config.json not JSON": ("spm_bpe", "tokenizer_config.json",
                                       _corrupt("tokenizer_config.json", b"{'add_bos_token': True}"),
                                       "not valid JSON", True),
    "special_tokens_map.json a list": ("bpe", "special_tokens_map.json",
                                       _corrupt("special_tokens_map.json", b"[1, 2]"),
                                       "must be a JSON object", None),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_corrupt_tokenizer_file_refused_by_name(name, files, tmp_path):
    """Each corrupt tokenizer file: a CheckpointError on one short line naming the file and
    what is wrong (never a bare tokenizers Exception); the reference refuses it too."""
    src, culprit, setup, says, reference_refuses = HOSTILE[name]
    d = _checkpoint(tmp_path / "ck", files[src], {"model_type": "qwen2" if src == "bpe" else "llama"})
    if culprit == "tokenizer.json":
        (d / "tokenizer.json").write_text(tokenizer_for(d, 0).to_json())
    if setup is None:   # truncated tokenizer.model
        data = (d / "tokenizer.model").read_bytes()
        (d / "tokenizer.model").write_bytes(data[: len(data) // 3])
    else:
        setup(d)
    with pytest.raises(E.CheckpointError) as info:
        tokenizer_for(d, 10_000)
    msg = str(info.value)
    assert str(d / culprit) in msg and says in msg and "\n" not in msg and len(msg) < 400, msg
    if reference_refuses:
        with pytest.raises(Exception):
            _reference(d)


def test_corrupt_tokenizer_exits_2_by_name(files, tmp_path, capsys):
    """Through the CLI: exit status 2 and one line naming the file."""
    d = tmp_path / "ck"
    _tiny_checkpoint(d)
    (d / "tokenizer.json").write_text('{"model": ')
    rc = cli.main(["generate", str(d), "--prompt", "Hello", "--max-new-tokens", "2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and str(d / "tokenizer.json") in err and len(err.splitlines()) == 1, err


def test_missing_sentencepiece_names_the_extra(files, tmp_path, monkeypatch):
    """Without the sentencepiece package a tokenizer.model is not silently skipped: the
    model loads without a tokenizer and the reason names the extra to install."""
    import sbsnn.models.tokenizer as T
    real = T._find_spec
    monkeypatch.setattr(T, "_find_spec", lambda m: None if m == "sentencepiece" else real(m))
    d = _checkpoint(tmp_path / "ck", files["spm_bpe"], {"model_type": "llama"})
    with pytest.raises(ImportError, match=r"sbsnn\[sentencepiece\]") as info:
        tokenizer_for(d, 10_000)
    assert str(d / "tokenizer.model") in str(info.value)


def test_missing_extra_loads_spiking_without_tokenizer(files, tmp_path, monkeypatch):
    """load_spiking of a checkpoint whose tokenizer needs a missing extra: a warning that
    names it, and a model that runs on token ids (as load_model does)."""
    import sbsnn.models.tokenizer as T
    from sbsnn.converters import convert_checkpoint, load_spiking
    d = tmp_path / "ck"
    save_pretrained(HybridForCausalLM(HybridConfig(
        vocab_size=420, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
        rope_theta=10000.0, gate_low_rank_dim=8)), d)
    shutil.copy(files["spm_bpe"] / "tokenizer.model", d / "tokenizer.model")
    convert_checkpoint(d, tmp_path / "snn", progress=False)
    real = T._find_spec
    monkeypatch.setattr(T, "_find_spec", lambda m: None if m == "google.protobuf" else real(m))
    with pytest.warns(UserWarning, match=r"without its tokenizer.*sbsnn\[sentencepiece\]"):
        snn = load_spiking(tmp_path / "snn")
    assert snn.tokenizer is None
    with pytest.raises(E.UnavailableError):
        snn.generate("Hello", max_new_tokens=1)


def test_refusals_do_not_dump_token_arrays(tmp_path):
    """A refusal about token ids shows a bounded excerpt, not the whole array."""
    from sbsnn.models.gguf_tokenizer import build_tokenizer
    tokens = [f"t{i}" for i in range(50_000)]
    with pytest.raises(E.CheckpointError) as info:
        build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                         "tokenizer.ggml.token_type": [1] * 49_999}, "llama", "m.gguf")
    assert "tokenizer.ggml.token_type" in str(info.value) and len(str(info.value)) < 300
    bad = [1] * 100_000 + [-1]
    with pytest.raises(E.ConfigError) as info:
        HybridConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, attn_layers=[1],
                     sliding_window=8, rope_theta=10000.0, eos_token_id=bad)
    assert "eos_token_id" in str(info.value) and len(str(info.value)) < 400
    assert E.brief(list(range(10**5))).endswith("(100,000 items)")


def test_smollm_pre_tokenizer_splits_every_digit_then_gpt2():
    """tokenizer.ggml.pre 'smollm' (SmolLM / SmolLM2): each digit its own piece, the rest
    as GPT-2 splits it (the HF tokenizer's Digits(individual_digits) + ByteLevel)."""
    pytest.importorskip("tokenizers")
    import gguf_files as gf

    from sbsnn.models.gguf_tokenizer import build_tokenizer

    meta = dict(gf.bpe_vocab("smollm"))
    tok = build_tokenizer(meta, "llama", "smollm.gguf")
    for text in ("In 1969, 12 men", "3.14159 and 2024", "no digits here", " 7"):
        ids = tok.encode(text).ids
        pieces = [tok.decode([i]) for i in ids]
        assert tok.decode(ids) == text
        assert all(len(p.strip()) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
    gpt2 = build_tokenizer(dict(gf.bpe_vocab("gpt-2")), "llama", "gpt2.gguf")
    assert tok.encode("no digits here").ids == gpt2.encode("no digits here").ids
    assert len(tok.encode("2024").ids) == 4 and len(gpt2.encode("2024").ids) < 4
