"""Tokenizers: a byte-level one (the embedded model's) and a wrapper for Hugging Face
``tokenizer.json`` files (needs the ``hf`` extra)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Callable


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
    """A ``tokenizer.json`` read with the ``tokenizers`` package."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(f"{path} needs the 'tokenizers' package: pip install 'sbsnn[hf]'") from e
        self.path = Path(path)
        self._tok = Tokenizer.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

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
