"""Simulate a spiking model event by event, record its spikes and look at the trains.

Every spiking linear layer is computed from its input's spike events (token, channel,
time step, polarity): each event adds (or, for a -1 spike, subtracts) one INT8 weight
column into integer accumulators, as asynchronous neuromorphic hardware would; the
logits equal the integer path bit for bit. The run is recorded to HDF5 (counts and
thresholds per layer call); the script reads the recording back, prints per-layer
counters and expands a few tokens of one layer into spike trains
(``sbsnn.neurons.expand``).

Examples::

    python examples/simulate_spikes.py                        # embedded tiny-hybrid, 64 tokens
    python examples/simulate_spikes.py --coding bitwise --k 3 --max-tokens 256
    python examples/simulate_spikes.py spiking-tiny-hybrid --text play.txt --record run.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sbsnn
from sbsnn.data import heldout_text
from sbsnn.neurons import expand
from sbsnn.sim import simulate
from sbsnn.sim.recorder import load_recording


def load(model: str, coding: str, k: float):
    """A spiking checkpoint as it is, or a float model converted on the fly."""
    if (Path(model) / "spiking_config.json").exists():
        return sbsnn.load_spiking(model)
    return sbsnn.convert(sbsnn.load_model(model), preset="paper", coding=coding, k=k)


def show_trains(counts, coding: str, tokens: int = 3, channels: int = 6) -> str:
    """Spike trains of a few elements as text: '+' a +1 spike, '-' a -1 spike, '.' none."""
    c = counts[:tokens, :channels]
    trains = expand(c, coding)                     # [T, tokens, channels], one T for all
    sym = {1: "+", -1: "-", 0: "."}
    lines = []
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            train = "".join(sym[int(v)] for v in trains[:, i, j])
            lines.append(f"  token {i} channel {j:>3}: count {int(c[i, j]):>4}  {train}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Examples::"):])
    ap.add_argument("model", nargs="?", default="tiny-hybrid",
                    help="spiking checkpoint (sbsnn convert) or float model to convert "
                         "(default: %(default)s)")
    ap.add_argument("--text", help="text file (default: the shipped held-out sample)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens to simulate (default: %(default)s)")
    ap.add_argument("--coding", default="ternary",
                    choices=["binary", "ternary", "bitwise", "twos_complement"],
                    help="coding when converting a float model (default: %(default)s)")
    ap.add_argument("--k", type=float, default=3.0, help="V_th = mean|x| / k when converting")
    ap.add_argument("--record", default="spikes.h5", help="HDF5 recording to write (default: %(default)s)")
    ap.add_argument("--layer", help="layer whose trains to show (default: the first)")
    args = ap.parse_args(argv)

    snn = load(args.model, args.coding, args.k)
    text = Path(args.text).read_text(encoding="utf-8") if args.text else heldout_text()
    r = simulate(snn, text, record=args.record, max_tokens=args.max_tokens, block_size=256)
    t = r.totals()
    print(f"simulated {r.tokens} tokens ({r.backend} backend, {r.coding} coding) in {r.seconds:.1f} s")
    print(f"  {t['events']:,} spike events ({t['events_pos']:,} +1, {t['events_neg']:,} -1), "
          f"{t['synaptic_ops']:,} synaptic ops vs {t['dense_macs']:,} dense MACs")
    print(f"  zero counts {100 * t['zero_fraction']:.1f} %, {t['spikes_per_element']:.2f} spikes "
          f"per input element")
    print(f"  {'layer':<32}{'events':>12}{'spikes/el':>11}{'T max':>7}")
    for name, c in list(r.layers.items())[:6]:
        print(f"  {name:<32}{c.events:>12,}{c.events / max(1, c.elements):>11.2f}{c.time_steps_max:>7}")

    with load_recording(args.record) as rec:
        layer = args.layer or rec.layers[0]
        counts = next(rec.iter_counts(layer, block=8))
        print(f"recording {args.record}: {len(rec.layers)} layers, complete={rec.complete}; "
              f"trains of {layer} ({r.coding} coding, '+'/'-' a +1/-1 spike per step):")
        print(show_trains(counts, r.coding))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
