"""Calibration's exact passes with documents side by side (sbsnn.converters.calibration
.documents): on a CPU with two torch threads, ``measure_spikes`` and ``compare`` run their
documents on sbsnn's workers and give the same bits as the serial pass at one thread; a
document that fails stops the others and its error reaches the caller.
"""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager

import pytest
import torch

import sbsnn
from sbsnn.runs.calibrate import compare
from sbsnn.converters import SpikingLinear, convert
from sbsnn.converters.calibration import measure_spikes, text_blocks
from sbsnn.converters.calibration.documents import document_workers
from sbsnn.data import heldout_text
from sbsnn.errors import NonFiniteError
from sbsnn.neurons import AdaptiveThresholdNeuron, workers

TEXT = heldout_text()
# documents of different lengths (longest-first balancing has something to do)
DOCS = [TEXT[a:b] for a, b in ((0, 700), (700, 900), (900, 1500), (1500, 1800),
                               (1800, 2300), (2300, 2450))]
# Not a multiple of 32: attention's last query chunk is then a small matrix product, which
# MKL splits differently when it runs multi-threaded (a worker must be single-threaded in
# MKL too, or these passes differ in the last bits).
BLOCK = 75


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return sbsnn.load_model("tiny-hybrid")


@pytest.fixture(scope="module")
def spiking(tiny):
    return convert(tiny, "paper", "ternary", 3.0)


@pytest.fixture(scope="module")
def blocks(tiny):
    b = text_blocks(tiny, DOCS, 4096, BLOCK)
    assert len(b) == len(DOCS) and len({sum(x.shape[1] for x in d) for d in b}) > 2
    return b


@pytest.fixture
def bodies(monkeypatch, spiking):
    """The threads that ran each block of the spiking model's body."""
    seen = []
    cls = type(spiking)
    real = cls.body

    def body(self, ids, state=None):
        seen.append(threading.current_thread().name)
        return real(self, ids, state)

    monkeypatch.setattr(cls, "body", body)
    return seen


def _needs_workers():
    with threads(2):
        if workers.workers_for(2) < 2:
            pytest.skip("the OpenMP runtime torch uses was not found: sbsnn's workers run inline")


def _measure(spiking, blocks, n, reference=None):
    ticks = []

    def progress(k):
        ticks.append((threading.current_thread() is threading.main_thread(), k))

    with threads(n):
        m = measure_spikes(spiking, blocks, "ternary", reference=reference, progress=progress)
    return m, ticks


# ====================================================================== measure_spikes
def test_documents_side_by_side_give_the_serial_bits(tiny, spiking, blocks, bodies):
    _needs_workers()
    serial, ticks1 = _measure(spiking, blocks, 1, reference=tiny)
    assert set(bodies) == {threading.main_thread().name}
    bodies.clear()
    parallel, ticks2 = _measure(spiking, blocks, 2, reference=tiny)
    # the documents really ran on two workers, not on the calling thread
    assert len(set(bodies)) == 2 and all(n.startswith("sbsnn-worker") for n in bodies)
    assert parallel == serial  # spikes, elements, every layer's k, spikes and local error
    assert serial.layers and all(r.local_error > 0 for r in serial.layers.values())
    n_tokens = sum(b.shape[1] for d in blocks for b in d)
    for ticks in (ticks1, ticks2):  # progress: on the calling thread, every block once
        assert all(main for main, _ in ticks) and sum(k for _, k in ticks) == n_tokens
        assert len(ticks) == sum(len(d) for d in blocks)


def test_the_parallel_pass_counts_what_each_document_counts_alone(spiking, blocks):
    """Per-document accumulation: the whole equals the documents measured one at a time."""
    _needs_workers()
    whole, _ = _measure(spiking, blocks, 2)
    alone = [_measure(spiking, [d], 2)[0] for d in blocks]
    assert whole.spikes == sum(m.spikes for m in alone)
    assert whole.elements == sum(m.elements for m in alone)
    assert whole.tokens == sum(m.tokens for m in alone)


def test_a_failing_document_stops_the_others_and_its_error_propagates(spiking, blocks, bodies):
    _needs_workers()
    sizes = [sum(b.shape[1] for b in d) for d in blocks]
    bad_doc = sizes.index(max(sizes))  # the longest: a worker starts it first
    used = {int(t) for d in blocks for b in d for t in b.flatten()}
    poison = min(set(range(spiking.config.vocab_size)) - used)
    broken = copy.deepcopy(spiking)
    broken.model.embeddings.weight.data[poison] = float("nan")
    bad = [list(d) for d in blocks]
    first = bad[bad_doc][0].clone()
    first[0, 3] = poison
    bad[bad_doc][0] = first

    errors = {}
    for n in (1, 2):
        bodies.clear()
        with threads(n), pytest.raises(NonFiniteError) as info:
            measure_spikes(broken, bad, "ternary")
        errors[n] = info.value
    first_layer = next(name for name, m in broken.named_modules() if isinstance(m, SpikingLinear))
    assert errors[1].layer == errors[2].layer == first_layer
    assert str(errors[1]) == str(errors[2]) and first_layer in str(errors[2])
    # the other documents stopped at their next block instead of running to the end
    assert len(bodies) < sum(len(d) for d in blocks)
    # no worker is left busy: the pool takes new work at once, and the same pass is exact
    with threads(2):
        futures = [workers.submit(torch.get_num_threads) for _ in range(2)]
        assert [f.result(timeout=30) for f in futures] == [1, 1]
    assert _measure(spiking, blocks, 2)[0] == _measure(spiking, blocks, 1)[0]


def test_models_with_forward_hooks_run_their_documents_on_the_calling_thread(spiking, blocks,
                                                                            bodies):
    _needs_workers()
    seen = []
    handle = spiking.model.norm.register_forward_hook(
        lambda mod, inp, out: seen.append(threading.current_thread().name))
    try:
        with threads(2):
            assert document_workers(blocks, [spiking]) == 1
        hooked, _ = _measure(spiking, blocks, 2)
    finally:
        handle.remove()
    assert set(seen) == set(bodies) == {threading.main_thread().name}
    assert hooked == _measure(spiking, blocks, 1)[0]
    with threads(2):
        assert document_workers(blocks, [spiking]) == 2
        assert document_workers(blocks[:1], [spiking]) == 1


def test_the_pass_leaves_neuron_memories_and_torch_threads_alone(spiking, blocks, thread_probe):
    _needs_workers()
    with torch.no_grad():
        spiking(blocks[0][0])  # a plain forward leaves each neuron's last thresholds
    neurons = [m for m in spiking.modules() if isinstance(m, AdaptiveThresholdNeuron)]
    before = [m.v_th for m in neurons]
    assert all(v is not None for v in before)
    with threads(2):
        with thread_probe() as probe:
            measure_spikes(spiking, blocks, "ternary")
        assert probe.seen == {2} and torch.get_num_threads() == 2
    assert all(m.v_th is v for m, v in zip(neurons, before))


# ============================================================================= compare
def test_compare_side_by_side_gives_the_serial_bits(tiny, spiking, bodies):
    _needs_workers()
    out = {}
    for n in (1, 2):
        with threads(n):
            out[n] = compare(tiny, {"plain": spiking}, DOCS, "ternary", max_tokens=4096,
                             block_size=BLOCK)
    assert len(set(bodies)) >= 3  # the calling thread, then two workers
    assert out[2] == out[1]
    assert out[1]["plain"]["tokens"] == sum(
        sum(b.shape[1] for b in d) - 1 for d in text_blocks(tiny, DOCS, 4096, BLOCK))


def test_compare_announces_the_predictions_it_then_reports(tiny, spiking):
    """``progress`` is told the total once, then gets every block's predictions: the
    updates add up to that total, which is each model's predictions times the models."""
    seen = []

    def start(total):
        seen.append(("total", total))
        return lambda n: seen.append(("block", n))

    with threads(2):
        out = compare(tiny, {"a": spiking, "b": spiking}, DOCS, "ternary", max_tokens=4096,
                      block_size=BLOCK, progress=start)
    assert seen[0] == ("total", 2 * out["a"]["tokens"])
    assert [kind for kind, _ in seen[1:]] == ["block"] * (len(seen) - 1)
    assert sum(n for _, n in seen[1:]) == seen[0][1]
