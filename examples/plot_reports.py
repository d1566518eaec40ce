"""Plot sparsity and energy reports: report.json, report.html and PNGs from a recording.

Without ``--recording`` the script first simulates a short text on the embedded model
(converted with the paper preset, ternary coding, k = 3) with recording, then builds the
report from that recording, as ``sbsnn report`` does. It also shows the plotting API on
the report's plain data (an extra sparsity plot of another metric, an energy plot under
another cost profile) and, with ``--sweep``, a small k sweep (``sweep.png``).

Examples::

    python examples/plot_reports.py                               # -> report-tiny/report.html
    python examples/plot_reports.py --recording spikes.h5 --out report/ --profile loihi2018
    python examples/plot_reports.py --sweep --ks 2 3 4 --max-tokens 128
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sbsnn
from sbsnn.analysis import fidelity, plots
from sbsnn.analysis.report import build_report, energy_section, format_summary
from sbsnn.data import heldout_text


def record_short_run(out: Path, max_tokens: int):
    """Simulate the first ``max_tokens`` tokens of the held-out text with recording."""
    model = sbsnn.load_model("tiny-hybrid")
    snn = sbsnn.convert(model, preset="paper", coding="ternary", k=3.0)
    text = heldout_text(max_tokens)              # byte-level model: one token per character
    out.mkdir(parents=True, exist_ok=True)
    sbsnn.simulate(snn, text, record=out / "spikes.h5", block_size=256, return_logits=False)
    return out / "spikes.h5", fidelity(model, snn, text), model, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Examples::"):])
    ap.add_argument("--recording", help="HDF5 recording (default: simulate a short text first)")
    ap.add_argument("--out", default="report-tiny", help="output directory (default: %(default)s)")
    ap.add_argument("--profile", default="horowitz45",
                    help="energy profile of the spiking side (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=64,
                    help="tokens to simulate when no recording is given (default: %(default)s)")
    ap.add_argument("--sweep", action="store_true", help="also sweep k on the same text")
    ap.add_argument("--ks", type=float, nargs="+", default=[2.0, 3.0, 4.0])
    args = ap.parse_args(argv)

    out = Path(args.out)
    fid = model = text = None
    rec = Path(args.recording) if args.recording else None
    if rec is None:
        rec, fid, model, text = record_short_run(out, args.max_tokens)
    report = build_report(rec, out, profile=args.profile, fidelity=fid)
    print(format_summary(report, out / "report.html"))

    # The plotting functions take plain data: here, report.json's sections.
    extra = [plots.plot_sparsity_per_layer(report["sparsity"], out / "extra_window_sparsity.png",
                                           metric="slot_sparsity_window"),
             plots.plot_count_histograms(report["sparsity"], out / "extra_histograms.png")]
    if args.profile != "truenorth2014":
        # Energy under an all-in neuromorphic profile, from the same counters.
        from sbsnn.analysis import estimate_energy
        from sbsnn.analysis.counters import counters_from_recording
        from sbsnn.sim.recorder import load_recording

        with load_recording(rec) as r:
            counters = counters_from_recording(r)
            coding = r.metadata.get("coding", "ternary")
        en = estimate_energy(counters, coding, profile="truenorth2014")
        extra.append(plots.plot_energy(energy_section(en), out / "extra_energy_truenorth.png"))
    if args.sweep:
        from sbsnn.runs.sweep import format_sweep, save_sweep, sweep

        if model is None:
            model, text = sbsnn.load_model("tiny-hybrid"), heldout_text(args.max_tokens)
        rows = sweep(model, text, ks=args.ks)
        print(format_sweep(rows))
        save_sweep(rows, out, {"text": "held-out sample", "chars": len(text)})
        extra.append(out / "sweep.png")
    print("also wrote: " + ", ".join(str(p) for p in extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
