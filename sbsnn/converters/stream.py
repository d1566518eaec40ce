"""Convert a checkpoint on disk, one layer at a time.

The source is memory-mapped; each transformer block is quantised and written as its own
shard before the next is touched, so peak memory stays near one layer plus what is
being written, not the whole model. Output goes to a temporary directory renamed at
the end (see :class:`~sbsnn.converters.format.atomic_directory`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sbsnn.converters.convert import SpikingConfig, _set, check_request, plan
from sbsnn.converters.format import atomic_directory, write_spiking_config
from sbsnn.converters.quant import QuantStats
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.models.checkpoint import fill_state, open_checkpoint
from sbsnn.models.hybrid import HybridForCausalLM


def convert_checkpoint(src: str | Path, out: str | Path, preset: str | None = "paper",
                       coding: str = "ternary", k: float = 3.0, group_size: int = 128,
                       targets: list[str] | None = None, exclude: list[str] | None = None,
                       force: bool = False, allow_pickle: bool = False,
                       progress: bool = True) -> SpikingConfig:
    """Write the spiking form of checkpoint ``src`` (a directory, a GGUF file or an
    embedded name) to ``out``."""
    check_request(preset, targets, coding, k, group_size)  # fail before reading anything
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    ck = open_checkpoint(src, allow_pickle=allow_pickle, progress=progress)
    with torch.device("meta"):
        model = HybridForCausalLM(ck.config)
    fill_state(model, ck.raw, ck.origin, ck.source, ck.config.model_type)  # views of the mapped files
    ck.raw = {}
    scfg = plan(model, preset, coding, k, group_size, targets, exclude)
    names = scfg.targets
    n_blocks = len(model.model.layers)
    n_shards = n_blocks + 1
    shard = lambda i: f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"  # noqa: E731
    weight_map: dict[str, str] = {}
    total = 0
    stats = QuantStats()
    from tqdm.auto import tqdm

    with atomic_directory(out, force) as tmp:
        for i in tqdm(range(n_blocks), desc="convert", unit="layer", disable=not progress):
            prefix, block = f"model.layers.{i}", model.model.layers[i]
            for name in [n for n in names if n.startswith(prefix + ".")]:
                sl = SpikingLinear.from_linear(model.get_submodule(name), group_size, k, coding)
                _set(model, name, sl)
                stats = stats.merge(sl.quant_stats)
            tensors = {f"{prefix}.{k_}": v.contiguous() for k_, v in block.state_dict().items()}
            total += _write(tmp / shard(i), tensors, weight_map)
            del block, tensors  # the norms are views of the source shard's mapping
            model.model.layers[i] = nn.Module()  # release this layer before the next
        rest = {k_: v.contiguous() for k_, v in model.state_dict().items()
                if not k_.startswith("model.layers.")}
        for name in [n for n in names if not n.startswith("model.layers.")]:
            raise ValueError(f"target {name!r} lies outside the transformer blocks; "
                             "the streaming converter converts block layers only")
        total += _write(tmp / shard(n_blocks), rest, weight_map)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        ck.write_beside(tmp)
        scfg.quantization = stats.to_dict()
        write_spiking_config(tmp, scfg)
    return scfg


def _write(path: Path, tensors: dict[str, torch.Tensor], weight_map: dict[str, str]) -> int:
    save_file(tensors, str(path), metadata={"format": "pt"})
    for name in tensors:
        weight_map[name] = path.name
    return sum(t.numel() * t.element_size() for t in tensors.values())
