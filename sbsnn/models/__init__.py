"""Pure-PyTorch hybrid language models (GLA + sliding-window attention), their
configs, checkpoint readers and tokenizers. Knows nothing of spikes."""

from sbsnn.models.checkpoint import save_pretrained
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.hybrid import DecodeState, HybridForCausalLM

__all__ = ["CheckpointError", "DecodeState", "HybridConfig", "HybridForCausalLM", "save_pretrained"]
