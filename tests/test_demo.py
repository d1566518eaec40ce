"""``sbsnn demo`` end to end on the embedded model, with a short text."""

from __future__ import annotations

import json

import pytest

from sbsnn.runs.demo import _resolve_sim_tokens
from sbsnn.models.checkpoint import EMBEDDED

HAVE_MODEL = (EMBEDDED["tiny-hybrid"] / "config.json").exists()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sim_tokens_resolution():
    assert _resolve_sim_tokens("auto", 6000) == 6000
    assert _resolve_sim_tokens("auto", 100) == 100
    assert _resolve_sim_tokens(0, 6000) == 6000
    assert _resolve_sim_tokens(40, 6000) == 40
    with pytest.raises(ValueError):
        _resolve_sim_tokens(-1, 10)


@pytest.mark.skipif(not HAVE_MODEL, reason="the embedded tiny-hybrid model is not built yet")
def test_demo_end_to_end(tmp_path, capsys):
    from sbsnn.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-chars", "600", "--sim-tokens", "32",
                 "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for s in ("sbsnn demo: tiny-hybrid", "perplexity", "float", "spiking", "zero counts",
              "vs INT8", "vs FP16", "(a) SpikingBrain Eq. 24", "the first 32 tokens",
              f"report: {out / 'report.html'}"):
        assert s in printed, s
    for f in ("spikes.h5", "report.json", "report.html", "summary.json", "energy.png",
              "sparsity_per_layer.png", "count_histograms.png", "spike_raster.png"):
        assert (out / f).is_file(), f
    rep = json.loads((out / "report.json").read_text())
    summ = json.loads((out / "summary.json").read_text())
    assert rep["metadata"]["tokens"] == 32 and rep["metadata"]["recording_complete"]
    assert rep["metadata"]["k"] == 3.0 and rep["metadata"]["preset"] == "paper"
    assert rep["metadata"]["coding"] == "ternary" and rep["metadata"]["text_chars"] == 600
    f = rep["fidelity"]
    assert f["tokens"] == 599 and f["chars"] == 600
    # a trained model converted at k = 3 stays close to its float self
    assert 1 < f["float_perplexity"] < 20 and f["perplexity_ratio"] < 1.2
    assert f["top1_agreement"] > 0.8
    assert summ["simulated_tokens"] == 32 and summ["fidelity_tokens"] == 600
    assert summ["spiking_perplexity"] == pytest.approx(f["spiking_perplexity"])
    assert summ["reduction_vs_fp16"] == pytest.approx(
        rep["energy"]["estimates"]["a_spikingbrain"]["comparison"]["fp16_dense"]["reduction"])


def test_run_demo_leaves_the_hosts_thread_count_alone(tmp_path):
    import torch

    from sbsnn.errors import OptionError
    from sbsnn.runs.demo import run_demo

    n = torch.get_num_threads()
    with pytest.raises(OptionError, match=r"torch.set_num_threads\(3\)"):
        run_demo(tmp_path / "d", threads=3)
    assert torch.get_num_threads() == n and not (tmp_path / "d").exists()
