"""The embedded default: the small trained hybrid checkpoint and its held-out sample text."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
TINY_HYBRID = DATA_DIR / "tiny-hybrid"


def heldout_text(max_chars: int | None = None) -> str:
    """The held-out sample shipped with ``tiny-hybrid`` (two plays it never saw), or its
    first ``max_chars`` characters."""
    text = (TINY_HYBRID / "heldout.txt").read_text(encoding="utf-8")
    return text[:max_chars] if max_chars else text
