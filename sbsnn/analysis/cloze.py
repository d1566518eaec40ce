"""Offline evaluation tasks made from text at hand: multiple-choice cloze items and documents.

A cloze item asks which unit (a line of verse, a sentence of prose) follows a context: the
true next unit of the same passage against units drawn from *other* passages, in an order
drawn from a seeded generator (the same items on every machine). :func:`cloze_items` makes
them from any passages; :func:`heldout_task_rows` makes the two tasks sbsnn ships
(``sbsnn/analysis/tasks``) from the held-out sample of the embedded model, and
:func:`prose_passages` cuts prose (for instance Python's own ``pydoc_data.topics``,
which ``benchmarks/bench_eval.py`` uses) into passages of sentences.

Nothing here is benchmark data: the texts are the package's own or the interpreter's.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["EVAL_TASKS", "TASK_FILES", "cloze_items", "heldout_task_rows", "prose_passages",
           "split_sentences", "verse_passages", "write_jsonl"]

EVAL_TASKS = Path(__file__).resolve().parent / "tasks"
TASK_FILES = {"sbsnn_cloze": "sbsnn_cloze.jsonl", "sbsnn_heldout": "sbsnn_heldout.jsonl"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a prose paragraph (split after ``.``, ``!`` or ``?`` before a capital)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def verse_passages(text: str) -> list[list[str]]:
    """Speeches of a play in the held-out sample's markdown: the lines of each speech
    (blank-line separated blocks; headings, stage directions and speaker names dropped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not (ln.startswith(("#", "_", "**")) or ln.endswith("_"))]
        if len(lines) >= 2:
            out.append(lines)
    return out


def prose_passages(texts: Iterable[str], min_words: int = 4,
                   max_words: int = 60) -> list[list[str]]:
    """Paragraphs of prose as lists of sentences: code blocks (indented lines), headings
    (underlined with ``*``, ``=`` or ``-``), lists and grammar rules are left out, and so
    are sentences outside ``[min_words, max_words]`` words."""
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            lines = para.splitlines()
            if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
                continue
            if any(re.fullmatch(r"[*=\-~^]{3,}", ln.strip()) for ln in lines):
                continue
            if lines[0].lstrip().startswith(("* ", "- ", "+ ", ">>>")) or "::=" in para:
                continue
            sents = [s for s in split_sentences(para) if min_words <= len(s.split()) <= max_words]
            if len(sents) >= 2:
                out.append(sents)
    return out


def cloze_items(passages: Sequence[Sequence[str]], *, choices: int = 4, context_units: int = 2,
                seed: int = 0, limit: int | None = None) -> list[dict]:
    """Cloze items: for every unit after the first of each passage, ``context`` (the up to
    ``context_units`` units before it, joined by a space or, for verse, a newline),
    ``choices`` (the true unit and ``choices - 1`` units of other passages, distinct, no
    two alike, shuffled) and ``label`` (the index of the true unit). ``limit``: at most
    that many items, spread over the passages in order."""
    if choices < 2:
        raise ValueError(f"choices must be >= 2, got {choices}")
    rng = random.Random(seed)
    pool = [(i, u) for i, p in enumerate(passages) for u in p]
    if len({u for _, u in pool}) < choices:
        raise ValueError(f"the passages hold fewer than {choices} distinct units")
    items = []
    for i, units in enumerate(passages):
        for j in range(1, len(units)):
            answer = units[j]
            seen = {answer}
            others = []
            while len(others) < choices - 1:
                k, u = pool[rng.randrange(len(pool))]
                if k != i and u not in seen:
                    seen.add(u)
                    others.append(u)
            options = [answer] + others
            rng.shuffle(options)
            ctx = units[max(0, j - context_units):j]
            items.append({"id": len(items), "passage": i, "context": ctx,
                          "choices": options, "label": options.index(answer)})
    if limit is not None and len(items) > limit:
        step = len(items) / limit
        items = [items[int(k * step)] for k in range(limit)]
        for k, it in enumerate(items):
            it["id"] = k
    return items


def heldout_task_rows(text: str) -> dict[str, list[dict]]:
    """The rows of the two shipped tasks from the held-out sample ``text``:
    ``sbsnn_cloze`` (which line of a speech comes next, 4 choices, the two lines before
    it as context) and ``sbsnn_heldout`` (the sample in documents of whole speeches of
    about 1,000 characters, for rolling perplexity)."""
    speeches = verse_passages(text)
    cloze = [{"id": it["id"], "context": "\n".join(it["context"]), "choices": it["choices"],
              "label": it["label"]} for it in cloze_items(speeches, seed=24)]
    docs, cur = [], []
    for block in re.split(r"\n\s*\n", text.strip()):
        cur.append(block)
        if sum(len(b) for b in cur) >= 1000:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:        # the rest: its own document, or the last one's end when it is short
        if docs and sum(len(b) for b in cur) < 500:
            docs[-1] += "\n\n" + "\n\n".join(cur)
        else:
            docs.append("\n\n".join(cur))
    return {"sbsnn_cloze": cloze,
            "sbsnn_heldout": [{"id": i, "text": d} for i, d in enumerate(docs)]}


def write_jsonl(rows: Iterable[dict], path) -> None:
    """One JSON object per line (UTF-8, ``ensure_ascii=False``)."""
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                          encoding="utf-8")
