"""Spiking-aware fine-tuning: distil a float model into its spiking form through the
straight-through gradient (``sbsnn finetune``; docs/calibration.md, "Fine-tuning").

:func:`finetune` trains, in a copy of the spiking model, what
:class:`~sbsnn.converters.trainable.Trainables` offers (norm weights, scale gains, codes
on the INT8 grid, low-rank adapters merged before quantisation) to bring its next-token
distributions close to the float model's:

- **data**: every text is cut into windows of ``block_size`` tokens (the tail shorter
  than a window is left out), each run from a fresh state; a step takes ``batch``
  windows from a fixed shuffle (one permutation per epoch, drawn from ``seed`` and the
  epoch), so step ``s`` sees the same windows whoever runs it and whenever;
- **loss**: ``KL(float || spiking)`` over the whole vocabulary, summed over
  ``positions`` positions sampled in each window (all of them with None) and divided by
  the positions of the whole batch; the teacher is the float model's logits on the same
  window; one Adam step per batch, a constant learning rate;
- **forward**: every spiking layer computes its own counts (the neurons' rule and k,
  unchanged) times ``V_th`` and the weight on its INT8 grid
  (:func:`~sbsnn.converters.straight_through.straight_through`): the integer path's
  output, to float rounding; the rounding passes the gradient through;
- **held-out KL**: on ``eval_texts`` windows (or the last tenth of the training windows,
  then not trained on), every ``eval_every`` steps and at the end, shown beside the
  progress bar and kept in the record;
- **state**: with ``state_path``, the trained tensors, the optimizer and the record are
  written atomically every ``save_every`` steps and at the end; a later call with the
  same model, texts and settings continues from it, to the same bits as a run that was
  never interrupted (``steps`` may grow between calls); a state of another model, other
  texts or other settings is refused, naming what differs;
- **data parallel**: under ``torchrun`` (or ``distributed=True``) each rank runs its
  share of every batch's windows (window ``i`` of a batch on rank ``i mod world``); the
  gradients of the weights and norm weights and the loss are summed over the ranks
  (``all_reduce``: gloo on CPUs, NCCL for CUDA tensors) before the identical optimizer
  step on every rank, so N processes give one process's weights to float rounding (and,
  with one window per rank, to the bit). The held-out windows are split the same way and
  their sums gathered in window order.

The result is an ordinary spiking model (``save_spiking`` writes it; the event path is
bit-identical to its integer path), with ``spiking_config.finetune`` (a summary) and
``model.finetune_report`` (the whole record). The models given are not modified.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sbsnn.checks import check_block_size, check_float, check_input_file, check_int
from sbsnn.converters import save_spiking
from sbsnn.converters.convert import SpikingConfig
from sbsnn.converters.spiking_linear import SpikingLinear, spiking_layers
from sbsnn.converters.straight_through import straight_through
from sbsnn.converters.trainable import Trainables, check_train
from sbsnn.errors import CheckpointKindError, NonFiniteError, OptionError
from sbsnn.fsutil import atomic_file, jsonable
from sbsnn.runs.documents import DocumentSet, load_documents
from sbsnn.runs.group import Group, process_group

__all__ = ["FinetuneSettings", "FinetunedCheckpoint", "finetune", "finetune_checkpoint",
           "format_finetune"]

STATE_VERSION = 1
STEPS_LIMIT = 1_000_000
STEPS_WHY = "a step is a forward and backward pass of both models over a batch of windows"
HELD_OUT_FRACTION = 10      # without eval_texts: the last 1/10 of the windows are held out


@dataclass(frozen=True)
class FinetuneSettings:
    """The options of one fine-tuning run. ``steps``, ``eval_every`` and ``save_every``
    do not change the weights a step gives, so a state file continues across them; the
    others must match the state's."""

    steps: int
    lr: float = 1e-3
    train: tuple[str, ...] = ("norms", "codes")
    rank: int = 8
    batch: int = 4
    block_size: int = 256
    positions: int | None = 64
    seed: int = 0
    eval_every: int = 25
    eval_windows: int = 16
    save_every: int = 25

    @classmethod
    def checked(cls, names: dict[str, str] | None = None, **kw) -> "FinetuneSettings":
        """The settings with every option checked (refused by name) before any pass;
        ``names``: how the caller names the options (the command: ``--block-size``)."""
        s = cls(**kw)
        n = {f: f for f in kw} | (names or {})
        check_int(s.steps, n["steps"], minimum=1, maximum=STEPS_LIMIT, why=STEPS_WHY)
        lr = check_float(s.lr, n["lr"], positive=True, maximum=1.0,
                         why="Adam moves every trained value by about lr per step; the norm "
                             "weights sit near 1", hint=" (e.g. 1e-3)")
        train = check_train(s.train, n["train"])
        check_int(s.rank, n["rank"], minimum=1, maximum=4096)
        check_int(s.batch, n["batch"], minimum=1, maximum=65536)
        check_block_size(s.block_size, n["block_size"])
        if s.block_size < 2:
            raise OptionError(f"{n['block_size']} must be at least 2 tokens (a window predicts "
                              f"its next tokens), got {s.block_size}")
        check_int(s.positions, n["positions"], minimum=1, none_ok=True, hint=" (None: all)")
        check_int(s.seed, n["seed"], minimum=0)
        check_int(s.eval_every, n["eval_every"], minimum=1)
        check_int(s.eval_windows, n["eval_windows"], minimum=1)
        check_int(s.save_every, n["save_every"], minimum=1)
        return cls(**{**asdict(s), "lr": lr, "train": train})

    def trajectory(self) -> dict:
        """What decides the weights after each step (the state file must match it)."""
        d = asdict(self)
        for k in ("steps", "eval_every", "save_every"):
            d.pop(k)
        if "lora" not in self.train:
            d.pop("rank")
        d["train"] = list(d["train"])
        return d


# ----------------------------------------------------------------------------- data
def _windows(model, docs: DocumentSet, block_size: int, what: str) -> list[torch.Tensor]:
    """Each document's consecutive windows of ``block_size`` token ids ``[block_size]``;
    a document shorter than one window is refused by name."""
    tok = model._require_tokenizer()
    out = []
    for d in docs:
        ids = tok.encode(d.text)
        if len(ids) < block_size:
            raise OptionError(
                f"{what}: document {d.index} ({d.name}) holds {len(ids):,} tokens, fewer than "
                f"one block of {block_size:,}; give a longer text, join short documents, or "
                "lower block_size (--block-size)")
        t = torch.tensor(ids[: len(ids) // block_size * block_size], dtype=torch.long)
        out.extend(t.view(-1, block_size).unbind(0))
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_windows(step: int, n: int, batch: int, seed: int) -> list[int]:
    """The windows (indices into the training windows) of ``step`` (0-based): positions
    ``step * batch ...`` of the stream of per-epoch permutations."""
    out = []
    for j in range(step * batch, (step + 1) * batch):
        epoch, i = divmod(j, n)
        out.append(int(_epoch_order(n, seed, epoch)[i]))
    return out


def _sampled(step: int, slot: int, length: int, positions: int | None, seed: int) -> torch.Tensor:
    """The positions of a window whose KL counts (sorted), drawn from (seed, step, slot)."""
    if positions is None or positions >= length:
        return torch.arange(length)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + step) * 65_537 + slot)
    return torch.randperm(length, generator=gen)[:positions].sort().values


# ----------------------------------------------------------------------------- state
def _digest_tensors(h, named) -> None:
    for name, t in named:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _fingerprints(spiking, float_model, train_w, eval_w, settings) -> dict[str, str]:
    """What a state file must match, part by part (so a refusal names the part)."""
    out = {}
    h = hashlib.sha256()
    _digest_tensors(h, spiking.state_dict().items())
    scfg = spiking.spiking_config
    h.update(json.dumps({"coding": scfg.coding, "k": scfg.k, "layer_k": scfg.layer_k,
                         "targets": scfg.targets}, sort_keys=True).encode())
    out["spiking model"] = h.hexdigest()
    h = hashlib.sha256()
    _digest_tensors(h, float_model.state_dict().items())
    out["float model"] = h.hexdigest()
    for part, windows in (("training texts", train_w), ("held-out texts", eval_w)):
        h = hashlib.sha256()
        for w in windows:
            h.update(w.numpy().tobytes())
            h.update(b"|")
        out[part] = h.hexdigest()
    out["settings"] = json.dumps(settings.trajectory(), sort_keys=True)
    return out


def _load_state(path: Path, fingerprints: dict, tensors: dict, opt) -> tuple[int, dict]:
    check_input_file(path, "the fine-tuning state", error=OptionError)
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is named, not used
        raise OptionError(f"fine-tuning state {path}: cannot be read ({type(e).__name__}: {e}); "
                          "delete it to start afresh, or pass another --state") from None
    if not isinstance(st, dict) or st.get("kind") != "sbsnn-finetune-state" \
            or st.get("version") != STATE_VERSION:
        raise OptionError(f"fine-tuning state {path}: not a fine-tuning state of this sbsnn "
                          "(a refinement state, or another file?); delete it or pass another "
                          "--state")
    theirs = st.get("fingerprints", {})
    differ = [k for k in fingerprints if theirs.get(k) != fingerprints[k]]
    if differ:
        detail = ""
        if "settings" in differ:
            a, b = json.loads(theirs.get("settings", "{}")), json.loads(fingerprints["settings"])
            diff = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
                    if a.get(k) != b.get(k)]
            detail = f" ({'; '.join(diff)})"
        raise OptionError(f"fine-tuning state {path}: written for another {', '.join(differ)}"
                          f"{detail}; rerun with what it was written for, delete it, or pass "
                          "another --state")
    saved = st["tensors"]
    if set(saved) != set(tensors):
        raise OptionError(f"fine-tuning state {path}: holds other tensors than this run trains; "
                          "delete it or pass another --state")
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(saved[name].to(t.device))
    opt.load_state_dict(st["optimizer"])
    return int(st["step"]), st["record"]


def _save_state(path: Path, fingerprints: dict, step: int, tensors: dict, opt, record) -> None:
    with atomic_file(path) as tmp:
        torch.save({"kind": "sbsnn-finetune-state", "version": STATE_VERSION,
                    "fingerprints": fingerprints, "step": step, "record": record,
                    "tensors": {n: t.detach().cpu().clone() for n, t in tensors.items()},
                    "optimizer": opt.state_dict()}, tmp)


def check_state_path(state_path) -> Path | None:
    if state_path is None:
        return None
    path = Path(state_path)
    if path.is_dir():
        raise OptionError(f"state {path}: is a directory; give a file path")
    if not path.parent.is_dir():
        raise OptionError(f"state {path}: its folder {path.parent} does not exist")
    return path


# ----------------------------------------------------------------------------- passes
def _kl_sum(spiking, float_model, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Summed ``KL(float || spiking)`` at positions ``pos`` of one window (fresh states)."""
    with torch.no_grad():
        lf = float_model.head(float_model.body(ids[None])[0, pos]).float().log_softmax(-1)
    ls = spiking.head(spiking.body(ids[None])[0, pos]).float().log_softmax(-1)
    return F.kl_div(ls, lf, log_target=True, reduction="sum")


def _heldout_kl(spiking, float_model, windows, group: Group, device) -> float:
    """Mean KL per position over the held-out windows: each rank its share, the sums
    added in window order (the same bits at any world size)."""
    mine = []
    with torch.no_grad():
        for i in range(group.rank, len(windows), group.world_size):
            w = windows[i].to(device)
            mine.append((i, float(_kl_sum(spiking, float_model, w, torch.arange(len(w))))))
    parts = sorted(p for part in group.all_gather(mine) for p in part)
    return sum(v for _, v in parts) / sum(len(windows[i]) for i, _ in parts)


def _reduce(group: Group, tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over the ranks, in place (one flat buffer per device and dtype)."""
    if not group.distributed:
        return
    import torch.distributed as dist

    buckets: dict = {}
    for t in tensors:
        buckets.setdefault((t.device, t.dtype), []).append(t)
    for ts in buckets.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat)
        o = 0
        for t in ts:
            t.copy_(flat[o:o + t.numel()].view_as(t))
            o += t.numel()


def _step(work, float_model, trainables: Trainables, leaves: dict, opt, train_w,
          s: FinetuneSettings, step: int, group: Group, device) -> float:
    """One optimizer step (0-based ``step``): this rank's windows of the batch forward and
    backward, the gradients summed over the ranks, one Adam step; the batch's mean KL per
    position. The weights that depend on trained tensors are leaves for the step (the
    windows add their gradients there), pushed back to what is trained once."""
    exprs = {n: trainables.weight(n) for n in trainables.layers if trainables.moves(n)}
    leaves.clear()
    leaves.update({n: w.detach().requires_grad_(True) for n, w in exprs.items()})
    opt.zero_grad(set_to_none=False)
    for t in list(leaves.values()) + list(trainables.norms.values()):
        t.grad = torch.zeros_like(t)
    chosen = batch_windows(step, len(train_w), s.batch, s.seed)
    sampled = [_sampled(step, j, s.block_size, s.positions, s.seed) for j in range(s.batch)]
    total = sum(len(p) for p in sampled)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for j in range(group.rank, s.batch, group.world_size):
        with torch.enable_grad():
            kl = _kl_sum(work, float_model, train_w[chosen[j]].to(device), sampled[j].to(device))
            (kl / total).backward()
        loss_sum += kl.detach().double()
    grads = [leaves[n].grad for n in leaves] + [p.grad for p in trainables.norms.values()]
    _reduce(group, grads + [loss_sum])
    loss = float(loss_sum) / total
    if not math.isfinite(loss) or not all(bool(torch.isfinite(g).all()) for g in grads):
        raise NonFiniteError(
            f"finetune: the loss ({loss}) or its gradient is not finite at step {step + 1}; "
            f"lower lr (it is {s.lr:g}) or train fewer kinds ({', '.join(s.train)})",
            origin="activations")
    if exprs:
        torch.autograd.backward(list(exprs.values()), [leaves[n].grad for n in exprs])
    opt.step()
    return loss


def _models_match(spiking, float_model, docs: DocumentSet) -> None:
    """Refuse a float model that is not the spiking model's source: its structure or its
    tokenizer differ."""
    if any(isinstance(m, SpikingLinear) for m in float_model.modules()):
        raise CheckpointKindError("finetune: float_model is a spiking model; give the float "
                                  "model the spiking one was converted from (its teacher)")
    a, b = spiking.config, float_model.config
    for f in ("vocab_size", "hidden_size", "num_hidden_layers"):
        if getattr(a, f) != getattr(b, f):
            raise OptionError(f"finetune: the float model is not the spiking model's source "
                              f"({f} {getattr(b, f)} there, {getattr(a, f)} in the spiking model)")
    fmods = dict(float_model.named_modules())
    for name, m in spiking_layers(spiking):
        f = fmods.get(name)
        if f is None or tuple(f.weight.shape) != (m.out_features, m.in_features):
            raise OptionError(f"finetune: the float model is not the spiking model's source "
                              f"(its {name} is {'missing' if f is None else tuple(f.weight.shape)})")
    sample = docs[0].text[:2000]
    if spiking._require_tokenizer().encode(sample) != float_model._require_tokenizer().encode(sample):
        raise OptionError("finetune: the float model's tokenizer splits the text otherwise than "
                          "the spiking model's; give the float model it was converted from")


# ----------------------------------------------------------------------------- the job
def finetune(spiking, float_model, texts, *, steps: int, lr: float = 1e-3,
             train=("norms", "codes"), rank: int = 8, batch: int = 4, block_size: int = 256,
             positions: int | None = 64, eval_texts=None, eval_every: int = 25,
             eval_windows: int = 16, state_path=None, save_every: int = 25, seed: int = 0,
             progress: bool = False, distributed: bool | str = "auto",
             group: Group | None = None):
    """A fine-tuned copy of ``spiking`` (a converted or loaded spiking model), distilled
    from ``float_model`` (its float source) on ``texts`` (a list of texts, a
    :class:`~sbsnn.runs.documents.DocumentSet`, or a path: a text file, a ``.jsonl`` file
    or a directory of ``.txt`` files). See the module docstring for what a step does;
    :class:`FinetuneSettings` for the options (every one is checked before any pass).

    ``eval_texts``: held-out texts (as ``texts``); None holds out the last tenth of the
    training windows. At most ``eval_windows`` held-out windows are used.
    ``state_path``: a file to save the progress to and resume from. ``distributed`` /
    ``group``: as :func:`~sbsnn.runs.simulate.simulate_documents`.
    """
    if group is None:
        with process_group(distributed) as g:
            return finetune(spiking, float_model, texts, steps=steps, lr=lr, train=train,
                            rank=rank, batch=batch, block_size=block_size, positions=positions,
                            eval_texts=eval_texts, eval_every=eval_every,
                            eval_windows=eval_windows, state_path=state_path,
                            save_every=save_every, seed=seed, progress=progress, group=g)
    t0 = time.perf_counter()
    s = FinetuneSettings.checked(steps=steps, lr=lr, train=train, rank=rank, batch=batch,
                                 block_size=block_size, positions=positions, seed=seed,
                                 eval_every=eval_every, eval_windows=eval_windows,
                                 save_every=save_every)
    path = check_state_path(state_path)
    if not isinstance(getattr(spiking, "spiking_config", None), SpikingConfig) or \
            not any(isinstance(m, SpikingLinear) for m in spiking.modules()):
        raise CheckpointKindError("finetune: the first model must be spiking (sbsnn.convert, "
                                  "load_spiking); this one has no spiking layers")
    docs = load_documents(texts)
    _models_match(spiking, float_model, docs)
    train_w = _windows(spiking, docs, s.block_size, "texts")
    if eval_texts is not None:
        eval_w = _windows(spiking, load_documents(eval_texts), s.block_size, "eval_texts")
    else:
        if len(train_w) < 2:
            raise OptionError(f"texts: {len(train_w)} window of {s.block_size} tokens; without "
                              "eval_texts the last tenth of the windows is held out, so give "
                              "at least two windows (a longer text) or eval_texts")
        held = max(1, len(train_w) // HELD_OUT_FRACTION)
        train_w, eval_w = train_w[:-held], train_w[-held:]
    eval_w = eval_w[: s.eval_windows]

    work = copy.deepcopy(spiking)
    work.tokenizer = getattr(spiking, "tokenizer", None)
    work.eval()
    float_model.eval()
    device = next(work.parameters()).device
    trainables = Trainables(work, s.train, s.rank, s.seed)
    tensors = trainables.tensors()
    opt = torch.optim.Adam(trainables.param_groups(s.lr), lr=s.lr, foreach=False)
    fingerprints = _fingerprints(spiking, float_model, train_w, eval_w, s)
    start, record = 0, {"train_kl": [], "heldout_kl": []}
    if path is not None and path.exists():
        start, record = _load_state(path, fingerprints, tensors, opt)
        if start > s.steps:
            raise OptionError(f"fine-tuning state {path}: already {start} steps in, more than "
                              f"steps={s.steps}; ask for at least {start} steps, or delete it")

    fixed = {n: m.dequantized_weight() for n, m in spiking_layers(work) if not trainables.moves(n)}
    leaves: dict[str, torch.Tensor] = {}

    def weight_of(name, layer):
        return leaves[name] if name in leaves else fixed[name]

    flags = [(p, p.requires_grad) for p in work.parameters()]
    for p in work.parameters():
        p.requires_grad_(False)
    for p in trainables.norms.values():
        p.requires_grad_(True)
    bar = tqdm(total=s.steps, initial=start, desc=f"finetune{group.where()}", unit="step",
               disable=not (progress and group.is_main))
    resumed_from = start

    def evaluate(step: int) -> None:
        if any(e["step"] == step for e in record["heldout_kl"]):
            return
        with torch.no_grad():
            leaves.update({n: trainables.weight(n) for n in trainables.layers
                           if trainables.moves(n)})
            kl = _heldout_kl(work, float_model, eval_w, group, device)
        record["heldout_kl"].append({"step": step, "kl": kl})
        bar.set_postfix_str(f"held-out KL {kl:.4f}" + (
            f", train KL {record['train_kl'][-1]['kl']:.4f}" if record["train_kl"] else ""))

    try:
        with straight_through(work, weight_of):
            if start == 0:
                evaluate(0)
            for step in range(start, s.steps):
                loss = _step(work, float_model, trainables, leaves, opt, train_w, s, step,
                             group, device)
                record["train_kl"].append({"step": step + 1, "kl": loss})
                bar.update(1)
                done = step + 1
                if done % s.eval_every == 0 or done == s.steps:
                    evaluate(done)
                if path is not None and group.is_main and (done % s.save_every == 0
                                                           or done == s.steps):
                    _save_state(path, fingerprints, done, tensors, opt, record)
            if start == s.steps:
                evaluate(s.steps)
    finally:
        bar.close()
        leaves.clear()
        for p, f in flags:
            p.requires_grad_(f)
        for p in trainables.norms.values():
            p.grad = None
    group.barrier()
    trainables.apply(work)
    seconds = time.perf_counter() - t0
    report = {
        "steps": s.steps, "resumed_from_step": resumed_from, "settings": asdict(s),
        "trained": list(s.train), "parameters": trainables.parameter_count(),
        "training_windows": len(train_w), "heldout_windows": len(eval_w),
        "heldout": "eval_texts" if eval_texts is not None else "the last tenth of the windows",
        "tokens_per_step": s.batch * s.block_size, "world_size": group.world_size,
        "train_kl": record["train_kl"], "heldout_kl": record["heldout_kl"], "seconds": seconds,
    }
    first, last = record["heldout_kl"][0]["kl"], record["heldout_kl"][-1]["kl"]
    work.spiking_config.finetune = {
        "method": "sbsnn.finetune: KL distillation from the float model through the "
                  "straight-through gradient",
        "trained": list(s.train), "steps": s.steps, "lr": s.lr, "batch": s.batch,
        "block_size": s.block_size, "positions": s.positions, "seed": s.seed,
        "heldout_kl_before": first, "heldout_kl_after": last,
    }
    work.finetune_report = report
    return work


def format_finetune(report: dict) -> str:
    """The fine-tuning record as ``sbsnn finetune`` prints it."""
    h = report["heldout_kl"]
    s = report["settings"]
    lines = [f"fine-tuned {report['parameters']:,} values ({', '.join(report['trained'])}) for "
             f"{report['steps']} steps of {s['batch']} windows x {s['block_size']} tokens "
             f"(lr {s['lr']:g}, {report['training_windows']} training windows"
             + (f", resumed at step {report['resumed_from_step']}" if report["resumed_from_step"] else "")
             + (f", {report['world_size']} processes" if report["world_size"] > 1 else "")
             + f") in {report['seconds']:.0f} s",
             f"  held-out KL ({report['heldout_windows']} windows of {report['heldout']}): "
             + ", ".join(f"step {e['step']}: {e['kl']:.4f}" for e in h)]
    return "\n".join(lines)


@dataclass
class FinetunedCheckpoint:
    """What :func:`finetune_checkpoint` wrote: ``out``, the fine-tuning ``report``, and with
    ``eval_texts`` the ``overall`` comparison (before / after, as
    :func:`sbsnn.runs.calibrate.compare` returns it) on ``evaluated_on``."""

    out: str
    report: dict
    overall: dict | None
    evaluated_on: str | None
    seconds: float

    def format(self) -> str:
        lines = [format_finetune(self.report)]
        if self.overall:
            lines.append(f"overall on {self.evaluated_on} (integer path, documents through "
                         "their states):")
            lines.append(f"  {'':<12} {'top-1':>7} {'KL':>8} {'ppl float':>10} "
                         f"{'ppl spiking':>11} {'ratio':>7} {'spk/el':>7}")
            for name, o in self.overall.items():
                lines.append(f"  {name:<12} {100 * o['top1_agreement']:>6.1f}% {o['mean_kl']:>8.4f} "
                             f"{o['float_perplexity']:>10.3f} {o['spiking_perplexity']:>11.3f} "
                             f"{o['perplexity_ratio']:>7.4f} {o['spikes_per_element']:>7.3f}")
            lines.append(f"  ({next(iter(self.overall.values()))['tokens']:,} next-token "
                         "predictions)")
        return "\n".join(lines)


def finetune_checkpoint(spiking_src, out, texts, float_src, *, eval_texts=None,
                        eval_tokens: int = 8192, state_path=None, force: bool = False,
                        allow_pickle: bool = False, verify: bool = True, progress: bool = False,
                        device=None, group: Group | None = None,
                        **options) -> FinetunedCheckpoint:
    """``sbsnn finetune``: load the spiking checkpoint ``spiking_src`` and its float source
    ``float_src``, fine-tune (:func:`finetune`, ``options`` as its keywords; held out:
    ``eval_texts`` if given) and write the result to ``out`` with ``finetune.json`` (rank 0,
    atomically; ``force`` replaces an earlier spiking checkpoint). With ``eval_texts``,
    plain and fine-tuned are compared with the float model on at most ``eval_tokens``
    tokens of them (top-1, KL, perplexities, spikes per element; the integer path).
    ``device``: where both models run (default: ``cuda:LOCAL_RANK`` when CUDA is
    available, else the CPU)."""
    if group is None:
        with process_group() as g:
            return finetune_checkpoint(spiking_src, out, texts, float_src, eval_texts=eval_texts,
                                       eval_tokens=eval_tokens, state_path=state_path,
                                       force=force, allow_pickle=allow_pickle, verify=verify,
                                       progress=progress, device=device, group=g, **options)
    from sbsnn.converters import load_spiking
    from sbsnn.converters.format import check_output_dir
    from sbsnn.models.checkpoint import load_model
    from sbsnn.runs.calibrate import compare, deferred_bar

    t0 = time.perf_counter()
    check_output_dir(out, force)
    check_int(eval_tokens, "eval_tokens", minimum=2)
    FinetuneSettings.checked(**options)
    check_state_path(state_path)
    docs = load_documents(texts)
    held = load_documents(eval_texts) if eval_texts is not None else None
    if device is None:
        device = f"cuda:{group.local_rank}" if torch.cuda.is_available() else "cpu"
    spiking = load_spiking(spiking_src, device=device, verify=verify)
    float_model = load_model(float_src, device=device, allow_pickle=allow_pickle)
    tuned = finetune(spiking, float_model, docs, eval_texts=held, state_path=state_path,
                     progress=progress, group=group, **options)
    overall = where = None
    if held is not None and group.is_main:
        with deferred_bar("evaluate (before, after)", progress) as start:
            overall = compare(float_model, {"before": spiking, "fine-tuned": tuned},
                              [d.text for d in held], spiking.spiking_config.coding,
                              max_tokens=eval_tokens, progress=start)
        where = str(eval_texts) if isinstance(eval_texts, (str, os.PathLike)) else \
            f"{len(held)} held-out texts"
        tuned.finetune_report["overall"] = {"text": where, **overall}
        tuned.spiking_config.finetune["overall"] = {"text": where, **overall["fine-tuned"]}
    if group.is_main:
        save_spiking(tuned, out, force=force, extra_files={
            "finetune.json": json.dumps(jsonable(tuned.finetune_report), indent=1,
                                        allow_nan=False) + "\n"})
    group.barrier()
    return FinetunedCheckpoint(str(out), tuned.finetune_report, overall, where,
                               time.perf_counter() - t0)
