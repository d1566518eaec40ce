"""An sbsnn model as an lm-evaluation-harness language model (``lm-eval``, the ``eval`` extra).

:class:`SbsnnLM` is a ``lm_eval.api.model.TemplateLM`` over a loaded model object, float
or spiking, so that lm-eval's tasks run on it unchanged:

- ``loglikelihood``: each request's tokens (context + continuation, cut on the left to
  ``max_length + 1`` tokens, as lm-eval's ``hf`` model cuts them) are fed from a fresh
  decoding state in blocks of ``block_size`` (:func:`token_logprobs`), the same blocks
  :func:`sbsnn.simulate` and the fidelity figures use, so a continuation that crosses a
  block boundary is scored exactly as sbsnn scores it; the head (the vocabulary
  projection, most of a forward on models like Gemma 3) runs only on the positions that
  are scored;
- ``loglikelihood_rolling`` (perplexity tasks): lm-eval's disjoint rolling windows of at
  most ``max_length`` tokens over the text, the first conditioned on
  :attr:`SbsnnLM.prefix_token_id`;
- ``generate_until``: greedy decoding through the decoding state; a request that asks for
  sampling is refused by name.

A spiking model runs under :class:`sbsnn.sim.Simulator` (the logits are bit-identical to
its integer path), which counts its spikes: :meth:`SbsnnLM.usage` gives the tokens run,
spikes per element and the energy per token of the spiking layers, with the report's
estimates (:mod:`sbsnn.analysis.energy`).

Which token stands before a text with no context (lm-eval's ``prefix_token_id``): the
model's BOS token, else its EOS token, else the token of ``"\\n"`` when it is a single
token (the embedded byte-level model has neither BOS nor EOS), else the model is refused
for tasks that need one.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterable

import torch
from lm_eval.api.model import TemplateLM
from tqdm.auto import tqdm

from sbsnn.analysis.energy import estimate_energy, load_profile
from sbsnn.analysis.opcount import nonspiking_ops
from sbsnn.analysis.sections import energy_section
from sbsnn.checks import check_block_size, check_int
from sbsnn.errors import OptionError, UnavailableError
from sbsnn.sim.engine import LayerCounters, SimResult, Simulator, resolve_backend
from sbsnn.sim.session import coding_of, is_spiking

__all__ = ["SbsnnLM", "token_logprobs"]

# generation options a greedy decoder reads; the sampling ones only when they ask for none
_GEN_KEYS = ("until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_p",
             "top_k")


@torch.no_grad()
def token_logprobs(model, ids: list[int] | torch.Tensor, block_size: int = 256,
                   score_from: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logprobs, greedy)`` of tokens ``ids[score_from:]`` given the tokens before each,
    for ``model`` fed ``ids[:-1]`` from a fresh decoding state in blocks of ``block_size``:
    float32 log-probabilities ``[n]`` (``log_softmax`` of the float32 logits, as
    :func:`sbsnn.analysis.fidelity.fidelity_sums_of_ids` takes them) and whether each token
    is the argmax. Memory holds one block's logits at a time."""
    check_block_size(block_size)
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    if ids.numel() < 2 or not 1 <= score_from < ids.numel():
        raise OptionError(f"token_logprobs needs at least two tokens and 1 <= score_from < "
                          f"{ids.numel()}, got {ids.numel()} tokens and score_from={score_from}")
    device = next(model.parameters()).device
    inp, target = ids[:-1], ids[1:]
    state = model.new_state()
    split = callable(getattr(model, "body", None)) and callable(getattr(model, "head", None))
    lps, greedy = [], []
    for s in range(0, inp.numel(), block_size):
        x = inp[s:s + block_size].to(device)[None]
        first = max(0, score_from - 1 - s)          # predictions before score_from are not kept
        if split:      # the head only where a prediction is kept (the vocabulary is most of a forward)
            hidden = model.body(x, state)
            if first >= x.shape[1]:
                continue
            logits = model.head(hidden[:, first:])[0].float()
        else:
            logits = model(x, state)[0].float()[first:]
            if first >= x.shape[1]:
                continue
        y = target[s + first:s + x.shape[1]].to(logits.device)
        lp = logits.log_softmax(-1)
        lps.append(lp.gather(1, y[:, None])[:, 0].cpu())
        greedy.append((lp.argmax(-1) == y).cpu())
    return torch.cat(lps), torch.cat(greedy)


def _single_token(tok, text: str) -> int | None:
    ids = tok.encode(text)
    bos = _leading_special(tok)
    if bos is not None and ids[:1] == [bos]:
        ids = ids[1:]
    return ids[0] if len(ids) == 1 else None


def _leading_special(tok) -> int | None:
    """The token the tokenizer puts before every text (Gemma's BOS), or None."""
    ids = tok.encode("")
    return ids[0] if len(ids) == 1 else None


class SbsnnLM(TemplateLM):
    """lm-eval's language-model interface over an sbsnn model (float, or spiking and run
    event by event). See the module docstring.

    ``block_size``: tokens per step through the decoding state (default 256, as
    ``sbsnn simulate``); ``max_length``: the context a request may use (default the
    model's ``max_position_embeddings``); ``max_gen_toks``: generation length when a task
    gives none; ``backend``: the simulator's (spiking models); ``profile``: the energy
    profile of the spiking side (baselines: ``horowitz45``)."""

    def __init__(self, model, *, block_size: int = 256, max_length: int | None = None,
                 max_gen_toks: int = 256, backend: str = "torch",
                 profile: str = "horowitz45", progress: bool = False):
        super().__init__()
        check_block_size(block_size)
        check_int(max_length, "max_length", minimum=2, none_ok=True)
        check_int(max_gen_toks, "max_gen_toks", minimum=1)
        self.model = model
        self._tok = model._require_tokenizer()
        self.block_size = block_size
        self._max_length = max_length or int(model.config.max_position_embeddings)
        self.max_gen_toks = max_gen_toks
        self.spiking = is_spiking(model)
        self.backend = resolve_backend(backend) if self.spiking else None
        self.profile = load_profile(profile) if self.spiking else None
        self.progress = progress
        self._leading = _leading_special(self._tok)
        self.reset_usage()

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        cfg = self.model.config
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        return eos if eos is not None else self.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        cfg = self.model.config
        for t in (cfg.bos_token_id, cfg.eos_token_id):
            t = t[0] if isinstance(t, list) else t
            if t is not None:
                return int(t)
        nl = _single_token(self._tok, "\n")
        if nl is None:
            raise UnavailableError("the model has no BOS or EOS token and '\\n' is not one token: "
                                   "nothing can stand before a text that has no context (an "
                                   "empty-context or perplexity task); give the task a context")
        return nl

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        """The tokenizer's ids; ``add_special_tokens=False`` drops the BOS token a
        tokenizer such as Gemma's puts before every text."""
        ids = self._tok.encode(string)
        if add_special_tokens is False and self._leading is not None and ids[:1] == [self._leading]:
            ids = ids[1:]
        return ids

    def tok_decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))

    # ------------------------------------------------------------------ spikes
    def reset_usage(self) -> None:
        """Forget the tokens and spikes counted so far."""
        self.tokens = 0
        self.seconds = 0.0
        self.counters: dict[str, LayerCounters] = {}
        self._lengths: Counter = Counter()

    @contextmanager
    def _running(self):
        """While inside: a spiking model runs event by event and its spikes are counted."""
        t0 = time.perf_counter()
        if not self.spiking:
            try:
                yield
            finally:
                self.seconds += time.perf_counter() - t0
            return
        with Simulator(self.model, self.backend) as sim:
            try:
                yield
            finally:
                for name, c in sim.counters.items():
                    if name in self.counters:
                        self.counters[name].merge(c)
                    else:
                        self.counters[name] = c
                self.seconds += time.perf_counter() - t0

    def _count(self, n: int) -> None:
        self.tokens += n
        self._lengths[n] += 1

    def usage(self) -> dict:
        """What the model ran since :meth:`reset_usage`: ``tokens`` (fed, contexts counted
        once per request), ``seconds``, and for a spiking model ``spikes_per_element``,
        ``zero_fraction``, ``events``, ``elements`` and ``energy`` (the report's estimates
        per token of the spiking layers, :func:`sbsnn.analysis.sections.energy_section`)."""
        out = {"tokens": self.tokens, "seconds": self.seconds, "spiking": self.spiking}
        if not self.spiking or not self.counters:
            return out
        t = SimResult(None, self.counters, 0, 0.0, "", "").totals()
        out.update(spikes_per_element=t["spikes_per_element"], zero_fraction=t["zero_fraction"],
                   events=t["events"], elements=t["elements"], synaptic_ops=t["synaptic_ops"])
        out["energy"] = self._energy()
        return out

    def _energy(self) -> dict:
        cfg = getattr(self.model, "spiking_config", None)
        dense = ("down_proj",) if cfg is not None and cfg.preset == "w8aspike" else ()
        ns: dict = {}
        for n, times in self._lengths.items():     # each request a fresh sequence
            for k, v in nonspiking_ops(self.model.config, n, dense_projections=dense).items():
                ns[k] = ns.get(k, 0) + v * times
        gs = {n: m.group_size for n, m in self.model.named_modules()
              if n in self.counters}
        layers = [{**c.to_dict(), "group_size": gs.get(name, 128)}
                  for name, c in self.counters.items()]
        report = estimate_energy(layers, coding_of(self.model), profile=self.profile,
                                 nonspiking=ns)
        sec = energy_section(report, self.tokens,
                             profiles=(self.profile, load_profile("horowitz45")))
        per = {est: {"snn_pj_per_token": e["snn"]["pj_per_token"],
                     "int8_dense_pj_per_token": e["baselines"]["int8_dense"]["pj_per_token"],
                     "fp16_dense_pj_per_token": e["baselines"]["fp16_dense"]["pj_per_token"],
                     "with_nonspiking_pj_per_token": (e.get("with_nonspiking") or {}).get(
                         "snn", {}).get("pj_per_token")}
               for est, e in sec["estimates"].items()}
        return {"profile": sec["profile"], "baseline_profile": sec["baseline_profile"],
                "tokens": self.tokens, "by_estimate": per,
                "pj_per_token": per["a_spikingbrain"]["snn_pj_per_token"]}

    # ------------------------------------------------------------------ lm-eval
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        out = []
        with self._running():
            for _, context, continuation in tqdm(requests, desc="loglikelihood", unit="req",
                                                 disable=disable_tqdm or not self.progress):
                if not continuation:
                    raise OptionError("a loglikelihood request has an empty continuation "
                                      "(nothing to score); check the task's doc_to_choice")
                context = list(context) or [self.prefix_token_id]   # e.g. a context of spaces
                ids = (context + list(continuation))[-(self.max_length + 1):]
                n = min(len(continuation), len(ids) - 1)
                lp, greedy = token_logprobs(self.model, ids, self.block_size, len(ids) - n)
                self._count(len(ids) - 1)
                out.append((float(lp.double().sum()), bool(greedy.all())))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (text,) in tqdm([r.args for r in requests], desc="loglikelihood_rolling",
                            unit="doc", disable=disable_tqdm or not self.progress):
            tokens = self.tok_encode(text, add_special_tokens=False)
            if not tokens:
                out.append(0.0)
                continue
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scored = self._loglikelihood_tokens([(None, c, t) for c, t in windows],
                                                disable_tqdm=True)
            out.append(sum(lp for lp, _ in scored))
        return out

    def _generation_options(self, req) -> tuple[list[str], int]:
        task = getattr(req, "task_name", None) or "a task"
        gen = dict(req.args[1]) if len(req.args) > 1 and req.args[1] else {}
        unknown = sorted(set(gen) - set(_GEN_KEYS))
        if unknown:
            raise OptionError(f"{task}: generation option(s) {unknown} are not supported (sbsnn "
                              f"decodes greedily; it reads {', '.join(_GEN_KEYS[:4])})")
        temperature = gen.get("temperature", 0.0) or 0.0
        if gen.get("do_sample") or temperature > 0:
            raise OptionError(f"{task}: asks for sampling (do_sample={gen.get('do_sample')!r}, "
                              f"temperature={temperature!r}); sbsnn eval decodes greedily: run "
                              "the task with do_sample false (--gen_kwargs do_sample=false)")
        until = gen.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        n = gen.get("max_gen_toks", gen.get("max_new_tokens", self.max_gen_toks))
        check_int(n, f"{task}: max_gen_toks", minimum=1)
        return until, int(n)

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        device = next(self.model.parameters()).device
        eos = self.model.config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        with self._running():
            for req in tqdm(requests, desc="generate_until", unit="req",
                            disable=disable_tqdm or not self.progress):
                until, n = self._generation_options(req)
                ids = self.tok_encode(req.args[0])
                ids = ids[-max(1, self.max_length - n):]
                if not ids:
                    ids = [self.prefix_token_id]
                state = self.model.new_state()
                logits = self.model.prefill(torch.tensor([ids], device=device), state,
                                            self.block_size)
                new: list[int] = []
                text = ""
                for _ in range(n):
                    t = int(logits[0].argmax())
                    if t in eos:
                        break
                    new.append(t)
                    text = self.tok_decode(new)
                    if any(u in text for u in until):
                        break
                    logits = self.model(torch.tensor([[t]], device=device), state)[:, -1]
                self._count(len(ids) + len(new))
                for u in until:
                    text = text.split(u)[0]
                out.append(text)
        return out
