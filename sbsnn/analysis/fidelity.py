"""How faithful a spiking model stays to its float original."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class Fidelity:
    tokens: int                  # next-token predictions compared
    float_nll: float             # mean nats per token, float model
    spiking_nll: float           # mean nats per token, spiking model
    top1_agreement: float        # fraction of positions where both argmaxes agree
    mean_kl: float               # mean KL(float || spiking) of next-token distributions, nats
    chars: int = 0

    @property
    def float_perplexity(self) -> float:
        return float(torch.tensor(self.float_nll).exp())

    @property
    def spiking_perplexity(self) -> float:
        return float(torch.tensor(self.spiking_nll).exp())

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(float_perplexity=self.float_perplexity, spiking_perplexity=self.spiking_perplexity,
                 float_nats_per_char=self.float_nll * self.tokens / max(1, self.chars),
                 spiking_nats_per_char=self.spiking_nll * self.tokens / max(1, self.chars))
        return d


@torch.no_grad()
def fidelity(float_model, spiking_model, text: str, block_size: int = 256) -> Fidelity:
    """Perplexity of both models on ``text``, top-1 agreement and mean KL divergence.

    Both models read the same tokens in blocks through their decoding states, so memory
    stays bounded on long texts.
    """
    tok = float_model._require_tokenizer()
    ids = torch.tensor([tok.encode(text)])
    if ids.shape[1] < 2:
        raise ValueError("fidelity needs a text of at least two tokens")
    states = float_model.new_state(), spiking_model.new_state()
    nll_f = nll_s = kl = 0.0
    agree = 0
    for s in range(0, ids.shape[1] - 1, block_size):
        x = ids[:, s:s + block_size]
        y = ids[:, s + 1:s + 1 + block_size].reshape(-1)
        lf = float_model(x, states[0])[0, : y.numel()].float().log_softmax(-1)
        ls = spiking_model(x, states[1])[0, : y.numel()].float().log_softmax(-1)
        nll_f -= lf.gather(1, y[:, None]).sum().item()
        nll_s -= ls.gather(1, y[:, None]).sum().item()
        kl += F.kl_div(ls, lf, log_target=True, reduction="sum").item()
        agree += int((lf.argmax(-1) == ls.argmax(-1)).sum())
    n = ids.shape[1] - 1
    return Fidelity(tokens=n, float_nll=nll_f / n, spiking_nll=nll_s / n,
                    top1_agreement=agree / n, mean_kl=kl / n, chars=len(text))
