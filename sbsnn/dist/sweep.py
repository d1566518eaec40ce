"""The k sweep over a document set, in one process or split across torch.distributed ranks.

:func:`sweep_documents` gives the rows of :func:`sbsnn.analysis.sweep.sweep` (perplexity,
agreement, KL, pooled sparsity, energy, SpikingBrain's Table 11 beside them) for many
documents, each read from a fresh decoding state by both models. Under ``torchrun`` the
documents are split across ranks (balanced by tokens); the integer sums (layer
counters, sparsity tallies) are reduced with int64 ``all_reduce`` and the fidelity sums
gathered per document and added in document order, so every rank gets the rows one
process would compute. Each row also lists the fidelity of every document.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from sbsnn.dist.documents import assign_documents, load_documents
from sbsnn.dist.group import Group, process_group
from sbsnn.dist.simulate import reduce_counters

__all__ = ["reduce_tallies", "sweep_documents"]


def _tally_keys(t) -> list[tuple[str, int]]:
    """(field, length) of a SparsityTally's summed fields (length 0: an int)."""
    return [(k, len(v) if isinstance(v, list) else 0) for k, v in vars(t).items() if k != "window"]


def reduce_tallies(group: Group, names: list[str], tallies: dict, window: int) -> dict:
    """Per-layer :class:`~sbsnn.analysis.sparsity.SparsityTally` sums over the group
    (exact, one int64 ``all_reduce``); layers that no rank saw are left out."""
    from sbsnn.analysis.sparsity import SparsityTally

    keys = _tally_keys(SparsityTally(window))
    width = sum(n or 1 for _, n in keys)
    packed = torch.zeros(len(names), width, dtype=torch.int64)
    for i, name in enumerate(names):
        t = tallies.get(name)
        if t is None:
            continue
        row = []
        for k, n in keys:
            v = getattr(t, k)
            row += list(v) if n else [v]
        packed[i] = torch.tensor(row, dtype=torch.int64)
    total = group.sum_ints(packed)
    out = {}
    for name, row in zip(names, total.tolist()):
        t, j = SparsityTally(window), 0
        for k, n in keys:
            setattr(t, k, [int(x) for x in row[j:j + n]] if n else int(row[j]))
            j += n or 1
        if t.calls:
            out[name] = t
    return out


def sweep_documents(model, documents, ks: Sequence[float] | None = None, preset: str = "paper",
                    coding: str = "ternary", profile: str = "horowitz45", *,
                    group_size: int = 128, block_size: int = 256, window: int = 3,
                    max_chars: int | None = None, progress: bool = False,
                    on_row: Callable[[dict], None] | None = None,
                    distributed: bool | str = "auto", group: Group | None = None) -> list[dict]:
    """The rows of :func:`sbsnn.analysis.sweep.sweep` over a document set (a path or texts,
    :func:`~sbsnn.dist.documents.load_documents`), plus ``documents`` (how many) and
    ``per_document`` (index, name, predictions, perplexities, agreement, KL of each).
    ``max_chars`` cuts each document. Every rank returns the same rows."""
    if group is None:
        with process_group(distributed) as g:
            return sweep_documents(model, documents, ks, preset, coding, profile,
                                   group_size=group_size, block_size=block_size, window=window,
                                   max_chars=max_chars, progress=progress, on_row=on_row, group=g)
    from sbsnn.analysis.counters import add_call
    from sbsnn.analysis.energy import estimate_energy
    from sbsnn.analysis.fidelity import FidelitySums, fidelity_sums
    from sbsnn.analysis.opcount import nonspiking_ops
    from sbsnn.analysis.sparsity import SparsityCollector, SparsityTally, tally_counts
    from sbsnn.analysis.sweep import _SPARSITY_KEYS, SWEEP_KS, _energy_summary, _reference
    from sbsnn.converters import SpikingLinear, convert
    from sbsnn.dist.documents import Document, DocumentSet
    from sbsnn.sim.engine import LayerCounters

    from sbsnn.analysis.sweep import check_sweep
    from sbsnn.checks import check_int

    ks = check_sweep(model, SWEEP_KS if ks is None else ks, preset, coding, profile, group_size,
                     block_size, window)
    check_int(max_chars, "max_chars", minimum=1, none_ok=True, hint=" (None: the whole text)")
    docs = load_documents(documents)
    if max_chars is not None:
        docs = DocumentSet(docs.source, tuple(Document(d.index, d.name, d.text[:max_chars])
                                              for d in docs))
    tok = model._require_tokenizer()
    lengths = [len(tok.encode(d.text)) for d in docs]
    short = [d for d, n in zip(docs, lengths) if n < 2]
    if short:
        raise ValueError(f"{docs.source}: document {short[0].index} ({short[0].name}) has fewer "
                         f"than two tokens; fidelity needs a next token to predict")
    ranks = assign_documents(lengths, group.world_size)
    mine = [d for d in docs if ranks[d.index] == group.rank]
    cfg = model.config
    dense = tuple(p for p in ("down_proj",) if preset == "w8aspike")
    nonspiking: dict = {}
    for n in lengths:          # each document a fresh sequence
        for key, v in nonspiking_ops(cfg, n, dense_projections=dense).items():
            nonspiking[key] = nonspiking.get(key, 0) + v
    rows = []
    from tqdm.auto import tqdm

    for k in tqdm(ks, desc=f"sweep{group.where()}", unit="k", disable=not (progress and group.is_main)):
        t0 = time.perf_counter()
        snn = convert(model, preset=preset, coding=coding, k=k, group_size=group_size)
        layers = [(n, m) for n, m in snn.named_modules() if isinstance(m, SpikingLinear)]
        names = [n for n, _ in layers]
        counters = {n: LayerCounters(n, m.in_features, m.out_features) for n, m in layers}
        tallies = {n: SparsityTally(window) for n, _ in layers}
        hooks = []

        def tap(name):
            def hook(mod, inputs, _output):
                counts, _ = mod.spike(inputs[0].detach())
                tallies[name].add(tally_counts(counts, coding, window))
                add_call(counters[name], counts, coding)
            return hook

        for name, mod in layers:
            hooks.append(mod.register_forward_hook(tap(name)))
        per_doc = []
        try:
            with torch.no_grad():
                for d in mine:
                    per_doc.append((d.index, fidelity_sums(model, snn, d.text, block_size=block_size)))
        finally:
            for h in hooks:
                h.remove()
        shapes = {n: (m.in_features, m.out_features) for n, m in layers}
        reduced = reduce_counters(group, names, counters, shapes)
        reduced = {n: c for n, c in reduced.items() if c.calls}
        pooled_tallies = reduce_tallies(group, names, tallies, window)
        sums = sorted((x for part in group.all_gather(per_doc) for x in part), key=lambda x: x[0])
        if [i for i, _ in sums] != list(range(len(docs))):
            raise RuntimeError(f"internal: fidelity of {len(sums)} documents gathered for {len(docs)}")
        total = FidelitySums()
        for _, s in sums:                      # in document order: the same bits on any split
            total = total.add(s)
        fid = total.fidelity().to_dict()
        info = {n: {"group_size": m.group_size, "bias": m.bias is not None} for n, m in layers}
        tokens = max((c.tokens for c in reduced.values()), default=0)
        en = estimate_energy([{**c.to_dict(), **info[n]} for n, c in reduced.items()], coding,
                             profile=profile, group_size=group_size, nonspiking=nonspiking)
        collector = SparsityCollector(coding, cfg, window)
        collector.calls = list(pooled_tallies.items())
        pooled = collector.report().pooled
        row = {
            "k": k, "method": "plain", "preset": preset, "coding": coding, "tokens": tokens,
            "chars": docs.chars,
            "float_perplexity": fid["float_perplexity"], "spiking_perplexity": fid["spiking_perplexity"],
            "perplexity_ratio": fid["spiking_perplexity"] / fid["float_perplexity"],
            "top1_agreement": fid["top1_agreement"], "mean_kl": fid["mean_kl"],
            "float_nll": fid["float_nll"], "spiking_nll": fid["spiking_nll"],
            "sparsity": {key: pooled[key] for key in _SPARSITY_KEYS},
            "energy": _energy_summary(en, tokens),
            "reference": _reference(k),
            "documents": len(docs),
            "per_document": [{"index": i, "name": docs[i].name, **_doc_fidelity(s)} for i, s in sums],
            "seconds": max(group.all_gather(time.perf_counter() - t0)),
        }
        rows.append(row)
        if on_row is not None and group.is_main:
            on_row(row)
        del snn
    return rows


def _doc_fidelity(s) -> dict:
    f = s.fidelity()
    return {"tokens": f.tokens, "float_nll": f.float_nll, "spiking_nll": f.spiking_nll,
            "float_perplexity": f.float_perplexity, "spiking_perplexity": f.spiking_perplexity,
            "top1_agreement": f.top1_agreement, "mean_kl": f.mean_kl}
