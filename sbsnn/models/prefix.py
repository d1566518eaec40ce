"""A constant prefix: tokens every document starts with, and the decoding state after them.

A model that reads every document after the same tokens (its BOS token, or a prefix the
user names, e.g. a fixed instruction) holds the same decoding state after them each time:
the keys and values of its attention layers, the recurrent and convolution states of its
linear mixers (GLA, Gated DeltaNet, Mamba-2, the short convolution), the positions seen.
:func:`compute_prefix` computes that state once, with the float model, and a
:class:`ConstantPrefix` carries it; a model holding one (``model.prefix``) starts every
document from a copy of it (:meth:`HybridForCausalLM.start_state
<sbsnn.models.hybrid.HybridForCausalLM.start_state>`), so a spiking model never runs the
prefix's tokens through its spiking layers: they are not simulated, and not counted.

The document's own tokens follow the prefix. A tokenizer that adds a BOS token puts one
before every document; when the prefix already begins with that BOS, the document's
leading BOS is dropped (:meth:`ConstantPrefix.body`), so a prefix of just the BOS
token turns ``[BOS, d1, ..., dn]`` into the prefix state and ``[d1, ..., dn]``: the same
sequence, read from a state computed once. The prediction of ``d1`` is the prefix's own
(float) logits, :attr:`ConstantPrefix.logits`.

The state is stored compactly (:meth:`ConstantPrefix.tensors`): an attention cache keeps
only its filled slots (a window ring is allocated at its full width). Read back against a
model (:meth:`ConstantPrefix.from_tensors`), the stored tensors are checked against the
model's own state after the same tokens (one forward pass over the prefix, whose values
are discarded: only its layout, shapes and dtypes are used), and a state computed for
another model is refused naming the tensor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from sbsnn.errors import CheckpointError, LimitError, OptionError

__all__ = ["MAX_PREFIX_TOKENS", "PREFIX_FILE", "ConstantPrefix", "attach_prefix", "refold_prefix",
           "compute_prefix", "prefix_ids", "prefix_of", "start_state_for"]

PREFIX_FILE = "prefix_state.safetensors"
MAX_PREFIX_TOKENS = 4096
_MAX_WHY = ("a constant prefix is a BOS token or a short fixed text; its full-attention "
            "caches grow with every token and every document starts from a copy of them")
LOGITS = "logits"


def prefix_of(model) -> "ConstantPrefix | None":
    """The constant prefix ``model`` carries (``model.prefix``), or None."""
    p = getattr(model, "prefix", None)
    return p if isinstance(p, ConstantPrefix) else None


def start_state_for(model, prefix: "ConstantPrefix | None"):
    """The state ``model`` reads a document from beside a model carrying ``prefix`` (the
    float reference of a spiking model): after its own prefix if it has one; else, for a
    float model, after ``prefix``'s tokens run by the model itself (the stored state is
    the spiking model's float form's, and calibration's smoothing rescales the values it
    holds, so a float reference must read its own); for a spiking model, ``prefix``'s
    stored float state; without a prefix, fresh."""
    if prefix_of(model) is not None:
        return model.start_state()
    if prefix is None:
        return model.new_state()
    if any(hasattr(m, "weight_codes") for m in model.modules()):
        return prefix.start_state(model)
    with torch.no_grad():
        return _run_prefix(model, prefix.ids)[0]


def _model_dtype(model) -> torch.dtype:
    """The dtype of the model's activations: that of its embedding table."""
    return model.model.embeddings.weight.dtype


def _model_device(model) -> torch.device:
    return model.model.embeddings.weight.device


def prefix_ids(model, prefix=None, prefix_text: str | None = None) -> tuple[list[int], str | None]:
    """``(ids, text)`` of a prefix named as the API takes it: ``prefix="bos"`` (the model's
    BOS token, its config's ``bos_token_id``), ``prefix=[ids]`` (token ids), or
    ``prefix_text="..."`` (a text, encoded by the model's tokenizer, which adds its BOS
    if it adds one to every document). Anything else is refused by name."""
    if prefix is not None and prefix_text is not None:
        raise OptionError("give prefix ('bos' or token ids) or prefix_text, not both")
    vocab = model.config.vocab_size
    if prefix_text is not None:
        if not isinstance(prefix_text, str) or not prefix_text:
            raise OptionError(f"prefix_text must be a non-empty str, got {prefix_text!r}")
        ids = list(model._require_tokenizer().encode(prefix_text))
        if not ids:
            raise OptionError(f"prefix_text {prefix_text[:40]!r} encodes to no token")
        text = prefix_text
    elif isinstance(prefix, str):
        if prefix != "bos":
            raise OptionError(f"prefix must be 'bos' or a list of token ids, got {prefix!r}; "
                              "a text goes to prefix_text (--prefix-text)")
        bos = model.config.bos_token_id
        if isinstance(bos, bool) or not isinstance(bos, int):
            raise OptionError(f"prefix='bos': this model has no BOS token (its config's "
                              f"bos_token_id is {bos!r}); name the prefix as a text "
                              "(prefix_text=..., --prefix-text) or as token ids")
        ids, text = [bos], None
    elif isinstance(prefix, (list, tuple)):
        if not prefix:
            raise OptionError("prefix: an empty list of token ids; give at least one id")
        bad = [t for t in prefix if isinstance(t, bool) or not isinstance(t, int)
               or not 0 <= t < vocab]
        if bad:
            raise OptionError(f"prefix: token id {bad[0]!r} is not an id of this model's "
                              f"vocabulary (0..{vocab - 1})")
        ids, text = [int(t) for t in prefix], None
    else:
        raise OptionError(f"prefix must be 'bos', a list of token ids or None, got "
                          f"{type(prefix).__name__}")
    if len(ids) > MAX_PREFIX_TOKENS:
        raise LimitError(f"the prefix holds {len(ids):,} tokens; at most {MAX_PREFIX_TOKENS:,}: "
                         f"{_MAX_WHY}")
    return ids, text


def _walk(layers: Sequence[Mapping], prefix: str = "layers") -> Iterator[tuple[str, Mapping]]:
    """``(name, cache dict)`` of every cache dict of a state, nested ones included
    (a parallel layer's ``attn`` and ``linear`` caches): ``layers.3``, ``layers.3.attn``."""
    def go(name, d):
        yield name, d
        for k, v in d.items():
            if isinstance(v, dict):
                yield from go(f"{name}.{k}", v)
    for i, d in enumerate(layers):
        yield from go(f"{prefix}.{i}", d)


def _compact(layers: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """The state's tensors by name; an attention cache (a dict with ``pos``) keeps only its
    filled slots (``pos >= 0``)."""
    out = {}
    for name, d in _walk(layers):
        live = d["pos"] >= 0 if "pos" in d else None
        for k, v in d.items():
            if not isinstance(v, torch.Tensor):
                continue
            if live is not None:
                v = v[live] if k == "pos" else v[:, :, live]
            out[f"{name}.{k}"] = v.detach().contiguous()
    return out


def _clone_state(layers: Sequence[Mapping], batch: int, device, seen: int):
    from sbsnn.models.hybrid import DecodeState

    def copy(d):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out[k] = copy(v)
            elif k == "pos" or batch == 1:
                out[k] = v.to(device, copy=True)
            else:
                out[k] = v.to(device).repeat_interleave(batch, dim=0)
        return out
    return DecodeState(layers=[copy(d) for d in layers], seen=seen)


@torch.no_grad()
def _run_prefix(model, ids: Sequence[int]):
    """``(state, logits [vocab] float32, seconds)``: ``model`` over ``ids`` from a fresh
    state. The neurons' memories (``v_th``) are left as they were found."""
    memories = [(m, m.v_th) for m in model.modules() if hasattr(m, "v_th")]
    x = torch.tensor([list(ids)], dtype=torch.long, device=_model_device(model))
    t0 = time.perf_counter()
    try:
        state = model.new_state()
        hidden = model.body(x, state)
        logits = model.head(hidden[:, -1:])[0, -1].float()
    finally:
        for m, v in memories:
            m.v_th = v
    seconds = time.perf_counter() - t0
    if not bool(torch.isfinite(logits).all()):
        raise OptionError("the model's logits after the prefix hold NaN or Inf; check the "
                          "checkpoint's weights on the prefix's tokens")
    return state, logits.cpu(), seconds


@dataclass
class ConstantPrefix:
    """The decoding state after a constant prefix, computed once by the float model.

    ``ids``: the prefix's tokens; ``state``: the :class:`~sbsnn.models.hybrid.DecodeState`
    after them (batch 1, in the layout and dtypes of the model it is attached to);
    ``logits``: the float model's prediction after the prefix ``[vocab]`` (float32);
    ``drops``: the BOS id a document's leading token drops (None: nothing is dropped);
    ``seconds``: what computing it cost, once; ``text``: the prefix as text, if named so;
    ``dtype``: the activation dtype of the model the state is laid out for.
    """

    ids: tuple[int, ...]
    state: object = field(repr=False)
    logits: torch.Tensor = field(repr=False)
    drops: int | None = None
    seconds: float = 0.0
    text: str | None = None
    dtype: torch.dtype | None = None

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def seen(self) -> int:
        """Positions the state has consumed (sink tokens included)."""
        return self.state.seen

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything stored, by name: the state's tensors (attention caches compacted to
        their filled slots) and ``logits``."""
        return {**_compact(self.state.layers), LOGITS: self.logits}

    def nbytes(self) -> int:
        """Bytes of :meth:`tensors`: the prefix's size in the checkpoint."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def metadata(self) -> dict:
        """What ``spiking_config.json`` records of the prefix (the tensors go to
        :data:`PREFIX_FILE`)."""
        return {"ids": list(self.ids), "text": self.text, "tokens": self.tokens,
                "drops": self.drops, "seen": self.seen, "file": PREFIX_FILE,
                "bytes": self.nbytes(), "seconds": self.seconds,
                "dtype": str(self.dtype).replace("torch.", ""),
                "computed_by": "the float model, once, at conversion"}

    def summary(self) -> str:
        """One line: what the prefix is and what it costs."""
        what = (f"text {self.text[:40]!r}" if self.text is not None
                else f"token ids {list(self.ids)[:8]}")
        return (f"constant prefix: {self.tokens} token(s) ({what}), state {self.nbytes():,} "
                f"bytes, computed once in float in {self.seconds * 1e3:.1f} ms; its tokens are "
                "not simulated")

    def body(self, ids: torch.Tensor) -> torch.Tensor:
        """A document's token ids ``[B, L]`` as they follow the prefix: without their
        leading BOS when the prefix already begins with it (:attr:`drops`)."""
        if self.drops is not None and ids.shape[-1] and bool((ids[..., 0] == self.drops).all()):
            return ids[..., 1:]
        return ids

    def start_state(self, model, batch: int = 1):
        """A fresh copy of the state for ``model`` (on its device), for ``batch`` sequences.
        Refused when the model's activations changed dtype since the prefix was attached
        (the caches would not concatenate)."""
        dtype = _model_dtype(model)
        have = self.dtype
        if have is not None and dtype != have:
            raise OptionError(f"the constant prefix's state was attached in {have}, but the "
                              f"model now runs {dtype}: load the checkpoint in that dtype "
                              "(load_spiking(..., dtype=...)), which attaches it again")
        return _clone_state(self.state.layers, batch, _model_device(model), self.state.seen)

    # ------------------------------------------------------------------ reading back
    @classmethod
    def from_tensors(cls, model, tensors: Mapping[str, torch.Tensor], meta: Mapping,
                     where: str = PREFIX_FILE) -> "ConstantPrefix":
        """The prefix stored as ``tensors`` (:meth:`tensors`) and ``meta``
        (:meth:`metadata`), laid out for ``model``: its own state after the same tokens
        gives the layout, shapes and dtypes, and every stored tensor must fit it (refused
        naming the tensor and ``where`` otherwise)."""
        if not isinstance(meta, Mapping):
            raise CheckpointError(f"{where}: the prefix's record must be an object")
        ids = meta.get("ids")
        if not isinstance(ids, list) or not ids or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise CheckpointError(f"{where}: the prefix's 'ids' must be a non-empty list of "
                                  "token ids")
        vocab = model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids) or len(ids) > MAX_PREFIX_TOKENS:
            raise CheckpointError(f"{where}: the prefix's ids {ids[:8]} are not ids of this "
                                  f"model's vocabulary (0..{vocab - 1}, at most "
                                  f"{MAX_PREFIX_TOKENS} of them): computed for another model")
        drops = meta.get("drops")
        if drops is not None and (isinstance(drops, bool) or drops != ids[0]):
            raise CheckpointError(f"{where}: the prefix's 'drops' must be null or its first "
                                  f"token id ({ids[0]}), got {drops!r}")
        probe, _, _ = _run_prefix(model, ids)
        want = _compact(probe.layers)
        want[LOGITS] = torch.zeros(vocab, dtype=torch.float32)
        missing = sorted(set(want) - set(tensors))
        extra = sorted(set(tensors) - set(want))
        if missing or extra:
            name = (missing or extra)[0]
            raise CheckpointError(
                f"{where}: tensor {name!r} is {'missing' if missing else 'not part of'} this "
                f"model's decoding state after the prefix (its state holds "
                f"{', '.join(sorted(want)[:4])}, ...): the prefix state was computed for "
                "another model; convert again with the prefix option")
        for name, w in want.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(w.shape):
                raise CheckpointError(
                    f"{where}: tensor {name!r} has shape {list(t.shape)}, this model's state "
                    f"after the prefix has {list(w.shape)}: computed for another model or "
                    "other settings; convert again with the prefix option")
            if t.is_floating_point() != w.is_floating_point():
                raise CheckpointError(f"{where}: tensor {name!r} is {t.dtype}, the model's is "
                                      f"{w.dtype}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{where}: tensor {name!r} holds NaN or Inf; the file "
                                      "is damaged: convert again")
            if not t.is_floating_point() and not torch.equal(t.cpu(), w.cpu()):
                raise CheckpointError(f"{where}: tensor {name!r} (positions) differs from the "
                                      "model's own after the prefix: computed for another "
                                      "model or other settings")
        # the stored values in the model's layout: every slot the probe filled
        for name, d in _walk(probe.layers):
            live = d["pos"] >= 0 if "pos" in d else None
            for k, v in list(d.items()):
                if not isinstance(v, torch.Tensor) or k == "pos":
                    continue
                stored = tensors[f"{name}.{k}"].to(v.device, v.dtype)
                if live is None:
                    v.copy_(stored)
                else:
                    v[:, :, live] = stored
        seen = meta.get("seen")
        if seen is not None and seen != probe.seen:
            raise CheckpointError(f"{where}: the prefix's 'seen' is {seen!r}, the model has "
                                  f"seen {probe.seen} positions after the prefix")
        text = meta.get("text")
        seconds = meta.get("seconds")
        seconds = float(seconds) if isinstance(seconds, (int, float)) and not isinstance(
            seconds, bool) else 0.0
        return cls(tuple(ids), probe, tensors[LOGITS].float().cpu(), drops, seconds,
                   text if isinstance(text, str) else None,
                   _model_dtype(model))


def compute_prefix(model, prefix=None, prefix_text: str | None = None) -> ConstantPrefix:
    """The state of the float ``model`` after the prefix (``prefix="bos"``, token ids, or
    ``prefix_text``; see :func:`prefix_ids`), computed once, and its cost."""
    if any(hasattr(m, "weight_codes") for m in model.modules()):
        raise OptionError("compute_prefix needs the float model (the prefix state is computed "
                          "in float); this one is spiking: load the float checkpoint")
    ids, text = prefix_ids(model, prefix, prefix_text)
    bos = model.config.bos_token_id
    drops = ids[0] if isinstance(bos, int) and not isinstance(bos, bool) and ids[0] == bos else None
    state, logits, seconds = _run_prefix(model, ids)
    return ConstantPrefix(tuple(ids), state, logits, drops, seconds, text, _model_dtype(model))


def refold_prefix(prefix: ConstantPrefix, model) -> ConstantPrefix:
    """``prefix`` recomputed by ``model``: the float model it was computed by, after a
    change that keeps the model's function but not its internal values (calibration's
    smoothing divides v_proj's rows, so the cached values of the prefix change with it).
    Same tokens, text and drop rule; ``seconds`` adds both computations."""
    with torch.no_grad():
        state, logits, seconds = _run_prefix(model, list(prefix.ids))
    return ConstantPrefix(prefix.ids, state, logits, prefix.drops, prefix.seconds + seconds,
                          prefix.text, _model_dtype(model))


def attach_prefix(model, prefix: ConstantPrefix | None):
    """Give ``model`` the constant ``prefix`` (None: take it away): every document it runs
    starts from the prefix's state. The prefix must have been computed by this model's
    float original: its state is checked against the model's own layout after the same
    tokens (refused by name otherwise). Returns ``model``."""
    if prefix is None:
        model.prefix = None
        return model
    if not isinstance(prefix, ConstantPrefix):
        raise OptionError(f"prefix must be a ConstantPrefix (sbsnn.models.prefix.compute_prefix), "
                          f"got {type(prefix).__name__}")
    if not hasattr(model, "start_state"):
        raise OptionError(f"a constant prefix needs an sbsnn causal LM (HybridForCausalLM), "
                          f"got {type(model).__name__}")
    model.prefix = ConstantPrefix.from_tensors(model, prefix.tensors(), prefix.metadata(),
                                               where="the constant prefix")
    model.prefix.seconds = prefix.seconds
    return model
