"""Pure-PyTorch hybrid language models (GLA + sliding-window attention), their
configs, checkpoint readers and tokenizers. Knows nothing of spikes."""

from sbsnn.models.checkpoint import (EMBEDDED, load_checkpoint, load_model, read_safetensors,
                                     read_state_dict, save_pretrained)
from sbsnn.models.config import HybridConfig
from sbsnn.models.errors import CheckpointError
from sbsnn.models.hybrid import DecodeState, HybridForCausalLM
from sbsnn.models.scoring import TextScore, score_text
from sbsnn.models.tokenizer import ByteTokenizer, HFTokenizer

__all__ = [
    "EMBEDDED", "ByteTokenizer", "CheckpointError", "DecodeState", "HFTokenizer",
    "HybridConfig", "HybridForCausalLM", "load_checkpoint", "load_model", "read_safetensors",
    "read_state_dict", "save_pretrained", "score_text", "TextScore",
]
