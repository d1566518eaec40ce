"""``convert``: swap a float model's linear layers for spiking ones, in the style of
``torch.ao.quantization.convert`` (modules replaced by name; a copy unless ``inplace``)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sbsnn import __version__
from sbsnn.checks import GROUP_SIZE_WHY, check_group_size, check_k
from sbsnn.converters.kv_quant import Int8PerTokenHead
from sbsnn.converters.presets import PRESETS, attention_hook_targets, linear_targets
from sbsnn.converters.quant import QuantStats
from sbsnn.converters.spiking_linear import SpikingLinear, spiking_layers  # noqa: F401 (re-exported)
from sbsnn.errors import CheckpointKindError, LimitError, NonFiniteError, OptionError
from sbsnn.models.prefix import compute_prefix, prefix_of
from sbsnn.neurons import CODINGS, AdaptiveThresholdNeuron

FORMAT_VERSION = 3  # 2: per-layer k (layer_k) and the calibration record; 3: the constant prefix


@dataclass
class SpikingConfig:
    """What a conversion did; saved as ``spiking_config.json`` beside the weights."""

    preset: str | None
    coding: str
    k: float
    group_size: int
    targets: list[str]                      # converted nn.Linear names
    attention_hooks: list[str] = field(default_factory=list)  # w8aspike query/KV hooks
    patterns: list[str] | None = None       # user's glob patterns, if any
    exclude: list[str] | None = None
    quantization: dict = field(default_factory=dict)  # QuantStats.to_dict()
    # Per-layer k where it differs from ``k`` (sbsnn.calibrate allocates them).
    layer_k: dict[str, float] = field(default_factory=dict)
    # What calibration did (method, budget, measured spikes); None for plain conversion.
    calibration: dict | None = None
    # The constant prefix (sbsnn.models.prefix.ConstantPrefix.metadata(): its ids, size,
    # cost; its state in prefix_state.safetensors); None: documents start fresh.
    prefix: dict | None = None
    # What spiking-aware fine-tuning did (sbsnn.finetune: what it trained, steps, held-out
    # KL before and after); None if the model was not fine-tuned.
    finetune: dict | None = None
    # "sha256:<hex>" of every file of the checkpoint but this one, by file name, checked on
    # load (sbsnn.converters.format.verify_digests); empty in checkpoints written before.
    # (Not compared: two layouts of one conversion are equal configs.)
    digests: dict[str, str] = field(default_factory=dict, compare=False)
    sbsnn_version: str = __version__
    format: str = "sbsnn-spiking"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    def k_of(self, name: str) -> float:
        """The k of spiking layer ``name``."""
        return float(self.layer_k.get(name, self.k))


def _check_options(coding: str, k: float, group_size: int) -> None:
    if coding not in CODINGS:
        raise OptionError(f"unknown coding {coding!r}; choose one of {', '.join(CODINGS)}")
    check_k(k)
    check_group_size(group_size)


def _check_group_width(model: nn.Module, names: list[str], group_size: int) -> None:
    """A group much wider than every targeted layer only pads rows with zeros (each row is
    padded to ``group_size``): refused beyond the widest layer's width rounded up to a
    power of two (and beyond 128, the default, for small models)."""
    widest = max(model.get_submodule(n).in_features for n in names)
    bound = max(128, 1 << (widest - 1).bit_length())
    if group_size > bound:
        raise LimitError(f"group_size={group_size} is refused: the bound for this model is {bound} "
                         f"(the widest layer being converted has {widest} inputs; the bound is "
                         f"that rounded up to a power of two, at least 128): {GROUP_SIZE_WHY}; "
                         f"give group_size={widest} (--group-size {widest}) or less")


def check_request(preset: str | None, targets: list[str] | None, coding: str, k: float,
                  group_size: int) -> str | None:
    """Validate a conversion's options; the preset in force (None when targets are given)."""
    _check_options(coding, k, group_size)
    if targets:
        return None
    if preset not in PRESETS:
        raise OptionError(f"unknown preset {preset!r}; choose one of {PRESETS} or give targets")
    return preset


def plan(model: nn.Module, preset: str | None, coding: str, k: float, group_size: int,
         targets: list[str] | None, exclude: list[str] | None) -> SpikingConfig:
    """What a conversion of ``model`` will touch, as a :class:`SpikingConfig` (weights
    untouched; ``quantization`` is filled in once the weights are converted)."""
    chosen = check_request(preset, targets, coding, k, group_size)
    if isinstance(getattr(model, "spiking_config", None), SpikingConfig) or any(
            isinstance(m, SpikingLinear) for m in model.modules()):
        raise CheckpointKindError("the model is already spiking (it holds SpikingLinear layers); "
                                  "convert the float model it came from")
    names = linear_targets(model, chosen, targets, exclude)
    if not names:
        raise OptionError("nothing to convert: no nn.Linear module matches")
    _check_group_width(model, names, group_size)
    return SpikingConfig(preset=chosen, coding=coding, k=float(k), group_size=group_size,
                         targets=names, attention_hooks=attention_hook_targets(model, chosen),
                         patterns=targets, exclude=exclude)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def apply_structure(model: nn.Module, cfg: SpikingConfig) -> nn.Module:
    """Replace the modules named in ``cfg`` by empty spiking ones (for loading weights)."""
    for name in cfg.targets:
        lin = model.get_submodule(name)
        dev = lin.weight.device
        sl = SpikingLinear(lin.in_features, lin.out_features, lin.bias is not None,
                           cfg.group_size, cfg.k_of(name), cfg.coding, device=dev,
                           dtype=lin.weight.dtype)
        sl.name = name
        _set(model, name, sl)
    _apply_hooks(model, cfg)
    model.spiking_config = cfg
    return model


def _apply_hooks(model: nn.Module, cfg: SpikingConfig) -> None:
    for name in cfg.attention_hooks:
        attn = model.get_submodule(name)
        if not all(hasattr(attn, h) for h in ("q_post_rope", "k_cache_quant", "v_cache_quant")):
            raise AttributeError(f"{name} is not a softmax-attention module with query/KV hooks")
        attn.q_post_rope = AdaptiveThresholdNeuron(cfg.k, cfg.coding, "s")
        attn.k_cache_quant = Int8PerTokenHead()
        attn.v_cache_quant = Int8PerTokenHead()


@torch.no_grad()
def convert(model: nn.Module, preset: str | None = "paper", coding: str = "ternary",
            k: float = 3.0, group_size: int = 128, targets: list[str] | None = None,
            exclude: list[str] | None = None, inplace: bool = False,
            progress: bool = False, layer_k: dict[str, float] | None = None,
            prefix=None, prefix_text: str | None = None) -> nn.Module:
    """The spiking version of ``model``.

    Each targeted ``nn.Linear`` becomes a :class:`SpikingLinear` (INT8 weight codes per
    output channel and group of ``group_size`` inputs; input spiked with threshold
    ``mean|x| / k`` per token). ``preset`` picks the targets (see
    :mod:`sbsnn.converters.presets`); ``targets`` (glob patterns over module names)
    overrides it, ``exclude`` removes names. ``layer_k`` gives some layers their own k
    (what :func:`sbsnn.calibrate` allocates). The result carries ``spiking_config``.

    ``prefix`` (``"bos"`` or token ids) or ``prefix_text``: a constant prefix every document
    starts with; its decoding state is computed once by the float ``model``
    (:func:`sbsnn.models.prefix.compute_prefix`) and the result starts every document
    from it (``result.prefix``; saved with the checkpoint). A float model that already
    carries a prefix passes it on.
    """
    cfg = plan(model, preset, coding, k, group_size, targets, exclude)
    pre = None
    if prefix is not None or prefix_text is not None:
        if not hasattr(model, "start_state"):
            raise OptionError(f"prefix: a constant prefix needs an sbsnn causal LM "
                              f"(HybridForCausalLM), got {type(model).__name__}")
        pre = compute_prefix(model, prefix, prefix_text)   # in float, before any layer spikes
    if layer_k:
        unknown = sorted(set(layer_k) - set(cfg.targets))
        if unknown:
            raise OptionError(f"layer_k names {unknown[:3]} which are not converted layers "
                              f"(targets look like {cfg.targets[:3]})")
        for name, v in layer_k.items():
            _check_options(coding, v, group_size)
        cfg.layer_k = {n: float(v) for n, v in layer_k.items() if float(v) != cfg.k}
    if not inplace:
        tok = getattr(model, "tokenizer", None)
        model = copy.deepcopy(model)
        if tok is not None:
            model.tokenizer = tok
    stats = QuantStats()
    from tqdm.auto import tqdm

    for name in tqdm(cfg.targets, desc="convert", unit="layer", disable=not progress):
        sl = spiking_from_linear(model.get_submodule(name), name, group_size, cfg.k_of(name), coding)
        _set(model, name, sl)
        stats = stats.merge(sl.quant_stats)
    cfg.quantization = stats.to_dict()
    _apply_hooks(model, cfg)
    if pre is not None:
        # computed by this very float model, whose copy this is: the same layout and dtypes
        model.prefix = pre
    pre = prefix_of(model)
    cfg.prefix = pre.metadata() if pre is not None else None
    model.spiking_config = cfg
    return model


def spiking_from_linear(linear: nn.Linear, name: str, group_size: int, k: float,
                        coding: str) -> SpikingLinear:
    """:meth:`SpikingLinear.from_linear`, with NaN or Inf in the weight or bias refused
    by the layer's name."""
    for what, t in (("weight", linear.weight), ("bias", linear.bias)):
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(f"layer {name}: its {what} holds {bad:,} NaN or Inf values "
                                 f"(from the weights, not the activations); the checkpoint is "
                                 f"damaged or was trained into overflow: fix or re-export it",
                                 layer=name, origin="weights")
    sl = SpikingLinear.from_linear(linear, group_size, k, coding)
    sl.name = name
    return sl
