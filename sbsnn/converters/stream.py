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
from torch import nn

from sbsnn.checks import overlap
from sbsnn.converters.convert import SpikingConfig, _set, check_request, plan, spiking_from_linear
from sbsnn.converters.format import atomic_directory, check_output_dir, write_spiking_config
from sbsnn.converters.quant import QuantStats
from sbsnn.errors import NonFiniteError, OptionError
from sbsnn.models.checkpoint import fill_state, open_checkpoint, resolve, write_safetensors
from sbsnn.models.hybrid import HybridForCausalLM
from sbsnn.models.prefix import PREFIX_FILE, ConstantPrefix, compute_prefix


def convert_checkpoint(src: str | Path, out: str | Path, preset: str | None = "paper",
                       coding: str = "ternary", k: float = 3.0, group_size: int = 128,
                       targets: list[str] | None = None, exclude: list[str] | None = None,
                       force: bool = False, allow_pickle: bool = False,
                       progress: bool = True, prefix=None,
                       prefix_text: str | None = None) -> SpikingConfig:
    """Write the spiking form of checkpoint ``src`` (a directory, a GGUF file or an
    embedded name) to ``out``. ``prefix`` / ``prefix_text``: a constant prefix, its state
    computed once by the float model (:func:`sbsnn.convert`'s)."""
    out = Path(out)
    ck, model, scfg = open_source(src, out, preset, coding, k, group_size, targets, exclude,
                                  force, allow_pickle, progress)
    pre = float_prefix(model, ck, prefix, prefix_text)
    with atomic_directory(out, force) as tmp:
        write_prefix(tmp, scfg, pre)
        parts = convert_blocks(model, range(len(model.model.layers)), scfg, tmp, progress)
        finish_checkpoint(tmp, model, ck, scfg, parts)
    return scfg


def open_source(src, out: Path, preset, coding, k, group_size, targets, exclude, force,
                allow_pickle, progress):
    """``(opened checkpoint, model with views of its tensors, plan)``, after every check
    that needs no conversion (so a bad request fails before any work)."""
    check_request(preset, targets, coding, k, group_size)  # fail before reading anything

    how = overlap(resolve(src), out)
    if how is not None:
        rel = {"same": "is", "b in a": "lies inside", "a in b": "contains"}[how]
        raise OptionError(f"output {out} {rel} the source checkpoint {src}; write it somewhere "
                          "else (the source must stay untouched)")
    check_output_dir(out, force)
    ck = open_checkpoint(src, allow_pickle=allow_pickle, progress=progress)
    with torch.device("meta"):
        model = HybridForCausalLM(ck.config)
    fill_state(model, ck.raw, ck.origin, ck.source, ck.config.model_type)  # views of the mapped files
    ck.raw = {}
    model._source = ck.source
    scfg = plan(model, preset, coding, k, group_size, targets, exclude)
    for name in [n for n in scfg.targets if not n.startswith("model.layers.")]:
        raise OptionError(f"target {name!r} lies outside the transformer blocks; "
                         "the streaming converter converts block layers only")
    return ck, model, scfg


def float_prefix(model, ck, prefix, prefix_text) -> ConstantPrefix | None:
    """The constant prefix's state, computed by the source's float model (views of its
    mapped tensors, before any block is converted), or None without a prefix."""
    if prefix is None and prefix_text is None:
        return None
    model.tokenizer = ck.tokenizer
    return compute_prefix(model, prefix, prefix_text)


def write_prefix(tmp: Path, scfg: SpikingConfig, pre: ConstantPrefix | None) -> None:
    """Write the prefix's state (:data:`~sbsnn.models.prefix.PREFIX_FILE`) into ``tmp`` and
    record it in ``scfg``."""
    if pre is None:
        return
    write_safetensors({k: v.cpu().contiguous() for k, v in pre.tensors().items()},
                      tmp / PREFIX_FILE)
    scfg.prefix = pre.metadata()


def shard_name(i: int, n_shards: int) -> str:
    """File of shard ``i`` (block ``i``; the last holds everything outside the blocks)."""
    return f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"


def convert_blocks(model, blocks, scfg: SpikingConfig, tmp: Path, progress: bool = False
                   ) -> list[tuple[int, dict[str, str], int, QuantStats]]:
    """Convert and write the blocks ``blocks`` (one shard each), releasing each before
    the next; per block ``(index, weight_map part, bytes, weight statistics)``."""
    n_shards = len(model.model.layers) + 1
    parts = []
    from tqdm.auto import tqdm

    for i in tqdm(list(blocks), desc="convert", unit="layer", disable=not progress):
        prefix, block = f"model.layers.{i}", model.model.layers[i]
        stats = QuantStats()
        for name in [n for n in scfg.targets if n.startswith(prefix + ".")]:
            sl = spiking_from_linear(model.get_submodule(name), name, scfg.group_size, scfg.k,
                                     scfg.coding)
            _set(model, name, sl)
            stats = stats.merge(sl.quant_stats)
        tensors = {f"{prefix}.{k_}": v.contiguous() for k_, v in block.state_dict().items()}
        weight_map: dict[str, str] = {}
        _check_finite(tensors, getattr(model, "_source", None))
        size = _write(tmp / shard_name(i, n_shards), tensors, weight_map)
        parts.append((i, weight_map, size, stats))
        del block, tensors  # the norms are views of the source shard's mapping
        model.model.layers[i] = nn.Module()  # release this layer before the next
    return parts


def finish_checkpoint(tmp: Path, model, ck, scfg: SpikingConfig,
                      parts: list[tuple[int, dict[str, str], int, QuantStats]]) -> None:
    """Write the shard outside the blocks, the index (blocks in order), config.json, the
    tokenizer and spiking_config.json (with the statistics of every block) into ``tmp``."""
    n_blocks = len(model.model.layers)
    parts = sorted(parts, key=lambda p: p[0])
    if [p[0] for p in parts] != list(range(n_blocks)):
        raise RuntimeError(f"internal: converted blocks {[p[0] for p in parts]} of {n_blocks}")
    weight_map: dict[str, str] = {}
    total = 0
    stats = QuantStats()
    for _, wm, size, st in parts:
        weight_map.update(wm)
        total += size
        stats = stats.merge(st)
    rest = {k_: v.contiguous() for k_, v in model.state_dict().items()
            if not k_.startswith("model.layers.")}
    _check_finite(rest, ck.source)
    total += _write(tmp / shard_name(n_blocks, n_blocks + 1), rest, weight_map)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    ck.write_beside(tmp)
    scfg.quantization = stats.to_dict()
    write_spiking_config(tmp, scfg)


def _check_finite(tensors: dict[str, torch.Tensor], source) -> None:
    """The float tensors a spiking checkpoint keeps as they are must be finite."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"tensor {name!r} of the source checkpoint {source or ''} holds "
                                 "NaN or Inf (in the weights); the checkpoint is damaged: fix or "
                                 "re-export it", layer=name.rsplit(".", 1)[0], origin="weights")


def _write(path: Path, tensors: dict[str, torch.Tensor], weight_map: dict[str, str]) -> int:
    write_safetensors(tensors, path)
    for name in tensors:
        weight_map[name] = path.name
    return sum(t.numel() * t.element_size() for t in tensors.values())
