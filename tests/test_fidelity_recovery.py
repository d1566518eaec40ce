"""Recovery beside the ratios, and the spread of the perplexity ratio over documents.

- recovery (sbsnn.analysis.fidelity.recovery) is the spiking score as a fraction of the
  float score, 1 = full recovery: float / spiking for perplexity and nats, spiking / float
  for top-1 accuracy, the agreement itself; >= 0.95 passes;
- the top-1 accuracies count the predictions whose argmax is the text's next token, the
  same way for both models (a model compared with itself recovers 1 everywhere);
- the bootstrap interval over documents holds the ratio of all documents, is empty of
  spread for identical documents, None for one document, deterministic, and widens when
  the documents disagree more;
- the report carries recovery and the interval, valid against its schema.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sbsnn
from sbsnn.analysis.fidelity import (RECOVERY_PASS, FidelitySums, bootstrap_ratio, fidelity,
                                     fidelity_documents, fidelity_of_documents, recovery)
from sbsnn.data import heldout_text

pytestmark = pytest.mark.usefixtures("one_thread")


def _doc(tokens: int, gap_per_token: float, float_nats_per_token: float = 2.0) -> FidelitySums:
    f = tokens * float_nats_per_token
    return FidelitySums(tokens=tokens, float_nats=f, spiking_nats=f + tokens * gap_per_token,
                        agree=tokens, float_correct=tokens // 2, spiking_correct=tokens // 2)


def test_recovery_is_the_spiking_score_as_a_fraction_of_the_float_score():
    d = {"float_perplexity": 10.0, "spiking_perplexity": 10.5, "float_nll": math.log(10.0),
         "spiking_nll": math.log(10.5), "float_top1_accuracy": 0.4,
         "spiking_top1_accuracy": 0.36, "top1_agreement": 0.9}
    r = recovery(d)
    assert r["perplexity"] == pytest.approx(10.0 / 10.5)
    assert r["nats"] == pytest.approx(math.log(10.0) / math.log(10.5))
    assert r["top1_accuracy"] == pytest.approx(0.9)
    assert r["top1_agreement"] == 0.9
    assert r["passes"] == {"perplexity": True, "nats": True, "top1_accuracy": False,
                           "top1_agreement": False}
    assert RECOVERY_PASS == 0.95
    assert recovery({"top1_agreement": 1.0})["perplexity"] is None


def test_a_model_compared_with_itself_recovers_everything():
    tiny = sbsnn.load_model("tiny-hybrid")
    f = fidelity(tiny, tiny, heldout_text()[:600])
    d = f.to_dict()
    assert f.top1_agreement == 1.0 and f.mean_kl == pytest.approx(0.0, abs=1e-9)
    assert f.float_top1_accuracy == f.spiking_top1_accuracy > 0
    assert all(v == pytest.approx(1.0) for k, v in d["recovery"].items() if k != "passes")
    assert all(d["recovery"]["passes"].values())


def test_accuracy_counts_the_argmax_against_the_next_token():
    import torch

    tiny = sbsnn.load_model("tiny-hybrid")
    text = heldout_text()[:300]
    snn = sbsnn.convert(tiny, "paper", "ternary", 3.0)
    f = fidelity(tiny, snn, text, block_size=64)
    ids = torch.tensor([tiny.tokenizer.encode(text)])
    with torch.no_grad():
        lf, ls = tiny(ids)[0, :-1], snn(ids)[0, :-1]
    y = ids[0, 1:]
    assert f.float_top1_accuracy == pytest.approx(float((lf.argmax(-1) == y).float().mean()))
    assert f.spiking_top1_accuracy == pytest.approx(float((ls.argmax(-1) == y).float().mean()))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 500), st.floats(-0.05, 0.3)), min_size=2, max_size=12))
def test_bootstrap_interval_holds_the_ratio_of_all_documents(docs):
    sums = [_doc(n, g) for n, g in docs]
    f = fidelity_of_documents(sums)
    lo, hi = f.perplexity_ratio_interval
    gaps = [g for _, g in docs]
    assert math.exp(min(gaps)) - 1e-9 <= lo <= hi <= math.exp(max(gaps)) + 1e-9
    assert bootstrap_ratio(sums) == bootstrap_ratio(sums)          # deterministic
    assert f.documents == len(docs)


def test_bootstrap_spread_follows_the_documents():
    same = [_doc(100, 0.05) for _ in range(8)]
    lo, hi = bootstrap_ratio(same)
    assert lo == pytest.approx(math.exp(0.05)) and hi == pytest.approx(math.exp(0.05))
    near = bootstrap_ratio([_doc(100, 0.05 + 0.01 * (i % 2)) for i in range(8)])
    far = bootstrap_ratio([_doc(100, 0.05 + 0.2 * (i % 2)) for i in range(8)])
    assert far[1] - far[0] > near[1] - near[0] > 0
    assert bootstrap_ratio([_doc(100, 0.05)]) is None


def test_fidelity_documents_and_the_report_carry_recovery_and_the_interval(tmp_path):
    from test_report import make_recording, schema_errors

    from sbsnn.analysis.report import build_report

    tiny = sbsnn.load_model("tiny-hybrid")
    snn = sbsnn.convert(tiny, "paper", "ternary", 3.0)
    text = heldout_text()
    texts = [text[i:i + 300] for i in range(0, 1500, 300)]
    f = fidelity_documents(tiny, snn, texts, block_size=128)
    assert f.documents == 5 and f.perplexity_ratio_interval is not None
    lo, hi = f.perplexity_ratio_interval
    assert lo <= f.perplexity_ratio <= hi
    assert "interval over 5 documents" in f.format()
    report = build_report(make_recording(tmp_path / "r.h5"), tmp_path / "out",
                          fidelity=f.to_dict())
    assert not schema_errors(report)
    assert report["fidelity"]["recovery"]["perplexity"] == pytest.approx(1 / f.perplexity_ratio)
    assert report["fidelity"]["perplexity_ratio_interval"] == [lo, hi]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "recovery, perplexity" in html and "95 % interval" in html
