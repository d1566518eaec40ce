"""Tokenizers without a tokenizer.json, and tokenizer files that are damaged.

A checkpoint may ship its tokenizer as a byte-level BPE (``vocab.json`` + ``merges.txt``)
or a SentencePiece ``tokenizer.model``; sbsnn builds it as ``AutoTokenizer`` does (by
transformers' own conversion) and encodes and decodes exactly as the user's
``AutoTokenizer``. A damaged tokenizer file is refused naming it, in one line.
"""

from __future__ import annotations

import json
import warnings

import pytest

from sbsnn.errors import CheckpointError
from sbsnn.models.tokenizer import tokenizer_for

transformers = pytest.importorskip("transformers")
TEXTS = ["hello world", "  spaces   and\ttabs\n", "héllo wörld 日本語 end", "the  an hello", ""]


def _auto(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def _same_as_auto(d, vocab: int):
    ref, ours = _auto(d), tokenizer_for(d, vocab)
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids)


def test_vocab_and_merges_are_read_as_auto_tokenizer_reads_them(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the quick brown fox. héllo wörld 日本語"] * 50,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.model.save(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "tokenizer_config.json",
                                                          "vocab.json"]
    _same_as_auto(tmp_path, 300)


def _spm_model(d):
    """A small SentencePiece BPE model with byte fallback, written as a tokenizer.model."""
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    m = pb.ModelProto()
    m.trainer_spec.model_type = 2
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id = 0, 1, 2
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False

    def add(piece, score, kind):
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, score, kind

    add("<unk>", 0, 2), add("<s>", 0, 3), add("</s>", 0, 3)
    for b in range(256):
        add(f"<0x{b:02X}>", 0, 6)
    for i, w in enumerate(["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "he", "ll", "lo", "▁w",
                           "or", "ld", "hel", "hello", "▁hello", "▁world", "wor", "world", "t",
                           "▁t", "th", "▁the", "a", "n", "▁a", "an", "▁an"]):
        add(w, -float(i), 1)
    (d / "tokenizer.model").write_bytes(m.SerializeToString())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True}))


def test_a_sentencepiece_model_is_read_as_auto_tokenizer_reads_it(tmp_path):
    pytest.importorskip("sentencepiece")
    _spm_model(tmp_path)
    _same_as_auto(tmp_path, 289)
    assert tokenizer_for(tmp_path, 289).encode("hello")[0] == 1          # its <s>


@pytest.mark.parametrize("damage", ["tokenizer.json", "vocab.json", "tokenizer.model"])
def test_a_damaged_tokenizer_file_is_refused_naming_it(tmp_path, damage):
    if damage == "vocab.json":
        (tmp_path / "vocab.json").write_text("{not json")
        (tmp_path / "merges.txt").write_text("#version: 0.2\n")
        (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')
    elif damage == "tokenizer.model":
        pytest.importorskip("sentencepiece")
        _spm_model(tmp_path)
        (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01 not a protobuf")
    else:
        (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 7}}')
    with pytest.raises(CheckpointError) as e:
        tokenizer_for(tmp_path, 300)
    msg = str(e.value)
    assert str(tmp_path) in msg and "\n" not in msg and len(msg) < 600, msg
