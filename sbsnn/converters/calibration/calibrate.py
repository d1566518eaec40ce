"""``calibrate``: a spiking model that spends at most a spike budget and stays close to
its float original.

Steps (docs/calibration.md has the reasoning and the measurements):

1. the calibration text, as documents, in blocks through each document's decoding state;
2. groups: which spiking linear layers read the same activation (they share one k);
3. per channel of every group, its share of the threshold and its output sensitivity
   (one forward and backward over the first ``fisher_tokens`` tokens);
4. candidate smoothings per group (folded exactly into the producer of the activation);
5. per group and candidate, the distortion and the spikes at every k of a grid (a second
   forward and backward);
6. the allocation: one (smoothing, k) per group minimising the distortion within the
   budget;
7. the smoothed float model converted with those k (an ordinary spiking checkpoint:
   per-layer k in ``spiking_config.json``, smoothing inside the float weights);
8. the budget checked on the whole calibration text with the spiking model itself
   (integer path); if it is exceeded, every k shrinks by one factor and it is checked
   again.

The threshold stays adaptive (``V_th = mean|x| / k`` per token, computed online) and
every projection input of the preset still spikes.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbsnn.checks import check_block_size, check_int
from sbsnn.converters.calibration.allocate import Choice, allocate, scale_to_budget, uniform_k
from sbsnn.converters.calibration.budget import SpikeBudget
from sbsnn.converters.calibration.documents import each_document
from sbsnn.converters.calibration.groups import InputGroup, find_groups, fold, tie_for_producer
from sbsnn.converters.calibration.measure import (ChannelStats, channel_stats, default_kgrid,
                                       distortion_tables, spikes_of)
from sbsnn.converters.calibration.refine import check_options as check_refine_options
from sbsnn.converters.calibration.refine import refine, refined_parameters
from sbsnn.converters.convert import convert, plan
from sbsnn.converters.spiking_linear import ExecutorSwap, SpikingLinear, spiking_layers
from sbsnn.errors import CheckpointKindError, OptionError
from sbsnn.models.prefix import compute_prefix, prefix_of, refold_prefix
from sbsnn.neurons import CODINGS, AdaptiveThresholdNeuron

# Candidate smoothings s = u^alpha / a^beta (u: share of the threshold, a: sensitivity).
# (0, 0) is no smoothing; (1/3, 1/3) is optimal for ternary coding at a fixed budget;
# (0, 1/2) equalises sensitivity-weighted noise, which suits bitwise coding, whose spikes
# grow with the logarithm of a count.
SMOOTHINGS = ((0.0, 0.0), (1 / 3, 1 / 3), (0.5, 0.5), (0.0, 0.5))
SMOOTH_RANGE = 16.0  # s is kept within [1/16, 16] of its geometric mean (INT8 weights)


@dataclass
class LayerRecord:
    k: float
    spikes_per_element: float
    local_error: float        # relative RMS error of the layer's output vs float


@dataclass
class Measured:
    """Spikes and local errors of a spiking model over some tokens."""

    tokens: int
    elements: int
    spikes: int
    layers: dict[str, LayerRecord] = field(default_factory=dict)

    @property
    def spikes_per_element(self) -> float:
        return self.spikes / self.elements if self.elements else 0.0


def _check(spike_budget, coding: str, fisher_tokens: int, max_tokens: int, block_size: int):
    if coding not in CODINGS:
        raise OptionError(f"unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
    check_int(fisher_tokens, "fisher_tokens", minimum=1)
    check_int(max_tokens, "max_tokens", minimum=1)
    check_block_size(block_size)
    b = SpikeBudget.of(spike_budget)
    return b.spikes_per_element, b.plain_k


def text_blocks(model, texts, max_tokens: int, block_size: int) -> list[list[torch.Tensor]]:
    """Documents -> per document its blocks of token ids ``[1, <= block_size]`` (as the model
    reads them after its constant prefix, if it has one: without the BOS it holds)."""
    tok = model._require_tokenizer()
    pre = prefix_of(model)
    if isinstance(texts, str):
        texts = [texts]
    device = next(model.parameters()).device
    out, total = [], 0
    for text in texts:
        if not isinstance(text, str):
            raise OptionError(f"calibration texts must be strings, got {type(text).__name__}")
        ids = tok.encode(text)
        if pre is not None:
            ids = pre.body(torch.tensor([ids], dtype=torch.long))[0].tolist()
        ids = ids[: max_tokens - total]
        if len(ids) < 2:
            continue
        total += len(ids)
        t = torch.tensor([ids], device=device)
        out.append([t[:, s:s + block_size] for s in range(0, t.shape[1], block_size)])
        if total >= max_tokens:
            break
    if not out:
        raise OptionError("the calibration text holds fewer than two tokens")
    return out


def first_tokens(blocks: list[list[torch.Tensor]], n: int) -> list[list[torch.Tensor]]:
    out, total = [], 0
    for doc in blocks:
        kept = []
        for b in doc:
            if total >= n:
                break
            b = b[:, : n - total]
            kept.append(b)
            total += b.shape[1]
        if kept:
            out.append(kept)
        if total >= n:
            break
    return out


def _smoothing(stats: ChannelStats, group: InputGroup, alpha: float, beta: float) -> torch.Tensor:
    u = stats.u.clamp(min=1e-12)
    a = stats.a.clamp(min=1e-30 + float(stats.a.max()) * 1e-12)
    s = (u.log() * alpha - a.log() * beta)
    s = s - s.mean()
    s = s.clamp(-math.log(SMOOTH_RANGE), math.log(SMOOTH_RANGE)).exp()
    return tie_for_producer(group, s).float()


class SpikeTap(ExecutorSwap):
    """While active (``with SpikeTap(spiking, coding, reference):``), every spiking linear
    layer of ``spiking`` runs its integer path through an executor (an
    :class:`~sbsnn.converters.spiking_linear.ExecutorSwap`) that counts its elements and
    spikes (the coding's count) and, with the float ``reference`` model (same module
    names), sums the squared error of its output against the float layer on the same
    input.

    Each document counts apart (``with tap.document(i):`` on the thread that runs it;
    documents may run on several threads at once), and :meth:`measured` adds the
    documents in index order, so the sums do not depend on which thread ran what. Calls
    outside any document count as one more, before the others, and must come from the
    thread that entered the tap. The neurons' memories (``v_th``) are left as they were
    found."""

    def __init__(self, spiking: nn.Module, coding: str, reference: nn.Module | None = None):
        super().__init__(spiking_layers(spiking))
        self.spiking, self.coding, self.reference = spiking, coding, reference
        self._documents: dict[int, dict] = {}   # index -> per layer [elements, spikes, err^2, ref^2]
        self._loose: dict | None = None
        self._current = threading.local()
        self._lock = threading.Lock()
        self._owner: threading.Thread | None = None
        self._memories: list = []

    def _zeros(self) -> dict:
        return {n: [0, 0, 0.0, 0.0] for n, _ in self.layers}

    @contextmanager
    def document(self, index: int):
        """Count what this thread runs inside as document ``index`` (each index once)."""
        with self._lock:
            if index in self._documents:
                raise ValueError(f"SpikeTap: document {index} was already counted")
            acc = self._documents[index] = self._zeros()
        before = getattr(self._current, "acc", None)
        self._current.acc = acc
        try:
            yield
        finally:
            self._current.acc = before

    def _accumulators(self) -> dict:
        acc = getattr(self._current, "acc", None)
        if acc is not None:
            return acc
        if threading.current_thread() is not self._owner:
            raise RuntimeError("SpikeTap: a spiking layer ran on another thread outside "
                               "tap.document(i); wrap each document's pass in tap.document(i)")
        if self._loose is None:
            self._loose = self._zeros()
        return self._loose

    def execute(self, name, layer, x):
        counts, v_th = layer.spike(x)
        y = layer.forward_counts(counts, v_th, x.dtype)
        a = self._accumulators()[name]
        a[0] += counts.numel()
        a[1] += spikes_of(counts, self.coding)
        if self.reference is not None:
            ref = self.reference.get_submodule(name)
            yr = F.linear(x.reshape(-1, layer.in_features), ref.weight, ref.bias)
            a[2] += float((y.float() - yr.float()).pow(2).sum())
            a[3] += float(yr.float().pow(2).sum())
        return y.view(*x.shape[:-1], layer.out_features)

    def __enter__(self) -> "SpikeTap":
        self._owner = threading.current_thread()
        self._memories = [(m, m.v_th) for m in self.spiking.modules()
                          if isinstance(m, AdaptiveThresholdNeuron)]
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for m, v_th in self._memories:
            m.v_th = v_th

    def measured(self, tokens: int) -> Measured:
        """The counts of all documents (in index order) as a :class:`Measured`."""
        parts = ([self._loose] if self._loose is not None else []) + \
            [self._documents[i] for i in sorted(self._documents)]
        out = Measured(tokens=tokens, elements=0, spikes=0)
        for n, m in self.layers:
            e = sp = 0
            err = ref = 0.0
            for acc in parts:
                e, sp, err, ref = e + acc[n][0], sp + acc[n][1], err + acc[n][2], ref + acc[n][3]
            out.elements += e
            out.spikes += sp
            out.layers[n] = LayerRecord(k=m.k, spikes_per_element=sp / e if e else 0.0,
                                        local_error=math.sqrt(err / ref) if ref else 0.0)
        return out


@torch.no_grad()
def measure_spikes(spiking, blocks, coding: str, reference: nn.Module | None = None,
                   progress=None) -> Measured:
    """Spikes per element (the coding's count) and, with the float ``reference`` model, each
    layer's relative output error, from the spiking model's integer path over ``blocks``
    (documents, each from a fresh state). The head is not computed (nothing there
    spikes). ``progress(n)`` after each block, on the calling thread. With several torch
    threads on a CPU the documents run side by side (:func:`each_document`); the result
    is the same, bit for bit."""
    models = [spiking] + ([reference] if reference is not None else [])

    def one(i, doc, tell):
        with tap.document(i):
            state = spiking.start_state()
            for ids in doc:
                spiking.body(ids, state)
                tell(ids.shape[1])

    with SpikeTap(spiking, coding, reference) as tap:
        each_document(one, blocks, models, progress)
    return tap.measured(sum(ids.shape[1] for doc in blocks for ids in doc))


def calibrate(float_model, texts, spike_budget, coding: str = "ternary",
              preset: str | None = "paper", group_size: int = 128,
              targets: list[str] | None = None, exclude: list[str] | None = None, *,
              smoothing: bool = True, allocation: bool = True, fisher_tokens: int = 2048,
              max_tokens: int = 32768, block_size: int = 256, seed: int = 0,
              margin: float = 0.005, refine_epochs: int = 0, refine_lr: float = 1e-3,
              refine_positions: int = 64, refine_state=None, progress: bool = False,
              prefix=None, prefix_text: str | None = None):
    """The spiking version of ``float_model`` calibrated on ``texts`` (a string or a list of
    documents) to spend at most ``spike_budget`` spikes per element there.

    ``spike_budget``: mean spikes per element in ``coding`` (ternary and binary: mean
    ``|count|``; bitwise: mean popcount of ``|count|``; two's complement: of its word) over
    all spiking inputs, weighted by elements; or ``"k=K"``: what plain conversion at
    ``k = K`` spends on the same text. ``smoothing`` / ``allocation`` switch the two
    methods (for ablations). ``refine_epochs`` (0: off) epochs of straight-through
    distillation of the norm weights on the first ``fisher_tokens`` tokens follow
    (:func:`~sbsnn.converters.calibration.refine.refine`; ``refine_state``: a file it
    saves its progress to after every epoch and resumes from, removed when calibration
    returns). The float model is not modified. The result is an ordinary
    spiking model (``sbsnn.save_spiking`` writes it); ``result.calibration_report`` holds
    the per-layer and overall record, also summarised in its ``spiking_config.calibration``.

    ``prefix`` (``"bos"`` or token ids) or ``prefix_text``: a constant prefix
    (:func:`sbsnn.convert`'s): its state is computed once by ``float_model``, every pass of
    calibration reads the documents after it (without the BOS it holds), and the result
    starts every document from it. A float model that carries a prefix passes it on.
    """
    t_start = time.perf_counter()
    if any(isinstance(m, SpikingLinear) for m in float_model.modules()):
        raise CheckpointKindError("calibrate needs the float model (it converts it); this one is "
                                  "already spiking: load the float checkpoint it came from")
    budget, plain_k = _check(spike_budget, coding, fisher_tokens, max_tokens, block_size)
    check_refine_options(refine_epochs, refine_lr, refine_positions, refine_state)
    if not 0 <= margin < 0.5:
        raise OptionError(f"margin must be in [0, 0.5), got {margin!r}")
    from tqdm.auto import tqdm

    pre = (compute_prefix(float_model, prefix, prefix_text)
           if prefix is not None or prefix_text is not None else prefix_of(float_model))
    work = copy.deepcopy(float_model)
    work.tokenizer = getattr(float_model, "tokenizer", None)
    work.eval()
    if pre is not None:
        work.prefix = pre        # computed by this model's original: the same layout
    blocks = text_blocks(work, texts, max_tokens, block_size)
    n_tokens = sum(b.shape[1] for doc in blocks for b in doc)
    fblocks = first_tokens(blocks, fisher_tokens)
    n_fisher = sum(b.shape[1] for doc in fblocks for b in doc)
    names = plan(work, preset, coding, 3.0, group_size, targets, exclude).targets
    groups = find_groups(work, names, fblocks[0][0][:, :64])
    elements = {g.name: g.elements for g in groups}
    timings: dict[str, float] = {}

    bar = tqdm(total=n_fisher * (2 if smoothing else 1), desc="calibrate (sensitivity)",
               unit="tok", disable=not progress)
    candidates = {g.name: [None] for g in groups}
    stats: dict[str, ChannelStats] = {}
    t = time.perf_counter()
    if smoothing:
        stats = channel_stats(work, groups, fblocks, seed, bar.update)
        for g in groups:
            if g.foldable and g.name in stats:
                candidates[g.name] += [_smoothing(stats[g.name], g, a, b) for a, b in SMOOTHINGS[1:]]
    timings["channel_stats_s"] = time.perf_counter() - t
    t = time.perf_counter()
    kgrid = default_kgrid()
    tables = distortion_tables(work, groups, fblocks, candidates, kgrid, coding, seed, bar.update)
    bar.close()
    timings["tables_s"] = time.perf_counter() - t
    missing = [g.name for g in groups if g.name not in tables]
    if missing:
        raise OptionError(f"no calibration activations reached {missing[:3]}; give a longer text")

    def bar_for(desc: str, total: int):
        return tqdm(total=total, desc=desc, unit="tok", disable=not progress)

    t = time.perf_counter()
    plain_measured = None
    if plain_k is not None:  # the budget is what plain conversion at this k spends here
        plain = convert(work, preset, coding, plain_k, group_size, targets, exclude)
        with bar_for(f"calibrate (budget: plain k = {plain_k:g})", n_tokens) as b:
            plain_measured = measure_spikes(plain, blocks, coding, progress=b.update)
        budget = plain_measured.spikes_per_element
        del plain
    timings["plain_budget_s"] = time.perf_counter() - t
    k_plain = plain_k if plain_k is not None else uniform_k(tables, elements, budget)

    goal = budget * (1 - margin)
    if allocation:
        choices = allocate(tables, elements, goal,
                           None if smoothing else {g: [0] for g in tables})
    else:  # one k for all; each group's best smoothing at that k
        choices = _uniform_choices(tables, elements, goal)
    for g in groups:
        c = choices[g.name].candidate
        if c:
            fold(work, g, candidates[g.name][c])
    if pre is not None and any(choices[g.name].candidate for g in groups):
        # a smoothing folded into v_proj's rows scales the values the prefix's state holds
        # (the KV cache, a linear mixer's state): the state must be the smoothed model's
        pre = refold_prefix(pre, work)
        work.prefix = pre

    def converted(scale: float):
        layer_k = {n: choices[g.name].k * scale for g in groups for n in g.consumers}
        return convert(work, preset, coding, float(np.median(list(layer_k.values()))),
                       group_size, targets, exclude, layer_k=layer_k)

    t = time.perf_counter()
    refinement, spiking = None, None
    if refine_epochs:
        spiking = converted(1.0)
        bars: list = []

        def refine_bar(total: int):
            bars.append(bar_for(f"calibrate (refine, {refine_epochs} epochs)", total))
            return bars[-1].update

        try:
            refinement = refine(spiking, float_model, fblocks, epochs=refine_epochs,
                                lr=refine_lr, positions=refine_positions, seed=seed,
                                state_path=refine_state, progress=refine_bar)
        finally:
            for b in bars:
                b.close()
        # every conversion below (and the report's float reference) reads the refined norms
        fitted = {n: p.detach() for n, p in refined_parameters(spiking).items()}
        with torch.no_grad():
            for n, p in work.named_parameters():
                if n in fitted:
                    p.copy_(fitted[n])
    timings["refine_s"] = time.perf_counter() - t

    t = time.perf_counter()
    scale, tries = 1.0, []
    for attempt in range(5):
        if spiking is None or attempt > 0:
            spiking = converted(scale)
        with bar_for(f"calibrate (check {attempt + 1})", n_tokens) as b:
            measured = measure_spikes(spiking, blocks, coding, progress=b.update)
        tries.append({"scale": scale, "spikes_per_element": measured.spikes_per_element})
        if measured.spikes_per_element <= budget:
            break
        scale *= scale_to_budget(tables, elements, choices,
                                 goal / measured.spikes_per_element)
    else:
        raise RuntimeError(f"calibration could not meet the budget {budget:g} "
                           f"(measured {measured.spikes_per_element:g} after {len(tries)} tries)")
    timings["verify_s"] = time.perf_counter() - t

    # "before": plain conversion at the uniform k of the same budget, on the Fisher tokens
    plain = convert(float_model, preset, coding, k_plain, group_size, targets, exclude)
    plain.prefix = pre
    with bar_for("calibrate (per-layer report)", 2 * n_fisher) as b:
        before = measure_spikes(plain, fblocks, coding, reference=float_model, progress=b.update)
        after = measure_spikes(spiking, fblocks, coding, reference=work, progress=b.update)
    del plain
    timings["total_s"] = time.perf_counter() - t_start

    report = {
        "coding": coding, "preset": preset, "budget": budget,
        "budget_from": f"plain conversion at k = {plain_k:g}" if plain_k is not None else "given",
        "plain_k": k_plain, "calibration_tokens": n_tokens, "fisher_tokens": n_fisher,
        "documents": len(blocks),
        "methods": {"smoothing": smoothing, "allocation": allocation,
                    "refine_epochs": refine_epochs},
        "refinement": refinement,
        "spikes_per_element": measured.spikes_per_element,
        "plain_spikes_per_element": (plain_measured.spikes_per_element
                                     if plain_measured is not None else None),
        "tries": tries, "seconds": timings,
        "groups": [{**g.to_dict(), "k": choices[g.name].k * scale,
                    "smoothing": _smoothing_name(choices[g.name].candidate),
                    "predicted_distortion": choices[g.name].distortion}
                   for g in groups],
        "layers": {n: {"before": vars(before.layers[n]), "after": vars(after.layers[n]),
                       "spikes_per_element_calibration_text": measured.layers[n].spikes_per_element}
                   for n in measured.layers},
        "before_fisher_tokens": {"spikes_per_element": before.spikes_per_element},
        "prefix": None if pre is None else pre.metadata(),
        "after_fisher_tokens": {"spikes_per_element": after.spikes_per_element},
    }
    spiking.spiking_config.calibration = {
        "method": "sbsnn.calibrate: Fisher-weighted smoothing and per-layer k allocation"
                  + (", straight-through refinement of the norm weights" if refinement else ""),
        "coding": coding, "spike_budget": budget, "budget_from": report["budget_from"],
        "spikes_per_element": measured.spikes_per_element, "calibration_tokens": n_tokens,
        "smoothing": smoothing, "allocation": allocation, "refine_epochs": refine_epochs,
        "seconds": timings["total_s"],
    }
    spiking.calibration_report = report
    if refine_state is not None:
        Path(refine_state).unlink(missing_ok=True)
    return spiking


def _smoothing_name(c: int) -> str:
    a, b = SMOOTHINGS[c]
    return "none" if c == 0 else f"u^{a:.3g} / a^{b:.3g}"


def _uniform_choices(tables, elements, budget) -> dict[str, Choice]:
    """One k for every group (the largest that meets the budget); per group the candidate
    of least distortion at that k."""
    kgrid = next(iter(tables.values())).kgrid
    total = sum(elements.values())
    best = None
    for i in range(len(kgrid)):
        cand = {g: int(np.argmin(t.distortion[:, i])) for g, t in tables.items()}
        sp = sum(elements[g] * tables[g].spikes[c, i] for g, c in cand.items()) / total
        if sp <= budget:
            best = (i, cand)
    if best is None:
        raise OptionError(f"a spike budget of {budget:g} is below what k = {kgrid[0]:g} spends")
    i, cand = best
    return {g: Choice(c, float(kgrid[i]), float(tables[g].distortion[c, i]),
                      float(tables[g].spikes[c, i])) for g, c in cand.items()}
