"""Tokenizers: a byte-level one (the embedded model's) and a wrapper for Hugging Face
``tokenizer.json`` files (needs the ``hf`` extra)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Callable

from sbsnn.checks import check_input_file
from sbsnn.errors import CheckpointError


class ByteTokenizer:
    """UTF-8 bytes are the tokens: vocab 256, lossless for any text."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> Callable[[int], str]:
        """Feed ids one by one, get text as soon as a character is complete."""
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda t: dec.decode(bytes([int(t)]))


class HFTokenizer:
    """A ``tokenizers.Tokenizer``: read from a ``tokenizer.json`` file, or built elsewhere
    (a GGUF file's vocabulary) and wrapped with :meth:`from_tokenizer`.

    ``encode`` and ``decode`` behave as a ``transformers`` tokenizer called with its
    defaults: ``encode`` adds the special tokens the tokenizer's post-processor adds
    (e.g. a leading ``<bos>``), ``decode`` keeps special tokens in the text."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(f"{path} needs the 'tokenizers' package: pip install 'sbsnn[hf]'") from e
        self.path = check_input_file(path, "the tokenizer", error=CheckpointError)
        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_tokenizer(cls, tokenizer, source: str | Path | None = None) -> "HFTokenizer":
        """Wrap a ``tokenizers.Tokenizer`` object; ``source`` names where it came from."""
        self = cls.__new__(cls)
        self.path = None if source is None else Path(source)
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        return self

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        """The tokenizer serialised as a ``tokenizer.json``."""
        return self._tok.to_str()

    def incremental_decoder(self) -> Callable[[int], str]:
        ids: list[int] = []
        done = [""]

        def step(t: int) -> str:
            ids.append(int(t))
            text = self.decode(ids)
            if text.endswith("\ufffd"):  # a character split across tokens: wait
                return ""
            new, done[0] = text[len(done[0]):], text
            return new
        return step


def tokenizer_for(directory: str | Path, vocab_size: int):
    """The tokenizer stored with a checkpoint, else bytes when the vocab is 256."""
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        return HFTokenizer(directory / "tokenizer.json")
    if vocab_size == 256:
        return ByteTokenizer()
    return None
