"""``sbsnn demo``: the main job on the embedded model, end to end.

So far: load the embedded tiny-hybrid model, score the shipped held-out text (two plays
the model never saw), continue a prompt from it, and write ``summary.json``. The
spiking conversion, simulation and reports join this path as they land.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from sbsnn.models.checkpoint import EMBEDDED, load_model
from sbsnn.models.scoring import score_text

DEFAULT_MODEL = "tiny-hybrid"


def heldout_text(max_chars: int | None = None) -> str:
    text = (EMBEDDED[DEFAULT_MODEL] / "heldout.txt").read_text(encoding="utf-8")
    return text[:max_chars] if max_chars else text


def run_demo(out: str | Path = "sbsnn-demo", max_chars: int | None = None,
             threads: int = 0, print_fn=print) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    text = heldout_text(max_chars)
    score = score_text(model, text)
    prompt = text[:200]
    continuation = model.generate(prompt, max_new_tokens=200, temperature=0.8, seed=0)
    seconds = time.perf_counter() - t0

    summary = {
        "model": DEFAULT_MODEL,
        "text_chars": score.chars,
        "float": {"nats_per_char": round(score.nats_per_char, 4),
                  "perplexity_per_token": round(score.perplexity, 3)},
        "prompt": prompt,
        "continuation": continuation,
        "seconds": round(seconds, 2),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")

    print_fn(f"sbsnn demo: {DEFAULT_MODEL} on {score.chars:,} held-out characters")
    print_fn(f"  float model     {score.nats_per_char:.3f} nats/char   "
             f"perplexity {score.perplexity:.2f} per byte")
    print_fn("  --- prompt ---\n" + prompt + "\n  --- continuation ---\n" + continuation)
    print_fn(f"  wrote {out / 'summary.json'} in {seconds:.1f} s")
    return 0
