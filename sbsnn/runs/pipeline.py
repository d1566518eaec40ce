"""Pipeline stages: a spiking model whose layers are placed across torch.distributed ranks.

For a model too big for one process, :func:`simulate_pipeline` gives each rank a
contiguous range of transformer blocks (balanced by their tensor bytes,
:func:`stage_layers`); a rank loads only its own blocks' tensors from the checkpoint
(:func:`load_stage`: the rest of the model stays on the ``meta`` device and takes no
memory), plus the embeddings on the first rank and the final norm and head on the last.
Every document is fed block by block: the first rank embeds the tokens and runs its
blocks, sends the hidden states to the next rank, and so on; the last rank computes the
logits. While a rank works on block ``b`` of a document its successor works on block
``b - 1``, so the stages overlap. Each rank simulates its own spiking layers event by
event and writes its own shard of the recording; the counters are gathered at the end.

The result equals one process's: the hidden states cross ranks bit for bit, and each
stage runs the very modules of :class:`~sbsnn.models.hybrid.HybridForCausalLM`;
:func:`stage_forward` is the model's ``forward`` cut at the stage boundaries, from its own
``embed`` / ``blocks`` / ``final_norm`` / ``head`` (the tests hold it to ``model(ids)``,
and two ranks to one process).

With CUDA, each rank puts its stage on ``cuda:LOCAL_RANK`` and the hidden states travel
over NCCL.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from sbsnn.checks import check_block_size, check_max_tokens
from sbsnn.converters.convert import apply_structure
from sbsnn.converters.format import check_spiking_tensors, read_spiking_config, verify_digests
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.errors import OptionError
from sbsnn.models.checkpoint import default_dtype, fill_state, read_state_dict
from sbsnn.models.config import HybridConfig
from sbsnn.models.families import rename_key
from sbsnn.models.hybrid import HybridForCausalLM
from sbsnn.models.tokenizer import tokenizer_or_none
from sbsnn.runs.documents import contiguous_split, load_documents
from sbsnn.runs.group import Group, process_group
from sbsnn.runs.results import DocumentCounters, DocumentSetResult, tokenize_documents, totals_of
from sbsnn.sim.engine import LayerCounters, Simulator, resolve_backend
from sbsnn.sim.connections import merge_facts, model_facts
from sbsnn.sim.session import RunRecording, coding_of

__all__ = ["Stage", "load_stage", "simulate_pipeline", "stage_forward", "stage_layers"]


def _block_bytes(cfg, scfg=None) -> list[int]:
    """Bytes of each transformer block's tensors (from a skeleton on the meta device)."""
    with torch.device("meta"):
        model = HybridForCausalLM(cfg)
        if scfg is not None:
            apply_structure(model, scfg)
    return [sum(t.numel() * t.element_size() for t in b.state_dict().values())
            for b in model.model.layers]


def stage_layers(config, world_size: int, spiking_config=None) -> list[range]:
    """The blocks of each of ``world_size`` stages: contiguous, balanced by bytes."""
    return contiguous_split(_block_bytes(config, spiking_config), world_size)


class Stage(nn.Module):
    """The modules one rank holds, under their names in the full model (so that state
    dict keys and spiking layer names are the model's own)."""

    def __init__(self, model, layers: range, first: bool, last: bool):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleDict({str(i): model.model.layers[i] for i in layers})
        tied = model.lm_head is None
        if first or (last and tied):
            self.model.embeddings = model.model.embeddings
        if first and hasattr(model.model, "sink_embeddings"):
            self.model.sink_embeddings = model.model.sink_embeddings
        if last:
            self.model.norm = model.model.norm
            if not tied:
                self.lm_head = model.lm_head


def load_stage(directory, layers: range, first: bool, last: bool,
               device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """``(model, stage)``: the spiking checkpoint's model with only ``layers`` (and the
    embeddings if ``first``, the norm and head if ``last``) filled from ``directory``;
    every other tensor stays on the meta device. Floating dtype as
    :func:`sbsnn.load_spiking` chooses it (over the whole checkpoint, so every rank
    agrees)."""
    d = Path(directory)
    scfg = read_spiking_config(d)
    cfg = HybridConfig.from_json(d / "config.json")
    raw, origin = read_state_dict(d)            # memory-mapped: untouched tensors cost nothing
    with torch.device("meta"):
        model = HybridForCausalLM(cfg)
        apply_structure(model, scfg)
    stage = Stage(model, layers, first, last)
    wanted = set(stage.state_dict())
    part = {k: v for k, v in raw.items() if rename_key(k, cfg.model_type) in wanted}
    # this stage's files are verified as load_spiking verifies the whole checkpoint
    verify_digests(d, scfg, {origin[k] for k in part} | {"config.json"})
    fill_state(stage, part, origin, d, cfg.model_type, device=device,
               dtype=default_dtype(raw, device) if dtype is None else dtype)
    check_spiking_tensors(model, part, origin)
    model.eval()
    model.tokenizer = tokenizer_or_none(d, cfg.vocab_size)
    return model, stage


# ----------------------------------------------------------------------------- forward
def stage_forward(model, layers: range, x: torch.Tensor | None, ids: torch.Tensor, state,
                  first: bool, last: bool):
    """One stage's share of ``model(ids, state)``: embeds ``ids`` when ``first`` (else
    takes ``x``, the previous stage's output), runs blocks ``layers`` and, when ``last``,
    returns the logits; otherwise the hidden states for the next stage. ``state`` (the
    model's :class:`~sbsnn.models.hybrid.DecodeState`) advances on every stage alike."""
    sinks = model.sink_rows(state)
    if first:
        x = model.embed(ids, state)
    x = model.blocks(x, state, layers)
    return model.head(model.final_norm(x, sinks)) if last else x


# ----------------------------------------------------------------------------- pipeline
def _hidden_shape(model, ids_block: torch.Tensor, seen: int) -> tuple[int, int, int]:
    cfg = model.config
    sinks = cfg.num_sink_tokens if (cfg.num_sink_tokens and seen == 0) else 0
    return (ids_block.shape[0], ids_block.shape[1] + sinks, cfg.hidden_size)


@torch.no_grad()
def simulate_pipeline(spiking_dir, documents, backend: str = "auto", record=None,
                      block_size: int | None = 256, max_tokens: int | None = None,
                      return_logits: bool = False, progress: bool = False,
                      record_events: bool = False, metadata: dict | None = None,
                      device: str | torch.device | None = None,
                      distributed: bool | str = "auto", group: Group | None = None,
                      on_tokens=None) -> DocumentSetResult:
    """Simulate the documents with the layers of the spiking checkpoint ``spiking_dir``
    split into one pipeline stage per rank (module docstring). Every document runs on
    every rank, each rank its own blocks; ``record="spikes.h5"`` writes one shard per
    rank (its layers) and the index. Every rank returns the merged counters; the logits
    (``return_logits``) are on the last rank. ``device``: the stage's device (default
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU). ``on_tokens(n)``: called
    after each block with its ``n`` tokens."""
    if group is None:
        with process_group(distributed) as g:
            return simulate_pipeline(spiking_dir, documents, backend, record, block_size,
                                     max_tokens, return_logits, progress, record_events,
                                     metadata, device, group=g, on_tokens=on_tokens)

    check_block_size(block_size, none_ok=True)
    check_max_tokens(max_tokens)
    d = Path(spiking_dir)
    scfg = read_spiking_config(d)          # a float checkpoint is refused by kind, first
    if scfg.prefix is not None:
        raise OptionError(f"{d}: pipeline stages do not start documents from a constant prefix "
                          "yet (this checkpoint carries one); simulate it without --pipeline "
                          "(pipeline=False), documents split over the ranks instead")
    cfg = HybridConfig.from_json(d / "config.json")
    stages = stage_layers(cfg, group.world_size, scfg)
    mine = stages[group.rank]
    first, last = group.rank == 0, group.rank == group.world_size - 1
    if device is None:
        device = f"cuda:{group.local_rank}" if torch.cuda.is_available() else "cpu"
    model, stage = load_stage(d, mine, first, last, device=device)
    docs = load_documents(documents)
    ids = tokenize_documents(model, docs, max_tokens)
    backend = resolve_backend(backend)
    # the hidden states' dtype: the model's floating dtype (the same on every stage)
    dtype = next(t.dtype for t in stage.state_dict().values() if t.is_floating_point())
    facts = None
    if record is not None and not hasattr(record, "write"):   # the file: every stage's weights
        facts = merge_facts(group.all_gather(model_facts(model)))
    run_rec = RunRecording(record, model, ids,
                           {**(metadata or {}), "pipeline": {"stages": [[r.start, r.stop] for r in stages]}},
                           record_events, documents=docs, ranks=[-1] * len(docs), group=group,
                           every_rank=True, facts=facts)
    recorder = run_rec.recorder
    from tqdm.auto import tqdm

    prev, nxt = group.rank - 1, group.rank + 1
    per_doc: list[tuple[int, dict]] = []
    logits: dict[int, torch.Tensor] = {}
    pending: list = []
    try:
        with Simulator(stage, backend, recorder) as sim:
            group.barrier()
            t0 = time.perf_counter()
            bar = tqdm(total=sum(int(x.shape[1]) for x in ids), unit="tok",
                       desc=f"pipeline stage {group.rank} (blocks {mine.start}-{mine.stop - 1})",
                       disable=not (progress and group.is_main))
            for doc, x_ids in zip(docs, ids):
                x_ids = x_ids.to(device)
                n = int(x_ids.shape[1])
                if recorder is not None:
                    recorder.begin_document(doc.index, doc.name, n, len(doc.text))
                counters = sim.begin_document()
                state = model.new_state()
                out = []
                step = n if block_size is None else block_size
                for s in range(0, n, step):
                    block = x_ids[:, s:s + step]
                    h = None
                    if not first:
                        shape = _hidden_shape(model, block, state.seen)
                        head = group.recv((3,), torch.int64, prev, device)
                        if tuple(int(v) for v in head.tolist()) != shape:
                            raise RuntimeError(f"pipeline: stage {prev} sent hidden states of shape "
                                               f"{tuple(head.tolist())}, stage {group.rank} expected "
                                               f"{shape}; are all ranks running the same command?")
                        h = group.recv(shape, dtype, prev, device)
                    y = stage_forward(model, mine, h, block, state, first, last)
                    if last:
                        if return_logits:
                            out.append(y[0].float().cpu())
                    else:
                        while len(pending) > 4:          # bound what is in flight
                            pending.pop(0)[0].wait()
                        head = torch.tensor(y.shape, dtype=torch.int64, device=y.device)
                        pending += [(group.send(head, nxt), head), (group.send(y, nxt), y)]
                    if recorder is not None:
                        recorder.flush()
                    bar.update(block.shape[1])
                    if on_tokens is not None:
                        on_tokens(int(block.shape[1]))
                for work, _ in pending:
                    work.wait()
                pending.clear()
                if out:
                    logits[doc.index] = torch.cat(out)
                per_doc.append((doc.index, counters))
            bar.close()
            seconds = time.perf_counter() - t0
            gathered = group.all_gather(({n: c for n, c in sim.counters.items()}, per_doc, seconds))
        order = [n for n, m in model.named_modules() if isinstance(m, SpikingLinear)]
        layers: dict[str, LayerCounters] = {}
        for part, _, _ in gathered:
            layers.update(part)
        layers = {n: layers[n] for n in order if n in layers}
        merged_docs = []
        for i, doc in enumerate(docs):
            c: dict[str, LayerCounters] = {}
            for _, part, _ in gathered:
                c.update(dict(part)[doc.index])
            c = {n: c[n] for n in order if n in c}
            merged_docs.append(DocumentCounters(doc.index, doc.name, int(ids[i].shape[1]),
                                                len(doc.text), -1, totals_of(c)))
        seconds = max(s for _, _, s in gathered)
        run_rec.finish()
    except BaseException:
        run_rec.fail()
        raise
    return DocumentSetResult(
        logits=None, layers=layers, tokens=sum(int(x.shape[1]) for x in ids), seconds=seconds,
        backend=backend, coding=coding_of(model), documents=merged_docs,
        world_size=group.world_size, rank=group.rank, document_logits=logits,
        recording=run_rec.path)
