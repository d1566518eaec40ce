"""Document sets: many texts, each simulated from a fresh decoding state.

:func:`load_documents` reads the three layouts ``--text`` accepts:

- a **JSONL** file (``.jsonl``; the Hugging Face ``datasets`` convention): one JSON object
  per line with a string field ``"text"`` (the field is configurable); an ``"id"`` (string
  or integer), when present, names the document. Other fields (metadata columns) are
  not read. Blank lines are skipped; any other line that is not such an object is
  refused with its file and line number;
- a **directory of ``.txt`` files**: one document per file, in file-name order (hidden
  files skipped; any other file or a subdirectory is refused by name, so that no file
  is left out unnoticed);
- **one text file**: one document.

Every document must be valid UTF-8 and non-empty. A ``.json`` file (a JSON array) is
refused with a hint to write JSONL.

:func:`assign_documents` splits a set across ranks balanced by tokens (longest first to
the least loaded rank), the same on every rank without any communication.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sbsnn.checks import read_text_file
from sbsnn.errors import InputError, MissingPathError

__all__ = ["Document", "DocumentSet", "DocumentSetError", "assign_documents",
           "contiguous_split", "load_documents"]


class DocumentSetError(InputError):
    """A document set that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class Document:
    index: int        # position in the set (0-based): the order of every merged result
    name: str         # the JSONL "id", the file name, or "<file>:<line>"
    text: str


@dataclass(frozen=True)
class DocumentSet:
    source: str
    documents: tuple[Document, ...]

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self):
        return iter(self.documents)

    def __getitem__(self, i: int) -> Document:
        return self.documents[i]

    @property
    def chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    @classmethod
    def from_texts(cls, texts: Iterable[str], source: str = "texts",
                   names: Sequence[str] | None = None) -> "DocumentSet":
        texts = list(texts)
        if names is not None and len(names) != len(texts):
            raise DocumentSetError(f"{len(names)} names for {len(texts)} texts")
        docs = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DocumentSetError(f"{source}: document {i} is a {type(t).__name__}, not a str")
            if not t:
                raise DocumentSetError(f"{source}: document {i} is empty")
            docs.append(Document(i, str(i) if names is None else str(names[i]), t))
        if not docs:
            raise DocumentSetError(f"{source}: no documents")
        return cls(source, tuple(docs))


def _read_text(path: Path) -> str:
    try:
        return read_text_file(path, "the document", empty_ok=True)
    except InputError as e:
        if isinstance(e, DocumentSetError):
            raise
        raise DocumentSetError(f"{e} (a document set is JSONL, .txt files or one text file, "
                               "in UTF-8)") from None


def _jsonl(path: Path, field: str) -> DocumentSet:
    docs = []
    text = _read_text(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DocumentSetError(f"{where}: not a JSON object ({e.msg}); a JSONL document set "
                                   f"holds one object with a {field!r} field per line") from None
        if not isinstance(obj, dict):
            raise DocumentSetError(f"{where}: a JSON {type(obj).__name__}, not an object with a "
                                   f"{field!r} field")
        if field not in obj:
            raise DocumentSetError(f"{where}: no {field!r} field (fields: {sorted(obj)[:8]}); "
                                   f"give the text field's name (text_field=...)")
        t = obj[field]
        if not isinstance(t, str):
            raise DocumentSetError(f"{where}: {field!r} is a {type(t).__name__}, not a string")
        if not t:
            raise DocumentSetError(f"{where}: {field!r} is empty; remove the line or give it text")
        ident = obj.get("id")
        if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
            raise DocumentSetError(f"{where}: 'id' must be a string or an integer, got "
                                   f"{type(ident).__name__}")
        docs.append(Document(len(docs), where if ident is None else str(ident), t))
    if not docs:
        raise DocumentSetError(f"{path}: no documents (every line is blank)")
    return DocumentSet(str(path), tuple(docs))


def _directory(path: Path) -> DocumentSet:
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    other = [p.name + ("/" if p.is_dir() else "") for p in entries
             if not (p.is_file() and p.suffix == ".txt")]
    if other:
        raise DocumentSetError(f"{path}: a document-set directory holds only .txt files; it also "
                               f"holds {', '.join(other[:5])}{', ...' if len(other) > 5 else ''} "
                               f"(move them out, or give a JSONL file)")
    if not entries:
        raise DocumentSetError(f"{path}: no .txt files in the directory")
    docs = []
    for p in entries:
        t = _read_text(p)
        if not t:
            raise DocumentSetError(f"{p}: empty document")
        docs.append(Document(len(docs), p.name, t))
    return DocumentSet(str(path), tuple(docs))


def load_documents(source, text_field: str = "text") -> DocumentSet:
    """A :class:`DocumentSet` from a JSONL file, a directory of ``.txt`` files, one text
    file, an existing :class:`DocumentSet`, or a list of strings (see the module
    docstring)."""
    if isinstance(source, DocumentSet):
        return source
    if isinstance(source, (list, tuple)):
        return DocumentSet.from_texts(source)
    if not isinstance(source, (str, Path)):
        raise DocumentSetError(f"documents: give a path or a list of texts, got "
                               f"{type(source).__name__}")
    path = Path(source)
    if not path.exists():
        raise MissingPathError(f"{path}: no such file or directory (a document set is a "
                               f".jsonl file, a directory of .txt files, or a text file)",
                               filename=path)
    if path.is_dir():
        return _directory(path)
    if path.suffix == ".jsonl":
        return _jsonl(path, text_field)
    if path.suffix == ".json":
        raise DocumentSetError(f"{path}: a .json file is not read as a document set; write one "
                               f"JSON object per line with a {text_field!r} field (JSONL, .jsonl)")
    t = _read_text(path)
    if not t:
        raise DocumentSetError(f"{path}: empty text file")
    return DocumentSet(str(path), (Document(0, path.name, t),))


def assign_documents(tokens: Sequence[int], world_size: int) -> list[int]:
    """The rank of each document: longest first, each to the rank with the fewest tokens
    so far (ties: the lower rank). Deterministic, so every rank computes the same split."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    load = [0] * world_size
    rank = [0] * len(tokens)
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        rank[i] = r
        load[r] += tokens[i]
    return rank


def contiguous_split(weights: Sequence[int], parts: int) -> list[range]:
    """Split ``range(len(weights))`` into ``parts`` contiguous ranges of similar total
    weight (each non-empty while there are items enough): for pipeline stages and
    layer-split conversion, where order matters. Greedy on the running sum."""
    n = len(weights)
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive int, got {parts!r}")
    if parts > n:
        raise ValueError(f"cannot split {n} layers into {parts} non-empty parts; use at most "
                         f"{n} ranks")
    total = sum(weights)
    out, start, acc = [], 0, 0
    for p in range(parts):
        if p == parts - 1:
            out.append(range(start, n))
            break
        target = total * (p + 1) / parts
        end = start + 1
        acc += weights[start]
        # extend while it brings the running sum closer to the target and leaves an item
        # for each remaining part
        while end < n - (parts - 1 - p) and abs(acc + weights[end] - target) <= abs(acc - target):
            acc += weights[end]
            end += 1
        out.append(range(start, end))
        start = end
    return out
