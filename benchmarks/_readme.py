"""Appending a benchmark run to its section of benchmarks/README.md (shared by the benchmarks)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path


def write_section(path: Path, section: str, intro: str, body: str, command: str) -> None:
    """Append this run (dated, with its command) under ``section`` of the markdown file
    ``path``, creating the section with ``intro`` if it is missing; other sections are
    left as they are."""
    run = (f"\n### Run of {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n\n"
           f"Command: `{command}`\n\n{body}\n")
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro}"
    start = text.index(section)
    nxt = re.search(r"^## ", text[start + len(section):], re.M)
    end = len(text) if nxt is None else start + len(section) + nxt.start()
    mine = text[start:end].rstrip("\n") + "\n" + run
    path.write_text(text[:start] + mine + ("\n" + text[end:] if end < len(text) else ""))
