"""Tokenizers: a byte-level one (the embedded model's) and a wrapper for Hugging Face
``tokenizer.json`` files (needs the ``hf`` extra)."""

from __future__ import annotations

import codecs
import importlib.util
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
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise CheckpointError(f"{path}: not a tokenizer.json the tokenizers library can "
                                  f"read ({_first_line(e)}); restore the file from the "
                                  "checkpoint's source") from None
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


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


# The files transformers builds a tokenizer from when a checkpoint has no tokenizer.json:
# a byte-level BPE (GPT-2 style) or a SentencePiece model.
SLOW_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.model",))


def tokenizer_for(directory: str | Path, vocab_size: int):
    """The tokenizer stored with a checkpoint: its ``tokenizer.json``; else the one
    ``AutoTokenizer`` builds from ``vocab.json`` + ``merges.txt`` or a SentencePiece
    ``tokenizer.model`` (with ``tokenizer_config.json``), converted by transformers itself
    so that it encodes and decodes as a user's ``AutoTokenizer`` does; else bytes when the
    vocab is 256."""
    directory = Path(directory)
    if (directory / "tokenizer.json").exists() or (directory / "tokenizer.json").is_symlink():
        return HFTokenizer(directory / "tokenizer.json")
    for files in SLOW_TOKENIZER_FILES:
        if all((directory / f).exists() for f in files):
            return _converted(directory, files)
    if vocab_size == 256:
        return ByteTokenizer()
    return None


def _converted(directory: Path, files: tuple[str, ...]) -> HFTokenizer:
    """A fast tokenizer from a slow tokenizer's files, as AutoTokenizer converts them."""
    for f in files:
        check_input_file(directory / f, f"the tokenizer's {f}", error=CheckpointError)
    if files == ("tokenizer.model",) and importlib.util.find_spec("sentencepiece") is None:
        raise CheckpointError(f"{directory}: its tokenizer is a SentencePiece tokenizer.model "
                              "without a tokenizer.json; reading it (as AutoTokenizer does) "
                              "needs the sentencepiece package: pip install 'sbsnn[hf]'")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckpointError(f"{directory}: its tokenizer is {' + '.join(files)} without a "
                              "tokenizer.json; building it as AutoTokenizer does needs "
                              "transformers: pip install 'sbsnn[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers/tokenizers/sentencepiece errors vary
        raise CheckpointError(f"{directory}: its tokenizer ({' + '.join(files)}) cannot be "
                              f"built ({type(e).__name__}: {_first_line(e)}); restore the files "
                              "or add the checkpoint's tokenizer.json") from None
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise CheckpointError(f"{directory}: transformers built a {type(tok).__name__} from "
                              f"{' + '.join(files)}, which has no fast (tokenizers) form sbsnn "
                              "can run; add the checkpoint's tokenizer.json")
    return HFTokenizer.from_tokenizer(backend, directory / files[0])
