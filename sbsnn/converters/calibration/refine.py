"""Refinement: a short distillation of a spiking model's norm weights through the
straight-through gradient.

Smoothing and the allocation choose, per group, among a few settings scored by a
second-order model of each group's error alone. What they cannot do is let the layers
after an error adapt to it. Refinement fits the float parameters that sit between the
spiking inputs, the RMSNorm weights (about 56k of them in Gemma 3 270M; the smoothing is
already folded into them), so that the spiking model's next-token distributions come
closer to the float model's on calibration tokens:

- forward: every ``SpikingLinear`` computes what its integer path computes, in floats
  (:func:`~sbsnn.converters.straight_through.straight_through`): its neuron's counts
  ``round(x / V_th)`` times ``V_th`` (the neuron's own straight-through step), then the
  dequantized INT8 weights. The counts and so the spikes are the spiking model's;
- backward: the rounding passes the gradient through unchanged;
- loss: ``KL(float || spiking)`` over the whole vocabulary, at ``positions`` sampled
  positions of each block (the head is most of a step's cost on a large vocabulary; the
  sample keeps the loss an unbiased estimate of the block's mean KL), one Adam step per
  block, documents in order, each from a fresh state (gradients do not cross blocks).

Nothing else changes: the INT8 codes, the thresholds' rule and each layer's k stay as
they are, and the result is still an ordinary spiking model. With ``state_path`` the
progress (norm weights, optimizer state, losses) is saved after every epoch, written to a
temporary file and renamed, and a later call with the same settings resumes from it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from torch import nn

from sbsnn.checks import check_input_file, check_int
from sbsnn.converters.calibration.measure import _detach_state
from sbsnn.converters.spiking_linear import SpikingLinear
from sbsnn.converters.straight_through import straight_through
from sbsnn.converters.trainable import norm_weights
from sbsnn.errors import NonFiniteError, OptionError
from sbsnn.fsutil import atomic_file
from sbsnn.models.prefix import prefix_of, start_state_for

STATE_VERSION = 1


def refined_parameters(spiking: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters refinement fits: the weights of every RMSNorm, by name (what
    fine-tuning's ``norms`` trains, :func:`~sbsnn.converters.trainable.norm_weights`)."""
    return norm_weights(spiking)


def _fingerprint(spiking, params, blocks, settings) -> str:
    """What a state file must match: the settings, the starting norm weights, each layer's k,
    the constant prefix's ids (if any) and the token ids."""
    h = hashlib.sha256()
    h.update(repr(settings).encode())
    pre = prefix_of(spiking)
    if pre is not None:
        h.update(f"prefix={list(pre.ids)!r}".encode())
    for name, p in params.items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    for name, m in spiking.named_modules():
        if isinstance(m, SpikingLinear):
            h.update(f"{name}={m.k!r}".encode())
    for doc in blocks:
        for ids in doc:
            h.update(ids.cpu().numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def _load_state(path: Path, fingerprint: str, params, opt) -> tuple[int, list[float]]:
    check_input_file(path, "the refinement state", error=OptionError)
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is named, not used
        raise OptionError(f"refinement state {path}: cannot be read ({type(e).__name__}: {e}); "
                          "delete it to start the refinement afresh") from None
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        raise OptionError(f"refinement state {path}: not a refinement state of this sbsnn "
                          f"(version {st.get('version') if isinstance(st, dict) else None!r}); "
                          "delete it or pass another path")
    if st.get("fingerprint") != fingerprint:
        raise OptionError(f"refinement state {path}: written for another model, text or "
                          "refinement settings; delete it or pass another path")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(st["params"][name])
    opt.load_state_dict(st["optimizer"])
    return int(st["epoch"]), [float(x) for x in st["losses"]]


def _save_state(path: Path, fingerprint: str, epoch: int, losses, params, opt) -> None:
    with atomic_file(path) as tmp:
        torch.save({"version": STATE_VERSION, "fingerprint": fingerprint, "epoch": epoch,
                    "losses": list(losses),
                    "params": {n: p.detach().clone() for n, p in params.items()},
                    "optimizer": opt.state_dict()}, tmp)


REFINE_EPOCHS_LIMIT = 1000
REFINE_EPOCHS_WHY = ("each epoch is a full pass of both models over the refinement tokens "
                     "(about 40 s for Gemma 3 270M on 2 cores); 4 epochs are measured in "
                     "docs/calibration.md and the sampled KL stops falling well before 100")


def check_epochs(epochs, name: str = "refine_epochs") -> int:
    """Epochs of refinement: an integer from 0 (off) to REFINE_EPOCHS_LIMIT."""
    return check_int(epochs, name, minimum=0, maximum=REFINE_EPOCHS_LIMIT, why=REFINE_EPOCHS_WHY)


def check_options(epochs, lr, positions, state_path=None) -> None:
    """Refuse bad refinement options by name (before any long pass runs)."""
    check_epochs(epochs)
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise OptionError(f"refine_positions must be an int >= 1, got {positions!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise OptionError(f"refine_lr must be a number in (0, 1), got {lr!r}")
    if state_path is not None:
        path = Path(state_path)
        if path.is_dir():
            raise OptionError(f"refine_state {path}: is a directory; give a file path")
        if not path.parent.is_dir():
            raise OptionError(f"refine_state {path}: its folder {path.parent} does not exist")


def refine(spiking: nn.Module, float_model: nn.Module, blocks, *, epochs: int = 4,
           lr: float = 1e-3, positions: int = 64, seed: int = 0,
           state_path: str | os.PathLike | None = None, progress=None) -> dict:
    """Fit ``spiking``'s RMSNorm weights in place (see the module docstring) on ``blocks``
    (documents, each a list of ``[1, n]`` token blocks). ``progress``: called once with
    the number of tokens to come (the float targets, then each epoch left), it returns the
    callable that gets ``n`` after each block of ``n`` tokens. Returns the record:
    ``epochs, lr, positions, tokens, parameters, kl_per_epoch`` (the mean sampled KL of
    each epoch, while fitting), ``resumed_from_epoch`` and ``seconds``."""
    check_options(epochs, lr, positions, state_path)
    t0 = time.perf_counter()
    params = refined_parameters(spiking)
    if not params:
        raise OptionError("refinement fits RMSNorm weights and this model has none")
    fingerprint = _fingerprint(spiking, params, blocks, (lr, positions, seed))
    flags = [(p, p.requires_grad) for p in spiking.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    path = Path(state_path) if state_path is not None else None
    start, losses = 0, []
    if path is not None and path.exists():
        start, losses = _load_state(path, fingerprint, params, opt)
    tokens = sum(ids.shape[1] for doc in blocks for ids in doc)
    if progress is not None:
        progress = progress(tokens * (1 + epochs - start) if start < epochs else 0)
    try:
        targets = _float_targets(float_model, blocks, positions, seed, progress,
                                 prefix_of(spiking)) \
            if start < epochs else []
        with straight_through(spiking):
            for epoch in range(start, epochs):
                total = n = 0.0
                for d, (doc, doc_targets) in enumerate(zip(blocks, targets)):
                    state = spiking.start_state()
                    for ids, (pos, logp_f) in zip(doc, doc_targets):
                        with torch.enable_grad():
                            hidden = spiking.body(ids, state)[0, pos]
                            logp_s = spiking.head(hidden).float().log_softmax(-1)
                            lf = logp_f.float()
                            loss = (lf.exp() * (lf - logp_s)).sum(-1).mean()
                            if not bool(torch.isfinite(loss)):
                                raise NonFiniteError(
                                    f"refinement: the loss is {float(loss)} at epoch {epoch + 1}, "
                                    f"document {d}; lower refine_lr (it is "
                                    f"{lr:g}) or refine fewer epochs", origin="activations")
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                        opt.step()
                        _detach_state(state)
                        total += float(loss.detach()) * len(pos)
                        n += len(pos)
                        if progress is not None:
                            progress(ids.shape[1])
                losses.append(total / max(n, 1.0))
                if path is not None:
                    _save_state(path, fingerprint, epoch + 1, losses, params, opt)
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        for p in params.values():
            p.grad = None
    return {"epochs": epochs, "lr": lr, "positions": positions,
            "tokens": tokens,
            "parameters": sum(p.numel() for p in params.values()),
            "kl_per_epoch": losses, "resumed_from_epoch": start,
            "seconds": time.perf_counter() - t0}


@torch.no_grad()
def _float_targets(float_model, blocks, positions: int, seed: int, progress=None, prefix=None):
    """Per document and block: the sampled positions and the float model's log-probabilities
    there (float16: [positions, vocab] per block); each document read after ``prefix`` (the
    spiking model's constant prefix), if any."""
    gen = torch.Generator().manual_seed(seed + 2)
    out = []
    for doc in blocks:
        state, per_doc = start_state_for(float_model, prefix), []
        for ids in doc:
            n = ids.shape[1]
            pos = torch.randperm(n, generator=gen)[: min(positions, n)].sort().values
            logits = float_model(ids, state)[0, pos.to(ids.device)]
            per_doc.append((pos.to(ids.device), logits.float().log_softmax(-1).to(torch.float16)))
            if progress is not None:
                progress(n)
        out.append(per_doc)
    return out
