"""Document sets and the pieces of distributed runs, in one process (``sbsnn.runs``).

Launched runs (torchrun, two processes over gloo) are in ``test_torchrun.py``; here:

- ``load_documents`` reads JSONL, directories of .txt files and text files, and refuses
  what it cannot read naming the file and line;
- ``assign_documents`` puts every document on exactly one rank, balanced by tokens;
  ``contiguous_split`` covers every layer in order;
- ``simulate_documents`` in one process: each document's counters equal a separate
  ``simulate`` of that document (a fresh state), the totals their sum, and the recording
  keeps document boundaries (``call_documents``, ``documents``) with each document's
  counts equal to its own recording's; a run holds the same tensors and layer counters
  after 4 documents as after 24 (no state grows with a long set);
- a sharded recording written call by call (documents interleaved over two shards,
  with events, an empty shard) reads exactly as one file holding the same calls in
  document order; an incomplete index reads as incomplete;
- ``sweep_documents`` on one document gives ``sweep``'s row exactly; the one sweep counts
  through the simulator what hooks spiking each input a second time count, spikes each
  layer once per forward, and gives calibrated rows for a document set;
- a report of a document set counts the operations that never spike per document;
- ``stage_forward`` cut into stages equals ``model(ids)`` (sinks, embedding scale,
  soft-capping, tied head), and ``load_stage`` fills only its stage;
- ``process_group`` never initialises torch.distributed outside torchrun.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import sbsnn
from sbsnn.converters import convert
from sbsnn.runs import (DocumentSetError, assign_documents, contiguous_split, load_documents,
                        process_group, simulate_documents, sweep_documents)
from sbsnn.runs.group import Group
from sbsnn.runs.results import totals_of
from sbsnn.models import HybridForCausalLM
from sbsnn.models.tokenizer import ByteTokenizer
from sbsnn.sim import Recorder, Recording, RecordingError, load_recording, simulate
from sbsnn.sim.shards import shard_path, write_index
from sbsnn.sim.trace import TraceError

pytestmark = pytest.mark.usefixtures("one_thread")

_CACHE: dict = {}


@pytest.fixture
def snn(tiny_config):
    if "snn" not in _CACHE:
        torch.manual_seed(0)
        model = HybridForCausalLM(tiny_config()).eval()
        model.tokenizer = ByteTokenizer()
        s = convert(model, "paper", group_size=16)
        s.tokenizer = ByteTokenizer()
        _CACHE["snn"] = (model, s)
    return _CACHE["snn"][1]


@pytest.fixture(scope="module")
def text():
    from importlib.resources import files

    return files("sbsnn.data").joinpath("tiny-hybrid/heldout.txt").read_text()


# ----------------------------------------------------------------------------- documents
def test_jsonl_documents(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"id": "a", "text": "first", "meta": 1}) + "\n\n"
                 + json.dumps({"text": "second \u00e9"}) + "\n" + json.dumps({"id": 7, "text": "x"}) + "\n",
                 encoding="utf-8")
    docs = load_documents(p)
    assert [d.text for d in docs] == ["first", "second \u00e9", "x"]
    assert [d.name for d in docs] == ["a", f"{p}:3", "7"] and [d.index for d in docs] == [0, 1, 2]
    assert docs.chars == 5 + 8 + 1


@pytest.mark.parametrize("line, what", [
    ('{"txt": "a"}', "no 'text' field"),
    ('{"text": 3}', "not a string"),
    ('{"text": ""}', "is empty"),
    ('["a"]', "not an object"),
    ('{"text": "a"', "not a JSON object"),
    ('{"text": "a", "id": [1]}', "'id' must be"),
])
def test_bad_jsonl_lines_are_refused_with_file_and_line(tmp_path, line, what):
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(DocumentSetError, match=f"{p}:2: .*{what}"):
        load_documents(p)


def test_directory_and_single_file_documents(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "b.txt").write_text("bee")
    (d / "a.txt").write_text("ay")
    (d / ".hidden").write_text("skipped")
    docs = load_documents(d)
    assert [(x.name, x.text) for x in docs] == [("a.txt", "ay"), ("b.txt", "bee")]
    (d / "notes.md").write_text("?")
    with pytest.raises(DocumentSetError, match="only .txt files.*notes.md"):
        load_documents(d)
    f = tmp_path / "one.txt"
    f.write_text("hello")
    assert [(x.name, x.text) for x in load_documents(f)] == [("one.txt", "hello")]
    j = tmp_path / "set.json"
    j.write_text('[{"text": "a"}]')
    with pytest.raises(DocumentSetError, match="JSONL"):
        load_documents(j)
    b = tmp_path / "bin.txt"
    b.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DocumentSetError, match="not UTF-8"):
        load_documents(b)
    with pytest.raises(FileNotFoundError):
        load_documents(tmp_path / "nope.jsonl")
    with pytest.raises(DocumentSetError, match="document 1 is empty"):
        load_documents(["a", ""])


def test_assignment_is_balanced_and_complete():
    g = torch.Generator().manual_seed(1)
    for world in (1, 2, 3, 7):
        for _ in range(20):
            n = int(torch.randint(0, 40, (1,), generator=g))
            tokens = torch.randint(1, 1000, (n,), generator=g).tolist()
            ranks = assign_documents(tokens, world)
            assert len(ranks) == n and all(0 <= r < world for r in ranks)
            load = [sum(t for t, r in zip(tokens, ranks) if r == k) for k in range(world)]
            assert sum(load) == sum(tokens)
            if tokens:   # greedy longest-first: no rank above the mean by more than one document
                assert max(load) <= sum(tokens) / world + max(tokens)
            assert ranks == assign_documents(tokens, world)          # the same on every rank
    assert assign_documents([500, 10, 10, 10, 10], 2) == [0, 1, 1, 1, 1]


def test_contiguous_split_covers_every_layer_in_order():
    for weights in ([1] * 4, [5, 1, 1, 1, 1, 5], [3, 1, 4, 1, 5, 9, 2, 6]):
        for parts in range(1, len(weights) + 1):
            rs = contiguous_split(weights, parts)
            assert len(rs) == parts and all(len(r) > 0 for r in rs)
            assert [i for r in rs for i in r] == list(range(len(weights)))
    assert contiguous_split([1] * 4, 2) == [range(0, 2), range(2, 4)]
    with pytest.raises(ValueError, match="at most 2 ranks"):
        contiguous_split([1, 1], 3)


# ----------------------------------------------------------------------------- simulate
def _merge_layers(merged: dict | None, layers: dict) -> dict:
    """Counters of separate runs, merged layer by layer (the first run's taken as they are)."""
    if merged is None:
        return layers
    for n, c in layers.items():
        merged[n].merge(c)
    return merged


def test_document_set_equals_each_document_alone(tmp_path, snn, text):
    texts = [text[:70], text[100:113], text[200:251]]
    path = tmp_path / "docs.h5"
    r = simulate_documents(snn, texts, backend="torch", record=path, block_size=16,
                           return_logits=True)
    assert r.world_size == 1 and r.tokens == sum(map(len, texts))
    assert [d.index for d in r.documents] == [0, 1, 2]
    merged = None
    for i, t in enumerate(texts):
        alone = simulate(snn, t, backend="torch", block_size=16, record=tmp_path / f"{i}.h5")
        assert r.documents[i].totals == alone.totals()
        assert r.documents[i].tokens == len(t)
        assert torch.equal(r.document_logits[i], alone.logits)
        merged = _merge_layers(merged, alone.layers)
    assert {n: c.to_dict() for n, c in r.layers.items()} == {n: c.to_dict() for n, c in merged.items()}
    with load_recording(path) as rec:
        assert rec.complete and rec.metadata["documents"]["count"] == 3
        assert [(d["index"], d["tokens"]) for d in rec.documents] == [(0, 70), (1, 13), (2, 51)]
        for name in rec.layers:
            cd = np.asarray(rec.call_documents(name)[:])
            offs = np.append(rec.call_offsets(name)[:], rec.rows(name))
            for i in range(3):
                k = np.flatnonzero(cd == i)
                rows = slice(int(offs[k[0]]), int(offs[k[-1] + 1]))
                with load_recording(tmp_path / f"{i}.h5") as alone:
                    np.testing.assert_array_equal(rec.counts(name)[rows], alone.counts(name)[:])
                    np.testing.assert_array_equal(rec.thresholds(name)[rows], alone.thresholds(name)[:])


def _retained_during_run(snn, texts) -> dict:
    """What a document-set run holds while its last block runs: live tensors and
    LayerCounters tracked by the garbage collector, and the tokens seen by ``on_tokens``."""
    import gc

    from sbsnn.sim.engine import LayerCounters

    seen = {"tokens": 0}

    def on_tokens(n):
        seen["tokens"] += n
        if seen["tokens"] == total:
            objs = gc.get_objects()
            seen["tensors"] = sum(type(o) is torch.Tensor for o in objs)
            seen["layer_counters"] = sum(type(o) is LayerCounters for o in objs)

    total = sum(map(len, texts))
    r = simulate_documents(snn, texts, backend="torch", block_size=8, on_tokens=on_tokens)
    assert r.tokens == seen["tokens"] == total and len(r.documents) == len(texts)
    return seen


def test_a_long_document_set_holds_no_state_per_document(snn, text):
    """The state a run holds does not grow with its documents: after 4 or 24 documents
    the same tensors and layer counters are alive (the token ids of the documents not yet
    run, or per-document counters per layer, would grow with them)."""
    texts = [text[i * 17:i * 17 + 6] for i in range(24)]
    few, many = _retained_during_run(snn, texts[:4]), _retained_during_run(snn, texts)
    assert many["tensors"] == few["tensors"]
    assert many["layer_counters"] == few["layer_counters"]


def test_document_set_totals_are_the_sum_of_documents_run_alone(snn, text):
    texts = [text[i * 31:i * 31 + 5 + 3 * i] for i in range(7)]
    r = simulate_documents(snn, texts, backend="torch", block_size=4)
    merged = None
    for i, t in enumerate(texts):
        alone = simulate(snn, t, backend="torch", block_size=4, return_logits=False)
        assert r.documents[i].totals == alone.totals() and r.documents[i].tokens == len(t)
        merged = _merge_layers(merged, alone.layers)
    assert {n: c.to_dict() for n, c in r.layers.items()} == {n: c.to_dict() for n, c in merged.items()}
    assert r.totals() == totals_of(merged)


def test_a_traced_document_set_keeps_every_call(tmp_path, snn, text):
    path = tmp_path / "t.h5"
    r = simulate_documents(snn, [text[:30], text[40:75]], backend="torch", record=path,
                           block_size=16, trace="model.layers.0.attn.q_proj")
    tr = r.traces["model.layers.0.attn.q_proj"]
    assert len(tr.calls) == 2 + 3 and [c.row0 for c in tr.calls] == [0, 16, 30, 46, 62]
    with load_recording(path) as rec:
        back = rec.trace("model.layers.0.attn.q_proj")
        assert [c.row0 for c in back.calls] == [c.row0 for c in tr.calls]
        assert all(torch.equal(a.events_pos, b.events_pos) for a, b in zip(tr.calls, back.calls))


def test_cli_document_sets_and_commands_that_do_not_split(tmp_path, snn, text, capsys, monkeypatch):
    from sbsnn.cli import main
    from sbsnn.converters import save_spiking

    save_spiking(snn, tmp_path / "ck")
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.txt").write_text(text[50 * i:50 * i + 20 + i])
    assert main(["simulate", str(tmp_path / "ck"), "--text", str(d), "--quiet",
                 "--record", str(tmp_path / "r.h5")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("simulated 63 tokens of 3 documents through 32 spiking layers")
    with load_recording(tmp_path / "r.h5") as rec:
        assert [x["name"] for x in rec.documents] == ["0.txt", "1.txt", "2.txt"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["report", str(tmp_path / "r.h5"), "--out", str(tmp_path / "rep")]) == 2
    assert "error (rank 1 of 2): runs in one process" in capsys.readouterr().err


def test_trace_needs_one_process(snn):
    with pytest.raises(TraceError, match="needs one process"):
        simulate_documents(snn, ["abc"], backend="torch", trace="model.layers.0.*",
                           group=Group(rank=0, world_size=2))


def test_begin_document_rules(tmp_path):
    rec = Recorder(tmp_path / "r.h5")
    rec.write("a", torch.zeros(2, 3, dtype=torch.int8), torch.ones(2, 1))
    with pytest.raises(RuntimeError, match="starts with its first document"):
        rec.begin_document(0, "x", 2)
    rec.close()
    rec = Recorder(tmp_path / "s.h5")
    rec.begin_document(3, "x", 2)
    with pytest.raises(ValueError, match="above the last one"):
        rec.begin_document(3, "y", 2)
    rec.close()


# ----------------------------------------------------------------------------- shards
def _calls(seed: int):
    """Random calls: (document, layer, counts, v_th); documents 0..4, three layers, one of
    which some documents never reach (an MoE expert)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for doc in range(5):
        for blk in range(1 + doc % 2):
            for layer, d in (("l0", 6), ("l1", 4), ("l2", 5)):
                if layer == "l2" and doc in (1, 2):
                    continue
                n = int(torch.randint(1, 9, (1,), generator=g))
                c = torch.randint(-40 if layer != "l1" else -300, 41, (n, d), generator=g)
                out.append((doc, layer, c, torch.rand(n, 1, generator=g) + 0.5))
    return out


def _write(path, calls, docs, events=True, meta=None):
    rec = Recorder(path, metadata=meta or {"coding": "ternary"}, record_events=events)
    cur = None
    for doc, layer, c, v in calls:
        if doc in docs:
            if doc != cur:
                rec.begin_document(doc, f"doc{doc}", 10 + doc, 20 + doc)
                cur = doc
            rec.write(layer, c, v)
    return rec


def test_sharded_recording_reads_as_one_file(tmp_path):
    calls = _calls(0)
    one = _write(tmp_path / "one.h5", calls, range(5))
    one.close()
    index = tmp_path / "idx.h5"
    plan = {0: 0, 1: 1, 2: 0, 3: 1, 4: 1}          # interleaved; rank 2 gets nothing
    docs = [{"index": i, "name": f"doc{i}", "tokens": 10 + i, "chars": 20 + i, "rank": r}
            for i, r in plan.items()]
    write_index(index, world_size=3, metadata={"coding": "ternary"}, documents=docs, complete=False)
    shard_path(index, 0, 3).parent.mkdir()
    for r in range(3):
        _write(shard_path(index, r, 3), calls, [i for i, k in plan.items() if k == r]).close()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        inc = load_recording(index)
    assert not inc.complete and any("incomplete" in str(x.message) for x in w)
    inc.close()
    write_index(index, world_size=3, metadata={"coding": "ternary"}, documents=docs, complete=True)
    with load_recording(index) as sh, Recording(tmp_path / "one.h5") as ref:
        assert sh.complete and sh.layers == ref.layers == ["l0", "l1", "l2"]
        assert [d["index"] for d in sh.documents] == list(range(5))
        assert [d["rank"] for d in sh.documents] == [plan[i] for i in range(5)]
        for name in ref.layers:
            assert sh.rows(name) == ref.rows(name) and sh.in_features(name) == ref.in_features(name)
            np.testing.assert_array_equal(sh.counts(name)[:], ref.counts(name)[:])
            np.testing.assert_array_equal(np.asarray(sh.counts(name)), ref.counts(name)[:])
            np.testing.assert_array_equal(sh.counts(name)[3:11, 1:3], ref.counts(name)[3:11, 1:3])
            np.testing.assert_array_equal(sh.counts(name)[-2], ref.counts(name)[-2])
            np.testing.assert_array_equal(sh.thresholds(name)[:], ref.thresholds(name)[:])
            for f in ("call_offsets", "call_steps", "call_documents", "call_events"):
                np.testing.assert_array_equal(getattr(sh, f)(name)[:], getattr(ref, f)(name)[:])
            ev_s, ev_r = sh.events(name), ref.events(name)
            for k in ev_r:
                np.testing.assert_array_equal(ev_s[k][:], ev_r[k][:])
            assert torch.equal(torch.cat(list(sh.iter_counts(name, 7))),
                               torch.cat(list(ref.iter_counts(name, 7))))
        from sbsnn.analysis import counters_from_recording, sparsity_from_recording

        with pytest.raises(ValueError, match="out_features"):       # no shapes in this metadata
            counters_from_recording(sh)
        assert sparsity_from_recording(sh).to_dict() == sparsity_from_recording(ref).to_dict()
    with pytest.raises(RecordingError, match="index of a sharded recording"):
        Recording(index)
    shard_path(index, 1, 3).unlink()
    with pytest.raises(RecordingError, match="missing"):
        load_recording(index)


# ----------------------------------------------------------------------------- sweep, report
def test_sweep_of_one_document_is_the_sweep_of_its_text(snn, text):
    from sbsnn.runs.sweep import sweep

    model = _CACHE["snn"][0]
    a = sweep(model, text[:90], ks=[2.5], group_size=16, block_size=32)[0]
    b = sweep_documents(model, [text[:90]], ks=[2.5], group_size=16, block_size=32)[0]
    assert {k: v for k, v in a.items() if k != "seconds"} == {
        k: v for k, v in b.items() if k not in ("seconds", "documents", "per_document")}
    two = sweep_documents(model, [text[:40], text[40:90]], ks=[2.5], group_size=16, block_size=32)[0]
    assert two["documents"] == 2 and [d["tokens"] for d in two["per_document"]] == [39, 49]
    nll = sum(d["float_nll"] * d["tokens"] for d in two["per_document"]) / 88
    assert two["float_nll"] == pytest.approx(nll, rel=1e-12)


def _hook_counted_rows_parts(model, text, k, coding, window=3):
    """The reference the one sweep is held to: counters and sparsity tallies taken by
    forward hooks that spike each layer's input a second time (how the two sweeps
    counted before), with the recordings' closed forms (``analysis.counters.add_call``)."""
    from sbsnn.analysis.counters import add_call
    from sbsnn.analysis.fidelity import fidelity
    from sbsnn.analysis.sparsity import SparsityCollector
    from sbsnn.converters import SpikingLinear
    from sbsnn.sim.engine import LayerCounters

    s = convert(model, preset="paper", coding=coding, k=k, group_size=16)
    col, counters, hooks = SparsityCollector(coding, model.config, window), {}, []

    def tap(name):
        def hook(mod, inputs, _out):
            counts, v_th = mod.spike(inputs[0].detach())
            col.write(name, counts, v_th)
            c = counters.setdefault(name, LayerCounters(name, mod.in_features, mod.out_features))
            add_call(c, counts, coding)
        return hook

    for name, mod in s.named_modules():
        if isinstance(mod, SpikingLinear):
            hooks.append(mod.register_forward_hook(tap(name)))
    try:
        f = fidelity(model, s, text, block_size=32)
    finally:
        for h in hooks:
            h.remove()
    return f, counters, col.report().pooled


@pytest.mark.parametrize("coding", ["ternary", "bitwise"])
def test_the_sweep_counts_through_the_simulator_what_hooks_count(snn, text, coding):
    from sbsnn.runs.sweep import sweep

    model = _CACHE["snn"][0]
    row = sweep(model, text[:120], ks=[2.5], coding=coding, group_size=16, block_size=32)[0]
    f, counters, pooled = _hook_counted_rows_parts(model, text[:120], 2.5, coding)
    assert row["tokens"] == max(c.tokens for c in counters.values()) == 120
    assert (row["float_nll"], row["spiking_nll"], row["mean_kl"], row["top1_agreement"]) == (
        f.float_nll, f.spiking_nll, f.mean_kl, f.top1_agreement)
    assert row["sparsity"] == {k: pooled[k] for k in row["sparsity"]}
    ops = sum(c.synaptic_ops for c in counters.values())
    assert row["energy"]["snn_pj"] == pytest.approx(ops * 0.03, rel=1e-12)   # horowitz45 add


def test_the_sweep_spikes_each_layer_once_per_forward(snn, text, monkeypatch):
    from sbsnn.converters import SpikingLinear
    from sbsnn.runs.sweep import sweep

    model = _CACHE["snn"][0]
    spikes: dict[int, int] = {}
    forwards: dict[int, int] = {}
    real_spike, real_call = SpikingLinear.spike, SpikingLinear.__call__

    def spike(self, x):
        spikes[id(self)] = spikes.get(id(self), 0) + 1
        return real_spike(self, x)

    def call(self, *a, **kw):
        forwards[id(self)] = forwards.get(id(self), 0) + 1
        return real_call(self, *a, **kw)

    monkeypatch.setattr(SpikingLinear, "spike", spike)
    monkeypatch.setattr(SpikingLinear, "__call__", call)
    sweep_documents(model, [text[:70], text[70:150]], ks=[3.0], group_size=16, block_size=32)
    assert forwards and spikes == forwards            # every layer: one spike per forward
    assert min(forwards.values()) == 2 * 3            # 2 documents x 3 blocks of 32 tokens


def test_calibrated_rows_for_a_document_set(snn, text):
    model = _CACHE["snn"][0]
    rows = sweep_documents(model, [text[:200], text[200:380]], ks=[3.0], group_size=16,
                           block_size=64, spike_budgets=[2.5], calibration_texts=text[1000:2600],
                           calibration_tokens=1536)
    plain, cal = rows
    assert plain["method"] == "plain" and cal["method"] == "calibrated"
    assert cal["spike_budget"] == 2.5 and cal["calibration"]["spikes_per_element"] <= 2.5
    assert cal["documents"] == plain["documents"] == 2
    assert [d["tokens"] for d in cal["per_document"]] == [199, 179]
    assert cal["tokens"] == plain["tokens"] == 380 and cal["reference"] is None


def test_report_counts_non_spiking_operations_per_document(tmp_path, snn, text):
    from sbsnn.analysis.opcount import nonspiking_ops
    from sbsnn.analysis.report import build_report

    texts = [text[:40], text[40:100]]
    simulate_documents(snn, texts, backend="torch", record=tmp_path / "d.h5", block_size=16)
    rep = build_report(tmp_path / "d.h5", tmp_path / "rep")
    assert [(d["index"], d["tokens"], d["rows"]) for d in rep["documents"]] == [(0, 40, 40), (1, 60, 60)]
    macs = sum(nonspiking_ops(snn.config, n)["total_macs"] for n in (40, 60))
    assert rep["energy"]["nonspiking"]["macs"] == macs
    assert macs != nonspiking_ops(snn.config, 100)["total_macs"]    # window attention: not additive


# ----------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("overrides", [
    {}, {"num_sink_tokens": 2, "embedding_scale": 5.6, "final_logit_softcapping": 3.0},
    {"tie_word_embeddings": True, "full_attn_layers": [3]},
])
def test_stages_chained_equal_the_model(tiny_config, overrides):
    from sbsnn.runs.pipeline import stage_forward

    torch.manual_seed(0)
    model = HybridForCausalLM(tiny_config(**overrides)).eval()
    ids = torch.randint(0, 256, (1, 21))
    with torch.no_grad():
        whole = model(ids)
        cut = [range(0, 1), range(1, 3), range(3, 4)]
        states = [model.new_state() for _ in cut], model.new_state()
        for s in range(0, 21, 8):
            x = None
            for k, r in enumerate(cut):
                x = stage_forward(model, r, x, ids[:, s:s + 8], states[0][k], k == 0, k == 2)
            assert torch.equal(x, model(ids[:, s:s + 8], states[1]))
        x = None
        state = model.new_state()
        for k, r in enumerate(cut):
            state.seen = 0
            x = stage_forward(model, r, x, ids, state, k == 0, k == 2)
    assert torch.equal(x, whole)


def test_a_stage_loads_only_its_blocks(tmp_path, snn):
    from sbsnn.converters import save_spiking
    from sbsnn.runs.pipeline import load_stage, stage_layers

    save_spiking(snn, tmp_path / "ck")
    stages = stage_layers(snn.config, 2, snn.spiking_config)
    assert stages == [range(0, 2), range(2, 4)]
    full = sbsnn.load_spiking(tmp_path / "ck")
    model, stage = load_stage(tmp_path / "ck", stages[1], first=False, last=True)
    ref = full.state_dict()
    for k, v in model.state_dict().items():
        held = k.startswith(("model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."))
        assert v.is_meta != held, k
        if held:
            assert torch.equal(v, ref[k]), k
    assert set(stage.state_dict()) == {k for k in ref if k.startswith(
        ("model.layers.2.", "model.layers.3.", "model.norm.", "lm_head."))}


# ----------------------------------------------------------------------------- group
def test_no_process_group_outside_torchrun(monkeypatch):
    import torch.distributed as dist

    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with process_group() as g:
        assert (g.rank, g.world_size, g.distributed) == (0, 1, False)
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not launched by torchrun.*MASTER_ADDR"):
        with process_group(True):
            pass
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")          # incomplete torchrun environment
    with process_group() as g:
        assert g.world_size == 1
    assert not dist.is_initialized()
