"""The frontier (sbsnn.runs.frontier, ``sbsnn sweep --frontier``).

- the spikes needed are read off the measured points as the module says: linear in
  spikes per element against log(perplexity ratio) or KL between the two points that
  bracket the target, the first crossing from the fewest spikes; "at most" when met at
  the fewest spikes measured, "more than" when never met; nothing extrapolated;
- a run on the embedded model measures every method on held-out text (the prefix
  method after a constant prefix whose tokens are not counted), places fine-tuned
  checkpoints by their coding, skips what is not given with a note, and writes one
  figure and one JSON file; the command prints the table with SpikingBrain's point;
- bad options are refused by name before any conversion.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sbsnn
from sbsnn.cli import main
from sbsnn.data import heldout_text
from sbsnn.errors import OptionError
from sbsnn.runs.frontier import format_frontier, frontier, save_frontier, spikes_needed

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = heldout_text()
CAL = [TEXT[:1200]]
HELD_OUT = [TEXT[i:i + 200] for i in range(3000, 4000, 200)]
SMALL = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, attn_layers=[1], sliding_window=8,
             rope_theta=10000.0, gate_low_rank_dim=8)


def _pts(xy, metric="perplexity_ratio"):
    return [{"spikes_per_element": x, metric: y, "label": f"p{i}"} for i, (x, y) in enumerate(xy)]


def test_spikes_needed_interpolates_in_log_ratio_between_the_bracketing_points():
    pts = _pts([(3.0, 1.01), (1.0, 1.10), (2.0, 1.03)])        # order does not matter
    n = spikes_needed(pts, "perplexity_ratio", 1.02)
    t = (math.log(1.02) - math.log(1.03)) / (math.log(1.01) - math.log(1.03))
    assert n["how"] == "interpolated" and n["between"] == ["p2", "p0"]
    assert n["spikes_per_element"] == pytest.approx(2.0 + t)
    assert spikes_needed(pts, "perplexity_ratio", 1.2) == {
        "spikes_per_element": 1.0, "how": "at most", "between": ["p1"]}
    assert spikes_needed(pts, "perplexity_ratio", 1.005) == {
        "spikes_per_element": 3.0, "how": "more than", "between": ["p0"]}
    assert spikes_needed(pts, "perplexity_ratio", 1.03)["how"] == "measured"
    kl = _pts([(1.0, 0.1), (2.0, 0.0)], "mean_kl")
    assert spikes_needed(kl, "mean_kl", 0.02)["spikes_per_element"] == pytest.approx(1.8)
    assert spikes_needed([], "mean_kl", 0.02)["how"] == "no points"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 10), st.floats(1.0, 1.5)), min_size=1, max_size=8,
                unique_by=lambda p: p[0]), st.floats(1.001, 1.4))
def test_spikes_needed_never_extrapolates(xy, target):
    n = spikes_needed(_pts(xy), "perplexity_ratio", target)
    xs = [x for x, _ in xy]
    assert min(xs) <= n["spikes_per_element"] <= max(xs)
    if n["how"] == "interpolated":      # the crossing lies between two measured points
        below = [x for x, y in xy if y <= target]
        assert n["spikes_per_element"] <= min(below)


@pytest.fixture(scope="module")
def tiny():
    """A small random model with a byte tokenizer: the frontier's plumbing, fast."""
    from test_converters import randomize

    from sbsnn.models import ByteTokenizer, HybridConfig, HybridForCausalLM

    m = randomize(HybridForCausalLM(HybridConfig(**SMALL)), seed=5).eval()
    m.tokenizer = ByteTokenizer()
    return m


@pytest.fixture(scope="module")
def result(tiny, tmp_path_factory):
    ft = sbsnn.convert(tiny, "paper", "bitwise", 5.0)          # stands in for a fine-tuned one
    path = tmp_path_factory.mktemp("ft") / "ft"
    sbsnn.save_spiking(ft, path)
    return frontier(tiny, HELD_OUT, calibration_texts=CAL, codings=["ternary", "bitwise"],
                    ks=[2, 6], prefix_text="ROMEO:", finetuned=[str(path)],
                    calibration_tokens=512, eval_tokens=2000, block_size=128)


def test_every_method_is_measured_on_the_held_out_text(result, tiny):
    by = {}
    for p in result["points"]:
        by.setdefault((p["coding"], p["method"]), []).append(p)
    for coding in ("ternary", "bitwise"):
        for method in ("plain", "calibrated", "calibrated+prefix"):
            assert len(by[(coding, method)]) == 2, (coding, method)
    assert [p["label"] for p in by[("bitwise", "fine-tuned")]] and ("ternary", "fine-tuned") not in by
    plain = by[("ternary", "plain")]
    assert plain[0]["spikes_per_element"] < plain[1]["spikes_per_element"]   # k = 2 < k = 6
    for p in result["points"]:
        assert p["documents"] == len(HELD_OUT) and p["perplexity_ratio_interval"] is not None
        assert p["recovery"]["perplexity"] == pytest.approx(1 / p["perplexity_ratio"])
        pre = p["method"] == "calibrated+prefix"
        assert p["prefix_tokens"] == (len(tiny.tokenizer.encode("ROMEO:")) if pre else 0)
    # the prefix method predicts the same tokens (no BOS to drop here: one more prediction)
    assert by[("ternary", "calibrated+prefix")][0]["tokens"] == \
        by[("ternary", "calibrated")][0]["tokens"] + len(HELD_OUT)
    rows = {(r["coding"], r["method"]): r for r in result["needed"]}
    assert rows[("ternary", "fine-tuned")]["skipped"] and not rows[("bitwise", "fine-tuned")]["skipped"]
    for r in result["needed"]:
        if not r["skipped"]:
            pts = by[(r["coding"], r["method"])]
            for t in result["targets"]:
                assert r["targets"][t["name"]] == spikes_needed(pts, t["metric"], t["target"])


def test_saved_with_one_figure_and_printed_with_spikingbrains_point(result, tmp_path):
    doc = save_frontier(result, tmp_path / "fr", {"checkpoint": "tiny-hybrid"})
    assert {"frontier.json", "frontier.png"} <= {p.name for p in (tmp_path / "fr").iterdir()}
    assert json.loads((tmp_path / "fr" / "frontier.json").read_text()) == doc
    text = format_frontier(result)
    assert "SpikingBrain-7B (published, bitwise k = 3): 1.13 spikes per element" in text
    assert "ppl x1.02" in text and "KL 0.02" in text and "nothing extrapolated" in text


def test_a_missing_method_is_skipped_with_a_note(tiny):
    r = frontier(tiny, HELD_OUT[:2], codings=["bitwise"], ks=[3], methods=["plain", "calibrated",
                 "fine-tuned", "calibrated+prefix"], eval_tokens=400)
    notes = " ".join(r["notes"])
    assert "calibrated: skipped: no calibration text" in notes
    assert "fine-tuned: skipped: no fine-tuned checkpoint" in notes
    assert {p["method"] for p in r["points"]} == {"plain"}


@pytest.mark.parametrize("kw, match", [
    (dict(codings=[]), "codings"),
    (dict(codings=["morse"]), "unknown coding"),
    (dict(ks=[]), "ks"),
    (dict(ks="3"), "ks must be a list"),
    (dict(ks=[0]), "k"),
    (dict(methods=["magic"]), "methods"),
    (dict(targets=[{"metric": "perplexity_ratio", "target": 0.9}]), "above 1"),
    (dict(targets=[{"metric": "bleu", "target": 1}]), "targets"),
    (dict(eval_tokens=1), "eval_tokens"),
    (dict(prefix="bos"), "no BOS token"),
    (dict(finetuned=[object()]), "not a spiking model"),
])
def test_bad_options_are_refused_by_name(tiny, kw, match):
    with pytest.raises((OptionError, sbsnn.errors.CheckpointError), match=match):
        frontier(tiny, HELD_OUT[:1], **{"calibration_texts": CAL, **kw})


def test_the_command(tmp_path, capsys):
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT[:2]))
    out = tmp_path / "out"
    assert main(["sweep", "tiny-hybrid", "--frontier", "--text", str(held), "--k", "2", "4",
                 "--codings", "bitwise", "--prefix-text", "ROMEO:", "--eval-tokens", "300",
                 "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "spikes per element needed" in printed and "SpikingBrain-7B" in printed
    assert "calibrated+prefix  " in printed and "skipped: no calibration text" in printed
    assert "fine-tuned" in printed and "no fine-tuned checkpoint" in printed
    assert (out / "frontier.png").is_file()
    doc = json.loads((out / "frontier.json").read_text())
    assert doc["codings"] == ["bitwise"] and doc["ks"] == [2.0, 4.0]
    for argv, match in ((["--frontier", "--spike-budget", "1"], "--spike-budget is an option"),
                        (["--frontier"], "--frontier needs --text"),
                        (["--codings", "bitwise"], "--codings needs --frontier"),
                        (["--prefix", "bos"], "--prefix needs --frontier")):
        assert main(["sweep", "tiny-hybrid", "--out", str(tmp_path / "x"), *argv]) == 2
        assert match in capsys.readouterr().err


def test_a_fine_tuning_method_given_as_a_callable_runs_at_each_k(tiny):
    built = []

    def finetuned(model, coding, k):           # what sbsnn.finetune would be wrapped in
        built.append((coding, k))
        return sbsnn.convert(model, "paper", coding, k + 1)

    r = frontier(tiny, HELD_OUT[:2], codings=["bitwise"], ks=[2, 3],
                 methods=["fine-tuned"], finetuned=finetuned, eval_tokens=400)
    assert built == [("bitwise", 2.0), ("bitwise", 3.0)]
    assert [p["label"] for p in r["points"]] == ["k=2", "k=3"]
    assert not r["needed"][0]["skipped"]
