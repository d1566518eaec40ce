"""How faithful a spiking model stays to its float original."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sbsnn.checks import check_block_size
from sbsnn.errors import NonFiniteError, OptionError


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


@dataclass
class FidelitySums:
    """The sums a :class:`Fidelity` divides: they add over documents (each a fresh
    sequence) in the order given, so a document set gives the same bits however it was
    split across processes, as long as the sums are added in document order."""

    tokens: int = 0              # next-token predictions
    float_nats: float = 0.0
    spiking_nats: float = 0.0
    kl: float = 0.0              # summed KL(float || spiking), nats
    agree: int = 0               # predictions whose argmaxes agree
    chars: int = 0

    def add(self, other: "FidelitySums") -> "FidelitySums":
        return FidelitySums(self.tokens + other.tokens, self.float_nats + other.float_nats,
                            self.spiking_nats + other.spiking_nats, self.kl + other.kl,
                            self.agree + other.agree, self.chars + other.chars)

    def fidelity(self) -> Fidelity:
        n = self.tokens
        if n < 1:
            raise ValueError("fidelity needs at least one next-token prediction")
        return Fidelity(tokens=n, float_nll=self.float_nats / n, spiking_nll=self.spiking_nats / n,
                        top1_agreement=self.agree / n, mean_kl=self.kl / n, chars=self.chars)


def _finite(logits: torch.Tensor, which: str, start: int) -> torch.Tensor:
    if not bool(torch.isfinite(logits).all()):
        row = int((~torch.isfinite(logits)).any(-1).nonzero()[0])
        raise NonFiniteError(f"the {which} model's logits hold NaN or Inf (first at token "
                             f"{start + row}) - from the activations of its non-spiking parts "
                             "(embeddings, norms, attention, lm_head) or from NaN in its float "
                             "weights; check the checkpoint's tensors", layer="lm_head",
                             origin="activations")
    return logits


@torch.no_grad()
def fidelity_sums(float_model, spiking_model, text: str, block_size: int = 256) -> FidelitySums:
    """:func:`fidelity`'s sums on one text (a fresh sequence for both models)."""
    if not isinstance(text, str):
        raise OptionError(f"fidelity needs a text (str), got {type(text).__name__}")
    tok = float_model._require_tokenizer()
    ids = torch.tensor([tok.encode(text)])
    if ids.shape[1] < 2:
        raise OptionError("fidelity needs a text of at least two tokens")
    return fidelity_sums_of_ids(float_model, spiking_model, ids, block_size, chars=len(text))


@torch.no_grad()
def fidelity_sums_of_ids(float_model, spiking_model, ids: torch.Tensor, block_size: int = 256,
                         chars: int = 0, progress=None) -> FidelitySums:
    """:func:`fidelity`'s sums on token ids ``[1, T]`` (a fresh sequence for both models);
    ``progress(n)`` after each block of ``n`` predictions."""
    check_block_size(block_size)
    states = float_model.new_state(), spiking_model.new_state()
    nll_f = nll_s = kl = 0.0
    agree = 0
    for s in range(0, ids.shape[1] - 1, block_size):
        x = ids[:, s:s + block_size]
        y = ids[:, s + 1:s + 1 + block_size].reshape(-1)
        lf = _finite(float_model(x, states[0])[0, : y.numel()].float(), "float", s)
        ls = _finite(spiking_model(x, states[1])[0, : y.numel()].float(), "spiking", s)
        lf, ls = lf.log_softmax(-1), ls.log_softmax(-1)
        nll_f -= lf.gather(1, y[:, None]).sum().item()
        nll_s -= ls.gather(1, y[:, None]).sum().item()
        kl += F.kl_div(ls, lf, log_target=True, reduction="sum").item()
        agree += int((lf.argmax(-1) == ls.argmax(-1)).sum())
        if progress is not None:
            progress(y.numel())
    return FidelitySums(max(0, ids.shape[1] - 1), nll_f, nll_s, kl, agree, chars)


@torch.no_grad()
def fidelity(float_model, spiking_model, text: str, block_size: int = 256) -> Fidelity:
    """Perplexity of both models on ``text``, top-1 agreement and mean KL divergence.

    Both models read the same tokens in blocks through their decoding states, so memory
    stays bounded on long texts.
    """
    return fidelity_sums(float_model, spiking_model, text, block_size).fidelity()
