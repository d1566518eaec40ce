"""Convert a float checkpoint to a spiking checkpoint, then check how faithful it stays.

The conversion swaps every targeted ``nn.Linear`` for a ``SpikingLinear``: INT8 weights
(per output channel and group of 128 inputs) and an adaptive-threshold neuron on its
input (``V_th = mean|x| / k``, integer spike counts). It works layer by layer from the
memory-mapped source and writes the output directory atomically (``config.json``,
``model.safetensors``, ``spiking_config.json``; see ``docs/spiking-checkpoint.md``).
Then both models read a text and the script prints perplexity, top-1 agreement and KL.

Examples::

    python examples/convert_checkpoint.py                         # the embedded tiny-hybrid
    python examples/convert_checkpoint.py tiny-hybrid --out spiking-tiny --k 4 --coding bitwise
    python examples/convert_checkpoint.py path/to/SpikingBrain-7B --out sb7b-spiking \\
        --preset w8aspike --text calib.txt --max-chars 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import sbsnn
from sbsnn.analysis import fidelity
from sbsnn.converters import convert_checkpoint
from sbsnn.data import heldout_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Examples::"):])
    ap.add_argument("src", nargs="?", default="tiny-hybrid",
                    help="float checkpoint directory or embedded name (default: %(default)s)")
    ap.add_argument("--out", default="spiking-tiny-hybrid",
                    help="spiking checkpoint directory to write (default: %(default)s)")
    ap.add_argument("--preset", default="paper", choices=["paper", "w8aspike"])
    ap.add_argument("--coding", default="ternary",
                    choices=["binary", "ternary", "bitwise", "twos_complement"])
    ap.add_argument("--k", type=float, default=3.0, help="V_th = mean|x| / k (default: 3)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--text", help="text file for the fidelity check (default: the shipped "
                                   "held-out sample)")
    ap.add_argument("--max-chars", type=int, default=1000,
                    help="characters of the text to score (default: %(default)s)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    scfg = convert_checkpoint(args.src, args.out, preset=args.preset, coding=args.coding,
                              k=args.k, group_size=args.group_size, force=True)
    print(f"converted {args.src} -> {args.out} in {time.perf_counter() - t0:.1f} s: "
          f"{len(scfg.targets)} spiking linear layers, {scfg.coding} coding, k = {scfg.k:g}, "
          f"INT8 weights in groups of {scfg.group_size}")
    for name in scfg.targets[:4]:
        print(f"  {name}")
    if len(scfg.targets) > 4:
        print(f"  ... and {len(scfg.targets) - 4} more")

    text = Path(args.text).read_text(encoding="utf-8") if args.text else heldout_text()
    text = text[:args.max_chars]
    f = fidelity(sbsnn.load_model(args.src), sbsnn.load_spiking(args.out), text)
    print(f"fidelity on {len(text):,} characters ({f.tokens:,} predictions):")
    print(f"  perplexity     float {f.float_perplexity:.3f}, spiking {f.spiking_perplexity:.3f} "
          f"(x{f.spiking_perplexity / f.float_perplexity:.3f})")
    print(f"  top-1 agreement {100 * f.top1_agreement:.1f} %, mean KL {f.mean_kl:.4f} nats")
    print(f"load it with sbsnn.load_spiking({str(args.out)!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
