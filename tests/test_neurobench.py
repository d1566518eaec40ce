"""NeuroBench's metrics (issue 24): NeuroBench's own ``Benchmark`` and metric classes, run
through sbsnn's adapter on the embedded model, give the numbers sbsnn's report prints
under the same names (exactly, for counts), and those numbers follow NeuroBench's
definitions as the report documents them."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("neurobench")

import sbsnn  # noqa: E402
from sbsnn.analysis.neurobench_metrics import neurobench_call  # noqa: E402
from sbsnn.analysis.report import build_report, load_schema  # noqa: E402
from sbsnn.data import heldout_text  # noqa: E402
from sbsnn.neurons import expand  # noqa: E402
from sbsnn.runs import simulate_documents  # noqa: E402
from sbsnn.sim.connections import column_nonzero, connection_facts, footprint_bytes  # noqa: E402

pytestmark = pytest.mark.eval
DOCS = [heldout_text()[40:58], heldout_text()[300:311]]


@pytest.fixture(scope="module")
def spiking():
    return sbsnn.convert(sbsnn.load_model("tiny-hybrid"), preset="paper", coding="ternary", k=3.0)


@pytest.fixture(scope="module")
def report(spiking, tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    simulate_documents(spiking, DOCS, block_size=None, record=d / "rec.h5")
    return build_report(d / "rec.h5", d / "report")


def test_neurobench_through_the_adapter_gives_the_reports_numbers(spiking, report):
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, MembraneUpdates, SynapticOperations

    from sbsnn.analysis.neurobench import SbsnnNeuroBenchModel, token_batches

    ids = [torch.tensor(spiking.tokenizer.encode(d)) for d in DOCS]
    bench = Benchmark(SbsnnNeuroBenchModel(spiking), token_batches(ids), [], [],
                      [[Footprint, ConnectionSparsity],
                       [ActivationSparsity, SynapticOperations, MembraneUpdates]])
    got = bench.run(quiet=True)
    want = report["neurobench"]["results"]
    n = report["neurobench"]["totals"]["samples"]
    assert n == len(DOCS)
    assert got["Footprint"] == want["Footprint"] == footprint_bytes(spiking)
    assert got["ConnectionSparsity"] == want["ConnectionSparsity"]
    for key in ("Effective_ACs", "Effective_MACs", "Dense"):       # counts: exactly
        assert got["SynapticOperations"][key] * n == report["neurobench"]["totals"][key]
        assert got["SynapticOperations"][key] == want["SynapticOperations"][key]
    assert got["MembraneUpdates"] * n == report["neurobench"]["totals"]["MembraneUpdates"]
    assert got["ActivationSparsity"] == pytest.approx(want["ActivationSparsity"], abs=1e-12)
    assert report["neurobench"]["totals"]["Effective_ACs"] > 0


def test_the_report_section_is_in_the_schema_and_beside_sbsnns_figures(report):
    import jsonschema

    jsonschema.validate(report, load_schema())
    nb, en = report["neurobench"], report["energy"]
    beside = {b["neurobench"]: b for b in nb["beside"]}
    assert beside["spikes (all samples)"]["value"] == en["counts"]["events"]
    # zero INT8 codes are not operations for NeuroBench: fewer than sbsnn's synaptic ops
    assert nb["totals"]["Effective_ACs"] < en["counts"]["synaptic_ops"]
    assert nb["totals"]["Dense"] >= en["counts"]["dense_macs"]
    assert all("column_nonzero" not in d for d in report["metadata"]["layers"].values())


@pytest.mark.parametrize("coding", ["ternary", "binary", "bitwise", "twos_complement"])
def test_one_call_by_the_definitions(coding):
    """neurobench_call against the plain definitions on expanded trains: spikes are the
    nonzero entries of every step's frame, ACs each spike times the nonzero weights of its
    column, membrane updates every neuron at step 0 plus each spike after it."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(-5, 6, (7, 9), generator=g)
    if coding == "binary":
        counts = counts.abs()
    codes = torch.randint(-2, 3, (4, 9), generator=g)          # zeros are missing synapses
    nnz = (codes != 0).sum(0).tolist()
    c = neurobench_call(counts, coding, nnz, out_features=4)
    trains = expand(counts, coding)                              # [T, N, D]
    frames = trains if isinstance(trains, torch.Tensor) else trains.unpack()
    fired = frames != 0
    assert c.steps == frames.shape[0] and c.elements == counts.numel()
    assert c.spikes == int(fired.sum()) and c.spikes_step0 == int(fired[0].sum())
    assert c.effective_acs == int((fired.sum((0, 1)) * torch.tensor(nnz)).sum())
    assert c.dense == frames.shape[0] * counts.numel() * 4
    assert c.membrane_updates == counts.numel() + int(fired[1:].sum())


def test_static_figures_count_codes_and_float_weights(spiking):
    f = connection_facts(spiking)
    layers = [m for m in spiking.modules() if type(m).__name__ == "SpikingLinear"]
    codes = sum(m.weight_codes.numel() for m in layers)
    zeros = sum(int((m.weight_codes == 0).sum()) for m in layers)
    head = spiking.lm_head.weight
    assert f["weights"] == codes + head.numel()
    assert f["zero_weights"] == zeros + int((head == 0).sum())
    assert column_nonzero(layers[0]) == (layers[0].weight_codes != 0).sum(0).tolist()


def test_an_old_recording_has_no_neurobench_section(spiking, tmp_path):
    """A recording made before the weights' columns were kept: the report says why."""
    import h5py

    simulate_documents(spiking, DOCS[:1], block_size=None, record=tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "r+") as f:
        meta = json.loads(f["metadata"][()])
        for d in meta["layers"].values():
            d.pop("column_nonzero")
        del f["metadata"]
        f["metadata"] = json.dumps(meta)
    rep = build_report(tmp_path / "old.h5", tmp_path / "r")
    assert "neurobench" not in rep
    assert any("NeuroBench" in n for n in rep["notes"])
