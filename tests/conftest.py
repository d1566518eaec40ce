"""Shared fixtures: kept minimal and generic."""

from __future__ import annotations

import pytest

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
