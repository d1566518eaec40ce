"""How faithful a spiking model stays to its float original.

Per next-token prediction, both models read the same tokens (each document from the state
it starts from: fresh, or after the spiking model's constant prefix,
:mod:`sbsnn.models.prefix`) and are compared by: their losses (nats, perplexity), their
top-1 accuracy against the text's next token, the agreement of their top-1 predictions,
and the KL divergence of their next-token distributions.

**Recovery**, as quantization toolkits report it (llm-compressor, the Neural Magic model
cards: compressed score / base score, >= 0.95 passing), for every score the float model
also has: 1 is full recovery, less is worse. For scores where higher is better (top-1
accuracy; top-1 agreement, where the float model's own score is 1) it is spiking / float;
for losses, where lower is better (perplexity, nats per token or per character), it is
float / spiking, so that a perplexity ratio of x1.05 is a recovery of 0.952. KL has no
float score (it is 0) and no recovery.

**The spread over documents**: the perplexity ratio of a set of documents, with a
bootstrap interval (:func:`bootstrap_ratio`: documents resampled with replacement, the
ratio of each resample's summed nats, percentiles), so that a gap can be told from noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sbsnn.checks import check_block_size
from sbsnn.errors import NonFiniteError, OptionError
from sbsnn.models.prefix import start_state_for

RECOVERY_PASS = 0.95          # the pass mark of llm-compressor's recovery
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


def recovery(d) -> dict:
    """Recovery of every score in ``d`` (a :meth:`Fidelity.to_dict` or a sweep row) that the
    float model also has, oriented so that 1 is full recovery (module docstring); None
    where a score is missing."""
    def div(a, b):
        return a / b if a is not None and b else None
    out = {"perplexity": div(d.get("float_perplexity"), d.get("spiking_perplexity")),
           "nats": div(d.get("float_nll"), d.get("spiking_nll")),
           "top1_accuracy": div(d.get("spiking_top1_accuracy"), d.get("float_top1_accuracy")),
           "top1_agreement": d.get("top1_agreement")}
    out["passes"] = {k: v >= RECOVERY_PASS for k, v in out.items() if v is not None}
    return out


@dataclass
class Fidelity:
    tokens: int                  # next-token predictions compared
    float_nll: float             # mean nats per token, float model
    spiking_nll: float           # mean nats per token, spiking model
    top1_agreement: float        # fraction of positions where both argmaxes agree
    mean_kl: float               # mean KL(float || spiking) of next-token distributions, nats
    chars: int = 0
    float_top1_accuracy: float | None = None     # top-1 prediction == the text's next token
    spiking_top1_accuracy: float | None = None
    documents: int = 1
    # bootstrap interval of the perplexity ratio over documents (None: fewer than two)
    perplexity_ratio_interval: tuple[float, float] | None = None
    prefix_tokens: int = 0       # tokens of the constant prefix every document followed

    @property
    def float_perplexity(self) -> float:
        return float(torch.tensor(self.float_nll).exp())

    @property
    def spiking_perplexity(self) -> float:
        return float(torch.tensor(self.spiking_nll).exp())

    @property
    def perplexity_ratio(self) -> float:
        """Spiking / float perplexity: ``exp(spiking_nll - float_nll)``."""
        return math.exp(self.spiking_nll - self.float_nll)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["perplexity_ratio_interval"] = (list(self.perplexity_ratio_interval)
                                          if self.perplexity_ratio_interval else None)
        d.update(float_perplexity=self.float_perplexity, spiking_perplexity=self.spiking_perplexity,
                 perplexity_ratio=self.perplexity_ratio,
                 float_nats_per_char=self.float_nll * self.tokens / max(1, self.chars),
                 spiking_nats_per_char=self.spiking_nll * self.tokens / max(1, self.chars))
        d["recovery"] = recovery(d)
        return d

    def format(self) -> str:
        """One line: perplexities and their ratio (with its interval), agreement, KL,
        accuracy, recovery."""
        rec = recovery(self.to_dict())
        ci = self.perplexity_ratio_interval
        return (f"perplexity float {self.float_perplexity:.3f}, spiking "
                f"{self.spiking_perplexity:.3f} (x{self.perplexity_ratio:.4f}"
                + (f", {100 * BOOTSTRAP_LEVEL:.0f} % interval over {self.documents} documents "
                   f"x{ci[0]:.4f}-x{ci[1]:.4f}" if ci else "")
                + f"; recovery {rec['perplexity']:.3f}); top-1 agreement "
                f"{100 * self.top1_agreement:.1f} %; mean KL {self.mean_kl:.4f} nats"
                + (f"; top-1 accuracy float {100 * self.float_top1_accuracy:.1f} %, spiking "
                   f"{100 * self.spiking_top1_accuracy:.1f} % (recovery "
                   f"{rec['top1_accuracy']:.3f})" if self.float_top1_accuracy else ""))


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
    float_correct: int = 0       # predictions whose float argmax is the next token
    spiking_correct: int = 0
    prefix_tokens: int = 0       # the constant prefix's tokens (the same for every document)

    def add(self, other: "FidelitySums") -> "FidelitySums":
        return FidelitySums(self.tokens + other.tokens, self.float_nats + other.float_nats,
                            self.spiking_nats + other.spiking_nats, self.kl + other.kl,
                            self.agree + other.agree, self.chars + other.chars,
                            self.float_correct + other.float_correct,
                            self.spiking_correct + other.spiking_correct,
                            max(self.prefix_tokens, other.prefix_tokens))

    def fidelity(self) -> Fidelity:
        n = self.tokens
        if n < 1:
            raise ValueError("fidelity needs at least one next-token prediction")
        return Fidelity(tokens=n, float_nll=self.float_nats / n, spiking_nll=self.spiking_nats / n,
                        top1_agreement=self.agree / n, mean_kl=self.kl / n, chars=self.chars,
                        float_top1_accuracy=self.float_correct / n,
                        spiking_top1_accuracy=self.spiking_correct / n,
                        prefix_tokens=self.prefix_tokens)


def bootstrap_ratio(documents, resamples: int = BOOTSTRAP_RESAMPLES,
                    level: float = BOOTSTRAP_LEVEL, seed: int = 0) -> tuple[float, float] | None:
    """The ``level`` bootstrap interval of the perplexity ratio over ``documents`` (their
    :class:`FidelitySums`): documents drawn with replacement ``resamples`` times, each
    draw's ratio ``exp((spiking nats - float nats) / predictions)`` summed over the drawn
    documents, and the percentiles of those ratios. None for fewer than two documents
    (no spread to measure). Deterministic for a ``seed``."""
    docs = [d for d in documents if d.tokens]
    if len(docs) < 2:
        return None
    gap = np.array([d.spiking_nats - d.float_nats for d in docs], dtype=np.float64)
    n = np.array([d.tokens for d in docs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(docs), size=(resamples, len(docs)))
    ratios = np.exp(gap[idx].sum(1) / n[idx].sum(1))
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def fidelity_of_documents(documents) -> Fidelity:
    """The :class:`Fidelity` of documents' sums (added in the order given), with the
    bootstrap interval of the perplexity ratio over them."""
    documents = list(documents)
    total = FidelitySums()
    for d in documents:
        total = total.add(d)
    f = total.fidelity()
    f.documents = len(documents)
    f.perplexity_ratio_interval = bootstrap_ratio(documents)
    return f


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
    prefix = _prefix(float_model, spiking_model)
    if (prefix.body(ids).shape[1] if prefix is not None else ids.shape[1] - 1) < 1:
        raise OptionError("fidelity needs a text of at least two tokens (one after a "
                          "constant prefix)")
    return fidelity_sums_of_ids(float_model, spiking_model, ids, block_size, chars=len(text))


@torch.no_grad()
def fidelity_sums_of_ids(float_model, spiking_model, ids: torch.Tensor, block_size: int = 256,
                         chars: int = 0, progress=None) -> FidelitySums:
    """:func:`fidelity`'s sums on token ids ``[1, T]`` (a fresh sequence for both models);
    ``progress(n)`` after each block of ``n`` predictions."""
    check_block_size(block_size)
    prefix = _prefix(float_model, spiking_model)
    nll_f = nll_s = kl = 0.0
    agree = correct_f = correct_s = 0
    if prefix is None:
        states = float_model.new_state(), spiking_model.new_state()
        first = 0
    else:
        # both models continue the float state after the prefix; the first token's
        # prediction is the prefix's own (float) logits, the same for both
        ids = prefix.body(ids)
        states = start_state_for(float_model, prefix), start_state_for(spiking_model, prefix)
        first = 1 if ids.shape[1] else 0
        if first:
            y0 = int(ids[0, 0])
            lp = prefix.logits.float().log_softmax(-1)
            nll_f = nll_s = -float(lp[y0])
            hit = int(int(lp.argmax()) == y0)
            agree, correct_f, correct_s = 1, hit, hit
    for s in range(0, ids.shape[1] - 1, block_size):
        x = ids[:, s:s + block_size]
        y = ids[:, s + 1:s + 1 + block_size].reshape(-1)
        lf = _finite(float_model(x, states[0])[0, : y.numel()].float(), "float", s)
        ls = _finite(spiking_model(x, states[1])[0, : y.numel()].float(), "spiking", s)
        lf, ls = lf.log_softmax(-1), ls.log_softmax(-1)
        nll_f -= lf.gather(1, y[:, None]).sum().item()
        nll_s -= ls.gather(1, y[:, None]).sum().item()
        kl += F.kl_div(ls, lf, log_target=True, reduction="sum").item()
        top_f, top_s = lf.argmax(-1), ls.argmax(-1)
        agree += int((top_f == top_s).sum())
        correct_f += int((top_f == y).sum())
        correct_s += int((top_s == y).sum())
        if progress is not None:
            progress(y.numel())
    return FidelitySums(max(0, ids.shape[1] - 1) + first, nll_f, nll_s, kl, agree, chars,
                        correct_f, correct_s, 0 if prefix is None else prefix.tokens)


def _prefix(float_model, spiking_model):
    """The constant prefix the comparison reads every document after: the spiking model's
    (else the float model's), or None."""
    for m in (spiking_model, float_model):
        p = getattr(m, "prefix", None)
        if p is not None:
            return p
    return None



@torch.no_grad()
def fidelity(float_model, spiking_model, text: str, block_size: int = 256) -> Fidelity:
    """Perplexity of both models on ``text``, top-1 agreement and mean KL divergence.

    Both models read the same tokens in blocks through their decoding states, so memory
    stays bounded on long texts.
    """
    return fidelity_sums(float_model, spiking_model, text, block_size).fidelity()


@torch.no_grad()
def fidelity_documents(float_model, spiking_model, texts, block_size: int = 256) -> Fidelity:
    """:func:`fidelity` over several texts (a list of strings, each a document read from
    the state it starts from), with the bootstrap interval of the perplexity ratio over
    them (:func:`fidelity_of_documents`)."""
    if isinstance(texts, str):
        texts = [texts]
    return fidelity_of_documents([fidelity_sums(float_model, spiking_model, t, block_size)
                                  for t in texts])
