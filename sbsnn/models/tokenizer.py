"""Tokenizers: a byte-level one (the embedded model's) and a wrapper for Hugging Face
tokenizers (needs the ``hf`` extra).

A checkpoint's tokenizer is read, as ``transformers``' ``AutoTokenizer`` reads it, from

- ``tokenizer.json`` (read with the ``tokenizers`` library), else
- the files a "slow" tokenizer ships: GPT-2 style byte-level BPE as ``vocab.json`` +
  ``merges.txt``, or a SentencePiece ``tokenizer.model`` (the ``sentencepiece`` extra),
  with ``tokenizer_config.json`` (tokenizer class, added tokens, bos/eos,
  ``add_bos_token``) and ``special_tokens_map.json``. These are converted by
  ``AutoTokenizer`` itself (the conversion of a slow tokenizer to a fast one differs per
  tokenizer class; reusing it is the only way to get its ids token for token), and the
  fast tokenizer it builds is what sbsnn runs and saves as ``tokenizer.json``.

Every file is checked before it is handed on, so that a corrupt one is refused by name
(:class:`~sbsnn.errors.CheckpointError`), never as a bare ``tokenizers`` ``Exception``.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Callable

from sbsnn.checks import check_input_file
from sbsnn.errors import CheckpointError, brief

# The files of a slow tokenizer, tried when there is no tokenizer.json.
SLOW_FILES = ("tokenizer.model", "vocab.json", "merges.txt")
# JSON files AutoTokenizer reads beside them (each must be one JSON object).
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
HF_EXTRA = "pip install 'sbsnn[hf]'"
SPM_EXTRA = "pip install 'sbsnn[sentencepiece]'"


def _why(e: BaseException, limit: int = 160) -> str:
    """An exception in one short line: its class and the start of its first line."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
            raise ImportError(f"{path} needs the 'tokenizers' package: {HF_EXTRA}") from e
        self.path = check_input_file(path, "the tokenizer", error=CheckpointError)
        text = _read_text(self.path)
        try:
            self._tok = Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception for every fault
            try:
                json.loads(text)
            except ValueError as j:
                e, what = j, "not valid JSON"
            else:
                what = "not a tokenizer.json the tokenizers library can read"
            raise CheckpointError(f"{path}: {what} ({_why(e)}); replace it with the model's "
                                  "original tokenizer.json") from None
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


def _present(path: Path) -> bool:
    """Whether a tokenizer file is there; one that is there but cannot be read as a regular
    file (a FIFO would block the read forever, a directory, a broken link) is refused."""
    if not path.exists():
        if os.path.islink(path):
            raise CheckpointError(f"{path}: a broken symbolic link; remove it or point it at "
                                  "the tokenizer file")
        return False
    check_input_file(path, "a tokenizer file", error=CheckpointError)
    return True


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({_why(e)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}); replace it with the "
                              "model's original file") from None


def _check_json_object(path: Path, what: str) -> dict:
    try:
        d = json.loads(_read_text(path))
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({_why(e)}); replace it with the "
                              "model's original file") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: must be a JSON object ({what}), got "
                              f"{type(d).__name__} {brief(d, 40)}")
    return d


def _check_vocab(path: Path) -> None:
    """vocab.json: one object, token -> integer id in [0, 2**32) (what the tokenizers
    library stores an id in)."""
    vocab = _check_json_object(path, "token -> id")
    for token, i in vocab.items():
        if type(i) is not int or not 0 <= i < 2**32:
            raise CheckpointError(f"{path}: token {brief(token, 40)} has id {brief(i, 40)}; "
                                  "ids must be integers in [0, 2**32)")


def _check_merges(path: Path) -> None:
    """merges.txt as transformers reads it: after an optional ``#version`` line, one merge
    per line, two tokens separated by a space."""
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#") and len(line.split()) != 2:
            raise CheckpointError(f"{path}: line {n} ({brief(line, 60)}) is not a merge "
                                  "(two tokens separated by one space)")


def _looks_tiktoken(path: Path) -> bool:
    """A tiktoken BPE file (``<base64 token> <rank>`` per line), which AutoTokenizer
    also accepts as a ``tokenizer.model`` (Llama 3's original release)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096).split()
    except OSError:
        return False
    return len(first) == 2 and first[1].isdigit()


def _check_sentencepiece(path: Path) -> None:
    missing = [name for name, module in (("sentencepiece", "sentencepiece"),
                                         ("protobuf", "google.protobuf"))
               if _find_spec(module) is None]
    if missing:
        raise ImportError(f"{path}: a SentencePiece tokenizer needs the "
                          f"{' and '.join(missing)} package(s): {SPM_EXTRA}")
    import sentencepiece
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except Exception as e:  # sentencepiece raises RuntimeError/OSError by version
        if _looks_tiktoken(path):
            return
        raise CheckpointError(f"{path}: not a SentencePiece model ({_why(e)}); replace it "
                              "with the model's original tokenizer.model") from None


def _find_spec(module: str):
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _auto_tokenizer(directory: Path, files: list[str]) -> "HFTokenizer":
    """The fast tokenizer transformers' AutoTokenizer builds from a slow tokenizer's files
    (each checked first, so that a corrupt one is refused by name)."""
    if _find_spec("transformers") is None or _find_spec("tokenizers") is None:
        raise ImportError(f"{directory}: its tokenizer ({', '.join(files)}, no tokenizer.json) "
                          f"is converted by transformers' AutoTokenizer: {HF_EXTRA}")
    if "tokenizer.model" in files:
        _check_sentencepiece(directory / "tokenizer.model")
    if "vocab.json" in files:
        _check_vocab(directory / "vocab.json")
    if "merges.txt" in files:
        _check_merges(directory / "merges.txt")
    for name in CONFIG_FILES:
        if _present(directory / name):
            _check_json_object(directory / name, "the tokenizer's settings")
    from transformers import AutoTokenizer
    try:   # (transformers' own log lines and warnings are left to the host's settings)
        tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                            trust_remote_code=False)
    except ImportError as e:
        raise ImportError(f"{directory}: converting its tokenizer ({', '.join(files)}) needs a "
                          f"package that is missing ({_why(e)})") from e
    except Exception as e:  # transformers and tokenizers raise many kinds here
        raise CheckpointError(f"{directory}: transformers' AutoTokenizer cannot build a "
                              f"tokenizer from {', '.join(files)} ({_why(e)}); fix these files "
                              "or add the model's tokenizer.json") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise CheckpointError(f"{directory}: AutoTokenizer builds a {type(tok).__name__} from "
                              f"{', '.join(files)}, which has no tokenizers backend; sbsnn runs "
                              "fast tokenizers only: add the model's tokenizer.json")
    return HFTokenizer.from_tokenizer(backend, directory)


def tokenizer_for(directory: str | Path, vocab_size: int):
    """The tokenizer stored with a checkpoint (``tokenizer.json``, else ``vocab.json`` +
    ``merges.txt`` or ``tokenizer.model`` as AutoTokenizer converts them), else bytes when
    the vocab is 256, else None."""
    directory = Path(directory)
    if _present(directory / "tokenizer.json"):
        return HFTokenizer(directory / "tokenizer.json")
    slow = [name for name in SLOW_FILES if _present(directory / name)]
    if slow:
        return _auto_tokenizer(directory, slow)
    if vocab_size == 256:
        return ByteTokenizer()
    return None


def tokenizer_or_none(directory: str | Path, vocab_size: int, stacklevel: int = 3):
    """:func:`tokenizer_for`, except that a tokenizer whose package (an extra) is missing
    gives None and a warning naming the extra: the model still runs on token ids."""
    try:
        return tokenizer_for(directory, vocab_size)
    except ImportError as e:
        warnings.warn(f"{directory}: model loaded without its tokenizer: {e}", stacklevel=stacklevel)
        return None
