"""Task evaluation through lm-evaluation-harness (issue 24): the adapter scores exactly what
sbsnn scores, lm-eval's own entry point and ``sbsnn eval`` agree, bad input is refused by
name, and the shipped offline tasks are what their builder makes of the held-out sample."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("lm_eval")

import sbsnn  # noqa: E402
import sbsnn.cli as cli  # noqa: E402
from sbsnn import errors as E  # noqa: E402
from sbsnn.analysis.cloze import (EVAL_TASKS, TASK_FILES, cloze_items,  # noqa: E402
                                  heldout_task_rows, prose_passages)
from sbsnn.analysis.evaluation import (TaskUnavailableError, offline_hub, recovery,  # noqa: E402
                                       resolve_tasks)
from sbsnn.analysis.fidelity import fidelity_sums_of_ids  # noqa: E402
from sbsnn.analysis.harness import SbsnnLM  # noqa: E402
from sbsnn.data import heldout_text  # noqa: E402
from sbsnn.sim.engine import run_sequence  # noqa: E402

pytestmark = pytest.mark.eval
TEXT = heldout_text()


class Req:
    """What lm-eval hands a model: an Instance's ``args`` (and its task's name)."""

    def __init__(self, *args, task_name="test"):
        self.args, self.task_name = args, task_name


@pytest.fixture(scope="module")
def models():
    m = sbsnn.load_model("tiny-hybrid")
    return {"float": m, "spiking": sbsnn.convert(m, preset="paper", coding="ternary", k=3.0)}


@pytest.fixture(scope="module")
def spiking_dir(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval") / "spk"
    sbsnn.save_spiking(models["spiking"], d)
    return d


@torch.no_grad()
def sbsnn_logits(model, ids: list[int], block_size: int) -> torch.Tensor:
    """sbsnn's own logits of ``ids`` fed in blocks: the simulator's for a spiking model."""
    x = torch.tensor([ids])
    if any(type(m).__name__ == "SpikingLinear" for m in model.modules()):
        return sbsnn.simulate(model, x, block_size=block_size).logits
    return run_sequence(model, x, block_size, return_logits=True)


@settings(max_examples=12, deadline=None)
@given(side=st.sampled_from(["float", "spiking"]), start=st.integers(0, 400),
       n_ctx=st.integers(1, 30), n_cont=st.integers(1, 12), block=st.sampled_from([4, 7, 16]))
def test_loglikelihood_is_sbsnns_own_logprob(models, side, start, n_ctx, n_cont, block):
    """The adapter's loglikelihood of a continuation (and whether it is greedy) equals the
    sum of sbsnn's log-probabilities of the same tokens, whatever block boundaries the
    context and the continuation straddle."""
    model = models[side]
    text = TEXT[start:start + n_ctx + n_cont]
    ctx, cont = text[:n_ctx], text[n_ctx:]
    lm = SbsnnLM(model, block_size=block)
    (ll, greedy), = lm.loglikelihood([Req(ctx, cont)], disable_tqdm=True)
    c, t = lm._encode_pair(ctx, cont)        # lm-eval's split (a trailing space moves on)
    c = c or [lm.prefix_token_id]            # a context of spaces only: the prefix token
    ids = c + t
    lp = sbsnn_logits(model, ids[:-1], block).log_softmax(-1)
    pos = torch.arange(len(c) - 1, len(ids) - 1)
    tgt = torch.tensor(t)
    # to float rounding: the adapter runs the head only on the scored rows, and a GEMM of
    # fewer rows may round its last bit differently (the logits before the head are equal)
    assert ll == pytest.approx(float(lp[pos, tgt].double().sum()), rel=1e-5, abs=1e-5)
    assert greedy == bool((lp[pos].argmax(-1) == tgt).all())


def test_a_continuation_across_a_block_boundary(models):
    """The case the issue names, spelled out: context 14 tokens, continuation 6, blocks of
    16 (the continuation's tokens 2..5 are predicted in the second block)."""
    for side in ("float", "spiking"):
        model = models[side]
        ctx, cont = TEXT[100:114], TEXT[114:120]
        (ll, _), = SbsnnLM(model, block_size=16).loglikelihood([Req(ctx, cont)], disable_tqdm=True)
        ids = model.tokenizer.encode(ctx + cont)
        lp = sbsnn_logits(model, ids[:-1], 16).log_softmax(-1)
        ref = sum(float(lp[i - 1, ids[i]]) for i in range(14, 20))
        assert ll == pytest.approx(ref, rel=1e-6)
        # the whole text in one block gives the same number up to float rounding
        (one, _), = SbsnnLM(model, block_size=64).loglikelihood([Req(ctx, cont)], disable_tqdm=True)
        assert one == pytest.approx(ll, rel=1e-4)


def test_rolling_loglikelihood_is_sbsnns_perplexity(models):
    """loglikelihood_rolling of a text is minus the nats sbsnn's fidelity counts on the same
    tokens after the prefix token (the byte model's: a newline), float and spiking; and its
    exp(-ll / tokens) is the perplexity sbsnn reports."""
    text = TEXT[:700]
    lms = {s: SbsnnLM(m, block_size=64) for s, m in models.items()}
    prefix = lms["float"].prefix_token_id
    assert prefix == models["float"].tokenizer.encode("\n")[0]
    ids = torch.tensor([[prefix] + models["float"].tokenizer.encode(text)])
    sums = fidelity_sums_of_ids(models["float"], models["spiking"], ids, block_size=64)
    f = sums.fidelity()
    for side, nats, ppl in (("float", sums.float_nats, f.float_perplexity),
                            ("spiking", sums.spiking_nats, f.spiking_perplexity)):
        ll, = lms[side].loglikelihood_rolling([Req(text)], disable_tqdm=True)
        assert -ll == pytest.approx(nats, rel=1e-6)
        assert float(torch.tensor(-ll / sums.tokens).exp()) == pytest.approx(ppl, rel=1e-6)


def test_rolling_windows_cover_every_token_once(models):
    """With a context shorter than the text, the windows still score each token once:
    the sum equals the tokens scored window by window from sbsnn's own log-probabilities."""
    model = models["float"]
    text = TEXT[:150]
    lm = SbsnnLM(model, block_size=16, max_length=40)
    ll, = lm.loglikelihood_rolling([Req(text)], disable_tqdm=True)
    toks = [lm.prefix_token_id] + model.tokenizer.encode(text)
    ref = 0.0
    for end in range(1, len(toks), 40):          # window: predict toks[end:end+40]
        seg = toks[max(0, end + 40 - 41):end + 40] if end + 40 <= len(toks) else toks[-41:]
        n = min(40, len(toks) - end)
        lp = sbsnn_logits(model, seg[:-1], 16).log_softmax(-1)
        ref += float(lp[torch.arange(len(seg) - 1 - n, len(seg) - 1),
                        torch.tensor(seg[len(seg) - n:])].double().sum())
    assert ll == pytest.approx(ref, rel=1e-6)
    assert lm.tokens >= len(toks) - 1


def test_greedy_generation_is_sbsnns_greedy_generation(models):
    """generate_until decodes greedily as sbsnn's own generate(temperature=0) does and cuts
    at the first stop string; a request for sampling is refused naming its task."""
    for side in ("float", "spiking"):
        model = models[side]
        prompt = TEXT[:80]
        lm = SbsnnLM(model, block_size=32)
        out, = lm.generate_until([Req(prompt, {"until": ["\n\n"], "max_gen_toks": 40})],
                                 disable_tqdm=True)
        ref = model.generate(prompt, max_new_tokens=40, temperature=0)
        assert out == ref.split("\n\n")[0]
    with pytest.raises(E.OptionError, match="mytask.*sampling"):
        lm.generate_until([Req("x", {"do_sample": True, "temperature": 0.7}, task_name="mytask")])


def test_spiking_usage_counts_the_simulators_spikes(models):
    """The spiking side's spikes per element are those the simulator counts for the same
    tokens; its energy per token is positive and below the dense FP16 baseline's."""
    lm = SbsnnLM(models["spiking"], block_size=32)
    ctx, cont = TEXT[:50], TEXT[50:60]
    lm.loglikelihood([Req(ctx, cont)], disable_tqdm=True)
    u = lm.usage()
    ids = models["spiking"].tokenizer.encode(ctx + cont)[:-1]
    r = sbsnn.simulate(models["spiking"], torch.tensor([ids]), block_size=32)
    assert u["tokens"] == len(ids)
    assert u["spikes_per_element"] == r.totals()["spikes_per_element"]
    e = u["energy"]["by_estimate"]["a_spikingbrain"]
    assert 0 < e["snn_pj_per_token"] < e["fp16_dense_pj_per_token"]
    assert "spikes_per_element" not in SbsnnLM(models["float"]).usage()


def test_simple_evaluate_and_sbsnn_eval_give_the_same_accuracy(models, spiking_dir, tmp_path,
                                                               capsys):
    """A local multiple-choice task through lm-eval's own entry point (``--model sbsnn``,
    registered by importing sbsnn.runs.lm_eval_model) and through ``sbsnn eval``: the same
    accuracy on both sides; sbsnn eval adds the recovery and the spiking side's spikes."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import sbsnn.runs.lm_eval_model  # noqa: F401 - registers --model sbsnn (pyflakes: unused)

    tm = TaskManager(include_path=str(EVAL_TASKS), include_defaults=False)
    ref = {}
    for side, path in (("float", "tiny-hybrid"), ("spiking", str(spiking_dir))):
        with offline_hub():
            r = lm_eval.simple_evaluate(model="sbsnn", model_args=f"pretrained={path}",
                                        tasks=["sbsnn_cloze"], task_manager=tm, limit=8,
                                        bootstrap_iters=0, log_samples=False)
        ref[side] = {k.split(",")[0]: v for k, v in r["results"]["sbsnn_cloze"].items()
                     if k.startswith("acc")}
    assert ref["float"]["acc_norm"] > 0          # a comparison of zeros would prove little
    out = tmp_path / "ev"
    rc = cli.main(["eval", "tiny-hybrid", "--spiking", str(spiking_dir), "--tasks", "sbsnn_cloze",
                   "--limit", "8", "--out", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    t = doc["tasks"]["sbsnn_cloze"]
    assert t["items"] == 8
    for metric in ("acc", "acc_norm"):
        m = t["metrics"][metric]
        assert m["float"] == ref["float"][metric] and m["spiking"] == ref["spiking"][metric]
        assert m["recovery"] == recovery(m["float"], m["spiking"], True)
    sp = t["usage"]["spiking"]
    assert 0 < sp["spikes_per_element"] and sp["energy"]["pj_per_token"] > 0
    table = (out / "results.md").read_text()
    assert "| sbsnn_cloze | acc_norm |" in table and "recovery" in table
    assert table in capsys.readouterr().out


def test_recovery_is_below_one_when_the_spiking_side_loses():
    assert recovery(0.5, 0.4, True) == pytest.approx(0.8)
    assert recovery(10.0, 12.5, False) == pytest.approx(0.8)     # perplexity: lower is better
    assert recovery(0.0, 0.1, True) is None and recovery(0.5, None, True) is None
    assert recovery(0.5, 0.4, None) is None


def _run(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv, culprit, error", [
    (["--tasks", "sbsnn_cloze", "--limit", "0"], "--limit", E.OptionError),
    (["--tasks", "sbsnn_cloze", "--limit", "-3"], "--limit", E.OptionError),
    (["--tasks", "sbsnn_clozee"], "'sbsnn_clozee'", E.OptionError),
])
def test_refused_by_name(argv, culprit, error, capsys, monkeypatch):
    caught = []
    real = cli.report_error
    monkeypatch.setattr(cli, "report_error", lambda c, e, w="": (caught.append(e), real(c, e, w))[1])
    rc, err = _run(["eval", "tiny-hybrid", "--quiet", *argv], capsys)
    assert rc == 2 and culprit in err and len(err.strip().splitlines()) == 1
    assert isinstance(caught[0], error)


def test_an_output_inside_the_spiking_checkpoint_is_refused(spiking_dir, capsys):
    rc, err = _run(["eval", "tiny-hybrid", "--spiking", str(spiking_dir), "--tasks",
                    "sbsnn_cloze", "--out", str(spiking_dir / "eval"), "--quiet"], capsys)
    assert rc == 2 and "--out" in err and str(spiking_dir) in err
    assert not (spiking_dir / "eval").exists()


def test_a_model_directory_that_is_not_a_model_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    rc, err = _run(["eval", str(tmp_path), "--tasks", "sbsnn_cloze", "--quiet"], capsys)
    assert rc == 2 and f"{tmp_path}/config.json" in err


def test_a_task_that_needs_the_network_is_refused_offline(tmp_path):
    """A local YAML task whose dataset is on the Hugging Face Hub: offline, it is refused
    naming the task (and the offline flags are back as they were afterwards)."""
    import huggingface_hub.constants as hc

    (tmp_path / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: sbsnn-test/no-such-dataset\noutput_type: multiple_choice\n"
        "test_split: test\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n")
    before = (hc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
    with pytest.raises(TaskUnavailableError, match="task 'hub_task' needs a download"):
        resolve_tasks(["sbsnn_cloze", "hub_task"], include_path=tmp_path)
    assert (hc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"),
            os.environ.get("HF_DATASETS_OFFLINE")) == before


def test_offline_hub_sets_and_restores_the_flags():
    import datasets.config as dc
    import huggingface_hub.constants as hc

    before = (hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"))
    with offline_hub():
        assert hc.HF_HUB_OFFLINE is True and dc.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1" == os.environ["HF_DATASETS_OFFLINE"]
    assert (hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")) == before


def test_the_shipped_tasks_are_what_the_builder_makes_of_the_heldout_sample():
    rows = heldout_task_rows(TEXT)
    for name, fname in TASK_FILES.items():
        shipped = [json.loads(line) for line in (EVAL_TASKS / fname).read_text().splitlines()]
        assert shipped == rows[name]
    assert "".join(d["text"] for d in rows["sbsnn_heldout"]).replace("\n", "") == \
        "".join(b for b in TEXT.strip().split("\n\n")).replace("\n", "")


def test_cloze_items_hold_the_true_next_unit_and_other_passages():
    passages = [[f"p{i} u{j}" for j in range(5)] for i in range(6)]
    items = cloze_items(passages, choices=4, context_units=2, seed=3)
    assert len(items) == 6 * 4 and items == cloze_items(passages, choices=4, context_units=2, seed=3)
    for it in items:
        i, ctx = it["passage"], it["context"]
        j = int(ctx[-1].split("u")[1]) + 1
        assert it["choices"][it["label"]] == f"p{i} u{j}"
        assert ctx == [f"p{i} u{k}" for k in range(max(0, j - 2), j)]
        others = [c for k, c in enumerate(it["choices"]) if k != it["label"]]
        assert len(set(others)) == 3 and all(not c.startswith(f"p{i} ") for c in others)
    assert len(cloze_items(passages, limit=5)) == 5


def test_prose_passages_from_the_interpreters_docs_make_500_items():
    """The benchmark's cloze task: Python's own pydoc topics give at least 500 items."""
    import pydoc_data.topics

    items = cloze_items(prose_passages(pydoc_data.topics.topics.values()), seed=0)
    assert len(items) >= 500


def test_the_python_api_refuses_by_name(models):
    with pytest.raises(E.OptionError, match="limit"):
        sbsnn.analysis.evaluate(models["float"], "sbsnn_cloze", limit=0)
    with pytest.raises(E.OptionError, match="already spiking"):
        sbsnn.analysis.evaluate(models["spiking"], "sbsnn_cloze", spiking=models["spiking"])
    with pytest.raises(E.OptionError, match="float model"):
        sbsnn.analysis.evaluate(models["float"], "sbsnn_cloze", spiking=models["float"])
    with pytest.raises(E.OptionError, match="not a task name"):
        sbsnn.analysis.evaluate(models["float"], ["sbsnn_cloze", ""])


@pytest.mark.real
def test_gemma_bos_is_the_prefix_and_not_scored_twice(real_gguf):
    """Gemma's tokenizer puts BOS before every text: the adapter's prefix token is BOS,
    ``add_special_tokens=False`` drops it, and a text's rolling loglikelihood is minus the
    nats of sbsnn's own scoring of ``tokenizer.encode(text)`` (BOS first)."""
    from sbsnn.models.scoring import score_text

    model = sbsnn.load_model(real_gguf)
    lm = SbsnnLM(model, block_size=64)
    bos = model.config.bos_token_id
    assert lm.prefix_token_id == bos and model.tokenizer.encode("Hello")[0] == bos
    assert lm.tok_encode("Hello", add_special_tokens=False) == model.tokenizer.encode("Hello")[1:]
    text = "The quick brown fox jumps over the lazy dog. It was not amused."
    ll, = lm.loglikelihood_rolling([Req(text)], disable_tqdm=True)
    assert -ll == pytest.approx(score_text(model, text, block_size=64).nats, rel=1e-5)
