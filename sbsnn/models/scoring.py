"""Scoring text with a model: next-token loss, in bounded memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TextScore:
    tokens: int            # tokens predicted (all but the first)
    chars: int             # characters of the text
    nats: float            # summed next-token loss

    @property
    def nats_per_token(self) -> float:
        return self.nats / max(1, self.tokens)

    @property
    def nats_per_char(self) -> float:
        return self.nats / max(1, self.chars)

    @property
    def perplexity(self) -> float:
        """Per-token perplexity, exp(nats per token)."""
        return float(torch.tensor(self.nats_per_token).exp())


@torch.no_grad()
def score_text(model, text: str, block_size: int = 512) -> TextScore:
    """Next-token loss of ``text`` under ``model``, fed in blocks through the decoding
    state, so memory does not grow with the text's length."""
    tok = model._require_tokenizer()
    ids = torch.tensor([tok.encode(text)], device=next(model.parameters()).device)
    if ids.shape[1] < 2:
        raise ValueError("text must hold at least two tokens to be scored")
    state = model.new_state()
    nats = 0.0
    for s in range(0, ids.shape[1] - 1, block_size):
        x = ids[:, s:s + block_size]
        y = ids[:, s + 1:s + 1 + block_size]
        logits = model(x, state)[:, : y.shape[1]]
        nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                reduction="sum").item()
    return TextScore(tokens=ids.shape[1] - 1, chars=len(text), nats=nats)
