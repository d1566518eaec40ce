"""Layer-split conversion: the blocks of a checkpoint converted by several ranks at once.

:func:`convert_checkpoint_split` is :func:`sbsnn.converters.convert_checkpoint` spread
over the ranks of a ``torchrun`` launch: each rank memory-maps the source, converts a
contiguous range of transformer blocks (balanced by their bytes) and writes their shards
into one temporary directory beside ``out`` (which must therefore be on a file system
every rank sees); rank 0 then writes the shard outside the blocks (embeddings, final
norm, head), the index, ``config.json``, the tokenizer and ``spiking_config.json`` (with
every rank's weight statistics) and renames the directory to ``out``. The files are the
ones a single process writes, byte for byte: the same shard per block, the index in
block order, the statistics merged exactly. A failure on any rank leaves no ``out``.
"""

from __future__ import annotations

from pathlib import Path

from sbsnn.converters.format import atomic_directory
from sbsnn.converters.quant import QuantStats
from sbsnn.converters.stream import (convert_blocks, convert_checkpoint, finish_checkpoint,
                                    float_prefix, open_source, write_prefix)
from sbsnn.runs.documents import contiguous_split
from sbsnn.runs.group import Group, process_group

__all__ = ["convert_checkpoint_split"]


def convert_checkpoint_split(src, out, preset: str | None = "paper", coding: str = "ternary",
                             k: float = 3.0, group_size: int = 128,
                             targets: list[str] | None = None, exclude: list[str] | None = None,
                             force: bool = False, allow_pickle: bool = False,
                             progress: bool = True, distributed: bool | str = "auto",
                             group: Group | None = None, prefix=None,
                             prefix_text: str | None = None):
    """Convert ``src`` to the spiking checkpoint ``out`` with the blocks split across the
    process group (module docstring); one process runs
    :func:`~sbsnn.converters.convert_checkpoint`. Returns the
    :class:`~sbsnn.converters.SpikingConfig` on every rank. ``prefix`` / ``prefix_text``:
    a constant prefix (its state computed once, in float, by rank 0)."""
    if group is None:
        with process_group(distributed) as g:
            return convert_checkpoint_split(src, out, preset, coding, k, group_size, targets,
                                            exclude, force, allow_pickle, progress, group=g,
                                            prefix=prefix, prefix_text=prefix_text)
    if not group.distributed:
        return convert_checkpoint(src, out, preset, coding, k, group_size, targets, exclude,
                                  force, allow_pickle, progress, prefix, prefix_text)
    out = Path(out)
    ck, model, scfg = open_source(src, out, preset, coding, k, group_size, targets, exclude,
                                  force, allow_pickle, progress and group.is_main)
    pre = float_prefix(model, ck, prefix, prefix_text)   # every rank: the same checks
    n = len(model.model.layers)
    sizes = [sum(t.numel() * t.element_size() for t in b.state_dict().values())
             for b in model.model.layers]
    mine = contiguous_split(sizes, group.world_size)[group.rank] if n >= group.world_size else (
        range(group.rank, group.rank + 1) if group.rank < n else range(0))
    if group.is_main:
        target = atomic_directory(out, force)
        tmp = target.__enter__()
        try:
            group.broadcast(str(tmp))
            write_prefix(tmp, scfg, pre)
            parts = convert_blocks(model, mine, scfg, tmp, progress)
            gathered = group.all_gather(parts)
            finish_checkpoint(tmp, model, ck, scfg, [p for part in gathered for p in part])
        except BaseException as e:
            target.__exit__(type(e), e, e.__traceback__)
            raise
        target.__exit__(None, None, None)
    else:
        tmp = Path(group.broadcast(None))
        parts = convert_blocks(model, mine, scfg, tmp, False)
        gathered = group.all_gather(parts)
        stats = QuantStats()
        for _, _, _, st in sorted((p for part in gathered for p in part), key=lambda p: p[0]):
            stats = stats.merge(st)
        scfg.quantization = stats.to_dict()
        scfg.prefix = None if pre is None else pre.metadata()
    group.barrier()      # rank 0 has renamed the directory: out is complete on every rank
    return scfg
