"""What calibration measures on the float model: output sensitivity per spiked channel,
and per group the distortion and spikes each (smoothing, k) choice would give.

The spiking error of a group's activation ``x`` (one row per token) is
``e = x - V_th * round(x / V_th)`` with ``V_th = mean|x| / k``. To second order its effect
on the model's next-token distributions is ``KL ~ 1/2 E[(g . e)^2]``, with ``g`` the
gradient of ``log p(y)`` for ``y`` drawn from the float model's own prediction (the
Fisher information of the output, estimated by one sample per position). The errors of
distinct channels are close to independent, so a group's *distortion* is

    D(k) = E_tokens sum_j g_j^2 e_j(k)^2

and its cost is the spikes it emits per element, ``S(k)``: ``|c|`` (ternary, binary)
or ``popcount |c|`` (bitwise), or the popcount of the two's-complement word. Both are
computed exactly (rounding and counting as the neurons do), for a grid of k, on the float
model's activations and gradients at sampled tokens (:func:`_rows`); for
a smoothing ``s`` (``x -> x / s`` folded into the producer), the same tables are
computed on ``x / s`` with gradients ``g * s``.

Per channel, the statistics that choose the smoothing: ``u_j = E |x_j| / mean|x|`` (its
share of the threshold) and ``a_j = E (mean|x|)^2 g_j^2`` (its sensitivity); for ternary
coding the distortion at a fixed spike budget is smallest with ``s_j ~ (u_j / a_j)^(1/3)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sbsnn.converters.calibration.groups import InputGroup
from sbsnn.neurons import spikes_per_element
from sbsnn.neurons.coding import V_TH_MAX, V_TH_MIN


def spikes_per_row(c: torch.Tensor, coding: str) -> torch.Tensor:
    """Spikes of each row of integer counts ``c`` [N, D] laid out in ``coding``: [N]
    (``sbsnn.neurons.spikes_per_element``, the closed forms of the simulator and the
    reports; two's complement takes T from these rows)."""
    return spikes_per_element(c, coding).sum(-1)


def spikes_of(c: torch.Tensor, coding: str) -> int:
    """All spikes of integer counts ``c`` [N, D] (one call) in ``coding``: what the spike
    budget, the simulator's counters and the reports count."""
    return int(spikes_per_element(c, coding).sum())


@dataclass
class ChannelStats:
    """Per group: ``u`` (mean share of |x| per channel) and ``a`` (Fisher sensitivity)."""

    u: torch.Tensor
    a: torch.Tensor
    tokens: int


@dataclass
class Tables:
    """Per group and candidate smoothing: distortion and spikes per element for each k."""

    kgrid: np.ndarray                 # [K]
    distortion: np.ndarray            # [C, K], per token
    spikes: np.ndarray                # [C, K], per element
    tokens: int


def _sample(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One next token per position from the float model's own distribution."""
    u = torch.rand(logp.shape[0], 1, generator=gen, device="cpu").to(logp.device)
    y = torch.searchsorted(logp.exp().cumsum(-1), u)
    return y.clamp(max=logp.shape[-1] - 1)[:, 0]


def fisher_pass(model: nn.Module, groups: list[InputGroup], blocks: list[list[torch.Tensor]],
                on_group, seed: int = 0, progress=None) -> int:
    """Forward and backward over ``blocks`` (per document, its blocks in order, each from
    the document's decoding state). For every group, ``on_group(group, x, g)`` gets the
    activation ``[N, D]`` and the gradient of ``log p(y)`` w.r.t. it (``y`` sampled from
    the model). Gradients do not cross blocks. Returns the number of tokens."""
    first = {g.name: g for g in groups}
    gen = torch.Generator().manual_seed(seed)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    hooks, live = [], []

    def fwd(mod, inputs, output, group):
        x = inputs[0]
        if not x.requires_grad:
            return
        xs = x.detach().reshape(-1, x.shape[-1])
        live.append(x)

        def bwd(grad, xs=xs, group=group):
            on_group(group, xs, grad.detach().reshape(-1, grad.shape[-1]))
        x.register_hook(bwd)

    for name, g in first.items():
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda m, i, o, g=g: fwd(m, i, o, g)))
    hooks.append(model.model.embeddings.register_forward_hook(
        lambda m, i, o: o.detach().requires_grad_()))
    tokens = 0
    try:
        with torch.enable_grad():
            for doc in blocks:
                state = model.start_state()    # after the constant prefix, if any
                for ids in doc:
                    live.clear()
                    logits = model(ids, state)
                    _detach_state(state)
                    logp = logits[0].float().log_softmax(-1)
                    y = _sample(logp.detach(), gen)
                    logp.gather(1, y[:, None]).sum().backward()
                    tokens += ids.shape[1]
                    if progress is not None:
                        progress(ids.shape[1])
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return tokens


def _detach_state(state) -> None:
    def walk(d: dict):
        for k, v in list(d.items()):
            if isinstance(v, torch.Tensor):
                d[k] = v.detach()
            elif isinstance(v, dict):
                walk(v)
    for layer in state.layers:
        walk(layer)


def channel_stats(model, groups, blocks, seed: int = 0, progress=None) -> dict[str, ChannelStats]:
    acc: dict[str, list] = {}

    def on_group(group, x, g):
        x, g = x.double(), g.double()
        mu = x.abs().mean(-1, keepdim=True).clamp(min=1e-30)
        u = (x.abs() / mu).sum(0)
        a = ((g * mu) ** 2).sum(0)
        e = acc.setdefault(group.name, [0, 0, 0])
        e[0] = e[0] + u
        e[1] = e[1] + a
        e[2] += x.shape[0]

    fisher_pass(model, groups, blocks, on_group, seed, progress)
    return {n: ChannelStats(u=e[0] / e[2], a=e[1] / e[2], tokens=e[2]) for n, e in acc.items()}


def _rows(n: int, keep: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a block the tables read, and their weights: row 0 always (a document's
    first token carries the outlier activations of pretrained models), and a uniform
    sample of ``keep - 1`` others weighted ``(n - 1) / (keep - 1)``: an unbiased estimate
    of the block's sums at ``keep / n`` of the cost."""
    if n <= keep:
        return torch.arange(n), torch.ones(n)
    rest = torch.randperm(n - 1, generator=gen)[: keep - 1] + 1
    w = torch.full((keep,), (n - 1) / (keep - 1))
    w[0] = 1.0
    return torch.cat([torch.zeros(1, dtype=torch.long), rest]), w


def distortion_tables(model, groups, blocks, candidates: dict[str, list[torch.Tensor]],
                      kgrid: np.ndarray, coding: str, seed: int = 0,
                      progress=None, rows_per_block: int = 64) -> dict[str, Tables]:
    """For each group and each candidate smoothing ``s`` of ``candidates[group]``, the
    distortion and spikes per element at every k of ``kgrid``, estimated on
    ``rows_per_block`` tokens of each block (:func:`_rows`)."""
    K = len(kgrid)
    acc: dict[str, list] = {}
    kk = torch.tensor(kgrid, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)

    def on_group(group, x, g):
        cands = candidates[group.name]
        e = acc.setdefault(group.name, [np.zeros((len(cands), K)), np.zeros((len(cands), K)), 0])
        idx, w = _rows(x.shape[0], rows_per_block, gen)
        idx, w = idx.to(x.device), w.to(x.device)
        x, g2 = x[idx].float(), g[idx].float() ** 2
        wd = w[:, None]
        for ci, s in enumerate(cands):
            xs = x / s if s is not None else x
            gs2 = (g2 * (s * s) if s is not None else g2) * wd
            mean = xs.abs().mean(-1, keepdim=True)
            for k0 in range(0, K, 8):  # a few k at a time bounds the [k, n, D] temporaries
                kb = kk[k0:k0 + 8].to(x.device)[:, None, None]
                vth = (mean[None] / kb).clamp(V_TH_MIN, V_TH_MAX)
                c = torch.round(xs[None] / vth)
                err = (xs[None] - c * vth) ** 2
                e[0][ci, k0:k0 + len(kb)] += (err * gs2[None]).sum((1, 2)).double().cpu().numpy()
                if coding in ("ternary", "binary"):
                    sp = (c.abs() * wd[None]).sum((1, 2))
                else:
                    # int32 popcounts take half the time of int64 ones (these counts
                    # are at most k * D unless V_th hits its upper clamp; checked)
                    wide = float(c.abs().max()) >= 2 ** 31
                    cnt = c.to(torch.int64 if wide else torch.int32)
                    sp = torch.stack([(spikes_per_row(cnt[i], coding) * w).sum()
                                      for i in range(len(kb))])
                e[1][ci, k0:k0 + len(kb)] += (sp.double() / xs.shape[-1]).cpu().numpy()
        e[2] += float(w.sum())

    fisher_pass(model, groups, blocks, on_group, seed, progress)
    return {n: Tables(kgrid=np.asarray(kgrid), distortion=e[0] / e[2], spikes=e[1] / e[2],
                      tokens=int(round(e[2]))) for n, e in acc.items()}


def default_kgrid(lo: float = 0.5, hi: float = 32.0, per_octave: int = 4) -> np.ndarray:
    n = int(round(math.log2(hi / lo) * per_octave)) + 1
    return np.geomspace(lo, hi, n)
