"""Reading and writing checkpoints: a directory with config.json and safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sbsnn.models.hybrid import HybridForCausalLM


def save_pretrained(model: HybridForCausalLM, directory: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
